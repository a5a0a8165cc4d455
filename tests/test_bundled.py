"""The bundled model: present, small, consistent with its card, and working on a real image."""

import json
import re

import pytest

from skinlesion.export import read_card
from skinlesion.isic import IMAGE_DIR
from skinlesion.predict import BUNDLED_MODEL, Predictor

CARD = BUNDLED_MODEL.with_name("MODEL_CARD.md")


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
    for network in meta.get("members") or [meta]:  # every network's recipe, for an ensemble each member's
        assert json.dumps(network["train_config"]) in card
    # Float16 weights kept the validation score of the PyTorch model they came from (checked at export).
    check = meta["float16_check"]
    assert check["images"] > 1000 and check["agreement"] > 0.99
    assert check["balanced_accuracy_onnx"] == pytest.approx(check["balanced_accuracy_pytorch"], abs=0.005)


def test_bundled_model_predicts_a_real_image(shared_data):
    predictor = Predictor()  # no path: the bundled model is the default
    assert predictor.path == BUNDLED_MODEL
    photo = shared_data / IMAGE_DIR / "ISIC_0024306.jpg"
    result = predictor.assess(photo.read_bytes(), heatmap=True)
    assert result.assessable
    assert sum(result.probabilities.values()) == pytest.approx(1, abs=1e-5)
    assert re.fullmatch(r"efficientnet_lite0-\d+px-[0-9a-f]{12}", predictor.version)
