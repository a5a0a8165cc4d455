"""The data stage end to end: read -> cache -> split/balance -> manifest (splits.csv + prepared.json)."""

import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from skinlesion.cache import CacheConfig, build_cache, cache_bytes, near_duplicate_pairs, other_caches, remove_cache
from skinlesion.classes import CODES
from skinlesion.imaging import NEAR_DUPLICATE_BITS
from skinlesion.isic import read_isic
from skinlesion.seen import read_seen, splits_unseen_by
from skinlesion.splits import UNUSED, BalanceConfig, SplitConfig, assign_splits, count_table

MANIFEST = "splits.csv"
MANIFEST_COLUMNS = ("image", "label", "lesion_id", "group", "split", "cache_row")
PREPARED_JSON = "prepared.json"
PROBLEMS_CSV = "problems.csv"
NEAR_DUPLICATES_CSV = "near_duplicates.csv"
REPLACE_FIX = "prepare into another --out, or delete {out_dir} first to replace it"


@dataclass(frozen=True)
class PrepareConfig:
    balance: BalanceConfig = field(default_factory=BalanceConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    near_duplicate_bits: int = NEAR_DUPLICATE_BITS  # of 512 hash bits; see imaging


@dataclass
class Prepared:
    """A prepared data set as training and evaluation read it."""

    out_dir: Path
    table: pd.DataFrame  # image, label, lesion_id, group, split, cache_row
    pixels: np.ndarray  # (N, H, W, 3) uint8
    classes: tuple[str, ...]
    size: int
    policy: str
    protocol: str  # "lesion" or "paper" (splits.PROTOCOLS)

    def split(self, name: str) -> pd.DataFrame:
        return self.table[self.table["split"] == name]


def prepare(data_dir: Path, out_dir: Path, config: PrepareConfig, progress: bool = True,
            cache_dir: Path | None = None) -> dict:
    """Build the pixel cache (in out_dir/cache unless shared) and the manifest; return prepared.json's summary."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    isic = read_isic(Path(data_dir))
    refuse_other_photos(out_dir, config.cache, isic.images["image"].tolist())
    own_cache = cache_dir is None
    cache_dir = Path(cache_dir).resolve() if cache_dir else out_dir / "cache"
    cache = build_cache(isic.images, cache_dir, config.cache, progress=progress)
    old_caches = other_caches(cache)
    problems = list(isic.problems)
    readable = cache.index["problem"] == ""
    for image, path, problem in cache.index.loc[~readable, ["image", "path", "problem"]].itertuples(index=False):
        problems.append({"image": image, "path": path, "problem": problem})
    images = isic.images.assign(cache_row=np.arange(len(isic.images)))[readable.to_numpy()]
    pairs = near_duplicate_pairs(cache.index, config.near_duplicate_bits)
    result = assign_splits(images, config.balance, config.split, pairs)
    table = result.table
    source = Path(config.split.splits_from)
    if config.split.splits_from and source.suffix == ".onnx":  # score an exported model on all it never met
        seen, hashed_at = read_seen(source)
        # Hashes compare only when taken at one size and policy (the model's: its record's hashes are its inputs').
        same_input = hashed_at == (config.cache.size, config.cache.policy)
        hashes = dict(zip(cache.index["image"], cache.index["dhash"])) if same_input else None
        table["split"] = splits_unseen_by(table, seen, result.classes, hashes)
    elif config.split.splits_from:
        table["split"] = reused_splits(table, source, result.classes)
    manifest = table[list(MANIFEST_COLUMNS)].to_csv(index=False)
    try:
        refuse_other_split(out_dir, manifest)
    except ValueError:
        # Decoded for this call alone (a reused cache is the one the folder names, or a shared one): the folder
        # still reads its own. Its prepared.json is not read here: a kill after splits.csv, before it, leaves none.
        if own_cache and not cache.reused:
            remove_cache(cache.path)
        raise
    (out_dir / MANIFEST).write_text(manifest)
    pd.DataFrame(problems, columns=["image", "path", "problem"]).to_csv(out_dir / PROBLEMS_CSV, index=False)
    cross = cross_split_pairs(table, pairs)
    cross.to_csv(out_dir / NEAR_DUPLICATES_CSV, index=False)
    before = images["label"].value_counts()
    summary = {
        "data": str(Path(data_dir).resolve()),
        "classes": list(result.classes),
        "dropped_classes": list(result.dropped_classes),
        "size": config.cache.size,
        "policy": config.cache.policy,
        "config": asdict(config),
        "cache": str(cache.path.relative_to(out_dir) if cache.path.is_relative_to(out_dir) else cache.path),
        "cache_reused": cache.reused,
        "old_caches": {"count": len(old_caches), "bytes": sum(map(cache_bytes, old_caches)), "removed": own_cache,
                       "folder": str(cache.path.parent)},
        "images_read": int(len(images)),
        "problems": len(problems),
        "near_duplicate_pairs": len(pairs),
        "near_duplicate_pairs_across_splits": int(len(cross)),
        "lesions_across_splits": lesions_across_splits(table),
        "counts_before": {c: int(before[c]) for c in CODES if c in before},
        "counts_after": count_table(table, result.classes).to_dict(),
    }
    (out_dir / PREPARED_JSON).write_text(json.dumps(summary, indent=1))
    if own_cache:  # only now that the folder names its new cache; a shared one may hold other folders' photos
        for path in old_caches:  # the same photos moved, touched or decoded by an older loader: nothing reads them
            remove_cache(path)
    return summary


def refuse_other_photos(out_dir: Path, cache: CacheConfig, images: list[str]) -> None:
    """Refuse, before any pixel is written, to prepare over a folder that holds photos at another size or other
    photos (by ISIC id): runs trained from a folder read its pixels and split there (runs.py, seen.py)."""
    if not (out_dir / PREPARED_JSON).is_file():
        return
    summary = read_summary(out_dir)
    if (summary["size"], summary["policy"]) != (cache.size, cache.policy):
        raise ValueError(f"{out_dir} already holds photos prepared at {summary['size']} px ({summary['policy']}), "
                         f"not {cache.size} px ({cache.policy}); {REPLACE_FIX.format(out_dir=out_dir)}")
    # The photos, not their files: a moved or touched copy of the same photos is decoded again into a cache of its
    # own (build_cache), and what then decides is whether the split comes out the same (refuse_other_split).
    cache_index = (out_dir / summary["cache"]).with_suffix(".csv")  # "cache" may be absolute (a shared cache)
    if cache_index.is_file() and pd.read_csv(cache_index, dtype=str, keep_default_na=False)["image"].tolist() != images:
        raise ValueError(f"{out_dir} was prepared from other photos than these ({summary['data']} then; photos since "
                         f"added or removed); {REPLACE_FIX.format(out_dir=out_dir)}")


def refuse_other_split(out_dir: Path, manifest: str) -> None:
    """Refuse to write a manifest (as CSV text) over a different one: a run trained from this folder would find
    another split in it, and be scored on photos it trained on."""
    path = out_dir / MANIFEST
    if not path.is_file() or path.read_text() == manifest:
        return
    old, new = (pd.read_csv(source, dtype=str, keep_default_na=False).set_index("image")["split"]
                for source in (path, io.StringIO(manifest)))
    moved = int((old.reindex(new.index) != new).sum())
    raise ValueError(f"{out_dir} already holds another split of these photos ({moved} of {len(new)} would change "
                     f"split), and runs trained from it read their split there; "
                     f"{REPLACE_FIX.format(out_dir=out_dir)}")


def reused_splits(table: pd.DataFrame, earlier_dir: Path, classes) -> pd.Series:
    """Each image's split as an earlier prepare wrote it, so two input sizes share one test set.

    The split hangs on near-duplicate hashes of the cached pixels, so preparing at another size can move a
    pair across the threshold and reshuffle the groups; reusing the manifest rules that out.
    """
    manifest = earlier_dir / MANIFEST
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest}: no manifest to take the split from; pass a folder written by "
                                f"'skinlesion prepare'")
    earlier = pd.read_csv(manifest, keep_default_na=False).set_index("image")["split"]
    split = table["image"].map(earlier)
    missing = table.loc[split.isna(), "image"]
    if len(missing):
        raise ValueError(f"{manifest} has no split for {len(missing)} of these images (e.g. {missing.iloc[0]}); "
                         f"prepare both from the same data")
    stray = table.loc[(split != UNUSED) & ~table["label"].isin(classes), "label"]
    if len(stray):
        raise ValueError(f"{manifest} uses class {stray.iloc[0]}, which this preparation leaves out; "
                         f"keep the same classes")
    return split


def cross_split_pairs(table: pd.DataFrame, pairs) -> pd.DataFrame:
    """Return near-duplicate pairs whose images sit in two different used splits."""
    split_of = dict(zip(table["image"], table["split"]))
    rows = [(a, b, split_of[a], split_of[b]) for a, b in pairs
            if split_of.get(a, "unused") != "unused" and split_of.get(b, "unused") != "unused"
            and split_of[a] != split_of[b]]
    return pd.DataFrame(rows, columns=["image_a", "image_b", "split_a", "split_b"])


def lesions_across_splits(table: pd.DataFrame) -> int:
    """Count lesion ids that have images in more than one used split (leakage)."""
    used = table[(table["split"] != "unused") & (table["lesion_id"] != "")]
    return int((used.groupby("lesion_id")["split"].nunique() > 1).sum())


def read_summary(out_dir: Path) -> dict:
    """Return a prepared folder's prepared.json (prepare()'s summary); fail with the fix if it is missing or
    damaged."""
    path = Path(out_dir) / PREPARED_JSON
    if not path.is_file():
        raise FileNotFoundError(f"{out_dir}: not a prepared data folder (no {PREPARED_JSON}); "
                                f"run 'skinlesion prepare --data DIR --out {out_dir}' first")
    try:
        summary = json.loads(path.read_text())
        problem = "" if isinstance(summary, dict) else "not a JSON object"
    except ValueError as error:
        summary, problem = {}, str(error)
    missing = [key for key in ("data", "classes", "size", "policy", "config", "cache") if key not in summary]
    if problem or missing:
        problem = problem or f"no {', '.join(missing)}"
        raise ValueError(f"{path}: not a summary written by 'skinlesion prepare' ({problem}); delete {out_dir} and "
                         f"prepare it again")
    return summary


def load_prepared(out_dir: Path) -> Prepared:
    """Open a folder written by prepare(); fail with the fix if it is not one."""
    out_dir = Path(out_dir)
    meta = read_summary(out_dir)
    pixels = np.load(out_dir / meta["cache"], mmap_mode="r")
    return Prepared(out_dir, read_manifest(out_dir), pixels, tuple(meta["classes"]), meta["size"], meta["policy"],
                    meta["config"]["split"]["protocol"])


def read_manifest(out_dir: Path) -> pd.DataFrame:
    """Return a prepared folder's manifest (image, label, lesion_id, group, split, cache_row)."""
    manifest = Path(out_dir) / MANIFEST
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest}: no manifest; pass a folder written by 'skinlesion prepare'")
    try:
        table = pd.read_csv(manifest, dtype={"image": str, "lesion_id": str, "group": str}, keep_default_na=False)
        missing = [column for column in MANIFEST_COLUMNS if column not in table.columns]
        problem = f"no column {', '.join(missing)}" if missing else ""
    except ValueError as error:  # pandas' parser errors are ValueErrors
        problem = str(error).strip()
    if problem:
        raise ValueError(f"{manifest}: not a manifest written by 'skinlesion prepare' ({problem}); delete "
                         f"{Path(out_dir)} and prepare it again")
    return table


def photo_hashes(out_dir: Path) -> dict | None:
    """Return each cached photo's near-duplicate hash (image -> hex) from a prepared folder's pixel cache index;
    None if the cache is gone."""
    cache = Path(out_dir) / read_summary(out_dir)["cache"]
    if not cache.with_suffix(".csv").is_file():
        return None
    index = pd.read_csv(cache.with_suffix(".csv"), dtype=str, keep_default_na=False)
    return dict(zip(index["image"], index["dhash"]))


def data_record(prepared: Prepared) -> dict:
    """Describe what a model was trained and scored on, for its card: the data folder, photos per class and split."""
    summary = read_summary(prepared.out_dir)
    record = {"folder": Path(summary["data"]).name, "images": summary["images_read"],
              "per_class": summary["counts_before"], "protocol": summary["config"]["split"]["protocol"]}
    for name in ("train", "val", "test"):
        counts = prepared.split(name)["label"].value_counts()
        record[name] = {c: int(counts.get(c, 0)) for c in prepared.classes}
    return record


def describe_summary(summary: dict, out_dir: Path) -> str:
    """Return prepare()'s summary as lines for a terminal: counts before and after balancing, what was skipped."""
    lines = [f"read {summary['images_read']} images "
             f"({'cache reused' if summary['cache_reused'] else 'cache built'}: {summary['cache']})",
             "images per class before balancing:",
             "  " + "  ".join(f"{k} {v}" for k, v in summary["counts_before"].items())]
    if summary["dropped_classes"]:
        lines.append(f"dropped classes (too few images): {', '.join(summary['dropped_classes'])}")
    lines += ["images per class and split after balancing:", pd.DataFrame(summary["counts_after"]).to_string(),
              f"near-duplicate pairs: {summary['near_duplicate_pairs']}, across splits: "
              f"{summary['near_duplicate_pairs_across_splits']} (see {out_dir / NEAR_DUPLICATES_CSV})",
              f"lesions with images in more than one split: {summary['lesions_across_splits']}"]
    old = summary.get("old_caches") or {"count": 0}  # folders prepared before 2026-12-03 lack it
    if old["count"] and old["removed"]:
        lines.append(f"removed {old['count']} older pixel cache(s) of these photos from {old['folder']} "
                     f"({old['bytes'] / 1e9:.2f} GB): of the photos' files before they moved or changed, or decoded "
                     "by an older loader")
    elif old["count"]:
        lines.append(f"note: the shared cache folder {old['folder']} also holds {old['count']} other pixel cache(s) "
                     f"at this size ({old['bytes'] / 1e9:.2f} GB): delete those no other prepared folder reads "
                     "(each folder's prepared.json names its cache)")
    if summary["problems"]:
        lines.append(f"skipped {summary['problems']} problem rows or images (see {out_dir / PROBLEMS_CSV})")
    lines.append(f"manifest: {out_dir / MANIFEST}")
    return "\n".join(lines)
