import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from skinlesion.cli import main
from skinlesion.isic import GROUND_TRUTH_CSV, IMAGE_DIR
from skinlesion.predict import BUNDLED_MODEL
from skinlesion.prepare import load_prepared


def run_prepare(*args):
    result = CliRunner().invoke(main, ["prepare", *map(str, args)])
    return result


def test_prepare_on_the_real_sample_writes_a_reproducible_manifest(shared_data, tmp_path):
    result = run_prepare("--data", shared_data, "--out", tmp_path / "p", "--size", 32)
    assert result.exit_code == 0, result.output
    assert "images per class before balancing" in result.output and "AK 130" in result.output
    assert "lesions with images in more than one split: 0" in result.output
    manifest = pd.read_csv(tmp_path / "p" / "splits.csv", keep_default_na=False)
    assert {"image", "label", "lesion_id", "split"} <= set(manifest.columns)
    summary = json.loads((tmp_path / "p" / "prepared.json").read_text())
    assert summary["classes"] == ["MEL", "NV", "BCC", "AK", "BKL", "SCC"]
    assert summary["near_duplicate_pairs_across_splits"] == 0
    prepared = load_prepared(tmp_path / "p")
    assert prepared.pixels.shape == (12922, 32, 32, 3)
    # A second run with the same inputs reuses the cache and gives the same manifest.
    again = run_prepare("--data", shared_data, "--out", tmp_path / "p", "--size", 32)
    assert "cache reused" in again.output
    assert pd.read_csv(tmp_path / "p" / "splits.csv", keep_default_na=False).equals(manifest)
    # Another split, or another size, into the same folder would pull the split or pixels from under the runs
    # trained from it: refused, and the folder is left as it was.
    written = {name: (tmp_path / "p" / name).read_bytes() for name in ("splits.csv", "prepared.json")}
    paper = run_prepare("--data", shared_data, "--out", tmp_path / "p", "--size", 32, "--protocol", "paper")
    assert paper.exit_code == 1 and "Traceback" not in paper.output, paper.output
    assert f"{tmp_path / 'p'} already holds another split of these photos (" in paper.output
    assert f"prepare into another --out, or delete {tmp_path / 'p'} first to replace it" in paper.output
    other_size = run_prepare("--data", shared_data, "--out", tmp_path / "p", "--size", 48)
    assert other_size.exit_code == 1
    assert "already holds photos prepared at 32 px (squash), not 48 px" in other_size.output
    assert not list((tmp_path / "p" / "cache").glob("pixels-48-*"))
    assert {name: (tmp_path / "p" / name).read_bytes() for name in written} == written
    # Into their own folders, sharing the pixel cache: the paper's split leaks lesions, folds do not.
    cache = ("--cache-dir", tmp_path / "p" / "cache")
    paper = run_prepare("--data", shared_data, "--out", tmp_path / "paper", "--size", 32, "--protocol", "paper", *cache)
    assert "cache reused" in paper.output
    assert json.loads((tmp_path / "paper" / "prepared.json").read_text())["lesions_across_splits"] > 100
    fold = run_prepare("--data", shared_data, "--out", tmp_path / "fold", "--size", 32, "--folds", 5, "--fold", 2,
                       *cache)
    assert "cache reused" in fold.output and "lesions with images in more than one split: 0" in fold.output
    assert json.loads((tmp_path / "fold" / "prepared.json").read_text())["config"]["split"]["fold"] == 2
    assert not (tmp_path / "paper" / "cache").exists() and len(list((tmp_path / "p" / "cache").glob("*.npy"))) == 1
    bad = run_prepare("--data", shared_data, "--out", tmp_path / "p", "--size", 32, "--folds", 5, "--fold", 5)
    assert bad.exit_code == 1 and "Error: --fold 5 is out of range for --folds 5; choose 0-4" in bad.output


def test_bad_images_are_listed_in_the_problem_report(small_layout, tmp_path):
    images = sorted((small_layout / IMAGE_DIR).iterdir())
    images[0].write_bytes(b"broken")
    images[1].unlink()
    result = run_prepare("--data", small_layout, "--out", tmp_path / "p", "--size", 16, "--balance", "all")
    assert result.exit_code == 0, result.output
    assert "skipped 2 problem rows or images" in result.output
    problems = pd.read_csv(tmp_path / "p" / "problems.csv")
    assert set(problems["image"]) == {images[0].stem, images[1].stem}
    assert len(pd.read_csv(tmp_path / "p" / "splits.csv")) == 46


def test_user_errors_are_clean_messages_not_tracebacks(small_layout, tmp_path):
    (small_layout / GROUND_TRUTH_CSV).write_text("image,foo\nISIC_1,1\n")
    result = run_prepare("--data", small_layout, "--out", tmp_path / "p")
    assert result.exit_code == 1
    assert "Error:" in result.output and "missing column(s) 'MEL'" in result.output
    assert "Traceback" not in result.output
    result = run_prepare("--data", small_layout, "--out", tmp_path / "p", "--classes", "MEL,XYZ")
    assert result.exit_code == 1 and "unknown class 'XYZ'" in result.output


@pytest.mark.parametrize("option, value, problem", [
    ("--cap", "-5", "--cap -5: give the number of images to keep per class"),
    ("--min-images", "-1", "--min-images -1: give a number of images"),
    ("--workers", "-2", "--workers -2: give a number of decoding processes"),
    ("--test-fraction", "0.9", "together below 1")])
def test_a_setting_out_of_range_is_refused_before_any_image_is_read(small_layout, tmp_path, option, value, problem):
    result = run_prepare("--data", small_layout, "--out", tmp_path / "p", option, value)
    assert result.exit_code == 1 and problem in result.output and "Traceback" not in result.output, result.output
    assert not (tmp_path / "p").exists()


def test_a_second_preparation_can_reuse_the_first_split(small_layout, tmp_path):
    first = run_prepare("--data", small_layout, "--out", tmp_path / "a", "--size", 16, "--balance", "all")
    assert first.exit_code == 0, first.output
    other_size = run_prepare("--data", small_layout, "--out", tmp_path / "b", "--size", 24, "--balance", "all",
                             "--seed", 5, "--splits-from", tmp_path / "a")
    assert other_size.exit_code == 0, other_size.output
    a, b = (pd.read_csv(tmp_path / p / "splits.csv", keep_default_na=False) for p in "ab")
    assert a["split"].equals(b["split"]) and load_prepared(tmp_path / "b").pixels.shape[1] == 24
    # Without --splits-from that seed would have split differently.
    assert run_prepare("--data", small_layout, "--out", tmp_path / "c", "--size", 16, "--balance", "all",
                       "--seed", 5).exit_code == 0
    assert not a["split"].equals(pd.read_csv(tmp_path / "c" / "splits.csv")["split"])
    a.iloc[1:].to_csv(tmp_path / "a" / "splits.csv", index=False)
    result = run_prepare("--data", small_layout, "--out", tmp_path / "d", "--balance", "all",
                         "--splits-from", tmp_path / "a")
    assert result.exit_code == 1 and "has no split for 1 of these images" in result.output
    result = run_prepare("--data", small_layout, "--out", tmp_path / "d", "--splits-from", tmp_path / "nowhere")
    assert result.exit_code == 1 and "no manifest to take the split from" in result.output


def test_a_folder_is_not_prepared_again_from_changed_photos(small_layout, tmp_path):
    args = ("--data", small_layout, "--out", tmp_path / "p", "--size", 16, "--balance", "all")
    assert run_prepare(*args).exit_code == 0
    written = (tmp_path / "p" / "splits.csv").read_bytes()
    moved = shutil.copytree(small_layout, tmp_path / "moved")
    sorted((small_layout / IMAGE_DIR).iterdir())[0].unlink()
    result = run_prepare(*args)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert f"{tmp_path / 'p'} was prepared from other photos than these ({small_layout.resolve()} then; photos " \
        f"since added or removed)" in result.output
    assert (tmp_path / "p" / "splits.csv").read_bytes() == written
    # The folder's own cache keeps only the pixels it reads: the old files' cache goes once the new one is named.
    old_cache = tmp_path / "p" / json.loads((tmp_path / "p" / "prepared.json").read_text())["cache"]
    other_size = shutil.copy(old_cache, old_cache.with_name("pixels-24-squash-000000000000.npy"))  # not this size
    unnamed = shutil.copy(old_cache, old_cache.with_name("pixels-16-squash.npy"))  # named as before fingerprints
    refused = run_prepare("--data", shutil.copytree(moved, tmp_path / "moved2"), "--out", tmp_path / "p",
                          "--size", 16, "--balance", "all", "--seed", 5)  # decoded anew, then refused: other split
    assert refused.exit_code == 1 and "already holds another split" in refused.output, refused.output
    assert old_cache.exists() and load_prepared(tmp_path / "p").pixels.shape[1] == 16  # the folder still reads it
    # What it decoded for that call alone goes with the refusal.
    assert sorted((tmp_path / "p" / "cache").glob("*.npy")) == sorted([old_cache, Path(other_size), Path(unnamed)])
    # The same photos elsewhere are decoded again into a cache of their own and give the same split: accepted.
    again = run_prepare("--data", moved, "--out", tmp_path / "p", "--size", 16, "--balance", "all")
    assert again.exit_code == 0 and "cache built" in again.output, again.output
    assert (tmp_path / "p" / "splits.csv").read_bytes() == written
    assert f"removed 2 older pixel cache(s) of these photos from {old_cache.parent}" in again.output
    new_cache = tmp_path / "p" / json.loads((tmp_path / "p" / "prepared.json").read_text())["cache"]
    assert list((tmp_path / "p" / "cache").glob("pixels-16-squash-*.npy")) == [new_cache] and new_cache != old_cache
    assert not any(old_cache.with_suffix(s).exists() for s in (".npy", ".json", ".csv")) and other_size.exists()
    assert not unnamed.exists()
    assert load_prepared(tmp_path / "p").pixels.shape[0] == len(pd.read_csv(tmp_path / "p" / "splits.csv"))
    assert json.loads((tmp_path / "p" / "prepared.json").read_text())["old_caches"]["count"] == 2
    fresh = run_prepare("--data", small_layout, "--out", tmp_path / "q", "--size", 16, "--balance", "all")
    assert fresh.exit_code == 0 and "skipped 1 problem rows or images" in fresh.output


def test_a_shared_pixel_cache_keeps_each_set_of_photos_apart(small_layout, tmp_path):
    cache = ("--cache-dir", tmp_path / "cache", "--size", 16, "--balance", "all")
    assert run_prepare("--data", small_layout, "--out", tmp_path / "a", *cache).exit_code == 0
    before = np.array(load_prepared(tmp_path / "a").pixels)
    sorted((small_layout / IMAGE_DIR).iterdir())[0].unlink()  # other photos, the same cache folder
    other = run_prepare("--data", small_layout, "--out", tmp_path / "b", *cache)
    assert other.exit_code == 0 and "cache built" in other.output, other.output
    assert len(list((tmp_path / "cache").glob("pixels-16-squash-*.npy"))) == 2  # a shared cache is never pruned
    assert f"the shared cache folder {tmp_path / 'cache'} also holds 1 other pixel cache(s) at this size" \
        in other.output
    assert np.array_equal(np.array(load_prepared(tmp_path / "a").pixels), before)  # the first folder's pixels stand


@pytest.mark.parametrize("damage, problem", [("{oops", "Expecting property name"), ("[1]", "not a JSON object"),
                                             ('{"size": 16}', "no data, classes, policy, config, cache")])
def test_a_damaged_summary_is_named_with_the_fix(small_layout, tmp_path, damage, problem):
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "prepared.json").write_text(damage)
    for args in (["prepare", "--data", small_layout, "--out", tmp_path / "p", "--size", 16],
                 ["train", "--data", tmp_path / "p", "--out", tmp_path / "run"],
                 ["evaluate", BUNDLED_MODEL, "--data", tmp_path / "p"]):
        result = CliRunner().invoke(main, list(map(str, args)))
        assert result.exit_code == 1 and "Traceback" not in result.output, result.output
        assert f"Error: {tmp_path / 'p' / 'prepared.json'}: not a summary written by 'skinlesion prepare' ({problem}" \
            in result.output
    assert not (tmp_path / "p" / "splits.csv").exists()


@pytest.mark.parametrize("damage, problem", [("", "No columns to parse from file"),
                                             ("image,label\nISIC_1,MEL\n", "no column lesion_id, group, split")])
def test_a_damaged_manifest_is_named_with_the_fix(small_layout, tmp_path, damage, problem):
    assert run_prepare("--data", small_layout, "--out", tmp_path / "p", "--size", 16, "--balance", "all").exit_code == 0
    (tmp_path / "p" / "splits.csv").write_text(damage)
    result = CliRunner().invoke(main, ["train", "--data", str(tmp_path / "p"), "--out", str(tmp_path / "run")])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert f"Error: {tmp_path / 'p' / 'splits.csv'}: not a manifest written by 'skinlesion prepare' ({problem}" \
        in result.output
