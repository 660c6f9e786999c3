"""Published numbers, kept as data: paper 000's Tables 1-5 (``paper_000.toml``), as printed.

>>> t = paper_000("table1")
>>> float(t.query("model == 'proposed' and dataset == 'udiat'")["auc"].iloc[0])
98.1
"""

from __future__ import annotations

import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import pandas as pd

HERE = Path(__file__).parent
TABLES = ("table1", "table2", "table3", "ablations")


@cache
def _raw() -> dict[str, Any]:
    with open(HERE / "paper_000.toml", "rb") as fh:
        return tomllib.load(fh)


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
