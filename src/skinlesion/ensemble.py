"""Ensembles: average the calibrated probabilities of several trained runs and views, then calibrate the average."""

from pathlib import Path

import numpy as np
import torch

from skinlesion.calibration import cross_fitted_balanced_accuracy, fit_calibration
from skinlesion.evaluate import resolve_model
from skinlesion.metrics import balanced_accuracy
from skinlesion.models import (MODEL_FORMAT, Ensemble, build_classifier, predict_logits, read_model_file,
                              save_ensemble)
from skinlesion.prepare import load_prepared
from skinlesion.runs import check_held_out

# Validation halvings behind the recorded calibrated score: more than training's 3 per epoch, since it is scored
# once and one halving alone varies by about 0.01 (README's ensemble figures use 10).
ENSEMBLE_HALVINGS = 10


def read_member(path: Path) -> dict:
    """Return a saved model file's contents (weights and metadata), refusing anything but one trained network."""
    meta = read_model_file(path)
    if meta["format"] != MODEL_FORMAT:
        raise ValueError(f"{path}: not a model file from 'skinlesion train' (ensembles cannot be nested)")
    return {**meta, "source": str(path)}


def build_ensemble(runs: list[Path], out_dir: Path, prepared_dir: Path | None = None,
                   views: int = 1) -> tuple[Path, dict]:
    """Combine runs (same network, classes and input), each shown `views` symmetries of the image, into
    out_dir/model.pt; return it with validation scores."""
    if len(runs) < 2 and views == 1:
        raise ValueError("an ensemble needs at least two runs, or one run with --views 2, 4 or 8")
    paths = [resolve_model(run) for run in runs]
    members = [read_member(path) for path in paths]
    first = members[0]
    for path, member in zip(paths[1:], members[1:]):
        for key in ("arch", "classes", "size", "policy"):
            if member[key] != first[key]:
                raise ValueError(f"{path}: {key} {member[key]} differs from {paths[0]}'s {first[key]}")
    prepared = load_prepared(prepared_dir or Path(first.get("prepared", "")))
    if (prepared.size, prepared.policy) != (first["size"], first["policy"]):
        raise ValueError(f"{prepared.out_dir} holds {prepared.size}px '{prepared.policy}' images but the runs expect "
                         f"{first['size']}px '{first['policy']}'")
    for path, member in zip(paths, members):
        check_held_out(path, member, prepared)  # no member may have trained on the images we calibrate and test on
    model = Ensemble([build_classifier(dict(m)) for m in members], [m["temperature"] for m in members], views)
    val = prepared.split("val")
    pixels = torch.from_numpy(np.ascontiguousarray(prepared.pixels[val["cache_row"].to_numpy()]))
    mean_log = predict_logits(model.eval().to(memory_format=torch.channels_last), pixels)  # (N, K)
    y_true = val["label"].map({c: i for i, c in enumerate(first["classes"])}).to_numpy()
    temperature, class_bias = fit_calibration(mean_log, y_true)
    scores = {"members_val_bacc": [m.get("val_bacc", float("nan")) for m in members],
              "val_bacc": balanced_accuracy(y_true, mean_log.argmax(1), len(first["classes"])),
              "val_bacc_calibrated": cross_fitted_balanced_accuracy(mean_log, y_true, halvings=ENSEMBLE_HALVINGS)}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / "model.pt"
    save_ensemble(members, out, views=views, temperature=temperature, class_bias=class_bias,
                  extra={"val_bacc": scores["val_bacc"], "val_bacc_calibrated": scores["val_bacc_calibrated"],
                         "prepared": str(prepared.out_dir)})
    return out, scores
