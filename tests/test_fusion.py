"""Paper 001's fusion family: CBAM, switches, encoder round trip, composition from baselines,
Grad-CAM target."""

import doctest
import json

import numpy as np
import pytest
import torch

from bus_paper import explain
from bus_paper.data.preprocess import Normalizer
from bus_paper.models import build_network
from bus_paper.models.baselines import build_baseline
from bus_paper.papers.p001 import fusion
from bus_paper.papers.p001.fusion import (
    CBAM,
    ChannelAttention,
    SpatialAttention,
    compose_encoder_state,
    fusion_config,
)

S = 64  # the smoke side: 2x2 maps at stride 32


def small(backbones=("mobilenetv2", "densenet121"), attention="cbam", attention_at="branches",
          seed=0):
    torch.manual_seed(seed)
    cfg = fusion_config(S, backbones, attention, attention_at, proj_hidden=64, proj_dim=16)
    return build_network(cfg).eval()


@pytest.fixture(scope="module")
def net():
    return small()


def test_doctests():
    assert doctest.testmod(fusion).failed == 0


def test_shapes_and_interface(net):
    x = torch.randn(3, 1, S, S)
    with torch.no_grad():
        fmap = net.feature_map(x)
        assert fmap.shape == (3, 1280 + 1024, S // 32, S // 32)
        feats = net.encode(x)
        torch.testing.assert_close(feats, fmap.mean(dim=(2, 3)))
        torch.testing.assert_close(net(x), net.head(feats))
        assert net.project(x).shape == (3, 16)
    assert net.feature_dim == 2304
    assert not any(k.startswith("head.") for k in net.encoder_state_dict())
    with pytest.raises(ValueError, match="expected input"):
        net(torch.randn(1, 1, S + 32, S + 32))
    with pytest.raises(ValueError, match="expected input"):
        net(torch.randn(1, 3, S, S))


def test_switches_change_only_their_part():
    def kinds(m):
        return ({b: type(a).__name__ for b, a in m.branch_attention.items()},
                type(m.fused_attention).__name__)
    assert kinds(small()) == ({"mobilenetv2": "CBAM", "densenet121": "CBAM"}, "Identity")
    assert kinds(small(attention="none")) == ({"mobilenetv2": "Identity",
                                               "densenet121": "Identity"}, "Identity")
    assert kinds(small(attention_at="fused")) == ({"mobilenetv2": "Identity",
                                                   "densenet121": "Identity"}, "CBAM")
    assert kinds(small(attention="channel", attention_at="both")) == (
        {"mobilenetv2": "ChannelAttention", "densenet121": "ChannelAttention"},
        "ChannelAttention")
    one = small(("densenet121",))
    assert list(one.branches) == ["densenet121"] and one.feature_dim == 1024
    # no attention: only the backbones and the heads carry weights
    plain = small(attention="none")
    assert not any(k.startswith(("branch_attention", "fused_attention"))
                   for k in plain.state_dict())


def test_bad_configs_fail_before_training():
    with pytest.raises(KeyError, match="not supported"):
        fusion_config(S, ["vit_small"])
    with pytest.raises(ValueError, match="distinct"):
        fusion_config(S, ["densenet121", "densenet121"])
    with pytest.raises(ValueError, match="attention must be"):
        fusion_config(S, attention="transformer")
    with pytest.raises(ValueError, match="attention_at"):
        fusion_config(S, attention_at="everywhere")
    with pytest.raises(ValueError, match="multiple of 32"):
        fusion_config(80)
    with pytest.raises(KeyError, match="not a fusion config"):
        fusion.build_from_config({"baseline": "resnet50"})


def test_channel_and_spatial_attention_by_hand():
    torch.manual_seed(0)
    x = torch.randn(2, 16, 5, 5)
    ca, sa = ChannelAttention(16, reduction=4), SpatialAttention(3)
    for m in (ca, sa):
        for p in m.parameters():
            torch.nn.init.zeros_(p)
    # zero weights: every gate is sigmoid(0) = 1/2
    torch.testing.assert_close(ca(x), x / 2)
    torch.testing.assert_close(sa(x), x / 2)
    # the spatial gate of a conv that reads the channel-max map at the centre tap only
    with torch.no_grad():
        sa.conv.weight[0, 1, 1, 1] = 1.0
    torch.testing.assert_close(sa.gate(x), torch.sigmoid(x.amax(dim=1, keepdim=True)))
    # channel gates ignore where things are, spatial gates are shared by all channels
    torch.nn.init.normal_(ca.mlp[0].weight)
    torch.nn.init.normal_(ca.mlp[2].weight)
    perm = torch.randperm(25)
    shuffled = x.flatten(2)[..., perm].reshape(x.shape)
    torch.testing.assert_close(ca.gate(x), ca.gate(shuffled))
    assert ca.gate(x).shape == (2, 16, 1, 1) and sa.gate(x).shape == (2, 1, 5, 5)
    cbam = CBAM(16, 4, 3)
    g = cbam(x) / x
    assert ((g > 0) & (g < 1)).all()   # two sigmoid gates multiplied


def test_config_and_encoder_round_trip(net):
    cfg = json.loads(json.dumps(net.config()))  # as stored in checkpoints (lists, not tuples)
    again = build_network(cfg).eval()
    assert again.config() == net.config()
    head_before = again.head[1].weight.clone()
    assert again.load_encoder_state_dict(net.encoder_state_dict()) == []
    x = torch.randn(2, 1, S, S)
    with torch.no_grad():
        torch.testing.assert_close(again.encode(x), net.encode(x))
        torch.testing.assert_close(again.project(x), net.project(x))
    assert torch.equal(again.head[1].weight, head_before)
    with pytest.raises(KeyError, match="does not match"):
        again.load_encoder_state_dict(small(("mobilenetv2",)).encoder_state_dict())


def test_composed_backbone_is_the_baseline_encoder():
    """One backbone without attention: the fusion model with the baseline's SimCLR weights
    computes exactly the baseline's features."""
    torch.manual_seed(3)
    base = build_baseline("mobilenetv2", S, proj_hidden=64, proj_dim=16).eval()
    model = small(("mobilenetv2",), attention="none", seed=5)
    state, own = compose_encoder_state(model, {"mobilenetv2": base.encoder_state_dict()})
    assert own and all(k.startswith("projector.") for k in own)
    assert model.load_encoder_state_dict(state) == []
    x = torch.randn(2, 1, S, S)
    with torch.no_grad():
        torch.testing.assert_close(model.encode(x), base.encode(x))
    # two backbones: each branch takes its own source; attention is left as initialised
    full = small(seed=6)
    before = {k: v.clone() for k, v in full.encoder_state_dict().items()}
    dn = build_baseline("densenet121", S, proj_hidden=64, proj_dim=16)
    state, own = compose_encoder_state(full, {"mobilenetv2": base.encoder_state_dict(),
                                              "densenet121": dn.encoder_state_dict()})
    assert torch.equal(state["branches.densenet121.features.conv0.weight"],
                       dn.backbone.features.conv0.weight)
    assert all(k.startswith(("branch_attention.", "projector.")) for k in own)
    assert all(torch.equal(state[k], before[k]) for k in own)
    with pytest.raises(KeyError, match="no source"):
        compose_encoder_state(full, {"mobilenetv2": base.encoder_state_dict()})
    with pytest.raises(KeyError, match="do not match"):
        compose_encoder_state(model, {"mobilenetv2": dn.encoder_state_dict()})


def test_gradcam_on_the_fused_map(net):
    images = np.random.default_rng(0).integers(0, 255, (3, S, S), dtype=np.uint8)
    hm = explain.heatmaps(net, images, Normalizer(0.3, 0.2), targets=[0, 1, 1])
    assert hm.cams.shape == (3, S, S) and hm.map_size == (S // 32, S // 32)
    assert np.isfinite(hm.cams).all() and (hm.cams >= 0).all() and (hm.cams <= 1 + 1e-6).all()
    calls = []
    handle = net.gradcam_target_layers()[0].register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        net(torch.zeros(1, 1, S, S))
    handle.remove()
    assert len(calls) == 1   # the target fires once per forward pass
