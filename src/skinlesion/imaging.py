"""The one image loader: decode, orient, resize, fill a dark border; shared by training and prediction. No torch."""

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageOps
from pillow_heif import register_heif_opener

# What dermatoscopes and phones export: iPhones (and dermatoscopes clipped to them) save HEIC unless told otherwise.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".heic", ".heif", ".gif")
RESIZE_POLICIES = ("squash", "crop")  # squash: the paper's plain resize; crop: shorter side + centre crop
# Decompression-bomb guard: a real dermoscopic photo is far below this (BCN images are 1024x1024).
Image.MAX_IMAGE_PIXELS = 64_000_000
DARK_BORDER_GREY = 30  # grey level (0-255) under which a region touching a corner is a dermatoscope's unlit border
MIN_BORDER_SHARE = 0.01  # a dark border covering less of the image than this is left alone
FRAME_PIXELS = 2  # a lighter frame this thin round a dark border (some older ISIC photos) hides it from the corner
register_heif_opener()  # Pillow reads HEIC/HEIF through libheif, already turned upright by the file's own rotation


class ImageError(Exception):
    """An image that cannot be used; the message says why in plain words."""


def open_rgb(source, draft_size: int | None = None) -> Image.Image:
    """Decode a path or bytes into an upright RGB image, decoding JPEGs at reduced scale when possible."""
    try:
        image = Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else Path(source))
        original_size = image.size
        if original_size[0] * original_size[1] > Image.MAX_IMAGE_PIXELS:
            raise Image.DecompressionBombError("too many pixels")
        if draft_size and image.format == "JPEG":
            # JPEG draft mode decodes at 1/2, 1/4 or 1/8 scale, never below the requested size, nor below the size
            # the near-duplicate hash is taken at: a tiny input's hash is then the same photo's hash at that size.
            side = max(draft_size, HASH_MIN_SIZE)
            image.draft("RGB", (side, side))
        image.load()
        upright = to_rgb(ImageOps.exif_transpose(image))
        if upright.size != image.size:  # turned a quarter by its EXIF orientation
            original_size = original_size[::-1]
        # Draft mode shrinks .size and rounds it (200x150 decodes to 50x38); checks and the heatmap need the real one.
        upright.info["original_size"] = original_size
        return upright
    except Image.DecompressionBombError:
        raise ImageError("the image has too many pixels to be a photo (over 64 megapixels)") from None
    except FileNotFoundError:
        raise ImageError("file not found") from None
    except Image.UnidentifiedImageError:
        raise ImageError("not a readable image (unknown or unsupported format)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageError(f"not a readable image ({error})") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """Return an 8-bit RGB copy: alpha is composited on white, 16-bit and palette images are converted."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        pixels = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if pixels.max() > 255 else 255.0
        image = Image.fromarray(np.clip(pixels / peak * 255.0, 0, 255).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return image if image.mode == "RGB" else image.convert("RGB")


def resize(image: Image.Image, size: int, policy: str) -> np.ndarray:
    """Resize an RGB image to (size, size, 3) uint8 by the named policy."""
    if policy == "squash":
        out = image.resize((size, size), Image.BILINEAR)
    elif policy == "crop":
        scale = size / min(image.size)
        w, h = max(size, round(image.width * scale)), max(size, round(image.height * scale))
        out = image.resize((w, h), Image.BILINEAR)
        left, top = (w - size) // 2, (h - size) // 2
        out = out.crop((left, top, left + size, top + size))
    else:
        raise ValueError(f"unknown resize policy {policy!r}; choose from {', '.join(RESIZE_POLICIES)}")
    return np.asarray(out, dtype=np.uint8)  # (H, W, 3)


def fill_dark_border(pixels: np.ndarray) -> np.ndarray:
    """Paint the dark border around a dermatoscope's round field with the skin's colour; else return pixels as they are.

    Photos whose lit field is a circle with black corners are common in some clinics (BCN_20000) but rare in our
    training sample (mostly MEL, NV and BKL), so a network learns the ring as a cue against AK, BCC and SCC:
    on validation a synthetic ring lowers the bundled model's balanced accuracy from 0.737 to 0.624, and painted
    over 0.711 (docs/experiments.md). The border is the dark region connected to a corner (or to a pixel at most
    FRAME_PIXELS in from it, past a thin light frame), grown by 2 px to cover its soft edge and such a frame; it is
    painted with the mean colour of the brighter half of the rest (skin rather than lesion).
    """
    grey = pixels.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)  # (H, W)
    mask = Image.fromarray(np.where(grey < DARK_BORDER_GREY, 255, 0).astype(np.uint8)).copy()  # fromarray: read-only
    h, w = grey.shape
    for x, y, dx, dy in ((0, 0, 1, 1), (w - 1, 0, -1, 1), (0, h - 1, 1, -1), (w - 1, h - 1, -1, -1)):
        for step in range(min(FRAME_PIXELS, h - 1, w - 1) + 1):  # the first dark pixel inward along the diagonal
            seed = (x + dx * step, y + dy * step)
            if mask.getpixel(seed) == 255:
                ImageDraw.floodfill(mask, seed, 128)
                break
    border = np.asarray(mask) == 128
    if border.mean() < MIN_BORDER_SHARE or border.all():
        return pixels
    border = np.asarray(Image.fromarray(border.astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(5))) > 0
    field = pixels[~border]  # (n, 3)
    if not len(field):
        return pixels
    brightness = field.mean(axis=1)
    filled = pixels.copy()
    filled[border] = field[brightness >= np.median(brightness)].mean(axis=0).round().astype(np.uint8)
    return filled


def model_input(image: Image.Image, size: int, policy: str) -> np.ndarray:
    """Turn a decoded image into the model's (size, size, 3) uint8 input: resize, then fill a dark border."""
    return fill_dark_border(resize(image, size, policy))


def model_input_and_hash(image: Image.Image, size: int, policy: str) -> tuple[np.ndarray, str]:
    """Return the model's input and the near-duplicate hash of the resized photo, taken before the border is
    painted as the pixel cache takes it, so that a photo's hash here equals its hash in a training record.
    Inputs under HASH_MIN_SIZE are hashed at that size."""
    resized = resize(image, size, policy)
    hashed = resized if size >= HASH_MIN_SIZE else resize(image, HASH_MIN_SIZE, policy)
    return fill_dark_border(resized), difference_hash(hashed)


def check_model_input(model_path, size: int, pixels: np.ndarray) -> None:
    """Fail with the fix, before any work, when cached pixels (N, H, W, 3) are not the model's input size."""
    if pixels.shape[1:3] != (size, size):
        raise ValueError(f"{model_path} takes {size}x{size} px images, not {pixels.shape[2]}x{pixels.shape[1]}; "
                         f"prepare the data at the model's size (skinlesion prepare --size {size})")


def load_pixels(source, size: int, policy: str) -> np.ndarray:
    """Decode one image into the model's input: the shared preprocessing of training and prediction."""
    return model_input(open_rgb(source, draft_size=size), size, policy)


# Hashes of two photos at most this many bits apart are the same photo or the same lesion photographed again:
# read off the sample, where such pairs differed by up to ~50 bits and random pairs by 110 or more (0.1st percentile).
NEAR_DUPLICATE_BITS = 48
# Photos are hashed at least this large: the hash's 17x17 grid of the central 60% blurs into sameness below it
# (of 1,500 sample photos hashed at 16 px, 87 pairs fell within 48 bits, 2 of them one lesion; at 32-128 px, 1 pair).
HASH_MIN_SIZE = 32


def difference_hash(pixels: np.ndarray) -> str:
    """Return a 512-bit perceptual hash (hex) of an RGB array, for near-duplicate search.

    Horizontal and vertical brightness gradients of the central 60%: the vignette of a
    dermatoscope dominates whole-image hashes and makes unrelated photos look alike.
    """
    h, w = pixels.shape[:2]
    centre = Image.fromarray(pixels).convert("L").crop((w // 5, h // 5, w - w // 5, h - h // 5))
    cells = np.asarray(centre.resize((17, 17), Image.BILINEAR), dtype=np.int16)
    bits = np.concatenate([(cells[:16, 1:] > cells[:16, :-1]).ravel(), (cells[1:, :16] > cells[:-1, :16]).ravel()])
    return np.packbits(bits).tobytes().hex()


def hash_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Return how many bits differ between each raw hash of a and each of b (rows of 64 uint8): (len(a), len(b))."""
    a, b = np.ascontiguousarray(a, np.uint8), np.ascontiguousarray(b, np.uint8)
    if len(a) < 64:  # a few against many (a photo against a record): count the bits of their XOR
        xor = a.view(np.uint64)[:, None, :] ^ b.view(np.uint64)[None, :, :]
        return np.bitwise_count(xor).sum(axis=2, dtype=np.int32)
    # Many against many: as +-1 bits, agreement minus disagreement is one dot product, which BLAS computes fast.
    signs_a, signs_b = (np.unpackbits(h, axis=1).astype(np.float32) * 2 - 1 for h in (a, b))
    return np.rint((signs_a.shape[1] - signs_a @ signs_b.T) / 2).astype(np.int32)
