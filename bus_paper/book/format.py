"""One way to read result files and to write numbers for the book's generated pages: a missing
value is ``core.MISSING`` ("–"), numbers have one decimal unless asked, an interval reads
``value (lo–hi)``."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..core import MISSING, MissingResult

__all__ = ["MissingResult"]  # re-exported: the pages import it from here


# ----------------------------------------------------------------------------- reading results
def load(results: Path, chapter: str, name: str) -> dict[str, Any]:
    path = results / chapter / f"{name}.json"
    if not path.is_file():
        raise MissingResult(f"`book/results/{chapter}/{name}.json` is missing "
                            f"(run `bus-paper run --only {chapter}`)")
    return json.loads(path.read_text())


def rows(payload: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A ``save_table`` result as a list of dicts."""
    return [dict(zip(payload["columns"], r)) for r in payload["rows"]]


def table(results: Path, chapter: str, name: str) -> list[dict[str, Any]]:
    return rows(load(results, chapter, name))


def _missing(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def num(x: Any, digits: int = 1) -> str:
    if _missing(x):
        return MISSING
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def plain(x: Any) -> str:
    """A setting as written (4 significant digits for floats: 0.0001 stays 0.0001)."""
    return f"{x:.4g}" if isinstance(x, float) and not math.isnan(x) else num(x)


def ci(value: Any, lo: Any, hi: Any) -> str:
    if _missing(value):
        return MISSING
    if _missing(lo) or _missing(hi):
        return num(value)
    return f"{num(value)} ({num(lo)}–{num(hi)})"


def signed_ci(value: Any, lo: Any, hi: Any) -> str:
    """A difference with its interval, signs shown: ``+16.3 (+5.5 to +27.6)``."""
    if _missing(value):
        return MISSING
    if _missing(lo) or _missing(hi):
        return f"{value:+.1f}"
    return f"{value:+.1f} ({lo:+.1f} to {hi:+.1f})"


def md_table(header: Sequence[str], body: Iterable[Sequence[Any]],
             align: Sequence[str] | None = None) -> str:
    def cell(x: Any) -> str:
        return num(x).replace("|", "\\|").replace("\n", " ")
    body = list(body)
    align = align or ["---"] * len(header)
    lines = ["| " + " | ".join(map(str, header)) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(cell(x) for x in r) + " |" for r in body]
    return "\n".join(lines)


def short_commit(git: Mapping[str, Any] | None) -> str:
    git = git or {}
    commit = str(git.get("commit") or "unknown")
    return f"`{commit[:12]}`" + (" (dirty)" if git.get("dirty") else "")
