import os

import numpy as np
import pytest

from skinlesion.cache import CacheConfig, build_cache, near_duplicate_pairs
from skinlesion.imaging import ImageError, difference_hash, load_pixels
from skinlesion.isic import IMAGE_DIR, read_isic


def test_cache_is_built_once_and_rebuilt_when_an_image_changes(small_layout, tmp_path):
    images = read_isic(small_layout).images
    config = CacheConfig(size=32, workers=2)
    first = build_cache(images, tmp_path / "cache", config, progress=False)
    assert not first.reused and first.pixels.shape == (48, 32, 32, 3)
    assert first.pixels.reshape(48, -1).std(axis=1).min() > 1  # real photos, not blanks
    again = build_cache(images, tmp_path / "cache", config, progress=False)
    assert again.reused and np.array_equal(first.pixels, again.pixels)
    path = images["path"].iloc[0]
    os.utime(path, ns=(0, 0))
    assert not build_cache(images, tmp_path / "cache", config, progress=False).reused
    other_size = build_cache(images, tmp_path / "cache", CacheConfig(size=40, policy="crop"), progress=False)
    assert not other_size.reused and other_size.pixels.shape[1:] == (40, 40, 3)


def test_one_folder_spelt_relative_absolute_or_through_a_link_shares_one_cache(small_layout, tmp_path, monkeypatch):
    config = CacheConfig(size=32, workers=1)
    first = build_cache(read_isic(small_layout).images, tmp_path / "cache", config, progress=False)
    (tmp_path / "link").symlink_to(small_layout)
    monkeypatch.chdir(small_layout.parent)
    for spelling in (small_layout.name, tmp_path / "link", f"../{tmp_path.name}/./link"):
        images = read_isic(spelling).images
        assert images["path"].iloc[0] != first.index["path"].iloc[0]  # the paths as given differ
        again = build_cache(images, tmp_path / "cache", config, progress=False)
        assert again.reused and again.path == first.path, spelling
        assert again.index["path"].tolist() == images["path"].tolist()  # problems are reported as spelt this time


def test_corrupt_and_truncated_images_are_reported_not_fatal(small_layout, tmp_path):
    images = read_isic(small_layout).images
    truncated, corrupt = images["path"].iloc[0], images["path"].iloc[1]
    data = open(truncated, "rb").read()
    open(truncated, "wb").write(data[: len(data) // 3])
    open(corrupt, "wb").write(b"this is not a jpeg")
    cache = build_cache(images, tmp_path / "cache", CacheConfig(size=32, workers=1), progress=False)
    problems = cache.index.set_index("path")["problem"]
    assert "not a readable image" in problems[truncated]
    assert "not a readable image" in problems[corrupt]
    assert (problems == "").sum() == 46


def test_resize_policies(shared_data):
    path = next((shared_data / IMAGE_DIR).glob("ISIC_0024*.jpg"))
    squash = load_pixels(path, 64, "squash")
    crop = load_pixels(path, 64, "crop")
    assert squash.shape == crop.shape == (64, 64, 3) and not np.array_equal(squash, crop)
    with pytest.raises(ValueError, match="choose from squash, crop"):
        load_pixels(path, 64, "stretch")
    with pytest.raises(ImageError, match="file not found"):
        load_pixels(shared_data / "nope.jpg", 64, "squash")


def test_exact_copy_is_a_near_duplicate_and_other_lesions_are_not(shared_data):
    paths = sorted((shared_data / IMAGE_DIR).glob("ISIC_00245*.jpg"))[:20]
    import pandas as pd
    pixels = [load_pixels(p, 64, "squash") for p in paths]
    brighter = np.clip(pixels[0] * 0.9 + 10, 0, 255).astype(np.uint8)
    hashes = [difference_hash(p) for p in pixels] + [difference_hash(brighter)]
    index = pd.DataFrame({"image": [p.stem for p in paths] + ["copy"], "dhash": hashes, "problem": ""})
    assert near_duplicate_pairs(index) == [(paths[0].stem, "copy")]


def test_tiny_inputs_are_hashed_large_enough_to_tell_lesions_apart(shared_data):
    import pandas as pd

    from skinlesion.imaging import HASH_MIN_SIZE, model_input_and_hash, open_rgb, resize

    paths = sorted((shared_data / IMAGE_DIR).glob("ISIC_00245*.jpg"))[:60]
    photos = [open_rgb(p, draft_size=8) for p in paths]
    tiny = pd.DataFrame({"image": [p.stem for p in paths], "problem": "",
                         "dhash": [model_input_and_hash(photo, 8, "squash")[1] for photo in photos]})
    as_seen = tiny.assign(dhash=[difference_hash(resize(photo, 8, "squash")) for photo in photos])
    assert len(near_duplicate_pairs(as_seen)) >= 3  # an 8 px photo's own hash calls unrelated lesions alike
    assert len(near_duplicate_pairs(tiny)) <= 1
    # Decoded no smaller than the hash is taken, a tiny input's hash is the photo's hash at that size.
    at_hash_size = [model_input_and_hash(open_rgb(p, draft_size=HASH_MIN_SIZE), HASH_MIN_SIZE, "squash")[1]
                    for p in paths]
    assert tiny["dhash"].tolist() == at_hash_size


def test_the_cache_holds_painted_borders_but_hashes_the_photo_as_it_was(small_layout, tmp_path):
    from PIL import Image

    from skinlesion.imaging import open_rgb, resize
    from tests.test_imaging import grey, with_black_ring

    images = read_isic(small_layout).images
    path = images["path"].iloc[0]
    with_black_ring(Image.open(path).convert("RGB"), 0.85).save(path, "JPEG", quality=90)
    cache = build_cache(images, tmp_path / "cache", CacheConfig(size=32, workers=1), progress=False)
    row = cache.index.index[cache.index["path"] == path][0]
    assert (grey(cache.pixels[row])[[0, 0, -1, -1], [0, -1, 0, -1]] > 60).all()  # painted in the cache
    assert cache.index.loc[row, "dhash"] == difference_hash(resize(open_rgb(path, draft_size=32), 32, "squash"))
