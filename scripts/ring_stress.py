"""Stress test: a model's balanced accuracy when every photo of a split gets a dermatoscope's black ring or a colour
cast, is cut to a square, or is saved again with lossy compression.

Usage: python scripts/ring_stress.py MODEL PREPARED_DIR [--data DIR] [--split val] [--factors 1.0,0.85]
                                     [--casts blue,pink,warm] [--square] [--recompress jpeg:50,webp:80]
MODEL is a run folder, model.pt or an exported .onnx file; PREPARED_DIR gives the split (splits.csv) and the data
folder its images come from. For a ring, each photo is blacked out outside a centred circle whose radius is FACTOR
times half its longer side (1.0: black corners; 0.85: a ring); for a cast, each colour channel is scaled by the
cast's gain (CASTS: the light of another dermatoscope); with --square, each photo is cut to the centred square of
its shorter side (BCN_20000, half of ISIC 2019, has square photos, while 97% of our sample's are 4:3 to 3:2, so
squashed to the model's square input their lesions are stretched, a square photo's are not); with --recompress
FORMAT:QUALITY, each photo is saved again as a JPEG or WebP at that quality and read back (a photo sent through a
messaging app or a web form that shrinks uploads). Then the photo goes
through the one loader (imaging.model_input, which paints over a dark border). Calibration is cross-fitted on the
clean photos: fitted on one half of the split's clean logits, applied to the other half's logits in each condition
(3 halvings, as training scores epochs). --factors "" or --casts "" (the default) leaves that kind out. For a file
with a referral rule (referral.py), each condition also reports the rule's sensitivity and specificity as the file
serves it (its own calibration and threshold, fitted on clean validation photos).
"""

import argparse
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from skinlesion.calibration import calibrated, cross_fitted_decisions
from skinlesion.evaluate import resolve_model, saved_model_logits
from skinlesion.imaging import model_input, open_rgb
from skinlesion.metrics import balanced_accuracy
from skinlesion.referral import referral_scores


# Per-channel (R, G, B) gains of a moderate colour cast: other dermatoscopes' light, as seen in the ISIC archive.
CASTS = {"blue": (0.85, 0.95, 1.15), "pink": (1.08, 0.88, 1.08), "warm": (1.12, 1.0, 0.82)}
RECOMPRESS_FORMATS = {"jpeg": "JPEG", "webp": "WEBP"}


def cast_colour(image: Image.Image, cast: str) -> Image.Image:
    pixels = np.asarray(image, dtype=np.float32) * np.array(CASTS[cast], dtype=np.float32)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def blacken_outside_circle(image: Image.Image, factor: float) -> Image.Image:
    w, h = image.size
    r = factor * max(w, h) / 2
    mask = Image.new("L", image.size, 0)
    ImageDraw.Draw(mask).ellipse((w / 2 - r, h / 2 - r, w / 2 + r, h / 2 + r), fill=255)
    ringed = Image.new("RGB", image.size, (0, 0, 0))
    ringed.paste(image, mask=mask)
    return ringed


def recompress(image: Image.Image, kind: str, quality: int) -> Image.Image:
    """The photo saved again as a JPEG or WebP at this quality, and read back."""
    buffer = io.BytesIO()
    image.save(buffer, RECOMPRESS_FORMATS[kind], quality=quality)
    return open_rgb(buffer.getvalue())


def parse_recompress(text: str) -> list[tuple[str, int]]:
    """'jpeg:50,webp:80' -> [('jpeg', 50), ('webp', 80)]; ValueError names the bad part."""
    chosen = []
    for part in filter(None, text.split(",")):
        kind, _, quality = part.partition(":")
        if kind not in RECOMPRESS_FORMATS or not quality.isdigit() or not 1 <= int(quality) <= 100:
            raise ValueError(f"--recompress {part!r}: give FORMAT:QUALITY, FORMAT one of "
                             f"{', '.join(RECOMPRESS_FORMATS)} and QUALITY 1-100 (e.g. jpeg:50)")
        chosen.append((kind, int(quality)))
    return chosen


def centre_square(image: Image.Image) -> Image.Image:
    w, h = image.size
    side = min(w, h)
    return image.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side))


def input_spec(model_path: Path) -> tuple[int, str]:
    """The model's input size and resize policy."""
    if model_path.suffix == ".onnx":
        from skinlesion.predict import Predictor
        predictor = Predictor(model_path)
        return predictor.size, predictor.policy
    from skinlesion.models import load_model
    meta = load_model(model_path)[1]
    return meta["size"], meta["policy"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("prepared", type=Path)
    parser.add_argument("--data", type=Path, help="ISIC 2019 folder (default: the one the data was prepared from)")
    parser.add_argument("--split", default="val")
    parser.add_argument("--factors", default="1.0,0.85")
    parser.add_argument("--casts", default="", help=f"any of {', '.join(CASTS)}")
    parser.add_argument("--square", action="store_true", help="also score every photo cut to its centred square")
    parser.add_argument("--recompress", default="", help="FORMAT:QUALITY,... (jpeg or webp), e.g. jpeg:50,webp:80")
    args = parser.parse_args()
    unknown = set(filter(None, args.casts.split(","))) - set(CASTS)
    if unknown:
        parser.error(f"unknown cast {', '.join(sorted(unknown))}; choose from {', '.join(CASTS)}")
    try:
        recompressions = parse_recompress(args.recompress)
    except ValueError as error:
        parser.error(str(error))
    model_path = resolve_model(args.model)
    data = args.data or Path(json.loads((args.prepared / "prepared.json").read_text())["data"])
    rows = pd.read_csv(args.prepared / "splits.csv")
    rows = rows[rows["split"] == args.split]
    paths = [data / "ISIC_2019_Training_Input" / f"{name}.jpg" for name in rows["image"]]
    size, policy = input_spec(model_path)
    results, clean, y = [], None, None
    conditions = {"none": lambda image: image}
    for factor in filter(None, args.factors.split(",")):
        conditions[float(factor)] = lambda image, factor=float(factor): blacken_outside_circle(image, factor)
    for cast in filter(None, args.casts.split(",")):
        conditions[f"{cast} cast"] = lambda image, cast=cast: cast_colour(image, cast)
    if args.square:
        conditions["square"] = centre_square
    for kind, quality in recompressions:
        conditions[f"{kind} {quality}"] = lambda image, kind=kind, quality=quality: recompress(image, kind, quality)
    for condition, change in conditions.items():
        # Decoded again for each condition, at full size: each condition changes the photo before the loader does.
        pixels = np.stack([model_input(change(open_rgb(path)), size, policy) for path in paths])
        logits, meta = saved_model_logits(model_path, pixels)
        if clean is None:
            clean, y = logits, rows["label"].map({c: i for i, c in enumerate(meta["classes"])}).to_numpy()
        decisions = cross_fitted_decisions(clean, y, scored=logits)
        recalls = np.array([[(predicted[y == c] == c).mean() for c in range(len(meta["classes"]))]
                            for predicted in decisions])  # (halvings, K)
        raw = balanced_accuracy(y, logits.argmax(1), len(meta["classes"]))
        per_class = dict(zip(meta["classes"], recalls.mean(0).round(3).tolist()))
        results.append({"condition": condition, "bacc": round(float(recalls.mean()), 3),
                        "raw top class": round(raw, 3), **per_class})
        if meta.get("referral"):
            rule = referral_scores(calibrated(logits, meta), rows["label"].to_numpy(), meta["classes"],
                                   meta["referral"]["threshold"])
            results[-1].update({"referral sensitivity": round(rule["sensitivity"], 3),
                                "specificity": round(rule["specificity"], 3)})
        print(json.dumps(results[-1]), flush=True)
    print(pd.DataFrame(results).to_string(index=False))


if __name__ == "__main__":
    main()
