"""Shared fixtures: a synthetic data root in the original layouts, and a deliberately broken copy.

Both are session-scoped and must be treated as read-only; a test that needs to change files
copies the root first (see ``copy_root``).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openpyxl
import pytest
from PIL import Image

from bus_paper.data.phantom import write_phantom_root


def pytest_configure(config):
    """Under pytest-xdist (``make test`` runs ``-n auto``) each worker, and every process it starts
    (papermill kernels, torchrun), computes on one thread: two workers on a 2-core machine then
    share the cores instead of four OpenMP threads spinning against each other, which is far
    slower than running the tests one after another."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
        import torch
        torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Keep tests out of the developer's cache and runs folders (unless a test sets its own)."""
    keys = ("BUS_PAPER_CACHE", "BUS_PAPER_RUNS")
    old = {k: os.environ.get(k) for k in keys}
    for k in keys:
        os.environ[k] = str(tmp_path_factory.mktemp(k.lower()))
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def phantom_root(tmp_path_factory) -> Path:
    """A complete phantom data root: 8 images per label and dataset, longer side 96 px."""
    return write_phantom_root(tmp_path_factory.mktemp("phantom") / "data", n_per_class=8,
                              size=96, seed=0)


def copy_root(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@dataclass(frozen=True)
class BrokenRoot:
    """A phantom copy with one injected fault of each kind; fields are paths relative to root."""
    root: Path
    truncated: str             # PNG cut in half                      -> unreadable, excluded
    not_an_image: str          # text file named .png                 -> unreadable, excluded
    rgba: str                  # RGBA image                           -> converted_mode
    palette: str               # palette (P) image with a gray palette -> converted_mode
    sixteen_bit: str           # 16-bit (I;16) image, values x 257    -> converted_mode
    mask_other_size: str       # image whose mask has another size    -> mask_size_mismatch
    wrong_colour: str          # BUS-UCLM benign image with a red mask -> label_conflict
    rows_without_image: tuple[str, ...]   # metadata rows (csv, INFO.csv, xlsx) -> missing_image
    images_without_row: tuple[str, ...]   # images without metadata  -> no_metadata, excluded


def _first(root: Path, pattern: str) -> Path:
    return sorted(root.glob(pattern))[0]


@pytest.fixture(scope="session")
def broken_root(phantom_root, tmp_path_factory) -> BrokenRoot:
    root = copy_root(phantom_root, tmp_path_factory.mktemp("broken") / "data")
    rel = lambda p: p.relative_to(root).as_posix()
    busi = root / "busi" / "Dataset_BUSI_with_GT"
    udiat = root / "udiat" / "BUS"
    bra = root / "busbra" / "BUSBRA"
    uclm = root / "busuclm" / "BUS-UCLM"

    truncated = busi / "benign" / "benign (2).png"
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    not_an_image = busi / "malignant" / "malignant (2).png"
    not_an_image.write_text("this is not an image\n")

    rgba = _first(udiat, "original/*.png")
    Image.open(rgba).convert("RGBA").save(rgba)
    palette = _first(bra, "Images/*.png")
    gray = np.asarray(Image.open(palette))
    p = Image.fromarray(gray, mode="P")
    p.putpalette([v for i in range(256) for v in (i, i, i)])
    p.save(palette)
    sixteen = _first(uclm, "images/*.png")
    Image.fromarray(np.asarray(Image.open(sixteen)).astype(np.uint16) * 257).save(sixteen)

    other_size = sorted(bra.glob("Images/*.png"))[1]
    mask = bra / "Masks" / other_size.name.replace("bus_", "mask_")
    m = Image.open(mask)
    m.resize((m.width + 7, m.height + 3), Image.NEAREST).save(mask)

    # a benign BUS-UCLM image whose mask is painted red (malignant)
    info = (uclm / "INFO.csv").read_text(encoding="utf-8-sig").splitlines()
    benign = next(line.split(";")[0] for line in info[1:] if ";Benign;" in line)
    cmask = uclm / "masks" / benign
    a = np.asarray(Image.open(cmask)).copy()
    a[a[..., 1] > 0] = (255, 0, 0)
    Image.fromarray(a).save(cmask)

    # metadata rows without image
    with open(bra / "bus_data.csv", "a") as fh:
        fh.write('bus_0999-s,999,fibroadenoma,benign,3,GE Logiq 7 @10-14MHz,70,96,single,'
                 '"[1,1,5,5]"\n')
    (uclm / "INFO.csv").write_bytes(
        ("\n".join(info + ["ZZZZ_000.png;856x606;Benign;No;No;No"]) + "\n").encode("utf-8-sig"))
    wb = openpyxl.load_workbook(udiat / "DatasetB.xlsx")
    wb["Hoja1"].append(["000999", "Malignant", "IDC"])
    wb.save(udiat / "DatasetB.xlsx")
    rows_without_image = ("busbra/BUSBRA/Images/bus_0999-s.png",
                          "busuclm/BUS-UCLM/images/ZZZZ_000.png", "udiat/BUS/original/000999.png")

    # images without metadata rows
    extra = [(_first(bra, "Images/*-s.png"), bra / "Images" / "bus_0998-s.png"),
             (_first(uclm, "images/*.png"), uclm / "images" / "ZZZY_000.png"),
             (_first(udiat, "original/*.png"), udiat / "original" / "000998.png")]
    for src, dst in extra:
        shutil.copy(src, dst)

    return BrokenRoot(root=root, truncated=rel(truncated), not_an_image=rel(not_an_image),
                      rgba=rel(rgba), palette=rel(palette), sixteen_bit=rel(sixteen),
                      mask_other_size=rel(other_size), wrong_colour=rel(uclm / "images" / benign),
                      rows_without_image=rows_without_image,
                      images_without_row=tuple(rel(d) for _, d in extra))
