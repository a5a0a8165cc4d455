"""Time the search for photos a model met (seen.SeenPhotos) against a per-byte lookup table, the previous way.

Two measurements in one run, both against the bundled model's record of the photos it trained and was validated
on: one photo at a time, as `predict` and the web app search, and many photos at once, as `evaluate` and
`prepare --splits-from` do. The queries are recorded hashes with 20 of their 512 bits flipped at random, so each has
a match within imaging.NEAR_DUPLICATE_BITS and both ways must find every one.

Usage: python benchmarks/bench_seen.py [--photos 2000]
"""

import argparse
import time

import numpy as np

from skinlesion.imaging import NEAR_DUPLICATE_BITS
from skinlesion.predict import Predictor

BITS_IN_BYTE = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).sum(axis=1).astype(np.uint8)


def lookup_table_distance(query: np.ndarray, known: np.ndarray) -> int:
    """The baseline: bits set per byte from a 256-entry table, summed over the 64 bytes; the nearest distance."""
    return int(BITS_IN_BYTE[known ^ query].sum(axis=1, dtype=np.int32).min())


def flipped_copies(known: np.ndarray, count: int, bits: int = 20) -> np.ndarray:
    """Return `count` recorded hashes, each with `bits` of its bits flipped at random."""
    rng = np.random.default_rng(0)
    copies = np.unpackbits(known[rng.integers(0, len(known), count)], axis=1)
    for row in copies:
        row[rng.choice(row.size, bits, replace=False)] ^= 1
    return np.packbits(copies, axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=2000)
    args = parser.parse_args()
    seen = Predictor().seen_photos
    queries = flipped_copies(seen.hashes, args.photos)
    hexes = [row.tobytes().hex() for row in queries]

    start = time.perf_counter()
    baseline = [lookup_table_distance(query, seen.hashes) for query in queries]
    lookup = time.perf_counter() - start
    start = time.perf_counter()
    one_by_one = [seen.split_of("", dhash) for dhash in hexes]
    ours_one = time.perf_counter() - start
    start = time.perf_counter()
    at_once = seen.met_by_pixels(hexes, ("train", "val"))
    ours_many = time.perf_counter() - start
    assert all(d <= NEAR_DUPLICATE_BITS for d in baseline) and None not in one_by_one and at_once.all()

    n, ms = len(queries), 1000 / len(queries)
    print(f"{n} photos against the bundled record of {len(seen.hashes)} photos")
    print(f"  per-byte lookup table, one photo at a time: {lookup * ms:6.2f} ms a photo")
    print(f"  ours, one photo at a time (bit counts):     {ours_one * ms:6.2f} ms a photo  "
          f"({lookup / ours_one:.1f}x)")
    print(f"  ours, all at once (one matrix product):     {ours_many * ms:6.2f} ms a photo  "
          f"({lookup / ours_many:.1f}x)")


if __name__ == "__main__":
    main()
