"""Table 1 baselines of paper 000 as timm backbones behind BusNet's interface.

Every baseline is a randomly initialised timm model (no weights are ever loaded: the paper's rows
are pretrained on the same unlabeled ultrasound pool as the proposed model) with one input channel,
its classifier removed (``num_classes=0``: the backbone returns pooled features), and the same two
heads as :class:`~bus_paper.models.busnet.BusNet`: the SimCLR projection head (eq. 3-4) and the
classifier. So the training engine can pretrain and fine-tune either model unchanged.

- ``convnext_tiny``: timm ``convnext_tiny``; features = GAP of the last stage, LayerNorm.
- ``efficientnetv2_s``: timm ``efficientnetv2_s`` (PyTorch padding; ``tf_efficientnetv2_s`` only
  adds TensorFlow "same" padding); features = GAP of conv_head + BN + SiLU.
- ``swin_tiny``: timm ``swin_tiny_patch4_window7_224`` with ``img_size=S`` and
  ``window_size=swin_window(S)``; features = GAP of the final LayerNorm map.
- ``vit_small``: timm ``vit_small_patch16_224`` with ``img_size=S`` (DINO's ViT-S/16);
  features = the final CLS token (after LayerNorm). ``vit_small_p8``: the same with patch 8.
- ``resnet50``: timm ``resnet50`` (SimCLR's backbone); features = GAP of layer4.
- ``mobilenetv2``, ``densenet121``, ``efficientnet_b0`` (papers 001, 004): timm's models of the
  same names (``mobilenetv2_100``); features = GAP of the last (BN-activated) map.
- ``vgg16`` (papers 001, 004): timm ``vgg16``; features = the 4096-d output of its ConvMlp
  ``pre_logits`` (fc6/fc7 as 7x7 and 1x1 convs; timm pools maps smaller than 7x7 up to it).

Input sizes. Swin merges patches of 4 px, then halves the token grid three times, so ``S`` must
be a multiple of 32 (grids S/4, S/8, S/16, S/32). A window must tile every stage grid larger than
itself (timm clamps the window to grids not larger than it, without shift; a window that does not
tile a grid makes timm zero-pad the grid, and real tokens then attend to padding). The largest
such window up to 8 is 7 at 224 px (grids 56/28/14/7: the original), 8 at 128 px (32/16/8, last
stage 4 = one window) and 6 at 96 px (24/12/6, last stage 3 = one window); see
:func:`swin_window`. ViT-S/16 at 96 px sees a 6x6 token grid (36 tokens, the Grad-CAM
resolution), ViT-S/8 a 12x12 grid at ~4x the compute: both are offered, ``vit_small`` (patch 16,
the usual DINO backbone and the paper's "DINO-ViT") is the default.

Grad-CAM (pytorch-grad-cam needs ``[B, C, h, w]`` activations, see
:meth:`BaselineNet.gradcam_reshape_transform`). As for BusNet, the target is the map the heads pool,
hooked once per forward pass: the last conv stage for the CNNs (``stages.3``, ``bn2``,
``layer4``), the final LayerNorm (NHWC map) for Swin. A ViT pools its CLS token only, so the
final patch tokens get no gradient; the target is the LayerNorm at the input of the last block's
attention (``blocks.11.norm1``, as in the grad-cam docs), whose patch tokens reach the CLS token
through that attention.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import timm
import torch
from torch import nn

from .heads import ClassifierHead, ProjectionHead, SSLNet

BASELINES: dict[str, str] = {
    "convnext_tiny": "convnext_tiny",
    "efficientnetv2_s": "efficientnetv2_s",
    "swin_tiny": "swin_tiny_patch4_window7_224",
    "vit_small": "vit_small_patch16_224",
    "vit_small_p8": "vit_small_patch8_224",
    "resnet50": "resnet50",
    # the traditional CNNs of papers 001 and 004 (same wrapper, same heads, same engine)
    "mobilenetv2": "mobilenetv2_100",
    "densenet121": "densenet121",
    "vgg16": "vgg16",
    "efficientnet_b0": "efficientnet_b0",
}
_VIT = ("vit_small", "vit_small_p8")
# Grad-CAM target (a submodule of the timm backbone) per baseline; see the module docstring
GRADCAM_TARGETS: dict[str, str] = {
    "convnext_tiny": "stages.3",
    "efficientnetv2_s": "bn2",
    "swin_tiny": "norm",
    "vit_small": "blocks.11.norm1",
    "vit_small_p8": "blocks.11.norm1",
    "resnet50": "layer4",
    "mobilenetv2": "bn2",
    "densenet121": "features.norm5",
    "vgg16": "features.29",   # last ReLU before the final max-pool
    "efficientnet_b0": "bn2",
}
IN_CHANS = 1  # grayscale ultrasound


def swin_window(img_size: int, largest: int = 8) -> int:
    """The largest Swin window ``<= largest`` that tiles every stage grid larger than itself.

    >>> swin_window(224), swin_window(128), swin_window(96)
    (7, 8, 6)
    """
    if img_size < 32 or img_size % 32:
        raise ValueError(f"Swin needs an image side that is a multiple of 32 (patch 4, three "
                         f"2x merges), got {img_size}")
    grids = [img_size // 4 >> i for i in range(4)]
    return max(w for w in range(1, largest + 1) if all(g <= w or g % w == 0 for g in grids))


def _size_multiple(name: str) -> int:
    """Input sides must be multiples of this (ViT: the patch; the others halve the map 5x)."""
    return {"vit_small": 16, "vit_small_p8": 8}.get(name, 32)


class BaselineNet(SSLNet):
    """A timm backbone with BusNet's heads and interface. Build it with :func:`build_baseline`.

    Input: float tensor ``[B, 1, S, S]`` (z-scored) with ``S = img_size``; with ``dynamic_size``
    any multiple of :attr:`size_multiple` (DINO's smaller local crops; the ViT then interpolates
    its position embedding, Swin builds its attention masks per call).
    """

    def __init__(self, name: str, img_size: int, num_classes: int = 2, proj_hidden: int = 2048,
                 proj_dim: int = 128, drop_path_rate: float = 0.0, drop_rate: float = 0.0,
                 dynamic_size: bool = False) -> None:
        super().__init__()
        if name not in BASELINES:
            raise KeyError(f"unknown baseline {name!r}; choose one of {', '.join(BASELINES)}")
        self.size_multiple = _size_multiple(name)
        if img_size < self.size_multiple or img_size % self.size_multiple:
            raise ValueError(f"{name}: img_size must be a positive multiple of "
                             f"{self.size_multiple}, got {img_size}")
        self.name, self.img_size, self.dynamic_size = name, img_size, dynamic_size
        self._config = {"baseline": name, "img_size": img_size, "num_classes": num_classes,
                        "proj_hidden": proj_hidden, "proj_dim": proj_dim,
                        "drop_path_rate": drop_path_rate, "drop_rate": drop_rate,
                        "dynamic_size": dynamic_size}
        kwargs: dict[str, Any] = {}
        if name == "swin_tiny":
            kwargs = {"img_size": img_size, "window_size": swin_window(img_size),
                      "dynamic_img_size": dynamic_size}
        elif name in _VIT:
            kwargs = {"img_size": img_size, "dynamic_img_size": dynamic_size}
        if drop_path_rate:  # only when asked: DenseNet and VGG have no stochastic depth
            kwargs["drop_path_rate"] = drop_path_rate
        self.backbone = timm.create_model(BASELINES[name], pretrained=False, in_chans=IN_CHANS,
                                          num_classes=0, **kwargs)
        # what encode() returns: num_features, except VGG whose fc6/fc7 (pre_logits) widen it
        self.feature_dim = int(getattr(self.backbone, "head_hidden_size", None)
                               or self.backbone.num_features)
        self.projector = ProjectionHead(self.feature_dim, proj_hidden, proj_dim)
        self.head = ClassifierHead(self.feature_dim, num_classes, drop_rate)

    def config(self) -> dict[str, Any]:
        """What rebuilds this model with :func:`build_baseline_from_config` (for checkpoints);
        the key ``baseline`` (the name) tells it from a BusNet ``ModelConfig``."""
        return dict(self._config)

    def _check_input(self, x: torch.Tensor) -> None:
        side = x.shape[-1] if x.ndim == 4 else None
        ok_side = side == self.img_size or (self.dynamic_size and side % self.size_multiple == 0)
        if x.ndim != 4 or x.shape[1] != IN_CHANS or x.shape[-2] != side or not ok_side:
            allowed = (f"a multiple of {self.size_multiple}" if self.dynamic_size
                       else str(self.img_size))
            raise ValueError(f"{self.name}: expected input [B, {IN_CHANS}, S, S] with S = "
                             f"{allowed}, got {list(x.shape)}")

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features ``[B, feature_dim]`` (see the module docstring's table)."""
        self._check_input(x)
        return self.backbone(x)

    def gradcam_target_layers(self) -> list[nn.Module]:
        """Grad-CAM target per family (see the module docstring)."""
        return [self.backbone.get_submodule(GRADCAM_TARGETS[self.name])]

    def gradcam_reshape_transform(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """``reshape_transform`` for pytorch-grad-cam: None for CNNs (their maps are NCHW)."""
        if self.name == "swin_tiny":
            return _nhwc_to_nchw
        if self.name in _VIT:
            return _TokensToMap(self.backbone.num_prefix_tokens)
        return None


def _nhwc_to_nchw(x: torch.Tensor) -> torch.Tensor:
    """timm's Swin keeps its maps ``[B, H, W, C]``."""
    return x.permute(0, 3, 1, 2)


class _TokensToMap:
    """ViT tokens ``[B, prefix + h*w, C]`` -> patch map ``[B, C, h, w]`` (square inputs)."""

    def __init__(self, prefix: int) -> None:
        self.prefix = prefix

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        patches = x[:, self.prefix:]
        side = round(patches.shape[1] ** 0.5)
        if side * side != patches.shape[1]:
            raise ValueError(f"{patches.shape[1]} patch tokens do not form a square grid")
        return patches.transpose(1, 2).reshape(x.shape[0], x.shape[2], side, side)


def build_baseline(name: str, img_size: int, num_classes: int = 2, proj_hidden: int = 2048,
                   proj_dim: int = 128, drop_path_rate: float = 0.0, drop_rate: float = 0.0,
                   dynamic_size: bool = False) -> BaselineNet:
    """A randomly initialised Table 1 baseline (one of :data:`BASELINES`) for ``img_size`` inputs.

    >>> net = build_baseline("resnet50", 64)
    >>> net(torch.zeros(2, 1, 64, 64)).shape, net.encode(torch.zeros(2, 1, 64, 64)).shape
    (torch.Size([2, 2]), torch.Size([2, 2048]))
    """
    return BaselineNet(name, img_size, num_classes, proj_hidden, proj_dim, drop_path_rate,
                       drop_rate, dynamic_size)


def build_baseline_from_config(cfg: Mapping[str, Any]) -> BaselineNet:
    """Rebuild a baseline from :meth:`BaselineNet.config` (as stored in checkpoints)."""
    known = {"baseline", "img_size", "num_classes", "proj_hidden", "proj_dim", "drop_path_rate",
             "drop_rate", "dynamic_size"}
    if "baseline" not in cfg or set(cfg) - known:
        raise KeyError(f"not a baseline config: need 'baseline', unknown keys "
                       f"{sorted(set(cfg) - known)}; known: {sorted(known)}")
    kwargs = dict(cfg)
    return build_baseline(kwargs.pop("baseline"), **kwargs)
