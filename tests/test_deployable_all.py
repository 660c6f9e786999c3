"""Issue 19 items 1 and 3: `bus-paper train --dataset all` trains one model on the pooled splits of
every labelled site, calibrates it on the pooled validation parts, and `predict` applies that
calibration (probabilities and threshold on one scale, the same decisions)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from tiny_profile import write_tiny  # noqa: E402 (tests/, on sys.path under pytest)

from bus_paper.cli import main
from bus_paper.core.calibration import expected_calibration_error, fit_temperature, scale


@pytest.fixture(scope="module")
def all_sites(tmp_path_factory):
    base = tmp_path_factory.mktemp("all_sites")
    profile = write_tiny(base)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BUS_PAPER_RUNS", str(base / "runs"))
        assert main(["train", "--profile", str(profile), "--dataset", "all", "--seed", "0"]) == 0
        yield base, base / "runs" / "models" / "tiny_all_seed0.pt"


def test_all_sites_model_is_pooled_calibrated_and_named(all_sites):
    _, model = all_sites
    state = torch.load(model, weights_only=True)
    assert state["recipe"]["dataset"] == "all" and state["recipe"]["pretrained"]
    assert state["sites"] == ["busi", "udiat", "busbra", "busuclm"]
    assert state["dataset"] == "busbra+busi+busuclm+udiat"  # trained on every site's train part
    t, thr, raw = state["temperature"], state["threshold"], state["threshold_uncalibrated"]
    assert 0.05 <= t <= 20 and np.isfinite(thr)
    assert thr == pytest.approx(float(scale([raw], t)[0]))
    assert set(state["ece_test"]) == {"before", "after"}


def test_predict_applies_the_temperature_and_keeps_the_decisions(all_sites, tmp_path):
    _, model = all_sites
    rng = np.random.default_rng(0)
    images = tmp_path / "images"
    images.mkdir()
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (80, 90), dtype=np.uint8)).save(images / f"{i}.png")
    out = tmp_path / "p.csv"
    assert main(["predict", "--checkpoint", str(model), str(images), "--out", str(out)]) == 0
    df = pd.read_csv(out)
    state = torch.load(model, weights_only=True)
    # the same images through an uncalibrated copy of the model
    raw_model = tmp_path / "raw.pt"
    torch.save({k: v for k, v in state.items() if k != "temperature"}
               | {"threshold": state["threshold_uncalibrated"]}, raw_model)
    out_raw = tmp_path / "raw.csv"
    assert main(["predict", "--checkpoint", str(raw_model), str(images), "--out",
                 str(out_raw)]) == 0
    raw = pd.read_csv(out_raw)
    np.testing.assert_allclose(df.prob_malignant, scale(raw.prob_malignant, state["temperature"]),
                               atol=1e-6)
    assert (df.prediction == raw.prediction).all()
    np.testing.assert_allclose(df.threshold, state["threshold"])


def test_temperature_scaling_fixes_an_overconfident_model():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 2000)
    p_true = np.where(y == 1, rng.beta(3, 2, y.size), rng.beta(2, 3, y.size))
    over = scale(p_true, 0.25)   # logits x 4: far too sure of itself
    t = fit_temperature(y, over)
    assert t > 2
    assert expected_calibration_error(y, scale(over, t)) < expected_calibration_error(y, over) / 2


def test_no_pretrain_is_refused_for_the_all_sites_model(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BUS_PAPER_RUNS", str(tmp_path / "runs"))
    assert main(["train", "--profile", "smoke", "--dataset", "all", "--seed", "0",
                 "--no-pretrain"]) == 2
    assert "--no-pretrain is not available" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "models").exists()   # refused before any work
