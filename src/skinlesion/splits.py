"""Pure, seeded data steps: keep classes, split by lesion (or per image), balance by undersampling."""

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from skinlesion.classes import CODES

SPLITS = ("train", "val", "test")
UNUSED = "unused"  # kept in the manifest so that nothing is dropped silently
PROTOCOLS = ("lesion", "paper")
# The order in which each class's groups are dealt. "largest-first" dealt every split behind figures committed
# before 2026-12-02; it hits the photo shares exactly but sends the lesions with many photos to training, so on
# the full ISIC 2019 set test would hold 19% BCN_20000 photos against training's 62% (docs/experiments.md).
DEALS = ("random", "largest-first")


@dataclass(frozen=True)
class BalanceConfig:
    """Which classes to keep and how far to undersample the training images."""

    classes: tuple[str, ...] = CODES
    min_images: int = 0  # drop a class with fewer images than this (counted before splitting)
    cap: int | None = None  # undersample every larger class to this many images; None keeps all

    def __post_init__(self):
        if self.cap is not None and self.cap < 1:
            raise ValueError(f"--cap {self.cap}: give the number of images to keep per class (0 = no cap)")
        if self.min_images < 0:
            raise ValueError(f"--min-images {self.min_images}: give a number of images, 0 or more")


BALANCE_PRESETS = {
    # The paper: six classes, each undersampled to 867 images (the AK count in the full set).
    "paper": BalanceConfig(classes=("MEL", "NV", "BCC", "AK", "BKL", "SCC"), cap=867),
    # Keep every image of every class; training balances by class weights or a sampler instead.
    "all": BalanceConfig(),
}


@dataclass(frozen=True)
class SplitConfig:
    """How images are divided into train/val/test."""

    protocol: str = "lesion"  # "lesion": grouped split, then balance train; "paper": balance, then split per image
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 0
    merge_near_duplicates: bool = True  # near-identical images join one group, as lesion ids miss some
    # An earlier prepared folder whose split to reuse (same test set at another input size), or an exported .onnx
    # model: its training and validation photos as recorded, every photo it never met (nor its lesion) test.
    splits_from: str = ""
    # Cross-validation: folds = K >= 2 deals the groups into K folds and fold I of them is test (test_fraction is
    # then 1/K), so K prepares with folds 0..K-1 test every image once; val_fraction stays a share of all images.
    folds: int = 0
    fold: int = 0
    deal: str = "random"  # DEALS: random order gives every split its share of lesions, photos and sources

    def __post_init__(self):
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {self.protocol!r}; choose from {', '.join(PROTOCOLS)}")
        if self.deal not in DEALS:
            raise ValueError(f"unknown --deal {self.deal!r}; choose from {', '.join(DEALS)}")
        if not self.folds:
            if not (0 < self.val_fraction and 0 < self.test_fraction and self.val_fraction + self.test_fraction < 1):
                raise ValueError(f"--val-fraction {self.val_fraction} and --test-fraction {self.test_fraction} must "
                                 f"each be above 0 and together below 1, leaving images to train on")
            return
        if self.folds < 2:
            raise ValueError(f"--folds {self.folds}: cross-validation needs at least 2 folds (0 = one split)")
        if not 0 <= self.fold < self.folds:
            raise ValueError(f"--fold {self.fold} is out of range for --folds {self.folds}; choose 0-{self.folds - 1}")
        if not 0 < self.val_fraction < 1 - 1 / self.folds:
            raise ValueError(f"--val-fraction {self.val_fraction} must be between 0 and {1 - 1 / self.folds:.2f}, "
                             f"the share of images {self.folds} folds leave outside the test fold")


@dataclass
class SplitResult:
    table: pd.DataFrame  # the input rows plus "group" and "split"
    classes: tuple[str, ...]
    dropped_classes: tuple[str, ...] = field(default_factory=tuple)


def balance_preset(name: str) -> BalanceConfig:
    """Return a named balancing preset, or fail with the choices."""
    try:
        return BALANCE_PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown balance preset {name!r}; choose from {', '.join(BALANCE_PRESETS)}") from None


def kept_classes(labels: pd.Series, balance: BalanceConfig) -> tuple[str, ...]:
    """Return the configured classes that have at least min_images images."""
    counts = labels.value_counts()
    return tuple(c for c in balance.classes if counts.get(c, 0) >= max(balance.min_images, 1))


def undersample(table: pd.DataFrame, cap: int | None, seed: int) -> pd.Series:
    """Return a mask keeping at most `cap` rows per label, chosen at random without replacement."""
    keep = pd.Series(True, index=table.index)
    if cap is None:
        return keep
    rng = np.random.default_rng(seed)
    for _, rows in table.groupby("label", sort=True):
        if len(rows) > cap:
            dropped = rng.choice(rows.index.to_numpy(), size=len(rows) - cap, replace=False)
            keep[dropped] = False
    return keep


def lesion_groups(table: pd.DataFrame, near_duplicate_pairs=()) -> pd.Series:
    """Group images by lesion_id (an image without one is its own group); join near-duplicates."""
    parent = {}

    def root(x):
        while parent.get(x, x) != x:
            parent[x] = parent.get(parent[x], parent[x])
            x = parent[x]
        return x

    keys = [lid if lid else f"image:{img}" for img, lid in zip(table["image"], table["lesion_id"])]
    key_of = dict(zip(table["image"], keys))
    for a, b in near_duplicate_pairs:
        if a in key_of and b in key_of:
            ra, rb = root(key_of[a]), root(key_of[b])
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    return pd.Series([root(k) for k in keys], index=table.index, name="group")


def split_groups(table: pd.DataFrame, groups: pd.Series, config: SplitConfig) -> pd.Series:
    """Assign whole groups to splits (or test to one of config.folds folds), stratified by majority label, seeded."""
    rng = np.random.default_rng(config.seed)
    frame = pd.DataFrame({"group": groups, "label": table["label"]})
    votes = frame.groupby(["group", "label"]).size().reset_index(name="n")
    votes = votes.sort_values(["group", "n", "label"], ascending=[True, False, True]).drop_duplicates("group")
    group_label = votes.set_index("group")["label"]  # the majority label of each group
    group_size = frame.groupby("group").size()
    largest_first = config.deal == "largest-first"
    if not config.folds:
        fractions = {"test": config.test_fraction, "val": config.val_fraction,
                     "train": 1 - config.val_fraction - config.test_fraction}
        return groups.map(deal_groups(group_label, group_size, fractions, rng, largest_first)).rename("split")
    folds = dict.fromkeys(range(config.folds), 1 / config.folds)
    fold_of = deal_groups(group_label, group_size, folds, rng, largest_first)
    rest = group_label[[fold_of[g] != config.fold for g in group_label.index]]
    val = config.val_fraction / (1 - 1 / config.folds)  # of the images outside the test fold
    split_of = deal_groups(rest, group_size, {"val": val, "train": 1 - val}, rng, largest_first)
    return groups.map(lambda g: split_of.get(g, "test")).rename("split")


def deal_groups(group_label: pd.Series, group_size: pd.Series, fractions: dict, rng, largest_first: bool) -> dict:
    """Deal the groups of each label, in random order (or largest first), each to the part furthest below its
    fraction of images; ties go to the first part."""
    part_of = {}
    for label in sorted(group_label.unique()):
        members = group_label.index[group_label == label].to_numpy()
        members = members[rng.permutation(len(members))]
        if largest_first:
            members = sorted(members, key=lambda g: -group_size[g])
        total = group_size[members].sum()
        filled = dict.fromkeys(fractions, 0)
        for group in members:
            chosen = max(fractions, key=lambda part: fractions[part] * total - filled[part])
            part_of[group] = chosen
            filled[chosen] += group_size[group]
    return part_of


def split_images(table: pd.DataFrame, config: SplitConfig) -> pd.Series:
    """Assign single images to splits at random, stratified by label (the paper's protocol)."""
    groups = pd.Series([f"image:{i}" for i in table["image"]], index=table.index)
    return split_groups(table, groups, config)


def assign_splits(table: pd.DataFrame, balance: BalanceConfig, config: SplitConfig,
                  near_duplicate_pairs=()) -> SplitResult:
    """Keep classes, split and balance; every input row comes back with a split or 'unused'."""
    classes = kept_classes(table["label"], balance)
    present = set(table["label"])
    dropped = tuple(c for c in balance.classes if c in present and c not in classes)
    if not classes:
        raise ValueError("no class has enough images; lower --min-images or check --classes")
    table = table.reset_index(drop=True).copy()
    pairs = near_duplicate_pairs if config.merge_near_duplicates else ()
    table["group"] = lesion_groups(table, pairs)
    table["split"] = UNUSED
    usable = table["label"].isin(classes)
    if config.protocol == "paper":
        # Balance the whole data set first, then split single images: photos of one
        # lesion land on both sides, which is what inflates the paper's result.
        balanced = usable & undersample(table[usable], balance.cap, config.seed).reindex(table.index, fill_value=False)
        table.loc[balanced, "split"] = split_images(table[balanced], config)
    else:
        table.loc[usable, "split"] = split_groups(table[usable], table.loc[usable, "group"], config)
        train = table["split"] == "train"
        keep = undersample(table[train], balance.cap, config.seed)
        table.loc[keep.index[~keep], "split"] = UNUSED
    return SplitResult(table, classes, dropped)


def class_weights(labels: pd.Series, classes: tuple[str, ...]) -> np.ndarray:
    """Return inverse-frequency weights n / (k * count) per class, in the given order."""
    counts = labels.value_counts().reindex(list(classes), fill_value=0).to_numpy(dtype=float)
    return np.where(counts > 0, counts.sum() / (len(classes) * np.maximum(counts, 1)), 0.0)


def sampler_weights(labels: pd.Series, groups: pd.Series | None = None) -> np.ndarray:
    """Return per-image weights that make every class equally likely to be drawn; given each image's lesion group,
    also every lesion within its class (1 / (photos of its lesion x lesions of its class)), so a lesion photographed
    six times is not drawn six times as often as one photographed once."""
    if groups is None:
        return (1.0 / labels.map(labels.value_counts())).to_numpy(dtype=float)
    frame = pd.DataFrame({"label": labels, "group": groups})
    photos_of_lesion = frame.groupby("group")["label"].transform("size")
    lesions_of_class = frame.groupby("label")["group"].transform("nunique")
    return (1.0 / (photos_of_lesion * lesions_of_class)).to_numpy(dtype=float)


def count_table(table: pd.DataFrame, classes: tuple[str, ...]) -> pd.DataFrame:
    """Return images per class (rows) and split (columns), with totals."""
    counts = pd.crosstab(table["label"], table["split"]).reindex(index=list(classes), fill_value=0)
    columns = [s for s in (*SPLITS, UNUSED) if s in counts.columns]
    counts = counts.reindex(columns=columns, fill_value=0)
    counts.loc["total"] = counts.sum()
    return counts
