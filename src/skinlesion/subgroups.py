"""Scores by patient group: sex, age and body site from the ISIC metadata CSV, so a weak group shows. No torch."""

from pathlib import Path

import numpy as np
import pandas as pd

from skinlesion.isic import METADATA_CSV, DataError, read_csv_columns
from skinlesion.metrics import balanced_accuracy, balanced_accuracy_interval
from skinlesion.referral import referral_scores

# The metadata columns scored, and the name each gets in the report. Some copies of the CSV say 'gender' for 'sex'.
ATTRIBUTES = {"sex": "sex", "age": "age_approx", "site": "anatom_site_general"}
AGE_BANDS = ((0, 30, "0-29"), (30, 50, "30-49"), (50, 70, "50-69"), (70, 200, "70+"))
UNKNOWN = "unknown"


def read_patient_groups(data_dir: Path) -> pd.DataFrame:
    """Return image and those of sex, age (band) and site that a data folder's metadata CSV has, 'unknown' where a
    value is missing; raise DataError naming the file when there is none or it has none of them."""
    csv = Path(data_dir) / METADATA_CSV
    table = read_csv_columns(csv, ("image",))
    table = table.rename(columns={"gender": "sex"}) if "sex" not in table.columns else table
    groups = pd.DataFrame({"image": table["image"].str.strip()})
    for name, column in ATTRIBUTES.items():
        if column in table.columns:
            values = table[column].str.strip()
            groups[name] = age_band(values) if name == "age" else values.replace("", UNKNOWN)
    if len(groups.columns) == 1:
        raise DataError(f"{csv}: none of the columns {', '.join(ATTRIBUTES.values())}")
    return groups.drop_duplicates("image")


def age_band(ages: pd.Series) -> pd.Series:
    """Map approximate ages ('55', '55.0', '') to AGE_BANDS' names, 'unknown' where missing or not a number."""
    years = pd.to_numeric(ages, errors="coerce")
    bands = pd.Series(UNKNOWN, index=ages.index)
    for low, high, name in AGE_BANDS:
        bands[(years >= low) & (years < high)] = name
    return bands


def subgroup_table(images, labels, probs: np.ndarray, classes, groups: pd.DataFrame,
                   threshold: float | None = None) -> pd.DataFrame:
    """Score every group of every attribute: images, the classes it holds, balanced accuracy over those classes (with
    its 95% bootstrap interval), accuracy, each class's recall (empty where the group has none) and, with a referral
    threshold, the rule's sensitivity and specificity. Balanced accuracy over different classes is not comparable
    between groups: compare a class's recall, and mind its support (`n_` columns)."""
    frame = pd.DataFrame({"image": list(images), "label": list(labels)}).merge(groups, on="image", how="left")
    frame = frame.fillna(UNKNOWN)
    y_true = frame["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    y_pred = np.asarray(probs).argmax(1)
    rows = []
    for attribute in [name for name in ATTRIBUTES if name in groups.columns]:
        for group, members in frame.groupby(attribute, sort=True):
            at = members.index.to_numpy()
            truth, guess = y_true[at], y_pred[at]
            low, high = balanced_accuracy_interval(truth, guess, len(classes))
            row = {"attribute": attribute, "group": group, "images": len(at), "classes": int(len(set(truth))),
                   "balanced_accuracy": balanced_accuracy(truth, guess, len(classes)), "bacc_low": low,
                   "bacc_high": high, "accuracy": float((truth == guess).mean())}
            for i, code in enumerate(classes):
                mine = truth == i
                row[f"recall_{code}"] = float((guess[mine] == i).mean()) if mine.any() else None
                row[f"n_{code}"] = int(mine.sum())
            if threshold is not None:
                scores = referral_scores(probs[at], frame["label"].to_numpy()[at], classes, threshold)
                row["referral_sensitivity"], row["referral_specificity"] = scores["sensitivity"], scores["specificity"]
            rows.append(row)
    return pd.DataFrame(rows)


def describe_subgroups(table: pd.DataFrame) -> list[str]:
    """One line per attribute: each group's balanced accuracy and size."""
    if table.empty:
        return []
    return [f"by {attribute}: " + ", ".join(f"{row.group} {row.balanced_accuracy:.3f} ({row.images})"
                                            for row in groups.itertuples())
            for attribute, groups in table.groupby("attribute", sort=False)]


def patient_groups_or_reason(data_dir: str | None) -> tuple[pd.DataFrame | None, str]:
    """Read the groups of a prepared folder's data folder, or say why there are none (no metadata, folder moved)."""
    if not data_dir:
        return None, "no data folder recorded in prepared.json"
    try:
        return read_patient_groups(Path(data_dir)), ""
    except DataError as error:
        return None, str(error)
