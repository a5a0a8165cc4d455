import numpy as np
import pandas as pd
import pytest

from skinlesion.isic import METADATA_CSV, DataError
from skinlesion.subgroups import (age_band, describe_subgroups, patient_groups_or_reason, read_patient_groups,
                                  subgroup_table)


def test_age_bands_and_unknown_values():
    ages = pd.Series(["0", "29.0", "30", "55", "70", "85.0", "", "n/a"])
    assert list(age_band(ages)) == ["0-29", "0-29", "30-49", "50-69", "70+", "70+", "unknown", "unknown"]


def test_patient_groups_come_from_the_real_metadata_whatever_the_sex_column_is_called(small_layout):
    meta = pd.read_csv(small_layout / METADATA_CSV, dtype=str, keep_default_na=False)
    groups = read_patient_groups(small_layout)
    assert len(groups) == len(meta) == 48 and set(groups.columns) == {"image", "sex", "age", "site"}
    row = groups.set_index("image").loc[meta["image"].iloc[0]]
    assert row["sex"] == (meta["sex"].iloc[0] or "unknown")
    meta.rename(columns={"sex": "gender"}).drop(columns=["anatom_site_general"]).to_csv(small_layout / METADATA_CSV,
                                                                                         index=False)
    again = read_patient_groups(small_layout)  # a column it lacks is not scored at all
    assert again["sex"].equals(groups["sex"]) and list(again.columns) == ["image", "sex", "age"]
    meta[["image", "lesion_id"]].to_csv(small_layout / METADATA_CSV, index=False)
    with pytest.raises(DataError, match="none of the columns sex, age_approx, anatom_site_general"):
        read_patient_groups(small_layout)
    (small_layout / METADATA_CSV).unlink()
    with pytest.raises(DataError, match=f"{METADATA_CSV}: file not found"):
        read_patient_groups(small_layout)
    groups, reason = patient_groups_or_reason(str(small_layout))
    assert groups is None and "file not found" in reason


def test_each_group_is_scored_on_its_own_photos():
    classes = ["MEL", "NV", "BCC"]
    labels = ["MEL", "MEL", "NV", "NV", "BCC", "MEL"]
    guesses = ["MEL", "NV", "NV", "NV", "MEL", "MEL"]
    probs = np.eye(3)[[classes.index(g) for g in guesses]] * 0.7 + 0.1
    images = [f"ISIC_{i}" for i in range(6)]
    groups = pd.DataFrame({"image": images[:5], "sex": ["female", "female", "male", "male", "male"],
                           "age": ["30-49"] * 5, "site": ["head/neck"] * 5})  # the sixth photo has no metadata
    table = subgroup_table(images, labels, probs, classes, groups, threshold=0.5).set_index(["attribute", "group"])
    female, male, unknown = (table.loc[("sex", g)] for g in ("female", "male", "unknown"))
    assert (female["images"], female["classes"], female["recall_MEL"], female["n_MEL"]) == (2, 1, 0.5, 2)
    assert female["balanced_accuracy"] == 0.5 and np.isnan(female["recall_NV"])
    # male: NV 2 of 2, BCC 0 of 1 -> (1 + 0) / 2
    assert male["balanced_accuracy"] == 0.5 and male["accuracy"] == pytest.approx(2 / 3)
    assert unknown["images"] == 1 and unknown["balanced_accuracy"] == 1.0
    for attribute in ("sex", "age", "site"):
        assert table.loc[attribute, "images"].sum() == 6
    # Referral: MEL and BCC are the concerning classes here; male's one BCC photo was called MEL, so it is referred.
    assert male["referral_sensitivity"] == 1.0 and female["referral_sensitivity"] == 0.5
    assert male["bacc_low"] <= male["balanced_accuracy"] <= male["bacc_high"]
    lines = describe_subgroups(table.reset_index())
    assert lines[0] == "by sex: female 0.500 (2), male 0.500 (3), unknown 1.000 (1)" and len(lines) == 3
    assert describe_subgroups(subgroup_table([], [], np.zeros((0, 3)), classes, groups)) == []
