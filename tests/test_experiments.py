"""The experiments module: Table 1 rows, ablations as config changes, seed tables, paired tests."""

import numpy as np
import pandas as pd
import pytest

from bus_paper.config import load_profile
from bus_paper.core import MISSING
from bus_paper.metrics import binary_metrics
from bus_paper.models.baselines import BASELINES
from bus_paper.papers.literature import paper_000
from bus_paper.papers.p000 import experiments as ex

CPU = load_profile("cpu")


def fake_run(y, prob, threshold=0.5, row="a", dataset="busi", seed=0, paths=None):
    y, prob = np.asarray(y), np.asarray(prob, dtype=float)
    paths = paths or [f"img{i:03d}.png" for i in range(y.size)]
    preds = pd.DataFrame({"path": paths, "split": "test", "label": y, "prob": prob})
    # a validation row must be ignored by every summary
    preds = pd.concat([preds, pd.DataFrame({"path": ["v.png"], "split": ["val"], "label": [1],
                                            "prob": [0.0]})], ignore_index=True)
    return {"row": row, "dataset": dataset, "seed": seed, "threshold": threshold,
            "metrics": binary_metrics(y, prob, threshold), "predictions": preds}


def test_table1_rows_match_the_paper_and_the_baselines():
    assert [r.key for r in ex.TABLE1] == list(paper_000("table1")["model"].drop_duplicates())
    for r in ex.TABLE1:
        assert r.baseline is None or r.baseline in BASELINES
    assert ex.ROWS["dino_vit"].objective == "dino" and ex.ROWS["proposed"].baseline is None


def test_each_ablation_changes_only_its_own_field():
    assert set(ex.ABLATIONS) == set(paper_000("ablations")["variant"])
    assert ex.ABLATIONS["full"].changes == {} and not ex.ABLATIONS["no_ssl"].ssl
    for a in ex.ABLATIONS.values():
        variant = CPU.replace(**a.changes) if a.changes else CPU
        differ = {f"{sec}.{k}" for sec in ("model", "finetune", "pretrain")
                  for k, v in vars(getattr(variant, sec)).items()
                  if v != getattr(getattr(CPU, sec), k)}
        assert differ == set(a.changes), a.key
    assert CPU.replace(**ex.ABLATIONS["no_fusion"].changes).model.fusion is False
    assert CPU.replace(**ex.ABLATIONS["single_scale"].changes).model.multiscale_input is False


def test_unknown_names_fail_clearly():
    with pytest.raises(KeyError, match="unknown ablation"):
        ex.ablation_runs(CPU, None, "no_dropout", ["busi"], [0])
    with pytest.raises(ValueError, match="label fraction"):
        ex.label_fraction_runs(CPU, None, 0.0, True, ["busi"], [0])


def test_seed_table_mean_sd_and_ci():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 80)
    runs = [fake_run(y, np.clip(y * 0.6 + rng.random(80) * 0.5, 0, 1), seed=s) for s in range(3)]
    t = ex.seed_table(runs, n_boot=200)
    assert len(t) == 1 and t.loc[0, "seeds"] == 3
    aucs = [100 * r["metrics"]["auc"] for r in runs]
    assert t.loc[0, "auc"] == pytest.approx(np.mean(aucs))
    assert t.loc[0, "auc_sd"] == pytest.approx(np.std(aucs, ddof=1))
    assert t.loc[0, "auc_lo"] <= t.loc[0, "auc"] <= t.loc[0, "auc_hi"]
    assert ex.fmt_mean_sd(t, "auc").iloc[0] == f"{np.mean(aucs):.1f} ± {np.std(aucs, ddof=1):.1f}"
    # beside the paper's value where it has one; an undefined metric is a dash, not nan
    paper = pd.DataFrame({"auc": [97.3]}, index=pd.MultiIndex.from_tuples(
        [(t["row"].iloc[0], t["dataset"].iloc[0])]))
    assert ex.fmt_beside_paper(t, "auc", paper).iloc[0] == ex.fmt_mean_sd(t, "auc").iloc[0] + " (97.3)"
    assert ex.fmt_beside_paper(t.assign(auc=np.nan), "auc", paper.iloc[:0]).iloc[0] == "–"


def test_paired_difference_detects_a_real_gap_and_not_a_null_one():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    good = [fake_run(y, np.clip(y * 0.5 + rng.random(200) * 0.6, 0, 1), seed=s) for s in range(2)]
    noise = [fake_run(y, rng.random(200), seed=s) for s in range(2)]
    gap = ex.paired_difference(good, noise, "auc", n_boot=300)
    assert gap["lo"] > 0 and gap["p"] < 0.01
    same = ex.paired_difference(good, good, "auc", n_boot=300)
    # the same runs on both sides: no difference, and only the seeds' spread in the interval
    assert same["diff"] == 0 and same["lo"] <= 0 <= same["hi"] and same["p"] > 0.3
    assert same["n_seeds"] == (2, 2) and same["n_images"] == same["n_clusters"] == 200
    # the point estimate is the difference of seed-mean AUCs
    expect = 100 * (np.mean([r["metrics"]["auc"] for r in good])
                    - np.mean([r["metrics"]["auc"] for r in noise]))
    assert gap["diff"] == pytest.approx(expect)


def test_runs_on_different_images_are_refused():
    y = np.array([0, 1, 0, 1])
    a = fake_run(y, [0.1, 0.9, 0.2, 0.8])
    b = fake_run(y, [0.1, 0.9, 0.2, 0.8], paths=["x1", "x2", "x3", "x4"])
    with pytest.raises(ValueError, match="different images"):
        ex.paired_difference([a], [b])


def test_ablation_differences():
    """A variant clearly worse than the full model has an interval below 0; a twin of the full
    model a difference of 0; the paper's differences come from Tables 4-5."""
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 200)
    good = np.clip(y * 0.5 + rng.random(200) * 0.6, 0, 1)
    results = ([fake_run(y, good, row="full", dataset="udiat", seed=s) for s in range(2)]
               + [fake_run(y, rng.random(200), row="no_ssl", dataset="udiat", seed=s)
                  for s in range(2)]
               + [fake_run(y, good, row="no_fusion", dataset="udiat", seed=s) for s in range(2)])
    d = ex.ablation_differences(results, ["udiat"])
    assert list(d["variant"].unique()) == ["no_ssl", "no_fusion"] and set(d["metric"]) == {"auc", "accuracy"}
    paper = paper_000("ablations").set_index(["variant", "dataset"])
    row = d[(d["variant"] == "no_ssl") & (d["metric"] == "auc")].iloc[0]
    assert row["paper difference"] == pytest.approx(paper.loc[("no_ssl", "udiat"), "auc"]
                                                    - paper.loc[("full", "udiat"), "auc"])
    assert row["label"] == ex.ABLATIONS["no_ssl"].label and row["ci_high"] < 0
    # the verdict words are the claims table's (tests/test_claims.py), not this table's
    assert "verdict" not in d.columns
    twin = d[(d["variant"] == "no_fusion") & (d["metric"] == "auc")].iloc[0]
    assert twin["difference"] == 0 and twin["ci_low"] <= 0 <= twin["ci_high"]


def test_table1_paired_and_findings_describe_where_each_interval_lies():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 150)
    sharp = lambda: np.clip(0.7 * y + 0.4 * rng.random(150), 0, 1)
    rows = [ex.ROWS[k] for k in ("proposed", "convnext_tiny", "simclr_resnet50")]
    results = []
    for d in ("busi", "udiat"):
        results += [fake_run(y, sharp(), row="proposed", dataset=d, seed=s) for s in (0, 1)]
        results += [fake_run(y, rng.random(150), row="convnext_tiny", dataset=d, seed=s)
                    for s in (0, 1)]
        results += [fake_run(y, results[-4 + s]["predictions"]["prob"].to_numpy()[:-1],
                             row="simclr_resnet50", dataset=d, seed=s) for s in (0, 1)]
    pairs = ex.table1_paired(results, rows, ["busi", "udiat"], n_boot=300)
    assert len(pairs) == 4 and set(pairs["baseline"]) == {r.label for r in rows[1:]}
    one = pairs.iloc[0]
    ref = ex.paired_difference(results[:2], results[2:4], "auc", n_boot=300)
    assert (one["AUC proposed - baseline"], one["95% CI low"]) == (ref["diff"], ref["lo"])
    assert ex.table1_paired(results, rows[1:], ["busi"]).empty      # no proposed row: no pairs

    table = ex.seed_table(results, n_boot=100)
    table["label"] = table["row"].map({r.key: r.label for r in ex.TABLE1})
    paper = paper_000("table1").set_index(["model", "dataset"])
    lines = ex.table1_findings(table, pairs, paper, ["busi"], load_profile("cpu"), 2)
    conv, same = rows[1].label, rows[2].label
    assert lines[0].startswith("- **BUSI**, ranked by our test AUC: ")
    assert lines[0].index("ConvNeXt") > lines[0].index("Proposed")     # noise ranks last
    assert f"above 0 for {conv};" in lines[1] and f"containing 0 for {same}." in lines[1]
    assert "below 0 for none" in lines[1] and "96 px" in lines[-1] and "2 seed(s)" in lines[-1]


def test_table1_cv_pairs_every_row_with_the_proposed_model_on_every_image(monkeypatch):
    """Out of fold, per row; the proposed model minus each baseline on the same images."""
    rng = np.random.default_rng(3)
    n, k, repeats = 60, 3, 2
    y = rng.integers(0, 2, n)
    paths = [f"img{i:03d}.png" for i in range(n)]
    quality = {"proposed": 0.8, "convnext_tiny": 0.0}

    def fake_cv_runs(profile, root, row, dataset, folds):
        out = []
        for f in folds:
            idx = [i for i in range(n) if i % f.k == f.index]
            prob = np.clip(quality[row.key] * y[idx] + 0.5 * rng.random(len(idx)), 0, 1)
            preds = pd.DataFrame({"path": [paths[i] for i in idx], "split": "test",
                                  "label": y[idx], "prob": prob,
                                  "cluster": [paths[i] for i in idx]})
            out.append({"row": row.key, "dataset": dataset, "seconds": 6.0,
                        "fold": {"k": f.k, "index": f.index, "repeat": f.repeat},
                        "metrics": binary_metrics(y[idx], prob, 0.5), "predictions": preds})
        return out
    monkeypatch.setattr(ex, "table1_cv_runs", fake_cv_runs)
    prof = CPU.replace(**{"papers.p000.cv_datasets": ["udiat"], "papers.p000.cv_folds": k,
                          "papers.p000.cv_repeats": repeats})
    rows = [ex.ROWS["convnext_tiny"], ex.ROWS["proposed"]]
    cv = ex.table1_cv(prof, None, rows, n_boot=200)
    m = cv["metrics"].set_index("row")
    assert list(m["images"]) == [n, n] and set(m["folds"]) == {k} and set(m["repeats"]) == {2}
    assert m.loc["proposed", "auc"] > 90 and 30 < m.loc["convnext_tiny", "auc"] < 70
    assert len(cv["runs"]) == 2 * k * repeats
    p = cv["paired"].iloc[0]
    assert p["baseline"] == rows[0].label and p["95% CI low"] > 0     # the better model, paired
    shown = ex.table1_cv_readable(cv, {r.key: r.label for r in rows})
    assert list(shown["model"]) == ["ConvNeXt-Tiny", "Proposed Model"]
    assert shown.iloc[1]["proposed − model (95% CI)"] == MISSING       # itself: no difference
    assert shown.iloc[0]["images (clusters)"] == f"{n} ({n})"
    table = pd.DataFrame([{"row": "proposed", "dataset": "udiat", "auc": 80.0, "auc_lo": 70.0,
                           "auc_hi": 90.0, "label": "Proposed Model"}])
    lines = ex.table1_findings(table, cv["paired"].iloc[:0], paper_000("table1").set_index(
        ["model", "dataset"]), ["udiat"], prof, 3, cv)
    assert any(line.strip().startswith(f"Used whole ({n} images, 2 x {k} folds)") and
               f"above 0 for {rows[0].label}" in line for line in lines)
    # no rows: empty tables, no error
    none = ex.table1_cv(prof, None, [], 10)
    assert none["metrics"].empty and none["paired"].empty
