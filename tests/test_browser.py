"""Drive Debian's Chromium with Playwright against a live `skinlesion serve` (gunicorn)."""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update"]


def serve(*options: str):
    """Start `skinlesion serve` under gunicorn on a free port with these options; yield its URL; stop it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "skinlesion", "serve", *options, "--port", str(port),
                               "--workers", "1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url + "/healthz", timeout=1)
            break
        except OSError:
            time.sleep(0.2)
    else:
        server.kill()
        pytest.fail("skinlesion serve did not start: " + server.stdout.read().decode(errors="replace")[-2000:])
    yield url
    server.terminate()
    server.wait(timeout=10)


@pytest.fixture(scope="module")
def live_server(tiny_onnx):
    yield from serve("--model", str(tiny_onnx))


@pytest.fixture(scope="module")
def bundled_server():
    """The bundled model, whose card has what the tiny one's lacks: test figures, groups, the referral rule."""
    yield from serve()


@pytest.fixture(scope="module")
def browser():
    if not shutil.which(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium package")
        pytest.skip(f"{CHROMIUM} not installed")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def test_upload_shows_diagnosis_heatmap_and_then_a_readable_error(live_server, browser, lesion_jpeg, prepared32,
                                                                  shared_data, tmp_path):
    from skinlesion.isic import IMAGE_DIR
    from skinlesion.prepare import read_manifest

    manifest = read_manifest(prepared32)
    tested = manifest[manifest["split"] == "test"]["image"].iloc[0]  # a photo the served model never met
    photo = tmp_path / "lesion.jpg"
    Image.open(shared_data / IMAGE_DIR / f"{tested}.jpg").convert("RGB").resize((600, 450)).save(photo, quality=90)
    text = tmp_path / "notes.txt"
    text.write_text("this is not a photo")
    page = browser.new_page(viewport={"width": 390, "height": 844})  # a phone screen
    page.goto(live_server)
    assert "Research tool, not a diagnosis" in page.inner_text(".notice")
    page.set_input_files("#file", str(photo))
    with page.expect_response("**/api/v1/predict") as response:
        page.click("#analyse")
    body = response.value.json()
    page.wait_for_selector("#answer", state="visible", timeout=30_000)
    label = page.inner_text("#label")
    # The risk line follows the answer's referral: a benign top class whose cancers together reach the threshold is
    # not shown as plainly benign.
    checked = body["refer"] and body["risk"] == "benign"
    assert page.inner_text("#risk") == ("Risk group: benign, but cancer is not ruled out" if checked
                                        else f"Risk group: {body['risk']}")
    assert page.inner_text("#advice") == body["advice"]
    assert any(code in label for code in ("MEL", "NV", "BCC", "AK", "BKL", "SCC"))
    assert page.get_attribute("#heatmap", "src").startswith("data:image/png;base64,")
    # 4:3 as the photo (600x450): the model's square view stretched back to the photo's shape (within the rounding
    # of JPEG's reduced decoding, 75x57 for this 32 px model)
    shape = "(() => { const h = document.getElementById('heatmap'); return [h.naturalWidth, h.naturalHeight]; })()"
    width, height = page.evaluate(shape)
    assert width == 256 and abs(height - 192) <= 4
    assert page.locator("#bars li").count() == 8
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "browser-result.png"), full_page=True)
    assert "where the model looked, not where any disease is" in page.inner_text("#heatmap-key")
    # Printed (or saved as PDF) for a record: the answer with which photo, when and which model, and both notices;
    # not the controls.
    assert page.inner_text("#record").startswith("Photo lesion.jpg, analysed ")
    assert page.inner_text("#record").endswith(f"by model {body['model_version']}.")
    page.emulate_media(media="print")
    assert all(page.is_hidden(selector) for selector in ("#drop", "#print", "#toggle-heatmap", "header nav"))
    assert all(page.is_visible(selector) for selector in ("#answer", "#record", "#heatmap", "aside.notice",
                                                          "#answer .notice"))
    page.pdf(path=str(ARTIFACTS / "browser-result.pdf"))
    assert (ARTIFACTS / "browser-result.pdf").read_bytes().startswith(b"%PDF")
    page.emulate_media(media="screen")
    assert page.is_visible("#drop") and page.is_visible("#print")
    page.click("#toggle-heatmap")
    assert page.is_hidden("#heatmap") and page.is_visible("#plain") and page.is_hidden("#heatmap-key")
    assert page.is_hidden("#seen")
    # another photo, named like one the served model trained on
    named = tmp_path / f"{manifest[manifest['split'] == 'train']['image'].iloc[0]}.jpg"
    named.write_bytes(lesion_jpeg)
    page.set_input_files("#file", str(named))
    page.click("#analyse")
    page.wait_for_selector("#seen", state="visible", timeout=30_000)
    assert "learnt from" in page.inner_text("#seen")
    for suffix in ("tif", "heic"):  # Chromium cannot show a TIFF or an iPhone's HEIC; the server reads both
        unshown = tmp_path / f"lesion.{suffix}"
        Image.open(photo).save(unshown)
        page.set_input_files("#file", str(unshown))
        page.wait_for_selector(f"#file-name:has-text('lesion.{suffix} (this browser cannot show it')", timeout=10_000)
        assert page.is_hidden("#preview")
        page.click("#analyse")
        page.wait_for_selector("#status:text-is('Done.')", timeout=30_000)
        assert page.is_visible("#answer") and page.is_disabled("#toggle-heatmap")
        assert f"Photo lesion.{suffix}," in page.inner_text("#record")
    page.set_input_files("#file", str(text))
    page.click("#analyse")
    page.wait_for_selector("#error", state="visible", timeout=30_000)
    assert "cannot be read as an image" in page.inner_text("#error")
    assert page.is_hidden("#answer")
    page.screenshot(path=str(ARTIFACTS / "browser-error.png"), full_page=True)


def test_page_is_keyboard_operable(live_server, browser):
    page = browser.new_page()
    page.goto(live_server)
    focused = []
    for _ in range(6):
        page.keyboard.press("Tab")
        focused.append(page.evaluate("document.activeElement.id || document.activeElement.textContent.trim()"))
    assert "file" in focused and "camera" in focused


def axe_violations(page) -> list[str]:
    """Run axe-core (WCAG 2 A/AA rules, colour contrast included) on the page as it is; return what it flags."""
    from axe_playwright_python.sync_playwright import Axe
    found = Axe().run(page).response["violations"]
    return [f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}" for v in found]


@pytest.mark.parametrize("viewport", [{"width": 390, "height": 844}, {"width": 1280, "height": 800}])
def test_every_page_and_state_passes_axe(live_server, bundled_server, browser, lesion_jpeg, tmp_path, viewport):
    photo, text = tmp_path / "lesion.jpg", tmp_path / "notes.txt"
    photo.write_bytes(lesion_jpeg)
    text.write_text("this is not a photo")
    page = browser.new_page(viewport=viewport)
    for url in (live_server + "/", live_server + "/about", live_server + "/no-such-page", bundled_server + "/about"):
        page.goto(url)
        assert axe_violations(page) == [], url
    assert page.locator("h2", has_text="By patient group").is_visible()  # the bundled card's sections were checked
    page.goto(live_server)
    page.set_input_files("#file", str(photo))
    page.click("#analyse")
    page.wait_for_selector("#answer", state="visible", timeout=30_000)
    assert axe_violations(page) == [], "the answer with its heatmap"
    page.click("#toggle-heatmap")
    assert axe_violations(page) == [], "the answer without its heatmap"
    page.set_input_files("#file", str(text))
    page.click("#analyse")
    page.wait_for_selector("#error", state="visible", timeout=30_000)
    assert axe_violations(page) == [], "the error"
