"""Atomic file writes: a killed process leaves the old file or the new one, never half of one.

Every writer of a result, checkpoint, log or cache file goes through :func:`atomic_path` (or the
two shortcuts below) instead of its own temp-file-and-rename: one implementation whose temporary
names (``.<name>.<random>.tmp``, hidden, never matching a cache's glob) the run-folder healing
knows, and which removes its temporary file on any failure, Ctrl-C included.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed onto ``path`` when the block ends
    without an exception (``os.replace``: atomic on one file system), deleted when it raises.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> with atomic_path(d / "x.txt") as tmp:
    ...     _ = tmp.write_text("new")
    >>> (d / "x.txt").read_text(), sorted(p.name for p in d.iterdir())
    ('new', ['x.txt'])
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp makes it private; results and caches are for everyone
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())
