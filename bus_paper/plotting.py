"""One figure style for the whole book: PNG at ~100 dpi, so executed notebooks stay small.

Notebooks call :func:`setup` once; :func:`save_figure` writes the PNG a chapter shows as a result
file too, with its provenance beside it (``<name>.json``) and inside the PNG's text chunk.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .provenance import atomic_write_bytes, save_result

DPI = 100  # enough for a web page; at 300 dpi a chapter with a dozen figures is tens of MB


def setup(dpi: int = DPI) -> None:
    """Matplotlib defaults for the book: modest DPI, PNG only (no SVG/PDF copies in notebooks)."""
    import matplotlib as mpl

    if not 30 <= dpi <= 300:
        raise ValueError(f"dpi {dpi} is outside 30..300")
    mpl.rcParams.update({
        "figure.dpi": dpi,
        "savefig.dpi": dpi,
        "savefig.bbox": "tight",
        "figure.figsize": (6.4, 4.0),
        "axes.spines.top": False,
        "axes.spines.right": False,
        "image.cmap": "gray",
    })
    try:  # inside IPython: the inline backend emits PNG only
        from matplotlib_inline.backend_inline import set_matplotlib_formats
        set_matplotlib_formats("png")
    except ImportError:  # plain python (tests, scripts): nothing to configure
        pass


def save_figure(results_dir: str | os.PathLike, name: str, fig: Any,
                provenance: Mapping[str, Any], data: Mapping[str, Any] | None = None) -> Path:
    """Save ``fig`` as ``<results_dir>/<name>.png`` plus ``<name>.json`` (``data`` + provenance).

    ``data`` should hold the numbers the figure draws, so the figure can be redrawn without
    re-running the notebook. Returns the PNG path.
    """
    if not hasattr(fig, "savefig"):
        raise TypeError(f"fig must be a matplotlib Figure, not {type(fig).__name__}")
    meta = save_result(results_dir, name, {"figure": f"{name}.png", "data": dict(data or {})},
                       provenance)
    buf = io.BytesIO()  # rendered in memory, then written at once: no half-written PNG
    fig.savefig(buf, format="png",
                metadata={"Software": "bus-paper", "Comment": json.dumps(dict(provenance),
                                                                        default=str)})
    return atomic_write_bytes(meta.with_suffix(".png"), buf.getvalue())
