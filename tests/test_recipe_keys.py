"""The run keys of the shipped profiles are a record (tests/golden/recipe_keys.json): a refactor
that moves or rewrites code must leave every key as it is, so that no cached run is retrained and
none is silently reused for another recipe (issue 17). The keys hash recipes only (config
sections, split, selection rule, recipe version, data checksums: stand-ins here), so this runs in
seconds and needs no data.

A change that is meant to change a recipe changes keys: bump the kind's RECIPE_VERSIONS entry in
bus_paper/core/runs.py if the numbers change too, and rewrite the record with
``BUS_PAPER_REGEN_GOLDEN=1 pytest tests/test_recipe_keys.py``. (The record was written by the
commit that moved every paper into bus_paper/papers/, and was checked identical to the keys the
code before that move computes.)
"""

from __future__ import annotations

import json
import os
import pathlib

from bus_paper.config import PROFILE_NAMES, load_profile
from bus_paper.models.baselines import BASELINES
from bus_paper.papers.beyond.generalisation import pooled_key
from bus_paper.papers.p000.experiments import pretraining_profile
from bus_paper.papers.p001.experiments import network_for
from bus_paper.papers.p002.train import run_key, settings_for
from bus_paper.train.dino import dino_key
from bus_paper.train.finetuning import finetune_key
from bus_paper.train.pretraining import pretrain_key

RECORD = pathlib.Path(__file__).parent / "golden" / "recipe_keys.json"
SUMS = {"busbra": "a" * 64, "busuclm": "b" * 64}


def keys() -> dict[str, str]:
    out = {}
    for name in PROFILE_NAMES:
        p = load_profile(name)
        out[f"{name} pretrain proposed"] = pretrain_key(p, SUMS)
        for b in sorted(BASELINES):
            out[f"{name} pretrain {b}"] = pretrain_key(pretraining_profile(p, b), SUMS, baseline=b)
        out[f"{name} dino"] = dino_key(p, "vit_small", p.dino, SUMS)
        for d in ("busi", "udiat"):
            for s in (0, 1, 2):
                out[f"{name} finetune {d} {s}"] = finetune_key(p, d, s, "enc", "c" * 64)
        out[f"{name} pooled"] = pooled_key(p, ["busi", "udiat", "busbra"], 0, "enc", {"x": 1},
                                           {"busi": "d"})
        out[f"{name} lesion"] = run_key(p, "lr", 0, 0, settings_for(p), 1.0, 1.0, "enc", "e")
        out[f"{name} p001 fusion pretrain"] = pretrain_key(p, SUMS, network=network_for(p, "proposed"))
    return out


def test_a_refactor_keeps_every_run_key():
    now = keys()
    if os.environ.get("BUS_PAPER_REGEN_GOLDEN") == "1":
        RECORD.write_text(json.dumps(now, indent=1, sort_keys=True) + "\n")
    record = json.loads(RECORD.read_text())
    changed = sorted(k for k in record if now.get(k) != record[k])
    assert not changed and set(now) == set(record), (
        f"run keys changed: {changed[:6]}{' ...' if len(changed) > 6 else ''}; a refactor must keep "
        "them (cached runs would retrain); if the recipe is meant to change, regenerate with "
        "`BUS_PAPER_REGEN_GOLDEN=1 pytest tests/test_recipe_keys.py` (see the module docstring)")


def test_the_ledger_notes_each_run_once_and_sums_what_the_cached_ones_took(tmp_path, monkeypatch):
    from bus_paper.core import runs as R
    ledger = tmp_path / "ledger.jsonl"
    fine, pre, untimed, fresh = (tmp_path / n for n in ("fine", "pre", "untimed", "fresh"))
    for d in (fine, pre, untimed, fresh):
        d.mkdir()
    (fine / "result.json").write_text('{"seconds": 90.0}')
    (pre / "done.json").write_text("{}")
    (pre / "log.jsonl").write_text('{"epoch": 0, "train_seconds": 100.5}\n'
                                   '{"epoch": 1, "train_seconds": 50.0}\n')
    (untimed / "done.json").write_text("{}")
    assert R.training_seconds(fine) == 90.0 and R.training_seconds(pre) == 150.5
    assert R.training_seconds(untimed) is None and R.training_seconds(fresh) is None
    R.note_run_used(fine)                       # no ledger set: nothing is written
    assert not ledger.exists()
    monkeypatch.setenv(R.LEDGER_ENV, str(ledger))
    for d in (fine, pre, untimed, fresh, fine):
        R.note_run_used(d)
    assert len(ledger.read_text().splitlines()) == 4   # once per run
    assert R.ledger_summary(ledger, tmp_path) == {
        "runs": 4, "cached_runs": 3, "cached_training_s": 240.5, "untimed": 1,
        "cached": {"fine": 90.0, "pre": 150.5, "untimed": None}, "trained": ["fresh"]}
    assert R.ledger_summary(ledger)["trained"] == [str(fresh)]       # no root: as noted
    assert R.ledger_summary(tmp_path / "none.jsonl") == {
        "runs": 0, "cached_runs": 0, "cached_training_s": 0.0, "untimed": 0, "cached": {},
        "trained": []}
