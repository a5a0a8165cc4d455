import json
import subprocess

import numpy as np
import pytest

from skinlesion.calibration import softmax
from skinlesion.evaluate import write_submission, write_truth
from skinlesion.metrics import (balanced_accuracy, balanced_accuracy_interval, confusion_matrix, describe_metrics,
                                expected_calibration_error, macro_auc, paired_difference, paired_score_difference,
                                per_class_table, roc_auc, roc_points, summarise)


def test_balanced_accuracy_by_hand():
    y_true = np.array([0, 0, 0, 0, 1, 1, 2])
    y_pred = np.array([0, 0, 0, 1, 1, 0, 2])
    # recalls: class 0 3/4, class 1 1/2, class 2 1/1 -> mean 0.75; accuracy would be 5/7
    assert balanced_accuracy(y_true, y_pred, 3) == pytest.approx(0.75)
    assert confusion_matrix(y_true, y_pred, 3).tolist() == [[3, 1, 0], [1, 1, 0], [0, 0, 1]]
    probs = np.eye(3)[y_pred]
    table = per_class_table(y_true, probs, ["A", "B", "C"])
    assert table.loc["A", "precision"] == pytest.approx(3 / 4) and table.loc["B", "f1"] == pytest.approx(0.5)
    # Specificity of the top class: of the 3 photos that are not A, 1 was called A; of the 5 not B, 1 called B.
    assert table["specificity"].tolist() == pytest.approx([2 / 3, 4 / 5, 1.0])


def test_roc_points_take_ties_together_and_enclose_the_auc():
    fpr, tpr = roc_points(np.array([0.9, 0.5, 0.5, 0.1]), np.array([True, True, False, False]))
    assert fpr.tolist() == [0, 0, 0.5, 1] and tpr.tolist() == [0, 0.5, 1, 1]  # the tie is one step, not two
    rng = np.random.default_rng(3)
    scores, positive = rng.integers(0, 6, 300).astype(float), rng.random(300) < 0.3  # many ties
    scores[positive] += 1
    fpr, tpr = roc_points(scores, positive)
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc(scores, positive)) and (fpr[-1], tpr[-1]) == (1, 1)


def test_balanced_accuracy_interval_widens_with_fewer_images():
    rng = np.random.default_rng(1)
    y_true = np.repeat([0, 1], [1000, 20])
    y_pred = np.where(rng.random(len(y_true)) < 0.7, y_true, 1 - y_true)
    score = balanced_accuracy(y_true, y_pred, 2)
    low, high = balanced_accuracy_interval(y_true, y_pred, 2)
    assert low < score < high and 0.1 < high - low < 0.3  # the 20-image class dominates the uncertainty
    big_low, big_high = balanced_accuracy_interval(np.repeat([0, 1], 1000), np.repeat([0, 1], 1000), 2)
    assert (big_low, big_high) == (1.0, 1.0)


def test_description_puts_balanced_accuracy_first_and_marks_absent_classes():
    y_true = np.array([0, 0, 0, 0, 1, 1])
    probs = np.eye(3)[[0, 0, 0, 1, 1, 0]] * 0.9 + 0.1 / 3  # class 2 has no image
    metrics = summarise(y_true, probs, ["A", "B", "C"])
    assert metrics["macro_auc"] == pytest.approx(0.625) == macro_auc(y_true, probs)  # A and B 5/8 each; C has none
    lines = describe_metrics(metrics).splitlines()
    assert lines[0].startswith("balanced accuracy: 0.6250")  # (3/4 + 1/2) / 2: absent classes do not count
    assert lines[1] == "recall per class: A 0.750  B 0.500  C -"
    assert lines[2].endswith("images: 6")


def test_auc_and_ece_by_hand():
    assert roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([False, False, True, True])) == pytest.approx(0.75)
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    y = np.array([0, 1, 0, 0])
    # bins: 0.9 (acc 0.5) and 0.6 (acc 1.0) -> 0.5*0.4 + 0.5*0.4 = 0.4
    assert expected_calibration_error(probs, y) == pytest.approx(0.4)


def test_official_scorer_agrees_with_our_balanced_accuracy(tmp_path):
    rng = np.random.default_rng(1)
    classes = ["MEL", "NV", "BCC", "AK", "BKL", "SCC"]
    y = np.repeat(np.arange(6), [30, 60, 10, 5, 20, 8])
    probs = softmax(rng.normal(size=(len(y), 6)) + np.eye(6)[y] * 1.5)
    images = [f"ISIC_{i:07d}" for i in range(len(y))]
    write_truth(tmp_path / "truth.csv", images, y, classes)
    write_submission(tmp_path / "pred.csv", images, probs, classes, columns=classes)
    out = subprocess.run(["isic-challenge-scoring", "-o", "json", "classification", str(tmp_path / "truth.csv"),
                          str(tmp_path / "pred.csv")], capture_output=True, text=True, check=True).stdout
    official = json.loads(out)
    ours = balanced_accuracy(y, probs.argmax(1), 6)
    assert 0.3 < ours < 0.95
    assert official["aggregate"]["balanced_accuracy"] == pytest.approx(ours, abs=1e-9)
    # Each class's AUC too (its sensitivity and specificity read the class's probability at 0.5, not the top class).
    table = per_class_table(y, probs, classes)
    assert official["per_category"]["auc"] == pytest.approx(table["auc"].to_dict(), abs=1e-9)


def test_paired_difference_sees_a_small_gain_the_separate_intervals_cannot():
    y = np.repeat([0, 1], 100)
    a = y.copy()
    a[[*range(20), *range(100, 120)]] = 1 - y[[*range(20), *range(100, 120)]]  # 80% right in each class
    b = a.copy()
    b[:8] = 0  # B also gets 8 of A's wrong class-0 images right, and nothing else changes
    difference, low, high = paired_difference(y, a, b, 2)
    assert difference == pytest.approx(0.04) and 0 < low < difference < high
    a_low, a_high = balanced_accuracy_interval(y, a, 2)
    b_low, b_high = balanced_accuracy_interval(y, b, 2)
    assert b_low < a_high  # separately, the two intervals overlap
    assert paired_difference(y, a, a, 2) == (0.0, 0.0, 0.0)
    assert paired_difference(y, b, a, 2)[0] == pytest.approx(-0.04)


def test_paired_score_difference_of_aucs():
    rng = np.random.default_rng(4)
    y = np.repeat([0, 1, 2], [200, 40, 20])
    a = softmax(rng.normal(size=(len(y), 3)) + np.eye(3)[y] * 1.0)
    b = a.copy()
    b[y == 2, 2] += 0.3  # B ranks the rarest class's photos higher for it, and nothing else changes
    difference, low, high = paired_score_difference(macro_auc, y, a, b, rounds=300)
    assert difference == pytest.approx(macro_auc(y, b) - macro_auc(y, a)) and 0 < low < difference < high
    assert paired_score_difference(macro_auc, y, a, a, rounds=50) == (0.0, 0.0, 0.0)
