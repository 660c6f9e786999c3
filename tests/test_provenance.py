"""Provenance records and result files (bus_paper.provenance, bus_paper.plotting)."""

import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bus_paper.config import load_profile
from bus_paper.provenance import (
    data_checksums,
    git_state,
    hardware,
    load_result,
    provenance,
    save_result,
    save_table,
)


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    # dataset checksums cache per-file hashes in cache_dir(): keep the repo's cache out of it
    monkeypatch.setenv("BUS_PAPER_CACHE", str(tmp_path / "cache"))


def test_provenance_fields(tmp_path):
    started = time.time() - 2.0
    prov = provenance(load_profile("smoke"), 7, None, (), started)
    assert prov["profile"] == "smoke" and prov["seed"] == 7
    assert prov["data_root"] is None and prov["data_checksums"] == {}
    assert 2.0 <= prov["wall_s"] < 60
    assert prov["packages"]["numpy"] == np.__version__
    hw = prov["hardware"]
    assert hw["cores"] >= 1 and isinstance(hw["amx_bf16"], bool) and hw["torch"]
    assert set(prov["git"]) == {"commit", "dirty"}
    assert prov["timestamp"].endswith("+00:00")
    json.dumps(prov)  # must be storable as is
    assert provenance("cpu", 0, None, (), time.time())["profile"] == "cpu"


def test_provenance_rejects_bad_start():
    with pytest.raises(ValueError, match="started"):
        provenance("cpu", 0, None, (), math.nan)


def test_git_state_outside_a_checkout(tmp_path):
    assert git_state(tmp_path) == {"commit": "unknown", "dirty": None}


def test_git_state_in_a_checkout(tmp_path):
    import subprocess
    run = lambda *a: subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True)
    run("init", "-q")
    (tmp_path / "bus_paper").mkdir()
    (tmp_path / "bus_paper" / "m.py").write_text("x = 1\n")
    run("add", ".")
    run("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    state = git_state(tmp_path)
    assert len(state["commit"]) == 40 and state["dirty"] is False
    (tmp_path / "book_output.txt").write_text("an output, not code\n")
    assert git_state(tmp_path)["dirty"] is False
    (tmp_path / "bus_paper" / "m.py").write_text("x = 2\n")
    assert git_state(tmp_path)["dirty"] is True


def test_hardware_reports_torch():
    import torch
    hw = hardware()
    assert hw["torch"] == torch.__version__
    assert (hw["cuda"] is None) == (not torch.cuda.is_available())


def _fake_busi(root: Path, pixel: int) -> None:
    from PIL import Image
    folder = root / "busi" / "Dataset_BUSI_with_GT" / "benign"
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), pixel, np.uint8)).save(folder / "benign (1).png")


def test_data_checksums_follow_content(tmp_path, isolated_cache):
    _fake_busi(tmp_path / "r", 10)
    first = data_checksums(tmp_path / "r", ["busi", "udiat"])
    assert first["udiat"] == "missing" and len(first["busi"]) == 64
    assert data_checksums(tmp_path / "r", ["busi"])["busi"] == first["busi"]
    _fake_busi(tmp_path / "r", 11)
    assert data_checksums(tmp_path / "r", ["busi"])["busi"] != first["busi"]
    assert data_checksums(None, ["busi"]) == {}


def test_save_and_load_result_roundtrip(tmp_path):
    prov = {"profile": "smoke", "seed": 0}
    path = save_result(tmp_path / "res", "counts", {"n": np.int64(3), "x": np.arange(3),
                                                   "where": tmp_path}, prov)
    assert path == tmp_path / "res" / "counts.json"
    got = load_result(tmp_path / "res", "counts")
    assert got == {"n": 3, "x": [0, 1, 2], "where": str(tmp_path), "provenance": prov}
    assert not list((tmp_path / "res").glob("*.tmp"))  # atomic write left nothing behind


def test_save_result_argument_checks(tmp_path):
    with pytest.raises(ValueError, match="plain file stem"):
        save_result(tmp_path, "../escape", {}, {})
    with pytest.raises(ValueError, match="provenance"):
        save_result(tmp_path, "x", {"provenance": 1}, {})
    with pytest.raises(TypeError, match="mapping"):
        save_result(tmp_path, "x", [1, 2], {})
    with pytest.raises(FileNotFoundError, match="bus-paper run"):
        load_result(tmp_path, "absent")


def test_save_result_keeps_old_file_when_payload_fails(tmp_path):
    save_result(tmp_path, "x", {"v": 1}, {})
    with pytest.raises(TypeError):
        save_result(tmp_path, "x", {"v": object()}, {})
    assert load_result(tmp_path, "x")["v"] == 1


def test_save_table_csv_and_json(tmp_path):
    df = pd.DataFrame({"dataset": ["busi", "udiat"], "images": [780, 163],
                       "patients": [pd.NA, 12.5]})
    save_table(tmp_path, "counts", df, {"profile": "cpu"})
    back = pd.read_csv(tmp_path / "counts.csv")
    assert back["images"].tolist() == [780, 163]
    got = load_result(tmp_path, "counts")
    assert got["columns"] == ["dataset", "images", "patients"]
    assert got["rows"] == [["busi", 780, None], ["udiat", 163, 12.5]]
    assert got["provenance"] == {"profile": "cpu"}
    with pytest.raises(TypeError, match="DataFrame"):
        save_table(tmp_path, "bad", [[1]], {})


def test_save_figure_png_with_provenance(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from bus_paper.plotting import DPI, save_figure, setup

    setup()
    assert matplotlib.rcParams["savefig.dpi"] == DPI
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [0, 1])
    png = save_figure(tmp_path, "line", fig, {"profile": "cpu"}, data={"y": [0, 1]})
    plt.close(fig)
    with Image.open(png) as im:
        assert im.format == "PNG" and json.loads(im.text["Comment"])["profile"] == "cpu"
        assert max(im.size) < 3 * DPI  # 2 in at ~100 dpi (+ tight bbox); 300 dpi would be 600 px
    assert load_result(tmp_path, "line")["data"] == {"y": [0, 1]}
    with pytest.raises(ValueError, match="dpi"):
        setup(dpi=1000)
    with pytest.raises(TypeError, match="Figure"):
        save_figure(tmp_path, "x", object(), {})
