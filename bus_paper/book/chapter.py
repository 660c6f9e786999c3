"""What a chapter notebook imports: :func:`chapter` turns its papermill parameters into a
:class:`Chapter` (profile, data root, results folder, provenance-stamped savers), so the notebooks
stay thin; :data:`READS` declares which chapters read which (the runner hashes and orders by it).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import plotting
from ..config import Profile, as_list, load_profile  # as_list: notebooks' name
from ..core import MISSING
from ..paths import project_root, runs_dir
from ..provenance import atomic_write_text, provenance, save_result, save_table, stamp

__all__ = ["READS", "READS_FILE", "Chapter", "as_list", "chapter", "readable", "resolve_data_root",
           "seed_list"]

# Which chapters read which other chapters' result files: a reader's content hash includes those
# files (it re-runs when one changes) and `run` executes it after them.
# A chapter records the siblings it actually read (READS_FILE, written by
# Chapter.sibling_results); the runner warns about, and the end-to-end test fails on, any it did
# not declare here: an undeclared read would leave the chapter's verdicts stale when that sibling
# changes. (The ablations and paper 001 chapters judge their own claims with the learning checks
# of the pretraining and fine-tuning chapters.)
READS: dict[str, tuple[str, ...]] = {
    "claims": ("finetuning", "pretraining", "table1", "ablations", "label_efficiency", "heatmaps",
               "literature", "paper001", "paper002", "paper004", "generalisation", "ssl_budget"),
    "ablations": ("pretraining", "finetuning"),
    "paper001": ("finetuning",),
}
READS_FILE = "_reads.json"   # in a chapter's results folder while it runs; the runner removes it


def registry_datasets() -> tuple[str, ...]:
    from ..data.registry import DATASETS
    return tuple(DATASETS)


def resolve_data_root(profile: Profile | str, data_root: str | os.PathLike | None) -> Path:
    """The data root a notebook reads: explicit > phantom (synthetic profile) > the default root."""
    from ..data.manifest import root_for
    return root_for(load_profile(profile).data, data_root)


# ----------------------------------------------------------------------------- inside a notebook
@dataclass
class Chapter:
    """What a chapter notebook needs, built from its papermill parameters by :func:`chapter`."""
    name: str
    profile: Profile
    data_root: Path
    results_dir: Path
    seed: int
    datasets: tuple[str, ...]
    started: float = field(default_factory=time.time)
    _prov: dict[str, Any] | None = field(default=None, repr=False)

    def provenance(self) -> dict[str, Any]:
        """The chapter's provenance; git, checksums and hardware are gathered once per chapter."""
        if self._prov is None:
            self._prov = provenance(self.profile, self.seed, self.data_root, self.datasets,
                                    self.started)
        return {**self._prov, **stamp(self.started)}

    def provenance_table(self, seeds: Sequence[int] | None = None, **extra: Any):
        """The chapter's closing provenance table (a one-column DataFrame): profile, seed(s),
        commit, data root, ``extra`` entries (e.g. an encoder key), data checksums, hardware,
        time and wall time so far."""
        import pandas as pd
        prov = self.provenance()
        git = prov["git"]
        hw = prov["hardware"]
        rows = {"profile": prov["profile"],
                **({"seeds": ", ".join(map(str, seeds))} if seeds is not None
                   else {"seed": prov["seed"]}),
                "git commit": f"{git['commit'][:12]}{' (dirty)' if git['dirty'] else ''}",
                "data root": prov["data_root"], **extra,
                **{f"sha256 {k}": v[:16] for k, v in prov["data_checksums"].items()},
                "cpu": f"{hw['cpu']} ({hw['cores_usable']} cores)", "torch": hw["torch"],
                "time": prov["timestamp"], "wall (s)": prov["wall_s"]}
        return pd.Series(rows, name="value").to_frame()

    def sibling_results(self, name: str) -> Path:
        """Another chapter's results folder: beside this chapter's own if there (a book run, or
        one into runs/ or --out), else the book's (a run by hand or with -p reads the book).
        The name is added to the chapter's record of what it read (:data:`READS_FILE`).
        This chapter's own name gives its own folder, the results of this run: under
        ``bus-paper run`` that is a staging folder, and the folder of its name beside it holds
        the previous run's results, which a chapter judging its own claims must not read."""
        if name == self.name:
            return self.results_dir
        record = self.results_dir / READS_FILE
        read = set(json.loads(record.read_text())) if record.is_file() else set()
        if name not in read:
            atomic_write_text(record, json.dumps(sorted(read | {name})))
        own = self.results_dir.parent / name
        return own if own.is_dir() else project_root() / "book" / "results" / name

    def save_result(self, name: str, payload: Mapping[str, Any]) -> Path:
        return save_result(self.results_dir, name, payload, self.provenance())

    def save_table(self, name: str, table: Any) -> Path:
        return save_table(self.results_dir, name, table, self.provenance())

    def save_figure(self, name: str, fig: Any, data: Mapping[str, Any] | None = None) -> Path:
        return plotting.save_figure(self.results_dir, name, fig, self.provenance(), data)


def readable(table: Any, index: str | Sequence[str] | None = None) -> Any:
    """A result table as a reader should see it (the saved table keeps its machine form): the
    ``index`` column(s) as row labels instead of row numbers (None: the first column, if the rows
    are only numbered), ``snake_case`` headers in words,
    missing values as MISSING (not ``<NA>``), booleans as yes / no.

    >>> import pandas as pd
    >>> readable(pd.DataFrame({"data_set": ["a"], "counts_match": [True], "n": [pd.NA]}), "data_set")
             counts match  n
    data set                
    a                 yes  –
    """
    import pandas as pd
    t = table.copy()
    for c in t.columns:
        if pd.api.types.is_bool_dtype(t[c]):
            t[c] = t[c].map({True: "yes", False: "no"})
    t = t.astype(object).where(t.notna(), MISSING)
    t.columns = [str(c).replace("_", " ") for c in t.columns]
    if index is None and isinstance(table.index, pd.RangeIndex) and len(t.columns) > 1:
        index = t.columns[0]
    if index is not None:
        t = t.set_index([str(c).replace("_", " ") for c in as_list(index)])
    return t


def seed_list(seeds: Any, profile: str) -> list[int]:
    """A chapter's ``seeds`` parameter as ints; None means the profile's fine-tuning seeds."""
    return [int(s) for s in as_list(seeds if seeds is not None
                                    else load_profile(profile).finetune.seeds)]


def chapter(name: str, profile: str = "cpu", data_root: str | None = None,
            results_dir: str | None = None, seed: int = 0) -> Chapter:
    """Set up a chapter: figure style, profile, data root and where its results go.

    ``results_dir`` None (the notebook run by hand, not by ``bus-paper run``) sends results to
    ``runs/notebook-results/<name>`` so a manual run never overwrites the book's results; other
    chapters' results are then read from the book (:meth:`Chapter.sibling_results`).
    """
    plotting.setup()
    prof = load_profile(profile)
    root = resolve_data_root(prof, data_root)
    out = Path(results_dir) if results_dir else runs_dir() / "notebook-results" / name
    out.mkdir(parents=True, exist_ok=True)
    ch = Chapter(name, prof, root, out, int(seed), registry_datasets())
    # the commit and working-tree state of the code this chapter imported: gathered now, not at
    # its first save, which may come after an hour of training and after a commit
    ch.provenance()
    return ch
