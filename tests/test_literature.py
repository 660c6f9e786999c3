"""Paper 000's published tables (bus_paper/papers/literature/paper_000.toml) and the literature chapter's
merge of Tables 2-3 with our measured row."""

import math
import re

import numpy as np
import pandas as pd
import pytest

from bus_paper.papers.literature import (
    LITERATURE,
    METRICS,
    PAPER_KEY,
    _raw,
    describe_placement,
    literature_table,
    markdown_table,
    own_row_mismatches,
    paper_000,
    placement,
)
from bus_paper.papers.p000 import analysis


def measured_seed_table(dataset="busi", value=90.0, lo=85.0, hi=95.0, seeds=3):
    """A one-row stand-in for experiments.seed_table (the real one needs training runs)."""
    row = {"row": "proposed", "dataset": dataset, "seeds": seeds}
    for m in (*METRICS, "specificity"):
        row.update({m: value, f"{m}_sd": 1.0, f"{m}_lo": lo, f"{m}_hi": hi})
    return pd.DataFrame([row])


# ----------------------------------------------------------------------------- the loader
def test_metric_order_is_the_toml_s():
    assert tuple(_raw()["metrics"]) == METRICS


def test_table2_as_printed():
    t = paper_000("table2").set_index("cite")
    assert (t["dataset"] == "udiat").all()
    assert list(t.index) == [PAPER_KEY, "byra2019transfer", "byra2019kendall", "ning2020multiscale"]
    assert t.loc[PAPER_KEY, list(METRICS)].tolist() == [96.45, 95.20, 96.80, 96.00, 98.10]
    assert t.loc["byra2019transfer", "accuracy"] == 84.00
    assert t.loc["byra2019transfer", "auc"] == 89.30
    assert t.loc["ning2020multiscale", "recall"] == 92.70
    # "-" in the paper: not reported, NaN (never 0)
    assert t.loc["byra2019kendall", ["precision", "f1"]].isna().all()
    assert t[["precision", "f1"]].drop(index=PAPER_KEY).isna().all().all()


def test_table3_as_printed():
    t = paper_000("table3").set_index("cite")
    assert (t["dataset"] == "busi").all()
    assert t.loc["moon2020ensemble", list(METRICS)].tolist() == [90.77, 72.50, 96.67, 82.86, 94.89]
    assert t.loc["das2021residual", "accuracy"] == 88.89
    assert math.isnan(t.loc["das2021residual", "auc"])
    assert t.loc["vigil2022dual", "accuracy"] == 85.30
    assert t.loc["vigil2022dual", ["precision", "recall", "f1", "auc"]].isna().all()
    assert t.loc[PAPER_KEY, "auc"] == 97.20   # as printed in Table 3 (Table 1: 97.25)


def test_unknown_table_is_refused():
    with pytest.raises(KeyError, match="table9"):
        paper_000("table9")


def test_cited_keys_are_in_the_bibliography():
    from pathlib import Path
    bib = (Path(__file__).parents[1] / "book" / "references.bib").read_text()
    keys = set(re.findall(r"@\w+\{([^,]+),", bib))
    for table in LITERATURE:
        assert set(paper_000(table)["cite"]) <= keys


def test_table1_proposed_row_is_analysis_paper_000():
    """analysis.PAPER_000 is read from the TOML: the proposed row, every dataset and metric."""
    t = paper_000("table1").query("model == 'proposed'").set_index("dataset")
    assert set(t.index) == set(analysis.PAPER_000)
    for dataset, numbers in analysis.PAPER_000.items():
        assert {m: float(t.loc[dataset, m]) for m in numbers} == numbers


# ----------------------------------------------------------------------------- the merge
def test_reported_rows_only_without_measurement():
    t = literature_table("table2")
    assert len(t) == 4 and (t["origin"] == "reported").all()
    assert t[[f"{m}_lo" for m in METRICS]].isna().all().all()


def test_merge_marks_provenance():
    t = literature_table("table3", measured_seed_table("busi", seeds=3), profile="cpu")
    assert list(t["origin"]) == ["reported"] * 4 + ["measured"]
    mine = t.iloc[-1]
    assert pd.isna(mine["cite"]) and mine["seeds"] == 3
    assert mine["where"] == "measured here (profile cpu, 3 seeds, 95% CI)"
    assert (mine["auc"], mine["auc_lo"], mine["auc_hi"]) == (90.0, 85.0, 95.0)
    assert "specificity" not in t.columns          # the paper's metrics only
    rep = t[t["origin"] == "reported"].set_index("cite")
    assert rep.loc["moon2020ensemble", "where"] == \
        "reported by Moon et al., 2020 (as quoted in paper 000)"
    assert rep.loc[PAPER_KEY, "where"].startswith("reported by paper 000 for its own model")
    assert rep["seeds"].isna().all()
    # the reported numbers pass through untouched
    pd.testing.assert_frame_equal(
        rep[list(METRICS)].reset_index(drop=True),
        paper_000("table3")[list(METRICS)].reset_index(drop=True))


def test_one_seed_is_singular():
    t = literature_table("table2", measured_seed_table("udiat", seeds=1), profile="smoke")
    assert t.iloc[-1]["where"] == "measured here (profile smoke, 1 seed, 95% CI)"


def test_merge_picks_the_table_s_data_set():
    both = pd.concat([measured_seed_table("udiat", 70.0), measured_seed_table("busi", 80.0)])
    assert literature_table("table2", both).iloc[-1]["auc"] == 70.0
    assert literature_table("table3", both).iloc[-1]["auc"] == 80.0
    with pytest.raises(ValueError, match="exactly one measured row for udiat"):
        literature_table("table2", measured_seed_table("busi"))
    with pytest.raises(KeyError):
        literature_table("table1")


def test_markdown_table_cites_and_formats():
    md = markdown_table(literature_table("table3", measured_seed_table("busi", 91.234, 88.0, 93.5)))
    lines = md.splitlines()
    assert len(lines) == 2 + 5
    assert all(line.count("|") == lines[0].count("|") for line in lines)
    assert "{cite:t}`moon2020ensemble`" in md and f"{{cite:t}}`{PAPER_KEY}`" in md
    vigil = next(line for line in lines if "Vigil" in line)
    assert "| 85.30 | - | - | - | - |" in vigil       # as printed, "-" where not reported
    assert "**91.2** (88.0–93.5)" in lines[-1] and "this book" in lines[-1]


# ----------------------------------------------------------------------------- interpretation
def test_the_paper_s_own_inconsistency_is_found():
    m = own_row_mismatches()
    assert m.to_dict("records") == [{"table": "table3", "dataset": "busi", "metric": "auc",
                                     "value": 97.20, "table1": 97.25}]


def test_placement():
    t = literature_table("table3", measured_seed_table("busi", 90.0, 85.0, 95.0))
    p = placement(t, "auc")
    assert p["above"] == [("paper 000's own model", 97.20)]
    assert p["inside"] == [("Moon et al., 2020", 94.89)]
    assert p["below"] == []
    assert p["not_reported"] == ["Das and Rana, 2021", "Vigil et al., 2022"]
    assert (p["rank"], p["n"]) == (3, 3)
    a = placement(t, "accuracy")
    assert [label for label, _ in a["inside"]] == ["Moon et al., 2020", "Das and Rana, 2021",
                                                   "Vigil et al., 2022"]
    assert (a["rank"], a["n"]) == (3, 5)
    text = describe_placement(p)
    assert text.startswith("AUC 90.0 % (95% CI 85.0–95.0), place 3 of the 3 rows")
    assert "reported above our interval: paper 000's own model (97.20); inside our interval: Moon" in text
    assert "not reported by Das and Rana, 2021, Vigil et al., 2022" in text


def test_placement_below_everything_and_above_everything():
    low = placement(literature_table("table2", measured_seed_table("udiat", 50.0, 45.0, 55.0)), "auc")
    assert low["rank"] == low["n"] == 5 and len(low["above"]) == 4 and not low["below"]
    high = placement(literature_table("table2", measured_seed_table("udiat", 99.5, 99.0, 100.0)),
                     "auc")
    assert high["rank"] == 1 and len(high["below"]) == 4
    assert np.isfinite(high["value"])


def test_placement_needs_a_measured_row():
    with pytest.raises(ValueError, match="exactly one measured row"):
        placement(literature_table("table2"), "auc")
