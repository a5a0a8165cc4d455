import numpy as np
import pytest

from skinlesion.calibration import (cross_fitted_balanced_accuracy, cross_fitted_decisions, fit_calibration,
                                   fit_temperature, softmax)
from skinlesion.metrics import balanced_accuracy, class_balanced_weights, expected_calibration_error


def test_temperature_fit_recovers_an_overconfident_model():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(size=(4000, 5)) * 2
    y = np.array([rng.choice(5, p=p) for p in softmax(true_logits)])
    temperature = fit_temperature(true_logits * 3, y)  # three times too confident
    assert temperature == pytest.approx(3, rel=0.1)


def test_calibration_for_equal_classes_undoes_an_under_called_class():
    rng = np.random.default_rng(0)
    y = rng.choice(3, size=6000, p=[0.8, 0.15, 0.05])
    evidence = 2 * np.eye(3)[y] + rng.normal(size=(len(y), 3))  # the same evidence for every class
    logits = evidence - np.array([0.0, 0.0, 2.0])  # a network that under-calls class 2 by 2 nats
    temperature, class_bias = fit_calibration(logits, y)
    fair = balanced_accuracy(y, evidence.argmax(1), 3)  # the decision for equally common classes
    assert balanced_accuracy(y, logits.argmax(1), 3) < fair - 0.1
    assert balanced_accuracy(y, (logits / temperature + class_bias).argmax(1), 3) == pytest.approx(fair, abs=0.01)
    # The true log-likelihood of class k is 2 * evidence_k, so T = 0.5 and class 2 needs 2 nats / T back.
    assert temperature == pytest.approx(0.5, abs=0.05) and class_bias[2] - class_bias[0] == pytest.approx(4, abs=0.4)
    ece = expected_calibration_error(softmax(logits / temperature + class_bias), y,
                                     weights=class_balanced_weights(y))
    assert ece < 0.03  # honest for equally common classes

    missing = y != 2  # a class absent from validation is never favoured
    _, bias = fit_calibration(logits[missing], y[missing])
    assert bias[2] == bias[:2].min()


def test_cross_fitted_score_rates_the_calibrated_decision_not_the_raw_top_class():
    rng = np.random.default_rng(3)
    y = rng.choice(3, size=3000, p=[0.8, 0.15, 0.05])
    evidence = 2 * np.eye(3)[y] + rng.normal(size=(len(y), 3))
    skewed = evidence + np.array([3.0, 0.0, 0.0])  # a network trained on the natural mix: nearly always class 0
    fair = balanced_accuracy(y, evidence.argmax(1), 3)
    assert balanced_accuracy(y, skewed.argmax(1), 3) < 0.5 < fair - 0.2
    assert cross_fitted_balanced_accuracy(skewed, y) == pytest.approx(fair, abs=0.02)
    # Scored on images its calibration never saw: pure noise stays at chance instead of fitting itself.
    assert cross_fitted_balanced_accuracy(rng.normal(size=(300, 3)), rng.integers(0, 3, 300)) < 0.45


def test_cross_fitted_decisions_score_another_view_under_the_plain_views_calibration():
    rng = np.random.default_rng(4)
    y = rng.choice(3, size=2000, p=[0.7, 0.2, 0.1])
    plain = 2 * np.eye(3)[y] + rng.normal(size=(len(y), 3)) + np.array([3.0, 0.0, 0.0])
    decisions = cross_fitted_decisions(plain, y)
    assert len(decisions) == 3
    assert np.mean([balanced_accuracy(y, d, 3) for d in decisions]) == pytest.approx(
        cross_fitted_balanced_accuracy(plain, y))
    assert all(np.array_equal(a, b) for a, b in zip(decisions, cross_fitted_decisions(plain, y, scored=plain)))
    # A view that pushes every image toward class 2 is decided under the plain calibration, not refitted to it.
    pushed = cross_fitted_decisions(plain, y, scored=plain + np.array([0.0, 0.0, 3.0]))
    assert all((p == 2).mean() > (d == 2).mean() + 0.3 for p, d in zip(pushed, decisions))
