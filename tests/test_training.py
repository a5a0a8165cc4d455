import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from click.testing import CliRunner

from skinlesion.cli import main
from skinlesion.training import EpochLog


def train_args(prepared, run, *extra):
    return ["train", "--data", str(prepared), "--out", str(run), "--model", "mobilenet_v2", "--width", "0.5",
            "--batch-size", "32", *map(str, extra)]


def test_training_lowers_the_loss_and_the_model_carries_its_metadata(prepared32, tmp_path):
    run = tmp_path / "run"
    result = CliRunner().invoke(main, train_args(prepared32, run, "--epochs", 4, "--limit-train-batches", 25,
                                                 "--lr", 0.005, "--no-augment", "--imbalance", "weights"))
    assert result.exit_code == 0, result.output
    epochs = pd.read_csv(run / "epochs.csv")
    assert list(epochs["epoch"]) == [0, 1, 2, 3]
    # Validation loss, not the training loss of 25 batches: from scratch at lr 0.005 the training loss may first
    # rise, and whether it is back 0.1 lower after 4 short epochs depends on the split's draw of batches.
    assert epochs["val_loss"].iloc[-1] < epochs["val_loss"].iloc[0] - 0.1
    import torch
    meta = torch.load(run / "model.pt", weights_only=False)
    assert meta["classes"] == ["MEL", "NV", "BCC", "AK", "BKL", "SCC"]
    assert (meta["size"], meta["policy"], meta["arch"]) == (32, "squash", "mobilenet_v2")
    assert 0.05 < meta["temperature"] < 20
    # What it was trained with, for the record and the card.
    assert torch.__version__.startswith(meta["trained_with"]["torch"])  # the wheel's version, local label or not
    assert meta["trained_with"]["device"].startswith("cpu (") and {"python", "timm", "lightning"} <= set(
        meta["trained_with"])
    # The kept epoch is the best by calibrated validation balanced accuracy, the decision the model ships with.
    assert meta["val_bacc_calibrated"] == pytest.approx(epochs["val_bacc_calibrated"].max(), abs=0.01)
    # best.ckpt holds that epoch; last.ckpt the final one, whatever its score, so a resume loses nothing.
    saved = {name: torch.load(run / "checkpoints" / f"{name}.ckpt", weights_only=False)["epoch"]
             for name in ("best", "last")}
    assert saved == {"best": epochs["val_bacc_calibrated"].idxmax(), "last": 3}
    # Evaluation on test writes the report; balanced accuracy beats chance (1/6) even after 4 short epochs.
    result = CliRunner().invoke(main, ["evaluate", str(run), "--data", str(prepared32), "--split", "test"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("balanced accuracy:")
    metrics = json.loads((run / "eval-test" / "metrics.json").read_text())
    assert metrics["balanced_accuracy"] > 0.2
    assert {"confusion.png", "reliability.png", "per_class.csv", "predictions.csv"} <= {
        p.name for p in (run / "eval-test").iterdir()}
    # The official scorer reads what evaluate wrote and gets our balanced accuracy.
    scored = subprocess.run(["isic-challenge-scoring", "-o", "json", "classification",
                             str(run / "eval-test" / "truth.csv"), str(run / "eval-test" / "predictions.csv")],
                            capture_output=True, text=True, check=True).stdout
    assert json.loads(scored)["aggregate"]["balanced_accuracy"] == pytest.approx(metrics["balanced_accuracy"], abs=1e-6)
    # A finished run is never overwritten by accident.
    again = CliRunner().invoke(main, train_args(prepared32, run, "--epochs", 1))
    assert again.exit_code == 1 and "pass --resume" in again.output


@pytest.mark.parametrize("imbalance", ["sampler", "lesion-sampler"])
def test_the_sampler_draws_by_the_prepared_lesion_groups(prepared32, imbalance):
    from skinlesion.prepare import load_prepared
    from skinlesion.splits import sampler_weights
    from skinlesion.training import PreparedData
    train = load_prepared(prepared32).split("train")
    assert train["group"].nunique() < len(train)  # some lesions have several photos, so the two samplers differ
    expected = sampler_weights(train["label"], train["group"] if imbalance == "lesion-sampler" else None)
    loader = PreparedData(prepared32, 32, imbalance, seed=0).train_dataloader()
    assert loader.sampler.weights.numpy() == pytest.approx(expected)
    assert len(next(iter(loader))[0]) == 32


def test_an_interrupted_run_resumes_from_its_last_checkpoint(prepared32, tmp_path):
    run = tmp_path / "run"
    args = ("--epochs", 4, "--limit-train-batches", 40, "--select", "top-class")
    command = [sys.executable, "-m", "skinlesion", *train_args(prepared32, run, *args)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    log = run / "epochs.csv"
    deadline = time.time() + 600  # a busy machine can take minutes to reach the second epoch
    last = run / "checkpoints" / "last.ckpt"
    while time.time() < deadline and not (last.exists() and log.exists() and len(log.read_text().splitlines()) >= 2):
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)  # killed in its second epoch, as a power cut would
    process.wait()
    assert not (run / "model.pt").exists()
    done = len(pd.read_csv(log))
    assert 1 <= done < 4
    result = CliRunner().invoke(main, train_args(prepared32, run, *args, "--resume"))
    assert result.exit_code == 0, result.output
    epochs = pd.read_csv(log)
    assert list(epochs["epoch"]) == list(range(4))  # continued, not restarted
    import torch
    meta = torch.load(run / "model.pt", weights_only=False)
    # Chosen, across the interruption, by the score asked for: the raw top class here.
    assert meta["train_config"]["select"] == "top-class"
    assert meta["val_bacc"] == pytest.approx(epochs["val_bacc"].max(), abs=0.01)


def test_the_epoch_log_gains_new_columns_when_an_older_run_resumes(tmp_path):
    log = tmp_path / "epochs.csv"
    log.write_text("epoch,train_loss,val_bacc\n0,1.5,0.3\n")  # written before val_bacc_calibrated existed
    EpochLog(log).append({"epoch": 1, "train_loss": 1.2, "val_bacc": 0.4, "val_bacc_calibrated": 0.45})
    epochs = pd.read_csv(log)
    assert list(epochs.columns) == ["epoch", "train_loss", "val_bacc", "val_bacc_calibrated"]
    assert list(epochs["val_bacc"]) == [0.3, 0.4] and epochs["val_bacc_calibrated"].isna().tolist() == [True, False]


def test_training_errors_are_clean(prepared32, tmp_path):
    result = CliRunner().invoke(main, train_args(prepared32, tmp_path / "r", "--resume"))
    assert result.exit_code == 1 and "nothing to resume" in result.output
    result = CliRunner().invoke(main, ["train", "--data", str(tmp_path), "--out", str(tmp_path / "r")])
    assert result.exit_code == 1 and "not a prepared data folder" in result.output
    result = CliRunner().invoke(main, ["train", "--data", str(prepared32), "--out", str(tmp_path / "r"),
                                       "--model", "vgg"])
    assert result.exit_code == 1 and "choose from mobilenet_v2" in result.output
    result = CliRunner().invoke(main, ["train", "--data", str(prepared32), "--out", str(tmp_path / "r"),
                                       "--model", "alexnet"])
    assert result.exit_code == 1 and "alexnet needs inputs of at least 64 px" in result.output
    result = CliRunner().invoke(main, ["train", "--data", str(prepared32), "--out", str(tmp_path / "r"),
                                       "--drop-path", "0.1"])
    assert result.exit_code == 1 and "stochastic depth is built into efficientnet_lite0 only, not mobilenet_v2" \
        in result.output
    assert not (tmp_path / "r").exists()  # a refused run leaves no empty run folder behind


@pytest.mark.parametrize("option, value, problem", [
    ("--epochs", "0", "epochs must be at least 1, got 0"), ("--batch-size", "0", "batch_size must be at least 1"),
    ("--lr", "-1", "lr must be positive, got -1.0"), ("--dropout", "1", "dropout must be at least 0 and below 1"),
    ("--limit-train-batches", "0", "limit_train_batches must be positive"),
    ("--drop-path", "1", "drop_path must be at least 0 and below 1")])
def test_a_setting_out_of_range_is_refused_before_the_run_folder_is_written(prepared32, tmp_path, option, value,
                                                                            problem):
    result = CliRunner().invoke(main, ["train", "--data", str(prepared32), "--out", str(tmp_path / "r"), option,
                                       value])
    assert result.exit_code == 1 and problem in result.output, result.output
    assert not (tmp_path / "r").exists()


def test_mixup_and_averaged_weights_train_and_the_average_is_what_ships(prepared32, tmp_path):
    run = tmp_path / "run"
    result = CliRunner().invoke(main, train_args(prepared32, run, "--epochs", 2, "--limit-train-batches", 15,
                                                 "--lr", 0.005, "--mixup", 0.4, "--ema", 0.9))
    assert result.exit_code == 0, result.output
    import torch
    from skinlesion.models import load_model
    model, meta = load_model(run / "model.pt")
    assert (meta["train_config"]["mixup"], meta["train_config"]["ema"]) == (0.4, 0.9)
    state = torch.load(run / "checkpoints" / "best.ckpt", weights_only=False)["state_dict"]
    kept = model.state_dict()
    # The shipped weights are the moving average (BatchNorm statistics included), not the last raw weights.
    assert all(torch.equal(kept[k], state[f"ema.module.{k}"]) for k in kept)
    assert any(not torch.equal(kept[k], state[f"model.{k}"]) for k in kept if kept[k].is_floating_point())
    epochs = pd.read_csv(run / "epochs.csv")
    assert meta["val_bacc_calibrated"] == pytest.approx(epochs["val_bacc_calibrated"].max(), abs=0.01)
    for option, value, problem in (("--mixup", -1, "mixup must be 0"), ("--ema", 1, "ema must be 0"),
                                   ("--color-constancy", 0.5, "color_constancy must be 0")):
        bad = CliRunner().invoke(main, train_args(prepared32, tmp_path / "bad", option, value))
        assert bad.exit_code == 1 and problem in bad.output, bad.output
