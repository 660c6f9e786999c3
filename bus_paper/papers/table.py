"""The book's one claims table: every claim of papers 000, 001, 002, 004 and of our own chapter
(``beyond``), measured from the chapters' result files and judged by the one legend.

:func:`claims_table` asks each paper's ``claims.measure`` for the measurement and
:func:`~bus_paper.core.stats.verdict` for the word; :func:`display` and :func:`verdict_counts`
format it for the claims chapter (percent, one decimal), which writes it to
``book/results/claims/claims.csv``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

import pandas as pd

from ..config import Profile
from ..core import MISSING
from ..core.stats import LEGEND, Claim, mechanism, verdict
from .beyond import claims as beyond
from .measure import Measured, MissingResult, Results
from .p000 import claims as p000
from .p001 import claims as p001
from .p002 import claims as p002
from .p004 import claims as p004

COLUMNS = ("paper", "claim", "kind", "paper_value", "measured", "ci_low", "ci_high", "verdict",
           "mechanism", "n_test", "n_clusters", "seeds", "source")
PAPERS: dict[str, ModuleType] = {"000": p000, "001": p001, "002": p002, "004": p004,
                                 "beyond": beyond}
TITLES = {"000": "Paper 000: multiscale SSL CoAtNet (Wang et al. 2025)",
          "001": "Paper 001: MobileNetV2 + DenseNet121 fusion with attention (Asif et al. 2025)",
          "002": "Paper 002: lesion recognition as an auxiliary task (Guo et al. 2022)",
          "004": "Paper 004: multi-backbone feature fusion (Bashir & Bhosle 2025)",
          "beyond": "Beyond the papers: generalisation across sites"}


def row(claim: Claim, m: Measured) -> dict[str, Any]:
    """One row of the claims table: the claim, our measurement, the legend's word."""
    learned = all(c.passed for c in m.checks)
    word = verdict(claim.kind, claim.paper_value, m.lo, m.hi, learned=learned,
                   testable=m.testable, sign=claim.sign)
    return {"paper": claim.paper, "claim": claim.claim, "kind": claim.kind,
            "paper_value": claim.paper_value, "measured": m.value, "ci_low": m.lo,
            "ci_high": m.hi, "verdict": word,
            "mechanism": mechanism(m.checks) if m.testable else "n/a",
            "n_test": m.n_test, "n_clusters": m.n_clusters, "seeds": m.seeds,
            "source": m.source}


def claims_table(results: str | os.PathLike | Callable[[str], Path],
                 profile: str | Profile = "cpu",
                 papers: Iterable[str] | None = None,
                 only: Callable[[Claim], bool] | None = None) -> pd.DataFrame:
    """Every claim of ``papers`` (default all) measured from ``results`` (``book/results`` or a
    chapter name -> folder function) at ``profile`` (its batch sizes give the SSL chance levels);
    ``only`` keeps the claims it accepts (a chapter showing its own claims).

    A claim whose result files are absent (its chapter has not run) or give no interval (a
    degenerate test set, as on the smoke profile's phantoms) is left out and named, with the
    reason, in ``table.attrs["missing"]``; the claims chapter lists them.
    """
    r = Results(results, profile)
    rows, missing = [], []
    for key in papers or PAPERS:
        module = PAPERS[key]
        for claim in module.CLAIMS:
            if only is not None and not only(claim):
                continue
            try:
                rows.append(row(claim, module.measure(claim, r)))
            except MissingResult as err:
                missing.append(f"{claim.paper}: {claim.claim} ({err})")
            except (KeyError, ValueError, TypeError) as err:   # a result in another shape
                missing.append(f"{claim.paper}: {claim.claim} (cannot be measured from its "
                               f"result file: {type(err).__name__}: {err})")
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    for col in ("n_test", "n_clusters"):
        table[col] = table[col].astype("Int64")
    table.attrs["missing"] = missing
    return table


# ----------------------------------------------------------------------------- for readers
def _num(x: Any, signed: bool = False) -> str:
    return f"{x:+.1f}" if signed else f"{x:.1f}"


def _paper(r: pd.Series) -> str:
    v = r["paper_value"]
    if pd.isna(v):
        return "no number"
    # the paper's numbers as printed (97.25 stays 97.25)
    text = f"{round(float(v), 2):g}"
    return ("+" + text if v > 0 else text) if r["kind"] == "difference" else text


def _measured(r: pd.Series) -> str:
    if pd.isna(r["measured"]):
        return "not measured"
    signed = r["kind"] == "difference"
    # no-break spaces inside the interval: the line may break before it, never within it
    return (f"{_num(r['measured'], signed)} ({_num(r['ci_low'], signed)}\u00a0to\u00a0"
            f"{_num(r['ci_high'], signed)})")


def _tested_on(r: pd.Series) -> str:
    if pd.isna(r["n_test"]):
        return MISSING
    text = f"{int(r['n_test'])} images" + ("" if pd.isna(r["n_clusters"])
                                          else f" ({int(r['n_clusters'])} clusters)")
    seeds = "" if pd.isna(r["seeds"]) else str(r["seeds"]).strip()
    if seeds:
        text += ", " + (f"seeds {seeds}" if seeds[0].isdigit() and "fold" not in seeds
                        else seeds)
    return text


def display(table: pd.DataFrame, paper: str) -> pd.DataFrame:
    """One paper's rows for reading: numbers in percent with one decimal (the paper's as
    printed), intervals in words, no NaN. The result files each row was read from are not a
    column (they made the table too wide to read); :func:`source_files` lists them."""
    t = table[table["paper"].astype(str) == paper]
    return pd.DataFrame({
        "claim": t["claim"],
        "paper": t.apply(_paper, axis=1),
        "measured (95% CI)": t.apply(_measured, axis=1),
        "verdict": t["verdict"],
        "learning checks": t["mechanism"],
        "tested on": t.apply(_tested_on, axis=1),
    }).reset_index(drop=True)


def source_files(table: pd.DataFrame, paper: str) -> list[str]:
    """The result files (under ``book/results/``) one paper's rows were measured from."""
    t = table[table["paper"].astype(str) == paper]
    return sorted({s for s in t["source"].dropna().astype(str) if s})


# Column widths for the claims tables: the claim's words need room; an interval never breaks
# inside (no-break spaces, :func:`_measured`), only before it. Scoped by pandas' Styler (its id).
_STYLE = [{"selector": "", "props": "border-collapse: collapse;"},
          {"selector": "th, td", "props": "font-size: 0.85rem; vertical-align: top; "
                                          "padding: 0.2em 0.45em;"},
          {"selector": "td.col0", "props": "min-width: 14em;"},
          {"selector": "td.col4", "props": "min-width: 8em;"}]


def styled(rows: pd.DataFrame):
    """:func:`display`'s rows as an HTML table for the book: no row numbers, the claim column wide
    enough to read, the numbers kept on one line."""
    return rows.style.hide(axis="index").set_table_styles(_STYLE)


def compact(table: pd.DataFrame):
    """Any small table of the claims pages (counts, sources) in the claims tables' type size,
    without row numbers."""
    return table.style.hide(axis="index").set_table_styles(_STYLE[:2])


def summary(table: pd.DataFrame) -> str:
    """Markdown for a chapter that shows its own claims: how many got each word of the legend, the
    learning checks that failed, and the claims that could not be measured (with the reason)."""
    words = [f"{int((table['verdict'] == w).sum())} *{w}*" for w in LEGEND
             if (table["verdict"] == w).any()]
    text = (f"{len(table)} claim{'s' if len(table) != 1 else ''}, judged by the book's one legend "
            "(the claims chapter): " + (", ".join(words) if words else "none measured") + ".")
    failed = sorted({c for m in table["mechanism"].dropna().astype(str) if m.startswith("failed")
                     for c in m.removeprefix("failed: ").split("; ")})
    if failed:
        text += (" *Not tested at this budget* means a model the claim rests on failed a learning "
                 "check; untested, not refuted. Failed here: " + "; ".join(failed) + ".")
    missing = table.attrs.get("missing") or []
    if missing:
        text += "\n\nNot measured:\n\n" + "\n".join(f"- {m}" for m in missing)
    return text


def verdict_counts(table: pd.DataFrame) -> pd.DataFrame:
    """Claims per paper and verdict (the legend's words in its order, those that occur)."""
    words = [w for w in LEGEND if (table["verdict"] == w).any()]
    counts = pd.crosstab(table["paper"].astype(str), table["verdict"]).reindex(
        index=[p for p in PAPERS if p in set(table["paper"].astype(str))], columns=words,
        fill_value=0)
    counts["claims"] = counts.sum(axis=1)
    counts.index.name, counts.columns.name = "paper", None
    return counts


def sources(results: str | os.PathLike | Callable[[str], Path],
            chapters: Iterable[str]) -> pd.DataFrame:
    """Provenance of the result folders read: profile, commit, time of each chapter's run."""
    folder = results if callable(results) else (lambda name: Path(results) / name)
    rows = []
    for name in chapters:
        path = folder(name) / "provenance.json"
        p = json.loads(path.read_text()).get("provenance", {}) if path.is_file() else {}
        git = p.get("git") or {}
        where = os.path.relpath(folder(name))   # book/results/table1, not one machine's path
        rows.append({"chapter": name, "folder": where if not where.startswith("..") else
                     str(folder(name)),
                     "profile": p.get("profile", "not run"),
                     "commit": str(git.get("commit") or MISSING)[:12] + (" (dirty)" if git.get(
                         "dirty") else ""),
                     "time": str(p.get("timestamp", MISSING))[:19]})
    return pd.DataFrame(rows)
