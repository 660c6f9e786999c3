"""Run keys: a cached run is named by its recipe, never by the bytes of source files.

A run's key (the folder ``runs/<kind>/<key>/``) is a hash of what the run *is*: its kind, the
resolved configuration sections that shape it (``dataclasses.asdict``), the checksums of its
data, the split that carves them, the rule that selects its epoch and threshold, the keys of the
runs it starts from, and an integer recipe version per kind (:data:`RECIPE_VERSIONS`).

Why not hash the code, as the keys once did? Because moving, renaming, reformatting or commenting
a file must not retrain anything (the book is ~3 h of training), and a list of "the files that
shape a model" is wrong both ways: it re-trained everything for a docstring, and it missed files
that do decide a model (``metrics.py`` chooses the threshold, ``data/splits.py`` carves the
splits). So:

* a change that is *meant* to change numbers (a new loss, a fixed augmentation, another
  threshold rule) bumps its kind's version below, which retires exactly those cached runs;
* a change that changes numbers *by accident* is not the cache's business: the golden test
  (``tests/test_golden.py``) trains a few seeded smoke steps and compares losses, probabilities
  and the threshold with a committed record, and tells the developer which version to bump.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePath
from typing import Any

#: One integer per kind of cached run. Bump a kind's number when its numbers are *meant* to
#: change (and regenerate the golden record: ``BUS_PAPER_REGEN_GOLDEN=1 pytest
#: tests/test_golden.py``); a run that starts from another (fine-tuning from an encoder) has that
#: run's key in its own, so bumping ``pretrain`` retires the fine-tunings built on it too.
RECIPE_VERSIONS: dict[str, int] = {
    "pretrain": 1,              # SimCLR: the proposed model, Table 1 baselines, model families
    "dino": 1,                  # DINO pretraining of a baseline (Table 1's DINO-ViT)
    "finetune": 1,              # supervised fine-tuning on one dataset's leak-free split
    "pooled": 1,                # fine-tuning on the pooled splits of several datasets
    "lesion": 1,                # paper 002: CE + lesion-contrastive loss, BUS-BRA folds
    "compose": 1,               # paper 001: a fusion encoder assembled from SimCLR encoders
    "paper004-roi": 1,          # paper 004: cached regions of interest
    "paper004-mias-simclr": 1,  # paper 004: SimCLR on mini-MIAS tissue crops
    "paper004-features": 1,     # paper 004: frozen-encoder features of the ROIs
}

#: The selection rule of a supervised run: which epoch is kept, which threshold it gets.
SELECT_VAL_AUC_YOUDEN = ("epoch: best validation AUC (minus validation loss if validation has "
                         "one class); threshold: max Youden J on validation")
#: A self-supervised run keeps its last epoch (there is no validation to select on).
SELECT_LAST_EPOCH = "last epoch"

_RESERVED = ("kind", "version")


def recipe_version(kind: str) -> int:
    """The recipe version of ``kind`` (what result files record next to the key)."""
    try:
        return RECIPE_VERSIONS[kind]
    except KeyError:
        raise KeyError(f"no recipe version for run kind {kind!r}; add it to RECIPE_VERSIONS in "
                       f"bus_paper/core/runs.py (known: {', '.join(RECIPE_VERSIONS)})") from None


def _plain(obj: Any) -> Any:
    """JSON for the few non-JSON types a recipe holds; anything else is refused (a ``repr``
    with a memory address in it would make a key that never matches again)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, Mapping):
        return dict(obj)
    if isinstance(obj, PurePath):
        return obj.as_posix()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if hasattr(obj, "tolist"):  # numpy scalars and arrays, torch tensors
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} {obj!r} cannot be part of a run recipe; "
                    "pass plain values (numbers, strings, lists, dicts, dataclasses)")


def canonical_json(obj: Any) -> str:
    """Stable JSON: sorted keys, no whitespace, tuples as lists (a profile's tuples and the
    lists read back from a checkpoint's JSON give the same text)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      default=_plain)


def recipe(kind: str, **parts: Any) -> dict[str, Any]:
    """The recipe of a run of ``kind``: ``parts`` plus ``kind`` and its recipe version."""
    if clash := [k for k in _RESERVED if k in parts]:
        raise ValueError(f"recipe parts may not be named {clash}")
    return {"kind": kind, "version": recipe_version(kind), **parts}


def recipe_key(kind: str, **parts: Any) -> str:
    """The run key of a run of ``kind``: sha256 of the canonical JSON of :func:`recipe`, 16 hex.

    ``parts`` are what decides the run's numbers: configuration sections, data checksums, the
    split, the selection rule, seeds, the keys of the runs it starts from. Only their values
    count (never a file's bytes), so the same recipe gives the same key on any checkout.

    >>> recipe_key("finetune", seed=0, lr=1e-4) == recipe_key("finetune", lr=0.0001, seed=0)
    True
    >>> recipe_key("finetune", scales=(64, 32)) == recipe_key("finetune", scales=[64, 32])
    True
    """
    blob = canonical_json(recipe(kind, **parts))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def config_part(cfg: Any, without: Iterable[str] = ()) -> dict[str, Any]:
    """``dataclasses.asdict(cfg)`` (or a copy of a mapping) without the fields ``without``:
    fields that list *what* to run rather than *how* (e.g. ``finetune.seeds``)."""
    d = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
    for name in without:
        if name not in d:
            raise KeyError(f"{name!r} is not a field of {type(cfg).__name__}")
        d.pop(name)
    return d


# ----------------------------------------------------------------------------- which runs a chapter used
#: Set by the book's runner while a chapter executes: the file where every process that takes a
#: run's lock (:func:`bus_paper.train.engine.run_lock`) notes that run, once, and whether it was
#: already finished then (read from the cache) or trained now. What the chapter would cost from
#: an empty cache is its own wall time plus the training time of the runs it read from the cache.
LEDGER_ENV = "BUS_PAPER_RUNS_LEDGER"
_NOTED: set[str] = set()


def run_finished(run_dir: str | PurePath) -> bool:
    """Whether a cached run is complete: its ``done.json`` or ``result.json`` exists."""
    d = Path(run_dir)
    return (d / "done.json").is_file() or (d / "result.json").is_file()


def note_run_used(run_dir: str | PurePath) -> None:
    """Append ``run_dir`` to the ledger named by :data:`LEDGER_ENV` (once per process and
    ledger), with ``cached``: its ``done.json`` or ``result.json`` existed already."""
    ledger = os.environ.get(LEDGER_ENV)
    if not ledger or f"{ledger}\0{run_dir}" in _NOTED:
        return
    _NOTED.add(f"{ledger}\0{run_dir}")
    d = Path(run_dir)
    cached = run_finished(d)
    with open(ledger, "a") as f:  # one short line per write: appends from several processes interleave whole
        f.write(json.dumps({"run_dir": str(d), "cached": cached}) + "\n")


def training_seconds(run_dir: str | PurePath) -> float | None:
    """How long a finished run took to train, from its own records: ``result.json``'s
    ``seconds`` (a fine-tuning: training, selection and prediction), else the sum of the epochs'
    ``train_seconds`` in ``log.jsonl`` (a pretraining); None when neither records it."""
    d = Path(run_dir)
    try:
        seconds = json.loads((d / "result.json").read_text()).get("seconds")
        if isinstance(seconds, (int, float)):
            return float(seconds)
    except (OSError, ValueError, AttributeError):
        pass
    try:
        epochs = [json.loads(line) for line in (d / "log.jsonl").read_text().splitlines() if line]
        times = [e["train_seconds"] for e in epochs if "train_seconds" in e]
        return float(sum(times)) if times else None
    except (OSError, ValueError, TypeError):
        return None


def ledger_summary(ledger: str | PurePath, root: str | PurePath | None = None) -> dict[str, Any]:
    """What a chapter's ledger says: how many runs it used, how many it read from the cache, and
    the training time those cached runs recorded (``cached_training_s``; ``untimed``: cached
    runs that record none). ``cached`` maps each cached run (its folder relative to ``root``, the
    runs folder, where it lies inside) to its seconds; ``trained`` lists the runs trained during
    the chapter, whose time its wall time holds: a whole book's estimate counts each run once."""
    path = Path(ledger)
    lines = path.read_text().splitlines() if path.is_file() else []
    used: dict[str, bool] = {}
    for line in lines:
        try:
            e = json.loads(line)
        except ValueError:
            continue
        used[e["run_dir"]] = used.get(e["run_dir"], True) and bool(e["cached"])

    def name(d: str) -> str:
        try:
            return Path(d).resolve().relative_to(Path(root).resolve()).as_posix() if root else d
        except ValueError:
            return d
    cached = {name(d): training_seconds(d) for d, c in sorted(used.items()) if c}
    return {"runs": len(used), "cached_runs": len(cached),
            "cached_training_s": float(sum(t for t in cached.values() if t is not None)),
            "untimed": sum(t is None for t in cached.values()),
            "cached": cached, "trained": sorted(name(d) for d, c in used.items() if not c)}
