"""Paper 002's chapter machinery: P x K sampler, folds, MCR, paired bootstrap, one smoke run."""

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from bus_paper.config import load_profile
from bus_paper.papers.p002 import experiments as p2
from bus_paper.papers.p002 import train as tl

SMOKE = load_profile("smoke")


# ----------------------------------------------------------------------------- sampler and folds
def test_pk_batch_fills_k_by_cycling_views():
    views = [[0, 1], [2], [3, 4], [5]]
    img, les, inst = tl.pk_batch(torch.tensor([2, 1, 0]), views, 4)
    assert img.tolist() == [3, 4, 3, 4, 2, 2, 2, 2, 0, 1, 0, 1]
    assert les.tolist() == [2] * 4 + [1] * 4 + [0] * 4
    assert torch.equal(inst, img)
    # K = 3 with two views: a, b, a
    assert tl.pk_batch(torch.tensor([0]), views, 3)[0].tolist() == [0, 1, 0]
    with pytest.raises(ValueError, match="distinct lesions"):
        tl.pk_batch(torch.tensor([1, 1]), views, 2)


@pytest.fixture(scope="module")
def table(phantom_root):
    return tl.busbra_folds(phantom_root)


def test_folds_are_official_and_patient_wise(table, phantom_root):
    from bus_paper.data.adapters import busbra_official_folds
    official = busbra_official_folds(phantom_root).set_index("path")["fold"]
    assert (table.set_index("path")["fold"] == official.loc[table["path"]].to_numpy() - 1).all()
    assert table.groupby("patient_id")["fold"].nunique().max() == 1
    assert (table.groupby("lesion_id").size() <= 2).all() and (table["view"] != "s").any()


@pytest.mark.parametrize("fold", range(5))
def test_parts_respect_patients_and_the_test_fold(table, fold):
    part = tl.assign_parts(table, fold, 0.15)
    assert set(part[table["fold"] == fold]) == {"test"}
    assert not (part[table["fold"] != fold] == "test").any()
    assert table.assign(part=part).groupby("patient_id")["part"].nunique().max() == 1
    val = table[part == "val"]
    assert set(val["label"]) == {"benign", "malignant"}   # at least one patient of each label


def test_every_batch_has_p_training_lesions_times_k(table, phantom_root):
    settings = tl.Settings(image_size=64, epochs=1, lesions_per_batch=3, images_per_lesion=4)
    data = tl.load_fold(phantom_root, 1, settings, table=table)
    train_paths = set(data.paths["train"])
    assert not train_paths & (set(data.paths["val"]) | set(data.paths["test"]))
    from bus_paper.train.engine import Dist, shard_batches
    seen = set()
    for idx in shard_batches(len(data.views), 3, seed=5, d=Dist(), drop_last=True):
        img, les, _ = tl.pk_batch(idx, data.views, 4)
        assert len(img) == 12 and len(set(les.tolist())) == 3
        for lesion in set(les.tolist()):
            members = img[les == lesion].tolist()
            assert set(members) == set(data.views[lesion])          # its real views, all of them
            assert len({data.lesion["train"][i] for i in members}) == 1
        seen |= {data.paths["train"][i] for i in img.tolist()}
    assert seen <= train_paths
    assert data.x["train"].shape[-1] == settings.load_size == 73


def test_settings_are_checked():
    assert tl.settings_for("cpu").lr_at(0) == pytest.approx(1e-4)
    assert tl.settings_for("cpu").lr_at(1) == pytest.approx(1e-5)
    assert tl.settings_for("gpu").lr_at(149) == pytest.approx(1e-6)
    with pytest.raises(ValueError, match="images_per_lesion"):
        tl.Settings(64, 1, 4, 1)
    with pytest.raises(ValueError, match="multiple of 32"):
        tl.Settings(60, 1, 4, 4)
    with pytest.raises(FileNotFoundError, match="no profile 'custom'"):
        tl.settings_for("custom")


# ----------------------------------------------------------------------------- metrics
def test_mcr_by_hand():
    y = [1, 1, 0, 0, 1, 0, 0]
    pred = [1, 0, 1, 1, 0, 0, 0]
    lesion = ["a", "a", "b", "b", "c", "d", "d"]
    # a: 1/2, b: 2/2, c: 1/1, d: 0/2 (left out) -> (0.5 + 1 + 1) / 3
    assert p2.mcr(y, pred, lesion) == pytest.approx(2.5 / 3)
    assert np.isnan(p2.mcr([0, 1], [0, 1], ["a", "b"]))
    # discordance: among a, b, d (two images each) only a's views disagree
    assert p2.discordance(pred, lesion) == pytest.approx(1 / 3)


def test_weighted_auc_matches_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    p = np.round(rng.random(60), 1)          # many ties
    w = rng.integers(0, 4, (5, 60)).astype(float)
    got = p2.weighted_auc(y, p, w)
    want = [roc_auc_score(y, p, sample_weight=wi) for wi in w]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert p2.weighted_auc(y, p, np.ones(60)) == pytest.approx(roc_auc_score(y, p))
    assert np.isnan(p2.weighted_auc([1, 1], [0.2, 0.3], [1, 1]))


def fake_result(variant, fold, noise, seed):
    """A run on 40 test and 20 val lesions (two views each) whose probabilities carry signal."""
    rng = np.random.default_rng(seed)
    rows = []
    for split, n in (("val", 20), ("test", 40)):
        for i in range(n):
            label = i % 2
            base = 0.5 + (0.3 if label else -0.3)
            for view in "lr":
                rows.append({"path": f"f{fold}/{split}/{i:03d}-{view}.png", "split": split,
                             "fold": fold, "lesion": f"{fold}-{split}-{i:03d}", "label": label,
                             "prob": float(np.clip(base + noise * rng.standard_normal(), 0, 1))})
    preds = pd.DataFrame(rows)
    val = preds[preds.split == "val"]
    from bus_paper.metrics import choose_threshold
    return {"variant": variant, "fold": fold, "predictions": preds, "history": [],
            "threshold": choose_threshold(val.label, val.prob)}


def test_paired_difference_observed_equals_fold_metrics_and_finds_a_real_gap():
    results = [fake_result("lr", f, 0.15, 10 + f) for f in range(3)]
    results += [fake_result("baseline", f, 0.45, 20 + f) for f in range(3)]
    table = p2.fold_table(results)
    for metric in ("auc", "accuracy", "specificity", "mcr", "discordance"):
        d = p2.paired_difference(results, "lr", "baseline", metric, n_boot=300)
        by = table.set_index(["variant", "fold"])[metric]
        want = [100 * (by[("lr", f)] - by[("baseline", f)]) for f in range(3)]
        np.testing.assert_allclose(d["folds"], want, atol=1e-9)
        assert d["diff"] == pytest.approx(np.mean(want))
    for metric in ("auc", "accuracy"):
        lesion = p2.paired_difference(results, "lr", "baseline", metric, "lesion", n_boot=300)
        by = table.set_index(["variant", "fold"])["lesion_" + metric]
        assert lesion["diff"] == pytest.approx(100 * np.mean(
            [by[("lr", f)] - by[("baseline", f)] for f in range(3)]))
    auc = p2.paired_difference(results, "lr", "baseline", "auc", n_boot=500)
    assert auc["lo"] > 0 and auc["p"] < 0.05
    same = [fake_result("ir", f, 0.45, 20 + f) for f in range(3)]   # baseline's twin
    null = p2.paired_difference(results + same, "ir", "baseline", "auc", n_boot=200)
    assert null["diff"] == 0 and null["lo"] == 0 == null["hi"]
    v = p2.claim_differences(results, n_boot=200)
    assert set(v["key"]) == {"lr_auc", "lr_acc", "lr_spec", "lr_prec", "lr_mcr"}
    lr = v.set_index("key").loc["lr_auc"]
    assert lr["ci_low"] > 0 and lr["paper"] == pytest.approx(1.5) and "verdict" not in v.columns


def test_paired_difference_redraws_the_folds_then_the_lesions():
    """Two levels, as every interval of the book: a gain in one fold of three is not a gain.
    LR equals the baseline in folds 0 and 1 and is far better in fold 2. Redrawing lesions alone
    would exclude 0; redrawing the folds first leaves about (2/3)^3 = 30 % of the resamples
    without fold 2, each exactly 0."""
    base = [fake_result("baseline", f, 0.45, 20 + f) for f in range(3)]
    lr = [fake_result("lr", f, 0.45, 20 + f) for f in range(2)] + [fake_result("lr", 2, 0.15, 12)]
    d = p2.paired_difference(base + lr, "lr", "baseline", "auc", n_boot=2000)
    assert d["folds"][:2] == [0.0, 0.0] and d["folds"][2] > 5 and d["diff"] > 0
    assert d["lo"] == 0.0 and 0.4 < d["p"] < 0.8


def test_paired_vs_baseline_and_the_tables_beside_the_paper():
    results = [fake_result(v, f, noise, seed + f) for v, noise, seed in
               (("lr", 0.15, 10), ("baseline", 0.45, 20), ("ir", 0.45, 20)) for f in range(3)]
    t = p2.paired_vs_baseline(results, ["baseline", "lr", "ir"], n_boot=200)
    assert len(t) == 2 * len(p2.COMPARISONS) and set(t["variant"]) == {"lr", "ir"}
    row = t[(t["variant"] == "lr") & (t["metric"] == "auc") & (t["level"] == "image")].iloc[0]
    ref = p2.paired_difference(results, "lr", "baseline", "auc", n_boot=200)
    assert (row["difference"], row["ci_low"]) == (ref["diff"], ref["lo"])
    assert row["paper difference"] == pytest.approx(p2.paper_value("lr", "auc")
                                                   - p2.paper_value("baseline", "auc"))
    assert t[t["level"] == "lesion"]["paper difference"].isna().all()   # the paper has none
    assert row["folds better than baseline"] == "3/3"
    assert p2.paired_vs_baseline(results, ["lr", "ir"], n_boot=50).empty   # no baseline run
    summ = p2.summary(p2.fold_table(results), ["auc", "mcr"])
    shown = p2.beside_paper(summ, "table1", ["baseline", "lr", "lr_minus_all"], ["auc", "mcr"])
    assert list(shown.index) == ["Baseline", "LR"]                       # only what ran, in order
    paper = p2.paper_002("table1").set_index("variant")
    s = summ.set_index("variant")
    assert shown.loc["LR", "AUC"] == (f"{s.loc['lr', 'auc']:.1f} ± {s.loc['lr', 'auc_sd']:.1f} "
                                      f"({paper.loc['lr', 'auc']:.1f})")


def test_paper_numbers():
    claims = {c.key: c for c in p2.CLAIMS}
    assert claims["lr_auc"].paper == pytest.approx(1.5)
    assert claims["lr_mcr"].paper == pytest.approx(-7.2)
    assert claims["ir_acc"].paper == pytest.approx(-1.8)
    assert claims["hard_neg_auc"].paper == pytest.approx(0.6)
    assert p2.paper_002("table2").set_index("variant").loc["lr_minus_sc", "auc"] == 95.0


def test_parameters_parse_as_papermill_passes_them():
    assert p2.parse_variants(None) == list(tl.VARIANT_NAMES)
    assert p2.parse_variants("lr") == ["lr"]
    assert p2.parse_variants("LR, baseline") == ["baseline", "lr"]
    assert p2.parse_variants('["ir", "lr"]') == ["ir", "lr"]
    assert p2.parse_folds(None) == [0, 1, 2, 3, 4]
    assert p2.parse_folds("0,1") == [0, 1] and p2.parse_folds(3) == [3]
    assert p2.parse_folds([2, 0]) == [0, 2]
    with pytest.raises(ValueError, match="unknown variant"):
        p2.parse_variants("lr(-)")
    with pytest.raises(ValueError, match="folds"):
        p2.parse_folds("5")


# ----------------------------------------------------------------------------- end to end (smoke)
def test_one_fold_end_to_end_smoke(phantom_root, tmp_path, monkeypatch):
    monkeypatch.setenv("BUS_PAPER_RUNS", str(tmp_path / "runs"))
    r = tl.run_fold(SMOKE, phantom_root, "lr", 0, init="random")
    assert r["n"]["test"] > 0 and 0 <= r["threshold"] <= 1
    preds = r["predictions"]
    assert set(preds.split) == {"val", "test"} and preds.prob.between(0, 1).all()
    log = r["history"][0]
    assert np.isfinite(log["train_con"]) and log["train_con"] > 0 and log["lr"] == 1e-4
    cached = tl.run_fold(SMOKE, phantom_root, "lr", 0, init="random")
    np.testing.assert_array_equal(cached["predictions"].prob.to_numpy(), preds.prob.to_numpy())
    assert cached["predictions"].lesion.tolist() == preds.lesion.tolist()
    row = p2.fold_metrics(cached)
    assert 0 <= row["lesion_auc"] <= 1 or np.isnan(row["lesion_auc"])
    import pathlib
    run_dir = pathlib.Path(r["run_dir"])
    assert not (run_dir / "best.pt").exists() and not (run_dir / "last.pt").exists()
    # the baseline's key ignores alpha and the temperature; LR's does not
    base = tl.run_fold(SMOKE, phantom_root, "baseline", 0, init="random", alpha=1.0)
    assert tl.run_fold(SMOKE, phantom_root, "baseline", 0, init="random", alpha=0.5)["key"] == base["key"]
    assert np.isnan(base["history"][0]["train_con"])


def test_paired_difference_of_an_undefined_metric_is_nan_not_an_error():
    perfect = [fake_result(v, 0, 0.0, 1) for v in ("lr", "baseline")]   # no errors: MCR undefined
    d = p2.paired_difference(perfect, "lr", "baseline", "mcr", n_boot=50)
    assert np.isnan(d["diff"]) and np.isnan(d["lo"]) and d["n_boot"] == 0


def test_step_decay_reaches_the_second_epoch(phantom_root, tmp_path, monkeypatch):
    monkeypatch.setenv("BUS_PAPER_RUNS", str(tmp_path / "runs"))
    settings = tl.Settings(image_size=64, epochs=2, lesions_per_batch=4, images_per_lesion=4,
                           decay_every=1, max_steps=1)
    r = tl.run_fold(SMOKE, phantom_root, "ir", 2, init="random", settings=settings)
    assert [h["lr"] for h in r["history"]] == pytest.approx([1e-4, 1e-5])
    assert all(np.isfinite(h["train_con"]) for h in r["history"])


def test_the_experiment_command_trains_what_the_chapter_reads(phantom_root, tmp_path, monkeypatch,
                                                               capsys):
    """`bus-paper experiment paper002` runs the chapter's defaults (SimCLR init, seed 0) for the
    variants and folds asked; the chapter's run_all then trains nothing."""
    from bus_paper import cli
    from bus_paper.train import engine
    monkeypatch.setenv("BUS_PAPER_RUNS", str(tmp_path / "runs"))
    assert cli.main(["-q", "experiment", "paper002", "--profile", "smoke", "--data-root",
                     str(phantom_root), "--only", "baseline", "--only", "lr", "--fold", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[:3] for line in out] == [["baseline", "fold", "1:"], ["lr", "fold", "1:"]]

    def no_training(self):
        raise AssertionError("the chapter retrained a run the experiment had trained")
    monkeypatch.setattr(engine.Stage, "fit", no_training)
    again = p2.run_all(SMOKE, phantom_root, ["baseline", "lr"], [1])
    assert [line.split()[-1] for line in out] == [r["run_dir"] for r in again]
