"""Golden smoke run: a few seeded steps of SimCLR pretraining and fine-tuning of the proposed
model on phantom data must give the committed numbers (``tests/golden/smoke_recipe.json``).

Run keys are recipes, not file hashes (:mod:`bus_paper.core.runs`): editing a file keeps every
cached run. This test is what catches an edit that changes numbers. If the change is intended,
bump the kind's ``RECIPE_VERSIONS`` entry (so the cached runs it affects are retired) and rewrite
the record with ``BUS_PAPER_REGEN_GOLDEN=1 pytest tests/test_golden.py``.

Arithmetic is fp32 everywhere (``BUS_PAPER_CPU_BF16=0``) on one thread. Two runs on one machine are
bit-identical; another CPU's fp32 kernels (AVX-512 vs AVX2) round differently, so the numbers are
compared to 1e-4: a deliberate one-line change (a temperature x 1.01) moved a loss by 3e-2.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
import pathlib
import platform

import pytest
import torch

from bus_paper.config import load_profile
from bus_paper.core import runs
from bus_paper.core.runs import RECIPE_VERSIONS, recipe_key

RECORD = pathlib.Path(__file__).parent / "golden" / "smoke_recipe.json"
REGEN = os.environ.get("BUS_PAPER_REGEN_GOLDEN") == "1"
TOL = 1e-4
DATASET, SEED, N_PROBS = "busi", 0, 6   # the phantom busi test part has 6 images
#: the smoke profile, smaller batches (seconds, not minutes): 2 SimCLR steps, 2 x 2 fine-tuning
#: steps with a validation (the epoch selection) after each epoch
GOLDEN = load_profile("smoke").replace(**{
    "finetune.datasets": [DATASET], "pretrain.batch_size": 4, "pretrain.max_steps": 2,
    "finetune.batch_size": 4, "finetune.epochs": 2, "finetune.max_steps": 2})
#: stand-in data checksums for the key checks (the real ones depend on the PNG encoder)
CHECKSUMS = {"busbra": "a" * 16, "busuclm": "b" * 16, DATASET: "c" * 16}
HOW = ("numbers changed: if intended, bump RECIPE_VERSIONS[{kinds}] in bus_paper/core/runs.py "
       "and regenerate with `BUS_PAPER_REGEN_GOLDEN=1 pytest tests/test_golden.py`")


@pytest.fixture()
def golden_env(tmp_path, monkeypatch):
    """Fresh cache (phantom root) and runs folders, fp32 on every CPU, torch's RNG restored."""
    monkeypatch.setenv("BUS_PAPER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("BUS_PAPER_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("BUS_PAPER_CPU_BF16", "0")
    # (the engine reads the variable on every call; only the hardware detection is cached)
    rng, threads = torch.get_rng_state(), torch.get_num_threads()
    # one thread: the same reduction order on any machine (and, on a busy 2-core box, 5x faster
    # than two OpenMP threads that wait on each other)
    torch.set_num_threads(1)
    yield tmp_path
    torch.set_num_threads(threads)
    torch.set_rng_state(rng)


def _record_losses(monkeypatch, stage_cls, out: list[float]) -> None:
    real = stage_cls.train_step

    def train_step(self, idx):
        loss = real(self, idx)
        out.append(float(loss.detach()))
        return loss
    monkeypatch.setattr(stage_cls, "train_step", train_step)


def _keys() -> dict[str, str]:
    from bus_paper.train.finetuning import finetune_key
    from bus_paper.train.pretraining import pretrain_key
    pre = pretrain_key(GOLDEN, CHECKSUMS)
    return {"pretrain": pre,
            "finetune": finetune_key(GOLDEN, DATASET, SEED, pre, CHECKSUMS[DATASET])}


def _machine() -> str:
    return f"torch {torch.__version__}, {platform.machine()} {platform.processor() or ''}".strip()


def _read() -> dict:
    if not RECORD.exists():
        pytest.fail(f"no golden record at {RECORD}; create it with "
                    "`BUS_PAPER_REGEN_GOLDEN=1 pytest tests/test_golden.py`")
    return json.loads(RECORD.read_text())


def _differences(want: dict, got: dict) -> dict[str, list[str]]:
    """Per field, the entries that differ by more than TOL (lengths must match exactly)."""
    out: dict[str, list[str]] = {}
    for field, w in want.items():
        g = got[field]
        ws, gs = (w, g) if isinstance(w, list) else ([w], [g])
        if len(ws) != len(gs):
            out[field] = [f"{len(gs)} values, the record has {len(ws)}"]
            continue
        bad = [f"[{i}] {b!r} (record {a!r}, diff {b - a:+.3g})"
               for i, (a, b) in enumerate(zip(ws, gs)) if not math.isclose(a, b, rel_tol=0,
                                                                           abs_tol=TOL)]
        if bad:
            out[field] = bad
    return out


def test_smoke_numbers_match_the_golden_record(golden_env, monkeypatch):
    from bus_paper.train import finetune, pretrain
    from bus_paper.train.finetuning import FinetuneStage
    from bus_paper.train.pretraining import PretrainStage
    pre: list[float] = []
    fine: list[float] = []
    _record_losses(monkeypatch, PretrainStage, pre)
    _record_losses(monkeypatch, FinetuneStage, fine)
    encoder = pretrain(GOLDEN)
    result = finetune(GOLDEN, DATASET, seed=SEED, encoder_path=encoder)
    test = result["predictions"].query("split == 'test'")
    numbers = {"pretrain_losses": pre, "finetune_losses": fine,
               "test_probs": [float(p) for p in test.prob.iloc[:N_PROBS]],
               "threshold": float(result["threshold"])}
    assert len(pre) == 2 and len(fine) == 4 and len(numbers["test_probs"]) == N_PROBS
    assert all(math.isfinite(v) for v in pre + fine)
    if REGEN:
        RECORD.parent.mkdir(parents=True, exist_ok=True)
        RECORD.write_text(json.dumps(
            {"what": "tests/test_golden.py: smoke profile (smaller batches), phantom data, "
                     f"{DATASET} seed {SEED}, fp32, one thread; regenerate with "
                     "BUS_PAPER_REGEN_GOLDEN=1 pytest tests/test_golden.py",
             "recipe_versions": RECIPE_VERSIONS, "machine": _machine(), "keys": _keys(),
             **numbers}, indent=1) + "\n")
    record = _read()
    diff = _differences({k: record[k] for k in numbers}, numbers)
    if diff:
        # the first stage that changed: fine-tuning keys contain the encoder's key, so bumping
        # "pretrain" retires the fine-tunings built on it as well
        kind = "pretrain" if "pretrain_losses" in diff else "finetune"
        lines = [f"  {f}: " + "; ".join(d) for f, d in diff.items()]
        pytest.fail(HOW.format(kinds=repr(kind)) + "\n" + "\n".join(lines)
                    + f"\n(record made on {record.get('machine')}; this is {_machine()})",
                    pytrace=False)


def test_run_keys_are_the_committed_recipe_keys():
    """The smoke recipe's keys are the committed strings: computed twice, and from nothing but
    the recipe (a new version or a changed config changes them, an edited file does not)."""
    record = _read()
    assert _keys() == _keys() == record["keys"], (
        "the smoke recipe's run keys changed: a recipe part changed (a config default, what a "
        "key function includes) or a RECIPE_VERSIONS entry was bumped; if intended, regenerate "
        "with `BUS_PAPER_REGEN_GOLDEN=1 pytest tests/test_golden.py`")


def test_recipe_key_is_sha256_of_the_canonical_recipe():
    """The key is a function of the parts alone, spelled out: sorted keys, no spaces, tuples as
    lists, kind and version added, sha256, 16 hex digits."""
    parts = {"b": {"y": "z", "x": 1e-4}, "a": (1, 2), "c": None}
    blob = ('{"a":[1,2],"b":{"x":0.0001,"y":"z"},"c":null,"kind":"finetune","version":%d}'
            % RECIPE_VERSIONS["finetune"])
    want = hashlib.sha256(blob.encode()).hexdigest()[:16]
    assert recipe_key("finetune", **parts) == recipe_key("finetune", **parts) == want
    assert recipe_key("finetune", a=[1, 2], c=None, b={"x": 0.0001, "y": "z"}) == want
    assert recipe_key("pretrain", **parts) != want                 # the kind is in the key
    with pytest.raises(KeyError, match="RECIPE_VERSIONS"):
        recipe_key("no-such-kind", **parts)
    with pytest.raises(TypeError, match="recipe"):
        recipe_key("finetune", model=object())                     # no repr()s in a key


def test_keys_read_no_file_and_follow_the_version(monkeypatch):
    """Every key function computes the same key when no source file can be read (so moving or
    editing one retrains nothing), and bumping a kind's version changes that kind's key only."""
    from bus_paper.papers.beyond import generalisation as gen
    from bus_paper.papers.p002.train import run_key, settings_for
    from bus_paper.train.dino import dino_key

    def every_key() -> dict[str, str]:
        k = _keys()
        return {**k, "dino": dino_key(GOLDEN, "vit_small", GOLDEN.dino, CHECKSUMS),
                "lesion": run_key(GOLDEN, "lr", 0, 0, settings_for(GOLDEN), 1.0, 0.5, None, "c"),
                "pooled": gen.pooled_key(GOLDEN, ["busi", "udiat"], 0, k["pretrain"],
                                         {"variant": "coatnet_nano"}, CHECKSUMS)}
    before = every_key()

    def no_source(*args, **kwargs):
        raise AssertionError("a run key must not depend on the bytes of a source file")
    for name in ("read_bytes", "read_text", "open"):
        monkeypatch.setattr(pathlib.Path, name, no_source)
    monkeypatch.setattr(inspect, "getsource", no_source)
    assert every_key() == before
    monkeypatch.undo()
    for kind in before:
        monkeypatch.setitem(runs.RECIPE_VERSIONS, kind, RECIPE_VERSIONS[kind] + 1)
        after = every_key()
        changed = {k for k in before if after[k] != before[k]}
        # fine-tuning starts from the pretraining's key: a new pretrain version retires both
        assert changed == ({"pretrain", "finetune", "pooled"} if kind == "pretrain"
                           else {kind}), kind
        monkeypatch.undo()
