"""The SSL budget curve (issue 18): a pretraining run's snapshots are the encoders shorter runs
give, a grouped k-fold cross-validation tests every image once per repeat without splitting a
group, and the out-of-fold AUC and its paired comparison are what a plain computation gives."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score
from test_splits import assert_kept_together, duplicates_of, manifest_of

from bus_paper.config import DataConfig, load_profile
from bus_paper.data.splits import cv_split
from bus_paper.papers.p000 import budget
from bus_paper.train.data import Fold, load_labelled, resolve_root
from bus_paper.train.pretraining import load_pretrained, pretrain, pretrain_snapshots, snapshot_path

SMOKE = load_profile("smoke")


# ----------------------------------------------------------------------------- the folds
def test_cv_split_tests_every_image_once_and_keeps_groups_whole():
    labels = ["benign"] * 60 + ["malignant"] * 30
    manifest = manifest_of(labels, patients=[f"p{i // 3}" if i < 30 else None for i in range(90)])
    clusters = [[40, 41], [70, 71, 72], [50, 80]]   # 50/80: benign and malignant -> excluded
    dups = duplicates_of(manifest, clusters)
    cfg = DataConfig()
    tested = []
    for i in range(5):
        s = cv_split(manifest, "busi", 3, k=5, fold=i, duplicates=dups, cfg=cfg)
        assert set(s["split"]) == {"train", "val", "test"}
        assert_kept_together(s, manifest, clusters[:2])
        assert s.groupby("group")["split"].nunique().max() == 1
        n = len(s)
        assert abs((s["split"] == "val").sum() - cfg.val_fraction * n) <= 3  # a holdout's share
        assert abs((s["split"] == "test").sum() - n / 5) <= 3
        tested += s.loc[s["split"] == "test", "path"].tolist()
    assert len(tested) == len(set(tested)) == 88            # all kept images, each once
    assert not {manifest.path[50], manifest.path[80]} & set(tested)
    # another seed deals the groups anew; the same seed gives the same split
    a = cv_split(manifest, "busi", 3, k=5, fold=0, duplicates=dups, cfg=cfg)
    pd.testing.assert_frame_equal(a, cv_split(manifest, "busi", 3, k=5, fold=0, duplicates=dups,
                                              cfg=cfg))
    assert not a["split"].equals(cv_split(manifest, "busi", 4, k=5, fold=0, duplicates=dups,
                                          cfg=cfg)["split"])
    with pytest.raises(ValueError, match="fold must be"):
        cv_split(manifest, "busi", 3, k=5, fold=5)
    with pytest.raises(ValueError, match="k >= 2"):
        Fold(1, 0)


# ----------------------------------------------------------------------------- the statistics
def _oof(probs: np.ndarray, y: np.ndarray, clusters) -> pd.DataFrame:
    rows = []
    for r, p in enumerate(probs):
        for i in np.random.default_rng(r).permutation(len(y)):     # any order in, sorted out
            rows.append({"repeat": r, "fold": i % 3, "path": f"img{i:03d}", "label": y[i],
                         "prob": p[i], "cluster": clusters[i]})
    return pd.DataFrame(rows)


def _runs(oof: pd.DataFrame) -> list[dict]:
    return [{"fold": {"k": 3, "index": int(f), "repeat": int(r)},
             "predictions": g.drop(columns=["repeat", "fold"]).assign(split="test")}
            for (r, f), g in oof.groupby(["repeat", "fold"])]


def test_out_of_fold_auc_and_paired_difference_match_a_plain_computation():
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(40, int), np.ones(20, int)]
    clusters = [f"g{i // 2}" for i in range(60)]
    good = np.clip(0.4 * y[None] + rng.uniform(0, 0.6, (2, 60)), 0, 1)
    poor = rng.uniform(0, 1, (2, 60))
    oof_good = budget.out_of_fold(_runs(_oof(good, y, clusters)))
    oof_poor = budget.out_of_fold(_runs(_oof(poor, y, clusters)))
    assert list(oof_good.columns) == ["repeat", "fold", "path", "label", "prob", "cluster"]
    a = budget.cv_auc(oof_good, n_boot=300)
    plain = 100 * np.mean([roc_auc_score(y, p) for p in good])
    assert a["auc"] == pytest.approx(plain) and a["ci_low"] < plain < a["ci_high"]
    assert (a["images"], a["clusters"]) == (60, 30)
    d = budget.cv_paired(oof_good, oof_poor, n_boot=300)
    assert d["diff"] == pytest.approx(plain - 100 * np.mean([roc_auc_score(y, p) for p in poor]))
    assert d["diff_low"] > 0 and d["p"] < 0.05                # clearly better, on the same images
    # an image tested twice in one repeat is not a cross-validation
    twice = _oof(good, y, clusters)
    twice.loc[1, "path"] = twice.loc[0, "path"]
    with pytest.raises(ValueError, match="tested twice"):
        budget.out_of_fold(_runs(twice))


def test_budget_plan_reads_the_profile_section():
    plan = budget.BudgetPlan.of(SMOKE)
    assert plan.budgets == (1, 2) and plan.k == 2 and plan.repeats == 2
    assert [(f.index, f.repeat) for f in plan.folds] == [(0, 0), (1, 0), (0, 1), (1, 1)]
    default = budget.BudgetPlan.of(SMOKE.replace(papers={}))
    assert default.budgets == (SMOKE.pretrain.epochs,) and default.k == 5
    with pytest.raises(ValueError, match="no curve"):
        budget.BudgetPlan.of(SMOKE.replace(**{"papers.p000.cv_folds": 1}))


# ----------------------------------------------------------------------------- training
@pytest.fixture()
def runs(tmp_path, monkeypatch):
    monkeypatch.setenv("BUS_PAPER_RUNS", str(tmp_path / "runs"))
    return tmp_path / "runs"


def _weights(path) -> dict[str, torch.Tensor]:
    return load_pretrained(path)["encoder"]


def _same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_snapshots_are_the_encoders_of_shorter_runs(runs):
    one = pretrain(SMOKE)                                          # 1 epoch, plain
    snaps = pretrain_snapshots(SMOKE, [3, 1])                      # one 3-epoch run
    assert sorted(snaps) == [1, 3] and snaps[1] == snapshot_path(snaps[3].parent, 1)
    assert _same(_weights(snaps[1]), _weights(one))                # bit-identical to the 1-epoch run
    s1 = load_pretrained(snaps[1])
    assert s1["epochs"] == 1 and len(s1["history"]) == 1 and s1["key"].endswith("@e1")
    assert len(load_pretrained(snaps[3])["history"]) == 3
    assert not _same(_weights(snaps[3]), _weights(one))
    # the longest budget is a plain run of that many epochs: the same cache entry
    assert pretrain(SMOKE.replace(**{"pretrain.epochs": 3})) == snaps[3]
    # a plain run cached without snapshots: the missing ones come from a shorter run, which is
    # the 1-epoch run above (cached: nothing trains), not a retraining of the 2-epoch one
    two = pretrain(SMOKE.replace(**{"pretrain.epochs": 2}))
    got = pretrain_snapshots(SMOKE, [1, 2])
    assert got == {1: one, 2: two}


def test_the_book_encoder_is_one_run_that_saves_the_curves_snapshots(runs):
    prof = SMOKE.replace(**{"pretrain.epochs": 2, "papers.p000.ssl_budgets": [1, 2, 4]})
    path = budget.book_encoder(prof)                    # 2 epochs, the snapshot at 1 saved
    assert snapshot_path(path.parent, 1).exists() and not snapshot_path(path.parent, 4).exists()
    assert pretrain(prof) == path                       # the plain pretraining's cache entry
    got = pretrain_snapshots(prof, [1, 2])              # what the curve asks: nothing trains
    assert got == {1: snapshot_path(path.parent, 1), 2: path}


def test_fold_runs_cover_the_data_set_once(runs):
    profile = SMOKE.replace(**{"finetune.datasets": ["udiat"]})
    plan = budget.BudgetPlan((1,), ("udiat",), k=2, repeats=1)
    rs = budget.cv_runs(profile, "udiat", None, plan)
    assert len({r["run_dir"] for r in rs}) == 2 and [r["fold"]["index"] for r in rs] == [0, 1]
    oof = budget.out_of_fold(rs)
    data = load_labelled(profile, resolve_root(profile), "udiat", fold=Fold(2, 0))
    assert sorted(oof["path"]) == sorted(data.splits["path"])      # every image, once
    group = dict(zip(data.splits["path"], data.splits["group"].astype(str)))
    assert list(oof["cluster"].astype(str)) == [group[p] for p in oof["path"]]
    # the holdout run of the same seed is another run
    from bus_paper.train import finetune
    assert finetune(profile, "udiat", 0, encoder_path=None)["run_dir"] not in {r["run_dir"] for r in rs}


# ----------------------------------------------------------------------------- the verdict
def test_the_claims_table_judges_the_longest_budget(tmp_path):
    """The paper's SSL - random difference is judged at the curve's longest budget, with the
    legend; a data set the profile did not cross-validate is not tested at this budget."""
    from bus_paper import papers
    from bus_paper.core import stats as S
    from bus_paper.provenance import save_table
    rows = [{"ssl_epochs": e, "dataset": "udiat", "init": "random" if e == 0 else "ssl",
             "auc": 80.0, "ci_low": lo, "ci_high": 88.0, "images": 163, "clusters": 160,
             "diff": d, "diff_low": d - 4, "diff_high": d + 4, "p": 0.01, "knn_auc": 60.0,
             "ssl_loss": loss, "ssl_loss_chance": 4.84, "ssl_learned": True, "folds": 5,
             "repeats": 2}
            for e, d, loss, lo in ((0, np.nan, np.nan, 70.0), (1, -20.0, 3.0, 70.0),
                                   (5, 5.0, 0.9, 72.0))]
    save_table(tmp_path / "ssl_budget", "curve", pd.DataFrame(rows), {"profile": "cpu"})
    runs = [{"dataset": "udiat", "ssl_epochs": e, "repeat": 0, "fold": f, "test AUC": 0.6 + 0.01 * f}
            for e in (0, 1, 5) for f in range(5)]
    save_table(tmp_path / "ssl_budget", "runs", pd.DataFrame(runs), {"profile": "cpu"})
    t = papers.claims_table(tmp_path, "cpu", ["000"], only=lambda c: c.measure.startswith("ssl_budget"))
    assert len(t) == 2 and not t.attrs["missing"]
    udiat = t[t["claim"].str.contains("UDIAT")].iloc[0]
    assert (udiat["measured"], udiat["ci_low"], udiat["ci_high"]) == (5.0, 1.0, 9.0)  # 5 epochs
    assert udiat["paper_value"] == budget.paper_difference("udiat") > 0
    assert udiat["verdict"] == S.verdict("difference", udiat["paper_value"], 1.0, 9.0)
    assert udiat["seeds"] == "2 x 5 folds" and udiat["n_test"] == 163
    assert udiat["mechanism"] == "passed"
    busi = t[t["claim"].str.contains("BUSI")].iloc[0]
    assert busi["verdict"] == S.NOT_TESTED and "cross-validated" in busi["mechanism"]
    # one random-init fold at chance: the comparison rests on a model that did not learn there
    runs[0]["test AUC"] = 0.48
    save_table(tmp_path / "ssl_budget", "runs", pd.DataFrame(runs), {"profile": "cpu"})
    t = papers.claims_table(tmp_path, "cpu", ["000"], only=lambda c: c.measure.startswith("ssl_budget"))
    udiat = t[t["claim"].str.contains("UDIAT")].iloc[0]
    assert udiat["verdict"] == S.NOT_TESTED and "random init, UDIAT" in udiat["mechanism"]
    runs[0]["test AUC"] = 0.6
    # a curve whose longest encoder did not learn is not tested either
    rows[-1]["ssl_loss"] = 4.8
    save_table(tmp_path / "ssl_budget", "curve", pd.DataFrame(rows), {"profile": "cpu"})
    t = papers.claims_table(tmp_path, "cpu", ["000"], only=lambda c: c.measure.startswith("ssl_budget"))
    assert t[t["claim"].str.contains("UDIAT")].iloc[0]["verdict"] == S.NOT_TESTED
