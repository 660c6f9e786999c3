"""Where things live: the data root, the cache, the runs folder, the repository root.

Every location can be moved with an environment variable, so that a reviewer can point the
project at the original full-size downloads or at a scratch disk without editing code.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def repo_root() -> Path | None:
    """The source checkout this package was imported from (editable install), if any."""
    root = PACKAGE_DIR.parent
    return root if (root / "pyproject.toml").exists() and (root / "_toc.yml").exists() else None


def project_root() -> Path:
    """The checkout (notebooks/, _toc.yml); the current folder when run outside one."""
    return repo_root() or Path.cwd()


def data_root_candidates() -> list[Path]:
    """Where the data root is looked for: $BUS_PAPER_DATA alone when it is set (it must then
    exist: no fallback), else ./data and ../shared/data beside the working directory and beside
    the checkout."""
    env = os.environ.get("BUS_PAPER_DATA")
    if env:
        return [Path(env).expanduser()]
    out: list[Path] = []
    bases = [Path.cwd()]
    root = repo_root()
    if root is not None and root != Path.cwd():
        bases.append(root)
    out += [b / "data" for b in bases]
    out += [b.parent / "shared" / "data" for b in bases]
    # keep order, drop repeats
    seen: set[Path] = set()
    uniq = []
    for p in out:
        key = p.resolve() if p.exists() else p.absolute()
        if key not in seen:
            seen.add(key)
            uniq.append(p)
    return uniq


def data_root(explicit: str | os.PathLike | None = None) -> Path:
    """The data root. An explicit path wins; $BUS_PAPER_DATA, if set, must exist."""
    if explicit is not None:
        p = Path(explicit).expanduser()
        if not p.is_dir():
            raise FileNotFoundError(f"data root {p} does not exist")
        return p.resolve()
    env = os.environ.get("BUS_PAPER_DATA")
    if env:
        p = Path(env).expanduser()
        if not p.is_dir():
            what = "is not a folder" if p.exists() else "does not exist"
            raise FileNotFoundError(
                f"BUS_PAPER_DATA points nowhere: {p} {what}; set it to the folder that holds "
                "busi/, udiat/, busbra/, busuclm/ (or unset it)")
        return p.resolve()
    for p in data_root_candidates():
        if p.is_dir():
            return p.resolve()
    tried = ", ".join(str(p) for p in data_root_candidates())
    raise FileNotFoundError(
        f"no data root found (looked at: {tried}). Set BUS_PAPER_DATA to the folder that holds "
        "busi/, udiat/, busbra/, busuclm/ (see the book's data chapter for where to get them)."
    )


def _default_under_root(name: str, fallback: Path) -> Path:
    root = repo_root()
    return (root / name) if root is not None else fallback


def cache_dir() -> Path:
    """Decoded-image caches and pretrained encoders: $BUS_PAPER_CACHE, else <repo>/.cache."""
    env = os.environ.get("BUS_PAPER_CACHE")
    p = Path(env).expanduser() if env else _default_under_root(
        ".cache", Path.home() / ".cache" / "bus-paper")
    p.mkdir(parents=True, exist_ok=True)
    return p


def runs_dir() -> Path:
    """Checkpoints and training logs: $BUS_PAPER_RUNS, else <repo>/runs (never committed)."""
    env = os.environ.get("BUS_PAPER_RUNS")
    p = Path(env).expanduser() if env else _default_under_root(
        "runs", Path.home() / ".cache" / "bus-paper" / "runs")
    p.mkdir(parents=True, exist_ok=True)
    return p
