"""What a model has seen travels with it, and no score counts those photos (or their lesions) as new."""

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from skinlesion.cli import main
from skinlesion.card import write_model_card
from skinlesion.isic import IMAGE_DIR
from skinlesion.predict import Predictor
from skinlesion.prepare import load_prepared, photo_hashes, read_manifest
from skinlesion.seen import SEEN_KEY, seen_record, seen_rows


def test_a_score_leaves_out_photos_and_lesions_met_in_an_earlier_role():
    model = pd.DataFrame({"image": ["a", "b", "c", "d"], "lesion_id": ["L1", "L2", "", ""],
                          "split": ["train", "val", "train", "test"]})
    seen = seen_record(model)
    assert seen == {"train": {"images": ["a", "c"], "lesions": ["L1"]}, "val": {"images": ["b"], "lesions": ["L2"]}}
    # Another folder: a is the same photo, e another photo of lesion L1, f a photo of L2, g and h new.
    rows = pd.DataFrame({"image": ["a", "e", "f", "g", "h"], "lesion_id": ["L1", "L1", "L2", "", "L9"]})
    assert seen_rows(rows, seen, "test", by_lesion=True).tolist() == [True, True, True, False, False]
    assert seen_rows(rows, seen, "test", by_lesion=False).tolist() == [True, False, False, False, False]
    # Validation photos may be scored as validation; training photos may not.
    assert seen_rows(rows, seen, "val", by_lesion=True).tolist() == [True, True, False, False, False]
    assert not seen_rows(rows, seen, "train", by_lesion=True).any()


def test_a_saved_model_that_met_a_lesion_we_test_on_may_not_start_or_join_a_run(prepared32):
    """Our lesion-grouped folder keeps each lesion in one split, but a model trained on another split may have met
    another photo of one of our test lesions: as good as training on that test photo, so start_from refuses it."""
    from skinlesion.runs import check_held_out

    ours = load_prepared(prepared32)
    test = ours.split("test")
    lesion = test[test["lesion_id"] != ""].iloc[0]
    # A record of our own training split passes; the same plus another photo of one of our test lesions does not.
    record = seen_record(ours.table)
    check_held_out(Path("own.pt"), {"seen": record}, ours)
    record["train"]["lesions"].append(lesion["lesion_id"])
    with pytest.raises(ValueError, match=f"was trained on 1 of our validation/test images or their lesions "
                                         f"\\(e.g. {lesion['image']}\\)"):
        check_held_out(Path("other.pt"), {"seen": record}, ours)
    # A record with pixel hashes at our input size: our own passes; one test photo copied into training under another
    # name does not (a record taken at another size is not compared by pixels).
    hashes, ours_in = photo_hashes(prepared32), {"size": ours.size, "policy": ours.policy}
    check_held_out(Path("own.pt"), {"seen": seen_record(ours.table, hashes), **ours_in}, ours)
    copied = ours.table.copy()
    photo = test[test["lesion_id"] == ""].iloc[0] if (test["lesion_id"] == "").any() else test.iloc[0]
    copied.loc[photo.name, ["image", "lesion_id", "split"]] = ["renamed_copy", "", "train"]
    hashes["renamed_copy"] = hashes[photo["image"]]
    with pytest.raises(ValueError, match=f"trained on 1 of our validation/test images \\(by name or pixels\\) or "
                                         f"their lesions \\(e.g. {photo['image']}\\)"):
        check_held_out(Path("copy.pt"), {"seen": seen_record(copied, hashes), **ours_in}, ours)
    check_held_out(Path("copy.pt"), {"seen": seen_record(copied, hashes), "size": 64, "policy": ours.policy}, ours)
    # In the paper's protocol lesions are shared across splits by design; only the same photo counts there.
    check_held_out(Path("other.pt"), {"seen": record}, dataclasses.replace(ours, protocol="paper"))
    with pytest.raises(ValueError, match="does not record its training data"):
        check_held_out(Path("bare.pt"), {}, ours)


def unrecorded_copy(model, out):
    """Copy an exported model without its record of seen photos, as files exported before 2026-12-01 are."""
    import onnx

    copy = onnx.load(str(model))
    kept = [p for p in copy.metadata_props if p.key != SEEN_KEY]
    del copy.metadata_props[:]
    copy.metadata_props.extend(kept)
    onnx.save(copy, str(out))
    return out


def refolded(prepared32, out, manifest: pd.DataFrame, protocol: str = "lesion"):
    """Copy a prepared folder (its pixel cache linked) with another manifest, as if its split had been dealt anew."""
    out.mkdir()
    (out / "cache").symlink_to(prepared32 / "cache")
    meta = json.loads((prepared32 / "prepared.json").read_text())
    meta["config"]["split"]["protocol"] = protocol
    (out / "prepared.json").write_text(json.dumps(meta))
    manifest.to_csv(out / "splits.csv", index=False)
    return out


def test_evaluate_leaves_out_what_the_model_trained_on_in_another_folder(tiny_onnx, prepared32, tmp_path,
                                                                         monkeypatch):
    monkeypatch.chdir(tmp_path)
    manifest = read_manifest(prepared32)
    # export wrote the training folder's record, with the pixel cache's hashes of its photos
    assert Predictor(tiny_onnx).seen == seen_record(manifest, photo_hashes(prepared32))
    own = CliRunner().invoke(main, ["evaluate", str(tiny_onnx), "--data", str(prepared32), "--split", "test"])
    assert own.exit_code == 0, own.output
    test = manifest[manifest["split"] == "test"]
    assert f"checked: none of the {len(test)} test photos" in own.output

    # Dealt anew: 30 training and 20 validation photos land in test; one test photo shares a training lesion.
    moved = pd.concat([manifest[manifest["split"] == "train"].head(30), manifest[manifest["split"] == "val"].head(20)])
    other = manifest.copy()
    other.loc[moved.index, "split"] = "test"
    trained_lesion = manifest.loc[(manifest["split"] == "train") & (manifest["lesion_id"] != ""), "lesion_id"].iloc[-1]
    other.loc[test.index[0], "lesion_id"] = trained_lesion
    folder = refolded(prepared32, tmp_path / "dealt-anew", other)
    for model in (tiny_onnx, tiny_onnx.parent):  # the exported file's record, and the run's training folder
        result = CliRunner().invoke(main, ["evaluate", str(model), "--data", str(folder), "--split", "test",
                                           "--out", str(tmp_path / "report")])
        assert result.exit_code == 0, result.output
        assert f"left out 51 of the {len(test) + 50} test photos" in result.output
        metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
        assert metrics["images"] == len(test) - 1 and metrics["seen_check"].startswith("left out 51")
        scored = pd.read_csv(tmp_path / "report" / "truth.csv")["image"]
        assert not scored.isin(moved["image"]).any() and test["image"].iloc[0] not in set(scored)

    # The paper's protocol shares lesions across splits on purpose: only the same photos are left out there.
    paper = refolded(prepared32, tmp_path / "paper", other, protocol="paper")
    result = CliRunner().invoke(main, ["evaluate", str(tiny_onnx), "--data", str(paper), "--split", "test",
                                       "--out", str(tmp_path / "paper-report")])
    assert result.exit_code == 0 and f"left out 50 of the {len(test) + 50}" in result.output


def test_evaluate_leaves_out_a_training_photo_under_another_name_by_its_pixels(tiny_onnx, prepared32, tmp_path):
    """The user's full ISIC set may hold a photo of the model's training split under another id (a re-upload):
    neither its name nor a lesion id gives it away, its pixels do."""
    manifest = read_manifest(prepared32)
    test = manifest[manifest["split"] == "test"]
    copied = manifest[(manifest["split"] == "train") & (manifest["lesion_id"] == "")].iloc[0]
    other = manifest.copy()
    other.loc[copied.name, ["image", "split"]] = ["ISIC_9999999", "test"]
    folder = refolded(prepared32, tmp_path / "renamed", other)
    (folder / "cache").unlink()  # the cache's index names the photo anew too; its pixels stay the same
    (folder / "cache").mkdir()
    for path in (prepared32 / "cache").iterdir():
        (folder / "cache" / path.name).symlink_to(path)
    index_csv = next((prepared32 / "cache").glob("pixels-*.csv"))
    index = pd.read_csv(index_csv, dtype=str, keep_default_na=False)
    index["image"] = index["image"].replace(copied["image"], "ISIC_9999999")
    (folder / "cache" / index_csv.name).unlink()
    index.to_csv(folder / "cache" / index_csv.name, index=False)
    result = CliRunner().invoke(main, ["evaluate", str(tiny_onnx), "--data", str(folder), "--split", "test",
                                       "--out", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    assert f"left out 1 of the {len(test) + 1} test photos ({copied['label']} 1; 1 of them known by " \
           f"near-identical pixels alone)" in result.output
    assert "ISIC_9999999" not in set(pd.read_csv(tmp_path / "report" / "truth.csv")["image"])
    # The paper's protocol shares a lesion's photos across splits on purpose: pixels are not compared there.
    paper = refolded(prepared32, tmp_path / "paper", other, protocol="paper")
    (paper / "cache").unlink()
    (paper / "cache").symlink_to(folder / "cache")
    result = CliRunner().invoke(main, ["evaluate", str(tiny_onnx), "--data", str(paper), "--split", "test",
                                       "--out", str(tmp_path / "paper-report")])
    assert result.exit_code == 0 and f"checked: none of the {len(test) + 1} test photos" in result.output


def test_a_split_made_only_of_seen_photos_is_refused_and_an_unrecorded_model_is_flagged(tiny_onnx, prepared32,
                                                                                        tmp_path):
    import torch

    manifest = read_manifest(prepared32)
    only_seen = manifest[manifest["split"] != "test"].assign(split=lambda t: t["split"].replace("train", "test"))
    folder = refolded(prepared32, tmp_path / "only-seen", only_seen)
    result = CliRunner().invoke(main, ["evaluate", str(tiny_onnx), "--data", str(folder), "--split", "test",
                                       "--out", str(tmp_path / "r")])
    assert result.exit_code == 1 and "met every photo of its test split" in result.output
    assert "Traceback" not in result.output

    old = unrecorded_copy(tiny_onnx, tmp_path / "old.onnx")
    assert "--splits-from" not in write_model_card(old, tmp_path / "old.md").read_text()
    assert "--splits-from model.onnx" in write_model_card(tiny_onnx, tmp_path / "tiny.md").read_text()
    result = CliRunner().invoke(main, ["evaluate", str(old), "--data", str(prepared32), "--split",
                                       "test", "--out", str(tmp_path / "old")])
    assert result.exit_code == 0 and "not checked: the model records no training photos (a file exported" in \
        result.output
    run = torch.load(tiny_onnx.parent / "model.pt", weights_only=False)
    torch.save({**run, "prepared": str(tmp_path / "moved-away")}, tmp_path / "moved.pt")
    result = CliRunner().invoke(main, ["evaluate", str(tmp_path / "moved.pt"), "--data", str(prepared32), "--split",
                                       "test", "--out", str(tmp_path / "moved")])
    assert result.exit_code == 0 and f"its training folder {tmp_path / 'moved-away'} is not found" in result.output


def test_a_damaged_record_stops_the_predictor_with_a_message(tiny_onnx, tmp_path):
    import onnx

    model = onnx.load(str(tiny_onnx))
    for prop in model.metadata_props:
        if prop.key == SEEN_KEY:
            record = json.loads(prop.value)
            record["train"]["images"].append("ISIC_9999999")  # one more photo than hashes
            prop.value = json.dumps(record)
    onnx.save(model, str(tmp_path / "damaged.onnx"))
    with pytest.raises(ValueError, match="damaged.onnx: its record of the photos it met .* is damaged"):
        Predictor(tmp_path / "damaged.onnx")
    result = CliRunner().invoke(main, ["predict", str(tmp_path), "--model", str(tmp_path / "damaged.onnx")])
    assert result.exit_code == 1 and "export the model again" in result.output


def test_export_records_the_training_folder_not_the_folder_it_checks_on(tiny_onnx, prepared32, tmp_path):
    manifest = read_manifest(prepared32)
    dealt_anew = manifest.copy()
    first_test = dealt_anew.index[dealt_anew["split"] == "test"][0]
    dealt_anew.loc[dealt_anew["split"] == "train", "split"] = "test"  # every training photo now looks new there
    dealt_anew.loc[first_test, "split"] = "train"
    other = refolded(prepared32, tmp_path / "other", dealt_anew)
    result = CliRunner().invoke(main, ["export", str(tiny_onnx.parent), "--out", str(tmp_path / "m.onnx"),
                                       "--data", str(other)])
    assert result.exit_code == 0, result.output
    assert f"recorded the photos it was trained and validated on from {prepared32}" in result.output
    assert Predictor(tmp_path / "m.onnx").seen == Predictor(tiny_onnx).seen


def test_an_ensemble_records_what_its_members_trained_on_in_other_folders(tiny_onnx, prepared32, tmp_path):
    manifest = read_manifest(prepared32)
    left_unused = manifest.index[manifest["split"] == "train"][:25]
    thinned = manifest.copy()
    thinned.loc[left_unused, "split"] = "unused"  # a folder for the ensemble in which 25 training photos are unused
    other = refolded(prepared32, tmp_path / "other", thinned)
    made = CliRunner().invoke(main, ["ensemble", str(tiny_onnx.parent), "--views", "2", "--data", str(other),
                                     "--out", str(tmp_path / "ens")])
    assert made.exit_code == 0, made.output
    result = CliRunner().invoke(main, ["export", str(tmp_path / "ens"), "--out", str(tmp_path / "ens.onnx")])
    assert result.exit_code == 0, result.output
    assert f"trained and validated on from {other}, {prepared32.resolve()}" in result.output
    # The member's training photos are all recorded, those the ensemble's folder leaves unused included.
    assert Predictor(tmp_path / "ens.onnx").seen == Predictor(tiny_onnx).seen


def test_predict_says_how_many_photos_the_model_trained_on(tiny_onnx, prepared32, shared_data, tmp_path):
    manifest = read_manifest(prepared32)
    images = {split: manifest[manifest["split"] == split]["image"] for split in ("train", "val", "test")}
    names = [*images["train"].head(2), images["val"].iloc[0], images["test"].iloc[0]]
    files = [str(shared_data / IMAGE_DIR / f"{name}.jpg") for name in names]
    renamed = tmp_path / "IMG_0001.jpg"  # a training photo under a camera's name: found by its pixels
    renamed.write_bytes((shared_data / IMAGE_DIR / f"{images['train'].iloc[2]}.jpg").read_bytes())
    result = CliRunner().invoke(main, ["predict", *files, str(renamed), "--model", str(tiny_onnx)])
    assert result.exit_code == 0, result.output
    assert "note: the model trained on 3 and validated on 1 of these 5 photos" in result.output
    unseen = CliRunner().invoke(main, ["predict", files[-1], "--model", str(tiny_onnx)])
    assert unseen.exit_code == 0 and "the model trained on" not in unseen.output


def test_the_bundled_file_knows_its_photos_by_their_pixels(shared_data):
    from skinlesion.imaging import model_input_and_hash, open_rgb

    predictor = Predictor()
    seen = predictor.seen_photos
    assert len(seen.hashes) == len(seen.by_name) == sum(len(predictor.seen[s]["images"]) for s in ("train", "val"))

    def split_of_renamed(image):
        photo = open_rgb(shared_data / IMAGE_DIR / f"{image}.jpg", draft_size=predictor.size)
        return seen.split_of("renamed", model_input_and_hash(photo, predictor.size, predictor.policy)[1])

    truth = pd.read_csv(shared_data / "ISIC_2019_Training_GroundTruth.csv", usecols=["image"])["image"]
    new = truth[~truth.isin(list(seen.by_name))].head(20)  # test photos: neither they nor their lesions were met
    assert split_of_renamed(predictor.seen["train"]["images"][0]) == "train"
    assert split_of_renamed(predictor.seen["val"]["images"][-1]) == "val"
    assert [split_of_renamed(image) for image in new] == [None] * 20


def test_the_bundled_model_lends_the_split_on_its_card(shared_data, tmp_path):
    from skinlesion.card import read_card
    from skinlesion.predict import BUNDLED_MODEL

    seen, card = Predictor().seen, read_card(BUNDLED_MODEL)
    card_text = BUNDLED_MODEL.with_name("MODEL_CARD.md").read_text()  # it tells how to check its test figures
    assert f"--size {card['size']} --resize {card['policy']} --splits-from model.onnx" in card_text
    assert f"{len(seen['train']['images']):,} training and {len(seen['val']['images']):,} validation" in card_text
    assert "near-duplicate hash of each of those photos" in card_text
    assert not set(seen["train"]["images"]) & set(seen["val"]["images"])
    assert not set(seen["train"]["lesions"]) & set(seen["val"]["lesions"])
    result = CliRunner().invoke(main, ["prepare", "--data", str(shared_data), "--out", str(tmp_path / "p"), "--balance",
                                       "all", "--size", "16", "--splits-from", str(BUNDLED_MODEL),
                                       "--no-merge-near-duplicates"])  # else 19 test photos join a seen group
    assert result.exit_code == 0, result.output
    prepared = load_prepared(tmp_path / "p")
    for split in ("train", "val", "test"):  # photos per class and split as the card records them
        counts = prepared.split(split)["label"].value_counts()
        assert {c: int(counts.get(c, 0)) for c in prepared.classes} == card["data"][split], split


def test_prepare_from_a_model_tests_it_on_every_photo_and_lesion_it_never_met(tiny_onnx, prepared32, layout40,
                                                                                tmp_path):

    model = read_manifest(prepared32).set_index("image")
    other = layout40 / "ISIC_2019_Training_Metadata.csv"  # one unseen photo joins a lesion the model trained on
    meta = pd.read_csv(other, keep_default_na=False)
    truth = pd.read_csv(layout40 / "ISIC_2019_Training_GroundTruth.csv").set_index("image")
    met = model.index[model["split"].isin(["train", "val"])]
    unseen = meta.index[~meta["image"].isin(met) & (truth.loc[meta["image"], "MEL"] == 1).to_numpy()]
    trained_lesion = model.loc[(model["split"] == "train") & (model["lesion_id"] != ""), "lesion_id"].iloc[0]
    meta.loc[unseen[0], "lesion_id"] = trained_lesion
    # A training photo the model met under its own name, here only as a copy named anew (no lesion id): its pixels
    # give it away.
    renamed = meta.index[meta["image"].isin(model.index[model["split"] == "train"]) & (meta["lesion_id"] == "")][0]
    original = meta.loc[renamed, "image"]
    (layout40 / IMAGE_DIR / f"{original}.jpg").rename(layout40 / IMAGE_DIR / "ISIC_9999999.jpg")
    meta.loc[renamed, "image"] = "ISIC_9999999"
    truth = truth.rename(index={original: "ISIC_9999999"})
    truth.to_csv(layout40 / "ISIC_2019_Training_GroundTruth.csv")
    meta.to_csv(other, index=False)
    result = CliRunner().invoke(main, ["prepare", "--data", str(layout40), "--out", str(tmp_path / "p"), "--size", "32",
                                       "--balance", "paper", "--splits-from", str(tiny_onnx)])
    assert result.exit_code == 0, result.output
    table = load_prepared(tmp_path / "p").table.set_index("image")
    recorded = model["split"].reindex(table.index)
    kept = table["label"].isin(["MEL", "NV", "BCC", "AK", "BKL", "SCC"])  # the paper's classes, as the model's
    as_recorded = kept & recorded.isin(["train", "val"])
    assert as_recorded.sum() > 20 and (table.loc[as_recorded, "split"] == recorded[as_recorded]).all()
    assert table.loc[meta.loc[unseen[0], "image"], "split"] == "unused"
    assert table.loc["ISIC_9999999", "split"] == "unused"
    assert (table.loc[~kept, "split"] == "unused").all()
    assert {"train", "val", "test"} <= set(table["split"])
    assert not table.index[table["split"] == "test"].isin(met).any()
    evaluated = CliRunner().invoke(main, ["evaluate", str(tiny_onnx), "--data", str(tmp_path / "p"), "--split", "test",
                                          "--out", str(tmp_path / "r")])
    assert evaluated.exit_code == 0 and "checked: none of the" in evaluated.output

    old = unrecorded_copy(tiny_onnx, tmp_path / "old.onnx")  # a file without the record cannot lend its split
    refused = CliRunner().invoke(main, ["prepare", "--data", str(layout40), "--out", str(tmp_path / "q"), "--size",
                                        "32", "--balance", "paper", "--splits-from", str(old)])
    assert refused.exit_code == 1 and "records no training photos" in refused.output
