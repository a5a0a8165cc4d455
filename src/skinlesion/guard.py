"""Refuse images the model should not judge; flag results it is unsure of. No torch."""

import numpy as np
from PIL import Image

MIN_SIDE = 64  # px: smaller photos hold too little detail to assess
MAX_ASPECT = 3.0  # a dermoscopic photo is roughly square; panoramas and strips are not
MIN_CONTRAST = 3.0  # grey-level std below this is a blank or uniform picture (faint real lesions: 4.8 and up)
MIN_SKIN_SHARE = 0.15  # share of pixels with skin-like colour
MIN_LESION_REDNESS = 0.2  # log(R/B) of the darkest pixels over the median's: a brown or red lesion (README, web app)
GREY_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601 luma
UNCERTAIN_BELOW = 0.5  # top-class probability under which the answer is flagged uncertain


def skin_share(pixels: np.ndarray) -> float:
    """Share of pixels whose colour could be skin or lesion (reddish-brown hues, not grey, not saturated blue/green).

    A broad rule in YCbCr (Chai & Ngan 1999, widened for pigmented lesions and dermoscope light): Cb up to 150
    rather than 135 admits the pink, lilac and bluish casts of some dermatoscopes (54 of our sample's photos were
    refused without it) and no further picture of the non-skin set it was checked on (README, web app).
    """
    ycbcr = np.asarray(Image.fromarray(pixels).convert("YCbCr"), dtype=np.int16)
    y, cb, cr = ycbcr[..., 0], ycbcr[..., 1], ycbcr[..., 2]
    return float(((cr >= 130) & (cr <= 185) & (cb >= 70) & (cb <= 150) & (y >= 20)).mean())


def lesion_redness(pixels: np.ndarray) -> float:
    """Return how much redder, as log(R/B), the darkest 15% of pixels are than the median pixel.

    A brown or red lesion is redder than the skin round it whatever the light: scaling the colour channels (a
    dermatoscope's blue or grey cast) leaves this unchanged, while a grey or evenly tinted picture scores 0.
    """
    rgb = pixels.reshape(-1, 3).astype(np.float32)
    rgb = rgb[rgb.max(axis=1) < 255] + 1  # a clipped channel has lost its ratio; + 1: no log of 0
    if len(rgb) < 0.5 * len(pixels.reshape(-1, 3)):
        return 0.0  # mostly overexposed: no lesion to measure
    grey = rgb @ GREY_WEIGHTS
    red_over_blue = np.log(rgb[:, 0] / rgb[:, 2])
    darkest = grey <= np.quantile(grey, 0.15)
    return float(np.median(red_over_blue[darkest]) - np.median(red_over_blue))


def cannot_assess(image: Image.Image, pixels: np.ndarray) -> str | None:
    """Return why this image cannot be assessed, or None when it looks like a skin photo."""
    width, height = image.info.get("original_size", image.size)
    if min(width, height) < MIN_SIDE:
        return f"the image is too small ({width}x{height} px; at least {MIN_SIDE} px per side are needed)"
    if max(width, height) / min(width, height) > MAX_ASPECT:
        return f"the image is too long and thin ({width}x{height} px) to be a photo of a skin lesion"
    grey = pixels.astype(np.float32) @ GREY_WEIGHTS
    if grey.std() < MIN_CONTRAST:
        return "the image is almost uniform (blank or out of focus)"
    if skin_share(pixels) < MIN_SKIN_SHARE and lesion_redness(pixels) < MIN_LESION_REDNESS:
        return ("the image does not look like a photo of skin (too few skin-coloured pixels and no darker, redder "
                "spot; a strong blue or grey colour cast on a dermoscopic photo can cause this)")
    return None


def is_uncertain(top_probability: float) -> bool:
    return top_probability < UNCERTAIN_BELOW
