"""Leak-free, label-stratified splits: holdout (train/val/test), k-fold, BUS-BRA's official folds.

The unit of splitting is a *group*: the connected component over "same patient", "same lesion" and
"same duplicate group". So BUS-UCLM's CHCO/CHVI codes (one patient filed under two codes, joined by
their identical images) fall on one side, and BUSI's near-duplicates stay together although BUSI has
no patient ids. Groups are dealt out greedily, largest first and in a seeded random order among
equals, each to the part whose per-label quota is least filled: the label mix of every part then
matches the whole to within a group or so, and the result depends only on the data and the seed.

:func:`make_splits` checks its own output with :func:`assert_no_leak` and refuses to return a split
in which any patient, lesion or duplicate group spans two parts.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ..config import DataConfig
from ..paths import data_root
from .adapters import busbra_official_folds
from .duplicates import duplicate_groups

log = logging.getLogger(__name__)

PARTS = ("train", "val", "test")
SCHEMES = ("holdout", "kfold", "official")
CONFLICT_POLICIES = ("exclude", "keep")


class LeakError(ValueError):
    """A split in which a group, patient, lesion or duplicate group spans two parts."""


def split_groups(rows: pd.DataFrame, duplicates: pd.DataFrame | None = None) -> pd.Series:
    """Group key (``g0000``, ``g0001``, ...) of every row, aligned with ``rows.index``.

    Rows are joined when they share a ``patient_id`` or ``lesion_id`` (within a dataset) or a
    duplicate group. Groups are numbered in the order of their first path, so keys are stable.
    """
    n = len(rows)
    paths = rows["path"].to_numpy()
    keys = [(rows["dataset"].astype(str) + ":" + rows[col].astype(str)).where(rows[col].notna())
            for col in ("patient_id", "lesion_id") if col in rows.columns]
    if duplicates is not None and len(duplicates):
        keys.append(rows["path"].map(duplicate_groups(duplicates)))
    edges: list[np.ndarray] = []
    for key in keys:
        pos = pd.Series(np.arange(n), index=rows.index)[key.notna()]
        first = pos.groupby(key[key.notna()]).transform("first")
        edges.append(np.stack([pos.to_numpy(), first.to_numpy()]))
    e = np.concatenate(edges, axis=1) if edges else np.zeros((2, 0), dtype=int)
    _, comp = connected_components(coo_matrix((np.ones(e.shape[1]), (e[0], e[1])), shape=(n, n)),
                                   directed=False)
    # number components by their smallest path
    first_path = pd.Series(paths).groupby(comp).transform("min")
    rank = first_path.rank(method="dense").astype(int) - 1
    return pd.Series([f"g{r:04d}" for r in rank], index=rows.index, name="group")


def _deal(counts: np.ndarray, fractions: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Assign groups (rows of ``counts``, images per label) to parts with the given fractions.

    Largest groups first (ties in random order); each goes to the part whose quota for the
    group's labels is relatively least filled. Parts with fraction 0 get nothing.
    """
    target = fractions[:, None] * counts.sum(0)[None, :]
    current = np.zeros_like(target)
    order = rng.permutation(len(counts))
    order = order[np.argsort(-counts[order].sum(1), kind="stable")]
    part = np.empty(len(counts), dtype=int)
    for g in order:
        need = (target - current) / np.maximum(target, 1e-9)
        score = need @ counts[g]
        score[fractions <= 0] = -np.inf
        part[g] = int(np.argmax(score))
        current[part[g]] += counts[g]
    return part


def _conflicting(rows: pd.DataFrame, duplicates: pd.DataFrame | None) -> pd.Series:
    """Boolean mask of rows whose duplicate group holds more than one label (among ``rows``)."""
    if duplicates is None or duplicates.empty:
        return pd.Series(False, index=rows.index)
    dup = rows["path"].map(duplicate_groups(duplicates))
    n_labels = rows.groupby(dup)["label"].nunique()
    return dup.map(n_labels).fillna(1).gt(1)


def make_splits(manifest: pd.DataFrame, dataset: str, seed: int, *, scheme: str = "holdout",
                k: int = 5, duplicates: pd.DataFrame | None = None, cfg: DataConfig = DataConfig(),
                labels: Sequence[str] = ("benign", "malignant"),
                root: str | os.PathLike | None = None) -> pd.DataFrame:
    """Split one dataset's images, never letting a group cross parts.

    Returns one row per kept image, sorted by path: ``path, label, group, split``
    (train | val | test; ``scheme="holdout"``, fractions from ``cfg``) or ``path, label, group,
    fold`` (0..k-1; ``"kfold"``, or ``"official"`` = BUS-BRA's patient-wise ``{k}-fold-cv.csv``
    under ``root``). Only ``labels`` are kept. Duplicate groups whose members carry different
    labels (among those kept: a benign image's copy filed as normal is no conflict for
    benign-vs-malignant) are dropped (``cfg.conflict_policy="exclude"``) or kept together
    (``"keep"``); the dropped paths are in ``.attrs["excluded"]``.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    if cfg.conflict_policy not in CONFLICT_POLICIES:
        raise ValueError(f"conflict_policy must be one of {CONFLICT_POLICIES}, "
                         f"got {cfg.conflict_policy!r}")
    if scheme != "holdout" and k < 2:
        raise ValueError(f"k-fold needs k >= 2, got {k}")
    if not labels:
        raise ValueError("labels is empty: name the classes to keep, e.g. ('benign', 'malignant')")
    available = sorted(manifest["dataset"].unique())
    if dataset not in available:
        raise ValueError(f"dataset {dataset!r} is not in the manifest (it has: {available})")

    rows = manifest[(manifest["dataset"] == dataset) & manifest["label"].isin(labels)]
    if rows.empty:
        raise ValueError(f"{dataset} has no images labelled {list(labels)}")
    conflict = _conflicting(rows, duplicates)
    excluded = sorted(rows.loc[conflict, "path"]) if cfg.conflict_policy == "exclude" else []
    if excluded:
        log.info("%s: excluded %d images in duplicate groups with conflicting labels",
                 dataset, len(excluded))
        rows = rows[~conflict]
    rows = rows.sort_values("path").reset_index(drop=True)
    out = rows[["path", "label"]].assign(group=split_groups(rows, duplicates))

    if scheme == "official":
        if dataset != "busbra":
            raise ValueError(f"scheme='official' exists only for busbra (its k-fold csv), "
                             f"not {dataset!r}; use 'kfold'")
        official = busbra_official_folds(data_root(root), k=k).set_index("path")["fold"]
        missing = sorted(set(out["path"]) - set(official.index))
        if missing:
            raise ValueError(f"{len(missing)} busbra images have no official fold, "
                             f"e.g. {missing[0]}")
        out["fold"] = official.loc[out["path"]].to_numpy() - 1    # the csv counts folds from 1
    else:
        fractions = (np.array([1 - cfg.val_fraction - cfg.test_fraction, cfg.val_fraction,
                               cfg.test_fraction]) if scheme == "holdout" else np.full(k, 1 / k))
        if (fractions < 0).any() or fractions[0] <= 0:
            raise ValueError(f"bad fractions val={cfg.val_fraction}, test={cfg.test_fraction}: "
                             "each must be >= 0 and their sum < 1")
        counts = pd.crosstab(out["group"], out["label"])
        part_of_group = pd.Series(_deal(counts.to_numpy(float), fractions,
                                        np.random.default_rng(seed)), index=counts.index)
        part = out["group"].map(part_of_group).to_numpy()
        used = set(part.tolist())
        empty = [i for i, f in enumerate(fractions) if f > 0 and i not in used]
        if empty:
            raise ValueError(f"{dataset}: {counts.shape[0]} groups are too few for "
                             f"{'a holdout split' if scheme == 'holdout' else f'{k} folds'}")
        if scheme == "holdout":
            out["split"] = np.array(PARTS)[part]
        else:
            out["fold"] = part
    assert_no_leak(out, manifest, duplicates)
    out.attrs.update(dataset=dataset, seed=seed, scheme=scheme, excluded=excluded)
    return out


def cv_split(manifest: pd.DataFrame, dataset: str, seed: int, *, k: int, fold: int,
             duplicates: pd.DataFrame | None = None, cfg: DataConfig = DataConfig(),
             labels: Sequence[str] = ("benign", "malignant")) -> pd.DataFrame:
    """Fold ``fold`` of a grouped, stratified ``k``-fold cross-validation as a train/val/test split.

    ``test`` is fold ``fold`` of :func:`make_splits` (``scheme="kfold"``, ``seed``), so the k
    splits of one seed test every image exactly once; ``val`` is a grouped, stratified share of the
    other folds as large as a holdout's (``cfg.val_fraction`` of the whole), for epoch and
    threshold selection; ``train`` is the rest. No group spans two parts (checked).
    """
    if not 0 <= fold < k:
        raise ValueError(f"fold must be in 0..{k - 1}, got {fold}")
    folds = make_splits(manifest, dataset, seed, scheme="kfold", k=k, duplicates=duplicates,
                        cfg=cfg, labels=labels)
    rest = folds[folds["fold"] != fold]
    share = cfg.val_fraction / (1 - 1 / k)
    if not 0 < share < 1:
        raise ValueError(f"val_fraction {cfg.val_fraction} leaves no training data with k={k}")
    counts = pd.crosstab(rest["group"], rest["label"])
    # the fold's own seed: each fold's validation groups are drawn independently
    part = _deal(counts.to_numpy(float), np.array([1 - share, share]),
                 np.random.default_rng([seed, fold]))
    is_val = rest["group"].map(pd.Series(part == 1, index=counts.index))
    split = pd.Series("test", index=folds.index)
    split[rest.index] = np.where(is_val, "val", "train")
    out = folds.drop(columns="fold").assign(split=split)
    assert_no_leak(out, manifest, duplicates)
    out.attrs.update(folds.attrs, scheme="kfold", k=k, fold=fold)
    return out


def assert_no_leak(splits: pd.DataFrame, manifest: pd.DataFrame,
                   duplicates: pd.DataFrame | None = None) -> None:
    """Raise :class:`LeakError` if a group, patient, lesion or duplicate group spans two parts.

    ``splits`` has ``path`` and ``split`` or ``fold`` (``group`` is checked when present);
    patients and lesions come from ``manifest``, duplicate groups from ``duplicates``.
    """
    part_cols = [c for c in ("split", "fold") if c in splits.columns]
    if len(part_cols) != 1:
        raise ValueError(f"splits needs one 'split' or 'fold' column, has {list(splits.columns)}")
    part_col = part_cols[0]
    if splits["path"].duplicated().any():
        raise LeakError(f"path {splits.loc[splits['path'].duplicated(), 'path'].iloc[0]!r} "
                        "appears twice in the split")
    unknown = sorted(set(splits["path"]) - set(manifest["path"]))
    if unknown:
        raise ValueError(f"{len(unknown)} split paths are not in the manifest, e.g. {unknown[0]!r}")
    info = [c for c in ("path", "dataset", "patient_id", "lesion_id") if c in manifest.columns]
    df = splits.drop(columns=[c for c in info if c != "path"], errors="ignore").merge(
        manifest[info], on="path", how="left")
    checks: list[tuple[str, pd.Series]] = []
    if "group" in df.columns:
        checks.append(("group", df["group"]))
    for col in ("patient_id", "lesion_id"):
        if col in df.columns:
            key = (df["dataset"].astype(str) + ":" + df[col].astype(str)).where(df[col].notna())
            checks.append((col.removesuffix("_id"), key))
    if duplicates is not None and len(duplicates):
        checks.append(("duplicate group", df["path"].map(duplicate_groups(duplicates))))
    for what, key in checks:
        spans = df[part_col].groupby(key).nunique()
        leaking = spans[spans > 1]
        if len(leaking):
            bad = leaking.index[0]
            members = df.loc[key == bad, ["path", part_col]]
            where = ", ".join(f"{p} ({s})" for p, s in members.head(4).itertuples(index=False))
            name = bad.item() if hasattr(bad, "item") else bad   # not "np.float64(3.0)" for readers
            if isinstance(name, float) and name.is_integer():
                name = int(name)
            raise LeakError(f"{what} {name!r} spans {leaking.iloc[0]} parts: {where}"
                            + (f" and {len(members) - 4} more" if len(members) > 4 else "")
                            + f"; {len(leaking)} such {what}(s) in all")


def label_subset(splits: pd.DataFrame, fraction: float, seed: int) -> pd.DataFrame:
    """Keep ``fraction`` of the training images (whole groups, stratified by label); val/test
    unchanged. Nested: for one seed, a smaller fraction keeps a subset of a larger one's images."""
    if "split" not in splits.columns:
        raise ValueError("label_subset needs a holdout split (a 'split' column)")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    train = splits[splits["split"] == "train"]
    if fraction == 1 or train.empty:
        return splits.copy()
    # a group's stratum is its most frequent label (ties: alphabetical)
    size = train.groupby(["group", "label"]).size().rename("n").reset_index()
    size = size.sort_values(["group", "n", "label"], ascending=[True, False, True])
    stratum = size.drop_duplicates("group").set_index("group")["label"]
    n_images = train.groupby("group").size()
    order = np.array(sorted(n_images.index))[np.random.default_rng(seed).permutation(len(n_images))]
    keep: list[str] = []
    for label in sorted(set(stratum)):
        sizes = n_images.loc[[g for g in order if stratum[g] == label]]
        target = max(1, round(fraction * sizes.sum()))
        before = sizes.cumsum() - sizes          # images taken before this group
        keep += list(sizes.index[before < target])
    out = splits[(splits["split"] != "train") | splits["group"].isin(keep)].copy()
    out.attrs.update(splits.attrs, label_fraction=fraction, label_seed=seed)
    return out
