"""`bus-paper data ...` end to end on the phantom root (and, where present, on the real data)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from bus_paper.cli import main
from bus_paper.paths import data_root

BUSI = "busi/Dataset_BUSI_with_GT"


@pytest.fixture(scope="module")
def dup_root(phantom_root, tmp_path_factory) -> Path:
    """The phantom with one BUSI benign image filed again as malignant (a conflicting copy)."""
    root = tmp_path_factory.mktemp("dup") / "data"
    shutil.copytree(phantom_root, root)
    n = len(list((root / BUSI / "malignant").glob("malignant (*)_mask.png"))) + 1
    for suffix in ("", "_mask"):
        shutil.copy(root / BUSI / "benign" / f"benign (1){suffix}.png",
                    root / BUSI / "malignant" / f"malignant ({n}){suffix}.png")
    return root


def test_manifest(phantom_root, tmp_path, capsys):
    out = tmp_path / "m.csv"
    assert main(["data", "manifest", "--root", str(phantom_root), "--out", str(out),
                 "--datasets", "busi", "udiat"]) == 0
    m = pd.read_csv(out)
    assert set(m.dataset) == {"busi", "udiat"} and m.path.is_unique
    assert (tmp_path / "m_issues.csv").exists()
    assert f"wrote {out} ({len(m)} images" in capsys.readouterr().out


def test_check_fails_on_unpublished_counts(phantom_root, capsys):
    # the phantom has 8 images per label, not the published counts -> exit code 1
    assert main(["data", "check", "--root", str(phantom_root)]) == 1
    out = capsys.readouterr().out
    assert "counts_match" in out and "FAILED" in out


def test_duplicates(dup_root, tmp_path, capsys):
    out = tmp_path / "d.csv"
    assert main(["data", "duplicates", "--root", str(dup_root), "--out", str(out)]) == 0
    d = pd.read_csv(out)
    ident = d[d.kind == "identical"]
    assert len(ident) == 1 and bool(ident.conflict.iloc[0])
    assert ident.image_a.iloc[0] == f"{BUSI}/benign/benign (1).png"
    text = capsys.readouterr().out
    assert "1 groups with conflicting labels" in text and "benign;malignant" in text


def test_splits_holdout_kfold_official(dup_root, tmp_path, capsys):
    out = tmp_path / "s.csv"
    assert main(["data", "splits", "--root", str(dup_root), "--dataset", "busi", "--seed", "0",
                 "--out", str(out)]) == 0
    s = pd.read_csv(out)
    assert list(s.columns) == ["path", "label", "group", "split"]
    assert set(s.split) == {"train", "val", "test"} and set(s.label) == {"benign", "malignant"}
    assert f"{BUSI}/benign/benign (1).png" not in set(s.path)          # conflict excluded
    assert "excluded (duplicate groups with conflicting labels): 2" in capsys.readouterr().out
    assert main(["data", "splits", "--root", str(dup_root), "--dataset", "busi", "--seed", "0",
                 "--out", str(out), "--conflict-policy", "keep"]) == 0
    assert f"{BUSI}/benign/benign (1).png" in set(pd.read_csv(out).path)
    assert main(["data", "splits", "--root", str(dup_root), "--dataset", "udiat", "--seed", "1",
                 "--scheme", "kfold", "--k", "3", "--out", str(out)]) == 0
    assert sorted(pd.read_csv(out).fold.unique()) == [0, 1, 2]
    assert main(["data", "splits", "--root", str(dup_root), "--dataset", "busbra", "--seed", "0",
                 "--scheme", "official", "--out", str(out)]) == 0
    s = pd.read_csv(out)
    assert s.fold.between(0, 4).all() and s.groupby("group").fold.nunique().max() == 1
    # a scheme that does not exist for the dataset is an error, not a traceback
    assert main(["data", "splits", "--root", str(dup_root), "--dataset", "busi", "--seed", "0",
                 "--scheme", "official", "--out", str(out)]) == 2


def test_phantom(tmp_path, capsys):
    assert main(["data", "phantom", "--out", str(tmp_path / "ph"), "--n-per-class", "3",
                 "--size", "48"]) == 0
    assert (tmp_path / "ph" / BUSI).is_dir() and "phantom" in capsys.readouterr().out


def _real_root() -> Path:
    try:
        root = data_root()
    except FileNotFoundError:
        pytest.skip("no real data root")
    if not (root / "udiat" / "BUS").is_dir() or (root / "PHANTOM.txt").exists():
        pytest.skip("the data root holds no real UDIAT copy")
    return root


@pytest.mark.realdata
def test_real_udiat_and_busbra_duplicates(tmp_path):
    root = _real_root()
    out = tmp_path / "d.csv"
    assert main(["data", "duplicates", "--root", str(root), "--out", str(out),
                 "--datasets", "udiat", "busbra"]) == 0
    d = pd.read_csv(out, dtype=str)
    pairs = {(a.rsplit("/", 1)[1], b.rsplit("/", 1)[1]) for a, b in zip(d.image_a, d.image_b)}
    # the README's four pixel-identical UDIAT pairs, and nothing in BUS-BRA
    assert pairs == {("000032.png", "000040.png"), ("000033.png", "000042.png"),
                     ("000053.png", "000309.png"), ("000054.png", "000310.png")}
    assert set(d.kind) == {"identical"}
