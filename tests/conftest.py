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
