"""Multiscale CoAtNet (paper 000): shapes per switch, config checks, state round trips, Grad-CAM."""

import dataclasses
import itertools
import json
import math

import pytest
import torch
from timm.layers import RelPosBias
from timm.models.maxxvit import TransformerBlock2d
from torch import nn

from bus_paper.config import ModelConfig, load_profile
from bus_paper.models import ProjectionHead, ScaleFreeRelPosBias, build_model
from bus_paper.models.coatnet import PolyphaseDilatedConv2d

SMALL = ModelConfig(variant="coatnet_nano", scales=(64, 32))   # small inputs: fast tests


def small(**changes) -> ModelConfig:
    return dataclasses.replace(SMALL, **changes)


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return build_model(SMALL).eval()


def test_shapes_for_every_switch_combination():
    x = torch.randn(2, 1, 64, 64)
    for multiscale, fusion, dilation in itertools.product([True, False], repeat=3):
        cfg = small(multiscale_input=multiscale, fusion=fusion, dilation=dilation)
        m = build_model(cfg).eval()
        # nano widths S2..S4 = 128, 256, 512; fusion off keeps S4 only
        per_scale = 128 + 256 + 512 if fusion else 512
        assert m.feature_dim == per_scale * (2 if multiscale else 1)
        fmap = m.feature_map(x)
        side = 64 // 8 if fusion else 64 // 32   # shallowest fused stage of the full scale
        assert fmap.shape == (2, m.feature_dim, side, side)
        assert m(x).shape == (2, 2)
        assert m.encode(x).shape == (2, m.feature_dim)
        assert m.project(x).shape == (2, 128)
        assert torch.allclose(m.encode(x), fmap.mean(dim=(2, 3)), atol=1e-5)


def test_unused_deep_stages_are_not_built():
    m = build_model(small(fusion_stages=(1, 2, 3)))
    assert len(m.encoder.stages) == 3                  # S1..S3; no S4 parameters
    assert m.feature_dim == (64 + 128 + 256) * 2


def test_multiscale_branch_sees_the_downsampled_image(model):
    # the 32 px branch is the same shared encoder on the resized input: its channels in the
    # feature vector must equal a single-scale pass at 32 px
    x = torch.randn(2, 1, 64, 64)
    feats = model.encode(x)
    x32 = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear",
                                          align_corners=False, antialias=True)
    fused32 = model.fusion(model.encoder(x32))
    up = torch.nn.functional.interpolate(fused32, size=(8, 8), mode="bilinear", align_corners=False)
    half = model.feature_dim // 2
    assert torch.allclose(feats[:, half:], up.mean(dim=(2, 3)), atol=1e-5)


def test_projection_head_is_eq_3_4(model):
    head = model.projector
    assert isinstance(head, ProjectionHead)
    kinds = [type(layer) for layer in head]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert (head[0].in_features, head[0].out_features) == (model.feature_dim, 2048)
    assert (head[3].in_features, head[3].out_features) == (2048, 128)


def test_scale_free_rel_pos_bias_matches_timm_and_offsets():
    torch.manual_seed(0)
    ref = RelPosBias(window_size=(4, 4), num_heads=3)
    ours = ScaleFreeRelPosBias(ref.relative_position_bias_table, (4, 4))
    assert torch.equal(ours.get_bias(), ref.get_bias())               # full size: identical
    ours.feat_size = (2, 3)                                           # smaller map: same offsets
    bias = ours.get_bias()
    table = ref.relative_position_bias_table.detach()
    coords = [(y, x) for y in range(2) for x in range(3)]
    for a, (ya, xa) in enumerate(coords):
        for b, (yb, xb) in enumerate(coords):
            offset_row = (ya - yb + 3) * 7 + (xa - xb + 3)            # (2W-1) = 7 columns
            assert torch.equal(bias[0, :, a, b], table[offset_row])
    ours.feat_size = (5, 4)
    with pytest.raises(ValueError, match="larger than"):
        ours.get_bias()


def test_fused_and_plain_attention_agree(model):
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        fused = model.encode(x)
        blocks = [b for b in model.modules() if isinstance(b, TransformerBlock2d)]
        assert blocks
        for b in blocks:
            b.attn.fused_attn = False
        plain = model.encode(x)
        for b in blocks:
            b.attn.fused_attn = True
    assert torch.allclose(fused, plain, atol=1e-4)


def test_dilation_changes_s1_s2_only():
    torch.manual_seed(0)
    dil, plain = build_model(small(dilation=True)).eval(), build_model(small(dilation=False)).eval()
    plain.load_state_dict(dil.state_dict())          # same parameters, only the wiring differs
    for stage_idx, stage in enumerate(dil.encoder.stages):
        for m in stage.modules():
            if isinstance(m, nn.Conv2d) and m.groups > 1 and m.stride == (1, 1):
                assert m.dilation == ((2, 2) if stage_idx < 2 else (1, 1))
    x = torch.randn(2, 1, 64, 64)
    a, b = dil.feature_map(x), plain.feature_map(x)
    assert a.shape == b.shape and not torch.allclose(a, b)


@pytest.mark.parametrize("side", [8, 12, 7])          # 7: odd side, plain dilated kernel
def test_polyphase_dilated_conv_equals_dilated_conv(side):
    torch.manual_seed(0)
    conv = PolyphaseDilatedConv2d(6, 6, 3, padding=2, dilation=2, groups=6, bias=True)
    x = torch.randn(2, 6, side, side, requires_grad=True)
    ref = nn.functional.conv2d(x, conv.weight, conv.bias, padding=2, dilation=2, groups=6)
    out = conv(x)
    assert torch.allclose(out, ref, atol=1e-5)
    g_out, = torch.autograd.grad(out.square().sum(), conv.weight)
    g_ref, = torch.autograd.grad(ref.square().sum(), conv.weight)
    assert torch.allclose(g_out, g_ref, atol=1e-4)


@pytest.mark.parametrize("changes,match", [
    ({"scales": (112, 56)}, "multiple of 32"),
    ({"scales": (64, 16)}, "multiple of 32"),
    ({"scales": ()}, "empty"),
    ({"scales": (32, 64)}, "largest"),
    ({"scales": (64, 64)}, "distinct"),
    ({"fusion_stages": (3, 2)}, "increasing"),
    ({"fusion_stages": (2, 5)}, "0..4"),
    ({"fusion_stages": (4,)}, "at least two"),
    ({"drop_rate": 1.0}, "drop_rate"),
])
def test_config_validation(changes, match):
    with pytest.raises(ValueError, match=match):
        small(**changes)


def test_unknown_variant_and_key():
    with pytest.raises(ValueError, match="coatnet_nano"):
        build_model(small(variant="coatnet_9"))
    with pytest.raises(KeyError, match="unknown model config"):
        build_model({**dataclasses.asdict(SMALL), "depth": 3})


def test_input_shape_is_checked(model):
    with pytest.raises(ValueError, match=r"\[B, 1, 64, 64\]"):
        model(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match=r"\[B, 1, 64, 64\]"):
        model(torch.randn(2, 3, 64, 64))


def test_profiles_build():
    # the shipped profiles must give valid configs (no forward pass: the gpu one is large)
    for name in ("smoke", "cpu", "gpu"):
        cfg = load_profile(name).model
        assert build_model(cfg).feature_dim > 0


def test_rebuild_from_checkpoint_config(model):
    cfg_json = json.loads(json.dumps(dataclasses.asdict(model.cfg)))   # tuples become lists
    clone = build_model(cfg_json).eval()
    assert clone.cfg == model.cfg
    clone.load_state_dict(model.state_dict())
    x = torch.randn(2, 1, 64, 64)
    assert torch.allclose(clone(x), model(x))


def test_encoder_state_round_trip(model):
    torch.manual_seed(1)
    other = build_model(SMALL).eval()
    state = model.encoder_state_dict()
    assert state and not any(k.startswith("head.") for k in state)
    assert any(k.startswith("projector.") for k in state)
    head_before = other.head[1].weight.clone()
    assert other.load_encoder_state_dict(state) == []
    x = torch.randn(2, 1, 64, 64)
    assert torch.allclose(other.encode(x), model.encode(x), atol=1e-6)
    assert torch.allclose(other.project(x), model.project(x), atol=1e-5)
    assert torch.equal(other.head[1].weight, head_before)             # classifier untouched


def test_encoder_state_mismatch():
    pretrained = build_model(SMALL).encoder_state_dict()
    single = build_model(small(multiscale_input=False))              # narrower projection head
    with pytest.raises(ValueError, match="other shapes"):
        single.load_encoder_state_dict(pretrained)
    skipped = single.load_encoder_state_dict(pretrained, strict=False)
    assert skipped == ["projector.0.weight"]                          # the shared encoder loads
    no_fusion = build_model(small(fusion=False))
    with pytest.raises(KeyError, match="missing|unexpected"):
        no_fusion.load_encoder_state_dict(pretrained)


def test_channels_last_bf16_training_step():
    torch.manual_seed(0)
    m = build_model(small()).to(memory_format=torch.channels_last).train()
    x = torch.randn(4, 1, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", torch.bfloat16):
        logits = m(x)
        loss = nn.functional.cross_entropy(logits.float(), torch.tensor([0, 1, 0, 1]))
    loss.backward()
    assert math.isfinite(loss.item())
    assert all(p.grad is not None for n, p in m.named_parameters() if not n.startswith("projector"))


def test_gradcam_runs_on_the_fused_map(model):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    calls = []
    layer = model.gradcam_target_layers()[0]
    handle = layer.register_forward_hook(lambda *_: calls.append(1))
    x = torch.randn(2, 1, 64, 64)
    with GradCAM(model=model, target_layers=model.gradcam_target_layers()) as cam:
        maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(1)] * 2)
    handle.remove()
    assert len(calls) == 1                      # hooked once per forward pass, not once per scale
    assert maps.shape == (2, 64, 64)
    assert (maps >= 0).all() and (maps <= 1).all()
