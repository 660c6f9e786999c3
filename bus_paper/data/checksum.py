"""Content checksums of the datasets: the key for every cache and the data line of provenance.

A dataset's checksum is the sha256 over its sorted relative paths and each file's sha256, so it
changes when any file is added, removed, renamed or edited. Hashing ~150 MB takes a second or
two; per-file hashes are therefore cached by (path, size, mtime) so repeated calls only stat.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

from ..core.atomic import atomic_write_text
from ..paths import cache_dir, data_root
from .registry import DatasetNotFound, get_info

_CACHE_NAME = "file_sha256.json"


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _dataset_files(folder: Path) -> list[Path]:
    # Hidden files (.DS_Store, editor droppings) are not data; leaving them out keeps the
    # checksum stable across machines that create them.
    return sorted(p for p in folder.rglob("*") if p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


class _Sha256Cache:
    """{absolute path: [size, mtime_ns, sha256]} in cache_dir(), written atomically."""

    def __init__(self) -> None:
        self.path = cache_dir() / _CACHE_NAME
        try:
            self.entries: dict[str, list] = json.loads(self.path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            self.entries = {}
        self.dirty = False

    def sha256(self, path: Path) -> str:
        st = path.stat()
        key = str(path.resolve())
        hit = self.entries.get(key)
        if hit and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            return hit[2]
        digest = _file_sha256(path)
        self.entries[key] = [st.st_size, st.st_mtime_ns, digest]
        self.dirty = True
        return digest

    def save(self) -> None:
        if not self.dirty:
            return
        # drop entries of deleted files (e.g. test phantoms in temporary folders)
        self.entries = {k: v for k, v in self.entries.items() if os.path.exists(k)}
        atomic_write_text(self.path, json.dumps(self.entries))  # readers see old or new
        self.dirty = False


def _checksum(root: Path, name: str, cache: _Sha256Cache) -> str:
    info = get_info(name)
    folder = root / info.folder
    if not (root / info.layout).is_dir():
        raise DatasetNotFound(name, [root])
    h = hashlib.sha256()
    for p in _dataset_files(folder):
        h.update(p.relative_to(root).as_posix().encode() + b"\0")
        h.update(cache.sha256(p).encode() + b"\n")
    return h.hexdigest()


def dataset_checksum(root: str | os.PathLike | None, dataset: str) -> str:
    """sha256 (hex) of one dataset's files under ``root`` (None: the default data root)."""
    root = data_root(root)
    cache = _Sha256Cache()
    try:
        return _checksum(root, dataset, cache)
    finally:
        cache.save()


def data_checksum(root: str | os.PathLike | None, datasets: Iterable[str]) -> dict[str, str]:
    """{dataset: checksum} for several datasets, sharing one cache load and save."""
    root = data_root(root)
    cache = _Sha256Cache()
    try:
        return {name: _checksum(root, name, cache) for name in datasets}
    finally:
        cache.save()
