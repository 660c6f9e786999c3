"""Issue 20, items 2-4: deployable model files that say what they are and are never silently or
half replaced; `predict` that accounts for every input file and refuses what is not a model."""

from __future__ import annotations

import hashlib
import io
import math
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from tiny_profile import write_tiny  # noqa: E402 (tests/, on sys.path under pytest)

from bus_paper.cli import main


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(profile file, default model file, runs folder) after `bus-paper train` of the default
    (SSL-pretrained) recipe."""
    base = tmp_path_factory.mktemp("reliability")
    profile = write_tiny(base)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BUS_PAPER_RUNS", str(base / "runs"))
        assert main(["train", "--profile", str(profile), "--dataset", "busi", "--seed", "0"]) == 0
        yield profile, base / "runs" / "models" / "tiny_busi_seed0.pt", base / "runs"


@pytest.fixture()
def runs_env(trained, monkeypatch):
    monkeypatch.setenv("BUS_PAPER_RUNS", str(trained[2]))
    return trained


def _digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _recipe(p: Path) -> dict:
    return torch.load(p, weights_only=True)["recipe"]


# ------------------------------------------------------------------------------ model files
def test_other_recipe_never_takes_the_default_models_place(runs_env, capsys):
    profile, default, runs = runs_env
    before = _digest(default)
    assert _recipe(default)["pretrained"] and _recipe(default)["overrides"] == []
    args = ["train", "--profile", str(profile), "--dataset", "busi", "--seed", "0"]
    assert main(args + ["--no-pretrain"]) == 0
    out = capsys.readouterr().out
    assert _digest(default) == before  # the SSL model is still there
    other = [p for p in (runs / "models").glob("tiny_busi_seed0_*.pt")]
    assert len(other) == 1 and str(other[0]) in out
    recipe = _recipe(other[0])
    assert not recipe["pretrained"] and recipe["overrides"] == ["pretrain.enabled=false"]
    assert recipe["key"] and "random init" in recipe["summary"]
    # asked to write it over the default model: refused, one line naming both recipes and options
    assert main(args + ["--no-pretrain", "--model-out", str(default)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(default) in err
    assert "SSL-pretrained" in err and "random init" in err
    assert "--force" in err and "--model-out" in err
    assert _digest(default) == before


# ------------------------------------------------------------------------------ predict: the model
def _predict(ckpt, *paths, out) -> int:
    return main(["predict", "--checkpoint", str(ckpt), *map(str, paths), "--out", str(out)])


def _img(path: Path, shape=(90, 70), seed=0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, shape, dtype=np.uint8)).save(path)
    return path


class _Foo:
    pass


def _bad_checkpoint(default: Path, d: Path, kind: str) -> Path:
    """A file of ``kind`` that `predict` must refuse."""
    state = torch.load(default, weights_only=True)
    f = d / f"{kind}.pt"
    if kind == "nan":
        torch.save(state | {"threshold": math.nan}, f)
    elif kind == "empty":
        f.write_bytes(b"")
    elif kind == "garbage":
        f.write_text("not a checkpoint\n")
    elif kind == "dict":
        torch.save({"a": 1}, f)
    elif kind == "training":  # what a fine-tuning run keeps for resume (last.pt)
        torch.save({"model": state["model"], "optimizer": {}, "epoch": 0, "best_score": 1.0,
                    "key": "k", "history": "[]", "normalizer": state["normalizer"]}, f)
    else:  # an arbitrary pickled object: loading it would need weights_only=False
        torch.save({"x": _Foo()}, f)
    return f


@pytest.mark.parametrize("kind", ["nan", "empty", "garbage", "dict", "training", "object"])
def test_predict_refuses_what_is_not_a_deployable_model(trained, tmp_path, capsys, kind):
    ckpt = _bad_checkpoint(trained[1], tmp_path, kind)
    assert _predict(ckpt, _img(tmp_path / "a.png"), out=tmp_path / "p.csv") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(ckpt) in err, err
    assert "weights_only" not in err and "Traceback" not in err
    assert not (tmp_path / "p.csv").exists()


def test_predict_says_which_model_it_uses(trained, tmp_path, capsys):
    assert _predict(trained[1], _img(tmp_path / "a.png"), out=tmp_path / "p.csv") == 0
    err = capsys.readouterr().err
    assert f"model: {trained[1]}" in err and "SSL-pretrained" in err and "threshold 0." in err


# ------------------------------------------------------------------------------ predict: inputs
def test_every_input_file_is_predicted_or_listed(trained, tmp_path, capsys, monkeypatch):
    d = tmp_path / "imgs"
    for name in ("a.png", "case_masked.png", "sub/b.PNG"):
        _img(d / name)
    for name in ("a_mask.png", "a_MASK_1.png"):  # BUSI's mask names
        _img(d / name)
    (d / "scan.dcm").write_bytes(b"\0" * 128 + b"DICM")  # a DICOM header without an image
    (d / "notes.txt").write_text("ignored: not an image suffix\n")
    os.symlink("loop.png", d / "loop.png")
    os.symlink(".", d / "again")  # a folder loop
    os.mkfifo(d / "pipe.png")
    _img(d / "locked" / "c.png")
    real_scandir = os.scandir

    def scandir(path="."):  # an unreadable folder (the tests may run as root)
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    out = tmp_path / "p.csv"
    assert _predict(trained[1], d, out=out) == 0
    preds = pd.read_csv(out)
    assert sorted(Path(p).name for p in preds.path) == ["a.png", "b.PNG", "case_masked.png"]
    skipped = pd.read_csv(tmp_path / "p_skipped.csv")
    reasons = dict(zip((Path(p).name for p in skipped.path), skipped.reason))
    assert reasons.pop("a_mask.png") == reasons.pop("a_MASK_1.png") == "lesion mask"
    dicom = reasons.pop("scan.dcm")  # DICOM is read now; this one is only a header, no image
    assert "DICOM" in dicom and "pixel data" in dicom and "not supported" not in dicom
    assert reasons.pop("pipe.png") == "not a regular file"
    assert "symbolic links" in reasons.pop("loop.png")
    assert "loop" in reasons.pop("again")
    assert "unreadable folder" in reasons.pop("locked")
    assert not reasons
    assert "7 skipped" in capsys.readouterr().err


def test_nothing_predicted_is_an_error(trained, tmp_path):
    (tmp_path / "empty").mkdir()
    assert _predict(trained[1], tmp_path / "empty", out=tmp_path / "p.csv") == 1
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_text("not an image")
    assert _predict(trained[1], tmp_path / "bad", out=tmp_path / "q.csv") == 1
    assert list(pd.read_csv(tmp_path / "q_skipped.csv").path) == [str(tmp_path / "bad" / "x.png")]


def test_out_folder_is_checked_before_any_work(trained, tmp_path, monkeypatch, capsys):
    import bus_paper.train.predict as predict
    monkeypatch.setattr(predict, "predict_paths", lambda *a, **k: pytest.fail("did the work"))
    assert _predict(trained[1], _img(tmp_path / "a.png"), out=tmp_path / "no" / "p.csv") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not exist" in err


def test_a_fifo_is_skipped_not_read(trained, tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    done = threading.Event()

    def unblock():  # were the FIFO opened for reading, this releases it after 5 s
        deadline = time.monotonic() + 5
        while not done.is_set() and time.monotonic() < deadline:
            time.sleep(0.2)
        while not done.is_set():
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
                return
            except OSError:  # no reader: nothing is blocked on it
                time.sleep(0.2)
                if time.monotonic() > deadline + 5:
                    return

    threading.Thread(target=unblock, daemon=True).start()
    try:
        assert _predict(trained[1], fifo, _img(tmp_path / "a.png"), out=tmp_path / "p.csv") == 0
    finally:
        done.set()
    skipped = pd.read_csv(tmp_path / "p_skipped.csv")
    assert list(skipped.reason) == ["not a regular file"]


def test_images_far_from_the_training_range_are_flagged(trained, tmp_path):
    d = tmp_path / "imgs"
    _img(d / "ok.png", (300, 400))
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(d / "one.png")
    Image.fromarray(np.full((8000, 8000), 128, np.uint8)).save(d / "uniform.png")
    _img(d / "strip.png", (40, 900))
    out = tmp_path / "p.csv"
    assert _predict(trained[1], d, out=out) == 0
    flags = {Path(p).name: f for p, f in pd.read_csv(out, keep_default_na=False)[["path", "flag"]]
             .itertuples(index=False)}
    assert flags["ok.png"] == ""
    assert "tiny" in flags["one.png"] and "uniform" in flags["one.png"]
    assert "very large" in flags["uniform.png"] and "uniform" in flags["uniform.png"]
    assert "aspect" in flags["strip.png"]


# last: on a broken implementation it leaves the module's model file truncated
def test_killed_model_write_leaves_the_previous_file(runs_env, monkeypatch):
    """A process killed half-way through writing the model file (copy or save) leaves the old file
    whole, not a truncated one."""
    profile, default, _ = runs_env
    before = _digest(default)

    class Killed(BaseException):
        pass

    def half_save(obj, f, *a, **k):  # torch.save that dies after writing half the bytes
        buf = io.BytesIO()
        real_save(obj, buf)
        Path(f).write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
        raise Killed

    def half_copy(src, dst, *a, **k):
        data = Path(src).read_bytes()
        Path(dst).write_bytes(data[: len(data) // 2])
        raise Killed

    real_save = torch.save
    monkeypatch.setattr(torch, "save", half_save)
    monkeypatch.setattr(shutil, "copyfile", half_copy)
    with pytest.raises(Killed):
        main(["train", "--profile", str(profile), "--dataset", "busi", "--seed", "0"])
    assert _digest(default) == before
