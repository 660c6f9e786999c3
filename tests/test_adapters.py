"""Adapters, manifest, check and checksum on the phantom root, a broken copy, and the real data."""

import dataclasses
import shutil

import numpy as np
import openpyxl
import pandas as pd
import pytest
from PIL import Image

from bus_paper.data import registry
from bus_paper.data.adapters import ISSUE_KINDS, busbra_official_folds, read_udiat_metadata
from bus_paper.data.check import TABLE_COLUMNS, check_datasets, format_table, summarize_issues
from bus_paper.data.checksum import data_checksum, dataset_checksum
from bus_paper.data.imageio import read_image
from bus_paper.data.manifest import DatasetNotFound, build_manifest
from bus_paper.paths import data_root

CONTRACT = ["dataset", "path", "label", "patient_id", "lesion_id", "view", "mask_paths", "width",
            "height", "mode"]


def _issues(res_or_list, path=None, kind=None):
    issues = res_or_list.issues if hasattr(res_or_list, "issues") else res_or_list
    return [i for i in issues
            if (path is None or i.path == path) and (kind is None or i.kind == kind)]


@pytest.fixture(scope="module")
def manifest(phantom_root):
    return build_manifest(phantom_root)


@pytest.fixture(scope="module")
def broken(broken_root):
    return build_manifest(broken_root.root)


# ------------------------------------------------------------------------------- clean phantom

def test_phantom_manifest_follows_the_contract(manifest, phantom_root):
    f = manifest.frame
    assert list(f.columns[: len(CONTRACT)]) == CONTRACT
    assert f["path"].is_unique and manifest.root == phantom_root.resolve()
    assert manifest.issues == []
    counts = f.groupby(["dataset", "label"]).size().to_dict()
    three, two = ("benign", "malignant", "normal"), ("benign", "malignant")
    assert counts == ({(d, lab): 8 for d in ("busi", "busuclm") for lab in three}
                      | {(d, lab): 8 for d in ("udiat", "busbra") for lab in two})
    for row in f.sample(12, random_state=0).itertuples():
        im = Image.open(phantom_root / row.path)
        assert (im.width, im.height, im.mode) == (row.width, row.height, row.mode)
        masks = row.mask_paths.split(";")
        assert all((phantom_root / m).is_file() for m in masks)
    assert f.loc[f.dataset.isin(["busi", "udiat"]), "patient_id"].isna().all()


def test_dataset_specific_fields(manifest, phantom_root):
    f = manifest.frame.set_index("path")
    bra = f[f.dataset == "busbra"]
    assert set(bra.view) <= {"l", "r", "s"} and (bra.patient_id == bra.lesion_id).all()
    # l/r are two views of one patient's lesion; the case number is the file number
    pairs = bra[bra.view != "s"].groupby("patient_id").view.apply(lambda v: "".join(sorted(v)))
    assert len(pairs) > 0 and (pairs == "lr").all()
    assert all(p.split("bus_")[1][:4].lstrip("0") == pid for p, pid in bra.patient_id.items())
    assert bra.birads.dtype == "Int64" and bra.histology.notna().all()
    uclm = f[f.dataset == "busuclm"]
    assert all(p.rsplit("/", 1)[1].startswith(pid + "_") for p, pid in uclm.patient_id.items())
    info = pd.read_csv(phantom_root / "busuclm/BUS-UCLM/INFO.csv", sep=";", encoding="utf-8-sig")
    raw = dict(zip(info.Image, info.Doppler))
    for path, value in uclm.doppler.items():
        assert value == (raw[path.rsplit("/", 1)[1]] in ("Yes", "Y"))  # the "Y" row counts as yes
    assert f.loc[f.dataset == "udiat", "histology"].notna().all()


def test_udiat_numeric_ids_are_zero_padded(phantom_root):
    ws = openpyxl.load_workbook(phantom_root / "udiat/BUS/DatasetB.xlsx")["Hoja1"]
    assert any(isinstance(r[0], int) for r in ws.iter_rows(min_row=2, values_only=True))
    keys = [k for k, _, _ in read_udiat_metadata(phantom_root / "udiat/BUS/DatasetB.xlsx")]
    assert keys and all(len(k) == 6 and k.isdigit() for k in keys)
    files = {p.name for p in (phantom_root / "udiat/BUS/original").iterdir()}
    assert {f"{k}.png" for k in keys} == files


def test_udiat_legend_below_and_header_not_first(tmp_path):
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "Hoja1"
    ws.append(["Dataset B"])
    ws.append(["Image", "Type", "Diagnosis"])
    ws.append([1, "Benign", "CYST"])
    ws.append(["000002.png", "Malignant", "IDC"])
    ws.append([None, None, None])
    ws.append(["Legend", None, None])
    ws.append(["FA", "Fibroadenoma", None])
    wb.save(tmp_path / "b.xlsx")
    assert read_udiat_metadata(tmp_path / "b.xlsx") == [
        ("000001", "Benign", {"histology": "CYST"}), ("000002", "Malignant", {"histology": "IDC"})]


def test_busbra_official_folds_are_patient_wise(manifest, phantom_root):
    f = manifest.frame[manifest.frame.dataset == "busbra"]
    for k in (5, 10):
        folds = busbra_official_folds(phantom_root, k)
        assert set(folds.path) == set(f.path)
        joined = folds.merge(f[["path", "patient_id"]], on="path")
        assert (joined.groupby("patient_id").fold.nunique() == 1).all()
        assert folds.fold.between(1, k).all()
    with pytest.raises(FileNotFoundError, match="3-fold"):
        busbra_official_folds(phantom_root, 3)


def test_to_csv_round_trip(manifest, tmp_path):
    out = manifest.to_csv(tmp_path / "m.csv")
    back = pd.read_csv(out)
    assert list(back.path) == list(manifest.frame.path)
    assert (tmp_path / "m_issues.csv").exists()


# ------------------------------------------------------------------------------ broken phantom

def test_unreadable_images_are_excluded_and_counted(broken, broken_root):
    paths = set(broken.frame.path)
    for rel in (broken_root.truncated, broken_root.not_an_image):
        assert rel not in paths
        (issue,) = _issues(broken, rel, "unreadable")
        assert issue.excluded and rel.rsplit("/", 1)[1] in issue.message
        assert "unreadable" in issue.message
    table, _ = check_datasets(broken_root.root, ["busi"])
    assert table.loc[0, "unreadable"] == 2 and table.loc[0, "images"] == 22


def test_odd_modes_are_converted_and_reported(broken, broken_root, phantom_root):
    for rel, mode in ((broken_root.rgba, "RGBA"), (broken_root.palette, "P"),
                      (broken_root.sixteen_bit, "I;16")):
        row = broken.frame.set_index("path").loc[rel]
        assert row["mode"] == mode
        (issue,) = _issues(broken, rel, "converted_mode")
        assert not issue.excluded and mode in issue.message
        # converted pixels equal the phantom's original 8-bit pixels
        np.testing.assert_array_equal(read_image(broken_root.root / rel),
                                      read_image(phantom_root / rel))


def test_mask_size_mismatch_is_reported_and_kept(broken, broken_root):
    rel = broken_root.mask_other_size
    assert rel in set(broken.frame.path)
    (issue,) = _issues(broken, rel, "mask_size_mismatch")
    assert "mask size mismatch" in issue.message and rel.rsplit("/", 1)[1] in issue.message


def test_metadata_and_images_that_do_not_match(broken, broken_root):
    for rel in broken_root.rows_without_image:
        (issue,) = _issues(broken, rel, "missing_image")
        assert rel.rsplit("/", 1)[1] in issue.message
    for rel in broken_root.images_without_row:
        (issue,) = _issues(broken, rel, "no_metadata")
        assert issue.excluded and rel not in set(broken.frame.path)


def test_mask_colour_conflict_is_reported_label_kept(broken, broken_root):
    rel = broken_root.wrong_colour
    (issue,) = _issues(broken, rel, "label_conflict")
    assert "malignant" in issue.message and not issue.excluded
    assert broken.frame.set_index("path").loc[rel, "label"] == "benign"


def test_labels_never_change(broken, manifest):
    both = manifest.frame.merge(broken.frame, on="path", suffixes=("", "_b"))
    assert len(both) >= len(manifest.frame) - 2 and (both.label == both.label_b).all()
    assert {i.kind for i in broken.issues} <= set(ISSUE_KINDS)


def test_conflicting_and_duplicate_metadata_rows(phantom_root, tmp_path):
    root = shutil.copytree(phantom_root, tmp_path / "data")
    csv = root / "busbra/BUSBRA/bus_data.csv"
    lines = csv.read_text().splitlines()
    a, b = lines[1], lines[2]
    flip = {"benign": "malignant", "malignant": "benign"}
    a_fields = a.split(",")
    a_fields[3] = flip[a_fields[3]]
    c = lines[3].split(",")
    c[3] = "unsure"
    rows = lines[:3] + [",".join(c)] + lines[4:] + [",".join(a_fields), b]
    csv.write_text("\n".join(rows) + "\n")
    res = build_manifest(root, ["busbra"])
    key = lambda line: f"busbra/BUSBRA/Images/{line.split(',')[0]}.png"
    assert key(a) not in set(res.frame.path) and _issues(res, key(a), "label_conflict")[0].excluded
    assert key(b) in set(res.frame.path) and _issues(res, key(b), "duplicate_metadata")
    (bad,) = _issues(res, key(lines[3]), "bad_metadata")
    assert "'unsure'" in bad.message and bad.excluded
    assert not _issues(res, key(lines[3]), "no_metadata")


def test_orphan_and_missing_masks(phantom_root, tmp_path):
    root = shutil.copytree(phantom_root, tmp_path / "data")
    gt = sorted((root / "udiat/BUS/GT").iterdir())
    gt[0].unlink()
    shutil.copy(gt[1], gt[1].with_name("000777.png"))
    res = build_manifest(root, ["udiat"])
    (missing,) = _issues(res, kind="missing_mask")
    assert gt[0].name in missing.message and not missing.excluded
    (orphan,) = _issues(res, kind="orphan_mask")
    assert orphan.path.endswith("GT/000777.png")


def test_check_finds_masks_that_contradict_the_label(phantom_root, tmp_path, monkeypatch):
    root = shutil.copytree(phantom_root, tmp_path / "data")
    busi = root / "busi/Dataset_BUSI_with_GT"
    m = Image.open(busi / "benign/benign (3)_mask.png")
    Image.new("1", m.size).save(busi / "benign/benign (3)_mask.png")
    n = Image.open(busi / "normal/normal (1)_mask.png")
    Image.new("RGB", n.size, (255, 255, 255)).save(busi / "normal/normal (1)_mask.png")
    table, issues = check_datasets(root, ["busi"])
    assert _issues(issues, "busi/Dataset_BUSI_with_GT/benign/benign (3).png", "empty_mask")
    assert _issues(issues, "busi/Dataset_BUSI_with_GT/normal/normal (1).png", "label_conflict")
    assert table.loc[0, "issues"] == 2 and list(table.columns) == TABLE_COLUMNS


def test_check_table_compares_published_counts(phantom_root, monkeypatch):
    table, issues = check_datasets(phantom_root)
    assert list(table.dataset) == ["busi", "udiat", "busbra", "busuclm"]
    assert not table.counts_match.any()  # the phantom is not the published data
    info = registry.DATASETS["udiat"]
    monkeypatch.setitem(registry.DATASETS, "udiat",
                        dataclasses.replace(info, counts={"benign": 8, "malignant": 8}))
    table, _ = check_datasets(phantom_root, ["udiat"])
    assert table.counts_match.tolist() == [True]
    text = format_table(table)
    assert "udiat" in text and "counts_match" in text and "-" in text  # patients NA shown as -
    assert summarize_issues(issues).empty


def test_missing_dataset_says_where_and_the_source(tmp_path, monkeypatch):
    with pytest.raises(DatasetNotFound) as e:
        build_manifest(tmp_path, ["busbra"])
    msg = str(e.value)
    assert str(tmp_path) in msg and "zenodo" in msg.lower() and "busbra/BUSBRA" in msg
    assert isinstance(e.value, FileNotFoundError)
    monkeypatch.setenv("BUS_PAPER_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(DatasetNotFound, match="nowhere.*Mendeley"):
        build_manifest(None, ["busuclm"])
    with pytest.raises(ValueError, match="no adapter for 'mias'"):
        build_manifest(tmp_path, ["mias"])
    with pytest.raises(KeyError, match="unknown dataset 'busy'"):
        build_manifest(tmp_path, ["busy"])


def test_checksum_changes_with_content_and_is_cached(phantom_root, tmp_path):
    root = shutil.copytree(phantom_root, tmp_path / "data")
    before = data_checksum(root, ["busi", "udiat"])
    assert before["busi"] == dataset_checksum(root, "busi")
    assert before["busi"] == dataset_checksum(phantom_root, "busi")  # paths are relative
    f = root / "udiat/BUS/original/000001.png"
    f.write_bytes(f.read_bytes() + b"\0")
    after = data_checksum(root, ["busi", "udiat"])
    assert after["busi"] == before["busi"] and after["udiat"] != before["udiat"]
    (root / "busi/Dataset_BUSI_with_GT/.DS_Store").write_bytes(b"junk")  # hidden: not data
    assert dataset_checksum(root, "busi") == before["busi"]
    with pytest.raises(DatasetNotFound):
        dataset_checksum(tmp_path, "busbra")


# ------------------------------------------------------------------------------------ real data

def _real_root():
    try:
        root = data_root()
    except FileNotFoundError:
        return None
    ok = all((root / registry.DATASETS[d].layout).is_dir() for d in registry.BUS_DATASETS)
    return root if ok and not (root / "PHANTOM.txt").exists() else None


@pytest.mark.realdata
@pytest.mark.skipif(_real_root() is None, reason="real datasets not found under the data root")
def test_real_data_reproduces_published_counts():
    table, issues = check_datasets(_real_root())
    for row in table.itertuples():
        info = registry.DATASETS[row.dataset]
        assert {lab: getattr(row, lab) for lab in info.counts} == info.counts, row.dataset
        assert row.unreadable == 0
    assert table.counts_match.all(), format_table(table)
    # the known problem of the copy: 13 BUS-UCLM masks (HESN_000-012) of another size
    mism = _issues(issues, kind="mask_size_mismatch")
    assert len(mism) == 13 and all("HESN_0" in i.path for i in mism)
