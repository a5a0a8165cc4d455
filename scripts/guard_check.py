"""Count what the web app's "cannot assess" rules refuse: a data folder's real photos, and pictures that are not skin.

Usage: python scripts/guard_check.py [--data ../shared/data/isic2019] [--others DIR] [--casts blue,pink,warm]
                                     [--model FILE] [--write-samples DIR]
Every image goes through the one loader at the model's input size (imaging.model_input), then guard.cannot_assess,
as an upload does. --data: an ISIC-layout folder whose photos should all pass (the refused ones are listed).
--others: a folder of pictures that are not skin photos, each also tried under the casts of scripts/ring_stress.py
(a cast must not let a picture through). --write-samples DIR first writes the 29 natural non-skin pictures the
README quotes (scikit-image's and matplotlib's sample images; needs `pip install scikit-image`) into DIR.
"""

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from ring_stress import CASTS, cast_colour

from skinlesion.guard import cannot_assess
from skinlesion.imaging import IMAGE_SUFFIXES, model_input, open_rgb
from skinlesion.isic import IMAGE_DIR
from skinlesion.predict import Predictor

SKIMAGE_SAMPLES = ("astronaut", "binary_blobs", "brick", "camera", "cat", "cell", "checkerboard", "chelsea", "clock",
                   "coffee", "coins", "colorwheel", "grass", "gravel", "horse", "hubble_deep_field",
                   "immunohistochemistry", "logo", "microaneurysms", "moon", "page", "retina", "rocket",
                   "shepp_logan_phantom", "text")
MATPLOTLIB_SAMPLES = ("Minduka_Present_Blue_Pack.png", "grace_hopper.jpg", "logo2.png")


def write_samples(out: Path) -> None:
    import matplotlib.cbook
    import skimage.data

    out.mkdir(parents=True, exist_ok=True)
    for name in SKIMAGE_SAMPLES:
        pixels = np.asarray(getattr(skimage.data, name)(), dtype=np.float64)[..., :3]  # drop alpha
        pixels = 255 * (pixels - pixels.min()) / max(pixels.max() - pixels.min(), 1e-9)  # bool and 0-1 images too
        Image.fromarray(pixels.astype(np.uint8)).convert("RGB").save(out / f"skimage_{name}.png")
    Image.fromarray(skimage.data.stereo_motorcycle()[0]).save(out / "skimage_motorcycle_left.png")
    for name in MATPLOTLIB_SAMPLES:
        with matplotlib.cbook.get_sample_data(name) as file:
            Image.open(file).convert("RGB").save(out / f"matplotlib_{Path(name).stem}.png")


def refusal(image: Image.Image, predictor: Predictor) -> str | None:
    return cannot_assess(image, model_input(image, predictor.size, predictor.policy))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path)
    parser.add_argument("--others", type=Path)
    parser.add_argument("--casts", default="blue,pink,warm")
    parser.add_argument("--model", type=Path, default=None, help="an exported .onnx file (default: the bundled model)")
    parser.add_argument("--write-samples", type=Path)
    args = parser.parse_args()
    casts = [c for c in args.casts.split(",") if c]
    for cast in casts:
        if cast not in CASTS:
            parser.error(f"unknown cast {cast}; choose from {', '.join(CASTS)}")
    for folder in (args.data / IMAGE_DIR if args.data else None, args.others):
        if folder and not folder.is_dir():
            parser.error(f"{folder}: no such folder")
    predictor = Predictor(args.model)
    if args.write_samples:
        write_samples(args.write_samples)
        args.others = args.others or args.write_samples
    if args.data:
        photos = sorted(p for p in (args.data / IMAGE_DIR).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        refused = [p.name for p in photos if refusal(open_rgb(p, draft_size=predictor.size), predictor)]
        print(f"real photos refused: {len(refused)} of {len(photos)} ({len(refused) / len(photos):.2%})")
        print("  " + " ".join(refused))
    if args.others:
        pictures = sorted(p for p in args.others.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        for cast in ["none", *casts]:
            passed = []
            for path in pictures:
                image = open_rgb(path, draft_size=predictor.size)
                if not refusal(image if cast == "none" else cast_colour(image, cast), predictor):
                    passed.append(path.stem)
            print(f"other pictures passed, cast {cast}: {len(passed)} of {len(pictures)}: {' '.join(passed)}")


if __name__ == "__main__":
    main()
