"""ONNX export with the model's metadata embedded and a parity check against PyTorch."""

import json
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from skinlesion import __version__
from skinlesion.evaluate import balanced_accuracy, resolve_model
from skinlesion.models import Classifier, load_model
from skinlesion.prepare import Prepared, load_prepared

METADATA_KEY = "skinlesion"


class ExportWrapper(nn.Module):
    """Take (B, H, W, 3) float pixels in 0..255 as the predictor decodes them; return what it needs."""

    def __init__(self, model: Classifier, temperature: float):
        super().__init__()
        self.model, self.temperature = model, temperature

    def forward(self, pixels: torch.Tensor):
        logits, features = self.model.forward_features(pixels.permute(0, 3, 1, 2))
        probabilities = torch.softmax(logits / self.temperature, dim=1)  # calibrated on validation
        return probabilities, logits, self.model.class_maps(features)  # (B, K), (B, K), (B, K, h, w)


def export_onnx(model_path: Path, out: Path, sample_pixels: np.ndarray) -> dict:
    """Write model.onnx with metadata; check it against PyTorch on real pixels; return the report."""
    import onnx
    import onnxruntime as ort

    model, meta = load_model(resolve_model(model_path))
    model = model.to(memory_format=torch.contiguous_format)
    wrapper = ExportWrapper(model, meta["temperature"]).eval()
    size = meta["size"]
    dummy = torch.zeros(1, size, size, 3)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(wrapper, (dummy,), out, input_names=["pixels"],
                      output_names=["probabilities", "logits", "class_maps"],
                      dynamic_axes={"pixels": {0: "batch"}, "probabilities": {0: "batch"}, "logits": {0: "batch"},
                                    "class_maps": {0: "batch"}}, opset_version=17, dynamo=False)
    card = {k: meta[k] for k in ("arch", "classes", "size", "policy", "mean", "std", "temperature")}
    card.update({"input": "pixels: float32 (batch, size, size, 3) RGB in 0..255, resized by 'policy'",
                 "skinlesion_version": __version__,
                 **{k: meta[k] for k in ("val_bacc", "epochs_trained", "train_config") if k in meta}})
    onnx_model = onnx.load(out)
    entry = onnx_model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(card)
    onnx.save(onnx_model, out)
    # Parity: the exported graph must give what PyTorch gives on real images.
    with torch.inference_mode():
        expected = wrapper(torch.from_numpy(sample_pixels.astype(np.float32)))[1].numpy()
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"pixels": sample_pixels.astype(np.float32)})[0]
    difference = float(np.abs(got - expected).max())
    if difference > 1e-3:
        raise ValueError(f"{out}: ONNX logits differ from PyTorch by {difference:.2e} (limit 1e-3)")
    return {"onnx": str(out), "bytes": out.stat().st_size, "parity_max_abs_diff": difference,
            "parity_images": int(len(sample_pixels)), **card}


def quantize_int8(onnx_path: Path, out: Path) -> Path:
    """Write a dynamically int8-quantised copy (weights int8, activations quantised at run time)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(onnx_path), str(out), weight_type=QuantType.QInt8)
    # quantize_dynamic keeps the graph but not always the metadata: copy it over.
    source, target = onnx.load(onnx_path), onnx.load(out)
    if not any(p.key == METADATA_KEY for p in target.metadata_props):
        for prop in source.metadata_props:
            target.metadata_props.add().CopyFrom(prop)
        onnx.save(target, out)
    return Path(out)


def export_with_checks(model_path: Path, out: Path, prepared_dir: Path | None, int8: bool) -> dict:
    """Export with parity checked on validation images; optionally quantise and report the accuracy cost."""
    model_file = resolve_model(model_path)
    meta = torch.load(model_file, map_location="cpu", weights_only=False)
    prepared = load_prepared(prepared_dir or Path(meta.get("prepared", "")))
    val = prepared.split("val")
    report = export_onnx(model_file, Path(out), np.asarray(prepared.pixels[val["cache_row"].to_numpy()[:64]]))
    if int8:
        logging.getLogger().setLevel(logging.ERROR)  # quantize_dynamic logs advice on every call
        quantised = quantize_int8(Path(out), Path(out).with_name(Path(out).stem + "-int8.onnx"))
        report["int8"] = compare_models(Path(out), quantised, prepared)
    return report


def compare_models(fp32: Path, int8: Path, prepared: Prepared) -> dict:
    """Score two exported models on the validation split; return balanced accuracy of both."""
    from skinlesion.predict import Predictor

    rows = prepared.split("val")
    pixels = prepared.pixels[rows["cache_row"].to_numpy()]
    result = {"path": str(int8), "bytes": int8.stat().st_size}
    tops = {}
    for name, path in (("fp32", fp32), ("int8", int8)):
        predictor = Predictor(path)
        probs = np.concatenate([predictor.run(pixels[i:i + 256])[0] for i in range(0, len(pixels), 256)])
        y = rows["label"].map({c: i for i, c in enumerate(predictor.classes)}).to_numpy()
        tops[name] = probs.argmax(1)
        result[f"balanced_accuracy_{name}"] = balanced_accuracy(y, tops[name], len(predictor.classes))
    result["agreement"] = float((tops["fp32"] == tops["int8"]).mean())
    return result
