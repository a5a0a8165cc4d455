"""ONNX export with the model's metadata embedded (card.py renders it) and a parity check against PyTorch."""

import json
import os
from datetime import date
from pathlib import Path

import numpy as np
import torch
from torch import nn

from skinlesion import __version__
from skinlesion.calibration import calibrated
from skinlesion.card import add_to_card
from skinlesion.evaluate import resolve_model, saved_model_logits
from skinlesion.metrics import balanced_accuracy
from skinlesion.models import Classifier, Ensemble, load_model, read_model_file
from skinlesion.predict import METADATA_KEY
from skinlesion.prepare import Prepared, data_record, load_prepared, photo_hashes
from skinlesion.referral import (REFERRAL_SENSITIVITY, check_sensitivity, describe_referral, fit_referral,
                                 referral_scores)
from skinlesion.seen import SEEN_KEY, joined_seen_record, seen_before


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
                                  "color_constancy", "trained_with") if k in meta}
    init = meta.get("train_config", {}).get("init")
    if init:
        earlier = read_model_file(init) if Path(init).is_file() else {}
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
    # float16 keeps about three significant digits of each weight, so a logit's rounding error grows with its size:
    # allow 3% of it on top (a tiny 32 px network, logits up to 8, was off by 0.15); a broken graph is off by far more.
    error = np.abs(got - expected)
    difference = float(error.max())
    limit, relative = (5e-2, 3e-2) if fp16 else (1e-3, 0.0)
    if not np.all(error <= limit + relative * np.abs(expected)):
        allowed = f"limit {limit:.0e} + {relative:.0%} of the logit" if fp16 else f"limit {limit:.0e}"
        raise ValueError(f"{out}: ONNX logits differ from PyTorch by {difference:.2e} ({allowed})")
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


def export_with_checks(model_path: Path, out: Path, prepared_dir: Path | None, fp16: bool,
                       referral_sensitivity: float = REFERRAL_SENSITIVITY) -> dict:
    """Export with parity checked on validation images; with fp16, also score the file on all of validation; fit the
    referral rule (add_referral) for that share of validation's cancers and pre-cancers."""
    check_sensitivity(referral_sensitivity)  # before minutes of work
    model_file = resolve_model(model_path)
    model, meta = load_model(model_file)
    trained_on = Path(meta.get("prepared", ""))
    prepared = load_prepared(prepared_dir or trained_on)
    # What the model was trained on and met comes from its own folder while that is found: a --data folder dealt
    # otherwise would record the wrong photos as seen. Without it, --data is taken to be that folder, moved.
    found = meta.get("prepared") and trained_on.is_dir() and trained_on.resolve() != prepared.out_dir.resolve()
    recorded = load_prepared(trained_on) if found else prepared
    folders = [recorded, *member_folders(meta, recorded.out_dir)]
    val = prepared.split("val")
    sample = np.asarray(prepared.pixels[val["cache_row"].to_numpy()[:64]])
    # Written and checked beside `out`, renamed over it only when every check passed: a file that failed one, or an
    # export killed midway, never lies where a good model (the bundled one, say) is expected.
    out = Path(out)
    partial = out.with_name(f"{out.stem}.partial{out.suffix}")  # the suffix tells .onnx files from checkpoints
    try:
        report = export_onnx(model, meta, model_file, partial, sample, fp16, data=data_record(recorded),
                             seen=joined_seen_record([(f.table, photo_hashes(f.out_dir)) for f in folders]))
        scored = {}  # the file's validation logits, computed once for the float16 check and the referral fit
        if fp16:
            scored["val"] = saved_model_logits(partial, prepared.pixels[val["cache_row"].to_numpy()])
            report["validation"] = compare_with_pytorch(scored["val"], model_file, prepared)
            add_to_card(partial, "float16_check", report["validation"])  # the card's metrics come from PyTorch
        report["referral"] = add_referral(partial, prepared, referral_sensitivity, scored)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, out)
    report["onnx"], report["recorded_from"] = str(out), ", ".join(str(folder.out_dir) for folder in folders)
    return report


def describe_export(report: dict) -> list[str]:
    """Say what export_with_checks wrote and how its checks and referral rule came out."""
    lines = [f"wrote {report['onnx']} ({report['bytes'] / 1e6:.1f} MB); parity with PyTorch on "
             f"{report['parity_images']} real images: max |logit difference| {report['parity_max_abs_diff']:.2e}",
             f"recorded the photos it was trained and validated on from {report['recorded_from']}"]
    if "validation" in report:
        v = report["validation"]
        lines.append(f"float16 weights: validation balanced accuracy {v['balanced_accuracy_onnx']:.4f} vs "
                     f"{v['balanced_accuracy_pytorch']:.4f} in PyTorch; same top class for {v['agreement']:.1%} "
                     f"of {v['images']} images")
    rule = report["referral"]
    if not rule:
        return lines + ["no referral threshold: validation needs photos of benign and of non-benign classes"]
    return lines + [f"{split}: {describe_referral(rule['threshold'], rule[split], report['classes'])}"
                    for split in ("val", "test") if split in rule]


def add_referral(onnx_path: Path, prepared: Prepared, sensitivity: float = REFERRAL_SENSITIVITY,
                 file_logits: dict | None = None) -> dict | None:
    """Fit the referral rule (referral.py) on the validation split through the exported file itself, so it holds for
    the file's own probabilities; score it on the test split; add both to the file's card. `file_logits` holds
    saved_model_logits' answer for a split already run through the file (export's float16 check)."""
    scored, file_logits = {}, file_logits or {}
    for split in ("val", "test"):
        rows = prepared.split(split)
        if not len(rows):
            continue
        if split not in file_logits:
            file_logits[split] = saved_model_logits(onnx_path, prepared.pixels[rows["cache_row"].to_numpy()])
        logits, card = file_logits[split]
        # As `evaluate` scores: no photo the model met counts (another --data folder may hold some).
        met = seen_before(rows, card, split, by_lesion=prepared.protocol == "lesion",
                          hashes=photo_hashes(prepared.out_dir))[0]
        if (~met).any():
            scored[split] = (calibrated(logits[~met], card), rows["label"].to_numpy()[~met])
    rule = fit_referral(*scored["val"], card["classes"], sensitivity) if "val" in scored else None
    if rule and "test" in scored:
        rule["test"] = referral_scores(*scored["test"], card["classes"], rule["threshold"])
    if rule:
        add_to_card(onnx_path, "referral", rule)
    return rule


def member_folders(meta: dict, own: Path) -> list[Prepared]:
    """Return the training folders of an ensemble's members other than `own` (found from here): a member may have
    trained on another split of the same photos, whose training photos the ensemble's folder leaves unused."""
    folders = {Path(m["prepared"]).resolve() for m in meta.get("members", []) if m.get("prepared")}
    return [load_prepared(folder) for folder in sorted(folders) if folder.is_dir() and folder != own.resolve()]


def compare_with_pytorch(file_logits: tuple[np.ndarray, dict], model_file: Path, prepared: Prepared) -> dict:
    """Score the exported file (its saved_model_logits on the validation split) and the PyTorch model on the
    validation split; return both and their agreement."""
    rows = prepared.split("val")
    pixels = prepared.pixels[rows["cache_row"].to_numpy()]
    # The same scoring path as `skinlesion evaluate`: raw logits, then each model's own calibration.
    onnx_logits, card = file_logits
    exported = calibrated(onnx_logits, card).argmax(1)
    original = calibrated(*saved_model_logits(model_file, pixels)).argmax(1)
    classes = card["classes"]
    y = rows["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    k = len(classes)
    return {"balanced_accuracy_onnx": balanced_accuracy(y, exported, k),
            "balanced_accuracy_pytorch": balanced_accuracy(y, original, k),
            "agreement": float((exported == original).mean()), "images": int(len(y))}
