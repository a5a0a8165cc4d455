import shutil

import pandas as pd
import pytest

from skinlesion.isic import GROUND_TRUTH_CSV, IMAGE_DIR, METADATA_CSV, DataError, read_isic


def test_reads_the_real_sample_in_the_official_layout(shared_data):
    table = read_isic(shared_data)
    assert len(table.images) == 12922
    assert table.problems == []
    counts = table.images["label"].value_counts()
    assert counts["AK"] == 130 and counts["DF"] == 115 and counts["NV"] == 8668
    assert table.images["lesion_id"].str.startswith("HAM_").sum() > 10000
    assert table.images["image"].str.endswith("_downsampled").any()


def test_missing_folder_and_csv_name_the_path(tmp_path, small_layout):
    with pytest.raises(DataError, match="data folder not found"):
        read_isic(tmp_path / "nowhere")
    (small_layout / GROUND_TRUTH_CSV).unlink()
    with pytest.raises(DataError, match=f"{GROUND_TRUTH_CSV}: file not found"):
        read_isic(small_layout)


def test_wrong_columns_are_named(small_layout):
    truth = pd.read_csv(small_layout / GROUND_TRUTH_CSV).drop(columns=["SCC"])
    truth.to_csv(small_layout / GROUND_TRUTH_CSV, index=False)
    with pytest.raises(DataError, match="missing column\\(s\\) 'SCC'"):
        read_isic(small_layout)


def test_metadata_without_lesion_id_is_an_error_and_gender_header_is_accepted(small_layout):
    meta = pd.read_csv(small_layout / METADATA_CSV).rename(columns={"sex": "gender"})
    meta.to_csv(small_layout / METADATA_CSV, index=False)
    assert len(read_isic(small_layout).images) == 48
    meta.drop(columns=["lesion_id"]).to_csv(small_layout / METADATA_CSV, index=False)
    with pytest.raises(DataError, match="missing column\\(s\\) 'lesion_id'"):
        read_isic(small_layout)


def test_without_metadata_every_image_is_its_own_lesion(small_layout):
    (small_layout / METADATA_CSV).unlink()
    assert (read_isic(small_layout).images["lesion_id"] == "").all()


def test_bad_rows_and_missing_images_are_skipped_and_reported(small_layout):
    truth = pd.read_csv(small_layout / GROUND_TRUTH_CSV, dtype=str)
    first, second, third, fourth, fifth, sixth = truth["image"].iloc[:6]
    truth.loc[0, ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC"]] = "0.0"  # no label
    truth.loc[1, ["MEL", "NV"]] = "1.0"  # several labels
    truth.loc[3, "MEL"] = "yes"  # not a number
    truth.loc[4, ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC"]] = "0.0"
    truth.loc[4, "UNK"] = "1.0"  # the official file's ninth column, never a training label
    truth = pd.concat([truth, truth.iloc[[5]]])  # the same image listed twice: the first row counts
    truth.to_csv(small_layout / GROUND_TRUTH_CSV, index=False)
    (small_layout / IMAGE_DIR / f"{third}.jpg").unlink()
    (small_layout / IMAGE_DIR / "ISIC_9999999.jpg").write_bytes(b"stray")
    table = read_isic(small_layout)
    problems = {p["image"]: p["problem"] for p in table.problems}
    assert problems[first].startswith("no label")
    assert problems[second] == "several labels: MEL, NV"
    assert "image file is missing" in problems[third]
    assert "not listed" in problems["ISIC_9999999"]
    assert problems[fourth].startswith("label values are not numbers: yes, ")
    assert problems[fifth] == "label UNK is not a trainable class"
    assert problems[sixth] == "listed twice in the ground truth"
    assert (table.images["image"] == sixth).sum() == 1
    assert len(table.images) == 43


def test_an_unreadable_ground_truth_names_the_file(small_layout):
    (small_layout / GROUND_TRUTH_CSV).write_bytes(b"\xff\xfe\x00image,MEL\n\x89PNG\x00\x00")
    with pytest.raises(DataError, match=f"{GROUND_TRUTH_CSV}: not a readable CSV file"):
        read_isic(small_layout)


def test_the_full_official_csvs_read_with_the_images_at_hand(shared_data, tmp_path):
    # The user's data is the full 25,331-row set; here its official CSVs meet our sample's image folder, so every
    # row whose photo is absent must be reported as missing, and nothing else found wrong.
    root = tmp_path / "full"
    root.mkdir()
    (root / IMAGE_DIR).symlink_to(shared_data / IMAGE_DIR)
    for name in (GROUND_TRUTH_CSV, METADATA_CSV):
        shutil.copy(shared_data / "full" / name, root / name)
    table = read_isic(root)
    assert len(table.images) == 12922
    assert len(table.problems) == 25331 - 12922
    assert {p["problem"] for p in table.problems} == {"listed in the ground truth but the image file is missing"}
