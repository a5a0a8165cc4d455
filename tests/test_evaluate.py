import json

import numpy as np
import pandas as pd
import pytest

from skinlesion.evaluate import write_submission


def test_submission_has_every_isic_column(tmp_path):
    write_submission(tmp_path / "s.csv", ["a"], np.array([[0.25, 0.75]]), ["NV", "MEL"])
    lines = (tmp_path / "s.csv").read_text().splitlines()
    assert lines[0] == "image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC"
    assert lines[1] == "a,0.75000000,0.25000000" + ",0.00000000" * 6


def test_an_exported_file_is_scored_like_the_model_it_came_from(tiny_onnx, prepared32, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from skinlesion.cli import main
    from skinlesion.predict import Predictor
    from skinlesion.prepare import load_prepared

    exported = tiny_onnx  # beside its run's model.pt
    monkeypatch.chdir(tmp_path)  # an .onnx file's report goes to the current folder, never beside the file
    result = CliRunner().invoke(main, ["evaluate", str(exported), "--data", str(prepared32), "--split", "test"])
    assert result.exit_code == 0, result.output
    onnx_report = tmp_path / f"eval-{exported.stem}-test"
    torch_report = tmp_path / "torch"
    assert CliRunner().invoke(main, ["evaluate", str(exported.parent), "--data", str(prepared32), "--split", "test",
                                     "--out", str(torch_report)]).exit_code == 0
    scored = [json.loads((report / "metrics.json").read_text()) for report in (onnx_report, torch_report)]
    assert scored[0]["images"] == scored[1]["images"] > 500
    # The file's referral threshold (fitted at export) is scored too; a run folder's model.pt has none.
    referral = scored[0]["referral"]
    assert referral["images"] == scored[0]["images"] and "referral" not in scored[1]
    assert referral == {"threshold": Predictor(exported).referral["threshold"], **Predictor(exported).referral["test"]}
    assert f"referral (MEL+BCC+AK+SCC >= {referral['threshold']:.3f}): sensitivity" in result.output
    assert scored[0]["balanced_accuracy"] == pytest.approx(scored[1]["balanced_accuracy"], abs=0.01)
    # Scored by sex, age and body site from the data folder's metadata: every scored photo in one group of each.
    groups = pd.read_csv(onnx_report / "subgroups.csv")
    assert set(groups["attribute"]) == {"sex", "age", "site"} and "referral_sensitivity" in groups.columns
    assert (groups.groupby("attribute")["images"].sum() == scored[0]["images"]).all()
    assert {"male", "female"} <= set(groups["group"]) and "posterior torso" in set(groups["group"])
    assert all(f"by {attribute}: " in result.output for attribute in ("sex", "age", "site"))
    # Cancers and pre-cancers against benign lesions by the rule's score, from the report's own CSVs; its curves.
    from skinlesion.metrics import roc_auc
    from skinlesion.referral import concerning, referral_score
    probs = pd.read_csv(onnx_report / "predictions.csv", index_col="image")
    truth = pd.read_csv(onnx_report / "truth.csv", index_col="image").idxmax(axis=1)
    expected = roc_auc(referral_score(probs.to_numpy(), list(probs.columns)), truth.isin(concerning(probs.columns)))
    assert 0.5 < scored[0]["referral_auc"] == pytest.approx(expected, abs=1e-6)
    assert f"by the referral score: AUC {expected:.4f} (roc.png)" in result.output
    assert (onnx_report / "roc.png").stat().st_size > 10_000
    # The file against the model it came from, paired on the same photos: no difference.
    paired = CliRunner().invoke(main, ["paired", str(torch_report), str(onnx_report)])
    assert paired.exit_code == 0, paired.output
    assert "no clear difference (the interval holds 0)" in paired.output
    assert float(paired.output.split("same top class: ")[1].split("%")[0]) >= 99  # a near-tie may flip
    assert f"balanced accuracy {scored[0]['balanced_accuracy']:.4f}" in paired.output
    # So are the AUCs, paired the same way: macro AUC and the referral score's.
    assert f"macro AUC: A {scored[1]['macro_auc']:.4f}, B {scored[0]['macro_auc']:.4f}, B - A " in paired.output
    assert f"B {scored[0]['referral_auc']:.4f}, B - A " in paired.output.split("referral AUC (MEL+BCC+AK+SCC against "
                                                                           "benign): ")[1]
    fewer = tmp_path / "fewer"  # a model without one of the classes: its AUCs are not comparable
    fewer.mkdir()
    (fewer / "truth.csv").write_text((torch_report / "truth.csv").read_text())
    pd.read_csv(torch_report / "predictions.csv").iloc[:, :-1].to_csv(fewer / "predictions.csv", index=False)
    unlike = CliRunner().invoke(main, ["paired", str(torch_report), str(fewer)])
    assert unlike.exit_code == 0 and "AUCs: not compared: the models have other classes" in unlike.output
    val_report = tmp_path / "val"
    assert CliRunner().invoke(main, ["evaluate", str(exported.parent), "--data", str(prepared32), "--split", "val",
                                     "--out", str(val_report)]).exit_code == 0
    other = CliRunner().invoke(main, ["paired", str(torch_report), str(val_report)])
    assert other.exit_code == 1 and "scored other photos" in other.output and "Traceback" not in other.output
    missing = CliRunner().invoke(main, ["paired", str(torch_report), str(tmp_path / "nothing")])
    assert missing.exit_code == 1 and "nothing/truth.csv: not the truth.csv of a 'skinlesion evaluate' report" \
        in missing.output
    predictions = [pd.read_csv(report / "predictions.csv", index_col="image") for report in (onnx_report, torch_report)]
    assert np.abs(predictions[0].to_numpy() - predictions[1].to_numpy()).max() < 1e-3
    ranked = np.sort(predictions[1].to_numpy(), axis=1)
    assert np.median(ranked[:, -1] - ranked[:, -2]) > 1e-3 and scored[1]["balanced_accuracy"] > 0.2  # no ties
    # The report's probabilities are the ones the file itself serves (its own temperature and class offsets).
    prepared = load_prepared(prepared32)
    rows = prepared.split("test")[:64]
    served, _ = Predictor(exported).run(prepared.pixels[rows["cache_row"].to_numpy()])
    classes = Predictor(exported).classes
    assert np.abs(predictions[0].loc[rows["image"], list(classes)].to_numpy() - served).max() < 1e-5


def test_ring_stress_scores_a_model_on_clean_ringed_colour_cast_square_and_recompressed_photos(tiny_onnx, prepared32):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "ring_stress.py"
    result = subprocess.run([sys.executable, str(script), str(tiny_onnx), str(prepared32), "--factors", "1.0",
                             "--casts", "blue", "--square", "--recompress", "jpeg:10"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]  # one a condition
    assert [row["condition"] for row in rows] == ["none", 1.0, "blue cast", "square", "jpeg 10"]
    for row in rows:
        recalls = [row[c] for c in ("MEL", "NV", "BCC", "AK", "BKL", "SCC")]
        assert 0 <= min(recalls) and max(recalls) <= 1 and row["bacc"] == pytest.approx(sum(recalls) / 6, abs=2e-3)
        assert 0 <= row["referral sensitivity"] <= 1 and 0 <= row["specificity"] <= 1  # the file's referral rule
    assert all(row != rows[0] for row in rows[1:])  # each changes what the network sees
    wrong = subprocess.run([sys.executable, str(script), str(tiny_onnx), str(prepared32), "--casts", "green"],
                           capture_output=True, text=True)
    assert wrong.returncode == 2 and "unknown cast green; choose from blue, pink, warm" in wrong.stderr
    wrong = subprocess.run([sys.executable, str(script), str(tiny_onnx), str(prepared32), "--recompress", "png:50"],
                           capture_output=True, text=True)
    assert wrong.returncode == 2 and "--recompress 'png:50': give FORMAT:QUALITY, FORMAT one of jpeg" in wrong.stderr


def test_a_model_and_data_of_another_size_fail_with_the_fix_before_any_work(tiny_onnx, prepared32):
    from click.testing import CliRunner

    from skinlesion.cli import main
    from skinlesion.evaluate import saved_model_logits
    from skinlesion.predict import BUNDLED_MODEL

    result = CliRunner().invoke(main, ["evaluate", str(BUNDLED_MODEL), "--data", str(prepared32)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "takes 192x192 px images, not 32x32; prepare the data at the model's size (skinlesion prepare --size 192)" \
        in result.output
    for model in (tiny_onnx, tiny_onnx.parent / "model.pt"):  # onnxruntime and PyTorch alike
        with pytest.raises(ValueError, match="takes 32x32 px images, not 48x40"):
            saved_model_logits(model, np.zeros((2, 40, 48, 3), np.uint8))


@pytest.mark.filterwarnings("error")  # matplotlib warns of a legend with nothing to name
def test_roc_plot_of_a_split_with_one_class_or_one_group(tmp_path):
    from skinlesion.evaluate import plot_roc, referral_auc

    probs = np.full((4, 3), 1 / 3)
    for name, labels in (("one-class", [0, 0, 0, 0]), ("benign-only", [1, 1, 1, 1])):
        plot_roc(probs, np.array(labels), ["MEL", "NV", "BCC"], tmp_path / f"{name}.png",
                 referral={"threshold": 0.3, "sensitivity": None, "specificity": 1.0})
        assert (tmp_path / f"{name}.png").stat().st_size > 5_000
        assert referral_auc(probs, np.array(labels), ["MEL", "NV", "BCC"]) is None  # no benign/cancer pair to rank
