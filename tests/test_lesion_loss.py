"""Paper 002's lesion-recognition loss (eq. 2-3) against a plain loop, for every variant."""

import math

import pytest
import torch

from bus_paper.papers.p002.loss import VARIANTS, LesionContrastiveLoss


def reference(z, lesion, label, instance, positives, negatives, tau):
    """Eq. 2-3 written out with Python loops and sets (i itself is neither positive nor negative)."""
    n = z.shape[0]
    z = [v.double() for v in z]
    unit = instance if positives == "instance" else lesion

    def s(a, b):
        return float(a @ b / (a.norm() * b.norm())) / tau

    total = 0.0
    for i in range(n):
        pos = [j for j in range(n) if j != i and unit[j] == unit[i]]
        neg = [k for k in range(n) if unit[k] != unit[i]]
        if negatives == "other_class":
            neg = [k for k in neg if label[k] != label[i]]
        elif negatives == "same_class":
            neg = [k for k in neg if label[k] == label[i]]
        elif negatives == "none":
            neg = []
        den = sum(math.exp(s(z[i], z[k])) for k in neg + pos)
        total += sum(-math.log(math.exp(s(z[i], z[j])) / den) for j in pos)
    return total / n


def pk_ids(p, k, g):
    """P lesions x K images, labels random; two views per lesion cycled (K >= 4) or one image
    (K = 2), so that every image appears at least twice (IR needs that)."""
    lesion = torch.arange(p).repeat_interleave(k)
    label = torch.randint(0, 2, (p,), generator=g).repeat_interleave(k)
    instance = lesion * 2 + (torch.arange(k).repeat(p) % 2 if k >= 4 else 0)
    return lesion, label, instance


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("p,k,d,tau", [(2, 2, 3, 1.0), (4, 4, 16, 1.0), (5, 4, 8, 0.1),
                                       (3, 6, 32, 0.5)])
def test_matches_the_equations(variant, p, k, d, tau):
    g = torch.Generator().manual_seed(p * 1000 + k * 10 + d)
    z = torch.randn(p * k, d, generator=g)
    lesion, label, instance = pk_ids(p, k, g)
    loss = LesionContrastiveLoss.for_variant(variant, temperature=tau)
    got = loss(z, lesion, label, instance).item()
    want = reference(z, lesion.tolist(), label.tolist(), instance.tolist(), *VARIANTS[variant], tau)
    assert got == pytest.approx(want, rel=1e-5, abs=1e-5)


def test_shuffled_batch_and_uneven_lesions():
    """Order does not matter; lesions may have different sizes (3 views, 2 copies, ...)."""
    g = torch.Generator().manual_seed(7)
    lesion = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 3])
    label = torch.tensor([1, 1, 1, 0, 0, 0, 0, 0, 0, 1, 1])
    instance = torch.tensor([0, 1, 0, 2, 2, 3, 3, 4, 4, 5, 5])
    z = torch.randn(len(lesion), 12, generator=g)
    perm = torch.randperm(len(lesion), generator=g)
    for variant, (pos, neg) in VARIANTS.items():
        if variant == "ir":
            continue  # image 1 appears once: IR has no positive for it (see the error test)
        loss = LesionContrastiveLoss(pos, neg)
        a = loss(z, lesion, label, instance)
        b = loss(z[perm], lesion[perm], label[perm], instance[perm])
        assert a.item() == pytest.approx(b.item(), rel=1e-6)
        want = reference(z, lesion.tolist(), label.tolist(), instance.tolist(), pos, neg, 1.0)
        assert a.item() == pytest.approx(want, rel=1e-5)


def test_ir_treats_the_other_view_as_negative_and_lr_as_positive():
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])  # copies equal, views orthogonal
    lesion = torch.tensor([0, 0, 0, 0])
    instance = torch.tensor([0, 0, 1, 1])
    ir = LesionContrastiveLoss("instance", "all")(z, lesion, instance=instance)
    # IR: each anchor's copy (cos 1) against the other view (cos 0, twice)
    assert ir.item() == pytest.approx(-math.log(math.e / (math.e + 2)), rel=1e-6)
    pos, neg = LesionContrastiveLoss("lesion", "all").masks(lesion)
    assert pos.sum().item() == 12 and neg.sum().item() == 0


def test_no_negatives_only_equalises_positives():
    """LR(−): with one positive per anchor eq. 2 is log(1) = 0 whatever the features."""
    z = torch.randn(6, 5, requires_grad=True)
    lesion = torch.tensor([0, 0, 1, 1, 2, 2])
    loss = LesionContrastiveLoss("lesion", "none")(z, lesion)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    loss.backward()
    assert z.grad.abs().max().item() < 1e-6


def test_gradient_scale_invariance_and_bf16_autocast():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(8, 32, generator=g, requires_grad=True)
    lesion = torch.arange(4).repeat_interleave(2)
    loss = LesionContrastiveLoss("lesion", "all")
    ref = loss(z, lesion)
    assert loss(3 * z, lesion).item() == pytest.approx(ref.item(), rel=1e-5)   # cosine
    with torch.autocast("cpu", torch.bfloat16):
        out = loss(z.bfloat16(), lesion)
    assert out.dtype == torch.float32 and out.item() == pytest.approx(ref.item(), rel=2e-2)
    ref.backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_aligned_views_give_lower_loss():
    g = torch.Generator().manual_seed(1)
    lesion = torch.arange(6).repeat_interleave(2)
    z = torch.randn(12, 16, generator=g)
    tight = z[::2].repeat_interleave(2, dim=0)
    for variant in ("lr", "lr_minus_sc", "lr_minus_dc"):
        loss = LesionContrastiveLoss.for_variant(variant)
        label = torch.tensor([0, 1, 0, 1, 0, 1]).repeat_interleave(2)
        assert loss(tight, lesion, label) < loss(z, lesion, label)


@pytest.mark.parametrize("kwargs,match", [
    ({"lesion": [0, 1, 1, 2, 2, 2]}, "no positive"),                        # lesion 0 appears once
    ({"variant": "ir", "instance": [0, 1, 2, 2, 3, 3]}, "no positive"),   # images 0, 1 once
    ({"variant": "lr_minus_sc", "label": None}, "label is required"),
    ({"variant": "ir", "instance": None}, "instance is required"),
    ({"variant": "lr_minus_dc", "label": [0, 1, 1, 1, 0, 0]}, "more than one label"),
    ({"variant": "ir", "instance": [0, 0, 1, 1, 1, 1]}, "more than one lesion"),
    ({"lesion": [0, 0, 1, 1]}, "one entry per embedding"),
    ({"lesion": [0.0, 0.0, 1.0, 1.0, 2.0, 2.0]}, "integer ids"),
    ({"z": (6,)}, r"features \[N, D\]"),
    ({"z": (1, 4), "lesion": [0]}, "at least 2"),
])
def test_argument_errors(kwargs, match):
    variant = kwargs.get("variant", "lr")
    z = torch.randn(*kwargs.get("z", (6, 4)))
    lesion = torch.tensor(kwargs.get("lesion", [0, 0, 1, 1, 2, 2]))
    label = kwargs.get("label", [0, 0, 1, 1, 0, 0])
    label = None if label is None else torch.tensor(label)
    instance = kwargs.get("instance", [0, 0, 1, 1, 2, 2])
    instance = None if instance is None else torch.tensor(instance)
    with pytest.raises(ValueError, match=match):
        LesionContrastiveLoss.for_variant(variant)(z, lesion, label, instance)


@pytest.mark.parametrize("args,match", [
    (("view", "all"), "positives"), (("lesion", "some"), "negatives"),
    (("lesion", "all", 0.0), "temperature"),
])
def test_bad_construction(args, match):
    with pytest.raises(ValueError, match=match):
        LesionContrastiveLoss(*args)
    with pytest.raises(ValueError, match="baseline"):
        LesionContrastiveLoss.for_variant("baseline")
