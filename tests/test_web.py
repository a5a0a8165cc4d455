import io
import os
import tempfile

import pytest
from click.testing import CliRunner
from PIL import Image

from skinlesion.classes import CODES
from skinlesion.cli import main
from skinlesion.web import create_app, settings_from_environment, views


def post(client, data: bytes, name="photo.jpg", headers=None, **fields):
    form = {"image": (io.BytesIO(data), name), **fields}
    return client.post("/api/v1/predict", data=form, content_type="multipart/form-data", headers=headers)


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def test_pages_carry_the_disclaimer(client):
    for path in ("/", "/about"):
        page = client.get(path)
        assert page.status_code == 200
        assert b"Research tool, not a diagnosis" in page.data
    assert b"efficientnet_lite0" in client.get("/about").data
    assert b"Percentages assume all eight diagnoses are equally common" in client.get("/").data


def test_the_model_page_says_what_the_served_model_was_trained_on_and_where_it_is_weak(client, tiny_onnx):
    from skinlesion.card import read_card
    data = read_card(tiny_onnx)["data"]
    about = client.get("/about").get_data(as_text=True)
    assert f"Trained on {sum(data['train'].values()):,} of the 12,922 photos read from isic2019" in about
    assert "12,922-image sample" not in about
    # A class under 0.5 test recall on the card gets a warning that another answer does not rule it out.
    card = {**read_card(tiny_onnx), "metrics": {"test": {"recall": {"SCC": 0.367, "AK": 0.7}}}}
    lines = views.limitations(card)
    assert "Squamous cell carcinoma was recognised in only 37% of held-out lesions" in " ".join(lines)
    assert "keratosis" not in " ".join(lines)
    older = views.limitations({k: v for k, v in card.items() if k != "data"})  # exported before cards had data
    assert "12,922-image sample" in older[0]
    # The bundled card names its data, and its test recalls for AK and SCC are under 0.5.
    from skinlesion.predict import BUNDLED_MODEL
    bundled = create_app({"TESTING": True}).test_client().get("/about").get_data(as_text=True)
    assert "Actinic keratosis and squamous cell carcinoma were recognised in only 45% and 30%" in bundled
    assert all(line in bundled for line in views.limitations(read_card(BUNDLED_MODEL)))
    rule = read_card(BUNDLED_MODEL)["referral"]
    assert (f"together reach <strong>{rule['threshold']:.0%}</strong>" in bundled
            and f"it referred {rule['test']['sensitivity']:.1%} of them" in bundled)
    # Its test figures by sex, age and site; a card without them (or with the reason they were not scored) has none.
    groups = read_card(BUNDLED_MODEL)["metrics"]["test"]["subgroups"]
    assert "<h2>By patient group</h2>" in bundled and all(f"<li>{line}</li>" in bundled for line in groups)
    assert "By patient group" not in about  # the tiny model's card has no test figures
    assert views.patient_groups({"metrics": {"test": {"subgroups": "not scored: no metadata CSV"}}}) == []


def test_predict_returns_every_class_risk_and_heatmap(client, lesion_jpeg):
    response = post(client, lesion_jpeg, heatmap="1")
    assert response.status_code == 200, response.json
    body = response.json
    assert set(body["probabilities"]) == set(CODES)
    assert sum(body["probabilities"].values()) == pytest.approx(1, abs=1e-4)
    assert body["label"] in CODES and body["risk"] in {"malignant", "pre-malignant", "benign"}
    assert isinstance(body["uncertain"], bool) and body["model_version"].startswith("efficientnet_lite0")
    assert body["heatmap"].startswith("data:image/png;base64,")
    assert "not a diagnosis" in body["disclaimer"]
    assert "heatmap" not in post(client, lesion_jpeg).json
    non_benign = sum(body["probabilities"][c] for c in ("MEL", "BCC", "AK", "SCC"))
    assert body["concern"] == pytest.approx(non_benign, abs=1e-6) and isinstance(body["refer"], bool)


@pytest.mark.parametrize("threshold", [0.0, 1.01])
def test_a_benign_answer_asks_for_a_check_when_the_referral_rule_says_so(app, lesion_jpeg, threshold):
    predictor = app.extensions["predictor"]
    predictor.referral = {**predictor.referral, "threshold": threshold}  # 0: all refer; 1.01: cancer on top only
    body = post(app.test_client(), lesion_jpeg).json
    assert body["refer"] is (threshold == 0.0 or body["risk"] != "benign")
    checked = "too much to rule them out. Please have it checked by a dermatologist." in body["advice"]
    assert checked == (body["refer"] and body["risk"] == "benign")
    if body["risk"] == "benign" and not body["refer"]:
        assert "looks most like a benign lesion, but only a doctor can tell" in body["advice"]
    # The advice for a benign answer that refers, whatever the tiny model's top class here.
    result = predictor.assess(lesion_jpeg)
    result.risk, result.refer, result.concern = "benign", True, 0.31
    assert "skin cancers and pre-cancers together reach 31%" in views.advice(result)


def test_a_photo_the_model_met_is_flagged_by_its_name_or_its_pixels(client, prepared32, shared_data):
    from skinlesion.isic import IMAGE_DIR
    from skinlesion.prepare import read_manifest

    manifest = read_manifest(prepared32)
    trained, validated, tested = (manifest[manifest["split"] == split]["image"].iloc[0]
                                  for split in ("train", "val", "test"))

    def photo(image):
        return (shared_data / IMAGE_DIR / f"{image}.jpg").read_bytes()

    assert post(client, photo(tested), name=f"{tested}.JPG").json["seen_by_model"] is None
    assert post(client, photo(tested), name=f"{trained}.jpg").json["seen_by_model"] == "train"  # by its name
    # A renamed copy, enlarged and saved again as another camera's file would be: by its pixels.
    enlarged = encode(Image.open(io.BytesIO(photo(validated))).resize((600, 450)), "JPEG", quality=85)
    assert post(client, enlarged, name="IMG_0001.jpg").json["seen_by_model"] == "val"
    assert post(client, photo(trained), name="IMG_0002.jpg").json["seen_by_model"] == "train"


def test_model_health_and_openapi_routes(client):
    card = client.get("/api/v1/model").json
    assert card["card"]["classes"] == ["MEL", "NV", "BCC", "AK", "BKL", "SCC"]
    assert {c["code"]: c["risk"] for c in card["classes"]}["MEL"] == "malignant"
    assert client.get("/healthz").json["status"] == "ok"
    spec = client.get("/api/v1/openapi.json").json
    assert spec["openapi"].startswith("3.") and "/api/v1/predict" in spec["paths"]
    upload = spec["paths"]["/api/v1/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert ".heic" in upload["properties"]["image"]["description"]


def test_security_headers(client):
    headers = client.get("/").headers
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff" and headers["X-Frame-Options"] == "DENY"


@pytest.mark.parametrize("data, status, error", [
    (b"", 400, "empty_upload"),
    (b"hello, this is text", 415, "not_an_image"),
    (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 50, 415, "not_an_image"),
])
def test_bad_uploads_get_json_4xx(client, data, status, error):
    response = post(client, data)
    assert response.status_code == status and response.json["error"] == error
    assert response.json["message"]


def test_missing_field_wrong_method_and_unknown_route(client):
    response = client.post("/api/v1/predict", data={"photo": (io.BytesIO(b"x"), "a.jpg")},
                           content_type="multipart/form-data")
    assert response.status_code == 400 and "'image'" in response.json["message"]
    assert client.get("/api/v1/predict").status_code == 405
    assert client.get("/api/v1/predict").json["error"] == "method_not_allowed"
    assert client.get("/api/v1/nothing").json["error"] == "not_found"


def test_truncated_jpeg_is_415(client, lesion_jpeg):
    response = post(client, lesion_jpeg[: len(lesion_jpeg) // 2])
    assert response.status_code == 415 and "truncated" in response.json["message"]


def test_upload_over_10_mb_is_413(client):
    response = post(client, os.urandom(11 * 1024 * 1024))
    assert response.status_code == 413 and response.json["error"] == "too_large"
    assert "larger than 10 MB" in response.json["message"]


def test_the_upload_limit_comes_from_the_environment(tiny_onnx, lesion_jpeg, monkeypatch):
    monkeypatch.setenv("SKINLESION_MAX_UPLOAD_MB", "12")  # a camera's uncompressed TIFFs
    client = create_app({"TESTING": True, "MODEL": str(tiny_onnx)}).test_client()
    padded = lesion_jpeg + os.urandom(11 * 1024 * 1024)  # bytes after a JPEG's end are ignored by decoders
    assert post(client, padded).status_code == 200
    response = post(client, os.urandom(13 * 1024 * 1024))
    assert response.status_code == 413 and "larger than 12 MB" in response.json["message"]
    assert client.get("/api/v1/openapi.json").json["paths"]["/api/v1/predict"]["post"]["responses"]["413"][
        "description"] == "upload over 12 MB"


def test_decompression_bomb_is_refused(client):
    bomb = encode(Image.new("L", (12000, 12000)), "PNG")  # 144 megapixels in a few hundred kB
    assert len(bomb) < 1024 * 1024
    response = post(client, bomb, "bomb.png")
    assert response.status_code == 415 and "too many pixels" in response.json["message"]


@pytest.mark.parametrize("kind", ["png_alpha", "png_16bit", "cmyk_jpeg", "animated_gif", "palette_png", "heic"])
def test_unusual_image_modes_are_classified(client, lesion_jpeg, kind):
    photo = Image.open(io.BytesIO(lesion_jpeg))
    if kind == "png_alpha":
        data = encode(photo.convert("RGBA"), "PNG")
    elif kind == "png_16bit":
        data = encode(Image.fromarray((__import__("numpy").asarray(photo.convert("L"), dtype="uint16") * 257)), "PNG")
    elif kind == "cmyk_jpeg":
        data = encode(photo.convert("CMYK"), "JPEG")
    elif kind == "heic":  # an iPhone's photo, as a desktop browser sends it (Safari on iOS may convert it first)
        data = encode(photo, "HEIF", quality=80)
    elif kind == "animated_gif":
        data = encode(photo, "GIF", save_all=True, append_images=[photo.rotate(90)], duration=100, loop=0)
    else:
        data = encode(photo.convert("P"), "PNG")
    response = post(client, data, f"photo.{kind}")
    if kind == "png_16bit":  # grey: read fine, then judged not to be a colour skin photo
        assert response.status_code == 422 and response.json["error"] == "cannot_assess"
    else:
        assert response.status_code == 200, response.json


def test_not_a_skin_photo_gets_cannot_assess(client):
    response = post(client, encode(Image.new("RGB", (400, 300), (255, 255, 255)), "PNG"))
    assert response.status_code == 422 and response.json["message"].startswith("Cannot assess this image")


def test_rate_limit_per_client(tiny_onnx, lesion_jpeg):
    client = create_app({"MODEL": str(tiny_onnx), "RATE_LIMIT": 3}).test_client()
    codes = [post(client, lesion_jpeg).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]


@pytest.mark.parametrize("proxies, limited", [(0, [200, 200, 429, 429]), (1, [200, 200, 200, 200])])
def test_behind_a_trusted_proxy_the_rate_limit_counts_each_forwarded_client(tiny_onnx, lesion_jpeg, proxies, limited):
    # Two people behind one proxy, each sending two photos: they share the proxy's address unless it is trusted.
    client = create_app({"MODEL": str(tiny_onnx), "RATE_LIMIT": 2, "TRUSTED_PROXIES": proxies}).test_client()
    codes = [post(client, lesion_jpeg, headers={"X-Forwarded-For": person}).status_code
             for person in ("10.0.0.1", "10.0.0.2", "10.0.0.1", "10.0.0.2")]
    assert codes == limited


def test_uploads_are_never_written_to_disk(client, lesion_jpeg):
    before = set(os.listdir(tempfile.gettempdir()))
    big = lesion_jpeg + b"\x00" * (3 * 1024 * 1024)  # past werkzeug's 500 kB spool-to-disk threshold
    observed = []
    original = tempfile.SpooledTemporaryFile.rollover
    tempfile.SpooledTemporaryFile.rollover = lambda self: observed.append(1) or original(self)
    try:
        assert post(client, big).status_code == 200
    finally:
        tempfile.SpooledTemporaryFile.rollover = original
    assert observed == [] and set(os.listdir(tempfile.gettempdir())) - before == set()


def test_serving_never_imports_torch(tiny_onnx, lesion_jpeg, tmp_path):
    import subprocess
    import sys
    photo = tmp_path / "p.jpg"
    photo.write_bytes(lesion_jpeg)
    script = (
        "import sys, io\n"
        "from skinlesion.web import create_app\n"
        f"client = create_app({{'MODEL': {str(tiny_onnx)!r}}}).test_client()\n"
        f"data = open({str(photo)!r}, 'rb').read()\n"
        "r = client.post('/api/v1/predict', data={'image': (io.BytesIO(data), 'p.jpg'), 'heatmap': '1'})\n"
        "assert r.status_code == 200, r.json\n"
        "assert 'torch' not in sys.modules, 'serving imported torch'\n"
        "print('ok')\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_server_settings_come_from_the_environment():
    assert settings_from_environment({}) == {"MODEL": None, "MODEL_THREADS": 0, "RATE_LIMIT": 60, "MAX_UPLOAD_MB": 10,
                                             "TRUSTED_PROXIES": 0}
    settings = settings_from_environment({"SKINLESION_RATE_LIMIT": " 5 ", "SKINLESION_MODEL": "m.onnx"})
    assert settings["RATE_LIMIT"] == 5 and settings["MODEL"] == "m.onnx"


@pytest.mark.parametrize("variable, value", [("SKINLESION_RATE_LIMIT", "abc"), ("SKINLESION_RATE_LIMIT", "0"),
                                             ("SKINLESION_THREADS", "-1"), ("SKINLESION_TRUSTED_PROXIES", "one"),
                                             ("SKINLESION_MAX_UPLOAD_MB", "0")])
def test_serve_refuses_a_bad_setting_by_name_before_starting_workers(variable, value):
    result = CliRunner().invoke(main, ["serve"], env={variable: value})
    assert result.exit_code == 1 and f"{variable}={value!r}: expected a whole number" in result.output
    assert "Traceback" not in result.output and "serving on" not in result.output


def test_serve_checks_the_model_named_in_the_environment(tmp_path):
    result = CliRunner().invoke(main, ["serve"], env={"SKINLESION_MODEL": str(tmp_path / "missing.onnx")})
    assert result.exit_code == 1 and "missing.onnx: model not found" in result.output
