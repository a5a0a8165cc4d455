"""Time `prepare` on the shared ISIC sample against a naive loop (PIL open + resize, one process).

Two measurements in one run: the whole sample (thumbnails of at most 256 px, mostly 200x150,
where JPEG draft mode has little to skip), and 1,000 sample images enlarged to 1024x768 JPEGs in a
temporary layout, standing in for the real 25,331-image set (600x450 to 1024x1024): decoding cost
follows the pixel count, which is what the real set has and the sample lacks.

Usage: python benchmarks/bench_prepare.py [--data ../shared/data/isic2019] [--size 64]
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from skinlesion.cache import CacheConfig
from skinlesion.isic import GROUND_TRUTH_CSV, IMAGE_DIR, METADATA_CSV, read_isic
from skinlesion.prepare import PrepareConfig, prepare


def naive_loop(paths: list[str], size: int) -> np.ndarray:
    """The baseline: decode every image at full size in one process and resize it."""
    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    for i, path in enumerate(paths):
        out[i] = np.asarray(Image.open(path).convert("RGB").resize((size, size)))
    return out


def compare(data: Path, size: int, title: str) -> float:
    """Time the naive loop, a cold prepare and a warm prepare on one layout; print and return the ratio."""
    paths = read_isic(data).images["path"].tolist()
    start = time.perf_counter()
    naive_loop(paths, size)
    naive = time.perf_counter() - start
    config = PrepareConfig(cache=CacheConfig(size=size))
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        prepare(data, Path(out), config, progress=False)
        cold = time.perf_counter() - start
        start = time.perf_counter()
        prepare(data, Path(out), config, progress=False)
        warm = time.perf_counter() - start
    n = len(paths)
    print(f"{title}: {n} images, size {size}")
    print(f"  naive loop (decode + resize only): {naive:6.2f} s  {n / naive:6.0f} img/s")
    print(f"  prepare, cold cache:               {cold:6.2f} s  {n / cold:6.0f} img/s  (read, decode, hash, split)")
    print(f"  prepare, cache reused:             {warm:6.2f} s")
    print(f"  speed-up, cold prepare vs naive loop: {naive / cold:.1f}x; warm: {naive / warm:.1f}x")
    return naive / cold


def full_resolution_layout(data: Path, root: Path, count: int = 1000) -> Path:
    """Write `count` sample images enlarged to 1024x768, with their CSV rows, as a layout of their own."""
    truth = pd.read_csv(data / GROUND_TRUTH_CSV, dtype=str)
    truth = truth.iloc[np.linspace(0, len(truth) - 1, count).astype(int)]
    (root / IMAGE_DIR).mkdir(parents=True)
    for image in truth["image"]:
        big = Image.open(data / IMAGE_DIR / f"{image}.jpg").convert("RGB").resize((1024, 768), Image.BICUBIC)
        big.save(root / IMAGE_DIR / f"{image}.jpg", quality=90)
    truth.to_csv(root / GROUND_TRUTH_CSV, index=False)
    meta = pd.read_csv(data / METADATA_CSV, dtype=str, keep_default_na=False)
    meta[meta["image"].isin(truth["image"])].to_csv(root / METADATA_CSV, index=False)
    return root


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/isic2019")
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    compare(args.data, args.size, "whole sample")
    with tempfile.TemporaryDirectory() as tmp:
        compare(full_resolution_layout(args.data, Path(tmp) / "isic"), args.size,
                "1024x768 stand-ins for the full-resolution set")


if __name__ == "__main__":
    main()
