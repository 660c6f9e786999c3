"""Data layer: dataset adapters -> manifest -> duplicates -> leak-free splits -> image cache.

Names are imported lazily (PEP 562), so ``import bus_paper.data`` is instant and never pulls in
torch or the image libraries until a function is used.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, tuple[str, ...]] = {
    "registry": ("DATASETS", "BUS_DATASETS", "DatasetInfo", "DatasetNotFound", "get_info"),
    "imageio": ("read_image", "read_mask", "ImageReadError", "mask_colour_label"),
    "adapters": ("DataIssue", "busbra_official_folds"),
    "manifest": ("build_manifest", "ManifestResult"),
    "check": ("check_datasets", "format_table", "summarize_issues"),
    "checksum": ("dataset_checksum", "data_checksum"),
    "phantom": ("write_phantom_root",),
    "duplicates": ("find_duplicates", "load_duplicates", "summarize_duplicates",
                   "group_members", "duplicate_groups"),
    "splits": ("make_splits", "assert_no_leak", "LeakError", "label_subset", "split_groups"),
    "preprocess": ("load_images", "ImageSet", "pad_to_square", "square_resize",
                   "zscore_stats", "Normalizer"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value          # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
