"""ONNX export with the model's metadata embedded and a parity check against PyTorch."""

import json
from datetime import date
from pathlib import Path

import numpy as np
import torch
from torch import nn

from skinlesion import __version__
from skinlesion.calibration import calibrated
from skinlesion.evaluate import resolve_model, saved_model_logits
from skinlesion.metrics import balanced_accuracy
from skinlesion.models import Classifier, Ensemble, load_model
from skinlesion.predict import METADATA_KEY
from skinlesion.prepare import Prepared, data_record, load_prepared, photo_hashes
from skinlesion.seen import SEEN_KEY, joined_seen_record


class ExportWrapper(nn.Module):
    """Take (B, H, W, 3) float pixels in 0..255 as the predictor decodes them; return what it needs."""

    def __init__(self, model: Classifier | Ensemble, temperature: float, class_bias: list[float]):
        super().__init__()
        self.model, self.temperature = model, temperature
        self.register_buffer("class_bias", torch.tensor(class_bias, dtype=torch.float32).view(1, -1))

    def forward(self, pixels: torch.Tensor):
        logits, features = self.model.forward_features(pixels.permute(0, 3, 1, 2))
        # Calibrated on validation, for equally common classes (calibration.fit_calibration).
        probabilities = torch.softmax(logits / self.temperature + self.class_bias, dim=1)
        return probabilities, logits, self.model.class_maps(features)  # (B, K), (B, K), (B, K, h, w)


def recipe(meta: dict) -> dict:
    """Return how a saved model was trained: score, epochs, settings and the earlier stage it started from."""
    entry = {k: meta[k] for k in ("val_bacc", "val_bacc_calibrated", "epochs_trained", "train_config",
                                  "color_constancy") if k in meta}
    init = meta.get("train_config", {}).get("init")
    if init:
        earlier = torch.load(init, map_location="cpu", weights_only=False) if Path(init).is_file() else {}
        entry["started_from"] = {"model": init, **{k: earlier[k] for k in ("size", "val_bacc", "val_bacc_calibrated",
                                                                           "epochs_trained", "train_config")
                                                   if k in earlier}}
    return entry


def export_onnx(model: Classifier | Ensemble, meta: dict, model_path: Path, out: Path, sample_pixels: np.ndarray,
                fp16: bool = False, data: dict | None = None, seen: dict | None = None) -> dict:
    """Write model.onnx with metadata (data: prepare.data_record, seen: seen.seen_record); check it against PyTorch
    on real pixels."""
    import onnx
    import onnxruntime as ort

    model = model.to(memory_format=torch.contiguous_format)
    wrapper = ExportWrapper(model, meta["temperature"], meta["class_bias"]).eval()
    size = meta["size"]
    dummy = torch.zeros(1, size, size, 3)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(wrapper, (dummy,), out, input_names=["pixels"],
                      output_names=["probabilities", "logits", "class_maps"],
                      dynamic_axes={"pixels": {0: "batch"}, "probabilities": {0: "batch"}, "logits": {0: "batch"},
                                    "class_maps": {0: "batch"}}, opset_version=17, dynamo=False)
    card = {k: meta[k] for k in ("arch", "classes", "size", "policy", "mean", "std", "temperature", "class_bias",
                                 "views")}
    card.update({"input": "pixels: float32 (batch, size, size, 3) RGB in 0..255, resized by 'policy'",
                 "skinlesion_version": __version__, "exported": date.today().isoformat(),
                 "weights": "float16" if fp16 else "float32", **recipe(meta)})
    if "members" in meta:  # an ensemble: each member's own recipe
        card["members"] = [{"model": m["source"], "temperature": m["temperature"], **recipe(m)}
                           for m in meta["members"]]
    # Reports that `skinlesion evaluate` left in the run folder travel with the model.
    reports = {split: Path(model_path).parent / f"eval-{split}" / "metrics.json" for split in ("val", "test")}
    card["metrics"] = {split: json.loads(path.read_text()) for split, path in reports.items() if path.exists()}
    if data:
        card["data"] = data
    onnx_model = onnx.load(out)
    entries = {METADATA_KEY: json.dumps(card)}
    if seen:
        entries[SEEN_KEY] = json.dumps(seen, separators=(",", ":"))
    for key, value in entries.items():
        entry = onnx_model.metadata_props.add()
        entry.key, entry.value = key, value
    if fp16:
        halve_weights(onnx_model)
    onnx.save(onnx_model, out)
    # Parity: the exported graph must give what PyTorch gives on real images.
    with torch.inference_mode():
        expected = wrapper(torch.from_numpy(sample_pixels.astype(np.float32)))[1].numpy()
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"pixels": sample_pixels.astype(np.float32)})[0]
    difference, limit = float(np.abs(got - expected).max()), 5e-2 if fp16 else 1e-3
    if difference > limit:
        raise ValueError(f"{out}: ONNX logits differ from PyTorch by {difference:.2e} (limit {limit:.0e})")
    return {"onnx": str(out), "bytes": out.stat().st_size, "parity_max_abs_diff": difference,
            "parity_images": int(len(sample_pixels)), **card}


def halve_weights(onnx_model) -> None:
    """Store large float32 weights as float16, cast back at load: half the file, float32 arithmetic.

    onnxruntime folds the casts into constants when it opens the file, so speed is unchanged. (On a 192 px
    EfficientNet-Lite0, dynamic int8 quantisation cut validation balanced accuracy from 0.633 to 0.362 and static
    per-channel int8 to 0.601; float16 storage changed no validation prediction.)
    """
    from onnx import TensorProto, helper, numpy_helper

    graph = onnx_model.graph
    casts = []
    for tensor in list(graph.initializer):
        weights = numpy_helper.to_array(tensor)
        if weights.dtype != np.float32 or weights.size < 1024:  # small tensors (biases, scales) stay float32
            continue
        graph.initializer.remove(tensor)
        graph.initializer.append(numpy_helper.from_array(weights.astype(np.float16), tensor.name + "_fp16"))
        casts.append(helper.make_node("Cast", [tensor.name + "_fp16"], [tensor.name], to=TensorProto.FLOAT))
    nodes = casts + list(graph.node)  # casts first keeps the graph topologically sorted
    del graph.node[:]
    graph.node.extend(nodes)


def read_card(onnx_path: Path) -> dict:
    """Return the metadata embedded in an exported model."""
    import onnx
    props = {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
    return json.loads(props[METADATA_KEY])


def recipe_lines(entry: dict) -> list[str]:
    """Render recipe(meta) as markdown list items."""
    lines = [f"- Training recipe: `{json.dumps(entry.get('train_config', {}))}`",
             f"- Epochs trained: {entry.get('epochs_trained', '?')}, {validation_scores(entry)}"]
    if "started_from" in entry:
        earlier = entry["started_from"]
        lines.append(f"- Started from `{earlier['model']}` ({earlier.get('size', '?')} px, "
                     f"{earlier.get('epochs_trained', '?')} epochs, {validation_scores(earlier)}), trained with "
                     f"`{json.dumps(earlier.get('train_config', {}))}`")
    if entry.get("color_constancy"):
        lines.append(f"- Colour constancy: the network greys the light of each photo first (shades of gray, power "
                     f"{entry['color_constancy']:g}), inside the exported graph, so serving does what training did")
    return lines


def validation_scores(entry: dict) -> str:
    """Render a run's validation balanced accuracy: top class, and calibrated where the run recorded it."""
    text = f"validation balanced accuracy of the top class {entry.get('val_bacc', float('nan')):.3f}"
    if "val_bacc_calibrated" in entry:
        text += f", of the calibrated decision {entry['val_bacc_calibrated']:.3f} (cross-fitted on halves)"
    return text


def after_calibration(card: dict) -> str:
    """An ensemble's calibrated validation score, where it was recorded (ensembles built since it was)."""
    if "val_bacc_calibrated" not in card:
        return ""
    return f", after it {card['val_bacc_calibrated']:.3f} (calibration fitted on one half, scored on the other)"


def add_to_card(onnx_path: Path, key: str, value) -> None:
    """Add one entry to the metadata embedded in an exported model."""
    import onnx
    onnx_model = onnx.load(str(onnx_path))
    entry = next(p for p in onnx_model.metadata_props if p.key == METADATA_KEY)
    entry.value = json.dumps({**json.loads(entry.value), key: value})
    onnx.save(onnx_model, str(onnx_path))


def write_model_card(onnx_path: Path, out: Path) -> Path:
    """Render MODEL_CARD.md from the model's own metadata, so card and model cannot disagree."""
    card = read_card(onnx_path)
    members = card.get("members", [])
    title = f"ensemble of {len(members)} {card['arch']}" if members else card["arch"]
    lines = [f"# Model card: {title} ({card['size']}x{card['size']} px)", "",
             "> **Research tool, not a diagnosis.** Not a medical device; its output must not replace a dermatologist.",
             "", f"- File: `{Path(onnx_path).name}` ({Path(onnx_path).stat().st_size / 1e6:.1f} MB, "
             f"{card.get('weights', 'float32')} weights, float32 arithmetic), exported "
             f"{card.get('exported', '?')} by skinlesion {card['skinlesion_version']}",
             f"- Classes (in output order): {', '.join(card['classes'])}",
             f"- Input: {card['size']}x{card['size']} px RGB, resize policy '{card['policy']}', a dark border round "
             f"the dermatoscope's lit field painted with the skin's colour, normalised inside the model (mean "
             f"{card['mean']}, std {card['std']})",
             f"- Calibration: temperature {card['temperature']:.3f} and one offset per class, fitted on the validation "
             f"split only, for equally common classes (the prior balanced accuracy assumes): each probability is what "
             f"it would be if all diagnoses were equally common, so where naevi dominate a naevus is likelier than "
             f"shown"]
    if members:
        views = card.get("views", 1)
        shown = f", each shown {views} turned and mirrored copies of the image" if views > 1 else ""
        lines.append(f"- {len(members)} network{'s' if len(members) > 1 else ''}{shown}; each network's probabilities "
                     f"are calibrated by its own temperature, averaged over networks and views, and the average "
                     f"calibrated as above. Validation balanced accuracy of the average before that calibration "
                     f"{card['val_bacc']:.3f}{after_calibration(card)}. The members:")
        for member in members:
            lines += [f"  - `{member['model']}`:"] + [f"    {line}" for line in recipe_lines(member)]
    else:
        lines += recipe_lines(card)
    if "float16_check" in card:
        check = card["float16_check"]
        lines.append(f"- The metrics below are PyTorch's. This file, with float16 weights, scores validation "
                     f"balanced accuracy {check['balanced_accuracy_onnx']:.4f} (PyTorch "
                     f"{check['balanced_accuracy_pytorch']:.4f}) and gives the same top class for "
                     f"{check['agreement']:.1%} of {check['images']} images.")
    lines.append("")
    grouping = "lesion-grouped" if (card.get("data") or {}).get("protocol", "lesion") == "lesion" else "split per photo"
    for split in ("val", "test"):
        m = card.get("metrics", {}).get(split)
        if not m:
            continue
        low, high = m["balanced_accuracy_ci95"]
        use = "; every choice and the calibration were made on it, so optimistic" if split == "val" else ""
        name = "Validation" if split == "val" else "Test"
        lines += [f"## {name} split ({m['images']} images, {grouping}{use})", "",
                  f"Balanced accuracy **{m['balanced_accuracy']:.3f}** (mean per-class recall, the ISIC metric; "
                  f"95% interval {low:.3f}-{high:.3f} by a bootstrap within classes); "
                  f"accuracy {m['accuracy']:.3f}; macro AUC {m['macro_auc']:.3f}; expected calibration error "
                  f"{m.get('ece_class_balanced', float('nan')):.3f} with classes weighted equally, as the "
                  f"probabilities assume ({m['ece']:.3f} unweighted).", "",
                  "| class | " + " | ".join(m["recall"]) + " |", "|---|" + "---:|" * len(m["recall"]),
                  "| recall | " + " | ".join("-" if r is None else f"{r:.3f}" for r in m["recall"].values()) + " |", ""]
    lines += reproduce_lines(onnx_path, card)
    lines += ["## Data and limitations", ""] + data_lines(card.get("data")) + [
              "- Every choice (epochs, recipe, ensemble members) and the calibration were made on the validation "
              "split; the test split was never used for them.",
              "- Dermoscopic photos only. Clinical (non-dermoscopic) photos, other body sites, skin types and cameras "
              "under-represented in ISIC will do worse. It is not a diagnostic device.", ""]
    Path(out).write_text("\n".join(lines))
    return Path(out)


def reproduce_lines(onnx_path: Path, card: dict) -> list[str]:
    """Say how to rebuild the test split from the file's own record of the photos it met (seen.py), if it has one."""
    from skinlesion.predict import Predictor

    seen = Predictor(onnx_path).seen
    if not seen:
        return []
    name = Path(onnx_path).name
    return ["## Checking the test figures", "",
            f"The file lists the ISIC ids of its {len(seen['train']['images']):,} training and "
            f"{len(seen['val']['images']):,} validation photos and of their lesions, so its split can be rebuilt from "
            f"the data alone, and its test figures checked:", "", "```bash",
            f"skinlesion prepare --data ISIC_2019_FOLDER --out prepared --balance all --classes "
            f"{','.join(card['classes'])} --size {card['size']} --resize {card['policy']} --splits-from {name}",
            f"skinlesion evaluate {name} --data prepared --split test", "```", "",
            "On a larger set (the full ISIC 2019 training set) the same commands test it on every photo it never met, "
            "photos of lesions it met left out.", ""] + (
        ["It also holds a near-duplicate hash of each of those photos, so `skinlesion predict` and the web app "
         "flag a renamed copy of one (or the same lesion photographed again) as well as a file named like one.", ""]
        if "hashes" in seen["train"] else [])


def data_lines(data: dict | None) -> list[str]:
    """Render the card's record of the data a model was trained and scored on (prepare.data_record) as list items."""
    if not data:  # files exported before cards recorded their data: all trained on the project's sample
        return ["- Trained on a 12,922-image sample of the ISIC 2019 training set (HAM10000 almost complete, most of "
                "MSK, only 14 BCN_20000 images), downsized to at most 256 px. Licence CC BY-NC: non-commercial use "
                "only.",
                "- Rare classes are thin: AK 130, DF 115, VASC 142, SCC 197 images in the whole sample, so their "
                "recalls rest on about 20-30 test images each and are uncertain by roughly +-10 points.",
                "- Split by lesion (no lesion in two of train/val/test)."]
    split = ("by lesion (no lesion in two of train/val/test)" if data["protocol"] == "lesion" else
             "per photo, as the paper does (photos of one lesion can sit in two splits)")
    per_class = ", ".join(f"{code} {n}" for code, n in data["per_class"].items())
    lines = [f"- Trained on {sum(data['train'].values()):,} of the {data['images']:,} photos read from "
             f"`{data['folder']}` ({per_class}); validation {sum(data['val'].values()):,} and test "
             f"{sum(data['test'].values()):,} photos, split {split}. ISIC data is CC BY-NC: non-commercial use only."]
    thin = {code: n for code, n in data["test"].items() if 0 < n < 100}  # recall uncertain by 5 points or more
    if thin:
        error = sorted(50 / n ** 0.5 for n in thin.values())  # one standard error of a recall near 50%, in points
        lines.append(f"- Rare classes are thin: their test recalls rest on "
                     f"{', '.join(f'{code} {n}' for code, n in thin.items())} photos, so each is uncertain by roughly "
                     f"+-{error[0]:.0f} to +-{error[-1]:.0f} points.")
    return lines


def export_with_checks(model_path: Path, out: Path, prepared_dir: Path | None, fp16: bool) -> dict:
    """Export with parity checked on validation images; with fp16, also score the file on all of validation."""
    model_file = resolve_model(model_path)
    model, meta = load_model(model_file)
    trained_on = Path(meta.get("prepared", ""))
    prepared = load_prepared(prepared_dir or trained_on)
    # What the model was trained on and met comes from its own folder while that is found: a --data folder dealt
    # otherwise would record the wrong photos as seen. Without it, --data is taken to be that folder, moved.
    recorded = load_prepared(trained_on) if meta.get("prepared") and trained_on.is_dir() else prepared
    folders = [recorded, *member_folders(meta, recorded.out_dir)]
    val = prepared.split("val")
    sample = np.asarray(prepared.pixels[val["cache_row"].to_numpy()[:64]])
    report = export_onnx(model, meta, model_file, Path(out), sample, fp16, data=data_record(recorded),
                         seen=joined_seen_record([(f.table, photo_hashes(f)) for f in folders]))
    report["recorded_from"] = ", ".join(str(folder.out_dir) for folder in folders)
    if fp16:
        report["validation"] = compare_with_pytorch(Path(out), model_file, prepared)
        add_to_card(Path(out), "float16_check", report["validation"])  # the card's metrics come from PyTorch
    return report


def member_folders(meta: dict, own: Path) -> list[Prepared]:
    """Return the training folders of an ensemble's members other than `own` (found from here): a member may have
    trained on another split of the same photos, whose training photos the ensemble's folder leaves unused."""
    folders = {Path(m["prepared"]).resolve() for m in meta.get("members", []) if m.get("prepared")}
    return [load_prepared(folder) for folder in sorted(folders) if folder.is_dir() and folder != own.resolve()]


def compare_with_pytorch(onnx_path: Path, model_file: Path, prepared: Prepared) -> dict:
    """Score the exported file and the PyTorch model on the validation split; return both and their agreement."""
    rows = prepared.split("val")
    pixels = prepared.pixels[rows["cache_row"].to_numpy()]
    # The same scoring path as `skinlesion evaluate`: raw logits, then each model's own calibration.
    onnx_logits, card = saved_model_logits(onnx_path, pixels)
    exported = calibrated(onnx_logits, card).argmax(1)
    original = calibrated(*saved_model_logits(model_file, pixels)).argmax(1)
    classes = card["classes"]
    y = rows["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    k = len(classes)
    return {"balanced_accuracy_onnx": balanced_accuracy(y, exported, k),
            "balanced_accuracy_pytorch": balanced_accuracy(y, original, k),
            "agreement": float((exported == original).mean()), "images": int(len(y))}
