"""Table 1 baselines: BusNet's interface, Swin windows, encoder round trip, Grad-CAM."""

import pytest
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from bus_paper.models.baselines import (
    BASELINES,
    build_baseline,
    build_baseline_from_config,
    swin_window,
)

S = 64  # the smoke side: small enough for every family


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    return {name: build_baseline(name, S, proj_dim=32, proj_hidden=64).eval() for name in BASELINES}


@pytest.mark.parametrize("name", list(BASELINES))
def test_interface_and_shapes(nets, name):
    net = nets[name]
    x = torch.randn(3, 1, S, S)
    with torch.no_grad():
        feats = net.encode(x)
        width = getattr(net.backbone, "head_hidden_size", None) or net.backbone.num_features
        assert feats.shape == (3, net.feature_dim) == (3, width)  # VGG: fc7's 4096
        assert net(x).shape == (3, 2)
        assert net.project(x).shape == (3, 32)
        torch.testing.assert_close(net(x), net.head(feats))
    assert not any(k.startswith("head.") for k in net.encoder_state_dict())
    assert any(k.startswith("projector.") for k in net.encoder_state_dict())
    with pytest.raises(ValueError, match="expected input"):
        net(torch.randn(1, 1, S + net.size_multiple, S + net.size_multiple))  # not dynamic
    with pytest.raises(ValueError, match="expected input"):
        net(torch.randn(1, 3, S, S))


def test_no_weights_are_loaded_and_one_channel(nets):
    again = build_baseline("resnet50", S)  # another random draw, not a loaded checkpoint
    assert not torch.equal(again.backbone.conv1.weight, nets["resnet50"].backbone.conv1.weight)
    assert again.backbone.conv1.weight.shape[1] == 1


def test_dynamic_size_accepts_multiples_only():
    net = build_baseline("vit_small", S, dynamic_size=True).eval()
    with torch.no_grad():
        assert net.encode(torch.randn(2, 1, 32, 32)).shape == (2, 384)
    with pytest.raises(ValueError, match="multiple of 16"):
        net.encode(torch.randn(2, 1, 40, 40))


def test_unknown_name_and_bad_size():
    with pytest.raises(KeyError, match="unknown baseline"):
        build_baseline("alexnet", S)
    with pytest.raises(ValueError, match="multiple of 32"):
        build_baseline("swin_tiny", 80)


@pytest.mark.parametrize("side", [96, 128, 224])
def test_swin_window_tiles_every_stage_without_padding(side):
    w = swin_window(side)
    net = build_baseline("swin_tiny", side)
    for layer in net.backbone.layers:
        for block in layer.blocks:  # timm clamps the window to small grids; nothing is padded
            (h, _), (wh, _) = block.input_resolution, block.window_size
            assert h % wh == 0 and wh in (w, h)


def test_swin_window_values_documented():
    assert [swin_window(s) for s in (224, 128, 96)] == [7, 8, 6]
    with pytest.raises(ValueError):
        swin_window(100)


def test_encoder_state_round_trip(nets):
    a = nets["convnext_tiny"]
    torch.manual_seed(2)
    b = build_baseline_from_config(a.config()).eval()
    head_before = b.head[1].weight.clone()
    assert b.load_encoder_state_dict(a.encoder_state_dict()) == []
    x = torch.randn(2, 1, S, S)
    with torch.no_grad():
        torch.testing.assert_close(b.encode(x), a.encode(x))
        torch.testing.assert_close(b.project(x), a.project(x))
    assert torch.equal(b.head[1].weight, head_before)  # the classifier keeps its initialisation

    with pytest.raises(KeyError, match="does not match"):
        b.load_encoder_state_dict(nets["resnet50"].encoder_state_dict())
    other = a.encoder_state_dict()
    other["projector.3.weight"] = torch.zeros(7, 64)  # a projection head of another width
    with pytest.raises(ValueError, match="other shapes"):
        b.load_encoder_state_dict(other)
    assert b.load_encoder_state_dict(other, strict=False) == ["projector.3.weight"]


def test_config_round_trip(nets):
    net = nets["vit_small"]
    cfg = net.config()
    assert cfg == {"baseline": "vit_small", "img_size": S, "num_classes": 2, "proj_hidden": 64,
                   "proj_dim": 32, "drop_path_rate": 0.0, "drop_rate": 0.0, "dynamic_size": False}
    again = build_baseline_from_config(cfg)
    assert again.config() == cfg
    assert {k: v.shape for k, v in again.state_dict().items()} == \
        {k: v.shape for k, v in net.state_dict().items()}
    with pytest.raises(KeyError, match="not a baseline config"):
        build_baseline_from_config({"variant": "coatnet_nano"})


@pytest.mark.parametrize("name", ["resnet50", "vit_small", "swin_tiny"])
def test_gradcam_runs(nets, name):
    net = nets[name]
    x = torch.randn(2, 1, S, S)
    with GradCAM(model=net, target_layers=net.gradcam_target_layers(),
                 reshape_transform=net.gradcam_reshape_transform()) as cam:
        maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(1)] * 2)
    assert maps.shape == (2, S, S)
    assert ((maps >= 0) & (maps <= 1)).all()


def test_vit_target_layer_patch_tokens_get_gradient(nets):
    """The CLS-pooled ViT: the target's patch tokens must influence the logit (else CAM = 0)."""
    net = nets["vit_small"]
    acts = {}
    hook = net.gradcam_target_layers()[0].register_forward_hook(
        lambda m, i, o: acts.setdefault("a", o))
    logit = net(torch.randn(1, 1, S, S))[0, 1]
    hook.remove()
    (grad,) = torch.autograd.grad(logit, acts["a"])
    grid = net.gradcam_reshape_transform()(grad)
    assert grid.shape == (1, net.feature_dim, S // 16, S // 16)
    assert (grid.abs().sum(dim=1) > 0).all()  # every patch position has a gradient


def test_reshape_transforms_match_plain_reshapes(nets):
    b, c = 2, 5
    vit = nets["vit_small"].gradcam_reshape_transform()
    tokens = torch.randn(b, 1 + 9, c)
    expected = torch.stack([tokens[i, 1:].T.reshape(c, 3, 3) for i in range(b)])
    torch.testing.assert_close(vit(tokens), expected)
    swin = nets["swin_tiny"].gradcam_reshape_transform()
    nhwc = torch.randn(b, 3, 4, c)
    assert torch.equal(swin(nhwc)[1, :, 2, 3], nhwc[1, 2, 3])
    assert nets["resnet50"].gradcam_reshape_transform() is None
