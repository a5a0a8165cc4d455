from dataclasses import replace

import pytest
import torch

from skinlesion.presets import AUGMENTATIONS, EvalPreset, TrainPreset
from skinlesion.training import TrainConfig


def only(**augmentation) -> TrainPreset:
    """A preset with every standard augmentation off, then the given ones on."""
    return TrainPreset(**{"flip": False, "rotate90": False, "rotate_degrees": 0, "scale": 0, "shift": 0,
                          "brightness": 0, "contrast": 0, "saturation": 0, **augmentation})


def test_eval_preset_only_reorders_and_converts():
    pixels = torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8)
    x = EvalPreset()(pixels)
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(x.permute(0, 2, 3, 1), pixels.float())


def test_train_preset_augments_within_range():
    torch.manual_seed(0)
    pixels = torch.randint(0, 256, (16, 32, 32, 3), dtype=torch.uint8)
    x = TrainPreset()(pixels)
    assert x.shape == (16, 3, 32, 32) and x.is_contiguous(memory_format=torch.channels_last)
    assert 0 <= x.min() and x.max() <= 255
    assert not torch.allclose(x, EvalPreset()(pixels))
    off = only()(pixels)
    assert torch.allclose(off, EvalPreset()(pixels), atol=1e-3)


def test_cutout_blanks_one_square_of_the_image_mean_colour():
    torch.manual_seed(1)
    pixels = torch.randint(0, 256, (8, 40, 40, 3), dtype=torch.uint8)
    only_cutout = only(cutout=0.5)
    x, plain = only_cutout(pixels), EvalPreset()(pixels)
    for image, original in zip(x, plain):
        changed = (image - original).abs().amax(0) > 1e-3  # (H, W)
        rows, cols = changed.any(1).nonzero().squeeze(1), changed.any(0).nonzero().squeeze(1)
        assert len(rows) == len(cols) <= 20  # one square, at most half the side
        square = image[:, rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert torch.allclose(square, original.mean(dim=(1, 2), keepdim=True).expand_as(square), atol=1e-3)


def test_channel_gain_casts_colour_within_its_range():
    torch.manual_seed(2)
    pixels = torch.full((64, 8, 8, 3), 100, dtype=torch.uint8)
    only_gain = only(channel_gain=0.1)
    x = only_gain(pixels)
    assert 90 - 1e-3 <= x.min() and x.max() <= 110 + 1e-3
    assert (x[:, 0] - x[:, 1]).abs().max() > 5  # channels move apart: a colour cast, not brightness


def test_strong_augmentation_changes_more_than_standard():
    torch.manual_seed(3)
    pixels = torch.randint(0, 256, (32, 32, 32, 3), dtype=torch.uint8)
    plain = EvalPreset()(pixels)
    changes = {name: (preset(pixels) - plain).abs().mean() for name, preset in AUGMENTATIONS.items()}
    assert changes["strong"] > changes["standard"] > 0
    # ringed-casts is ringed with a colour cast on top (each channel's gain is tested above).
    assert AUGMENTATIONS["ringed-casts"] == replace(AUGMENTATIONS["ringed"], channel_gain=0.15)


def test_an_unknown_augmentation_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="unknown augmentation 'wild'; choose from standard, strong, ringed, ringed-"):
        TrainConfig(augmentation="wild")


def test_ringed_augmentation_paints_outside_a_round_field_with_the_field_colour():
    torch.manual_seed(4)
    pixels = torch.randint(0, 256, (64, 48, 48, 3), dtype=torch.uint8)
    only_ring = only(field_ring=0.3)
    x, plain = only_ring(pixels), EvalPreset()(pixels)
    changed = (x - plain).abs().amax(1) > 1e-3  # (B, H, W)
    ringed = changed.flatten(1).any(1)
    assert 5 <= ringed.sum() <= 40  # about 30% of 64 images
    for image, original, where in zip(x[ringed], plain[ringed], changed[ringed]):
        assert where[0, 0] and where[-1, -1] and not where[24, 24]  # corners painted, centre kept
        painted = image[:, where]  # (3, n): one colour, that of the brighter half of the field
        assert torch.allclose(painted, painted[:, :1].expand_as(painted), atol=1e-3)
        field = original[:, ~where]
        brightness = field.mean(0)
        assert torch.allclose(painted[:, 0], field[:, brightness >= brightness.median()].mean(1), atol=0.5)
    assert torch.allclose(x[~ringed], plain[~ringed], atol=1e-3)
