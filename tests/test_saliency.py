"""Saliency, SmoothGrad and SHAP (bus_paper.explain.saliency) on models whose explanations are known."""

import doctest

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from bus_paper.data.preprocess import Normalizer
from bus_paper.explain import saliency as sal

S = 16
R, C = 5, 9      # the one pixel the model reads
W = 3.0


class OnePixel(nn.Module):
    """logit_1 = W * x[R, C], logit_0 = -logit_1: every explanation lives on one pixel."""

    def forward(self, x):
        v = W * x[:, 0, R, C]
        return torch.stack([-v, v], dim=1)


class Square(nn.Module):
    """A conv model whose logits read the mean of a tanh'd 4x4 square only (non-linear, so noise
    changes its gradient), with a Grad-CAM target."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1)
        self.cam = nn.Identity()
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([-1.0, 1.0]).view(2, 1, 1, 1))
            self.conv.bias.zero_()

    def forward(self, x):
        m = self.cam(torch.tanh(self.conv(x)))
        return m[:, :, 2:6, 8:12].mean(dim=(2, 3))

    def gradcam_target_layers(self):
        return [self.cam]


def square_mask(n):
    m = np.zeros((n, S, S), dtype=bool)
    m[:, 2:6, 8:12] = True
    return m


def test_doctests():
    assert doctest.testmod(sal).failed == 0


def test_saliency_and_smoothgrad_of_a_one_pixel_model_sit_on_that_pixel():
    x = torch.randn(3, 1, S, S)
    for maps in (sal.saliency(OnePixel(), x, [1, 0, 1]),
                 sal.smoothgrad(OnePixel(), x, [1, 0, 1], n=4, noise=0.2)):
        assert maps.shape == (3, S, S) and maps.dtype == np.float32
        expected = np.zeros((3, S, S), dtype=np.float32)
        expected[:, R, C] = W           # |d logit / dx| is W for both classes
        np.testing.assert_allclose(maps, expected, atol=1e-6)


def test_class_gradients_are_per_image_and_per_target():
    x = torch.randn(2, 1, S, S)
    g = sal.class_gradients(OnePixel(), x, [1, 0])
    assert g[0, 0, R, C] == W and g[1, 0, R, C] == -W
    with pytest.raises(ValueError, match="target classes"):
        sal.saliency(OnePixel(), x, [1, 0, 1])
    with pytest.raises(ValueError, match="targets"):
        sal.saliency(OnePixel(), x, [1, 2])


def test_smoothgrad_is_seeded_and_averages_noise_on_a_nonlinear_model():
    x = torch.randn(2, 1, S, S) * 2
    a = sal.smoothgrad(Square(), x, 1, n=3, noise=0.3, seed=1)
    np.testing.assert_array_equal(a, sal.smoothgrad(Square(), x, 1, n=3, noise=0.3, seed=1))
    assert not np.array_equal(a, sal.smoothgrad(Square(), x, 1, n=3, noise=0.3, seed=2))
    np.testing.assert_allclose(sal.smoothgrad(Square(), x, 1, n=2, noise=0.0),
                               sal.saliency(Square(), x, 1), rtol=1e-5)
    outside = ~square_mask(2)
    assert (a[outside] == 0).all() and (a[~outside] > 0).all()
    with pytest.raises(ValueError, match="n >= 1"):
        sal.smoothgrad(Square(), x, 1, n=0)


def test_shap_of_a_one_pixel_linear_model_is_w_times_x_minus_background():
    """For a linear model expected gradients are exact: phi = W * (x - background) at the pixel
    (one background image, so every draw uses it), 0 elsewhere, signed by the class."""
    torch.manual_seed(0)
    x = torch.randn(3, 1, S, S)
    bg = torch.randn(1, 1, S, S)
    state = np.random.get_state()
    phi = sal.shap_values(OnePixel(), x, [1, 0, 1], bg, nsamples=5, seed=3)
    assert np.array_equal(np.random.get_state()[1], state[1])   # numpy's global RNG restored
    expected = np.zeros((3, S, S), dtype=np.float32)
    delta = (x[:, 0, R, C] - bg[0, 0, R, C]).numpy() * W
    expected[:, R, C] = delta * np.array([1, -1, 1])
    np.testing.assert_allclose(phi, expected, atol=1e-5)
    # efficiency: the values add up to logit(x) - logit(background)
    logits = OnePixel()(x).detach().numpy()
    base = OnePixel()(bg).detach().numpy()[0]
    np.testing.assert_allclose(phi.sum(axis=(1, 2)),
                               logits[[0, 1, 2], [1, 0, 1]] - base[[1, 0, 1]], atol=1e-5)


def test_explanation_maps_are_non_negative_and_localise_the_square():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (5, S, S), dtype=np.uint8)
    bg = rng.integers(0, 255, (4, S, S), dtype=np.uint8)
    maps = sal.explanation_maps(Square(), images, Normalizer(0.5, 0.25), [1, 1, 0, 1, 0], bg,
                                smoothgrad_n=3, shap_nsamples=6, batch_size=2)
    assert list(maps) == list(sal.METHODS)
    masks = square_mask(5)
    for name, m in maps.items():
        assert m.shape == (5, S, S) and (m >= 0).all(), name
        # the pixel methods see nothing outside the square the model reads; Grad-CAM weighs the
        # whole activation map by pooled gradients, so it need not
        assert name == "Grad-CAM" or not m[:, ~masks[0]].any(), name
    scores = sal.method_scores(maps, masks, pd.DataFrame({"path": [f"{i}.png" for i in range(5)]}))
    assert len(scores) == 5 * len(sal.METHODS) and set(scores["method"]) == set(sal.METHODS)
    gradient_based = scores[scores["method"].isin(["saliency", "SmoothGrad"])]
    np.testing.assert_allclose(gradient_based["energy"], 1, rtol=1e-6)
    assert (gradient_based["hit"] == 1).all()
    assert scores["path"].iloc[0] == "0.png"
    with pytest.raises(ValueError, match="unknown method"):
        sal.explanation_maps(Square(), images, Normalizer(0.5, 0.25), 1, bg, methods=["LIME"])
    with pytest.raises(ValueError, match="uint8"):
        sal.explanation_maps(Square(), images.astype(float), Normalizer(0.5, 0.25), 1, bg)


def test_mask_share_against_a_hand_computation():
    m = np.zeros((4, 4))
    m[0, 0], m[0, 1], m[3, 3] = 2.0, 1.0, 1.0
    mask = np.zeros((4, 4), dtype=bool)
    mask[0, :2] = True
    assert sal.mask_share(m, mask) == pytest.approx(3 / 4)
    assert sal.mask_share(np.ones((4, 4)), mask) == pytest.approx(mask.mean())  # chance level
    assert np.isnan(sal.mask_share(np.zeros((4, 4)), mask))
    with pytest.raises(ValueError, match="non-negative"):
        sal.mask_share(-m, mask)
    with pytest.raises(ValueError, match="non-negative"):
        sal.method_scores({"SHAP": -m[None]}, mask[None])


def test_display_scaling():
    maps = np.zeros((2, 10, 10), dtype=np.float32)
    maps[0, 0, 0] = 100.0       # one extreme pixel
    maps[0, 1:, :] = 1.0
    d = sal.for_display(maps, q=90)
    assert d[0, 0, 0] == 1 and d[0, 5, 5] == 1 and (d[1] == 0).all()
    assert d.min() >= 0 and d.max() <= 1


def test_summary_text_orders_methods_and_compares_with_chance():
    summary = pd.DataFrame({"dataset": ["busi"] * 2, "method": ["saliency", "Grad-CAM"],
                            "images": [10, 10], "energy": [20.0, 40.0], "energy_lo": [15.0, 30.0],
                            "energy_hi": [25.0, 50.0], "chance": [18.0, 18.0]})
    (line,) = sal.summary_text(summary)
    assert line.index("Grad-CAM 40.0%") < line.index("saliency 20.0%")
    assert "interval above chance" in line and "interval contains chance" in line
