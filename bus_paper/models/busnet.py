"""BusNet: the multiscale CoAtNet of paper 000 with its SSL projection head and classifier.

Data flow for an input ``x`` of side ``S = scales[0]``::

    for each input scale s in scales:          (multiscale input; scales[0] only when off)
        x_s = resize(x, s)                      antialiased bilinear
        S0..S4 maps = encoder(x_s)              ONE encoder, shared by all scales
        f_s = StageFusion(maps of fusion_stages) top-down: upsample to the shallowest, concat
    F = ScaleConcat(f_s for all s)              upsample to f_0's size, concat on channels
    features = GAP(F)  -> classifier head (logits) | projection head (eq. 3-4, SSL)

Multiscale input. The paper analyses each image at 224, 112 and 28 px "individually ... at its
specific resolution" and concatenates the resulting feature maps on channels. CoAtNet halves the
map five times, so every side must be a multiple of 32; the profiles use the nearest valid sides
(gpu 224/128/32, cpu 96/64/32) and :class:`~bus_paper.config.ModelConfig` rejects others. The
scales share one encoder: the paper's figure has a single encoder f, and sharing keeps the
parameter count of the single-scale model (only the heads widen), so the "single-scale input"
ablation changes the input, not the capacity. The relative-position biases are indexed by offset
and therefore valid at every scale (see :class:`~bus_paper.models.coatnet.ScaleFreeRelPosBias`).
The MBConv BatchNorm layers are shared too: in training each scale is normalised with its own
batch statistics, in evaluation with running statistics that mix the scales (a known cost of
weight sharing across resolutions). Concatenating maps on channels needs a common size, so each
scale's fused map is bilinearly upsampled to the full-scale one; GAP then pools the concatenation.

Fusion. With ``fusion`` on, the maps of ``fusion_stages`` (default S2, S3, S4 at strides 8, 16, 32)
are each layer-normalised (the residual streams of different depths have different scales;
timm normalises its last stage the same way), the deeper ones are upsampled
bilinearly to the shallowest, and all are concatenated. With ``fusion`` off only the normalised
last stage (S4) is used, which is plain CoAtNet pooling.

Grad-CAM. :meth:`BusNet.gradcam_target_layers` returns the ScaleConcat module: its output ``F`` is
exactly the map that GAP reduces to the features both heads see, so Grad-CAM's channel weights
(pooled gradients) are those of the real decision and the CAM covers every stage and every scale.
It is at the resolution of the shallowest fused stage of the full scale (stride 8 with the default
fusion: 16x16 for a 128 px input; stride 32, 4x4, without fusion). Hooking an encoder layer instead
would be wrong here: the shared encoder runs once per scale, so its hooks fire several times per
forward pass.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from torch import nn

from ..config import ModelConfig
from .coatnet import CoAtNetEncoder
from .heads import ClassifierHead, ProjectionHead, SSLNet


def _upsample_to(x: torch.Tensor, size: torch.Size) -> torch.Tensor:
    if x.shape[-2:] == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class StageFusion(nn.Module):
    """Top-down fusion: normalise each stage map, upsample to the first (shallowest), concat."""

    def __init__(self, channels: list[int]) -> None:
        super().__init__()
        self.norms = nn.ModuleList(LayerNorm2d(c) for c in channels)
        self.out_chs = sum(channels)

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        size = maps[0].shape[-2:]
        return torch.cat([_upsample_to(norm(m), size) for norm, m in zip(self.norms, maps)], dim=1)


class ScaleConcat(nn.Module):
    """Concatenate per-scale maps on channels at the first (full-scale) map's size.

    A module of its own so that Grad-CAM can hook the map the heads pool.
    """

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        size = maps[0].shape[-2:]
        return torch.cat([_upsample_to(m, size) for m in maps], dim=1)


class BusNet(SSLNet):
    """Multiscale-input, multiscale-fusion CoAtNet with a classifier and an SSL projection head.

    Input: float tensor ``[B, in_chans, S, S]`` with ``S = cfg.scales[0]`` (z-scored); the other
    scales are made internally. Build it with :func:`build_model`.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.scales = cfg.scales if cfg.multiscale_input else cfg.scales[:1]
        stages = cfg.fusion_stages if cfg.fusion else (4,)
        self.encoder = CoAtNetEncoder(cfg.variant, cfg.in_chans, img_size=self.scales[0],
                                      out_stages=stages, dilation=cfg.dilation,
                                      drop_path_rate=cfg.drop_path_rate)
        self.fusion = StageFusion([self.encoder.channels[s] for s in stages])
        self.scale_concat = ScaleConcat()
        self.feature_dim = self.fusion.out_chs * len(self.scales)
        self.projector = ProjectionHead(self.feature_dim, cfg.proj_hidden, cfg.proj_dim)
        self.head = ClassifierHead(self.feature_dim, cfg.num_classes, cfg.drop_rate)

    def _check_input(self, x: torch.Tensor) -> None:
        side = self.scales[0]
        if x.ndim != 4 or x.shape[1] != self.cfg.in_chans or tuple(x.shape[-2:]) != (side, side):
            raise ValueError(f"expected input [B, {self.cfg.in_chans}, {side}, {side}], "
                             f"got {list(x.shape)}")

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The fused multiscale map ``[B, feature_dim, h, w]`` that both heads pool."""
        self._check_input(x)
        maps = []
        for s in self.scales:
            xs = x if s == x.shape[-1] else F.interpolate(
                x, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
            maps.append(self.fusion(self.encoder(xs)))
        return self.scale_concat(maps)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder output ``Out`` of eq. 1-2: average-pooled features ``[B, feature_dim]``."""
        return self.feature_map(x).mean(dim=(2, 3))

    def gradcam_target_layers(self) -> list[nn.Module]:
        """Layers for pytorch-grad-cam: the map the heads pool (see the module docstring)."""
        return [self.scale_concat]


def build_model(cfg: ModelConfig | Mapping[str, Any]) -> BusNet:
    """Build a :class:`BusNet` from a :class:`ModelConfig` or its ``asdict`` (as in checkpoints).

    >>> m = build_model(ModelConfig(scales=(64, 32)))
    >>> m(torch.zeros(2, 1, 64, 64)).shape
    torch.Size([2, 2])
    """
    if not isinstance(cfg, ModelConfig):
        names = {f.name for f in dataclasses.fields(ModelConfig)}
        unknown = set(cfg) - names
        if unknown:
            raise KeyError(f"unknown model config key(s) {sorted(unknown)}; known: {sorted(names)}")
        cfg = ModelConfig(**cfg)
    return BusNet(cfg)
