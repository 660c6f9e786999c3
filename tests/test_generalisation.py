"""Cross-site transfer, pooled training and calibration (bus_paper.papers.beyond.generalisation)."""

import numpy as np
import pandas as pd
import pytest
import torch

from bus_paper.config import load_profile
from bus_paper.metrics import binary_metrics
from bus_paper.papers.beyond import generalisation as gen

SMOKE = load_profile("smoke").replace(**{"finetune.epochs": 1})


# ----------------------------------------------------------------------------- calibration
def _ece_reference(y, p, bins=10):
    """Plain loop: ECE as the textbook defines it."""
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        inside = [(yy, pp) for yy, pp in zip(y, p)
                  if lo <= pp < hi or (b == bins - 1 and pp == 1.0)]
        if inside:
            ys, ps = zip(*inside)
            total += len(inside) * abs(np.mean(ys) - np.mean(ps))
    return total / len(y)


def test_ece_matches_a_plain_loop_and_the_reliability_table():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(5, 300))
        p = rng.random(n)
        p[:2] = (0.0, 1.0)                        # the edges belong to the first and last bin
        y = (rng.random(n) < p ** 2).astype(int)  # miscalibrated on purpose
        assert gen.expected_calibration_error(y, p) == pytest.approx(_ece_reference(y, p))
        r = gen.reliability(y, p).dropna()
        assert r["count"].sum() == n
        via_table = (r["count"] * (r["observed"] - r["mean_p"]).abs()).sum() / n
        assert gen.expected_calibration_error(y, p) == pytest.approx(via_table)


def test_ece_is_zero_when_frequencies_match_and_checks_shapes():
    y = np.array([0, 1] * 50)                      # every prediction 0.5, half of them positive
    assert gen.expected_calibration_error(y, np.full(100, 0.5)) == pytest.approx(0.0)
    assert gen.expected_calibration_error(y, np.full(100, 0.95)) == pytest.approx(0.45)
    with pytest.raises(ValueError, match="one shape"):
        gen.expected_calibration_error([0, 1], [0.5])


def test_temperature_recovers_a_known_overconfidence_and_keeps_the_ranking():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 2, 20000)
    y = (rng.random(z.size) < 1 / (1 + np.exp(-z))).astype(int)  # calibrated at logit z
    p_over = 1 / (1 + np.exp(-3 * z))                               # 3x overconfident
    t = gen.fit_temperature(y, p_over)
    assert t == pytest.approx(3.0, rel=0.08)
    scaled = gen.scale(p_over, t)
    assert gen.expected_calibration_error(y, scaled) < gen.expected_calibration_error(y, p_over) / 3
    inside = (p_over > 1e-5) & (p_over < 1 - 1e-5)   # beyond, both clip to the same extremes
    assert np.array_equal(np.argsort(scaled[inside], kind="stable"),
                          np.argsort(p_over[inside], kind="stable"))
    np.testing.assert_allclose(gen.scale(p_over, 1.0), p_over, atol=1e-6)
    with pytest.raises(ValueError, match="both classes"):
        gen.fit_temperature([1, 1, 1], [0.2, 0.5, 0.9])


def _fake_run(train, test, seed, y, p, thr=0.5, row="m"):
    preds = pd.DataFrame({"path": [f"{test}/{i}" for i in range(len(y))], "split": "test",
                          "label": y, "prob": p})
    return {"row": row, "train": train, "dataset": test, "seed": seed, "threshold": thr,
            "predictions": preds}


def test_cross_site_and_calibration_tables_group_by_train_and_test_site():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 80)
    good = np.clip(0.5 * y + 0.25 + rng.normal(0, 0.1, 80), 0, 1)   # AUC ~1
    noise = rng.random(80)                                          # AUC ~0.5
    transfers = [_fake_run("a", "a", s, y, good) for s in (0, 1)] + \
                [_fake_run("b", "a", s, y, noise) for s in (0, 1)]
    t = gen.cross_site_table(transfers, n_boot=100).set_index("train")
    assert t.loc["a", "within"] and not t.loc["b", "within"]
    assert t.loc["a", "auc"] > 95 and 30 < t.loc["b", "auc"] < 70
    assert t.loc["a", "auc_lo"] <= t.loc["a", "auc"] <= t.loc["a", "auc_hi"]
    assert gen.matrix(t.reset_index(), "auc", ["a", "b"]).shape == (2, 1)
    # the temperature comes from the *training* site's validation predictions
    val = lambda p: {"predictions": pd.DataFrame({"split": "val", "label": y, "prob": p})}
    sources = {("m", "a", s): val(good) for s in (0, 1)} | {("m", "b", s): val(noise) for s in (0, 1)}
    c = gen.calibration_table(transfers, sources, n_boot=50).set_index("train")
    assert c.loc["b", "temperature"] > c.loc["a", "temperature"]   # noise: flatten towards 0.5
    assert c.loc["b", "ece_after"] < c.loc["b", "ece_before"]
    with pytest.raises(KeyError):
        gen.calibration_table(transfers, {("m", "a", 0): val(good)}, n_boot=10)


def _site_matrix(rng, rows=("m",)):
    """Two sites, two seeds: each site's own model ranks its images well, the other site's
    model is noise; every run records its AUC as the fine-tuning results do."""
    from sklearn.metrics import roc_auc_score
    ys = {d: rng.integers(0, 2, 60) for d in ("a", "b")}
    out = []
    for row in rows:
        for tr in ("a", "b"):
            for te in ("a", "b"):
                for s in (0, 1):
                    y = ys[te]
                    p = (np.clip(0.5 * y + 0.25 + rng.normal(0, 0.1, y.size), 0, 1) if tr == te
                         else rng.random(y.size))
                    t = _fake_run(tr, te, s, y, p, row=row)
                    t["metrics"] = {"auc": roc_auc_score(y, p)}
                    out.append(t)
    return out


def test_transfer_drops_pair_each_foreign_model_with_the_sites_own():
    from bus_paper.papers.p000.experiments import paired_difference
    transfers = _site_matrix(np.random.default_rng(3), rows=("m", "n"))
    d = gen.transfer_drops(transfers, ["a", "b"], n_boot=200)
    assert len(d) == 4 and set(d["model"]) == {"m", "n"}          # 2 rows x 2 off-diagonal cells
    assert (d["95% CI high"] < 0).all()                            # noise loses to the own model
    one = d[(d["model"] == "n") & (d["tested on"] == "a")].iloc[0]
    assert one["fine-tuned on"] == "b"
    pick = lambda tr: [t for t in transfers if t["row"] == "n" and t["train"] == tr
                       and t["dataset"] == "a"]
    ref = paired_difference(pick("b"), pick("a"), "auc", n_boot=200)
    assert (one["AUC other site − own site"], one["95% CI low"], one["95% CI high"]) == \
        (ref["diff"], ref["lo"], ref["hi"])


def test_pooled_view_findings_and_reliability_curves_read_the_tables():
    rng = np.random.default_rng(4)
    transfers = _site_matrix(rng)
    cross = gen.cross_site_table(transfers, n_boot=100)
    # a pooled model per held-out site: as good as the own model on a, noise on b
    loo = []
    for t in transfers:
        if t["train"] == t["dataset"]:
            p = t["predictions"]["prob"].to_numpy() if t["dataset"] == "a" else rng.random(60)
            loo.append(_fake_run("pooled", t["dataset"], t["seed"], t["predictions"]["label"], p)
                       | {"n_train": 120})
    loo_table = gen.cross_site_table(loo, n_boot=100)
    view = gen.pooled_view(cross, transfers, loo, loo_table, ["a", "b"], [0], row="m", n_boot=200)
    v = view.set_index("tested on")
    own_a = [t for t in transfers if t["train"] == t["dataset"] == "a" and t["seed"] == 0]
    assert v.loc["a", "own site"] == pytest.approx(100 * own_a[0]["metrics"]["auc"])  # seed 0 only
    assert v.loc["a", "pooled − own site"] == pytest.approx(0.0)    # the same predictions
    assert v.loc["b", "95% CI high"] < 0 and v.loc["a", "pooled training images"] == 120
    assert v.loc["a", "own site, all seeds"] == cross.query("train == 'a' and test == 'a'")["auc"].iloc[0]

    val = lambda t: {"predictions": t["predictions"].assign(split="val")}
    sources = {("m", t["train"], t["seed"]): val(t) for t in transfers if t["train"] == t["dataset"]}
    temps = gen.temperatures(sources)
    calib = gen.calibration_table(transfers, sources, n_boot=50, temps=temps)
    drops = gen.transfer_drops(transfers, ["a", "b"], n_boot=100)
    lines = gen.findings(cross, drops, view, calib, {"m": "Model M"}, {"a": "A", "b": "B"},
                         SMOKE, n_seeds=2, n_pooled=1)
    assert lines[0].startswith("- **Model M**") and "2 below 0" in lines[0]
    assert "Held out **B**" in lines[2] and "interval below 0" in lines[2]
    assert "Held out **A**" in lines[1] and "interval contains 0" in lines[1]
    assert any(x.startswith("- Calibration, Model M: ECE") for x in lines)
    assert "2 seed(s) per cell, 1 for the pooled models" in lines[-1]

    curves = gen.reliability_curves(transfers, temps, "m", "a")
    assert [(c["where"], c["scaled"]) for c in curves] == \
        [("within", False), ("within", True), ("across", False), ("across", True)]
    within = [t for t in transfers if t["train"] == "a" and t["dataset"] == "a"]
    y = np.concatenate([t["predictions"]["label"] for t in within])
    p = np.concatenate([t["predictions"]["prob"] for t in within])
    assert curves[0]["ece"] == pytest.approx(100 * gen.expected_calibration_error(y, p))
    assert curves[0]["curve"]["count"].sum() == y.size and not curves[0]["curve"].isna().any().any()


def test_deployable_view_reads_the_summary():
    s = {"within": {"auc": [81.04, 77.5, 84.26], "recall": [70.0, 60.0, 80.0],
                    "specificity": [75.0, 70.0, 80.0]},
         "new_site_mean": {"auc": 66.66, "recall": 50.04, "specificity": 72.0}}
    t = gen.deployable_view(s)
    assert t.iloc[0, 0] == "81.0 (77.5–84.3)" and t.iloc[0, 1] == "66.7"
    assert list(t.iloc[1:, 1]) == ["50.0", "72.0"] and t.shape == (3, 2)


# ----------------------------------------------------------------------------- on the smoke profile
@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    import os
    old = os.environ.get("BUS_PAPER_RUNS")
    os.environ["BUS_PAPER_RUNS"] = str(tmp_path_factory.mktemp("runs"))
    yield
    if old is None:
        os.environ.pop("BUS_PAPER_RUNS", None)
    else:
        os.environ["BUS_PAPER_RUNS"] = old


def test_transfer_applies_the_runs_own_model_normaliser_and_threshold(smoke_runs):
    (run,) = gen.site_runs(SMOKE, None, "proposed", ["busi"], [0])
    assert run["train"] == "busi" and run["row"] == "proposed"
    own = gen.transfer(run, gen.labelled(SMOKE, None, "busi"), SMOKE)
    assert own["predictions"] is run["predictions"]          # the diagonal is the stored run
    # re-predicting the run's own test images through the deployable file gives its numbers
    data = gen.labelled(SMOKE, None, "busi")
    again = gen.transfer(run | {"train": "elsewhere"}, data, SMOKE)
    stored = run["predictions"].sort_values(["split", "path"]).reset_index(drop=True)
    redo = again["predictions"].sort_values(["split", "path"]).reset_index(drop=True)
    assert list(redo["path"]) == list(stored["path"])
    # bf16 autocast: the trained model (channels_last, as trained) and the reloaded file take
    # different kernels, so probabilities agree to bf16 precision, not bit for bit
    np.testing.assert_allclose(redo["prob"], stored["prob"], atol=1e-2)
    udiat = gen.labelled(SMOKE, None, "udiat")
    other = gen.transfer(run, udiat, SMOKE)
    assert other["train"] == "busi" and other["dataset"] == "udiat"
    assert other["threshold"] == run["threshold"]
    test = other["predictions"].query("split == 'test'")
    assert list(test["path"]) == udiat.paths["test"] and len(test) > 0
    assert other["metrics"] == binary_metrics(test["label"].to_numpy(), test["prob"].to_numpy(),
                                              run["threshold"])


def test_pooled_training_unions_splits_and_is_cached(smoke_runs):
    parts = {d: gen.labelled(SMOKE, None, d) for d in ("busi", "udiat")}
    pool = gen.pooled_labelled(SMOKE, None, ["busi", "udiat"])
    for s in ("train", "val", "test"):
        assert len(pool.y[s]) == sum(len(p.y[s]) for p in parts.values())
        assert len(set(pool.paths[s])) == len(pool.paths[s])          # prefixed, no clashes
    every = [q for s in ("train", "val", "test") for q in pool.paths[s]]
    assert len(set(every)) == len(every)                               # no image in two parts
    run = gen.pooled_finetune(SMOKE, None, ["udiat", "busi"], seed=0)
    assert run["train"] == "busi+udiat" and run["n"]["train"] == len(pool.y["train"])
    cached = gen.pooled_finetune(SMOKE, None, ["busi", "udiat"], seed=0)
    assert cached["run_dir"] == run["run_dir"] and cached["threshold"] == run["threshold"]
    np.testing.assert_array_equal(cached["predictions"]["prob"], run["predictions"]["prob"])
    loo = gen.leave_one_out(SMOKE, None, ["busi", "udiat", "busbra"], [0])
    assert [r["dataset"] for r in loo] == ["busi", "udiat", "busbra"]
    assert loo[2]["pooled"] == "busi+udiat" and loo[2]["train"] == "pooled"
    assert loo[2]["threshold"] == run["threshold"]                    # the cached pooled model


def test_the_experiment_command_trains_what_the_chapter_reads(smoke_runs, monkeypatch, capsys):
    """`bus-paper experiment generalisation` trains every run ahead (e.g. over several sittings,
    or on a GPU); the chapter's calls then train nothing."""
    from bus_paper import cli
    from bus_paper.train import engine
    assert cli.main(["-q", "experiment", "generalisation", "--profile", "smoke",
                     "--set", "finetune.epochs=1", "--dataset", "busi", "--dataset", "udiat",
                     "--seed", "0", "--pooled-seeds", "1", "--only", "proposed"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 5 and all(line.startswith("proposed") for line in out)
    assert "without busi" in out[2] and " udiat " in out[2] and "busi+udiat" in out[4]

    def no_training(self):
        raise AssertionError("the chapter retrained a run the experiment had trained")
    monkeypatch.setattr(engine.Stage, "fit", no_training)
    gen.site_runs(SMOKE, None, "proposed", ["busi", "udiat"], [0])
    gen.leave_one_out(SMOKE, None, ["busi", "udiat"], [0])
    gen.deployable_model(SMOKE, None, 0, sites=["busi", "udiat"])


def test_a_site_capped_epoch_draws_each_site_up_to_the_cap_and_replays_by_seed():
    sites = ["busbra"] * 50 + ["udiat"] * 7 + ["busi"] * 20
    batches = gen.site_capped_batches(sites, cap=10, batch_size=4, seed=3, drop_last=False)
    idx = torch.cat(batches).tolist()
    assert len(idx) == len(set(idx)) == 27                        # 10 + all 7 + 10, none twice
    drawn = pd.Series([sites[i] for i in idx]).value_counts().to_dict()
    assert drawn == {"busbra": 10, "busi": 10, "udiat": 7}
    assert [len(b) for b in batches] == [4] * 6 + [3]
    again = gen.site_capped_batches(sites, cap=10, batch_size=4, seed=3, drop_last=False)
    assert all(torch.equal(a, b) for a, b in zip(batches, again))  # a resumed epoch replays
    other = torch.cat(gen.site_capped_batches(sites, cap=10, batch_size=4, seed=4)).tolist()
    assert len(other) == 24 and other != idx[:24]                  # drop_last; another epoch
    with pytest.raises(ValueError, match="site_cap"):
        gen.site_cap(SMOKE.replace(**{"papers.beyond.site_cap": 0}))
    assert gen.site_cap(SMOKE) is None


def test_a_capped_pooled_run_trains_on_the_capped_sites(smoke_runs, monkeypatch):
    seen = []
    capped = SMOKE.replace(**{"papers.beyond.site_cap": 3})
    real = gen.site_capped_batches
    monkeypatch.setattr(gen, "site_capped_batches",
                        lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])
    run = gen.pooled_finetune(capped, None, ["busi", "udiat"], seed=0)
    assert seen and all(sum(len(b) for b in e) <= 6 for e in seen)  # 3 per site and epoch
    assert run["run_dir"] != gen.pooled_finetune(SMOKE, None, ["busi", "udiat"], seed=0)["run_dir"]


def test_pooled_key_follows_the_recipe_not_the_code(monkeypatch):
    """The pooled runs' key is their recipe (bus_paper.core.runs): stable, the same for the
    datasets in any order, changed by what decides the model (data, encoder, seed, config, the
    recipe version) and by no source file."""
    import inspect

    from bus_paper.core import runs
    args = (SMOKE, ["busi", "udiat"], 0, "enc", {"variant": "coatnet_nano"}, {"busi": "x"})
    key = gen.pooled_key(*args)
    assert gen.pooled_key(*args) == key
    assert gen.pooled_key(SMOKE, ["udiat", "busi"], *args[2:]) == key
    monkeypatch.setattr(inspect, "getsource", lambda f: "# edited")
    assert gen.pooled_key(*args) == key                      # editing the code retrains nothing
    other = [gen.pooled_key(SMOKE, ["busi"], *args[2:]),
             gen.pooled_key(*args[:2], 1, *args[3:]),
             gen.pooled_key(*args[:3], "enc2", *args[4:]),
             gen.pooled_key(*args[:5], {"busi": "y"}),
             gen.pooled_key(SMOKE.replace(**{"finetune.lr": 1e-3}), *args[1:]),
             gen.pooled_key(SMOKE.replace(**{"papers.beyond.site_cap": 300}), *args[1:])]
    assert key not in other and len(set(other)) == len(other)
    assert gen.pooled_key(SMOKE.replace(**{"finetune.seeds": [5, 6]}), *args[1:]) == key
    monkeypatch.setitem(runs.RECIPE_VERSIONS, "pooled", runs.RECIPE_VERSIONS["pooled"] + 1)
    assert gen.pooled_key(*args) != key


# ----------------------------------------------------------------------------- the deployable model
def _deploy_run(seed, y, p, threshold=0.5, temperature=1.3):
    test = pd.DataFrame({"path": [f"im{i}.png" for i in range(len(y))], "split": "test",
                         "label": y, "prob": p})
    return {"seed": seed, "threshold": threshold, "test_predictions": test,
            "calibration": {"temperature": temperature, "sites": ["busi", "udiat"],
                            "ece_test": {"before": 0.2, "after": 0.1}}}


def test_the_model_card_states_the_new_site_estimate_beside_the_seen_sites(tmp_path):
    """The deployable model's card block: leave-one-site-out AUC as the expectation at a new
    hospital, the threshold's sensitivity and specificity on the seen sites' test parts."""
    from bus_paper.book import pages
    from bus_paper.provenance import save_result

    rng = np.random.default_rng(0)
    y = np.array([0, 1] * 40)
    runs = [_deploy_run(s, y, np.clip(0.5 * y + 0.5 * rng.random(80), 0, 1)) for s in (0, 1)]
    loo = pd.DataFrame([{"row": "proposed", "train": "pooled", "test": t, "seeds": 2, "auc": a,
                         "auc_lo": a - 10, "auc_hi": a + 5, "recall": r, "recall_lo": r - 20,
                         "recall_hi": r + 10, "specificity": sp, "specificity_lo": sp - 15,
                         "specificity_hi": sp + 5}
                        for t, a, r, sp in (("busi", 70.0, 80.0, 50.0), ("udiat", 60.0, 40.0, 90.0))])
    s = gen.deployable_summary(runs, loo, n_boot=50)
    m = [binary_metrics(y, r["test_predictions"].prob.to_numpy(), 0.5) for r in runs]
    assert s["within"]["recall"][0] == pytest.approx(100 * np.mean([x["recall"] for x in m]))
    assert s["within"]["auc"][1] <= s["within"]["auc"][0] <= s["within"]["auc"][2]
    assert s["new_site_mean"]["auc"] == 65.0 and [r["site"] for r in s["new_site"]] == ["busi", "udiat"]
    assert s["seeds"] == [0, 1] and s["ece_after"] == pytest.approx(10.0)
    # at a new site: the held-out sites' threshold metrics, and their means
    assert s["new_site_mean"] == {"auc": 65.0, "recall": 60.0, "specificity": 70.0}
    assert s["new_site"][1]["recall_lo"] == 20.0 and s["new_site"][0]["specificity_hi"] == 55.0
    assert list(gen.deployable_view(s).iloc[:, 1]) == ["65.0", "60.0", "70.0"]
    with pytest.raises(ValueError, match="same pooled test images"):
        other = _deploy_run(2, y[::-1], runs[0]["test_predictions"].prob.to_numpy()[::-1])
        other["test_predictions"]["path"] = other["test_predictions"]["path"][::-1].to_numpy()
        gen.deployable_summary([runs[0], other], loo)

    results = tmp_path / "results"
    block = pages.model_card_blocks(tmp_path, tmp_path)["deployable"]
    assert block.startswith("*Not available") and "deployable.json" in block
    save_result(results / "generalisation", "deployable", s, {})
    block = pages.model_card_blocks(tmp_path, tmp_path)["deployable"]
    assert "**expected on a new site**" in block and "| 65.0 |" in block
    assert "held out UDIAT (2 seed(s)) | 60.0 (50.0–65.0) | 40.0 (20.0–50.0) | 90.0 (75.0–95.0) |" in block
    assert "| 65.0 | 60.0 | 70.0 |" in block
    assert "sensitivity ranged 40.0–80.0 % and its specificity 50.0–90.0 %" in block
    assert "range (60.0–70.0 %)" in block and "temperature 1.30" in block
