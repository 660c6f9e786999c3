"""NT-Xent (paper 000, eq. 5-7) against a literal loop implementation and against lightly."""

import math

import pytest
import torch

from bus_paper.losses import NTXentLoss


def reference_ntxent(z_i: torch.Tensor, z_j: torch.Tensor, tau: float) -> float:
    """Eq. 5-7 written out: points 2k-1, 2k (1-based) are the two views of image k."""
    n = z_i.shape[0]
    r = [None] * (2 * n)
    for k in range(n):
        r[2 * k], r[2 * k + 1] = z_i[k].double(), z_j[k].double()

    def cm(a, b):  # eq. 7
        return float(a @ b / (a.norm() * b.norm()))

    def ell(i, j):  # eq. 6
        den = sum(math.exp(cm(r[i], r[k]) / tau) for k in range(2 * n) if k != i)
        return -math.log(math.exp(cm(r[i], r[j]) / tau) / den)

    return sum(ell(2 * k, 2 * k + 1) + ell(2 * k + 1, 2 * k) for k in range(n)) / (2 * n)  # eq. 5


@pytest.mark.parametrize("n,d,tau", [(2, 3, 0.07), (5, 16, 0.07), (8, 128, 0.5), (3, 7, 1.0)])
def test_matches_equations(n, d, tau):
    g = torch.Generator().manual_seed(n * 100 + d)
    z_i, z_j = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    got = NTXentLoss(tau)(z_i, z_j).item()
    assert got == pytest.approx(reference_ntxent(z_i, z_j, tau), rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("n,d,tau", [(4, 32, 0.07), (16, 128, 0.2)])
def test_matches_lightly(n, d, tau):
    from lightly.loss import NTXentLoss as LightlyNTXent

    g = torch.Generator().manual_seed(n + d)
    z_i, z_j = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    ours = NTXentLoss(tau)(z_i, z_j)
    theirs = LightlyNTXent(temperature=tau)(z_i, z_j)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)


def test_gradient_and_bf16_autocast():
    g = torch.Generator().manual_seed(0)
    z_i = torch.randn(6, 32, generator=g, requires_grad=True)
    z_j = torch.randn(6, 32, generator=g)
    loss = NTXentLoss(0.07)
    ref = loss(z_i, z_j)
    with torch.autocast("cpu", torch.bfloat16):
        # a bf16 producer, as the projection head is under autocast
        out = loss(z_i.bfloat16(), z_j.bfloat16())
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(ref.item(), rel=2e-2)  # only the bf16 inputs are rounded
    ref.backward()
    assert z_i.grad is not None and torch.isfinite(z_i.grad).all() and z_i.grad.abs().sum() > 0


def test_aligned_views_give_lower_loss():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(8, 16, generator=g)
    loss = NTXentLoss(0.1)
    assert loss(z, z) < loss(z, torch.randn(8, 16, generator=g))
    # scale invariance of the cosine similarity
    assert loss(z, 3 * z).item() == pytest.approx(loss(z, z).item(), rel=1e-6)


@pytest.mark.parametrize("shapes,match", [
    (((4, 8), (5, 8)), "same shape"),
    (((1, 8), (1, 8)), "at least 2"),
    (((4, 8, 2), (4, 8, 2)), r"\[N, D\]"),
    (((8,), (8,)), r"\[N, D\]"),
])
def test_argument_errors(shapes, match):
    with pytest.raises(ValueError, match=match):
        NTXentLoss()(torch.randn(*shapes[0]), torch.randn(*shapes[1]))


@pytest.mark.parametrize("tau", [0.0, -0.1])
def test_bad_temperature(tau):
    with pytest.raises(ValueError, match="temperature"):
        NTXentLoss(tau)
