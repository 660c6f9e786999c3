"""Paper 001's model family: CNN backbones, attention on their maps, fusion by concatenation.

Asif et al. (2025) describe only in their abstract a "feature fusion-based deep learning model"
that "leverages advanced architectures such as MobileNetV2 and DenseNet121, enhanced with feature
fusion and attention mechanisms". Our reading, one switch per part (:func:`fusion_config`)::

    for each backbone b in backbones:           (MobileNetV2, DenseNet121; one: no fusion)
        M_b = timm backbone b's last map          [B, C_b, h, w], stride 32 (timm forward_features)
        M_b = CBAM_b(M_b)                          attention on each branch  (attention_at branches)
    F = concat_b(M_b) on channels                  (maps resized to the largest grid if they differ)
    F = CBAM(F)                                    attention on the fused map (attention_at fused)
    features = GAP(F) -> classifier head (logits) | SimCLR projection head (pretraining)

- *Backbones.* timm's ``mobilenetv2_100`` (1280 channels after its 1x1 head conv, BN, ReLU6) and
  ``densenet121`` (1024 channels after norm5 + ReLU), built exactly as the Table 1 wrapper builds
  them (:mod:`.baselines`: random init, one input channel, no classifier), so a branch's weights
  have the same names as the ``backbone.*`` weights of that baseline and a baseline's SimCLR
  encoder initialises the branch (:func:`compose_encoder_state`). ``resnet50`` and
  ``efficientnet_b0`` are accepted too (their maps are NCHW and are what the baseline pools).
- *Attention.* "attention mechanisms", plural, with no further detail: we use CBAM (Woo et al.,
  ECCV 2018), which is two mechanisms in sequence, channel attention (a shared MLP on the
  average- and max-pooled channel descriptors, sigmoid: which features matter) and spatial
  attention (a 7x7 convolution over the channel-mean and channel-max maps, sigmoid: where they
  matter). It is the usual choice of fusion CNNs for ultrasound, adds few parameters (~2/r of a
  1x1 conv, r = 16), and includes SE-style channel gating (``attention="channel"`` keeps only
  that part). ``attention_at="branches"`` (default) puts one CBAM on each backbone's map before
  fusion ("backbones ... enhanced with ... attention"); ``"fused"`` one CBAM on the
  concatenation, where channel attention weighs the two networks' features against each other;
  ``"both"`` does both. ``attention="none"`` removes every attention module.
- *Fusion.* Concatenation of the (attended) maps on channels, then global average pooling: the
  same features as concatenating the pooled vectors when no attention follows the fusion, but a
  map on which fused attention and Grad-CAM can act.
- *Heads.* The book's heads (:mod:`.heads`): a dropout + linear classifier with two logits and the
  SimCLR projection head (2048 -> 128), so the family trains in the book's engine unchanged. The
  paper's head (dense layers?) is not described.

Grad-CAM targets the ``fused`` module (an identity at the end of the fusion): its output is the map
the heads pool, once per forward pass. With one backbone it is that backbone's attended map.

At the ``cpu`` profile's 96 px both backbones end in a 3x3 map (stride 32): spatial attention and
Grad-CAM then work on 9 cells. At the paper's 224 px the grid is 7x7.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn

from ...models import register_family
from ...models.baselines import BASELINES, IN_CHANS
from ...models.heads import ClassifierHead, ProjectionHead, SSLNet

FAMILY = "fusion"
#: backbones whose timm ``forward_features`` is the NCHW map the Table 1 wrapper pools
BACKBONES = ("mobilenetv2", "densenet121", "resnet50", "efficientnet_b0")
ATTENTION = ("cbam", "channel", "none")
ATTENTION_AT = ("branches", "fused", "both")


def fusion_config(img_size: int, backbones: Sequence[str] = ("mobilenetv2", "densenet121"),
                  attention: str = "cbam", attention_at: str = "branches", reduction: int = 16,
                  spatial_kernel: int = 7, num_classes: int = 2, proj_hidden: int = 2048,
                  proj_dim: int = 128, drop_rate: float = 0.0) -> dict[str, Any]:
    """A config of this family (what :func:`~bus_paper.models.build_network` builds). Checked
    here, so a bad switch fails before any training.

    >>> fusion_config(96)["backbones"], fusion_config(96, ["densenet121"], "none")["attention"]
    (['mobilenetv2', 'densenet121'], 'none')
    """
    backbones = list(backbones)
    if not backbones or len(set(backbones)) != len(backbones):
        raise ValueError(f"need one or more distinct backbones, got {backbones}")
    if bad := [b for b in backbones if b not in BACKBONES]:
        raise KeyError(f"backbone(s) {bad} not supported; choose from {', '.join(BACKBONES)}")
    if attention not in ATTENTION:
        raise ValueError(f"attention must be one of {ATTENTION}, got {attention!r}")
    if attention_at not in ATTENTION_AT:
        raise ValueError(f"attention_at must be one of {ATTENTION_AT}, got {attention_at!r}")
    if img_size < 32 or img_size % 32:
        raise ValueError(f"img_size must be a positive multiple of 32, got {img_size}")
    if reduction < 1 or spatial_kernel < 1 or spatial_kernel % 2 == 0:
        raise ValueError("reduction must be >= 1 and spatial_kernel odd")
    return {"family": FAMILY, "backbones": backbones, "attention": attention,
            "attention_at": attention_at, "reduction": int(reduction),
            "spatial_kernel": int(spatial_kernel), "img_size": int(img_size),
            "num_classes": int(num_classes), "proj_hidden": int(proj_hidden),
            "proj_dim": int(proj_dim), "drop_rate": float(drop_rate)}


# ----------------------------------------------------------------------------- attention
class ChannelAttention(nn.Module):
    """CBAM's channel attention: ``x * sigmoid(MLP(avgpool x) + MLP(maxpool x))``, one MLP
    ``C -> C/r -> C`` (ReLU, no bias as in the paper's 1x1 convs) shared by both descriptors."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(channels // reduction, 8)
        self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1, bias=False), nn.ReLU(inplace=True),
                                 nn.Conv2d(hidden, channels, 1, bias=False))

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """The channel weights ``[B, C, 1, 1]`` in (0, 1)."""
        return torch.sigmoid(self.mlp(x.mean(dim=(2, 3), keepdim=True))
                             + self.mlp(x.amax(dim=(2, 3), keepdim=True)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


class SpatialAttention(nn.Module):
    """CBAM's spatial attention: ``x * sigmoid(conv_k([mean_c x, max_c x]))`` (one k x k conv,
    2 -> 1 channels, zero padding: the map keeps its size)."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """The spatial weights ``[B, 1, h, w]`` in (0, 1)."""
        return torch.sigmoid(self.conv(torch.cat([x.mean(dim=1, keepdim=True),
                                                  x.amax(dim=1, keepdim=True)], dim=1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


class CBAM(nn.Sequential):
    """Convolutional block attention module (Woo et al. 2018): channel, then spatial attention."""

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7) -> None:
        super().__init__(ChannelAttention(channels, reduction), SpatialAttention(kernel_size))


def attention_module(kind: str, channels: int, reduction: int = 16,
                     kernel_size: int = 7) -> nn.Module:
    """``cbam`` | ``channel`` (CBAM's channel part alone, SE-like) | ``none`` (identity)."""
    if kind == "cbam":
        return CBAM(channels, reduction, kernel_size)
    if kind == "channel":
        return ChannelAttention(channels, reduction)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"attention must be one of {ATTENTION}, got {kind!r}")


# ----------------------------------------------------------------------------- the network
class FusionNet(SSLNet):
    """Backbones -> attention -> concatenation -> attention -> GAP -> heads (module docstring).

    Input: float tensor ``[B, 1, S, S]`` (z-scored), ``S = img_size``. Build it with
    :func:`build_from_config`.
    """

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        super().__init__()
        self._config = fusion_config(**{k: v for k, v in cfg.items() if k != "family"})
        c = self._config
        self.img_size = c["img_size"]
        self.branches = nn.ModuleDict({
            b: timm.create_model(BASELINES[b], pretrained=False, in_chans=IN_CHANS, num_classes=0)
            for b in c["backbones"]})
        chans = {b: int(m.num_features) for b, m in self.branches.items()}
        on_branch = c["attention_at"] in ("branches", "both")
        on_fused = c["attention_at"] in ("fused", "both")
        self.branch_attention = nn.ModuleDict({
            b: attention_module(c["attention"] if on_branch else "none", ch, c["reduction"],
                                c["spatial_kernel"]) for b, ch in chans.items()})
        self.feature_dim = sum(chans.values())
        self.fused_attention = attention_module(c["attention"] if on_fused else "none",
                                                self.feature_dim, c["reduction"],
                                                c["spatial_kernel"])
        self.fused = nn.Identity()  # the Grad-CAM target: the map the heads pool
        self.projector = ProjectionHead(self.feature_dim, c["proj_hidden"], c["proj_dim"])
        self.head = ClassifierHead(self.feature_dim, c["num_classes"], c["drop_rate"])

    def config(self) -> dict[str, Any]:
        """What rebuilds this model with :func:`build_from_config` (stored in checkpoints)."""
        return dict(self._config, backbones=list(self._config["backbones"]))

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != IN_CHANS or tuple(x.shape[-2:]) != (self.img_size,) * 2:
            raise ValueError(f"fusion: expected input [B, {IN_CHANS}, {self.img_size}, "
                             f"{self.img_size}], got {list(x.shape)}")

    def branch_maps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each backbone's last map after its own attention, ``{name: [B, C_b, h, w]}``."""
        self._check_input(x)
        return {b: self.branch_attention[b](net.forward_features(x))
                for b, net in self.branches.items()}

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The fused map ``[B, feature_dim, h, w]`` that both heads pool."""
        maps = list(self.branch_maps(x).values())
        size = max((m.shape[-2:] for m in maps), key=lambda s: s[0] * s[1])
        maps = [m if m.shape[-2:] == size else
                F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in maps]
        return self.fused(self.fused_attention(torch.cat(maps, dim=1)))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled fused features ``[B, feature_dim]``."""
        return self.feature_map(x).mean(dim=(2, 3))

    def gradcam_target_layers(self) -> list[nn.Module]:
        return [self.fused]


@register_family(FAMILY)
def build_from_config(cfg: Mapping[str, Any]) -> FusionNet:
    """The family entry point of :func:`~bus_paper.models.build_network`.

    >>> net = build_from_config(fusion_config(64))
    >>> net(torch.zeros(2, 1, 64, 64)).shape, net.encode(torch.zeros(2, 1, 64, 64)).shape
    (torch.Size([2, 2]), torch.Size([2, 2304]))
    """
    if cfg.get("family") != FAMILY:
        raise KeyError(f"not a {FAMILY} config: family {cfg.get('family')!r}")
    return FusionNet(cfg)


# ----------------------------------------------------------------------------- initialisation
def compose_encoder_state(model: FusionNet, sources: Mapping[str, Mapping[str, torch.Tensor]]
                          ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """An :meth:`~FusionNet.encoder_state_dict` for ``model`` whose backbones come from Table 1
    baseline encoders (``sources``: backbone name -> that baseline's ``encoder_state_dict``, e.g.
    its SimCLR ``encoder.pt["encoder"]``); every other weight (attention, projection head) is
    ``model``'s own. Returns (state, names of the weights that were not taken from a source).

    Every branch must have a source, and every ``backbone.*`` weight of a source must fit its
    branch in name and shape (a KeyError / ValueError says which not).
    """
    state = {k: v.detach().clone() for k, v in model.encoder_state_dict().items()}
    if missing := sorted(set(model.branches) - set(sources)):
        raise KeyError(f"no source encoder for backbone(s) {missing}")
    if extra := sorted(set(sources) - set(model.branches)):
        raise KeyError(f"source encoder(s) {extra} have no branch in this model")
    taken = set()
    for b, src in sources.items():
        own = {k for k in state if k.startswith(f"branches.{b}.")}
        mapped = {f"branches.{b}.{k[len('backbone.'):]}": v for k, v in src.items()
                  if k.startswith("backbone.")}
        if set(mapped) != own:
            raise KeyError(f"{b}: source backbone weights do not match the branch: missing "
                           f"{sorted(own - set(mapped))[:3]}, unexpected "
                           f"{sorted(set(mapped) - own)[:3]}")
        if wrong := sorted(k for k in own if state[k].shape != mapped[k].shape):
            raise ValueError(f"{b}: source weights of other shapes for {wrong[:3]}")
        state.update({k: v.detach().clone() for k, v in mapped.items()})
        taken |= own
    return state, sorted(set(state) - taken)
