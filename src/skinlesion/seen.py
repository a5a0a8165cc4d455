"""What a model has seen: its training and validation photos and lesions, kept with it so no score counts them as new.

A model scored on photos it trained on looks better than it is, which is the paper's flaw. Our own folders cannot
do that, but another folder can: preparing the same data at another size without --splits-from deals the lesions
afresh, and the user's full ISIC 2019 set holds every photo of our sample. So `export` writes the record into the
.onnx file, a run finds it in its training folder, `evaluate` leaves out what the model met before, and
`prepare --splits-from MODEL.onnx` makes a folder whose test split is everything the model never met.
"""

import base64
from pathlib import Path

import numpy as np
import pandas as pd

from skinlesion.imaging import NEAR_DUPLICATE_BITS, hash_distances
from skinlesion.splits import UNUSED

SEEN_KEY = "skinlesion.seen"  # ONNX metadata entry, apart from the card (the API serves the card)
# A score of a split leaves out photos the model met in an earlier role: training photos from a validation score;
# training and validation photos (which kept its epoch and fitted its calibration) from a test score.
EARLIER = {"train": (), "val": ("train",), "test": ("train", "val")}
HASH_BYTES = 64  # imaging.difference_hash's 512 bits


def seen_record(table: pd.DataFrame, hashes: dict | None = None) -> dict:
    """Return the image names and lesion ids of a manifest's training and validation splits, and with `hashes`
    (image -> the pixel cache's near-duplicate hash) their hashes in the same order, base64."""
    record = {}
    for split in ("train", "val"):
        rows = table[table["split"] == split]
        record[split] = {"images": sorted(rows["image"]), "lesions": sorted(set(rows["lesion_id"]) - {""})}
        if hashes is not None:
            packed = b"".join(bytes.fromhex(hashes[image]) for image in record[split]["images"])
            record[split]["hashes"] = base64.b64encode(packed).decode("ascii")
    return record


def joined_seen_record(folders: list[tuple[pd.DataFrame, dict]]) -> dict:
    """Return the record of every photo that any of these (manifest, hashes) folders trained or validated on; a photo
    trained on in any of them counts as a training photo."""
    table = pd.concat([manifest[manifest["split"].isin(["train", "val"])] for manifest, _ in folders])
    table = table.sort_values("split", key=lambda split: split != "train", kind="stable").drop_duplicates("image")
    if any(hashes is None for _, hashes in folders):  # a folder's pixel cache is gone: names and lesions only
        return seen_record(table)
    return seen_record(table, {image: dhash for _, hashes in folders for image, dhash in hashes.items()})


def recorded_seen(meta: dict) -> dict | None:
    """Return what a saved model has seen: the record exported with it, else its training folder's; None if neither."""
    if meta.get("seen"):
        return meta["seen"]
    from skinlesion.prepare import photo_hashes, read_manifest  # late: prepare imports the cache stage

    prepared = meta.get("prepared")
    if not prepared or not Path(prepared).is_dir():
        return None
    return seen_record(read_manifest(Path(prepared)), photo_hashes(Path(prepared)))


def why_unrecorded(meta: dict, otherwise: str) -> str:
    """Say why a saved model has no record of what it met: its training folder is not found, else `otherwise`."""
    return f"its training folder {meta['prepared']} is not found from here" if meta.get("prepared") else otherwise


def seen_rows(rows: pd.DataFrame, seen: dict, split: str, by_lesion: bool, hashes: dict | None = None) -> pd.Series:
    """Mark the rows the model met before scoring `split`: the same photo, or (by_lesion) a photo of its lesion or,
    given the rows' hashes (image -> hex) and a record holding hashes, a photo near-identical in pixels to one it met.
    Pixels count only by_lesion: the paper's protocol shares a lesion's photos across splits on purpose, and a
    near-identical hash cannot tell a copy of a photo from its lesion photographed again."""
    earlier = EARLIER[split]
    marked = rows["image"].isin(set().union(*(seen[s]["images"] for s in earlier)))
    if by_lesion:
        lesions = set().union(*(seen[s]["lesions"] for s in earlier))
        marked |= (rows["lesion_id"] != "") & rows["lesion_id"].isin(lesions)
    if by_lesion and hashes is not None and earlier:
        marked |= SeenPhotos(seen).met_by_pixels([hashes.get(image, "") for image in rows["image"]], earlier)
    return marked


def seen_before(rows: pd.DataFrame, meta: dict, split: str, by_lesion: bool,
                hashes: dict | None = None) -> tuple[np.ndarray, str]:
    """Return which rows a saved model met before scoring `split` (seen_rows), and a line saying what that leaves out
    and why."""
    seen = recorded_seen(meta)
    if seen is None:
        where = why_unrecorded(meta, "a file exported before 2026-12-01")
        return np.zeros(len(rows), bool), (f"not checked: the model records no training photos ({where}), so some "
                                           f"of these photos may be ones it trained on")
    marked = seen_rows(rows, seen, split, by_lesion, hashes)
    by_pixels = int((marked & ~seen_rows(rows, seen, split, by_lesion)).sum())
    pixels = by_lesion and hashes is not None and any("hashes" in seen[s] for s in EARLIER[split])
    what = ("photos (by name or pixels) or lesions" if pixels else "photos or lesions") if by_lesion else "photos"
    return marked.to_numpy(), describe_left_out(rows[marked], len(rows), split, what, by_pixels)


def describe_left_out(left_out: pd.DataFrame, total: int, split: str, what: str, by_pixels: int = 0) -> str:
    """Say in one line what was left out of a score and why."""
    if left_out.empty:
        return f"checked: none of the {total} {split} photos is among the model's earlier {what}"
    per_class = ", ".join(f"{c} {n}" for c, n in left_out["label"].value_counts().sort_index().items())
    pixels = f"; {by_pixels} of them known by near-identical pixels alone" if by_pixels else ""
    return (f"left out {len(left_out)} of the {total} {split} photos ({per_class}{pixels}): the model met these "
            f"{what} in {' or '.join(EARLIER[split])}, so they are no test of it; "
            f"scored on the other {total - len(left_out)}")


def read_seen(model_path: Path) -> tuple[dict, tuple[int, str]]:
    """Return the record an exported model carries and the (size, policy) its hashes were taken at, the model's
    input; fail with the fix if it has none."""
    from skinlesion.predict import Predictor  # late: predict imports this module

    predictor = Predictor(model_path)
    if predictor.seen is None:
        raise ValueError(f"{model_path}: records no training photos (exported before 2026-12-01); pass the prepared "
                         f"folder it was trained from instead")
    return predictor.seen, (predictor.size, predictor.policy)


def splits_unseen_by(table: pd.DataFrame, seen: dict, classes, hashes: dict | None = None) -> pd.Series:
    """Each image's split for scoring a model on all it never met: its training and validation photos keep their
    splits, photos of a lesion (or near-duplicate group) it met, or (given hashes, image -> hex) near-identical in
    pixels to a photo it met, are unused, and every other photo is test."""
    split = pd.Series("test", index=table.index)
    for name in ("train", "val"):
        split[table["image"].isin(seen[name]["images"])] = name
    met = split != "test"
    if hashes is not None:  # a photo near-identical to one it met (a renamed copy) counts as met, but keeps no split
        met |= SeenPhotos(seen).met_by_pixels([hashes.get(image, "") for image in table["image"]], ("train", "val"))
    lesions = set(seen["train"]["lesions"]) | set(seen["val"]["lesions"])
    related = ((table["lesion_id"] != "") & table["lesion_id"].isin(lesions)) | \
        table["group"].isin(table.loc[met, "group"])
    split[related & (split == "test")] = UNUSED
    split[~table["label"].isin(classes)] = UNUSED
    return split


class SeenPhotos:
    """Tell whether a photo is one a model trained or was validated on: by its name (ISIC id), or, where the record
    holds hashes, by near-identical pixels (a renamed copy, or the same lesion photographed again)."""

    def __init__(self, seen: dict | None):
        splits = [s for s in ("train", "val") if seen]
        self.by_name = {image: split for split in splits for image in seen[split]["images"]}
        hashed = [split for split in splits if "hashes" in seen[split]]
        packed = [np.frombuffer(base64.b64decode(seen[split]["hashes"], validate=True), np.uint8) for split in hashed]
        for split, hashes in zip(hashed, packed):
            if len(hashes) != HASH_BYTES * len(seen[split]["images"]):
                raise ValueError(f"{len(hashes)} bytes of {split} hashes for {len(seen[split]['images'])} photos")
        self.hashes = np.concatenate(packed).reshape(-1, HASH_BYTES) if packed else np.zeros((0, HASH_BYTES), np.uint8)
        self.splits = np.array([split for split in hashed for _ in seen[split]["images"]], dtype=object)

    def split_of(self, name: str, dhash: str) -> str | None:
        """Return "train" or "val" if the photo named `name` with imaging's hash `dhash` is one the model met."""
        if name in self.by_name:
            return self.by_name[name]
        if not len(self.hashes) or not dhash:
            return None
        distance = hash_distances(raw_hashes([dhash]), self.hashes)[0]
        nearest = int(distance.argmin())
        return str(self.splits[nearest]) if distance[nearest] <= NEAR_DUPLICATE_BITS else None

    def met_by_pixels(self, dhashes: list[str], splits: tuple[str, ...]) -> np.ndarray:
        """Mark each hash ("" for none) within imaging.NEAR_DUPLICATE_BITS of a recorded photo of these splits."""
        known = self.hashes[np.isin(self.splits, splits)]
        met = np.zeros(len(dhashes), bool)
        given = np.flatnonzero([bool(dhash) for dhash in dhashes])
        if not len(known) or not len(given):
            return met
        for start in range(0, len(given), 1024):
            rows = given[start:start + 1024]
            met[rows] = hash_distances(raw_hashes([dhashes[i] for i in rows]), known).min(axis=1) <= NEAR_DUPLICATE_BITS
        return met


def raw_hashes(dhashes: list[str]) -> np.ndarray:
    """Turn hex hashes into rows of raw bytes, as imaging.hash_distances takes them."""
    return np.frombuffer(bytes.fromhex("".join(dhashes)), np.uint8).reshape(len(dhashes), HASH_BYTES)
