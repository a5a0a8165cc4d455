import numpy as np
import torch
from click.testing import CliRunner

from skinlesion.calibration import cross_fitted_balanced_accuracy, softmax
from skinlesion.cli import main
from skinlesion.ensemble import ENSEMBLE_HALVINGS
from skinlesion.models import Ensemble, load_model, model_logits
from skinlesion.prepare import load_prepared


def train_tiny(prepared, run, seed):
    args = ["train", "--data", str(prepared), "--out", str(run), "--model", "efficientnet_lite0",
            "--batch-size", "32", "--epochs", "1", "--limit-train-batches", "5", "--seed", str(seed)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return run


def test_an_ensemble_averages_calibrated_members_and_exports_like_a_run(tiny_onnx, prepared32, tmp_path):
    first, second = tiny_onnx.parent, train_tiny(prepared32, tmp_path / "second", seed=1)
    result = CliRunner().invoke(main, ["ensemble", str(first), str(second), "--out", str(tmp_path / "both")])
    assert result.exit_code == 0, result.output
    assert "validation balanced accuracy: ensemble" in result.output
    model, meta = load_model(tmp_path / "both" / "model.pt")
    assert isinstance(model, Ensemble) and len(model.members) == 2 and meta["temperature"] > 0
    pixels = load_prepared(prepared32).pixels[:16]
    members = [softmax(model_logits(run / "model.pt", pixels)[0], load_model(run / "model.pt")[1]["temperature"])
               for run in (first, second)]
    assert not np.allclose(members[0], members[1], atol=1e-3)  # two different networks
    combined = np.exp(model_logits(tmp_path / "both" / "model.pt", pixels)[0])
    assert np.allclose(combined, np.mean(members, axis=0), atol=1e-5)
    # The recorded calibrated score is honest: calibration fitted on one half of validation, scored on the other.
    prepared = load_prepared(prepared32)
    val = prepared.split("val")
    val_logits = model_logits(tmp_path / "both" / "model.pt", prepared.pixels[val["cache_row"].to_numpy()])[0]
    y_true = val["label"].map({c: i for i, c in enumerate(meta["classes"])}).to_numpy()
    assert meta["val_bacc_calibrated"] == cross_fitted_balanced_accuracy(val_logits, y_true, halvings=ENSEMBLE_HALVINGS)
    assert f"{meta['val_bacc_calibrated']:.4f} (calibrated" in result.output

    evaluated = CliRunner().invoke(main, ["evaluate", str(tmp_path / "both"), "--data", str(prepared32),
                                          "--split", "val"])
    assert evaluated.exit_code == 0 and "balanced accuracy" in evaluated.output, evaluated.output
    card = tmp_path / "CARD.md"
    exported = CliRunner().invoke(main, ["export", str(tmp_path / "both"), "--out", str(tmp_path / "both.onnx"),
                                         "--fp16", "--card", str(card)])
    assert exported.exit_code == 0, exported.output
    text = card.read_text()
    assert "ensemble of 2 efficientnet_lite0" in text and f"`{first / 'model.pt'}`" in text
    assert "float16 weights" in text
    assert "## Validation split" in text  # the ensemble's own evaluation travels with it
    assert "This file, with float16 weights, scores validation balanced accuracy" in text
    assert f"after it {meta['val_bacc_calibrated']:.3f} (calibration fitted on one half" in text

    from skinlesion.predict import Predictor
    probs, maps = Predictor(tmp_path / "both.onnx").run(np.asarray(pixels))
    assert np.allclose(probs.sum(1), 1, atol=1e-5) and maps.shape[:2] == (16, 6)
    with torch.inference_mode():
        _, features = model.forward_features(torch.from_numpy(np.asarray(pixels)).permute(0, 3, 1, 2).float())
        expected = model.class_maps(features).numpy()
    assert np.allclose(maps, expected, atol=0.05)  # the members' maps, averaged

    from skinlesion.web import create_app  # the card has validation metrics only: the page used to fail on that
    about = create_app({"MODEL": str(tmp_path / "both.onnx"), "TESTING": True}).test_client().get("/about")
    assert about.status_code == 200 and b"an ensemble of 2\nefficientnet_lite0 networks" in about.data
    assert b"equally common diagnoses" in about.data  # what the shown probabilities assume


def test_ensemble_errors_are_clean(tiny_onnx, prepared32, tmp_path):
    first = tiny_onnx.parent

    def ensemble(*runs):
        return CliRunner().invoke(main, ["ensemble", *map(str, runs), "--out", str(tmp_path / "out")])

    result = ensemble(first)
    assert result.exit_code == 1 and "at least two runs" in result.output
    result = ensemble(first, tmp_path / "missing")
    assert result.exit_code == 1 and "model not found" in result.output
    saved = torch.load(first / "model.pt", weights_only=False)
    (tmp_path / "bigger").mkdir()
    torch.save({**saved, "size": 64}, tmp_path / "bigger" / "model.pt")
    result = ensemble(first, tmp_path / "bigger")
    assert result.exit_code == 1 and "size 64 differs" in result.output
    assert ensemble(first, first).exit_code == 0
    result = ensemble(first, tmp_path / "out")
    assert result.exit_code == 1 and "ensembles cannot be nested" in result.output
    result = CliRunner().invoke(main, ["train", "--data", str(prepared32), "--out", str(tmp_path / "next"),
                                       "--init", str(tmp_path / "out" / "model.pt")])
    assert result.exit_code == 1 and "an ensemble cannot start a training run" in result.output


def test_one_run_seen_in_eight_views_exports_and_answers_the_same_for_a_turned_photo(tiny_onnx, prepared32,
                                                                                     tmp_path):
    result = CliRunner().invoke(main, ["ensemble", str(tiny_onnx.parent), "--views", "8", "--out",
                                       str(tmp_path / "views")])
    assert result.exit_code == 0, result.output
    model, meta = load_model(tmp_path / "views" / "model.pt")
    assert meta["views"] == 8 and len(model.members) == 1 and len(meta["class_bias"]) == 6
    exported = CliRunner().invoke(main, ["export", str(tmp_path / "views"), "--out", str(tmp_path / "v.onnx")])
    assert exported.exit_code == 0, exported.output  # the parity check against PyTorch passed

    from skinlesion.predict import Predictor
    predictor = Predictor(tmp_path / "v.onnx")
    pixels = np.asarray(load_prepared(prepared32).pixels[:8])
    probs, maps = predictor.run(pixels)
    turned_probs, turned_maps = predictor.run(np.ascontiguousarray(np.rot90(pixels, 1, axes=(1, 2))))
    assert np.allclose(turned_probs, probs, atol=1e-4)
    assert np.allclose(turned_maps, np.rot90(maps, 1, axes=(2, 3)), atol=1e-3)  # the heatmap turns with the photo
    with torch.inference_mode():
        logits = model(torch.from_numpy(pixels).permute(0, 3, 1, 2).float()).numpy()
    assert np.allclose(probs, softmax(logits / meta["temperature"] + np.array(meta["class_bias"])), atol=1e-4)


def test_an_ensemble_names_a_member_that_is_not_a_model_file(tmp_path):
    for name, content in (("text.pt", b"garbage\n"), ("cut.pt", b"PK\x03\x04")):
        (tmp_path / name).write_bytes(content)
        result = CliRunner().invoke(main, ["ensemble", str(tmp_path / name), "--views", "2", "--out",
                                           str(tmp_path / "e")])
        assert result.exit_code == 1 and "Traceback" not in result.output, result.output
        assert f"Error: {tmp_path / name}: not a skinlesion model file" in result.output
