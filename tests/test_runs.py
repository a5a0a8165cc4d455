"""The run folder's guards (skinlesion.runs), driven through `skinlesion train` as a user meets them."""

import json
import shutil

from click.testing import CliRunner

from skinlesion.cache import CacheConfig
from skinlesion.cli import main
from skinlesion.prepare import PrepareConfig, prepare
from skinlesion.splits import BALANCE_PRESETS
from test_training import train_args


def test_a_resume_with_other_settings_or_data_is_refused_but_a_moved_copy_of_the_data_is_not(shared_data, prepared32,
                                                                                             tmp_path):
    data, moved, run = tmp_path / "data", tmp_path / "moved", tmp_path / "run"
    shutil.copytree(prepared32, data)
    args = ("--epochs", 1, "--limit-train-batches", 2)
    assert CliRunner().invoke(main, train_args(data, run, *args)).exit_code == 0
    for extra, problem in (((*args[:1], 2, *args[2:]), "Differing: epochs 2 (the run: 1)"),
                           ((*args, "--dropout", 0.3), "dropout 0.3 (the run: 0.2)")):
        result = CliRunner().invoke(main, train_args(data, run, *extra, "--resume"))
        assert result.exit_code == 1 and problem in result.output and "Traceback" not in result.output, result.output
    shutil.copytree(data, moved)
    result = CliRunner().invoke(main, train_args(moved, run, *args, "--accelerator", "cpu", "--resume"))
    assert result.exit_code == 0, result.output
    # Prepared again in place with the same settings (as the build scripts do before they resume): the same data.
    summary = prepare(shared_data, moved, PrepareConfig(balance=BALANCE_PRESETS["paper"], cache=CacheConfig(size=32)),
                      progress=False)
    assert summary["cache_reused"] and not json.loads((prepared32 / "prepared.json").read_text())["cache_reused"]
    result = CliRunner().invoke(main, train_args(moved, run, *args, "--resume"))
    assert result.exit_code == 0, result.output
    # The same folder prepared again with another split is other data, though its path is the same.
    (data / "splits.csv").write_text((data / "splits.csv").read_text().replace(",train", ",val", 1))
    result = CliRunner().invoke(main, train_args(data, run, *args, "--resume"))
    assert result.exit_code == 1 and f"Differing: data {data} (the run: {moved}, as it was then)" in result.output
    # A damaged record of the run's settings is named; the checkpoints are left alone.
    (run / "train_config.json").write_text("{cut off")
    result = CliRunner().invoke(main, train_args(moved, run, *args, "--resume"))
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert f"Error: {run / 'train_config.json'}: damaged (Expecting property name" in result.output
    assert (run / "checkpoints" / "last.ckpt").is_file()


def test_a_run_starts_from_a_saved_model_only_if_that_model_never_saw_our_held_out_images(shared_data, prepared32,
                                                                                            tmp_path):
    import torch

    from skinlesion.models import create_model, load_model
    from skinlesion.prepare import load_prepared
    from skinlesion.runs import start_from
    from skinlesion.splits import SplitConfig
    from skinlesion.training import TrainConfig

    first = tmp_path / "first"
    args = train_args(prepared32, first, "--epochs", 1, "--limit-train-batches", 3)
    assert CliRunner().invoke(main, args).exit_code == 0

    def prepared_with(split, name):
        prepare(shared_data, tmp_path / name, PrepareConfig(balance=BALANCE_PRESETS["paper"], split=split,
                                                            cache=CacheConfig(size=32)),
                progress=False, cache_dir=prepared32 / "cache")
        return tmp_path / name

    same = prepared_with(SplitConfig(splits_from=str(prepared32)), "same")
    network = create_model("mobilenet_v2", 6, pretrained=False, width=0.5, dropout=0.2)
    start_from(network, first / "model.pt", TrainConfig(width=0.5), load_prepared(same))
    saved, _ = load_model(first / "model.pt")
    assert all(torch.equal(a, b) for a, b in zip(network.state_dict().values(), saved.state_dict().values()))
    result = CliRunner().invoke(main, train_args(same, tmp_path / "second", "--epochs", 1, "--limit-train-batches", 2,
                                                 "--init", first / "model.pt"))
    assert result.exit_code == 0, result.output
    card = tmp_path / "CARD.md"
    exported = CliRunner().invoke(main, ["export", str(tmp_path / "second"), "--out", str(tmp_path / "m.onnx"),
                                         "--card", str(card)])
    assert exported.exit_code == 0, exported.output
    assert f"Started from `{first / 'model.pt'}` (32 px, 1 epochs" in card.read_text()  # the whole recipe
    assert card.read_text().count("of the calibrated decision") == 2  # both stages' selection scores
    # Another seed splits differently: the saved model trained on some of the new test images, so it may not start.
    other = prepared_with(SplitConfig(seed=1), "other")
    result = CliRunner().invoke(main, train_args(other, tmp_path / "third", "--init", first / "model.pt"))
    assert result.exit_code == 1 and "was trained on" in result.output and "validation/test images" in result.output
    result = CliRunner().invoke(main, train_args(same, tmp_path / "fourth", "--model", "resnet50",
                                                 "--init", first / "model.pt"))
    assert result.exit_code == 1 and "cannot start a resnet50" in result.output
    # Same network, but another width would not fit the weights, and greyed light would not match what they saw.
    for option, value in (("--width", 1.0), ("--color-constancy", 6)):
        result = CliRunner().invoke(main, [*train_args(same, tmp_path / "fifth", "--init", first / "model.pt"),
                                           option, value])
        assert result.exit_code == 1 and "cannot start a mobilenet_v2" in result.output, result.output
        assert "use the same --model, --width and --color-constancy" in result.output
