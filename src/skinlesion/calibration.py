"""Calibration fitted on validation: a temperature and class offsets that make the top class suit balanced accuracy."""

import numpy as np

from skinlesion.metrics import balanced_accuracy


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


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
    the raw logits is a poor proxy for it (near chance for a network trained on the natural class mix).
    """
    decisions = cross_fitted_decisions(logits, y_true, halvings, seed)
    return float(np.mean([balanced_accuracy(y_true, predicted, logits.shape[1]) for predicted in decisions]))


def cross_fitted_decisions(logits: np.ndarray, y_true: np.ndarray, halvings: int = 3, seed: int = 0,
                           scored: np.ndarray | None = None) -> list[np.ndarray]:
    """Return the calibrated top class of every image, once per halving: calibration fitted on one half's `logits`
    decides the other half's `scored` logits (default: the same logits; another view of the same images, e.g.
    ringed photos, is scored under the calibration of the plain ones). Halves are drawn within each class, so both
    hold every class that has two or more images.
    """
    rng = np.random.default_rng(seed)
    scored = logits if scored is None else scored
    decisions = []
    for _ in range(halvings):
        half = np.zeros(len(y_true), dtype=bool)
        for c in range(logits.shape[1]):
            members = rng.permutation(np.flatnonzero(y_true == c))
            half[members[: len(members) // 2]] = True
        predicted = np.zeros(len(y_true), dtype=int)
        for part in (half, ~half):
            temperature, class_bias = fit_calibration(logits[~part], y_true[~part])
            predicted[part] = calibrated_logits(scored[part], temperature, class_bias).argmax(axis=1)
        decisions.append(predicted)
    return decisions


def calibrated(logits: np.ndarray, meta: dict) -> np.ndarray:
    """Return a saved model's probabilities: its temperature and class offsets (models.load_model's metadata)."""
    return softmax(calibrated_logits(logits, meta["temperature"], meta["class_bias"]))
