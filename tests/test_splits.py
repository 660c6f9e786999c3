"""Leak-free splits: no patient, lesion or duplicate group ever crosses parts (property test),
stratification, determinism, conflict policies, official folds and label subsets."""

from __future__ import annotations

import itertools

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bus_paper.config import DataConfig
from bus_paper.data.duplicates import COLUMNS
from bus_paper.data.splits import LeakError, assert_no_leak, label_subset, make_splits, split_groups


def manifest_of(labels, patients=None, lesions=None, dataset="busi") -> pd.DataFrame:
    n = len(labels)
    na = [pd.NA] * n
    return pd.DataFrame({
        "dataset": dataset, "path": [f"{dataset}/img{i:04d}.png" for i in range(n)],
        "label": list(labels), "patient_id": patients or na, "lesion_id": lesions or na,
    }).astype({"patient_id": "object", "lesion_id": "object"})


def duplicates_of(manifest: pd.DataFrame, clusters: list[list[int]]) -> pd.DataFrame:
    """Pairs chaining the rows of each cluster (group id = cluster index), as find_duplicates."""
    rows = []
    for g, members in enumerate(clusters):
        for a, b in itertools.pairwise(members):
            ra, rb = manifest.iloc[a], manifest.iloc[b]
            rows.append([ra.dataset, ra.path, rb.path, rb.dataset, "near", 2, 0.95, False,
                         ra.label, rb.label, ra.label != rb.label, g])
    return pd.DataFrame(rows, columns=COLUMNS)


def parts_of(splits: pd.DataFrame) -> pd.Series:
    col = "split" if "split" in splits.columns else "fold"
    return splits.set_index("path")[col]


def assert_kept_together(splits, manifest, clusters):
    """Independent check (not assert_no_leak): each patient / lesion / cluster in one part."""
    part = parts_of(splits)
    m = manifest[manifest.path.isin(part.index)]
    for col in ("patient_id", "lesion_id"):
        for _, rows in m[m[col].notna()].groupby(col):
            assert part.loc[rows.path].nunique() == 1, f"{col} crosses parts"
    for members in clusters:
        paths = [p for p in manifest.path.iloc[members] if p in part.index]
        assert part.loc[paths].nunique() <= 1, "duplicate cluster crosses parts"


@st.composite
def random_dataset(draw):
    n = draw(st.integers(30, 80))
    labels = draw(st.lists(st.sampled_from(["benign", "malignant", "normal"]),
                           min_size=n, max_size=n))
    pool = draw(st.integers(n // 3, n))          # few patients -> big groups
    patients = draw(st.lists(st.one_of(st.none(), st.integers(0, pool)), min_size=n, max_size=n))
    lesions = draw(st.lists(st.one_of(st.none(), st.integers(0, pool)), min_size=n, max_size=n))
    n_clusters = draw(st.integers(0, n // 4))
    clusters = [draw(st.lists(st.integers(0, n - 1), min_size=2, max_size=4, unique=True))
                for _ in range(n_clusters)]
    # find_duplicates' groups are connected components, so clusters sharing a row are one group
    merged: list[set[int]] = []
    for c in map(set, clusters):
        touching = [m for m in merged if m & c]
        for m in touching:
            merged.remove(m)
            c |= m
        merged.append(c)
    m = manifest_of(labels, [None if p is None else f"p{p}" for p in patients],
                    [None if x is None else f"l{x}" for x in lesions])
    m[["patient_id", "lesion_id"]] = m[["patient_id", "lesion_id"]].where(
        m[["patient_id", "lesion_id"]].notna(), pd.NA)
    return m, [sorted(c) for c in merged]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_dataset(), st.integers(0, 10**6), st.sampled_from(["holdout", "kfold"]),
       st.sampled_from(["exclude", "keep"]))
def test_no_group_ever_crosses_parts(data, seed, scheme, policy):
    manifest, clusters = data
    dups = duplicates_of(manifest, clusters)
    try:
        splits = make_splits(manifest, "busi", seed, scheme=scheme, k=3, duplicates=dups,
                             cfg=DataConfig(conflict_policy=policy))
    except ValueError as err:               # too few groups for the parts: a clear refusal
        assert not isinstance(err, LeakError) and "too few" in str(err)
        return
    assert_kept_together(splits, manifest, clusters)
    assert set(splits.label) <= {"benign", "malignant"}
    assert splits.groupby("group")[parts_of(splits).name].nunique().max() == 1


def test_stratified_sizes_and_determinism():
    manifest = manifest_of(["benign"] * 200 + ["malignant"] * 100 + ["normal"] * 30)
    s = make_splits(manifest, "busi", 0)
    assert "normal" not in set(s.label) and len(s) == 300
    counts = pd.crosstab(s.split, s.label)
    for part, frac in (("train", 0.7), ("val", 0.1), ("test", 0.2)):
        assert abs(counts.loc[part].sum() - 300 * frac) <= 2
        assert abs(counts.loc[part, "malignant"] / counts.loc[part].sum() - 1 / 3) < 0.03
    shuffled = manifest.sample(frac=1, random_state=1)
    pd.testing.assert_frame_equal(s, make_splits(shuffled, "busi", 0))
    assert not s.split.equals(make_splits(manifest, "busi", 1).split)
    folds = make_splits(manifest, "busi", 0, scheme="kfold", k=5)
    per_fold = pd.crosstab(folds.fold, folds.label)
    assert sorted(per_fold.index) == [0, 1, 2, 3, 4]
    assert per_fold["benign"].between(39, 41).all() and per_fold["malignant"].between(19, 21).all()


def test_groups_join_patients_lesions_and_duplicates():
    # CHCO/CHVI: two patient codes joined by an identical image
    m = manifest_of(["benign", "benign", "malignant", "benign", "malignant"],
                    patients=["CHCO", "CHCO", "CHVI", "CHVI", "OTHR"], dataset="busuclm")
    dups = duplicates_of(m, [[0, 2]])
    g = split_groups(m, dups)
    assert g.iloc[:4].nunique() == 1 and g.iloc[4] != g.iloc[0]
    assert split_groups(m).iloc[:4].nunique() == 2     # without duplicates: two patients


def test_conflict_policies():
    labels = ["benign"] * 40 + ["malignant"] * 20
    manifest = manifest_of(labels)
    dups = duplicates_of(manifest, [[0, 45], [1, 2]])    # first: benign + malignant copy
    out = make_splits(manifest, "busi", 0, duplicates=dups)
    assert out.attrs["excluded"] == sorted(manifest.path.iloc[[0, 45]])
    assert len(out) == 58 and not out.path.isin(out.attrs["excluded"]).any()
    kept = make_splits(manifest, "busi", 0, duplicates=dups, cfg=DataConfig(conflict_policy="keep"))
    assert len(kept) == 60 and kept.attrs["excluded"] == []
    part = parts_of(kept)
    assert part.loc[manifest.path.iloc[0]] == part.loc[manifest.path.iloc[45]]
    with pytest.raises(ValueError, match="conflict_policy"):
        make_splits(manifest, "busi", 0, cfg=DataConfig(conflict_policy="drop"))


def test_leaking_split_raises():
    m = manifest_of(["benign"] * 4 + ["malignant"] * 2, patients=["a", "a", "b", "c", "d", "e"])
    split = pd.DataFrame({"path": m.path, "label": m.label,
                          "group": ["g0", "g0", "g1", "g2", "g3", "g4"],
                          "split": ["train", "train", "val", "test", "train", "test"]})
    assert_no_leak(split, m)                                # consistent: passes
    patient_leak = split.assign(split=["train", "test", "val", "test", "train", "test"],
                                group=[f"g{i}" for i in range(6)])
    with pytest.raises(LeakError, match="patient 'busi:a'"):
        assert_no_leak(patient_leak, m)
    group_leak = split.assign(group=["g0", "g0", "g1", "g1", "g3", "g4"])
    with pytest.raises(LeakError, match="group 'g1'"):
        assert_no_leak(group_leak, m)
    dups = duplicates_of(m, [[3, 4]])
    with pytest.raises(LeakError, match="duplicate group") as err:
        assert_no_leak(split, m, dups)
    assert "np." not in str(err.value)            # a reader sees the group's number, not a repr
    fold_leak = split.drop(columns="split").assign(fold=[0, 1, 2, 0, 1, 2])
    with pytest.raises(LeakError):
        assert_no_leak(fold_leak, m)


def test_official_folds(tmp_path):
    base = tmp_path / "busbra" / "BUSBRA"
    base.mkdir(parents=True)
    ids = [f"bus_{i:04d}-{v}" for i in range(1, 11) for v in ("l", "r")]
    fold = [(i - 1) % 5 + 1 for i in range(1, 11) for _ in "lr"]      # patient-wise, 1..5
    pd.DataFrame({"ID": ids, "Pathology": "benign", "kFold": fold}).to_csv(
        base / "5-fold-cv.csv", index=False)
    m = pd.DataFrame({"dataset": "busbra", "path": [f"busbra/BUSBRA/Images/{i}.png" for i in ids],
                      "label": ["benign", "benign", "malignant", "malignant"] * 5,
                      "patient_id": [i[4:8] for i in ids], "lesion_id": [i[4:8] for i in ids]})
    s = make_splits(m, "busbra", 0, scheme="official", root=tmp_path)
    assert s.fold.tolist() == [f - 1 for f in fold]
    with pytest.raises(ValueError, match="only for busbra"):
        make_splits(m.assign(dataset="busi"), "busi", 0, scheme="official", root=tmp_path)
    # an official file that split a patient would be refused
    pd.DataFrame({"ID": ids, "kFold": [1, 2] * 10}).to_csv(base / "5-fold-cv.csv", index=False)
    with pytest.raises(LeakError):
        make_splits(m, "busbra", 0, scheme="official", root=tmp_path)


def test_label_subset_keeps_groups_and_nests():
    m = manifest_of(["benign"] * 140 + ["malignant"] * 60,
                    patients=[f"p{i // 2}" for i in range(200)])    # pairs of images
    s = make_splits(m, "busi", 0)
    small, half = label_subset(s, 0.25, seed=3), label_subset(s, 0.5, seed=3)
    train = s[s.split == "train"]
    for sub, frac in ((small, 0.25), (half, 0.5)):
        pd.testing.assert_frame_equal(sub[sub.split != "train"], s[s.split != "train"])
        got = sub[sub.split == "train"].label.value_counts()
        want = train.label.value_counts() * frac
        assert ((got - want).abs() <= 2).all()             # whole groups of 2: off by <= 1 group
        assert sub[sub.split == "train"].groupby("group").size().eq(
            train.groupby("group").size().loc[sub[sub.split == "train"].group.unique()]).all()
    assert set(small.path) <= set(half.path)
    pd.testing.assert_frame_equal(label_subset(s, 1.0, 0), s)
    with pytest.raises(ValueError, match="fraction"):
        label_subset(s, 0.0, 0)


def test_argument_errors():
    m = manifest_of(["benign", "malignant"] * 10)
    with pytest.raises(ValueError, match="not in the manifest"):
        make_splits(m, "udiat", 0)
    with pytest.raises(ValueError, match="scheme"):
        make_splits(m, "busi", 0, scheme="random")
    with pytest.raises(ValueError, match="no images labelled"):
        make_splits(m, "busi", 0, labels=("normal",))
    with pytest.raises(ValueError, match="too few"):
        make_splits(m.iloc[:3], "busi", 0, scheme="kfold", k=5)
