"""Batched augmentations: shapes, value range, determinism, distinct SSL views."""

import pytest
import torch

from bus_paper.augment import AUGMENT_KINDS, RandomElastic, build_augment


def phantom_batch(b: int = 8, side: int = 48) -> torch.Tensor:
    """Bright discs on a dark noisy background: asymmetric so that flips/rotations show."""
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    imgs = []
    for i in range(b):
        cy, cx = side * 0.3 + i, side * 0.6 - i
        disc = ((yy - cy) ** 2 + (xx - cx) ** 2 < (side / 6) ** 2).float()
        imgs.append(0.2 + 0.6 * disc + 0.05 * torch.rand(side, side, generator=g))
    return torch.stack(imgs)[:, None].clamp(0, 1)


@pytest.mark.parametrize("kind", AUGMENT_KINDS)
def test_shape_range_and_determinism(kind):
    x = phantom_batch()
    aug = build_augment(kind)
    torch.manual_seed(3)
    a = aug(x)
    torch.manual_seed(3)
    b = aug(x)
    assert a.shape == x.shape and a.dtype == x.dtype
    assert a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b)
    if kind == "none":
        assert torch.equal(a, x)
    else:
        assert not torch.equal(a, x)


@pytest.mark.parametrize("kind", ["ssl", "ssl_crop"])
def test_ssl_views_differ(kind):
    x = phantom_batch()
    aug = build_augment(kind)
    torch.manual_seed(0)
    v1, v2 = aug(x), aug(x)
    per_image = (v1 - v2).abs().flatten(1).mean(1)
    assert (per_image > 1e-3).all()        # every pair of views differs


def test_reduced_is_flips_only():
    x = phantom_batch()
    torch.manual_seed(0)
    out = build_augment("reduced")(x)
    for o, i in zip(out, x):
        candidates = [i, i.flip(-1), i.flip(-2), i.flip(-1).flip(-2)]
        assert any(torch.equal(o, c) for c in candidates)


def test_elastic_is_a_small_smooth_warp():
    x = phantom_batch()
    torch.manual_seed(0)
    out = RandomElastic(magnitude=0.03, p=1.0)(x)
    assert out.shape == x.shape and not torch.equal(out, x)
    # a displacement of <= 3 % of the side keeps the image close to the original
    assert (out - x).abs().mean() < 0.1
    torch.manual_seed(0)
    assert torch.equal(RandomElastic(p=0.0)(x), x)


def test_errors():
    with pytest.raises(ValueError, match="unknown augmentation"):
        build_augment("heavy")
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        build_augment("ssl")(torch.rand(1, 32, 32))
    with pytest.raises(ValueError, match="float"):
        build_augment("ssl")(torch.zeros(2, 1, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="p <= 1"):
        RandomElastic(p=1.5)
