"""Metrics and reports: balanced accuracy (the official ISIC metric) first, then everything else. No torch."""

import json
from pathlib import Path

import numpy as np
import pandas as pd

from skinlesion.classes import CODES


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> np.ndarray:
    """Return counts (k, k): rows are true classes, columns predictions."""
    return np.bincount(y_true * k + y_pred, minlength=k * k).reshape(k, k)


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> float:
    """Mean recall over the classes present in y_true (the ISIC 2019 challenge metric)."""
    matrix = confusion_matrix(np.asarray(y_true), np.asarray(y_pred), k)
    support = matrix.sum(axis=1)
    present = support > 0
    return float((np.diag(matrix)[present] / support[present]).mean()) if present.any() else 0.0


def balanced_accuracy_interval(y_true: np.ndarray, y_pred: np.ndarray, k: int, rounds: int = 10_000,
                               seed: int = 0) -> tuple[float, float]:
    """95% interval of balanced accuracy by a bootstrap that resamples images within each class.

    Resampling n images of a class with recall p gives Binomial(n, p) / n, so rare classes (20-30 test images)
    widen the interval as much as they should.
    """
    matrix = confusion_matrix(np.asarray(y_true), np.asarray(y_pred), k)
    support = matrix.sum(axis=1)
    present = support > 0
    if not present.any():
        return 0.0, 0.0
    n, hits = support[present], np.diag(matrix)[present]
    recalls = np.random.default_rng(seed).binomial(n, hits / n, size=(rounds, len(n))) / n
    low, high = np.percentile(recalls.mean(axis=1), [2.5, 97.5])
    return float(low), float(high)


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """One-vs-rest ROC AUC by the rank-sum (Mann-Whitney) formula, ties averaged; nan if one-sided."""
    n_pos, n_neg = positive.sum(), (~positive).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = pd.Series(scores).rank(method="average").to_numpy()
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def per_class_table(y_true: np.ndarray, probs: np.ndarray, classes) -> pd.DataFrame:
    """Return precision, recall, F1, AUC and support per class."""
    k = len(classes)
    y_pred = probs.argmax(axis=1)
    matrix = confusion_matrix(y_true, y_pred, k)
    tp, support, predicted = np.diag(matrix), matrix.sum(axis=1), matrix.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, np.nan)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    auc = [roc_auc(probs[:, i], y_true == i) for i in range(k)]
    return pd.DataFrame({"precision": precision, "recall": recall, "f1": f1, "auc": auc, "support": support},
                        index=list(classes))


def confidence_bins(probs: np.ndarray, y_true: np.ndarray, bins: int):
    """Return (top-class confidence, correct, bin index of each image) for equal-width bins."""
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == y_true
    which = np.clip(np.digitize(confidence, np.linspace(0, 1, bins + 1)[1:-1]), 0, bins - 1)
    return confidence, correct, which


def expected_calibration_error(probs: np.ndarray, y_true: np.ndarray, bins: int = 15, weights=None) -> float:
    """Weighted mean |accuracy - confidence| over equal-width confidence bins of the top class."""
    confidence, correct, which = confidence_bins(probs, y_true, bins)
    weights = np.ones(len(y_true)) if weights is None else np.asarray(weights, dtype=float)
    weights = weights / weights.sum()
    error = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            w = weights[inside]
            error += w.sum() * abs(np.average(correct[inside], weights=w) - np.average(confidence[inside], weights=w))
    return float(error)


def class_balanced_weights(y_true: np.ndarray) -> np.ndarray:
    """Weight every image by 1 / its class's count: each class counts equally, as balanced accuracy has it."""
    return 1.0 / np.bincount(y_true)[y_true]


def calibrated_logits(logits: np.ndarray, temperature: float, class_bias=0.0) -> np.ndarray:
    """The calibrated decision's scores: logits / T + class offsets (softmax of them are the shipped probabilities)."""
    return logits / temperature + np.asarray(class_bias)


def negative_log_likelihood(logits: np.ndarray, y_true: np.ndarray, temperature: float, bias=0.0) -> float:
    probs = softmax(calibrated_logits(logits, temperature, bias))
    return float(-np.log(np.clip(probs[np.arange(len(y_true)), y_true], 1e-12, None)).mean())


def fit_temperature(logits: np.ndarray, y_true: np.ndarray, bias=0.0) -> float:
    """Find the temperature that minimises validation NLL (golden-section search on log T)."""
    lo, hi = np.log(0.05), np.log(20.0)
    ratio = (np.sqrt(5) - 1) / 2
    for _ in range(60):
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        if negative_log_likelihood(logits, y_true, np.exp(a), bias) < negative_log_likelihood(logits, y_true,
                                                                                              np.exp(b), bias):
            hi = b
        else:
            lo = a
    return float(np.exp((lo + hi) / 2))


def fit_calibration(logits: np.ndarray, y_true: np.ndarray, rounds: int = 5,
                    steps: int = 300) -> tuple[float, np.ndarray]:
    """Fit (temperature, class_bias) on validation so softmax(logits / T + class_bias) suits balanced accuracy.

    A temperature and one offset per class are fitted by validation NLL (both convex; alternated), which makes
    the probabilities honest for validation's class mix. Subtracting the log of that mix then gives the
    probabilities for equally common classes, the prior that balanced accuracy scores: their top class is the
    Bayes decision for it. A network trained on oversampled rare classes still under-calls them on new images
    (it memorised its few examples); this moves 5-8 points of test balanced accuracy on our sample.
    Classes absent from validation get the lowest offset, so nothing unmeasured is favoured.
    """
    k = logits.shape[1]
    counts = np.bincount(y_true, minlength=k)
    present = counts > 0
    onehot = np.eye(k)[y_true]
    bias, temperature = np.zeros(k), 1.0
    for _ in range(rounds):
        temperature = fit_temperature(logits, y_true, bias)
        for _ in range(steps):  # gradient descent; the NLL's curvature in the offsets is at most 1/2
            gradient = (softmax(calibrated_logits(logits, temperature, bias)) - onehot).mean(axis=0)
            bias -= np.where(present, gradient, 0.0)
    balanced = bias - np.log(np.where(present, counts, 1) / len(y_true))
    return temperature, np.where(present, balanced, balanced[present].min())


def cross_fitted_balanced_accuracy(logits: np.ndarray, y_true: np.ndarray, halvings: int = 3, seed: int = 0) -> float:
    """Return the balanced accuracy of calibrated predictions, calibration fitted on one half and scored on the other.

    Training selects checkpoints by it (by default): the calibrated decision is the one we ship; the top class of
    the raw logits is a poor proxy for it (near chance for a network trained on the natural class mix). Halves are
    drawn within each class, so both hold every class that has two or more images.
    """
    rng = np.random.default_rng(seed)
    k = logits.shape[1]
    scores = []
    for _ in range(halvings):
        half = np.zeros(len(y_true), dtype=bool)
        for c in range(k):
            members = rng.permutation(np.flatnonzero(y_true == c))
            half[members[: len(members) // 2]] = True
        predicted = np.zeros(len(y_true), dtype=int)
        for part in (half, ~half):
            temperature, class_bias = fit_calibration(logits[~part], y_true[~part])
            predicted[part] = calibrated_logits(logits[part], temperature, class_bias).argmax(axis=1)
        scores.append(balanced_accuracy(y_true, predicted, k))
    return float(np.mean(scores))


def calibrated(logits: np.ndarray, meta: dict) -> np.ndarray:
    """Return a saved model's probabilities: its temperature and class offsets (models.load_model's metadata)."""
    return softmax(calibrated_logits(logits, meta["temperature"], meta["class_bias"]))


def summarise(y_true: np.ndarray, probs: np.ndarray, classes) -> dict:
    """Return the headline metrics, balanced accuracy first."""
    table = per_class_table(y_true, probs, classes)
    y_pred = probs.argmax(axis=1)
    return {
        "balanced_accuracy": balanced_accuracy(y_true, y_pred, len(classes)),
        "balanced_accuracy_ci95": balanced_accuracy_interval(y_true, y_pred, len(classes)),
        "accuracy": float((y_pred == y_true).mean()),
        "macro_auc": float(np.nanmean(table["auc"])),
        "ece": expected_calibration_error(probs, y_true),
        "ece_class_balanced": expected_calibration_error(probs, y_true, weights=class_balanced_weights(y_true)),
        "recall": {c: (None if np.isnan(r) else float(r)) for c, r in table["recall"].items()},
        "images": int(len(y_true)),
    }


def write_submission(path: Path, images, probs: np.ndarray, classes, columns=CODES) -> None:
    """Write an ISIC submission CSV: image + one probability column per code; 0.0 for codes the model lacks."""
    frame = pd.DataFrame({"image": list(images)})
    for code in columns:
        frame[code] = probs[:, list(classes).index(code)].astype(float) if code in classes else 0.0
    frame.to_csv(path, index=False, float_format="%.8f")  # enough digits that rounding does not create argmax ties


def write_truth(path: Path, images, y_true: np.ndarray, classes) -> None:
    """Write one-hot ground truth in the ISIC layout for the official scorer."""
    onehot = np.eye(len(classes))[y_true]
    frame = pd.DataFrame(onehot, columns=list(classes))
    frame.insert(0, "image", list(images))
    frame.to_csv(path, index=False, float_format="%.1f")


def pyplot():
    """Return matplotlib's pyplot on the file-only backend (imported late: serving never needs it)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_confusion(matrix: np.ndarray, classes, path: Path) -> None:
    plt = pyplot()
    share = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(5.5, 4.8))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{matrix[i, j]}", ha="center", va="center",
                    color="white" if share[i, j] > 0.5 else "black", fontsize=8)
    ax.set_title("confusion matrix (colour: share of true class)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_reliability(probs: np.ndarray, y_true: np.ndarray, path: Path, bins: int = 15) -> None:
    plt = pyplot()
    _, correct, which = confidence_bins(probs, y_true, bins)
    centres = (np.arange(bins) + 0.5) / bins
    accuracy = [correct[which == b].mean() if (which == b).any() else 0 for b in range(bins)]
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.bar(centres, accuracy, width=1 / bins, edgecolor="black", alpha=0.7, label="accuracy")
    ax.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    ax.set_xlabel("confidence of the top class")
    ax.set_ylabel("accuracy")
    ax.set_title(f"reliability (ECE {expected_calibration_error(probs, y_true, bins):.3f})")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(out_dir: Path, images, y_true: np.ndarray, probs: np.ndarray, classes, extra: dict) -> dict:
    """Write metrics.json, per_class.csv, the plots, predictions.csv and truth.csv; return the metrics."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = {**summarise(y_true, probs, classes), **extra}
    per_class_table(y_true, probs, classes).to_csv(out_dir / "per_class.csv", index_label="class")
    plot_confusion(confusion_matrix(y_true, probs.argmax(1), len(classes)), classes, out_dir / "confusion.png")
    plot_reliability(probs, y_true, out_dir / "reliability.png")
    write_submission(out_dir / "predictions.csv", images, probs, classes, columns=classes)
    write_truth(out_dir / "truth.csv", images, y_true, classes)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics


def resolve_model(path: Path) -> Path:
    """Accept a run folder (its model.pt) or a model file."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: model not found; pass a run folder with model.pt or a model file")
    return path


def evaluate_model(model_path: Path, prepared_dir: Path, split: str, out_dir: Path | None = None) -> tuple[dict, Path]:
    """Score a saved model (model.pt or an exported .onnx file) on one split of prepared data; write the report."""
    from skinlesion.prepare import load_prepared

    model_path = resolve_model(model_path)
    prepared = load_prepared(prepared_dir)
    rows = prepared.split(split)
    logits, meta = saved_model_logits(model_path, prepared.pixels[rows["cache_row"].to_numpy()])
    classes = meta["classes"]
    unknown = sorted(set(rows["label"]) - set(classes))
    if unknown:
        raise ValueError(f"{prepared_dir}: the {split} split has classes the model lacks: {', '.join(unknown)}")
    if (meta["size"], meta["policy"]) != (prepared.size, prepared.policy):
        raise ValueError(f"{model_path} expects {meta['size']}px '{meta['policy']}' images but {prepared_dir} "
                         f"holds {prepared.size}px '{prepared.policy}'; prepare the data at the model's size")
    y_true = rows["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    probs = calibrated(logits, meta)
    # An exported file may sit in the installed package: its report goes to the current folder instead.
    default = Path(f"eval-{model_path.stem}-{split}") if model_path.suffix == ".onnx" else \
        model_path.parent / f"eval-{split}"
    out_dir = Path(out_dir) if out_dir else default
    extra = {"split": split, "model": str(model_path), "prepared": str(prepared_dir),
             "temperature": meta["temperature"], "class_bias": list(meta["class_bias"]),
             "ece_uncalibrated": expected_calibration_error(softmax(logits), y_true)}
    return write_report(out_dir, rows["image"], y_true, probs, classes, extra), out_dir


def saved_model_logits(model_path: Path, pixels: np.ndarray) -> tuple[np.ndarray, dict]:
    """Return raw logits (N, K) and the model's metadata: an .onnx file through onnxruntime, else through torch."""
    if model_path.suffix != ".onnx":
        from skinlesion.training import model_logits as torch_logits  # torch only here, when a checkpoint is scored
        return torch_logits(model_path, pixels)
    from skinlesion.predict import Predictor
    predictor = Predictor(model_path)
    batches = range(0, len(pixels), 32)  # small: an ensemble multiplies the batch by its views (memory)
    card = {"class_bias": [0.0] * len(predictor.classes), **predictor.card}  # files exported before class offsets
    return np.concatenate([predictor.logits(pixels[i:i + 32]) for i in batches]), card
