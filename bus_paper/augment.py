"""Batched augmentations, run as tensor ops on the training device (kornia + one own op).

Input and output: float tensor ``[B, 1, H, W]`` in [0, 1] (before z-scoring), same size. Each
image of a batch gets its own random parameters; everything is drawn from torch's RNG, so a batch is
reproducible after ``torch.manual_seed``. Build one with :func:`build_augment`.

Recipes (paper 000, "Self-supervised contrastive learning" and "Implementation details"; where the
paper gives no probability or strength, the choice is ours and marked *):

=========== =============================================================================
kind        operations
=========== =============================================================================
ssl         h-flip p=.5*, v-flip p=.5*, rotation U(-30, 30) deg p=1*, Gaussian blur sigma
            U(0.1, 2) p=.5* (SimCLR's), brightness +-0.2* p=0.1, contrast x[0.8, 1.2]* p=0.1,
            intensity jitter = gamma U(0.6, 1.6)* p=0.8* (the paper's "colour jitter": on
            grayscale, hue and saturation do not exist; a gamma change alters tone the way
            gain / TGC / dynamic-range settings do across scanners)
ssl_crop    ssl + a mild random resized crop first (zoom 1-1.6x, i.e. 40-100 % of the area,
            shift up to 10 %, p=1). Not in the paper (hence not the default): SimCLR found
            cropping the single most important view transform; without it two views of an
            image share their exact layout and intensity histogram up to the operations above,
            which can make instance discrimination easy. Offered for that ablation.
full        h-flip p=.5*, v-flip p=.5*, rotation U(-30, 30) deg p=1*, scaling x[0.8, 1.2]*
            p=0.5, elastic deformation p=0.5* (:class:`RandomElastic`), brightness +-0.1*
            p=.5*, contrast x[0.9, 1.1]* p=.5*  (fine-tuning)
reduced     h-flip p=.5, v-flip p=.5 only: the "restricted augmentation" ablation keeps the
            label-preserving symmetries and drops every intensity and deformation change
none        identity
=========== =============================================================================

Geometric operations fill with 0, the value of the padding around ultrasound images.
"""

from __future__ import annotations

import kornia.augmentation as K
import torch
import torch.nn.functional as F
from torch import nn

AUGMENT_KINDS = ("ssl", "ssl_crop", "full", "reduced", "none")


class RandomElastic(nn.Module):
    """Elastic deformation from a coarse random displacement grid, upsampled and applied with
    ``grid_sample``.

    Equivalent in effect to the classic Gaussian-smoothed per-pixel noise (Simard et al., 2003)
    but ~50x cheaper on CPU: kornia's ``RandomElasticTransform`` blurs a full-resolution noise
    field with a 63x63 kernel (~120 ms per batch of 64 at 128 px on 2 cores), whereas here
    a ``grid x grid`` field of uniform displacements is bicubically upsampled (a smooth field
    with a correlation length of ~1/(grid-1) of the side).

    Args:
        magnitude: largest displacement of a control point, as a fraction of the image side.
        grid: control points per side.
        p: probability of deforming each image.
    """

    def __init__(self, magnitude: float = 0.03, grid: int = 5, p: float = 0.5) -> None:
        super().__init__()
        if not 0 <= p <= 1 or magnitude < 0 or grid < 2:
            raise ValueError(f"need 0 <= p <= 1, magnitude >= 0, grid >= 2 "
                             f"(got p={p}, magnitude={magnitude}, grid={grid})")
        self.magnitude, self.grid, self.p = magnitude, grid, p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        apply = torch.rand(b, device=x.device) < self.p
        # normalised coordinates span 2 per side, so a fraction f of the side is 2f
        disp = torch.rand(b, 2, self.grid, self.grid, device=x.device) * 2 - 1
        disp = disp * 2 * self.magnitude
        if not apply.any():
            return x
        disp = F.interpolate(disp[apply], size=(h, w), mode="bicubic", align_corners=True)
        theta = torch.eye(2, 3, device=x.device, dtype=x.dtype).expand(int(apply.sum()), 2, 3)
        base = F.affine_grid(theta, [int(apply.sum()), 1, h, w], align_corners=False)
        grid = base + disp.permute(0, 2, 3, 1).to(x.dtype)
        out = x.clone()
        out[apply] = F.grid_sample(x[apply], grid, mode="bilinear", padding_mode="zeros",
                                   align_corners=False)
        return out

    def extra_repr(self) -> str:
        return f"magnitude={self.magnitude}, grid={self.grid}, p={self.p}"


def _flips() -> list[nn.Module]:
    return [K.RandomHorizontalFlip(p=0.5), K.RandomVerticalFlip(p=0.5)]


def _ssl() -> list[nn.Module]:
    return _flips() + [
        K.RandomRotation(30.0, p=1.0),
        K.RandomGaussianBlur(9, (0.1, 2.0), p=0.5),
        K.RandomBrightness((0.8, 1.2), p=0.1),     # kornia: adds (factor - 1), clips to [0, 1]
        K.RandomContrast((0.8, 1.2), p=0.1),
        K.RandomGamma((0.6, 1.6), p=0.8),
    ]


def _recipe(kind: str) -> list[nn.Module]:
    if kind == "ssl":
        return _ssl()
    if kind == "ssl_crop":
        return [K.RandomAffine(0.0, translate=(0.1, 0.1), scale=(1.0, 1.6), p=1.0)] + _ssl()
    if kind == "full":
        return _flips() + [
            K.RandomRotation(30.0, p=1.0),
            K.RandomAffine(0.0, scale=(0.8, 1.2), p=0.5),
            RandomElastic(magnitude=0.03, grid=5, p=0.5),
            K.RandomBrightness((0.9, 1.1), p=0.5),
            K.RandomContrast((0.9, 1.1), p=0.5),
        ]
    if kind == "reduced":
        return _flips()
    return []


class BatchAugment(nn.Module):
    """A named augmentation recipe applied to a ``[B, 1, H, W]`` batch in [0, 1]; no gradients."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        if kind not in AUGMENT_KINDS:
            raise ValueError(f"unknown augmentation {kind!r}; "
                             f"choose one of {', '.join(AUGMENT_KINDS)}")
        self.kind = kind
        self.ops = nn.Sequential(*_recipe(kind))

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or not x.is_floating_point():
            raise ValueError(f"expected a float batch [B, C, H, W] in [0, 1], got "
                             f"{x.dtype} {list(x.shape)}")
        return self.ops(x)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}"


def build_augment(kind: str) -> BatchAugment:
    """The augmentation recipe ``kind`` (one of :data:`AUGMENT_KINDS`; see the module docstring).

    >>> build_augment("ssl")(torch.rand(4, 1, 64, 64)).shape
    torch.Size([4, 1, 64, 64])
    """
    return BatchAugment(kind)
