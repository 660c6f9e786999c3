"""core/atomic.py: the one temp-file-and-rename every result, checkpoint, log and cache writer uses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from bus_paper.core.atomic import atomic_path, atomic_write_text
from bus_paper.train.engine import _TMP, load_checkpoint, remove_stale_tmp, save_checkpoint


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path):
    target = tmp_path / "result.json"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_temporary_names_are_hidden_and_known_to_the_healer(tmp_path):
    with atomic_path(tmp_path / "last.pt") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".last.pt.")
        assert _TMP.search(tmp.name)          # remove_stale_tmp finds a killed write's file
        assert not tmp.name.endswith(".pt")   # and no cache glob such as *.pt or *.npz does
        tmp.write_bytes(b"x")
    assert oct((tmp_path / "last.pt").stat().st_mode & 0o777) == "0o644"


WRITER = """
import sys, torch
from bus_paper.train.engine import save_checkpoint
big = {"w": torch.zeros(16_000_000)}   # 64 MB: a write takes long enough to be killed in
print("ready", flush=True)
while True:
    save_checkpoint(sys.argv[1], big)
"""


def test_kill_9_during_save_checkpoint_leaves_a_loadable_file(tmp_path):
    target = tmp_path / "last.pt"
    save_checkpoint(target, {"epoch": 1})
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(1.0)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    state = load_checkpoint(target)           # old or new, never half of one
    assert state.get("epoch") == 1 or state["w"].numel() == 16_000_000
    remove_stale_tmp(tmp_path)                # what a killed write left is removed under the lock
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    assert torch.load(target, weights_only=True) is not None
