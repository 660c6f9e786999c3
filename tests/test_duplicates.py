"""Duplicate search on generated scans: identical, noised and mirrored copies, cross-dataset pairs,
conflicting labels, groups, the vectorised Hamming search and the cache."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageFilter

from bus_paper.config import DataConfig
from bus_paper.data import duplicates as dup_mod
from bus_paper.data.duplicates import (
    candidate_pairs,
    duplicate_groups,
    find_duplicates,
    group_members,
    load_duplicates,
    summarize_duplicates,
)

BUSI = "busi/Dataset_BUSI_with_GT"
UDIAT = "udiat/BUS/original"


def scan(seed: int, h: int = 90, w: int = 120) -> np.ndarray:
    """A speckle-like texture on a shared depth profile (bright top, dark bottom), so different
    scans share the global layout that makes ultrasound thumbnails look alike."""
    rng = np.random.default_rng(seed)
    noise = Image.fromarray((rng.random((h, w)) * 255).astype(np.uint8))
    t = np.asarray(noise.filter(ImageFilter.GaussianBlur(3)), float)
    t = (t - t.mean()) / t.std()
    return np.clip(120 * np.linspace(1.0, 0.3, h)[:, None] + 40 * t, 0, 255).astype(np.uint8)


def noised(img: np.ndarray, seed: int = 9) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)


def write_root(root: Path, images: dict[str, tuple[np.ndarray, str]]) -> pd.DataFrame:
    """Save {relative path: (pixels, label)} under root; return a manifest of them."""
    rows = []
    for rel, (pixels, label) in images.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(root / rel)
        rows.append({"dataset": rel.split("/")[0], "path": rel, "label": label})
    return pd.DataFrame(rows)


@pytest.fixture()
def scans(tmp_path) -> tuple[Path, pd.DataFrame]:
    a, b, c = scan(1), scan(2), scan(3)
    images = {
        f"{BUSI}/benign/benign (1).png": (a, "benign"),
        f"{BUSI}/benign/benign (2).png": (a.copy(), "benign"),              # identical
        f"{BUSI}/malignant/malignant (1).png": (noised(a), "malignant"),    # near, other label
        f"{BUSI}/benign/benign (3).png": (a[:, ::-1].copy(), "benign"),     # mirrored
        f"{BUSI}/benign/benign (4).png": (b, "benign"),                     # unrelated
        f"{BUSI}/malignant/malignant (2).png": (c, "malignant"),            # unrelated
        f"{UDIAT}/000001.png": (noised(c, seed=5), "malignant"),            # cross-dataset copy
    }
    return tmp_path, write_root(tmp_path, images)


def pair(dups: pd.DataFrame, x: str, y: str) -> pd.Series:
    ab = {x, y}
    hit = dups[[{a, b} == ab for a, b in zip(dups.image_a, dups.image_b)]]
    assert len(hit) == 1, f"expected one pair {x} / {y}, found {len(hit)}"
    return hit.iloc[0]


def test_finds_identical_near_mirrored_and_cross_dataset(scans):
    root, manifest = scans
    dups = find_duplicates(manifest, root, DataConfig())
    assert list(dups.columns) == dup_mod.COLUMNS
    b1, b2, m1, b3 = (f"{BUSI}/benign/benign (1).png", f"{BUSI}/benign/benign (2).png",
                      f"{BUSI}/malignant/malignant (1).png", f"{BUSI}/benign/benign (3).png")
    assert pair(dups, b1, b2).kind == "identical"
    near = pair(dups, b1, m1)
    assert near.kind == "near" and near.correlation >= 0.9 and not near.mirrored
    assert pair(dups, b1, b3).mirrored
    cross = pair(dups, f"{BUSI}/malignant/malignant (2).png", f"{UDIAT}/000001.png")
    assert {cross.dataset, cross.dataset_b} == {"busi", "udiat"}
    # the unrelated scan (same depth profile, other texture) is in no pair
    assert f"{BUSI}/benign/benign (4).png" not in set(dups.image_a) | set(dups.image_b)
    assert (dups.image_a < dups.image_b).all()


def test_groups_and_conflicts(scans):
    root, manifest = scans
    dups = find_duplicates(manifest, root, DataConfig())
    groups = duplicate_groups(dups)
    a_copies = [f"{BUSI}/benign/benign ({i}).png" for i in (1, 2, 3)] + [
        f"{BUSI}/malignant/malignant (1).png"]
    assert groups.loc[a_copies].nunique() == 1                 # all four copies of scan a
    assert groups.nunique() == 2                               # ... and the cross-dataset pair
    assert dups.conflict.to_numpy().tolist() == (dups.label_a != dups.label_b).tolist()
    members = group_members(dups).set_index("group")
    g_a = groups[a_copies[0]]
    assert members.loc[g_a, "conflict"] and members.loc[g_a, "n_images"] == 4
    assert members.loc[g_a, "labels"] == "benign;malignant"
    summary = summarize_duplicates(dups).set_index("dataset")
    assert summary.loc["busi", "identical_pairs"] >= 1
    assert summary.loc["busi", "conflicting_groups"] == 1
    assert summary.loc["busi+udiat", "near_pairs"] == 1
    assert summary.loc["busi+udiat", "conflicting_groups"] == 0


def test_thresholds_decide(scans):
    root, manifest = scans
    strict = find_duplicates(manifest, root, DataConfig(min_correlation=0.9999))
    # left: the identical copy (no threshold applies) and the exact mirror of both copies
    assert sorted(zip(strict.kind, strict.mirrored)) == [
        ("identical", False), ("near", True), ("near", True)]
    default = find_duplicates(manifest, root, DataConfig())
    exact_hash = find_duplicates(manifest, root, DataConfig(phash_max_distance=0))
    assert (exact_hash.phash_distance == 0).all() and (default.phash_distance > 0).any()
    assert len(exact_hash) < len(default)
    with pytest.raises(ValueError, match="min_correlation"):
        find_duplicates(manifest, root, DataConfig(min_correlation=1.5))


def test_candidate_pairs_matches_brute_force():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**63, size=40, dtype=np.uint64)
    # many close hashes: flip 0-3 random bits of a few base hashes
    close = [base[i % 5] ^ np.uint64(sum(1 << int(b) for b in rng.choice(64, rng.integers(0, 4))))
             for i in range(600)]
    h = np.concatenate([base, np.array(close, dtype=np.uint64)])
    hashes = np.stack([h, rng.permutation(h)], axis=1)     # second column: "mirror" hashes
    i, j, d = candidate_pairs(hashes, 3)
    got = {(a, b): c for a, b, c in zip(i.tolist(), j.tolist(), d.tolist())}
    expect = {}
    for a, b in itertools.combinations(range(len(h)), 2):
        dist = min((int(h[a]) ^ int(h[b])).bit_count(),
                   (int(h[a]) ^ int(hashes[b, 1])).bit_count())
        if dist <= 3:
            expect[(a, b)] = dist
    assert got == expect and len(expect) > 600


def test_load_duplicates_caches(scans, monkeypatch, tmp_path):
    root, manifest = scans
    monkeypatch.setenv("BUS_PAPER_CACHE", str(tmp_path / "cache"))
    first = load_duplicates(manifest, root)

    def fail(*args, **kwargs):
        raise AssertionError("recomputed although cached")
    monkeypatch.setattr(dup_mod, "find_duplicates", fail)
    second = load_duplicates(manifest, root)
    pd.testing.assert_frame_equal(first, second, check_dtype=False)
    # another threshold or another label is another key
    with pytest.raises(AssertionError, match="recomputed"):
        load_duplicates(manifest, root, DataConfig(min_correlation=0.95))
    relabelled = manifest.assign(label=manifest.label.where(manifest.index != 0, "malignant"))
    with pytest.raises(AssertionError, match="recomputed"):
        load_duplicates(relabelled, root)


def test_manifest_checks(tmp_path):
    bad = pd.DataFrame({"dataset": ["busi"] * 2, "path": ["x.png"] * 2, "label": ["benign"] * 2})
    with pytest.raises(ValueError, match="unique"):
        find_duplicates(bad, tmp_path)
    with pytest.raises(ValueError, match="label"):
        find_duplicates(bad.drop(columns="label"), tmp_path)
