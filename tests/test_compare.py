import json
import os
import shlex
from dataclasses import replace

import pandas as pd
import pytest
from click.testing import CliRunner

from skinlesion.cli import main
from skinlesion.compare import CompareConfig, compare, leakage_effect
from skinlesion.report import write_comparison_report


def test_compare_runs_both_protocols_and_writes_the_report(shared_data, tmp_path):
    config = CompareConfig(models=("alexnet",), size=64, extra_sizes=(80,), epochs=1)
    results = compare(shared_data, tmp_path / "cmp", config)
    assert list(zip(results["protocol"], results["size"])) == [("lesion", 64), ("paper", 64), ("lesion", 80)]
    assert results["test_bacc"].between(0, 1).all() and (results["params_m"] > 1).all()
    assert (results["cpu_latency_ms"] > 0).all()
    splits = [pd.read_csv(tmp_path / "cmp" / "prepared" / f"lesion-{s}" / "splits.csv")["split"] for s in (64, 80)]
    assert splits[0].equals(splits[1])  # every size is scored on the same test images
    report = write_comparison_report(tmp_path / "cmp", tmp_path / "docs" / "comparison.md", "skinlesion compare ...")
    text = report.read_text()
    assert "Research tool, not a diagnosis" in text and "| 1 | alexnet |" in text and "classes weighted equally" in text
    assert "inflation (points)" in text and "memorisation gain" in text and "80px" in text
    assert "best validation balanced accuracy of the calibrated decision" in text and "--select calibrated" in text
    assert "--protocol PROTOCOL --size SIZE --deal random`" in text  # the prepare hint rebuilds the same splits
    # What it ran on comes from the runs, not from the project's usual set-up.
    assert text.startswith("# Model comparison on 12,922 ISIC 2019 images") and "images read from `isic2019`" in text
    assert f"on {os.cpu_count()} CPU cores" in text
    paper = results[results["protocol"] == "paper"].iloc[0]
    assert 0 < paper["test_leaked_share"] < 1 and paper["leak_classes"] >= 1
    for plot in ("recall", "confusion", "learning-curves", "cost"):
        assert (tmp_path / "docs" / f"comparison-{plot}.png").stat().st_size > 1000
    # The report's command for a run, typed as is (into another folder), trains with the same recipe.
    command = shlex.split(results["command"].iloc[0])
    assert command[:2] == ["skinlesion", "train"]
    rerun = CliRunner().invoke(main, [*command[1:], "--out", str(tmp_path / "rerun")])
    assert rerun.exit_code == 0, rerun.output
    recipe = [json.loads((run / "train_config.json").read_text())
              for run in (tmp_path / "cmp" / "runs" / "lesion-alexnet-64", tmp_path / "rerun")]
    assert recipe[0] == recipe[1]
    # Resumable: a second call trains nothing and gives the same numbers.
    again = compare(shared_data, tmp_path / "cmp", config)
    pd.testing.assert_series_equal(again["test_bacc"], results["test_bacc"])
    # Runs whose epochs were kept by another score are not mixed into a report.
    with pytest.raises(ValueError, match="kept its epoch by --select calibrated, not top-class"):
        compare(shared_data, tmp_path / "cmp", replace(config, select="top-class"))


@pytest.mark.parametrize("options, problem", [
    (["--protocols", "lesion,random"], "unknown protocol 'random'; choose from lesion, paper"),
    (["--models", "mobilenet_v2,mobilenet_v3"], "unknown model 'mobilenet_v3'"),
    (["--extra-sizes", "128,19x"], "--extra-sizes '128,19x': give sizes in pixels"),
    (["--extra-sizes", "4096"], "image size 4096 is out of range"),
    (["--epochs", "0"], "epochs must be at least 1"),
])
def test_compare_refuses_a_bad_option_before_it_trains_anything(shared_data, tmp_path, options, problem):
    out = tmp_path / "cmp"
    result = CliRunner().invoke(main, ["compare", "--data", str(shared_data), "--out", str(out),
                                       "--report", str(tmp_path / "report.md"), *options])
    assert result.exit_code == 1 and problem in result.output and "Traceback" not in result.output
    assert not out.exists()  # the lesion protocol's runs would have trained before a later bad name was reached


def write_csv(path, rows):
    pd.DataFrame(rows).to_csv(path, index=False)


def test_leakage_effect_compares_leaked_and_clean_images_within_each_class(tmp_path):
    # Lesion L1 has photos in train and test; a model right on exactly the leaked photos gains 100 points.
    write_csv(tmp_path / "splits.csv", [
        {"image": "a", "label": "MEL", "group": "L1", "split": "train"},
        {"image": "b", "label": "MEL", "group": "L1", "split": "test"},
        {"image": "c", "label": "MEL", "group": "L2", "split": "test"},
        {"image": "d", "label": "NV", "group": "L3", "split": "test"},  # NV has no leaked photo: left out
    ])
    write_csv(tmp_path / "truth.csv", [{"image": "b", "MEL": 1.0, "NV": 0.0}, {"image": "c", "MEL": 1.0, "NV": 0.0},
                                       {"image": "d", "MEL": 0.0, "NV": 1.0}])
    write_csv(tmp_path / "predictions.csv", [{"image": "c", "MEL": 0.2, "NV": 0.8},
                                             {"image": "b", "MEL": 0.9, "NV": 0.1},
                                             {"image": "d", "MEL": 0.1, "NV": 0.9}])
    effect = leakage_effect(tmp_path, tmp_path)
    assert effect["test_leaked_share"] == 1 / 3 and effect["leak_classes"] == 1
    assert (effect["test_recall_leaked"], effect["test_recall_clean"], effect["leak_gain"]) == (1.0, 0.0, 1.0)
