"""Metrics: balanced accuracy (the official ISIC metric) first, then per-class and calibration scores. No torch."""

import numpy as np
import pandas as pd


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


def paired_difference(y_true: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray, k: int, rounds: int = 10_000,
                      seed: int = 0) -> tuple[float, float, float]:
    """Balanced accuracy of B minus A on the same images, with its 95% interval by a paired bootstrap: images are
    resampled within each class with both models' answers kept together, so an image both get right (or wrong)
    moves neither, and the interval is far narrower than the two separate intervals suggest."""
    y_true, right_a, right_b = np.asarray(y_true), np.asarray(pred_a) == y_true, np.asarray(pred_b) == y_true
    present = [c for c in range(k) if (y_true == c).any()]
    if not present:
        return 0.0, 0.0, 0.0
    rng, differences = np.random.default_rng(seed), np.zeros(rounds)
    for c in present:
        a, b = right_a[y_true == c], right_b[y_true == c]
        # Each image is one of: only A right, only B right, or the same for both; resample the class's n images.
        cells = np.array([(a & ~b).sum(), (~a & b).sum(), (a == b).sum()])
        draws = rng.multinomial(len(a), cells / len(a), size=rounds)
        differences += (draws[:, 1] - draws[:, 0]) / len(a)
    differences /= len(present)
    low, high = np.percentile(differences, [2.5, 97.5])
    return balanced_accuracy(y_true, pred_b, k) - balanced_accuracy(y_true, pred_a, k), float(low), float(high)


def paired_score_difference(score, y_true: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray,
                            rounds: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """score(y_true, scores) of B minus A on the same images (an AUC, say), with its 95% interval by the paired
    bootstrap of paired_difference: images resampled within each class, both models' scores kept together."""
    y_true = np.asarray(y_true)
    by_class = [np.flatnonzero(y_true == c) for c in np.unique(y_true)]
    rng, differences = np.random.default_rng(seed), np.zeros(rounds)
    for r in range(rounds):
        rows = np.concatenate([rng.choice(members, len(members)) for members in by_class])
        differences[r] = score(y_true[rows], scores_b[rows]) - score(y_true[rows], scores_a[rows])
    low, high = np.percentile(differences, [2.5, 97.5])
    return score(y_true, scores_b) - score(y_true, scores_a), float(low), float(high)


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """One-vs-rest ROC AUC by the rank-sum (Mann-Whitney) formula, ties averaged; nan if one-sided."""
    n_pos, n_neg = positive.sum(), (~positive).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = pd.Series(scores).rank(method="average").to_numpy()
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def macro_auc(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Mean one-vs-rest AUC over the classes of probs' columns that y_true holds photos of, and of other classes."""
    return mean_auc([roc_auc(probs[:, i], y_true == i) for i in range(probs.shape[1])])


def mean_auc(aucs) -> float:
    """Mean of per-class AUCs, leaving out classes without one (NaN); NaN when no class has one."""
    aucs = np.asarray(aucs, dtype=float)
    return float(np.nanmean(aucs)) if not np.isnan(aucs).all() else float("nan")


def roc_points(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the ROC curve of `scores` for telling `positive` rows from the rest: false and true positive rates
    (from 0 to 1) at every distinct threshold, highest first, tied scores taken together (so the area under the
    points is roc_auc)."""
    scores, positive = np.asarray(scores, dtype=float), np.asarray(positive, dtype=bool)
    order = np.argsort(-scores, kind="stable")
    ranked, hits = scores[order], positive[order]
    last_of_tie = np.r_[ranked[1:] != ranked[:-1], True]  # a threshold takes every photo tied at it
    true_pos, false_pos = np.cumsum(hits)[last_of_tie], np.cumsum(~hits)[last_of_tie]
    return (np.r_[0.0, false_pos / max((~positive).sum(), 1)], np.r_[0.0, true_pos / max(positive.sum(), 1)])


def per_class_table(y_true: np.ndarray, probs: np.ndarray, classes) -> pd.DataFrame:
    """Return precision, recall, specificity, F1, AUC and support per class. Recall and specificity are those of the
    top class (photos of the class called it; photos of other classes not called it), as balanced accuracy counts;
    ISIC's scorer instead reads a class's probability at 0.5 for its own sensitivity and specificity."""
    k = len(classes)
    y_pred = probs.argmax(axis=1)
    matrix = confusion_matrix(y_true, y_pred, k)
    tp, support, predicted = np.diag(matrix), matrix.sum(axis=1), matrix.sum(axis=0)
    others = len(y_true) - support
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, np.nan)
        specificity = np.where(others > 0, (others - (predicted - tp)) / others, np.nan)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    auc = [roc_auc(probs[:, i], y_true == i) for i in range(k)]
    return pd.DataFrame({"precision": precision, "recall": recall, "specificity": specificity, "f1": f1, "auc": auc,
                         "support": support}, index=list(classes))


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


def summarise(y_true: np.ndarray, probs: np.ndarray, classes) -> dict:
    """Return the headline metrics, balanced accuracy first."""
    table = per_class_table(y_true, probs, classes)
    y_pred = probs.argmax(axis=1)
    return {
        "balanced_accuracy": balanced_accuracy(y_true, y_pred, len(classes)),
        "balanced_accuracy_ci95": balanced_accuracy_interval(y_true, y_pred, len(classes)),
        "accuracy": float((y_pred == y_true).mean()),
        "macro_auc": mean_auc(table["auc"]),
        "ece": expected_calibration_error(probs, y_true),
        "ece_class_balanced": expected_calibration_error(probs, y_true, weights=class_balanced_weights(y_true)),
        "recall": {c: (None if np.isnan(r) else float(r)) for c, r in table["recall"].items()},
        "images": int(len(y_true)),
    }


def describe_metrics(metrics: dict) -> str:
    """Return summarise()'s metrics as lines for a terminal, balanced accuracy first."""
    low, high = metrics["balanced_accuracy_ci95"]
    recall = "  ".join(f"{c} {'-' if r is None else f'{r:.3f}'}" for c, r in metrics["recall"].items())
    return "\n".join([
        f"balanced accuracy: {metrics['balanced_accuracy']:.4f}  (mean per-class recall, the ISIC metric; "
        f"95% interval {low:.3f}-{high:.3f})",
        f"recall per class: {recall}",
        f"accuracy: {metrics['accuracy']:.4f}   macro AUC: {metrics['macro_auc']:.4f}   "
        f"ECE: {metrics['ece']:.4f} (classes weighted equally: {metrics['ece_class_balanced']:.4f})   "
        f"images: {metrics['images']}",
    ])
