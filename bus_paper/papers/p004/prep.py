"""Section 3.2 of paper 004 as switchable steps: noise reduction, contrast enhancement, lesion
region of interest, resizing, z-scoring, and augmentation of the training part.

Order (the paper's list, with the crop moved after the filters so that CLAHE's tiles see the whole
image): median filter -> Gaussian filter -> CLAHE -> region of interest -> resize -> z-score.
Every step has an "off" value in :class:`Prep`. The filters work at the stored resolution (BUS
images: longer side 288 px; mini-MIAS films: 512 px), so their sizes are in those pixels.

Regions of interest:

- ultrasound: a square around the lesion mask's bounding box, ``context`` times its longer side
  (at least ``min_side`` of the image side), centred on the box; outside the image the crop is
  black (the padding the whole-image pipeline uses as well);
- mini-MIAS, abnormal film: a square around the circle of Info.txt, ``context`` times its
  diameter; films with several lesions use the most severe, then the largest;
- mini-MIAS, normal film (and the four abnormal films without a location): a *comparable*
  breast-tissue square: the centre and radius of a lesion of another film (mirrored when the two
  breasts face opposite ways), redrawn until the centre falls on this film's breast, so that the
  position and size of the crops do not tell normal from abnormal. Which films are lesion
  crops is recorded (``source``) and the chapter says what this does to the task.

Cached per dataset and switch setting under ``runs/paper004/rois``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch

from ...core.atomic import atomic_path
from ...paths import runs_dir


@dataclass(frozen=True)
class Prep:
    """The switches of section 3.2 (0 / False: the step is off)."""
    median: int = 3            # median filter side (odd, px)
    gaussian: float = 1.0      # Gaussian filter sigma (px)
    clahe: float = 2.0         # CLAHE clip limit (OpenCV's units; 0: off)
    clahe_tiles: int = 8       # CLAHE tiles per side
    roi: bool = True           # crop the region of interest (False: the whole image, padded square)
    context: float = 1.5       # ROI side / lesion extent (bounding-box side or circle diameter)
    min_side: float = 0.125    # smallest ROI side, as a share of the image's longer side
    zscore: bool = True        # per-image z-score at feature extraction (False: [0, 1] scaling)
    augment_copies: int = 1    # augmented copies of every training image (rotation, flip, zoom, shift)

    def __post_init__(self) -> None:
        if self.median and (self.median < 3 or self.median % 2 == 0):
            raise ValueError(f"median filter side must be odd and >= 3 (or 0: off), got {self.median}")
        if self.gaussian < 0 or self.clahe < 0 or self.clahe_tiles < 1:
            raise ValueError("gaussian and clahe must be >= 0, clahe_tiles >= 1")
        if self.context < 1 or not 0 < self.min_side <= 1 or self.augment_copies < 0:
            raise ValueError("context must be >= 1, min_side in (0, 1], augment_copies >= 0")

    @classmethod
    def from_dict(cls, d: dict | None) -> Prep:
        return cls(**(d or {}))

    def image_part(self) -> dict:
        """The switches that change the cached crops (z-score and augmentation act later)."""
        d = dataclasses.asdict(self)
        d.pop("zscore")
        d.pop("augment_copies")
        return d


# ----------------------------------------------------------------------------- the steps
def denoise(img: np.ndarray, prep: Prep) -> np.ndarray:
    """Median, then Gaussian filter (speckle and film-grain suppression), uint8 in and out."""
    out = img
    if prep.median:
        out = cv2.medianBlur(out, prep.median)
    if prep.gaussian > 0:
        out = cv2.GaussianBlur(out, (0, 0), prep.gaussian)
    return out


def clahe(img: np.ndarray, clip: float, tiles: int = 8) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation (OpenCV), uint8 in and out."""
    if clip <= 0:
        return img
    return cv2.createCLAHE(clipLimit=float(clip), tileGridSize=(tiles, tiles)).apply(img)


def enhance(img: np.ndarray, prep: Prep) -> np.ndarray:
    """The whole-image steps: :func:`denoise` then :func:`clahe`."""
    return clahe(denoise(np.ascontiguousarray(img, dtype=np.uint8), prep), prep.clahe,
                 prep.clahe_tiles)


def crop_square(img: np.ndarray, row: float, col: float, side: float) -> np.ndarray:
    """The ``side`` x ``side`` square centred at (``row``, ``col``); zeros outside the image."""
    s = max(1, int(np.rint(side)))
    top, left = int(np.rint(row - s / 2)), int(np.rint(col - s / 2))
    out = np.zeros((s, s), dtype=img.dtype)
    r0, c0 = max(top, 0), max(left, 0)
    r1, c1 = min(top + s, img.shape[0]), min(left + s, img.shape[1])
    if r1 > r0 and c1 > c0:
        out[r0 - top:r1 - top, c0 - left:c1 - left] = img[r0:r1, c0:c1]
    return out


def resize(img: np.ndarray, size: int, mask: bool = False) -> np.ndarray:
    """Square ``img`` to ``size`` px: area averaging when shrinking, bilinear when enlarging,
    nearest for a mask."""
    if mask:
        return cv2.resize(img.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST) > 0
    inter = cv2.INTER_AREA if img.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(img, (size, size), interpolation=inter)


def whole_square(img: np.ndarray) -> tuple[float, float, float]:
    """(row, col, side) of the square that pads the whole image (the ROI switched off)."""
    h, w = img.shape
    return (h - 1) / 2 + 0.5, (w - 1) / 2 + 0.5, float(max(h, w))


def mask_box(mask: np.ndarray, prep: Prep) -> tuple[float, float, float] | None:
    """(row, col, side) of the ROI around a lesion mask; None for an empty mask."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return None
    extent = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1)
    side = max(prep.context * extent, prep.min_side * max(mask.shape))
    return (ys.min() + ys.max() + 1) / 2, (xs.min() + xs.max() + 1) / 2, float(side)


def circle_box(row: float, col: float, radius: float, shape: tuple[int, int],
               prep: Prep) -> tuple[float, float, float]:
    """(row, col, side) of the ROI around a circle (mini-MIAS lesion) in film pixels."""
    return row, col, float(max(prep.context * 2 * radius, prep.min_side * max(shape)))


def circle_mask(shape: tuple[int, int], row: float, col: float, radius: float) -> np.ndarray:
    yy, xx = np.ogrid[:shape[0], :shape[1]]
    return (yy - row + 0.5) ** 2 + (xx - col + 0.5) ** 2 <= radius ** 2


def breast_mask(img: np.ndarray) -> np.ndarray:
    """The breast on a mammogram: Otsu threshold of the smoothed film, largest component (the
    burnt-in labels and markers are small bright islands)."""
    blur = cv2.GaussianBlur(img, (0, 0), 2.0)
    _, fg = cv2.threshold(blur, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    n, lab, stats, _ = cv2.connectedComponentsWithStats(fg.astype(np.uint8), connectivity=8)
    if n <= 1:
        return np.ones_like(img, dtype=bool)
    big = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return lab == big


def chest_side(breast: np.ndarray) -> str:
    """Which edge the chest wall is on: the side holding more breast pixels."""
    half = breast.shape[1] // 2
    return "left" if breast[:, :half].sum() >= breast[:, half:].sum() else "right"


def tissue_site(breast: np.ndarray, side_of_chest: str, donors: pd.DataFrame,
                rng: np.random.Generator, tries: int = 50) -> tuple[float, float, float]:
    """(row, col, radius) of a lesion-like site on this film's breast, in film pixels.

    ``donors``: located lesions of other films (``row, col, radius, chest`` in the same pixel
    units): one is drawn, mirrored when its chest wall is on the other side, until its centre lies
    on the breast; after ``tries`` draws, a random breast pixel with a donor's radius.
    """
    h, w = breast.shape
    if len(donors) == 0:
        ys, xs = np.nonzero(breast)
        i = rng.integers(len(ys))
        return float(ys[i]), float(xs[i]), 0.05 * max(h, w)
    for _ in range(tries):
        d = donors.iloc[int(rng.integers(len(donors)))]
        col = d["col"] if d["chest"] == side_of_chest else (w - 1) - d["col"]
        r, c = int(np.rint(d["row"])), int(np.rint(col))
        if 0 <= r < h and 0 <= c < w and breast[r, c]:
            return float(d["row"]), float(col), float(d["radius"])
    ys, xs = np.nonzero(breast)
    i = rng.integers(len(ys))
    return float(ys[i]), float(xs[i]), float(donors.iloc[int(rng.integers(len(donors)))]["radius"])


# ----------------------------------------------------------------------------- augmentation
def augmenter():
    """The paper's training augmentation (rotation, flipping, zooming, shifting) as kornia ops on
    ``[B, 1, S, S]`` floats in [0, 1]: h-flip p=0.5, rotation U(-20, 20) deg, zoom x[0.9, 1.15],
    shift up to 8 % (strengths ours; the paper gives none). No vertical flip: ultrasound has a
    direction (depth), and acoustic shadows fall downwards."""
    import kornia.augmentation as K
    return torch.nn.Sequential(K.RandomHorizontalFlip(p=0.5),
                               K.RandomAffine(20.0, translate=(0.08, 0.08), scale=(0.9, 1.15), p=1.0))


def augmented_copies(images_u8: np.ndarray, copies: int, seed: int = 0,
                     batch: int = 256) -> np.ndarray:
    """``copies`` augmented versions of every image: uint8 ``[copies, N, S, S]``, deterministic."""
    aug = augmenter()
    x = torch.from_numpy(np.asarray(images_u8, dtype=np.uint8)).unsqueeze(1)
    out = np.zeros((copies, *images_u8.shape), dtype=np.uint8)
    for c in range(copies):
        torch.manual_seed(1_000_003 * (seed + 1) + c)
        for i in range(0, len(x), batch):
            v = aug(x[i:i + batch].float() / 255.0).clamp(0, 1)
            out[c, i:i + batch] = (v[:, 0] * 255).round().to(torch.uint8).numpy()
    return out


class ImageZ:
    """Per-image z-score of a float batch ``[B, 1, S, S]`` in [0, 1] (the paper's "Z-score
    normalization"), or the identity (``[0, 1]`` scaling) when ``enabled`` is False. Callable like
    :class:`~bus_paper.data.preprocess.Normalizer`, so Grad-CAM can use it."""

    def __init__(self, enabled: bool = True, eps: float = 1e-3):
        self.enabled, self.eps = enabled, eps

    def __call__(self, x):
        if getattr(x, "dtype", None) is not None and str(x.dtype).endswith("uint8"):
            x = x / 255.0
        if not self.enabled:
            return x
        dims = tuple(range(1, x.ndim))
        if isinstance(x, np.ndarray):
            mean, std = x.mean(axis=dims, keepdims=True), x.std(axis=dims, ddof=1, keepdims=True)
        else:
            mean, std = x.mean(dim=dims, keepdim=True), x.std(dim=dims, keepdim=True)
        return (x - mean) / (std + self.eps)


# ----------------------------------------------------------------------------- ROI sets
@dataclass
class RoiSet:
    """Preprocessed regions of interest of one data set, in manifest order."""
    dataset: str
    frame: pd.DataFrame          # manifest rows (+ ``source``, ``row``, ``col``, ``side``)
    images: np.ndarray           # uint8 [N, S, S]
    masks: np.ndarray            # bool [N, S, S]: lesion outline in the crop (mask or circle)
    key: str

    def __len__(self) -> int:
        return len(self.images)

    @property
    def paths(self) -> list[str]:
        return list(self.frame["path"])


def _us_rows(frame: pd.DataFrame, root: Path, prep: Prep, size: int):
    from ...data.imageio import read_image, read_mask
    for row in frame.itertuples(index=False):
        img = read_image(root / row.path)
        parts = [root / p for p in str(row.mask_paths).split(";") if p and p != "nan"]
        mask = read_mask(parts, img.shape)
        box = mask_box(mask, prep) if prep.roi else None
        source = "lesion mask" if box is not None else ("whole image" if not prep.roi else
                                                        "whole image (empty mask)")
        r, c, s = box if box is not None else whole_square(img)
        crop = crop_square(enhance(img, prep), r, c, s)
        yield (resize(crop, size), resize(crop_square(mask.astype(np.uint8), r, c, s), size, True),
               source, r, c, s)


def _mias_rows(frame: pd.DataFrame, root: Path, prep: Prep, size: int, seed: int = 0):
    from ...data.imageio import read_image
    from .mias import ORIGINAL_SIDE, read_lesions
    lesions = read_lesions(root)
    films = {p: read_image(root / p) for p in frame["path"]}
    breasts = {p: breast_mask(im) for p, im in films.items()}
    chests = {p: chest_side(b) for p, b in breasts.items()}
    loc = lesions[lesions["located"]].copy()
    scale = {p: im.shape[0] / ORIGINAL_SIDE for p, im in films.items()}
    loc = loc[loc["path"].isin(films)]
    loc["row"] = [(ORIGINAL_SIDE - y) * scale[p] for y, p in zip(loc["y"], loc["path"])]
    loc["col"] = [x * scale[p] for x, p in zip(loc["x"], loc["path"])]
    loc["rad"] = [r * scale[p] for r, p in zip(loc["radius"], loc["path"])]
    loc["chest"] = loc["path"].map(chests)
    loc["rank"] = loc["severity"].map({"M": 0, "B": 1})
    for row in frame.itertuples(index=False):
        img = films[row.path]
        mine = loc[loc["path"] == row.path].sort_values(["rank", "rad"], ascending=[True, False])
        if len(mine):
            le = mine.iloc[0]
            r, c, rad, source = le["row"], le["col"], le["rad"], "lesion circle"
        else:
            donors = loc[loc["path"] != row.path][["row", "col", "rad", "chest"]].rename(
                columns={"rad": "radius"})
            rng = np.random.default_rng([seed, int(Path(row.path).stem[3:])])
            r, c, rad = tissue_site(breasts[row.path], chests[row.path], donors, rng)
            source = "tissue" if row.label == "normal" else "tissue (no location given)"
        if prep.roi:
            _, _, s = circle_box(r, c, rad, img.shape, prep)
        else:
            r, c, s = whole_square(img)
        crop = crop_square(enhance(img, prep), r, c, s)
        circle = circle_mask(img.shape, le["row"], le["col"], le["rad"]) if len(mine) else \
            np.zeros(img.shape, bool)
        for other in mine.iloc[1:].itertuples():   # every listed lesion on the outline
            circle |= circle_mask(img.shape, other.row, other.col, other.rad)
        yield (resize(crop, size), resize(crop_square(circle.astype(np.uint8), r, c, s), size, True),
               source, r, c, s)


def dataset_frame(dataset: str, root: Path) -> pd.DataFrame:
    """Manifest rows of ``dataset`` (mini-MIAS through :mod:`bus_paper.papers.p004.mias`)."""
    if dataset == "mias":
        from .mias import mias_manifest
        return mias_manifest(root)
    from ...data.manifest import build_manifest
    return build_manifest(root, [dataset]).frame


def roi_set(dataset: str, root: str | Path, prep: Prep, size: int,
            frame: pd.DataFrame | None = None) -> RoiSet:
    """The preprocessed ROIs of every image of ``dataset`` (or of ``frame``'s rows), cached."""
    from ...core.runs import recipe_key
    from ...data.checksum import dataset_checksum
    root = Path(root)
    frame = (dataset_frame(dataset, root) if frame is None else frame).reset_index(drop=True)
    key = recipe_key("paper004-roi", dataset=dataset, checksum=dataset_checksum(root, dataset),
                     prep=prep.image_part(), size=size, paths=list(frame["path"]))
    file = runs_dir() / "paper004" / "rois" / f"{dataset}-{key}.npz"
    if file.exists():
        with np.load(file, allow_pickle=False) as z:
            extra = pd.DataFrame({"source": z["source"], "row": z["box"][:, 0],
                                  "col": z["box"][:, 1], "side": z["box"][:, 2]})
            return RoiSet(dataset, pd.concat([frame, extra], axis=1), z["images"], z["masks"], key)
    rows = (_mias_rows if dataset == "mias" else _us_rows)(frame, root, prep, size)
    images, masks, source, box = [], [], [], []
    for img, mask, src, r, c, s in rows:
        images.append(img)
        masks.append(mask)
        source.append(src)
        box.append((r, c, s))
    images = np.stack(images).astype(np.uint8)
    masks = np.stack(masks).astype(bool)
    box = np.asarray(box, dtype=np.float64)
    file.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(file) as tmp, open(tmp, "wb") as fh:   # a file object: no ".npz" appended
        np.savez_compressed(fh, images=images, masks=masks, source=np.array(source), box=box)
    extra = pd.DataFrame({"source": source, "row": box[:, 0], "col": box[:, 1], "side": box[:, 2]})
    return RoiSet(dataset, pd.concat([frame, extra], axis=1), images, masks, key)


def tissue_pool(root: str | Path, paths: list[str], prep: Prep, size: int, per_film: int,
                seed: int = 0) -> np.ndarray:
    """Unlabelled pretraining crops of mini-MIAS films: ``per_film`` lesion-sized squares at random
    breast sites of each film in ``paths`` (no label and no lesion location of the film itself is
    read; sizes and sites come from the other films' lesion list, as for normal films).
    uint8 ``[len(paths) * per_film, S, S]``."""
    from ...data.imageio import read_image
    from .mias import ORIGINAL_SIDE, read_lesions
    root = Path(root)
    lesions = read_lesions(root)
    loc = lesions[lesions["located"]]
    out = []
    for p in paths:
        img = read_image(root / p)
        s = img.shape[0] / ORIGINAL_SIDE
        breast = breast_mask(img)
        chest = chest_side(breast)
        donors = pd.DataFrame({"row": (ORIGINAL_SIDE - loc["y"]) * s, "col": loc["x"] * s,
                               "radius": loc["radius"] * s, "chest": chest})[loc["path"] != p]
        # donors' chest side is unknown without reading their films; mirror-free draws suffice
        # for pretraining crops (any breast site will do)
        big = enhance(img, prep)
        rng = np.random.default_rng([seed, 7, int(Path(p).stem[3:])])
        for _ in range(per_film):
            r, c, rad = tissue_site(breast, chest, donors, rng)
            _, _, side = circle_box(r, c, rad, img.shape, prep)
            out.append(resize(crop_square(big, r, c, side), size))
    return np.stack(out).astype(np.uint8)
