import io

import numpy as np
from PIL import Image, ImageDraw

from skinlesion.imaging import fill_dark_border, hash_distances, load_pixels
from skinlesion.isic import IMAGE_DIR


def with_black_ring(image: Image.Image, radius_share: float) -> Image.Image:
    """Black out everything outside a centred circle, as a dermatoscope's unlit border looks."""
    w, h = image.size
    r = radius_share * max(w, h) / 2
    mask = Image.new("L", image.size, 0)
    ImageDraw.Draw(mask).ellipse((w / 2 - r, h / 2 - r, w / 2 + r, h / 2 + r), fill=255)
    ringed = Image.new("RGB", image.size)
    ringed.paste(image, mask=mask)
    return ringed


def grey(pixels: np.ndarray) -> np.ndarray:
    return pixels.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def test_a_dark_border_is_painted_with_skin_and_the_field_is_left_alone(shared_data):
    photo = Image.open(shared_data / IMAGE_DIR / "ISIC_0024306.jpg").convert("RGB").resize((96, 96))
    ringed = np.asarray(with_black_ring(photo, 0.85))
    assert (grey(ringed)[:8, :8] < 30).all()
    filled = fill_dark_border(ringed)
    assert (grey(filled)[:8, :8] > 100).all()  # corners now skin-coloured, not black
    # The painted colour is the skin's (the brighter half of the field), close to the photo's own corners.
    assert np.abs(filled[0, 0].astype(int) - np.asarray(photo)[:10, :10].reshape(-1, 3).mean(0)).max() < 40
    centre = slice(24, 72)
    assert np.array_equal(filled[centre, centre], ringed[centre, centre])


def test_a_border_behind_a_thin_light_frame_is_painted_too(shared_data):
    photo = Image.open(shared_data / IMAGE_DIR / "ISIC_0024306.jpg").convert("RGB").resize((96, 96))
    framed = with_black_ring(photo, 0.85)
    ImageDraw.Draw(framed).rectangle((0, 0, 95, 95), outline=(60, 60, 60))  # as downsizing left round ISIC_0000004
    filled = fill_dark_border(np.asarray(framed))
    assert (grey(filled)[:8, :8] > 100).all()  # the frame and the border behind it, now skin-coloured
    thicker = with_black_ring(photo, 0.85)
    ImageDraw.Draw(thicker).rectangle((0, 0, 95, 95), outline=(60, 60, 60), width=4)  # a real frame: left alone
    assert np.array_equal(fill_dark_border(np.asarray(thicker)), np.asarray(thicker))


def test_photos_without_a_border_and_dark_lesions_inside_are_unchanged(shared_data):
    photo = np.asarray(Image.open(shared_data / IMAGE_DIR / "ISIC_0024306.jpg").convert("RGB").resize((96, 96)))
    assert fill_dark_border(photo) is photo
    dark_lesion = photo.copy()
    dark_lesion[30:66, 30:66] = 5  # as dark as a border, but touching no corner
    assert np.array_equal(fill_dark_border(dark_lesion), dark_lesion)
    one_black_pixel = photo.copy()
    one_black_pixel[0, 0] = 0  # under 1% of the image: JPEG noise, not a border
    assert np.array_equal(fill_dark_border(one_black_pixel), one_black_pixel)
    black = np.zeros((32, 32, 3), np.uint8)
    assert np.array_equal(fill_dark_border(black), black)  # nothing lit to take a colour from


def test_the_shared_loader_fills_the_border(shared_data, tmp_path):
    photo = Image.open(shared_data / IMAGE_DIR / "ISIC_0024306.jpg").convert("RGB")
    buffer = io.BytesIO()
    with_black_ring(photo, 0.9).save(buffer, "JPEG", quality=90)
    (tmp_path / "ringed.jpg").write_bytes(buffer.getvalue())
    pixels = load_pixels(tmp_path / "ringed.jpg", 64, "squash")
    corners = grey(pixels)[[0, 0, -1, -1], [0, -1, 0, -1]]
    assert (corners > 100).all()  # skin-coloured, not black
    assert np.array_equal(load_pixels(buffer.getvalue(), 64, "squash"), pixels)  # bytes (uploads) the same way


def test_hash_distances_count_differing_bits_for_one_photo_and_for_many():
    rng = np.random.default_rng(0)
    many, known = rng.integers(0, 256, (100, 64), dtype=np.uint8), rng.integers(0, 256, (30, 64), dtype=np.uint8)
    expected = np.unpackbits(many[:, None] ^ known[None], axis=2).sum(axis=2)
    assert (hash_distances(many, known) == expected).all()  # many against many: a matrix product
    assert (hash_distances(many[:5], known) == expected[:5]).all()  # a few: bit counts
    flipped = many[0].copy()
    flipped[[0, 63]] ^= np.uint8(0b101)
    assert hash_distances(many[:1], flipped[None]).tolist() == [[4]]
