"""Run folders heal (issue 20, item 4) and `--set` values are checked first (item 6).

Truncated checkpoints, results, predictions and image-cache files are named on stderr, moved aside
(or, for caches, deleted) and recomputed; a second process on a run folder waits for the first or
says who holds it; temporary files of killed writes are removed; bad `--set` values are refused
before any work starts.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from bus_paper.config import RunConfig, load_profile, profile_from_dict
from bus_paper.train.engine import RunInUse, Stage, load_checkpoint

SMOKE = load_profile("smoke").replace(**{"finetune.epochs": 2, "finetune.datasets": ["busi"]})


class Toy(Stage):
    """A two-weight stage: the engine's machinery in milliseconds. Its validation score falls
    every epoch, so only the first epoch it trains is ever the best."""
    name = "toy"

    def __init__(self, run_dir: Path, epochs: int, key: str = "toy"):
        torch.manual_seed(0)
        super().__init__(nn.Linear(4, 2), run_dir, epochs=epochs, batch_size=4, lr=0.1,
                         weight_decay=0.0, seed=0, n_train=8, key=key,
                         run=RunConfig(device="cpu", precision="fp32", channels_last=False))
        self.x = torch.randn(8, 4)

    def train_step(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model(self.x[idx]).pow(2).mean()

    def validate(self) -> dict[str, float]:
        return {"score": -float(len(self.history.epochs))}


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


# ----------------------------------------------------------------------------- checkpoints
def test_truncated_last_pt_is_moved_aside_and_training_restarts(tmp_path, capsys):
    Toy(tmp_path, epochs=1).fit()
    truncate(tmp_path / "last.pt")
    stage = Toy(tmp_path, epochs=2)
    history = stage.fit()
    err = capsys.readouterr().err
    assert "last.pt" in err and "moved aside" in err and "toy from scratch" in err
    assert len(history.epochs) == 2 and stage.start_epoch == 0
    assert len(list(tmp_path.glob("last.pt.corrupt-*"))) == 1
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 1


def test_last_pt_of_another_configuration_is_not_corruption(tmp_path):
    Toy(tmp_path, epochs=1, key="a").fit()
    with pytest.raises(ValueError, match="belongs to another configuration"):
        Toy(tmp_path, epochs=2, key="b").fit()
    assert (tmp_path / "last.pt").exists() and not list(tmp_path.glob("*.corrupt-*"))


def test_truncated_best_pt_of_an_unfinished_stage_is_rewritten(tmp_path, capsys):
    Toy(tmp_path, epochs=1).fit()
    truncate(tmp_path / "best.pt")
    Toy(tmp_path, epochs=3).fit()  # scores fall: only a reset best score writes best.pt again
    err = capsys.readouterr().err
    assert "best.pt" in err and "moved aside" in err and "remaining epochs" in err
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 1  # the first epoch after resume


@pytest.mark.parametrize("damage", [truncate, Path.unlink])
def test_lost_best_pt_of_a_finished_stage_reruns_it(tmp_path, capsys, damage):
    Toy(tmp_path, epochs=2).fit()
    damage(tmp_path / "best.pt")
    stage = Toy(tmp_path, epochs=2)
    history = stage.fit()
    err = capsys.readouterr().err
    assert "best.pt" in err and "training it again from scratch" in err
    assert stage.start_epoch == 0 and len(history.epochs) == 2
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 0


def test_stale_temporary_files_are_removed(tmp_path, capsys):
    tmp_path.mkdir(exist_ok=True)
    stale = ["last.pt.tmp999999", "best.pt.tmp12", "log.jsonl.tmp", "result.json.tmp4"]
    for name in stale:
        (tmp_path / name).write_bytes(b"half a file")
    (tmp_path / "notes.txt").write_text("kept")
    Toy(tmp_path, epochs=1).fit()
    assert not [n for n in stale if (tmp_path / n).exists()]
    assert (tmp_path / "notes.txt").exists()
    assert "last.pt.tmp999999" in capsys.readouterr().err


# ----------------------------------------------------------------------------- locks
HOLDER = textwrap.dedent("""
    import fcntl, os, socket, sys, time
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, f"{os.getpid()} {socket.gethostname()}\\n".encode())
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
""")


def hold(run_dir: Path, seconds: float) -> subprocess.Popen:
    """Another process holding ``run_dir`` the way bus-paper does (flock on .lock)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir / ".lock"), str(seconds)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_process_on_a_run_folder_fails_naming_the_holder(tmp_path, monkeypatch):
    import socket
    proc = hold(tmp_path, 60)
    try:
        monkeypatch.setenv("BUS_PAPER_LOCK_WAIT", "0.5")
        with pytest.raises(RunInUse, match=f"pid {proc.pid} on host {socket.gethostname()}"):
            Toy(tmp_path, epochs=1).fit()
        assert not (tmp_path / "last.pt").exists()
    finally:
        proc.kill()
        proc.wait()


def test_second_process_waits_and_a_killed_holder_frees_the_lock(tmp_path, capsys):
    proc = hold(tmp_path, 60)
    killer = subprocess.Popen([sys.executable, "-c", "import os, sys, time; time.sleep(1.5); "
                               f"os.kill({proc.pid}, {int(signal.SIGKILL)})"])
    t0 = time.monotonic()
    try:
        Toy(tmp_path, epochs=1).fit()  # waits (no BUS_PAPER_LOCK_WAIT): kill -9 releases it
    finally:
        killer.wait()
        proc.wait()
    assert time.monotonic() - t0 >= 1.0
    assert f"in use by pid {proc.pid}" in capsys.readouterr().err
    assert (tmp_path / "done.json").exists()


# ----------------------------------------------------------------------------- cached runs
@pytest.fixture()
def runs(tmp_path, monkeypatch):
    monkeypatch.setenv("BUS_PAPER_RUNS", str(tmp_path / "runs"))
    return tmp_path / "runs"


def test_cached_finetune_heals_result_json_and_is_locked(runs, capsys, monkeypatch):
    from bus_paper.train import finetune
    profile = SMOKE.replace(**{"finetune.epochs": 1})
    first = finetune(profile, "busi", seed=0, encoder_path=None)
    run_dir = Path(first["run_dir"])
    truncate(run_dir / "result.json")
    again = finetune(profile, "busi", seed=0, encoder_path=None)
    err = capsys.readouterr().err
    assert "result.json" in err and "moved aside" in err
    assert len(list(run_dir.glob("result.json.corrupt-*"))) == 1
    assert json.loads((run_dir / "result.json").read_text())["n"] == first["n"]
    np.testing.assert_allclose(again["predictions"].prob, first["predictions"].prob, atol=1e-6)

    proc = hold(run_dir, 60)  # another process holds this key: even the cached result waits
    try:
        monkeypatch.setenv("BUS_PAPER_LOCK_WAIT", "0.3")
        with pytest.raises(RunInUse, match=f"pid {proc.pid}"):
            finetune(profile, "busi", seed=0, encoder_path=None)
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("cut", ["line", "mid-line", "empty"])
def test_truncated_predictions_make_the_run_rerun(tmp_path, capsys, cut):
    from bus_paper.train.engine import read_cached_run
    from bus_paper.train.finetuning import read_predictions, write_predictions
    preds = pd.DataFrame({"path": [f"{i}.png" for i in range(6)], "split": ["val", "test"] * 3,
                          "label": [0, 1] * 3, "prob": np.linspace(0.1, 0.9, 6)})
    (tmp_path / "result.json").write_text(json.dumps({"n": {"train": 9, "val": 3, "test": 3}}))
    write_predictions(preds, tmp_path / "predictions.csv")
    assert len(read_cached_run(tmp_path, read_predictions)["predictions"]) == 6
    text = (tmp_path / "predictions.csv").read_text()
    cuts = {"line": text[: text.rindex("\n", 0, -1) + 1], "mid-line": text[:-6], "empty": ""}
    (tmp_path / "predictions.csv").write_text(cuts[cut])
    assert read_cached_run(tmp_path, read_predictions) is None  # so the caller recomputes
    assert "predictions.csv" in capsys.readouterr().err
    assert not (tmp_path / "predictions.csv").exists()


def test_truncated_encoder_pt_is_recomputed(runs, capsys):
    from bus_paper.data.preprocess import Normalizer
    from bus_paper.train.pretraining import run_pretraining

    def make_stage(images, run_dir, key):  # the toy stands in for SimCLR: same caching path
        stage = Toy(run_dir, epochs=1, key=key)
        stage.normalizer = Normalizer(0.5, 0.2)
        return stage

    def run():
        return run_pretraining(SMOKE, None, "toy", lambda sums: "key", make_stage,
                               lambda s: {"encoder": s.model.state_dict()})
    enc = run()
    truncate(enc)
    assert run() == enc
    assert "encoder.pt" in capsys.readouterr().err
    assert load_checkpoint(enc)["n_images"] > 0


def test_truncated_image_cache_is_deleted_and_rebuilt(tmp_path, monkeypatch, capsys):
    from bus_paper.data.preprocess import load_images
    monkeypatch.setenv("BUS_PAPER_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    (tmp_path / "busi").mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (30, 40), dtype=np.uint8)).save(
            tmp_path / "busi" / f"{i}.png")
    rows = pd.DataFrame({"dataset": "busi", "path": [f"busi/{i}.png" for i in range(3)]})
    first = load_images(rows, tmp_path, 16)
    (cache,) = (tmp_path / "cache" / "images").glob("*.npz")
    truncate(cache)
    again = load_images(rows, tmp_path, 16)
    np.testing.assert_array_equal(again.images, first.images)
    err = capsys.readouterr().err
    assert cache.name in err and "rebuilding" in err
    assert np.load(cache)["images"].shape == (3, 16, 16)  # written again, whole


# ----------------------------------------------------------------------------- --set values
@pytest.mark.parametrize("setting, message", [
    ("finetune.epochs=abc", "finetune.epochs=abc: expected an integer"),
    ("finetune.batch_size=0", "finetune.batch_size=0: must be >= 1"),
    ("pretrain.lr=-1", "pretrain.lr=-1: must be > 0"),
    ("finetune.label_fraction=1.5", "finetune.label_fraction=1.5: must be in (0, 1]"),
    ("model.fusion=maybe", "model.fusion=maybe: expected true or false"),
    ("finetune.datasets=busi", "finetune.datasets=busi: expected a list"),
])
def test_bad_set_values_are_refused_before_any_work(runs, capsys, setting, message):
    from bus_paper.cli import main
    assert main(["train", "--profile", "smoke", "--set", setting]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not runs.exists()  # nothing was pretrained or trained


def test_profile_values_are_type_checked():
    with pytest.raises(ValueError, match=r"finetune.epochs=3.5: expected an integer"):
        profile_from_dict({"finetune": {"epochs": 3.5}})
    with pytest.raises(ValueError, match=r"data.val_fraction \+ data.test_fraction"):
        profile_from_dict({"data": {"val_fraction": 0.5, "test_fraction": 0.5}})
    p = profile_from_dict({"finetune": {"epochs": 3.0, "seeds": [1, 2]}, "run": {"threads": 2}})
    assert p.finetune.epochs == 3 and isinstance(p.finetune.epochs, int)
    assert p.finetune.seeds == (1, 2) and p.run.threads == 2
    assert load_profile("cpu").replace(**{"finetune.lr": 1}).finetune.lr == 1  # ints are numbers


# ----------------------------------------------------------------------------- early stopping
class Scripted(Toy):
    """A stage whose validation scores are given: epoch i scores ``scores[i]``."""

    def __init__(self, run_dir: Path, epochs: int, scores: list[float], patience: int | None):
        super().__init__(run_dir, epochs)
        self.patience, self.scores = patience, scores

    def validate(self) -> dict[str, float]:
        return {"score": self.scores[len(self.history.epochs)]}


SCORES = [0.5, 0.7, 0.6, 0.65, 0.6, 0.9]  # best at epoch 1; the 0.9 of epoch 5 is never reached


def test_patience_stops_after_that_many_epochs_without_a_better_validation_score(tmp_path):
    stage = Scripted(tmp_path, 6, SCORES, patience=2)
    history = stage.fit()
    assert [r["score"] for r in history.epochs] == SCORES[:4]  # epochs 2 and 3 did not beat 0.7
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 1
    assert json.loads((tmp_path / "done.json").read_text())["epochs_run"] == 4
    # without patience every epoch runs, and the late best is kept
    full = Scripted(tmp_path / "full", 6, SCORES, patience=None).fit()
    assert len(full.epochs) == 6 and load_checkpoint(tmp_path / "full" / "best.pt")["epoch"] == 5


def test_a_resumed_run_stops_where_an_uninterrupted_one_does(tmp_path):
    Scripted(tmp_path, 3, SCORES, patience=2).fit()  # interrupted after 3 epochs (as if killed)
    (tmp_path / "done.json").unlink()
    history = Scripted(tmp_path, 6, SCORES, patience=2).fit()
    assert len(history.epochs) == 4 and load_checkpoint(tmp_path / "best.pt")["epoch"] == 1


def test_patience_below_one_is_refused(tmp_path):
    with pytest.raises(ValueError, match="patience"):
        Stage(nn.Linear(2, 2), tmp_path, epochs=2, batch_size=2, lr=0.1, weight_decay=0.0,
              seed=0, n_train=2, patience=0,
              run=RunConfig(device="cpu", precision="fp32", channels_last=False))
