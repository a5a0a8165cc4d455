"""Shared fixtures: the real ISIC sample in ../shared/data (never copied into the repo) and small layouts."""

import shutil
from pathlib import Path

import pandas as pd
import pytest

from skinlesion.isic import GROUND_TRUTH_CSV, IMAGE_DIR, METADATA_CSV

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "isic2019"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / GROUND_TRUTH_CSV).exists():
        pytest.skip(f"real ISIC sample not found at {SHARED_DATA}")
    return SHARED_DATA


def write_layout(root: Path, per_class: int, offset: int = 0) -> Path:
    """Build a small official layout in root from real shared images: per_class images per class."""
    truth = pd.read_csv(SHARED_DATA / GROUND_TRUTH_CSV, dtype=str)
    meta = pd.read_csv(SHARED_DATA / METADATA_CSV, dtype=str, keep_default_na=False)
    codes = ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC"]
    picked = pd.concat([truth[truth[c] == "1.0"].iloc[offset:offset + per_class] for c in codes])
    (root / IMAGE_DIR).mkdir(parents=True, exist_ok=True)
    for image in picked["image"]:
        shutil.copy(SHARED_DATA / IMAGE_DIR / f"{image}.jpg", root / IMAGE_DIR / f"{image}.jpg")
    # CRLF line ends, as in the official ground truth.
    picked.to_csv(root / GROUND_TRUTH_CSV, index=False, lineterminator="\r\n")
    meta[meta["image"].isin(picked["image"])].to_csv(root / METADATA_CSV, index=False)
    return root


@pytest.fixture
def small_layout(shared_data, tmp_path) -> Path:
    """Six real images of each class in the official layout, in a temporary folder."""
    return write_layout(tmp_path / "isic", per_class=6)


@pytest.fixture
def layout40(shared_data, tmp_path) -> Path:
    """Forty real images of each class in the official layout: enough for every class in every split."""
    return write_layout(tmp_path / "isic40", per_class=40)


@pytest.fixture(scope="session")
def prepared32(shared_data, tmp_path_factory) -> Path:
    """The real sample, paper preset split by lesion, cached at 32x32 (tiny models train in seconds)."""
    from skinlesion.cache import CacheConfig
    from skinlesion.prepare import PrepareConfig, prepare
    from skinlesion.splits import BALANCE_PRESETS

    out = tmp_path_factory.mktemp("prepared32")
    prepare(shared_data, out, PrepareConfig(balance=BALANCE_PRESETS["paper"], cache=CacheConfig(size=32)),
            progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_onnx(prepared32, tmp_path_factory) -> Path:
    """EfficientNet-Lite0 from ImageNet weights, trained for a few batches on real 32 px images, exported to ONNX.

    From ImageNet weights it tells images apart after 40 batches (raw test bacc ~0.3); a MobileNetV2 from scratch
    gave every image the same logits, so tests compared ties (tests/test_export.py checks it does not).
    """
    from skinlesion.export import export_with_checks
    from skinlesion.training import TrainConfig, fit

    run = tmp_path_factory.mktemp("tiny_run")
    fit(prepared32, run, TrainConfig(model="efficientnet_lite0", epochs=2, batch_size=32, lr=1e-3,
                                     limit_train_batches=20), progress=False)
    export_with_checks(run, run / "model.onnx", None, fp16=False)
    return run / "model.onnx"


@pytest.fixture
def app(tiny_onnx):
    from skinlesion.web import create_app
    return create_app({"MODEL": str(tiny_onnx), "TESTING": True, "RATE_LIMIT": 10_000})


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture(scope="session")
def lesion_jpeg(shared_data) -> bytes:
    """A real 600x450-like ISIC photo as JPEG bytes (a HAM10000 image enlarged to the original size)."""
    import io

    from PIL import Image
    image = Image.open(shared_data / IMAGE_DIR / "ISIC_0024306.jpg").convert("RGB").resize((600, 450))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()
