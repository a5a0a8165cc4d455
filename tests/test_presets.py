import torch

from skinlesion.presets import EvalPreset, TrainPreset


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
    off = TrainPreset(flip=False, rotate90=False, rotate_degrees=0, scale=0, shift=0,
                      brightness=0, contrast=0, saturation=0)(pixels)
    assert torch.allclose(off, EvalPreset()(pixels), atol=1e-3)
