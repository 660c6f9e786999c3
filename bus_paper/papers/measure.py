"""What every paper's claims module needs: the chapters' result files, a model's learning checks,
and one claim's measurement.

A claims module (``pNNN/claims.py``) holds ``CLAIMS`` (:class:`~bus_paper.core.stats.Claim`: the
paper's words and number, as data) and ``measure(claim, results) -> Measured``: our value, its 95%
interval and the learning checks of the model(s) the claim rests on, read from the result files
of the chapters that measured it. Verdicts are not written here: :func:`bus_paper.papers.table.row`
asks :func:`~bus_paper.core.stats.verdict`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..config import Profile, load_profile
from ..core import MissingResult
from ..core.stats import Check, nt_xent_chance, seed_auc_check, ssl_loss_check

nan = math.nan


@dataclass(frozen=True)
class Measured:
    """Our measurement of one claim, in percentage points (NaN: nothing measured)."""
    value: float = nan
    lo: float = nan
    hi: float = nan
    n_test: int | None = None       # test images behind the interval
    n_clusters: int | None = None   # only where the interval resampled clusters and says how many
    seeds: str = ""                 # "3", "3 vs 1", "5 folds"
    source: str = ""                # the interval's result file, e.g. table1/paired.csv
    checks: tuple[Check, ...] = ()  # learning checks of the model(s) the claim rests on
    testable: bool = True           # False: the data or the setting does not exist publicly


def not_testable(source: str = "") -> Measured:
    return Measured(source=source, testable=False)


def named(label: str, check: Check) -> Check:
    """The check with its model's name, as the claims table's ``mechanism`` column shows it."""
    return dataclasses.replace(check, name=f"{check.name} ({label})")


class Results:
    """The chapters' result files: ``where`` is the results root (``book/results``) or a function
    chapter name -> folder (a chapter's :meth:`~bus_paper.book.chapter.Chapter.sibling_results`)."""

    def __init__(self, where: str | os.PathLike | Callable[[str], Path],
                 profile: str | Profile = "cpu") -> None:
        self.folder = where if callable(where) else (lambda name: Path(where) / name)
        self.profile = load_profile(profile)
        self._cache: dict[str, pd.DataFrame] = {}

    def csv(self, chapter: str, name: str) -> pd.DataFrame:
        key = f"{chapter}/{name}.csv"
        if key not in self._cache:
            path = self.folder(chapter) / f"{name}.csv"
            if not path.is_file():
                raise MissingResult(f"{key} is missing (run `bus-paper run --only {chapter}`)")
            self._cache[key] = pd.read_csv(path)
        return self._cache[key]

    def one(self, chapter: str, name: str, **match: object) -> pd.Series:
        """The one row of ``chapter/name.csv`` whose columns equal ``match``."""
        t = self.csv(chapter, name)
        for col, value in match.items():
            t = t[t[col] == value]
        if len(t) != 1:
            raise MissingResult(f"{chapter}/{name}.csv: {len(t)} rows for {match}")
        return t.iloc[0]

    def n_test(self, dataset: str) -> int:
        """Test images of ``dataset``'s split (the fine-tuning chapter's split sizes)."""
        return int(self.one("finetuning", "split_sizes", dataset=dataset, part="test")["images"])

    # ------------------------------------------------------------------------- learning checks
    def ssl_chance(self, objective: str) -> float:
        """Loss of an encoder that knows nothing: NT-Xent ln(2N-1) at the profile's batch N (a
        run's own result records N as trained: the batch, or the pool when smaller);
        DINO ln K, K its prototypes (a uniform output over K)."""
        if objective == "dino":
            return math.log(self.profile.dino.out_dim)
        return nt_xent_chance(self.profile.pretrain.batch_size)

    def ssl_check(self, label: str, losses: Sequence[float], objective: str = "simclr",
                  chance: float | None = None) -> Check:
        """``chance``: the run's own chance loss where its result records it; else the
        profile's (:meth:`ssl_chance`)."""
        return named(label, ssl_loss_check(list(losses), self.ssl_chance(objective)
                                           if chance is None else chance))


def seeds_check(label: str, aucs: Sequence[float], where: str = "test",
                unit: str = "seed") -> Check:
    # The result files keep each run's *test* AUC (the validation AUCs stay in runs/): the best
    # record there is of whether a model learned; a run at or below 0.5 fails it.
    return named(label, seed_auc_check(list(aucs), where, unit))
