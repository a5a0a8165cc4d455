"""The bundled model: present, small, consistent with its card, working on a real image, and rebuilt by its script."""

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from skinlesion.card import read_card
from skinlesion.isic import IMAGE_DIR
from skinlesion.predict import BUNDLED_MODEL, Predictor

CARD = BUNDLED_MODEL.with_name("MODEL_CARD.md")
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "build_bundled_model.sh"


def test_bundled_model_is_small_and_its_card_matches_its_metadata():
    assert BUNDLED_MODEL.stat().st_size <= 20_000_000
    meta = read_card(BUNDLED_MODEL)
    card = CARD.read_text()
    assert meta["classes"] == ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC"]
    assert f"Classes (in output order): {', '.join(meta['classes'])}" in card
    assert f"({meta['size']}x{meta['size']} px)" in card and f"resize policy '{meta['policy']}'" in card
    assert "not a diagnosis" in card.lower()
    test = meta["metrics"]["test"]
    assert f"Balanced accuracy **{test['balanced_accuracy']:.3f}**" in card
    # By patient group and the referral AUC, added through the file (scripts/add_subgroups.py), on the card too.
    assert [line.split(":")[0] for line in test["subgroups"]] == ["by sex", "by age", "by site"]
    assert all(f"- {line}" in card.split("## Test split")[1] for line in test["subgroups"])
    assert 0.8 < test["referral_auc"] < 1 and f"AUC {test['referral_auc']:.3f} (measured through this file)" in card
    for network in meta.get("members") or [meta]:  # every network's recipe, for an ensemble each member's
        assert json.dumps(network["train_config"]) in card
    # Float16 weights kept the validation score of the PyTorch model they came from (checked at export). One photo
    # whose top class flips in a class of 17 validation photos moves balanced accuracy by 0.007 (the bundled file:
    # 2 of 1,936 flip).
    check = meta["float16_check"]
    assert check["images"] > 1000 and check["agreement"] > 0.99
    assert check["balanced_accuracy_onnx"] == pytest.approx(check["balanced_accuracy_pytorch"], abs=0.015)
    # Its referral rule: fitted to refer 95% of validation's cancers and pre-cancers, scored on test, on the card.
    rule = meta["referral"]
    assert rule["target_sensitivity"] == 0.95 and rule["val"]["sensitivity"] >= 0.95
    assert rule["test"]["images"] == test["images"] and rule["test"]["sensitivity"] > 0.9
    assert f"together reach {rule['threshold']:.3f}" in card


def test_bundled_card_is_what_its_metadata_renders(tmp_path):
    from skinlesion.card import write_model_card

    # A copy beside a card of its own: the rendering names the file, and must not touch the bundled one.
    copy = tmp_path / BUNDLED_MODEL.name
    copy.write_bytes(BUNDLED_MODEL.read_bytes())
    assert write_model_card(copy, tmp_path / "MODEL_CARD.md").read_text() == CARD.read_text()


def test_bundled_model_predicts_a_real_image(shared_data):
    predictor = Predictor()  # no path: the bundled model is the default
    assert predictor.path == BUNDLED_MODEL
    photo = shared_data / IMAGE_DIR / "ISIC_0024306.jpg"
    result = predictor.assess(photo.read_bytes(), heatmap=True)
    assert result.assessable
    assert sum(result.probabilities.values()) == pytest.approx(1, abs=1e-5)
    assert re.fullmatch(r"efficientnet_lite0-\d+px-[0-9a-f]{12}", predictor.version)


def test_the_web_path_paints_a_dark_border_before_the_model_sees_it(shared_data):
    import io

    import numpy as np
    from PIL import Image

    from skinlesion.imaging import fill_dark_border, open_rgb, resize
    from tests.test_imaging import with_black_ring

    predictor = Predictor()
    buffer = io.BytesIO()
    with_black_ring(Image.open(shared_data / IMAGE_DIR / "ISIC_0024306.jpg").convert("RGB"), 0.85).save(buffer, "PNG")
    result = predictor.assess(buffer.getvalue())
    ringed = resize(open_rgb(buffer.getvalue(), draft_size=predictor.size), predictor.size, predictor.policy)
    painted, unpainted = (predictor.run(pixels[None])[0][0] for pixels in (fill_dark_border(ringed), ringed))
    shown = np.array([result.probabilities[c] for c in predictor.classes])
    assert np.abs(shown - painted).max() < 1e-6 and np.abs(shown - unpainted).max() > 1e-3


def test_the_build_script_runs_end_to_end_and_writes_a_model_with_its_card(shared_data, layout40, tmp_path):
    # The real script on 40 real images a class, each training cut to 2 batches (TRAIN_OPTIONS win over the
    # recipe's), one view, into a temporary folder: every step of the rebuild runs, only shorter.
    work, out = tmp_path / "work", tmp_path / "out"
    env = {**os.environ, "WORK": str(work), "OUT": str(out), "VIEWS": "1",
           "TRAIN_OPTIONS": "--epochs 1 --limit-train-batches 2 --batch-size 16"}
    done = subprocess.run(["bash", str(SCRIPT), str(layout40)], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for stage in ("run128-seed1", "run192-seed1", "run128-mixema-seed0", "run192-mixema-seed0"):
        assert json.loads((work / stage / "train_config.json").read_text())["epochs"] == 1
    meta, card = read_card(out / "model.onnx"), (out / "MODEL_CARD.md").read_text()
    assert (meta["size"], meta["views"], len(meta["members"])) == (192, 1, 2)
    assert '"mixup": 0.2, "ema": 0.995' in card and f"`{work / 'run192-seed1' / 'model.pt'}`" in card
    assert "## Test split" in card and "float16 weights" in card
    assert f"together reach {meta['referral']['threshold']:.3f}" in card  # export fitted its referral rule
    result = Predictor(out / "model.onnx").assess((shared_data / IMAGE_DIR / "ISIC_0024306.jpg").read_bytes())
    assert sum(result.probabilities.values()) == pytest.approx(1, abs=1e-5)
