"""Damaged data fails small and loud: a bad metadata file fails its own dataset (named), a bad
row only that row (with file and line), an undecodable image only that image; `data check --out`
lists every problem; a BUS_PAPER_DATA pointing nowhere says so (issue 20, item 5)."""

from __future__ import annotations

import shutil
import struct
import zlib
from pathlib import Path

import pandas as pd
import pytest

from bus_paper.cli import main
from bus_paper.data import imageio
from bus_paper.data.adapters import DataIssue
from bus_paper.data.check import ISSUE_COLUMNS, check_datasets, format_issues
from bus_paper.data.imageio import ImageReadError, probe_image, read_image
from bus_paper.data.manifest import DatasetNotFound, MetadataError, build_manifest
from bus_paper.papers.p004.mias import read_mias
from bus_paper.papers.p004.phantom_mias import write_mias_phantom
from bus_paper.paths import data_root, data_root_candidates

XLSX = "udiat/BUS/DatasetB.xlsx"
INFO = "busuclm/BUS-UCLM/INFO.csv"


def _scratch(phantom_root: Path, tmp_path: Path, *datasets: str) -> Path:
    """A copy of some phantom datasets that a test may damage."""
    root = tmp_path / "data"
    for name in datasets:
        shutil.copytree(phantom_root / name, root / name)
    return root


def _undecodable(png: Path) -> None:
    """Rewrite ``png`` so that its header and every chunk CRC are intact (PIL's verify() passes)
    but the zlib stream inside IDAT is cut short, so decoding the pixels fails."""
    data = png.read_bytes()
    pos, chunks = 8, []
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunks.append((kind, data[pos + 8:pos + 8 + n]))
        pos += 12 + n
    idat = b"".join(body for kind, body in chunks if kind == b"IDAT")
    cut = idat[: len(idat) // 3]

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(
            ">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = next(body for kind, body in chunks if kind == b"IHDR")
    png.write_bytes(data[:8] + chunk(b"IHDR", ihdr) + chunk(b"IDAT", cut) + chunk(b"IEND", b""))


# --------------------------------------------------------------- a bad metadata file: one dataset

@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_bad_xlsx_fails_udiat_only_named(phantom_root, tmp_path, capsys, damage):
    root = _scratch(phantom_root, tmp_path, "busi", "udiat")
    xlsx = root / XLSX
    xlsx.write_bytes(b"not a workbook\n" * 40 if damage == "garbage"
                     else xlsx.read_bytes()[: xlsx.stat().st_size // 2])

    with pytest.raises(MetadataError) as e:  # a caller asking for UDIAT gets the error
        build_manifest(root, ["busi", "udiat"])
    line = str(e.value)
    assert line.startswith("udiat: ") and XLSX in line and "re-download" in line
    assert "\n" not in line

    res = build_manifest(root, ["busi", "udiat"], keep_going=True)
    assert set(res.frame["dataset"]) == {"busi"} and len(res.frame) == 24
    assert res.failed == {"udiat": line}
    (issue,) = [i for i in res.issues if i.kind == "dataset_failed"]
    assert issue.path == XLSX and issue.excluded

    out = tmp_path / "m.csv"
    assert main(["data", "manifest", "--root", str(root), "--datasets", "busi", "udiat",
                 "--out", str(out)]) == 1
    assert len(pd.read_csv(out)) == 24
    assert XLSX in capsys.readouterr().err

    table, issues = check_datasets(root, ["busi", "udiat"])
    assert table.set_index("dataset")["images"].to_dict() == {"busi": 24, "udiat": 0}
    assert any(i.kind == "dataset_failed" and i.dataset == "udiat" for i in issues)


def test_unreadable_csv_and_missing_columns_fail_their_dataset(phantom_root, tmp_path):
    root = _scratch(phantom_root, tmp_path, "busbra", "busuclm")
    (root / INFO).write_bytes(b"\xff\xfe\x00garbage\x80\x81")          # not UTF-8
    csv = root / "busbra/BUSBRA/bus_data.csv"
    csv.write_text(csv.read_text().replace("Pathology", "Patology", 1))  # a renamed column
    res = build_manifest(root, ["busbra", "busuclm"], keep_going=True)
    assert res.frame.empty and set(res.failed) == {"busbra", "busuclm"}
    assert INFO in res.failed["busuclm"] and "UnicodeDecodeError" in res.failed["busuclm"]
    assert "['Pathology'] missing" in res.failed["busbra"]


# ------------------------------------------------------------------ a bad row: only that row

def test_ragged_row_unknown_label_and_missing_image_skip_their_row(phantom_root, tmp_path):
    root = _scratch(phantom_root, tmp_path, "busuclm")
    info = root / INFO
    lines = info.read_text(encoding="utf-8-sig").splitlines()
    ragged, unknown = lines[4].split(";")[0], lines[6].split(";")[0]
    lines[4] += ";surplus"                                         # line 5: 7 fields
    lines[6] = lines[6].replace(lines[6].split(";")[2], "Unsure")  # line 7: unknown label
    lines.append("ZZZZ_000.png;856x606;Benign;No;No;No")            # a row without image
    info.write_bytes(("\n".join(lines) + "\n").encode("utf-8-sig"))

    res = build_manifest(root, ["busuclm"])
    assert len(res.frame) == 24 - 2
    by_path = {i.path.rsplit("/", 1)[1]: i for i in res.issues}
    assert set(by_path) == {ragged, unknown, "ZZZZ_000.png"}   # nothing else, e.g. no_metadata
    assert "INFO.csv line 5: 7 fields, expected 6" in by_path[ragged].message
    assert "INFO.csv line 7: unknown label 'Unsure'" in by_path[unknown].message
    assert f"INFO.csv line {len(lines)}" in by_path["ZZZZ_000.png"].message
    assert all(i.excluded for i in res.issues)


def test_mias_bad_info_line_excludes_that_film(tmp_path):
    root = write_mias_phantom(tmp_path / "data", n_women=6, side=64)
    info = root / "mias/all-mias/Info.txt"
    lines = info.read_text().splitlines()
    n = next(k for k, line in enumerate(lines) if line.startswith("mdb003"))
    lines[n] = "mdb003 G BLOB B 1 2 3"
    info.write_text("\n".join(lines) + "\n")
    frame, issues = read_mias(root)
    assert "mias/all-mias/mdb003.png" not in set(frame["path"]) and len(frame) == 11
    (bad,) = [i for i in issues if i.path.endswith("mdb003.png")]
    assert f"Info.txt line {n + 1}: unknown class 'BLOB'" in bad.message and bad.excluded


# ------------------------------------------------------------- an image that does not decode

def test_header_ok_but_undecodable_png_is_excluded(phantom_root, tmp_path, monkeypatch):
    root = _scratch(phantom_root, tmp_path, "busi")
    base = root / "busi/Dataset_BUSI_with_GT"
    image, mask = base / "benign/benign (1).png", base / "malignant/malignant (1)_mask.png"
    assert len(build_manifest(root, ["busi"]).frame) == 24      # fills the decode cache
    for png in (image, mask):
        _undecodable(png)
        probe_image(png)                                         # the header check passes ...
        with pytest.raises(ImageReadError):
            read_image(png)                                      # ... the decoder does not

    res = build_manifest(root, ["busi"])
    frame = res.frame.set_index("path")
    rel = image.relative_to(root).as_posix()
    assert rel not in frame.index and len(frame) == 23
    (issue,) = [i for i in res.issues if i.path == rel]
    assert issue.kind == "unreadable" and issue.excluded and "unreadable image" in issue.message
    mrel = mask.relative_to(root).as_posix()
    assert mrel not in frame.loc["busi/Dataset_BUSI_with_GT/malignant/malignant (1).png",
                                 "mask_paths"]
    assert [i.kind for i in res.issues if i.path == mrel] == ["mask_unreadable"]

    # unchanged files are served from the decode cache; failures are not cached
    def cached_only(path):
        if Path(path) in (image, mask):
            raise ImageReadError(path, "broken")
        raise AssertionError(f"{path} decoded again")
    monkeypatch.setattr(imageio, "decode_probe", cached_only)
    again = build_manifest(root, ["busi"])
    pd.testing.assert_frame_equal(again.frame, res.frame)


# ------------------------------------------------------------ data check --out lists every file

def test_check_out_lists_every_problem_with_file_and_reason(broken_root, tmp_path, capsys):
    out = tmp_path / "problems.csv"
    assert main(["data", "check", "--root", str(broken_root.root), "--datasets", "busi",
                 "--out", str(out)]) == 1
    printed = capsys.readouterr().out
    df = pd.read_csv(out)
    assert list(df.columns) == ISSUE_COLUMNS
    rows = df.set_index("path")
    for rel in (broken_root.truncated, broken_root.not_an_image):
        assert rows.loc[rel, "kind"] == "unreadable" and rows.loc[rel, "excluded"]
        assert "unreadable image" in rows.loc[rel, "reason"]
        assert rel in printed                                   # the console names the files


def test_console_lists_the_first_problems_and_a_count():
    issues = [DataIssue("busi", f"busi/x/{k}.png", "unreadable", f"{k}.png: broken", True)
              for k in range(25)]
    text = format_issues(issues, limit=20)
    assert "busi/x/0.png: broken" in text and "busi/x/19.png" in text
    assert "busi/x/20.png" not in text and "and 5 more" in text


# ------------------------------------------------------------ BUS_PAPER_DATA pointing nowhere

def test_bus_paper_data_pointing_nowhere_names_it_and_nothing_else(tmp_path, monkeypatch,
                                                                   capsys):
    nowhere = tmp_path / "nowhere"
    monkeypatch.setenv("BUS_PAPER_DATA", str(nowhere))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()            # a fallback that exists, and must not be used
    assert data_root_candidates() == [nowhere]
    with pytest.raises(FileNotFoundError, match="BUS_PAPER_DATA points nowhere"):
        data_root()
    with pytest.raises(DatasetNotFound) as e:
        build_manifest(None, ["busi"])
    msg = str(e.value)
    assert f"under {nowhere}." in msg and "BUS_PAPER_DATA points nowhere" in msg
    assert str(tmp_path / "data") + "," not in msg and "shared" not in msg
    assert main(["data", "check"]) == 2
    assert "points nowhere" in capsys.readouterr().err
