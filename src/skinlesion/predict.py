"""The Predictor: onnxruntime over the exported model; image -> calibrated probabilities (+ heatmap). No torch."""

import base64
import hashlib
import io
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from skinlesion.classes import BY_CODE, CODES, ISIC2018_CODES, ISIC2018_MERGED, UNKNOWN_CODE
from skinlesion.guard import cannot_assess, is_uncertain
from skinlesion.imaging import IMAGE_SUFFIXES, ImageError, model_input_and_hash, open_rgb
from skinlesion.referral import concern, refers
from skinlesion.seen import SEEN_KEY, SeenPhotos

METADATA_KEY = "skinlesion"
BUNDLED_MODEL = Path(__file__).parent / "bundled" / "model.onnx"


# The columns (after `image`) of each CSV `predict --output` writes. ISIC submissions: ISIC 2019's eight classes; the
# same with the ISIC 2019 test set's UNK ("none of the others"), whose truth has that ninth column; ISIC 2018's seven.
SUBMISSION_COLUMNS = {"isic2019": CODES, "isic2019-unk": (*CODES, UNKNOWN_CODE), "isic2018": ISIC2018_CODES}
# `assessments`: the web API's answer for each photo (Predictor.answer), then the eight probabilities; for a photo the
# web app refuses, only why (cannot_assess), as the API answers it.
ANSWER_FIELDS = ("label", "probability", "risk", "uncertain", "refer", "concern")
OUTPUT_COLUMNS = {**SUBMISSION_COLUMNS, "assessments": (*ANSWER_FIELDS, "seen_by_model", "cannot_assess", *CODES)}


class FilePrediction(NamedTuple):
    """One photo's row of `predict`."""

    image: str  # the file name without its suffix
    probabilities: dict  # every ISIC class
    seen_by_model: str | None  # "train" / "val" (seen.py)
    cannot_assess: str | None  # why the web app would refuse the photo (guard.py); submissions keep every photo


@dataclass
class Assessment:
    """What the API and the page show for one image."""

    assessable: bool
    reason: str | None = None  # why it cannot be assessed
    label: str | None = None
    probabilities: dict | None = None  # every ISIC class; 0.0 for classes the model lacks
    risk: str | None = None
    uncertain: bool | None = None
    concern: float | None = None  # the non-benign classes' probabilities added up (referral.py)
    refer: bool | None = None  # send the person to a dermatologist, whatever the top class
    heatmap_png: str | None = None  # base64 PNG: the CAM overlaid on the model's view of the image
    seen_by_model: str | None = None  # "train" / "val": the model met this photo (by name or pixels), see seen.py


class Predictor:
    """Load an exported model once; classify pixels, files or uploaded bytes."""

    def __init__(self, model_path: Path | None = None, threads: int = 0):
        import onnxruntime as ort

        self.path = Path(model_path) if model_path else BUNDLED_MODEL
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: model not found; pass --model with a file from 'skinlesion export'")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or min(os.cpu_count() or 1, 4)
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
            metadata = self.session.get_modelmeta().custom_metadata_map
            self.card = json.loads(metadata[METADATA_KEY])
        except Exception as error:  # onnxruntime raises its own exception types; KeyError: no card
            raise ValueError(f"{self.path}: not a skinlesion ONNX model ({error})") from None
        try:
            # The photos and lesions it trained and was validated on (seen.py); None in files exported before
            # 2026-12-01.
            self.seen = json.loads(metadata[SEEN_KEY]) if SEEN_KEY in metadata else None
            self.seen_photos = SeenPhotos(self.seen)  # to flag a photo the model met, by its name or its pixels
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{self.path}: its record of the photos it met ('{SEEN_KEY}') is damaged ({error}); "
                             f"export the model again") from None
        self.classes = tuple(self.card["classes"])
        self.referral = self.card.get("referral")  # None in files exported before 2026-12-02
        self.size, self.policy = int(self.card["size"]), self.card["policy"]
        digest = hashlib.sha256(self.path.read_bytes()).hexdigest()[:12]
        self.version = f"{self.card['arch']}-{self.size}px-{digest}"

    def run(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return (probabilities (B, K), class maps (B, K, h, w)) for uint8 pixels (B, H, W, 3)."""
        probs, _, maps = self.session.run(None, {"pixels": np.ascontiguousarray(pixels, dtype=np.float32)})
        return probs, maps

    def logits(self, pixels: np.ndarray) -> np.ndarray:
        """Return the raw logits (B, K), before the card's temperature and class offsets, for evaluation."""
        return self.session.run(["logits"], {"pixels": np.ascontiguousarray(pixels, dtype=np.float32)})[0]

    def all_codes(self, probs: np.ndarray) -> dict:
        """Spread the model's probabilities over every ISIC class (0.0 where the model has none)."""
        return {c: (float(probs[self.classes.index(c)]) if c in self.classes else 0.0) for c in CODES}

    def refers(self, probabilities: dict) -> tuple[float, bool]:
        """Return the non-benign classes' summed probability and whether the answer refers the person to a
        dermatologist (referral.py): by the card's threshold, or, in files without one, by the top class alone."""
        row, classes = np.array([list(probabilities.values())]), list(probabilities)
        threshold = self.referral["threshold"] if self.referral else np.inf
        return float(concern(row, classes)[0]), bool(refers(row, classes, threshold)[0])

    def answer(self, probabilities: dict) -> dict:
        """Return the answer to one photo as the web app gives it (ANSWER_FIELDS): the top class and its probability,
        its risk group, whether it is unsure, and whether the referral rule sends the person to a dermatologist."""
        label = max(probabilities, key=probabilities.get)
        concern, refer = self.refers(probabilities)
        return {"label": label, "probability": probabilities[label], "risk": BY_CODE[label].risk,
                "uncertain": is_uncertain(probabilities[label]), "refer": refer, "concern": concern}

    def table_row(self, prediction: FilePrediction) -> str:
        """Render one photo's answer as `predict` prints it, flagged as the web page flags it: a benign answer the
        referral rule still sends on, an unsure one; a photo the page refuses gets the page's reason instead."""
        name, probabilities = prediction.image, prediction.probabilities
        if prediction.cannot_assess:
            return f"{name:32s} cannot assess: {prediction.cannot_assess}"
        answer = self.answer(probabilities)
        top, risk = answer["label"], answer["risk"]
        flags = "  have it checked: cancer not ruled out" if risk == "benign" and answer["refer"] else ""
        flags += "  uncertain" if answer["uncertain"] else ""
        return f"{name:32s} {top:5s} {answer['probability']:6.1%}  {BY_CODE[top].name} ({risk}){flags}"

    def output_row(self, prediction: FilePrediction, output_format: str) -> dict:
        """Return one photo's row of a `predict --output` CSV in OUTPUT_COLUMNS[output_format]."""
        probabilities = prediction.probabilities
        if output_format == "assessments":
            if prediction.cannot_assess:  # as the API answers it: why, and no answer
                return {"seen_by_model": prediction.seen_by_model, "cannot_assess": prediction.cannot_assess}
            return {**self.answer(probabilities), "seen_by_model": prediction.seen_by_model, **probabilities}
        if output_format == "isic2018":
            return self.as_isic2018(probabilities)
        if output_format == "isic2019-unk":  # the model knows no such class, so it calls no photo unknown
            return {**probabilities, UNKNOWN_CODE: 0.0}
        return probabilities

    def as_isic2018(self, probabilities: dict) -> dict:
        """Turn probabilities over the ISIC 2019 classes into ISIC 2018's seven (AKIEC = AK or SCC).

        The model's probabilities hold for equally common classes; merged, AKIEC would be as common as
        the two classes it covers together, so its sum is divided by how many of them the model knows
        (a change of prior that keeps the seven equally common, as ISIC 2018's balanced accuracy counts them).
        """
        merged = {code: sum(probabilities[c] for c in ISIC2018_MERGED.get(code, (code,))) for code in ISIC2018_CODES}
        for code, parts in ISIC2018_MERGED.items():
            merged[code] /= max(1, sum(c in self.classes for c in parts))
        total = sum(merged.values())
        return {code: p / total for code, p in merged.items()}

    def assess(self, source, heatmap: bool = False, name: str = "") -> Assessment:
        """Classify one image (bytes or path, its file name without suffix `name`) as the web app shows it; refuse
        images it should not judge."""
        image = open_rgb(source, draft_size=self.size)
        pixels, dhash = model_input_and_hash(image, self.size, self.policy)
        reason = cannot_assess(image, pixels)
        if reason:
            return Assessment(assessable=False, reason=reason)
        probs, maps = self.run(pixels[None])
        probabilities = self.all_codes(probs[0])
        answer = self.answer(probabilities)
        return Assessment(assessable=True, probabilities=probabilities,
                          **{k: v for k, v in answer.items() if k != "probability"},
                          heatmap_png=self.heatmap(image.info["original_size"], pixels, maps[0], answer["label"])
                          if heatmap else None,
                          seen_by_model=self.seen_photos.split_of(name, dhash))

    def heatmap(self, photo_size: tuple[int, int], pixels: np.ndarray, maps: np.ndarray, label: str) -> str:
        """The class activation map of `label` (one image's `maps`, as run gives them) over the model's view of the
        image, shaped as the photo (`photo_size`, open_rgb's original_size) where the model squashed it; a base64
        PNG."""
        shape = photo_size if self.policy == "squash" else (1, 1)  # the photo's, or the crop's
        return heatmap_overlay(pixels, maps[self.classes.index(label)], shape)

    def predict_files(self, paths: list[Path], batch_size: int = 32,
                      heatmap_dir: Path | None = None) -> tuple[list[FilePrediction], list]:
        """Classify image files in batches; return (one FilePrediction per readable photo, problems). With
        `heatmap_dir`, write there each assessable photo's heatmap of its top class as the web app shows it,
        `<name>.heatmap.png`, as its batch is done."""
        if heatmap_dir is not None:  # one heatmap file per name: two photos of one name would overwrite each other's
            repeated = sorted(name for name, count in Counter(Path(path).stem for path in paths).items() if count > 1)
            if repeated:
                raise ValueError(f"--heatmaps {heatmap_dir}: {len(repeated)} file name(s) occur more than once among "
                                 f"the inputs ({', '.join(repeated[:3])}); their heatmaps would overwrite each other, "
                                 f"so pass one folder at a time")
            heatmap_dir = Path(heatmap_dir)
            heatmap_dir.mkdir(parents=True, exist_ok=True)
        rows, problems = [], []
        for start in range(0, len(paths), batch_size):
            names, batch, sizes, seen, refused = [], [], [], [], []
            for path in paths[start:start + batch_size]:
                try:
                    image = open_rgb(path, draft_size=self.size)
                    pixels, dhash = model_input_and_hash(image, self.size, self.policy)
                except ImageError as error:
                    problems.append({"path": str(path), "problem": str(error)})
                    continue
                batch.append(pixels)
                sizes.append(image.info["original_size"])  # not the image: a batch of large photos is big
                names.append(Path(path).stem)
                seen.append(self.seen_photos.split_of(names[-1], dhash))
                refused.append(cannot_assess(image, pixels))
            if not batch:
                continue
            probs, maps = self.run(np.stack(batch))
            done = [FilePrediction(name, self.all_codes(p), met, reason)
                    for name, p, met, reason in zip(names, probs, seen, refused)]
            if heatmap_dir is not None:
                for row, size, pixels, image_maps in zip(done, sizes, batch, maps):
                    if not row.cannot_assess:
                        png = self.heatmap(size, pixels, image_maps, self.answer(row.probabilities)["label"])
                        (heatmap_dir / f"{row.image}.heatmap.png").write_bytes(base64.b64decode(png))
            rows += done
        return rows, problems


def prediction_notes(rows: list[FilePrediction], output: Path | None, output_format: str) -> list[str]:
    """Say which photos the web app would refuse, when a submission keeps them, and which the model met in training
    or validation, whose answers are no test of it."""
    notes = []
    refused = [row.image for row in rows if row.cannot_assess]
    if refused and output and output_format != "assessments":
        notes.append(f"note: the web app would not assess {len(refused)} of these {len(rows)} photos as skin photos "
                     f"({', '.join(refused[:3])}{', ...' if len(refused) > 3 else ''}); they have rows in {output} "
                     f"all the same (--format assessments gives the reason for each)")
    seen = Counter(row.seen_by_model for row in rows)
    if seen["train"] or seen["val"]:
        notes.append(f"note: the model trained on {seen['train']} and validated on {seen['val']} of these {len(rows)} "
                     f"photos (by file name, or as near-identical pixels: the same photo or lesion); its answers on "
                     f"them are no test of how it does on new photos")
    return notes


def image_files(inputs: list[Path]) -> tuple[list[Path], list[dict]]:
    """Expand files and folders into image files; report what is not an image file or is missing."""
    files, problems = [], []
    for item in map(Path, inputs):
        if item.is_dir():
            found = len(files)
            for path in sorted(item.iterdir()):
                if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
                    files.append(path)
                elif path.is_file():
                    suffixes = ", ".join(IMAGE_SUFFIXES)
                    problems.append({"path": str(path), "problem": f"not an image file (suffix not one of {suffixes})"})
            if len(files) == found:  # folders are not searched below their top level: say so where it matters
                inner = sorted(path.name for path in item.iterdir() if path.is_dir())
                where = f"; it has folders ({', '.join(inner[:3])}{', ...' if len(inner) > 3 else ''}): pass the " \
                        f"one that holds the photos" if inner else ""
                problems.append({"path": str(item), "problem": f"no image files in this folder{where}"})
        elif item.is_file():
            files.append(item)
        else:
            problems.append({"path": str(item), "problem": "file not found"})
    return files, problems


def heatmap_overlay(pixels: np.ndarray, class_map: np.ndarray, shape: tuple[int, int] = (1, 1), side: int = 256) -> str:
    """Blend the class activation map over the model's input view, stretched to `shape` (width, height: the photo's
    own, where the model squashed it to a square) with its longer side `side`; return a base64 PNG."""
    scale = side / max(shape)
    size = (max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale)))
    cam = np.maximum(class_map - class_map.mean(), 0)
    cam = cam / cam.max() if cam.max() > 0 else cam
    cam = np.asarray(Image.fromarray(cam.astype(np.float32), "F").resize(size, Image.BICUBIC))
    cam = np.clip(cam, 0, 1)[..., None]
    # A blue -> yellow -> red ramp, strongest where the model looked.
    colour = np.concatenate([np.clip(2 * cam, 0, 1), np.clip(2 - 2 * cam, 0, 1) * np.clip(2 * cam, 0, 1),
                             np.clip(1 - 2 * cam, 0, 1)], axis=2) * 255
    base = np.asarray(Image.fromarray(pixels).resize(size, Image.BILINEAR), dtype=np.float32)
    alpha = 0.15 + 0.45 * cam
    blended = (base * (1 - alpha) + colour * alpha).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(blended).save(buffer, format="PNG", compress_level=1)  # speed over a few kB
    return base64.b64encode(buffer.getvalue()).decode("ascii")
