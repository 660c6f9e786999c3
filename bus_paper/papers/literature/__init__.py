"""Published numbers, kept as data: paper 000's Tables 1-5 (``paper_000.toml``), as printed.

>>> t = paper_000("table1")
>>> float(t.query("model == 'proposed' and dataset == 'udiat'")["auc"].iloc[0])
98.1

Tables 2 (UDIAT) and 3 (BUSI) quote other works; :func:`literature_table` sets our measured row
beside them, each row marked with where its numbers come from, and :func:`placement` says where the
measured row falls among the reported ones.
"""

from __future__ import annotations

import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import pandas as pd

HERE = Path(__file__).parent
TABLES = ("table1", "table2", "table3", "ablations")
METRICS = ("accuracy", "precision", "recall", "f1", "auc")   # the paper's, in its order
LITERATURE = {"table2": "udiat", "table3": "busi"}          # the data set of each literature table
PAPER_KEY = "wang2025multiscale"                             # paper 000's BibTeX key
METRIC_NAMES = {"accuracy": "Accuracy", "precision": "Precision", "recall": "Recall",
                "f1": "F1", "auc": "AUC"}


@cache
def load_numbers(paper: str) -> dict[str, Any]:
    """The published numbers of ``paper`` (``literature/<paper>.toml``, e.g. ``paper_002``)."""
    with open(HERE / f"{paper}.toml", "rb") as fh:
        return tomllib.load(fh)


def _raw() -> dict[str, Any]:
    return load_numbers("paper_000")


def paper_000(table: str) -> pd.DataFrame:
    """One of paper 000's tables as a long-enough frame, metrics in % (NaN: not reported).

    ``table1`` and ``ablations``: one row per model/variant and dataset (``udiat``, ``busi``);
    ``table2`` (UDIAT) and ``table3`` (BUSI): one row per cited work, with its BibTeX key.
    """
    if table not in TABLES:
        raise KeyError(f"unknown table {table!r}; choose one of {', '.join(TABLES)}")
    raw = _raw()
    metrics = raw["metrics"]
    rows = []
    for entry in raw[table]:
        meta = {k: v for k, v in entry.items() if not isinstance(v, list)}
        if "values" in entry:
            rows.append({**meta, "dataset": "udiat" if table == "table2" else "busi",
                         **dict(zip(metrics, entry["values"], strict=True))})
        else:
            for dataset in ("udiat", "busi"):
                rows.append({**meta, "dataset": dataset,
                             **dict(zip(metrics, entry[dataset], strict=True))})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- Tables 2-3
def literature_table(table: str, measured: pd.DataFrame | None = None, *,
                     profile: str | None = None, label: str = "Proposed model, measured here"
                     ) -> pd.DataFrame:
    """Paper 000's Table 2 (UDIAT) or 3 (BUSI) as printed, with our measured row appended.

    ``measured`` is a :func:`~bus_paper.papers.p000.experiments.seed_table` (mean and 95% CI columns, in %)
    holding one row for the table's data set. Every row says where its numbers come from:
    ``origin`` is ``reported`` (copied from paper 000, which quotes the cited work, or reports its
    own model) or ``measured`` (this book); ``where`` says it in words. Columns: ``label``,
    ``cite`` (BibTeX key; None for the measured row), ``dataset``, ``origin``, ``where``,
    ``seeds``, each metric and its ``_lo``/``_hi`` (NaN for reported rows: none gives an interval).
    """
    if table not in LITERATURE:
        raise KeyError(f"{table!r} is not a literature table; choose one of {', '.join(LITERATURE)}")
    dataset = LITERATURE[table]
    pub = paper_000(table)
    rows = []
    for _, r in pub.iterrows():
        own = r["cite"] == PAPER_KEY
        where = ("reported by paper 000 for its own model (no split seed, seed count or interval "
                 "given)" if own else f"reported by {r['label']} (as quoted in paper 000)")
        rows.append({"label": r["label"], "cite": r["cite"], "dataset": dataset,
                     "origin": "reported", "where": where, "seeds": pd.NA,
                     **{m: float(r[m]) for m in METRICS},
                     **{f"{m}_{b}": float("nan") for m in METRICS for b in ("lo", "hi")}})
    if measured is not None:
        mine = measured[measured["dataset"] == dataset]
        if len(mine) != 1:
            raise ValueError(f"need exactly one measured row for {dataset}, got {len(mine)}")
        m_row = mine.iloc[0]
        n = int(m_row["seeds"])
        prof = f"profile {profile}, " if profile else ""
        rows.append({"label": label, "cite": None, "dataset": dataset, "origin": "measured",
                     "where": f"measured here ({prof}{n} seed{'s' if n != 1 else ''}, 95% CI)",
                     "seeds": n, **{m: float(m_row[m]) for m in METRICS},
                     **{f"{m}_{b}": float(m_row[f"{m}_{b}"]) for m in METRICS
                        for b in ("lo", "hi")}})
    out = pd.DataFrame(rows)
    out["seeds"] = out["seeds"].astype("Int64")
    return out


def markdown_table(frame: pd.DataFrame, metrics: tuple[str, ...] = METRICS) -> str:
    """A :func:`literature_table` as a MyST Markdown table: a ``source`` column with the cited
    work as a ``{cite:t}`` role (``this book`` for measured rows), the ``where`` column, reported
    values as printed (2 decimals, ``-`` if not reported), measured ones as ``mean (lo-hi)``.

    The roles render only where the Markdown is parsed as MyST (a markdown cell, or an output of a
    cell with ``mystnb: {markdown_format: myst}`` metadata).
    """
    head = ["row (as labelled in paper 000)", "source", "where the number comes from",
            *(METRIC_NAMES[m] for m in metrics)]
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join(["---"] * 3 + ["--:"] * len(metrics)) + "|"]
    for _, r in frame.iterrows():
        measured = r["origin"] == "measured"
        source = "this book" if measured else f"{{cite:t}}`{r['cite']}`"
        cells = []
        for m in metrics:
            v = r[m]
            if pd.isna(v):
                cells.append("-")
            elif measured:
                cells.append(f"**{v:.1f}** ({r[m + '_lo']:.1f}–{r[m + '_hi']:.1f})")
            else:
                cells.append(f"{v:.2f}")
        label = f"**{r['label']}**" if measured else r["label"]
        row = [label, source, r["where"], *cells]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |")
    return "\n".join(lines)


def own_row_mismatches() -> pd.DataFrame:
    """Cells where paper 000's own row in Table 2 or 3 differs from its Table 1 (same model, same
    data set): columns ``table``, ``dataset``, ``metric``, ``value`` (Tables 2-3), ``table1``."""
    t1 = paper_000("table1").query("model == 'proposed'").set_index("dataset")
    out = []
    for table, dataset in LITERATURE.items():
        own = paper_000(table).query("cite == @PAPER_KEY")
        if len(own) != 1:
            raise ValueError(f"{table}: expected one row of paper 000's own model, got {len(own)}")
        for m in METRICS:
            v, ref = float(own[m].iloc[0]), float(t1.loc[dataset, m])
            if v != ref:
                out.append({"table": table, "dataset": dataset, "metric": m, "value": v,
                            "table1": ref})
    return pd.DataFrame(out, columns=["table", "dataset", "metric", "value", "table1"])


def placement(frame: pd.DataFrame, metric: str) -> dict[str, Any]:
    """Where the measured row of a :func:`literature_table` falls among the reported rows.

    Returns the measured ``value``, ``lo``, ``hi``; the reported rows ``above`` the measured
    interval, ``inside`` it and ``below`` it (lists of (label, value), highest first),
    ``not_reported`` (labels whose value is NaN) and ``rank``: the measured mean's place among
    itself and the reported values, highest first (1 = best), of ``n`` ranked rows.
    """
    mine = frame[frame["origin"] == "measured"]
    if len(mine) != 1:
        raise ValueError(f"need exactly one measured row, got {len(mine)}")
    me = mine.iloc[0]
    value, lo, hi = float(me[metric]), float(me[f"{metric}_lo"]), float(me[f"{metric}_hi"])
    rep = frame[frame["origin"] == "reported"]
    given = rep[rep[metric].notna()].sort_values(metric, ascending=False)
    pairs = [("paper 000's own model" if r["cite"] == PAPER_KEY else r["label"], float(r[metric]))
             for _, r in given.iterrows()]
    return {"metric": metric, "value": value, "lo": lo, "hi": hi,
            "above": [p for p in pairs if p[1] > hi],
            "inside": [p for p in pairs if lo <= p[1] <= hi],
            "below": [p for p in pairs if p[1] < lo],
            "not_reported": rep.loc[rep[metric].isna(), "label"].tolist(),
            "rank": 1 + sum(p[1] > value for p in pairs), "n": len(pairs) + 1}


def describe_placement(p: dict[str, Any]) -> str:
    """One sentence (Markdown) from :func:`placement`."""
    def names(pairs):
        return ", ".join(f"{label} ({v:.2f})" for label, v in pairs)

    name = METRIC_NAMES.get(p["metric"], p["metric"])
    parts = [(f"{name} {p['value']:.1f} % (95% CI {p['lo']:.1f}–{p['hi']:.1f}), place "
              f"{p['rank']} of the {p['n']} rows that give it (highest first)")]
    if p["above"]:
        parts.append(f"reported above our interval: {names(p['above'])}")
    if p["inside"]:
        parts.append(f"inside our interval: {names(p['inside'])}")
    if p["below"]:
        parts.append(f"below our interval: {names(p['below'])}")
    text = "; ".join(parts)
    if p["not_reported"]:
        text += f" (not reported by {', '.join(p['not_reported'])})"
    return text + "."
