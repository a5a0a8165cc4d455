"""Resize every image once into a pixel cache; never cache augmentations."""

import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from skinlesion.imaging import (HASH_MIN_SIZE, NEAR_DUPLICATE_BITS, ImageError, RESIZE_POLICIES, hash_distances,
                                model_input_and_hash, open_rgb)

PREPROCESSING = "dark-border-filled-2"  # changes whenever imaging's output changes, so older caches are rebuilt
CACHE_SUFFIXES = (".json", ".npy", ".csv")  # one cache's files; the .json is written last and removed first


@dataclass(frozen=True)
class CacheConfig:
    size: int = 64  # the paper's input size
    policy: str = "squash"  # the paper squashes; "crop" keeps the aspect ratio
    workers: int = 0  # decoding processes; 0 = one per CPU

    def __post_init__(self):
        if self.policy not in RESIZE_POLICIES:
            raise ValueError(f"unknown resize policy {self.policy!r}; choose from {', '.join(RESIZE_POLICIES)}")
        if not 8 <= self.size <= 1024:
            raise ValueError(f"image size {self.size} is out of range; choose 8..1024")
        if self.workers < 0:
            raise ValueError(f"--workers {self.workers}: give a number of decoding processes (0 = one per CPU)")


@dataclass
class PixelCache:
    pixels: np.ndarray  # (N, H, W, 3) uint8, memory-mapped
    index: pd.DataFrame  # image, path, dhash, problem; row i describes pixels[i]
    reused: bool
    path: Path  # the .npy file; its .json and .csv lie beside it


def fingerprint(paths: list[str], config: CacheConfig) -> str:
    """Hash what the cache depends on: image files (real path, size, mtime), the resize settings and the loader's
    version. The real path, so one folder spelt relative, absolute or through a link shares one cache (since
    2026-12-03; caches named before are decoded again once, then pruned by `prepare`)."""
    # Since 2026-12-02 tiny inputs are hashed at HASH_MIN_SIZE, since 2026-12-03 from a decode at least that large.
    hashed_at = f"|hashed at {HASH_MIN_SIZE} from a draft as large" if config.size < HASH_MIN_SIZE else ""
    digest = hashlib.sha256(f"{config.size}|{config.policy}|{PREPROCESSING}{hashed_at}|real paths".encode())
    for path in map(os.path.realpath, paths):
        try:
            stat = os.stat(path)
            digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{path}|missing\n".encode())
    return digest.hexdigest()


def decode_chunk(job: tuple[str, int, list[str], int, str]) -> list[tuple[str, str]]:
    """Decode a run of images straight into the cache file; return (hash, problem) per image.

    Workers write their rows themselves so that no pixels travel between processes.
    """
    pixels_path, start, paths, size, policy = job
    pixels = np.load(pixels_path, mmap_mode="r+")
    results = []
    for i, path in enumerate(paths):
        try:
            # Hashed before the border is painted, so the split stays the one made before painting was added.
            pixels[start + i], dhash = model_input_and_hash(open_rgb(path, draft_size=size), size, policy)
        except ImageError as error:
            results.append(("", str(error)))
            continue
        results.append((dhash, ""))
    pixels.flush()
    return results


def build_cache(images: pd.DataFrame, cache_dir: Path, config: CacheConfig, progress: bool = True) -> PixelCache:
    """Return the pixel cache for these images, decoding only when its inputs changed.

    Its files are named by their inputs' fingerprint as well as size and policy, so that preparations of other images
    sharing one cache folder never overwrite pixels that another prepared folder reads.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    paths = images["path"].tolist()
    key = fingerprint(paths, config)
    stem = cache_dir / f"pixels-{config.size}-{config.policy}-{key[:12]}"
    meta_path, pixels_path, index_path = (stem.with_suffix(s) for s in CACHE_SUFFIXES)
    if meta_path.exists() and pixels_path.exists() and index_path.exists():
        if json.loads(meta_path.read_text()).get("fingerprint") == key:
            # The same files in the same order, perhaps spelt otherwise: reports name them as this call does.
            index = pd.read_csv(index_path, dtype=str, keep_default_na=False).assign(path=paths)
            return PixelCache(np.load(pixels_path, mmap_mode="r"), index, reused=True, path=pixels_path)
    meta_path.unlink(missing_ok=True)  # a run killed from here on leaves no cache that looks complete
    size = config.size
    np.lib.format.open_memmap(pixels_path, mode="w+", dtype=np.uint8, shape=(len(paths), size, size, 3)).flush()
    chunk = 256
    jobs = [(str(pixels_path), s, paths[s:s + chunk], size, config.policy) for s in range(0, len(paths), chunk)]
    results = []
    with ProcessPoolExecutor(max_workers=config.workers or os.cpu_count() or 1) as pool, \
            tqdm(total=len(paths), desc="decoding", unit="img", disable=not progress) as bar:
        for part in pool.map(decode_chunk, jobs):
            results.extend(part)
            bar.update(len(part))
    index = pd.DataFrame({"image": images["image"].tolist(), "path": paths,
                          "dhash": [h for h, _ in results], "problem": [p for _, p in results]})
    index.to_csv(index_path, index=False)
    meta_path.write_text(json.dumps({"fingerprint": key, **asdict(config), "count": len(paths)}, indent=1))
    return PixelCache(np.load(pixels_path, mmap_mode="r"), index, reused=False, path=pixels_path)


def other_caches(cache: PixelCache) -> list[Path]:
    """Return the other caches at this cache's size and policy beside it (their .npy files): of photos since moved,
    changed or decoded by an older loader, or, in a shared cache folder, of other photos."""
    prefix = cache.path.name.rsplit("-", 1)[0]  # pixels-<size>-<policy>; the first caches had no fingerprint
    found = [*cache.path.parent.glob(f"{prefix}-*.npy"), *cache.path.parent.glob(f"{prefix}.npy")]
    return sorted(p for p in found if p != cache.path)


def cache_bytes(pixels_path: Path) -> int:
    return sum(p.stat().st_size for p in (pixels_path.with_suffix(s) for s in CACHE_SUFFIXES) if p.exists())


def remove_cache(pixels_path: Path) -> None:
    """Delete one cache's files, the .json first, so an interrupted removal leaves nothing that looks complete."""
    for suffix in CACHE_SUFFIXES:
        pixels_path.with_suffix(suffix).unlink(missing_ok=True)


def near_duplicate_pairs(index: pd.DataFrame, max_distance: int = NEAR_DUPLICATE_BITS) -> list[tuple[str, str]]:
    """Return (image, image) pairs whose 512-bit hashes differ in at most max_distance bits."""
    ok = index[index["problem"] == ""]
    if len(ok) < 2:
        return []
    hashes = np.frombuffer(bytes.fromhex("".join(ok["dhash"])), dtype=np.uint8).reshape(len(ok), -1)
    names = ok["image"].to_numpy()
    pairs = []
    for start in range(0, len(hashes), 2048):
        distance = hash_distances(hashes[start:start + 2048], hashes[start:])  # only the upper triangle is needed
        rows, cols = np.nonzero(distance <= max_distance)
        for r, c in zip(rows, cols):
            if r < c:
                pairs.append((names[start + r], names[start + c]))
    return pairs
