"""Read the official ISIC 2019 layout (CSVs + image folder) into one table; no torch."""

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from skinlesion.classes import CODES, UNKNOWN_CODE
from skinlesion.imaging import IMAGE_SUFFIXES

IMAGE_DIR = "ISIC_2019_Training_Input"
GROUND_TRUTH_CSV = "ISIC_2019_Training_GroundTruth.csv"
METADATA_CSV = "ISIC_2019_Training_Metadata.csv"


class DataError(Exception):
    """A problem with the input data that stops the run; the message names the file."""


@dataclass
class IsicTable:
    """Every usable image (image, path, label, lesion_id) plus the rows that were skipped."""

    images: pd.DataFrame
    problems: list[dict] = field(default_factory=list)  # {"image", "path", "problem"}


def read_isic(data_dir: Path) -> IsicTable:
    """Join ground truth, metadata and image files; skip and report bad rows."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: data folder not found")
    image_dir = data_dir / IMAGE_DIR
    if not image_dir.is_dir():
        raise DataError(f"{image_dir}: image folder not found; expected the official layout "
                        f"{IMAGE_DIR}/, {GROUND_TRUTH_CSV}, {METADATA_CSV}")
    labels, problems = read_ground_truth(data_dir / GROUND_TRUTH_CSV)
    metadata_csv = data_dir / METADATA_CSV
    lesions = read_metadata(metadata_csv) if metadata_csv.exists() else None
    if lesions is None:
        labels["lesion_id"] = ""
    else:
        labels = labels.merge(lesions, on="image", how="left")
        labels["lesion_id"] = labels["lesion_id"].fillna("")
    paths = index_image_files(image_dir)
    labels["path"] = labels["image"].map(paths)
    missing = labels["path"].isna()
    for image in labels.loc[missing, "image"]:
        problems.append({"image": image, "path": str(image_dir / f"{image}.jpg"),
                         "problem": "listed in the ground truth but the image file is missing"})
    rejected = {p["image"] for p in problems}
    for image in sorted(set(paths) - set(labels["image"]) - rejected):
        problems.append({"image": image, "path": paths[image],
                         "problem": f"image file not listed in {GROUND_TRUTH_CSV}"})
    images = labels[~missing].reset_index(drop=True)
    return IsicTable(images[["image", "path", "label", "lesion_id"]], problems)


def read_csv_columns(csv: Path, required: tuple[str, ...]) -> pd.DataFrame:
    """Read a CSV as strings and check that it has the required columns."""
    if not csv.is_file():
        raise DataError(f"{csv}: file not found")
    try:
        table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as error:
        raise DataError(f"{csv}: not a readable CSV file ({error})") from None
    table.columns = [c.strip() for c in table.columns]
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise DataError(f"{csv}: missing column(s) {', '.join(repr(c) for c in missing)}; "
                        f"found {', '.join(table.columns)}")
    return table


def read_ground_truth(csv: Path) -> tuple[pd.DataFrame, list[dict]]:
    """Turn the one-hot ground truth into (image, label) rows; report rows without one label."""
    table = read_csv_columns(csv, ("image", *CODES))
    label_columns = [c for c in (*CODES, UNKNOWN_CODE) if c in table.columns]
    problems, rows, seen = [], [], set()
    for record in table[["image", *label_columns]].itertuples(index=False):
        image, values = record[0].strip(), record[1:]
        try:
            positives = [code for code, v in zip(label_columns, values) if float(v) >= 0.5]
        except ValueError:
            problems.append({"image": image, "path": str(csv),
                             "problem": f"label values are not numbers: {', '.join(values)}"})
            continue
        problem = None
        if image in seen:
            problem = "listed twice in the ground truth"
        elif not positives:
            problem = "no label (every class column is 0)"
        elif len(positives) > 1:
            problem = f"several labels: {', '.join(positives)}"
        elif positives[0] == UNKNOWN_CODE:
            problem = "label UNK is not a trainable class"
        if problem:
            problems.append({"image": image, "path": str(csv), "problem": problem})
            continue
        seen.add(image)
        rows.append((image, positives[0]))
    return pd.DataFrame(rows, columns=["image", "label"]), problems


def read_metadata(csv: Path) -> pd.DataFrame:
    """Return (image, lesion_id); some copies name the last column 'gender', which is unused."""
    table = read_csv_columns(csv, ("image", "lesion_id"))
    table["image"] = table["image"].str.strip()
    table["lesion_id"] = table["lesion_id"].str.strip()
    return table.drop_duplicates("image")[["image", "lesion_id"]]


def index_image_files(image_dir: Path) -> dict[str, str]:
    """Map image id (file stem) to path for every image file in the folder."""
    return {p.stem: str(p) for p in sorted(image_dir.iterdir())
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()}
