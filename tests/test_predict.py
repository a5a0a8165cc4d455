import base64
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from skinlesion.classes import BY_CODE
from skinlesion.cli import main
from skinlesion.isic import GROUND_TRUTH_CSV, IMAGE_DIR
from skinlesion.predict import Predictor


def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def image_folder(shared_data, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for path in sorted((shared_data / IMAGE_DIR).glob("ISIC_00244*.jpg"))[:5]:
        shutil.copy(path, folder)
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return folder


def test_predict_folder_writes_an_isic_submission_and_reports_skips(tiny_onnx, image_folder, tmp_path):
    out = tmp_path / "preds.csv"
    result = CliRunner().invoke(main, ["predict", str(image_folder), "--model", str(tiny_onnx), "--output", str(out)])
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(out)
    assert list(frame.columns) == ["image", "MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC"]
    assert len(frame) == 5 and (frame[["DF", "VASC"]] == 0).all().all()
    assert frame.iloc[:, 1:].sum(axis=1).round(4).eq(1).all()
    assert "skipped" in result.output and "notes.txt: not an image file" in result.output
    assert "broken.jpg: not a readable image" in result.output
    assert "would not assess" not in result.output


def test_predict_keeps_a_row_for_a_picture_the_web_app_refuses_and_says_so(tiny_onnx, image_folder, tmp_path):
    Image.open(sorted(image_folder.glob("ISIC_*.jpg"))[0]).convert("L").save(image_folder / "grey.png")
    out = tmp_path / "preds.csv"
    submission = CliRunner().invoke(main, ["predict", str(image_folder), "--model", str(tiny_onnx), "--output",
                                           str(out)])
    assert submission.exit_code == 0, submission.output
    assert len(pd.read_csv(out)) == 6  # a submission needs a row for every photo
    assert "the web app would not assess 1 of these 6 photos as skin photos (grey)" in submission.output
    table = CliRunner().invoke(main, ["predict", str(image_folder / "grey.png"), "--model", str(tiny_onnx)])
    assert table.exit_code == 0 and "cannot assess: the image does not look like a photo of skin" in table.output


def test_predict_writes_the_web_apps_answer_for_each_photo(tiny_onnx, image_folder, prepared32, tmp_path):
    from skinlesion.prepare import read_manifest
    from skinlesion.web import create_app

    manifest = read_manifest(prepared32)  # one photo named like one the model trained on: flagged, as on the page
    trained = manifest[manifest["split"] == "train"]["image"].iloc[0]
    shutil.copy(sorted(image_folder.glob("ISIC_*.jpg"))[0], image_folder / f"{trained}.jpg")
    Image.open(sorted(image_folder.glob("ISIC_*.jpg"))[1]).convert("L").save(image_folder / "grey.jpg")  # refused
    out = tmp_path / "answers.csv"
    args = ["predict", str(image_folder), "--model", str(tiny_onnx), "--output", str(out), "--format", "assessments"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(out, keep_default_na=False)
    assert list(frame.columns) == ["image", "label", "probability", "risk", "uncertain", "refer", "concern",
                                   "seen_by_model", "cannot_assess", "MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC",
                                   "SCC"]
    assert len(frame) == 7 and frame.set_index("image").loc[trained, "seen_by_model"] == "train"
    assert (frame["cannot_assess"] != "").tolist() == (frame["image"] == "grey").tolist()
    client = create_app({"TESTING": True, "MODEL": str(tiny_onnx)}).test_client()
    for row in frame.to_dict("records"):
        photo = (image_folder / f"{row['image']}.jpg").read_bytes()
        response = client.post("/api/v1/predict", data={"image": (io.BytesIO(photo), f"{row['image']}.jpg")},
                               content_type="multipart/form-data")
        api = response.json
        if row["cannot_assess"]:  # the API's refusal, and nothing the page would not show
            assert response.status_code == 422 and row["cannot_assess"] in api["message"]
            assert row["label"] == row["probability"] == row["MEL"] == ""
            continue
        assert (row["label"], row["risk"], row["seen_by_model"] or None) == (api["label"], api["risk"],
                                                                              api["seen_by_model"])
        assert (str(row["uncertain"]), str(row["refer"])) == (str(api["uncertain"]), str(api["refer"]))
        assert float(row["probability"]) == pytest.approx(api["probability"], abs=1e-6)  # text: a column has blanks
        assert float(row["concern"]) == pytest.approx(api["concern"], abs=1e-6)
        assert [float(row[c]) for c in api["probabilities"]] == pytest.approx(list(api["probabilities"].values()),
                                                                              abs=1e-6)


def test_predict_says_which_folder_holds_no_photos_and_where_they_may_be(tiny_onnx, image_folder, tmp_path):
    layout = tmp_path / "layout"  # the official layout's top folder: photos one level down
    (layout / "ISIC_2019_Training_Input").mkdir(parents=True)
    (layout / "empty").mkdir()
    result = CliRunner().invoke(main, ["predict", str(layout), str(layout / "empty"), str(image_folder),
                                       "--model", str(tiny_onnx)])
    assert result.exit_code == 0, result.output  # the photos given are still answered
    assert f"skipped {layout}: no image files in this folder; it has folders (ISIC_2019_Training_Input, empty): " \
        f"pass the one that holds the photos" in result.output
    assert f"skipped {layout / 'empty'}: no image files in this folder\n" in result.output
    assert f"skipped {image_folder}:" not in result.output and result.output.count("ISIC_00244") == 5
    alone = CliRunner().invoke(main, ["predict", str(layout / "empty"), "--model", str(tiny_onnx)])
    assert alone.exit_code == 1 and "Error: no readable image among 1 input(s)" in alone.output


def test_predict_reads_the_formats_dermatoscope_software_exports(tiny_onnx, image_folder, tmp_path):
    photo = Image.open(sorted(image_folder.glob("ISIC_*.jpg"))[0])
    folder = tmp_path / "exports"
    folder.mkdir()
    for suffix in ("tif", "bmp", "webp", "PNG", "heic", "gif"):
        options = {"webp": {"lossless": True}, "heic": {"quality": 95}}.get(suffix, {})
        photo.save(folder / f"lesion-{suffix}.{suffix}", **options)
    out = tmp_path / "preds.csv"
    result = CliRunner().invoke(main, ["predict", str(folder), "--model", str(tiny_onnx), "--output", str(out)])
    assert result.exit_code == 0 and "skipped" not in result.output, result.output
    frame = pd.read_csv(out).set_index("image")
    assert sorted(frame.index) == ["lesion-PNG", "lesion-bmp", "lesion-gif", "lesion-heic", "lesion-tif", "lesion-webp"]
    assert frame.sum(axis=1).round(4).eq(1).all()
    # Lossless copies answer as one photo; HEIC's lossy coding moves the probabilities a little, not the answer.
    lossless = frame.loc[["lesion-PNG", "lesion-bmp", "lesion-tif", "lesion-webp"]]
    assert (lossless.max() - lossless.min()).max() < 1e-5
    assert frame.loc["lesion-heic"].idxmax() == frame.loc["lesion-PNG"].idxmax()
    assert (frame.loc["lesion-heic"] - frame.loc["lesion-PNG"]).abs().max() < 0.05


def test_predict_writes_isic_2018_classes_that_the_official_scorer_accepts(tiny_onnx, small_layout, tmp_path):
    folder, runs = small_layout / IMAGE_DIR, {}
    for name in ("isic2019", "isic2018", "isic2019-unk"):
        runs[name] = tmp_path / f"{name}.csv"
        args = ["predict", str(folder), "--model", str(tiny_onnx), "--output", str(runs[name]), "--format", name]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
    new, old = pd.read_csv(runs["isic2018"]), pd.read_csv(runs["isic2019"])
    assert list(new.columns) == ["image", "MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
    assert new.iloc[:, 1:].sum(axis=1).round(4).eq(1).all()
    # AK and SCC merge into AKIEC at half their sum: seven classes stay equally likely a priori.
    expected = old.assign(AKIEC=(old["AK"] + old["SCC"]) / 2)[new.columns[1:]]
    assert new.iloc[:, 1:].to_numpy() == pytest.approx(expected.div(expected.sum(axis=1), axis=0).to_numpy(), abs=1e-5)
    truth = pd.read_csv(small_layout / GROUND_TRUTH_CSV).set_index("image")
    truth["AKIEC"] = truth["AK"] + truth["SCC"]
    truth[["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]].to_csv(tmp_path / "truth2018.csv")
    out = subprocess.run(["isic-challenge-scoring", "-o", "json", "classification", str(tmp_path / "truth2018.csv"),
                          str(runs["isic2018"])], capture_output=True, text=True, check=True).stdout
    assert 0 <= json.loads(out)["aggregate"]["balanced_accuracy"] <= 1
    # The ISIC 2019 test set's truth has a ninth class, UNK, which the model never gives.
    unk = pd.read_csv(runs["isic2019-unk"])
    assert list(unk.columns) == [*old.columns, "UNK"] and (unk["UNK"] == 0).all()
    assert unk[old.columns].equals(old)
    truth2019 = pd.read_csv(small_layout / GROUND_TRUTH_CSV)
    truth2019.loc[0, truth2019.columns[1:]] = 0.0
    truth2019.loc[0, "UNK"] = 1.0  # one photo of an unknown kind, so that the scorer has a UNK to count
    truth2019.to_csv(tmp_path / "truth2019.csv", index=False)
    out = subprocess.run(["isic-challenge-scoring", "-o", "json", "classification", str(tmp_path / "truth2019.csv"),
                          str(runs["isic2019-unk"])], capture_output=True, text=True, check=True).stdout
    recall = json.loads(out)["per_category"]["sensitivity"]
    assert list(recall) == [*old.columns[1:], "UNK"] and recall["UNK"] == 0.0


def test_predict_without_output_prints_a_table(tiny_onnx, image_folder):
    photo = sorted(image_folder.glob("ISIC_*.jpg"))[0]
    result = subprocess.run([sys.executable, "-m", "skinlesion", "predict", str(photo), "--model", str(tiny_onnx)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert photo.stem in result.stdout and "%" in result.stdout
    assert "not a diagnosis" in result.stderr
    # Under 50% for its top class the answer is flagged, as on the web page (the tiny network is near chance).
    top = float(result.stdout.split("%")[0].split()[-1]) / 100
    assert (top < 0.5) == result.stdout.rstrip().endswith("uncertain")
    # A benign answer whose cancers and pre-cancers together reach the model's referral threshold says so.
    predictor = Predictor(tiny_onnx)
    probabilities = predictor.predict_files([photo])[0][0].probabilities
    label = max(probabilities, key=probabilities.get)
    expected = BY_CODE[label].risk == "benign" and predictor.refers(probabilities)[1]
    assert ("have it checked: cancer not ruled out" in result.stdout) == expected


def test_predict_names_an_output_it_cannot_write_before_reading_any_photo(tiny_onnx, image_folder, tmp_path):
    for output, problem in ((tmp_path / "no such folder" / "preds.csv", "No such file or directory"),
                            (tmp_path, "Is a directory")):
        result = CliRunner().invoke(main, ["predict", str(image_folder), "--model", str(tiny_onnx), "--output",
                                           str(output)])
        assert result.exit_code == 1 and f"{output}: {problem}" in result.output and "Traceback" not in result.output
        assert "skipped" not in result.output  # it stopped before reading the folder, whose bad files it reports
    result = CliRunner().invoke(main, ["predict", str(tmp_path / "nothing here"), "--model", str(tiny_onnx),
                                       "--output", str(tmp_path / "preds.csv")])
    assert result.exit_code == 1 and not (tmp_path / "preds.csv").exists()  # the check left no empty file
    assert "nothing here: file not found" in result.output and "no readable image among 1 input(s)" in result.output


@pytest.mark.parametrize("batch_size", ["0", "-3"])
def test_predict_refuses_a_batch_size_below_one_before_reading_a_photo(image_folder, batch_size):
    result = CliRunner().invoke(main, ["predict", str(image_folder), "--batch-size", batch_size])
    assert result.exit_code == 2 and "Invalid value for '--batch-size'" in result.output, result.output


def test_predict_writes_the_web_pages_heatmap_of_each_photo_it_assesses(tiny_onnx, image_folder, tmp_path):
    Image.open(sorted(image_folder.glob("ISIC_*.jpg"))[0]).convert("L").save(image_folder / "grey.png")
    heatmaps = tmp_path / "heatmaps"
    result = CliRunner().invoke(main, ["predict", str(image_folder), "--model", str(tiny_onnx), "--heatmaps",
                                       str(heatmaps), "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    photos = sorted(image_folder.glob("ISIC_*.jpg"))
    assert sorted(path.name for path in heatmaps.iterdir()) == [f"{p.stem}.heatmap.png" for p in photos]
    assert "wrote 5 heatmaps" in result.output and "none for the 1 photos the web app would not assess" in result.output
    predictor = Predictor(tiny_onnx)
    for photo in photos:  # the same picture as the page's, though the photos ran in batches here
        page = Image.open(io.BytesIO(base64.b64decode(predictor.assess(photo, heatmap=True).heatmap_png)))
        written = Image.open(heatmaps / f"{photo.stem}.heatmap.png")
        assert written.size == page.size
        assert np.abs(np.asarray(written, dtype=int) - np.asarray(page, dtype=int)).max() <= 2


def test_predict_refuses_heatmaps_that_would_overwrite_each_other(tiny_onnx, image_folder, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(sorted(image_folder.glob("ISIC_*.jpg"))[0], other)
    heatmaps = tmp_path / "heatmaps"
    result = CliRunner().invoke(main, ["predict", str(image_folder), str(other), "--model", str(tiny_onnx),
                                       "--heatmaps", str(heatmaps)])
    assert result.exit_code == 1 and "occur more than once among the inputs" in result.output
    assert not heatmaps.exists()
    repeated = [sorted(image_folder.glob("ISIC_*.jpg"))[0], *other.iterdir()]  # the library refuses them too
    with pytest.raises(ValueError, match="occur more than once"):
        Predictor(tiny_onnx).predict_files(repeated, heatmap_dir=heatmaps)
    assert not heatmaps.exists()


def test_predict_refuses_a_format_without_an_output_file(tiny_onnx, image_folder):
    result = CliRunner().invoke(main, ["predict", str(image_folder), "--model", str(tiny_onnx), "--format", "isic2018"])
    assert result.exit_code == 2 and "--format isic2018" in result.output and "--output" in result.output


def test_assess_gives_probabilities_risk_and_a_heatmap(tiny_onnx, image_folder):
    predictor = Predictor(tiny_onnx)
    photo = sorted(image_folder.glob("ISIC_*.jpg"))[0]
    result = predictor.assess(photo.read_bytes(), heatmap=True)
    assert result.assessable and result.label in predictor.classes
    assert set(result.probabilities) == {"MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC"}
    assert sum(result.probabilities.values()) == pytest.approx(1, abs=1e-4)
    assert result.risk in {"malignant", "pre-malignant", "benign"}
    heatmap = Image.open(io.BytesIO(base64.b64decode(result.heatmap_png)))
    width, height = Image.open(photo).size  # the model squashed the photo to a square; the heatmap has its shape
    assert width != height and heatmap.format == "PNG" and heatmap.size == (256, round(256 * height / width))


def test_an_answer_refers_by_the_cards_threshold_or_else_by_its_top_class(tiny_onnx, image_folder):
    predictor = Predictor(tiny_onnx)
    rule = predictor.referral  # fitted on validation at export (referral.py)
    assert rule["classes"] == ["MEL", "BCC", "AK", "SCC"] and 0 < rule["threshold"] <= 1
    photo = sorted(image_folder.glob("ISIC_*.jpg"))[0]
    result = predictor.assess(photo.read_bytes())
    assert result.concern == pytest.approx(sum(result.probabilities[c] for c in rule["classes"]))
    assert result.refer == (result.concern >= rule["threshold"] or result.risk != "benign")
    for threshold in (0.0, 1.01):  # 0: every answer refers; 1.01: only a cancer or pre-cancer as the top class
        predictor.referral = {**rule, "threshold": threshold}
        result = predictor.assess(photo.read_bytes())
        assert result.refer is (threshold == 0.0 or result.risk != "benign")
    predictor.referral = None  # a file exported before the rule: the top class's risk group decides
    result = predictor.assess(photo.read_bytes())
    assert result.refer == (result.risk != "benign")
    assert predictor.refers({"NV": 0.6, "MEL": 0.3, "BCC": 0.1}) == (pytest.approx(0.4), False)
    assert predictor.refers({"NV": 0.4, "MEL": 0.35, "BKL": 0.25}) == (pytest.approx(0.35), False)
    predictor.referral = {**rule, "threshold": 0.39}
    assert predictor.refers({"NV": 0.6, "MEL": 0.3, "BCC": 0.1})[1] and predictor.refers({"MEL": 0.2, "NV": 0.1})[1]


@pytest.mark.parametrize("orientation, shape", [(1, (256, 192)), (6, (192, 256))])  # 6: the camera was turned a quarter
@pytest.mark.parametrize("fmt", ["JPEG", "HEIF"])  # HEIF: an iPhone's photo, its turn stored as the file's rotation
def test_heatmap_has_the_photos_own_shape_though_a_small_model_decodes_it_rounded(tiny_onnx, shared_data, orientation,
                                                                                 shape, fmt):
    photo = Image.open(shared_data / IMAGE_DIR / "ISIC_0024463.jpg")  # 200x150; a 32 px model decodes it at 50x38
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    photo.save(buffer, format=fmt, quality=95, exif=exif.tobytes())  # bytes: pillow-heif stores the turn from them
    result = Predictor(tiny_onnx).assess(buffer.getvalue(), heatmap=True)
    assert photo.size == (200, 150) and Image.open(io.BytesIO(base64.b64decode(result.heatmap_png))).size == shape


@pytest.mark.parametrize("image, reason", [
    (Image.new("RGB", (300, 300), (200, 150, 130)), "almost uniform"),
    (Image.new("RGB", (40, 40), (200, 150, 130)), "too small"),
    (Image.new("RGB", (1000, 100), (200, 150, 130)), "long and thin"),
    (Image.merge("RGB", [Image.new("L", (300, 300), 20), Image.linear_gradient("L").resize((300, 300)),
                         Image.new("L", (300, 300), 200)]), "does not look like a photo of skin"),
])
def test_images_that_are_not_skin_photos_are_not_assessed(tiny_onnx, image, reason):
    result = Predictor(tiny_onnx).assess(encode_png(image))
    assert not result.assessable and reason in result.reason and result.label is None


def test_real_lesion_photos_pass_the_guard(shared_data):
    from skinlesion.guard import cannot_assess
    from skinlesion.imaging import open_rgb, resize
    paths = sorted((shared_data / IMAGE_DIR).glob("ISIC_00*.jpg"))[::40][:200]
    refused = [p.name for p in paths if cannot_assess(img := open_rgb(p), resize(img, 64, "squash"))]
    assert len(refused) <= 2, refused


@pytest.mark.parametrize("name", [
    "ISIC_0024402", "ISIC_0025599", "ISIC_0026163", "ISIC_0027256",  # magenta and pink casts (VASC)
    "ISIC_0026830", "ISIC_0028461",  # lilac casts
    "ISIC_0013405_downsampled", "ISIC_0024337", "ISIC_0030676", "ISIC_0032170",  # faint lesions, little contrast
    "ISIC_0000007", "ISIC_0000046_downsampled", "ISIC_0026936",  # blue, grey, deep red: passed by the lesion's redness
])
def test_dermoscope_colour_casts_and_faint_lesions_pass_the_guard(shared_data, tiny_onnx, name):
    # Real photos of our sample that an earlier, narrower rule refused as "not skin" or "almost uniform".
    result = Predictor(tiny_onnx).assess(shared_data / IMAGE_DIR / f"{name}.jpg")
    assert result.assessable, result.reason


def test_a_grey_picture_under_a_blue_cast_is_refused_where_the_coloured_photo_passes(shared_data, tiny_onnx):
    # The same blue-lit photo: its brown lesion is redder than the skin round it; turned grey, then tinted blue like
    # it, nothing is, so colour alone (a grey picture, a sky) is still refused.
    photo = Image.open(shared_data / IMAGE_DIR / "ISIC_0000007.jpg").convert("RGB")
    grey = photo.convert("L")
    tinted = Image.merge("RGB", [grey.point(lambda v: v * 0.8), grey.point(lambda v: v * 0.9), grey])
    predictor = Predictor(tiny_onnx)
    assert predictor.assess(encode_png(photo)).assessable
    result = predictor.assess(encode_png(tinted))
    assert not result.assessable and "does not look like a photo of skin" in result.reason


def test_lesion_redness_ignores_the_colour_of_the_light(shared_data):
    from skinlesion.guard import lesion_redness
    from skinlesion.imaging import model_input, open_rgb
    pixels = model_input(open_rgb(shared_data / IMAGE_DIR / "ISIC_0024306.jpg"), 192, "squash")
    redness = lesion_redness(pixels)
    for gains in [(0.85, 0.95, 1.15), (1.08, 0.88, 1.08), (1.12, 1.0, 0.82)]:  # ring_stress's casts
        cast = (pixels * np.array(gains) * 0.85).clip(0, 255).astype(np.uint8)  # 0.85: no channel clips
        assert lesion_redness(cast) == pytest.approx(redness, abs=0.05)
    grey = np.repeat(pixels.mean(axis=2, keepdims=True), 3, axis=2).astype(np.uint8)
    assert redness > 0.2 and lesion_redness(grey) == 0.0


def test_guard_check_counts_refused_photos_and_passed_pictures(shared_data, tmp_path):
    script = Path(__file__).resolve().parents[1] / "scripts" / "guard_check.py"
    photos = tmp_path / "data" / IMAGE_DIR
    photos.mkdir(parents=True)
    for name in ("ISIC_0000006", "ISIC_0000007", "ISIC_0024306"):  # blue cast, no red spot; blue cast; plain
        shutil.copy(shared_data / IMAGE_DIR / f"{name}.jpg", photos)
    others = tmp_path / "others"
    others.mkdir()
    Image.linear_gradient("L").convert("RGB").save(others / "grey.png")
    Image.open(photos / "ISIC_0024306.jpg").save(others / "skin.png")
    result = subprocess.run([sys.executable, str(script), "--data", str(tmp_path / "data"), "--others", str(others),
                             "--casts", "blue"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("real photos refused: 1 of 3") and lines[1].split() == ["ISIC_0000006.jpg"]
    assert lines[2] == "other pictures passed, cast none: 1 of 2: skin"
    assert lines[3] == "other pictures passed, cast blue: 1 of 2: skin"
    wrong = subprocess.run([sys.executable, str(script), "--casts", "green"], capture_output=True, text=True)
    assert wrong.returncode == 2 and "unknown cast green; choose from blue, pink, warm" in wrong.stderr
    missing = subprocess.run([sys.executable, str(script), "--data", str(tmp_path)], capture_output=True, text=True)
    assert missing.returncode == 2 and f"{tmp_path / IMAGE_DIR}: no such folder" in missing.stderr
