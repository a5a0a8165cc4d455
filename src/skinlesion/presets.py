"""TrainPreset / EvalPreset: batched tensor transforms, so augmentation never bottlenecks the CPU.

Input to both is the cached uint8 batch (B, H, W, 3); output is float (B, 3, H, W) in 0..255,
channels_last. Normalisation lives inside the model, so every consumer shares one preprocessing path.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def to_input(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in 0..255, channels_last (about 2x faster on CPU)."""
    return pixels.permute(0, 3, 1, 2).float().contiguous(memory_format=torch.channels_last)


@dataclass(frozen=True)
class EvalPreset:
    """Evaluation: no change beyond the cached resize; the model normalises."""

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        return to_input(pixels)


@dataclass(frozen=True)
class TrainPreset:
    """Dermoscopy augmentation: lesions have no up or left, so flips and any rotation are label-safe."""

    flip: bool = True
    rotate90: bool = True
    rotate_degrees: float = 20.0  # small affine on top of the 90-degree turns
    scale: float = 0.1  # zoom in or out by up to 10%
    shift: float = 0.05  # translate by up to 5% of the side
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    channel_gain: float = 0.0  # scale each colour channel by up to this share: another dermatoscope's light
    cutout: float = 0.0  # blank one square of up to this share of the side (mean colour); 0 = off
    field_ring: float = 0.0  # share of images given a painted round field, as the loader leaves a ringed photo

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        x = to_input(pixels)
        b = x.shape[0]
        if self.field_ring:
            x = self.paint_round_field(x)
        if self.flip:
            x = torch.where(torch.rand(b, 1, 1, 1, device=x.device) < 0.5, x.flip(3), x)
        if self.rotate90:
            turns = torch.randint(0, 4, (b,), device=x.device)
            x = torch.stack([torch.rot90(img, int(k), dims=(1, 2)) for img, k in zip(x, turns)])
        x = self.affine(x)
        x = self.colour(x)
        if self.cutout:
            x = self.blank_square(x)
        return x.clamp(0, 255).contiguous(memory_format=torch.channels_last)

    def affine(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        angle = (torch.rand(b, device=x.device) * 2 - 1) * math.radians(self.rotate_degrees)
        zoom = 1 + (torch.rand(b, device=x.device) * 2 - 1) * self.scale
        shift = (torch.rand(b, 2, device=x.device) * 2 - 1) * self.shift * 2  # grid units span 2
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    def colour(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]

        def factor(amount):
            return 1 + (torch.rand(b, 1, 1, 1, device=x.device) * 2 - 1) * amount

        x = x * factor(self.brightness)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * factor(self.contrast) + mean
        grey = (x * torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
        x = (x - grey) * factor(self.saturation) + grey
        if self.channel_gain:
            x = x * (1 + (torch.rand(b, 3, 1, 1, device=x.device) * 2 - 1) * self.channel_gain)
        return x

    def blank_square(self, x: torch.Tensor) -> torch.Tensor:
        """Fill one random square per image (side up to `cutout` of the image's) with the image's mean colour."""
        b, _, h, w = x.shape
        side = (torch.rand(b, 1, 1, device=x.device) * self.cutout * min(h, w)).ceil()
        top = (torch.rand(b, 1, 1, device=x.device) * (h - side + 1)).floor()
        left = (torch.rand(b, 1, 1, device=x.device) * (w - side + 1)).floor()
        rows = torch.arange(h, device=x.device).view(1, h, 1)
        cols = torch.arange(w, device=x.device).view(1, 1, w)
        inside = (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)
        return torch.where(inside.unsqueeze(1), x.mean(dim=(2, 3), keepdim=True), x)

    def paint_round_field(self, x: torch.Tensor) -> torch.Tensor:
        """Paint outside a random circle with the mean colour of the brighter half inside, on `field_ring` of images.

        This is what imaging.fill_dark_border leaves of a photo whose dermatoscope lit a round field. Such photos
        are mostly MEL, NV and BKL in our sample, so without this the painted corners stay a cue against the rest.
        """
        b, _, h, w = x.shape
        chosen = (torch.rand(b, device=x.device) < self.field_ring).view(b, 1, 1)
        radius = (0.7 + torch.rand(b, 1, 1, device=x.device) * 0.5) * max(h, w) / 2  # 0.7-1.2 of the half side
        side = torch.tensor([h, w], device=x.device, dtype=x.dtype).view(1, 2, 1, 1)
        centre = (side - 1) / 2 + (torch.rand(b, 2, 1, 1, device=x.device) - 0.5) * 0.1 * side  # moved up to 5%
        rows = torch.arange(h, device=x.device).view(1, h, 1)
        cols = torch.arange(w, device=x.device).view(1, 1, w)
        outside = (rows - centre[:, 0]) ** 2 + (cols - centre[:, 1]) ** 2 > radius ** 2  # (B, H, W)
        brightness = x.mean(1).masked_fill(outside, float("nan")).flatten(1)  # (B, H*W), NaN outside the field
        bright = (brightness >= brightness.nanmedian(1, keepdim=True).values).view(b, 1, h, w)  # NaN compares False
        colour = (x * bright).sum((2, 3), keepdim=True) / bright.sum((2, 3), keepdim=True).clamp(min=1)
        return torch.where((chosen & outside).unsqueeze(1), colour, x)


# What `train --augmentation` chooses from. strong: any rotation, more zoom and shift, stronger colour changes,
# a per-channel colour cast and one blanked square (as the ISIC 2019 winners' heavier augmentation). ringed: standard,
# and 30% of images get a painted round field (imaging.fill_dark_border), so painted corners stop telling classes apart.
# ringed-casts: ringed, and each colour channel scaled by up to 15%, as another dermatoscope's light would (a blue
# cast of that size cost the bundled model 0.14 of validation bacc; docs/experiments.md, "Colour casts").
AUGMENTATIONS = {
    "standard": TrainPreset(),
    "strong": TrainPreset(rotate_degrees=180.0, scale=0.25, shift=0.1, brightness=0.3, contrast=0.3, saturation=0.3,
                          channel_gain=0.1, cutout=0.3),
    "ringed": TrainPreset(field_ring=0.3),
    "ringed-casts": TrainPreset(field_ring=0.3, channel_gain=0.15),
}
