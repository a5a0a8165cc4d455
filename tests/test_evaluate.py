import json
import subprocess

import numpy as np
import pandas as pd
import pytest

from skinlesion.evaluate import (balanced_accuracy, balanced_accuracy_interval, class_balanced_weights,
                                 confusion_matrix, cross_fitted_balanced_accuracy, expected_calibration_error,
                                 fit_calibration, fit_temperature, per_class_table, roc_auc, softmax,
                                 write_submission, write_truth)


def test_balanced_accuracy_by_hand():
    y_true = np.array([0, 0, 0, 0, 1, 1, 2])
    y_pred = np.array([0, 0, 0, 1, 1, 0, 2])
    # recalls: class 0 3/4, class 1 1/2, class 2 1/1 -> mean 0.75; accuracy would be 5/7
    assert balanced_accuracy(y_true, y_pred, 3) == pytest.approx(0.75)
    assert confusion_matrix(y_true, y_pred, 3).tolist() == [[3, 1, 0], [1, 1, 0], [0, 0, 1]]
    probs = np.eye(3)[y_pred]
    table = per_class_table(y_true, probs, ["A", "B", "C"])
    assert table.loc["A", "precision"] == pytest.approx(3 / 4) and table.loc["B", "f1"] == pytest.approx(0.5)


def test_balanced_accuracy_interval_widens_with_fewer_images():
    rng = np.random.default_rng(1)
    y_true = np.repeat([0, 1], [1000, 20])
    y_pred = np.where(rng.random(len(y_true)) < 0.7, y_true, 1 - y_true)
    score = balanced_accuracy(y_true, y_pred, 2)
    low, high = balanced_accuracy_interval(y_true, y_pred, 2)
    assert low < score < high and 0.1 < high - low < 0.3  # the 20-image class dominates the uncertainty
    big_low, big_high = balanced_accuracy_interval(np.repeat([0, 1], 1000), np.repeat([0, 1], 1000), 2)
    assert (big_low, big_high) == (1.0, 1.0)


def test_auc_and_ece_by_hand():
    assert roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([False, False, True, True])) == pytest.approx(0.75)
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    y = np.array([0, 1, 0, 0])
    # bins: 0.9 (acc 0.5) and 0.6 (acc 1.0) -> 0.5*0.4 + 0.5*0.4 = 0.4
    assert expected_calibration_error(probs, y) == pytest.approx(0.4)


def test_temperature_fit_recovers_an_overconfident_model():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(size=(4000, 5)) * 2
    y = np.array([rng.choice(5, p=p) for p in softmax(true_logits)])
    temperature = fit_temperature(true_logits * 3, y)  # three times too confident
    assert temperature == pytest.approx(3, rel=0.1)


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
    official = json.loads(out)["aggregate"]["balanced_accuracy"]
    ours = balanced_accuracy(y, probs.argmax(1), 6)
    assert 0.3 < ours < 0.95
    assert official == pytest.approx(ours, abs=1e-9)


def test_submission_has_every_isic_column(tmp_path):
    write_submission(tmp_path / "s.csv", ["a"], np.array([[0.25, 0.75]]), ["NV", "MEL"])
    lines = (tmp_path / "s.csv").read_text().splitlines()
    assert lines[0] == "image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC"
    assert lines[1] == "a,0.75000000,0.25000000" + ",0.00000000" * 6


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


def test_an_exported_file_is_scored_like_the_model_it_came_from(tiny_onnx, prepared32, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from skinlesion.cli import main
    from skinlesion.predict import Predictor
    from skinlesion.prepare import load_prepared

    monkeypatch.chdir(tmp_path)  # an .onnx file's report goes to the current folder, never beside the file
    result = CliRunner().invoke(main, ["evaluate", str(tiny_onnx), "--data", str(prepared32), "--split", "test"])
    assert result.exit_code == 0, result.output
    onnx_report = tmp_path / f"eval-{tiny_onnx.stem}-test"
    torch_report = tmp_path / "torch"
    assert CliRunner().invoke(main, ["evaluate", str(tiny_onnx.parent), "--data", str(prepared32), "--split", "test",
                                     "--out", str(torch_report)]).exit_code == 0
    scored = [json.loads((report / "metrics.json").read_text()) for report in (onnx_report, torch_report)]
    assert scored[0]["images"] == scored[1]["images"] > 500
    assert scored[0]["balanced_accuracy"] == pytest.approx(scored[1]["balanced_accuracy"], abs=0.01)
    predictions = [pd.read_csv(report / "predictions.csv", index_col="image") for report in (onnx_report, torch_report)]
    assert np.abs(predictions[0].to_numpy() - predictions[1].to_numpy()).max() < 1e-3
    # The report's probabilities are the ones the file itself serves (its own temperature and class offsets).
    prepared = load_prepared(prepared32)
    rows = prepared.split("test")[:64]
    served, _ = Predictor(tiny_onnx).run(prepared.pixels[rows["cache_row"].to_numpy()])
    classes = Predictor(tiny_onnx).classes
    assert np.abs(predictions[0].loc[rows["image"], list(classes)].to_numpy() - served).max() < 1e-5
