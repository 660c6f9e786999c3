"""From a profile to tensors: the unlabeled pool for pretraining and leak-free labelled splits.

Images come from the preprocessing cache (decoded, padded, resized once) as uint8 tensors
[N, 1, S, S]; augmentation and z-scoring happen per batch on the training device.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..config import Profile
from ..data.preprocess import Normalizer

LABELS = ("benign", "malignant")  # index = class id; malignant is the positive class


def resolve_root(profile: Profile, root: str | Path | None = None) -> Path:
    """The data root; the smoke profile uses a (cached) synthetic phantom root."""
    from ..data.manifest import root_for
    return root_for(profile.data, root)


def manifest_for(profile: Profile, root: Path, datasets) -> pd.DataFrame:
    from ..data.manifest import build_manifest
    frame = build_manifest(root, list(datasets)).frame
    cap = profile.data.max_images_per_dataset
    if cap:  # smoke: a deterministic subset per dataset
        frame = pd.concat([g.sample(min(cap, len(g)), random_state=0)
                           for _, g in frame.groupby("dataset", sort=False)])
    return frame.reset_index(drop=True)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, S, S] -> uint8 tensor [N, 1, S, S] (kept uint8 in memory: 4x smaller)."""
    return torch.from_numpy(np.array(images, dtype=np.uint8, copy=True)).unsqueeze(1)  # cache may be read-only


def load_pool(profile: Profile, root: Path) -> tuple[torch.Tensor, pd.DataFrame]:
    """The unlabeled pretraining pool (labels are never read). Evaluation datasets never enter it,
    and pool images that duplicate an evaluation image are dropped so nothing leaks through SSL."""
    from ..data.duplicates import load_duplicates
    from ..data.preprocess import load_images
    evaluation = set(profile.finetune.datasets)
    overlap = evaluation & set(profile.pretrain.pool)
    if overlap:
        raise ValueError(f"evaluation datasets {sorted(overlap)} must not be in the pretraining pool")
    frame = manifest_for(profile, root, tuple(profile.pretrain.pool) + tuple(sorted(evaluation)))
    dups = load_duplicates(frame, root, profile.data)
    pool = frame[frame.dataset.isin(profile.pretrain.pool)]
    if len(dups):
        cross = dups[dups.dataset.isin(evaluation) | dups.dataset_b.isin(evaluation)]
        tainted = set(cross.image_a) | set(cross.image_b)
        pool = pool[~pool.path.isin(tainted)]
    pool = pool.reset_index(drop=True)
    images = load_images(pool, root, profile.data.image_size).images
    return to_tensor(images), pool


@dataclass
class LabelledSplits:
    dataset: str
    x: dict[str, torch.Tensor]          # split -> uint8 [N, 1, S, S]
    y: dict[str, torch.Tensor]          # split -> int64 [N]
    paths: dict[str, list[str]]
    normalizer: Normalizer
    splits: pd.DataFrame

    def clusters(self, part: str) -> list[str]:
        """The cluster of each image of ``part``: its split group (patient, lesion and duplicate
        group joined), what a bootstrap over test images must resample. Pooled data (a
        ``dataset`` column; paths read ``<dataset>:<path>``) prefix the dataset."""
        s = self.splits
        if "dataset" in s:
            keys, groups = s["dataset"] + ":" + s["path"], s["dataset"] + ":" + s["group"].astype(str)
        else:
            keys, groups = s["path"], s["group"].astype(str)
        of = dict(zip(keys, groups))
        return [of[p] for p in self.paths[part]]


@dataclass(frozen=True)
class Fold:
    """Fold ``index`` of ``k`` of repeat ``repeat`` of a grouped, stratified cross-validation
    (:func:`~bus_paper.data.splits.cv_split`): every repeat deals the groups anew (split seed
    ``finetune.split_seed + repeat``) and its k folds test every image once."""
    k: int
    index: int
    repeat: int = 0

    def __post_init__(self) -> None:
        if self.k < 2 or not 0 <= self.index < self.k or self.repeat < 0:
            raise ValueError(f"need k >= 2, 0 <= index < k and repeat >= 0, got {self}")

    def split_seed(self, profile: Profile) -> int:
        return profile.finetune.split_seed + self.repeat


def load_labelled(profile: Profile, root: Path, dataset: str, label_fraction: float = 1.0,
                  label_seed: int = 0, fold: Fold | None = None) -> LabelledSplits:
    """Leak-free split of one dataset (benign vs malignant), tensors and normaliser: the
    70/10/20 holdout of ``profile.data``, or with ``fold`` that fold of a grouped k-fold
    cross-validation (test = the fold, validation a grouped share of the rest)."""
    from ..data.duplicates import load_duplicates
    from ..data.preprocess import load_images
    from ..data.splits import cv_split, label_subset, make_splits
    frame = manifest_for(profile, root, (dataset,))
    dups = load_duplicates(frame, root, profile.data)
    if fold is None:
        splits = make_splits(frame, dataset, profile.finetune.split_seed, scheme="holdout",
                             duplicates=dups, cfg=profile.data, labels=LABELS)
    else:
        splits = cv_split(frame, dataset, fold.split_seed(profile), k=fold.k, fold=fold.index,
                          duplicates=dups, cfg=profile.data, labels=LABELS)
    if label_fraction < 1.0:
        train = label_subset(splits[splits.split == "train"], label_fraction, label_seed)
        splits = pd.concat([train, splits[splits.split != "train"]], ignore_index=True)
    rows = frame.set_index("path").loc[splits.path].reset_index()
    images = load_images(rows, root, profile.data.image_size).images
    x_all = to_tensor(images)
    y_all = torch.tensor([LABELS.index(v) for v in splits.label], dtype=torch.long)
    x, y, paths = {}, {}, {}
    for part in ("train", "val", "test"):
        m = np.array(splits.split == part, dtype=bool)
        x[part], y[part] = x_all[torch.from_numpy(m)], y_all[torch.from_numpy(m)]
        paths[part] = splits.path[m].tolist()
    return LabelledSplits(dataset, x, y, paths, Normalizer.fit(x["train"].numpy()), splits)
