"""Provenance: what produced a result (code, data, hardware, settings), stored beside the result.

Every figure and table in the book is also a plain result file (JSON) that carries a
``"provenance"`` block, so a number can be traced to the git commit, the data checksums and the
machine that produced it, and re-rendered without re-running anything.

    prov = provenance("cpu", seed=0, data_root=None, datasets=(), started=time.time())
    save_result("book/results/data", "counts", {"busi": 780}, prov)
    load_result("book/results/data", "counts")["busi"]          # -> 780
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .config import Profile
from .core.atomic import atomic_write_bytes, atomic_write_text  # noqa: F401 (re-exported)
from .paths import repo_root

# Distributions whose versions can change a number in the book.
PACKAGES = ("bus-paper", "numpy", "pandas", "scipy", "scikit-learn", "pillow", "imagehash",
            "torch", "torchvision", "timm", "kornia", "grad-cam", "matplotlib", "papermill",
            "jupyter-book")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def git_state(root: Path | None = None) -> dict[str, Any]:
    """``{"commit": sha | "unknown", "dirty": bool | None}`` of the source checkout.

    "Dirty" looks only at what produces results (the package, the notebooks, pyproject.toml),
    untracked files included: executed chapters and result files are outputs, and counting them
    would mark every run after the first as dirty.
    """
    root = root if root is not None else repo_root()
    if root is None or not (root / ".git").exists():
        return {"commit": "unknown", "dirty": None}
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                text=True, check=True, timeout=30).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--", "bus_paper", "notebooks", "pyproject.toml"],
            cwd=root, capture_output=True, text=True, check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):  # no git binary, no commit yet, ...
        return {"commit": "unknown", "dirty": None}
    return {"commit": commit, "dirty": bool(status.strip())}


def data_checksums(root: Path | None, datasets: Iterable[str]) -> dict[str, str]:
    """sha256 of each dataset (DATA-A's cached ``data_checksum``); "missing" if not under root.

    A partial data root is allowed (the phantom root has no mammograms): absent is a state the
    hash must capture, not an error.
    """
    datasets = list(datasets)
    if root is None or not datasets:
        return {}
    from .data.checksum import data_checksum  # lazy: provenance must not need the data layer
    from .data.registry import get_info

    present = [d for d in datasets if (Path(root) / get_info(d).layout).is_dir()]
    found = data_checksum(Path(root), present) if present else {}
    return {d: found.get(d, "missing") for d in datasets}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _cpu_bf16_used() -> bool:
    forced = os.environ.get("BUS_PAPER_CPU_BF16")
    return forced == "1" if forced in ("0", "1") else hardware_bf16()


def hardware_bf16() -> bool:
    """Does this CPU have bf16 in hardware (AMX or AVX512-BF16)? Read from /proc/cpuinfo, else from
    torch's dispatch level where /proc is missing."""
    flags = _cpu_flags()
    if flags:
        return bool({"amx_bf16", "avx512_bf16"} & flags)
    try:
        import torch
        cap = torch.backends.cpu.get_cpu_capability()
    except Exception:       # noqa: BLE001 - no torch: no bf16 either
        return False
    return "BF16" in cap or "AMX" in cap


def hardware() -> dict[str, Any]:
    """CPU model and cores, bf16 support (AMX / AVX512-BF16), torch version and CUDA device."""
    flags = _cpu_flags()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": usable,
        "amx_bf16": "amx_bf16" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        # what a profile's precision = "bf16" becomes on this CPU (emulated bf16 is far slower)
        "cpu_bf16": _cpu_bf16_used(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
    }
    try:
        import torch
    except ImportError:
        return {**info, "torch": None, "cuda": None}
    info["torch"] = torch.__version__
    info["torch_threads"] = torch.get_num_threads()
    info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    if torch.cuda.is_available():
        info["cuda"] = {"device": torch.cuda.get_device_name(0),
                        "count": torch.cuda.device_count(),
                        "bf16": torch.cuda.is_bf16_supported(),
                        "version": torch.version.cuda}
    else:
        info["cuda"] = None
    return info


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def provenance(profile: Profile | str, seed: int | None, data_root: str | os.PathLike | None,
               datasets: Iterable[str], started: float) -> dict[str, Any]:
    """Everything needed to say where a result came from.

    ``started`` is the ``time.time()`` at which the work began (gives ``wall_s``); ``data_root``
    None means synthetic data (no checksums: the phantoms are a function of the code).
    """
    if not isinstance(started, (int, float)) or not math.isfinite(started):
        raise ValueError(f"started must be a time.time() value, not {started!r}")
    name = profile.name if isinstance(profile, Profile) else str(profile)
    root = Path(data_root).resolve() if data_root is not None else None
    return {
        "profile": name,
        "seed": seed,
        "git": git_state(),
        "data_root": str(root) if root is not None else None,
        "data_checksums": data_checksums(root, datasets),
        "hardware": hardware(),
        "packages": package_versions(),
        **stamp(started),
    }


def stamp(started: float) -> dict[str, Any]:
    """The time-dependent part of a provenance record: ``wall_s`` since ``started``, ``timestamp``."""
    return {"wall_s": round(time.time() - started, 3),
            "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}


def _jsonable(obj: Any) -> Any:
    """json.dump fallback: numpy scalars/arrays, paths, sets, dataclass-free simple objects."""
    if hasattr(obj, "tolist"):  # numpy arrays and scalars, torch tensors
        return obj.tolist()
    if isinstance(obj, (Path, os.PathLike)):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _result_path(results_dir: str | os.PathLike, name: str) -> Path:
    if not _NAME.match(name):
        raise ValueError(f"result name {name!r} must be a plain file stem "
                         "(letters, digits, '_', '-', '.'; no folders)")
    return Path(results_dir) / f"{name}.json"


def save_result(results_dir: str | os.PathLike, name: str, payload: Mapping[str, Any],
                provenance: Mapping[str, Any]) -> Path:
    """Write ``<results_dir>/<name>.json`` = payload + ``"provenance"``, atomically."""
    if not isinstance(payload, Mapping):
        raise TypeError(f"payload must be a mapping, not {type(payload).__name__}")
    if "provenance" in payload:
        raise ValueError("payload must not have its own 'provenance' key")
    text = json.dumps({**payload, "provenance": dict(provenance)}, indent=1,
                      default=_jsonable, allow_nan=True)
    return atomic_write_text(_result_path(results_dir, name), text + "\n")


def load_result(results_dir: str | os.PathLike, name: str) -> dict[str, Any]:
    """Read back what :func:`save_result` wrote (payload keys + ``"provenance"``)."""
    path = _result_path(results_dir, name)
    if not path.exists():
        raise FileNotFoundError(f"no result {name!r} in {results_dir} (run the notebook that "
                                "writes it: `bus-paper run --only NAME`)")
    return json.loads(path.read_text())


def save_table(results_dir: str | os.PathLike, name: str, table: Any,
               provenance: Mapping[str, Any]) -> Path:
    """A pandas DataFrame as ``<name>.csv`` (for people) and ``<name>.json`` (with provenance)."""
    import pandas as pd

    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"table must be a pandas DataFrame, not {type(table).__name__}")
    path = _result_path(results_dir, name)
    atomic_write_text(path.with_suffix(".csv"), table.to_csv(index=False))
    # pandas NA / NaN are not JSON; None is. The row index is not data.
    clean = table.astype(object).where(table.notna(), None)
    return save_result(results_dir, name, {"columns": [str(c) for c in clean.columns],
                                           "rows": clean.to_numpy().tolist()}, provenance)
