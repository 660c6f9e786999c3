"""The manifest: one row per usable image of the requested datasets, plus every issue found.

>>> res = build_manifest(datasets=["udiat"])          # doctest: +SKIP
>>> res.frame.groupby("label").size()                 # doctest: +SKIP
benign       109
malignant     54

Columns (the project's data contract): ``dataset, path, label, patient_id, lesion_id, view,
mask_paths, width, height, mode`` and dataset-specific ones (``histology, birads, device,
doppler, marks, combined``). ``path`` is relative to the data root and unique.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..paths import data_root, data_root_candidates
from .adapters import ADAPTERS, CORE_COLUMNS, DataIssue, MetadataError, _Collector
from .registry import BUS_DATASETS, DatasetNotFound, get_info

__all__ = ["DataIssue", "DatasetNotFound", "ManifestResult", "MetadataError", "build_manifest",
           "resolve_root"]


@dataclass(frozen=True)
class ManifestResult:
    frame: pd.DataFrame
    issues: list[DataIssue]
    root: Path

    @property
    def failed(self) -> dict[str, str]:
        """{dataset: one-line reason} of the datasets that could not be read (keep_going)."""
        return {i.dataset: i.message for i in self.issues if i.kind == "dataset_failed"}

    def issues_frame(self) -> pd.DataFrame:
        """The issues as a table (columns dataset, path, kind, message, excluded)."""
        cols = [f.name for f in dataclasses.fields(DataIssue)]
        return pd.DataFrame([dataclasses.astuple(i) for i in self.issues], columns=cols)

    def to_csv(self, path: str | os.PathLike) -> Path:
        """Write the manifest; the issues go beside it as ``<stem>_issues.csv``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.frame.to_csv(path, index=False)
        self.issues_frame().to_csv(path.with_name(f"{path.stem}_issues.csv"), index=False)
        return path


def resolve_root(root: str | os.PathLike | None, datasets: Iterable[str]) -> Path:
    """The data root, or :class:`DatasetNotFound` for the first dataset saying where we looked."""
    names = list(datasets)
    try:
        return data_root(root)
    except FileNotFoundError as e:
        looked = [Path(root)] if root is not None else data_root_candidates()
        # a set BUS_PAPER_DATA is the only candidate: say that it points nowhere
        env = root is None and bool(os.environ.get("BUS_PAPER_DATA"))
        raise DatasetNotFound(names[0] if names else "busi", looked,
                              str(e) if env else "no data root found") from None


def root_for(data_cfg, root: str | os.PathLike | None = None) -> Path:
    """The data root a profile reads: an explicit root, else a cached phantom root for a
    synthetic profile (smoke), else the default data root."""
    if root is None and data_cfg.synthetic:
        from .phantom import cached_phantom_root
        n = max(8, (data_cfg.max_images_per_dataset or 24) // 3)
        return cached_phantom_root(n_per_class=n, size=max(96, data_cfg.image_size))
    return resolve_root(root, BUS_DATASETS)


def build_manifest(root: str | os.PathLike | None = None,
                   datasets: Iterable[str] | None = None,
                   keep_going: bool = False) -> ManifestResult:
    """Read the datasets' original layouts under ``root`` (None: the default data root).

    ``datasets`` defaults to the four ultrasound datasets. A missing dataset raises
    :class:`DatasetNotFound` (a ``FileNotFoundError``) naming where it looked and the public
    source of the data; an unreadable metadata file raises :class:`MetadataError` (a
    ``ValueError``) naming the dataset, the file and what to do. With ``keep_going`` neither
    raises: the dataset is left out, recorded as a ``dataset_failed`` issue (see
    :attr:`ManifestResult.failed`), and the other datasets are read (the CLI and the check do
    this; a training run asking for a dataset wants the error).
    """
    names = list(BUS_DATASETS if datasets is None else datasets)
    if not names:
        raise ValueError("build_manifest needs at least one dataset")
    for name in names:
        get_info(name)  # unknown names fail here, with the list of known ones
        if name not in ADAPTERS:
            raise ValueError(f"no adapter for {name!r}; adapters exist for {', '.join(ADAPTERS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"datasets listed twice: {names}")
    base = resolve_root(root, names)
    for name in names:  # fail before the slow part
        if not keep_going and not (base / get_info(name).layout).is_dir():
            raise DatasetNotFound(name, [base])
    frames, issues = [], []
    for name in names:
        try:
            if not (base / get_info(name).layout).is_dir():
                raise DatasetNotFound(name, [base])
            df, found = ADAPTERS[name](base)
        except (DatasetNotFound, MetadataError) as e:
            if not keep_going:
                raise
            path = e.path if isinstance(e, MetadataError) else get_info(name).layout
            issues.append(DataIssue(name, path, "dataset_failed", str(e), excluded=True))
            continue
        frames.append(df)
        issues.extend(found)
    if not frames:  # every dataset failed: an empty manifest with the contract's columns
        frames = [_Collector(base, names[0]).frame()]
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    frame = frame[CORE_COLUMNS + [c for c in frame.columns if c not in CORE_COLUMNS]]
    assert frame["path"].is_unique, "manifest paths must be unique"
    return ManifestResult(frame=frame, issues=issues, root=base)
