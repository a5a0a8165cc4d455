"""Training throughput (images/s): our pipeline against a naive one, same model, same run.

Ours: the prepared uint8 cache, batched tensor augmentation (TrainPreset), channels_last.
Naive: every batch decoded from JPEG with PIL, per-image torchvision transforms, fp32 NCHW.

Usage: python benchmarks/bench_training.py [--data ../shared/data/isic2019] [--size 64] [--steps 12]
       [--models mobilenet_v2,efficientnet_lite0,resnet50,alexnet]
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms

from skinlesion.cache import CacheConfig
from skinlesion.models import create_model
from skinlesion.prepare import PrepareConfig, load_prepared, prepare
from skinlesion.presets import TrainPreset


def step(model, optimizer, x, y):
    loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def ours(model, pixels: torch.Tensor, labels: torch.Tensor, steps: int, batch: int) -> float:
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
    preset = TrainPreset()
    order = torch.randperm(len(pixels))
    start = None
    for i in range(steps + 2):
        if i == 2:  # two warm-up steps
            start = time.perf_counter()
        idx = order[i * batch:(i + 1) * batch]
        step(model, optimizer, preset(pixels[idx]), labels[idx])
    return steps * batch / (time.perf_counter() - start)


def naive(model, paths: list[str], labels: torch.Tensor, size: int, steps: int, batch: int) -> float:
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
    augment = transforms.Compose([
        transforms.Resize((size, size)), transforms.RandomHorizontalFlip(), transforms.RandomVerticalFlip(),
        transforms.RandomAffine(20, translate=(0.05, 0.05), scale=(0.9, 1.1)),
        transforms.ColorJitter(0.2, 0.2, 0.2), transforms.PILToTensor()])
    start = None
    for i in range(steps + 2):
        if i == 2:
            start = time.perf_counter()
        chosen = range(i * batch, (i + 1) * batch)
        x = torch.stack([augment(Image.open(paths[j]).convert("RGB")) for j in chosen]).float()
        step(model, optimizer, x, labels[list(chosen)])
    return steps * batch / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/isic2019")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--models", default="mobilenet_v2,efficientnet_lite0,resnet50,alexnet")
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        prepare(args.data, Path(tmp), PrepareConfig(cache=CacheConfig(size=args.size)), progress=False)
        prepared = load_prepared(Path(tmp))
        train = prepared.split("train").sample(frac=1, random_state=0)
        index = {c: i for i, c in enumerate(prepared.classes)}
        labels = torch.tensor(train["label"].map(index).to_numpy())
        pixels = torch.from_numpy(np.ascontiguousarray(prepared.pixels[train["cache_row"].to_numpy()]))
        paths = [str(args.data / "ISIC_2019_Training_Input" / f"{i}.jpg") for i in train["image"]]
        print(f"{args.size}x{args.size}, batch {args.batch}, {args.steps} timed steps, "
              f"{torch.get_num_threads()} threads")
        for name in args.models.split(","):
            model = create_model(name, len(prepared.classes), pretrained=False)
            slow = naive(model, paths, labels, args.size, args.steps, args.batch)
            fast = ours(create_model(name, len(prepared.classes), pretrained=False), pixels, labels, args.steps,
                        args.batch)
            print(f"{name:18s} naive {slow:6.0f} img/s   ours {fast:6.0f} img/s   speed-up {fast / slow:.1f}x",
                  flush=True)


if __name__ == "__main__":
    main()
