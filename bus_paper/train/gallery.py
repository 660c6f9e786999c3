"""`bus-paper predict --heatmaps DIR`: one readable figure per image and an offline gallery page.

Each ``DIR/<nnnnn>_<stem>_gradcam.png`` shows the image as the model saw it (padded to a square,
at the figure's resolution rather than the model's, which may be 64 px) next to the same image
with the Grad-CAM map of the malignant class on top; the title gives the file name, the
probability of malignancy and the decision at the model's threshold. ``DIR/index.html`` lists
them all with the flags and the files not predicted: one self-contained page (inline style,
relative links, nothing fetched from the network) that opens straight from the file system.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pandas as pd
import torch
from PIL import Image

from ..core.atomic import atomic_write_text

PANEL = 256  # minimum panel side in px: the model's input (64-384 px) is too small to read
DPI = 100


def panel_side(image_size: int) -> int:
    return max(PANEL, int(image_size))


def _safe_stem(path: str | Path) -> str:
    """A file-name- and URL-friendly stem; the index prefix keeps equal stems apart."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(path).stem).strip("._")[:60] or "image"


def _short(text: str, n: int = 70) -> str:
    return text if len(text) <= n else f"{text[: n // 2 - 1]}…{text[-(n // 2 - 1):]}"


def _figure(view: np.ndarray, cam: np.ndarray, title: str, dest: Path) -> None:
    """Two ``side`` x ``side`` panels, exactly at that size in pixels, and a title above."""
    from matplotlib.figure import Figure  # no pyplot: no global figure list to leak into

    from ..explain import overlay
    side, pad, top = view.shape[0], 10, 56
    w, h = 2 * side + 3 * pad, side + pad + top
    # bilinear upsampling of the map (smooth, as Grad-CAM's own upsampling to the input size)
    cam_big = np.asarray(Image.fromarray(cam.astype(np.float32))
                         .resize((side, side), Image.Resampling.BILINEAR)).clip(0, 1)
    fig = Figure(figsize=(w / DPI, h / DPI), dpi=DPI)
    panels = ((view, "image (padded to a square)"),
              (overlay(view, cam_big), "Grad-CAM, malignant class (red: most)"))
    for k, (img, sub) in enumerate(panels):
        ax = fig.add_axes(((pad + k * (side + pad)) / w, pad / h, side / w, side / h))
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255,
                  interpolation="nearest")
        ax.set_title(sub, fontsize=8, pad=3)
        ax.set_axis_off()
    fig.suptitle(title, fontsize=10, y=1 - 6 / h, va="top")
    fig.savefig(dest, dpi=DPI)


def write_gallery(out_dir: str | Path, model: torch.nn.Module, x_u8: torch.Tensor, normalizer,
                  views: Sequence[np.ndarray], df: pd.DataFrame, skipped: Sequence[tuple[str, str]],
                  model_line: str, batch_size: int = 16) -> list[str]:
    """Figures for the rows of ``df`` (path, prob_malignant, prediction, threshold, flag; in the
    order of ``x_u8`` and ``views``) and ``index.html``; returns the figure paths."""
    from ..explain import heatmaps
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cams = heatmaps(model, x_u8, normalizer, targets=1, batch_size=batch_size).cams
    written = []
    for i, (row, view, cam) in enumerate(zip(df.itertuples(index=False), views, cams, strict=True)):
        dest = out / f"{i:05d}_{_safe_stem(row.path)}_gradcam.png"
        title = (f"{_short(Path(row.path).name)}\nP(malignant) = {row.prob_malignant:.3f}: "
                 f"{row.prediction} (threshold {row.threshold:.3f})")
        _figure(view, cam, title, dest)
        written.append(str(dest))
    atomic_write_text(out / "index.html",
                      _page(df, [Path(p).name for p in written], skipped, model_line))
    return written


STYLE = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}
th{background:#f3f3f3;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
img{width:384px;height:auto;display:block}.malignant{color:#b00020;font-weight:bold}
.note{background:#fff6d6;border:1px solid #e6c200;padding:.6em;max-width:60em}
.flag{color:#8a5a00}"""


def _page(df: pd.DataFrame, figures: list[str], skipped: Sequence[tuple[str, str]],
          model_line: str) -> str:
    e = html.escape
    rows = []
    for (row, fig) in zip(df.itertuples(index=False), figures, strict=True):
        link = quote(fig)
        rows.append(
            f'<tr><td><a href="{link}"><img src="{link}" alt="{e(Path(row.path).name)}"></a></td>'
            f'<td>{e(Path(row.path).name)}<br><small>{e(str(row.path))}</small></td>'
            f'<td class="num">{row.prob_malignant:.3f}</td>'
            f'<td class="{e(row.prediction)}">{e(row.prediction)}</td>'
            f'<td class="flag">{e(row.flag or "")}</td></tr>')
    skip = "".join(f"<tr><td>{e(str(p))}</td><td>{e(r)}</td></tr>" for p, r in skipped)
    skip_html = (f"<h2>Not predicted ({len(skipped)})</h2><table><tr><th>file</th><th>reason</th>"
                 f"</tr>{skip}</table>" if skipped else "")
    threshold = f"{df['threshold'].iloc[0]:.3f}" if len(df) else "?"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>bus-paper predict: Grad-CAM gallery</title>
<style>{STYLE}</style></head><body>
<h1>Malignancy predictions with Grad-CAM heatmaps</h1>
<p>{e(model_line)}</p>
<p class="note">Research use only. This model is not a medical device, has not been validated
prospectively and was trained at reduced image resolution; do not use it for diagnosis.
A heatmap shows which regions raised the model's malignancy score, not where a lesion is.
Flagged images are far from the training images: their probabilities are even less reliable.</p>
<h2>Predicted ({len(df)}; malignant when P(malignant) &ge; {threshold})</h2>
<table><tr><th>image and heatmap</th><th>file</th><th>P(malignant)</th><th>decision</th>
<th>flags</th></tr>
{chr(10).join(rows)}
</table>
{skip_html}
</body></html>
"""
