"""The phantom generator: deterministic, faithful to the layouts, benign vs malignant learnable."""

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score

from bus_paper.data.imageio import mask_colour_label, read_image, read_mask
from bus_paper.data.manifest import build_manifest
from bus_paper.data.phantom import write_phantom_root


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    a = _files(write_phantom_root(tmp_path / "a", n_per_class=3, size=48, seed=5))
    b = _files(write_phantom_root(tmp_path / "b", n_per_class=3, size=48, seed=5))
    c = _files(write_phantom_root(tmp_path / "c", n_per_class=3, size=48, seed=6))
    assert a == b  # every file, the xlsx included
    pngs = [k for k in a if k.endswith(".png") and k in c]
    assert sum(a[k] != c[k] for k in pngs) > len(pngs) // 2


def test_argument_checks(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        write_phantom_root(tmp_path / "full")
    with pytest.raises(ValueError, match="n_per_class"):
        write_phantom_root(tmp_path / "n", n_per_class=2)
    with pytest.raises(ValueError, match="size"):
        write_phantom_root(tmp_path / "s", size=16)


def test_layout_details(phantom_root):
    busi = phantom_root / "busi/Dataset_BUSI_with_GT/benign"
    assert (busi / "benign (1)_mask_1.png").exists()           # a two-lesion image, as in BUSI
    raw = (phantom_root / "busuclm/BUS-UCLM/INFO.csv").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf") and b";" in raw.splitlines()[0]
    assert {p.stat().st_size > 0 for p in phantom_root.rglob("*.png")} == {True}
    assert max(Image.open(p).size[0] for p in busi.glob("*).png")) == 96  # longer side = size


def test_masks_are_exact_hypoechoic_regions(phantom_root):
    res = build_manifest(phantom_root)
    f = res.frame
    assert res.issues == []
    for row in f.itertuples():
        img = read_image(phantom_root / row.path)
        mask = read_mask([phantom_root / m for m in row.mask_paths.split(";")], img.shape)
        if row.label == "normal":
            assert not mask.any()
            continue
        assert mask.any() and img[mask].mean() < 0.75 * img[~mask].mean(), row.path
    uclm = f[f.dataset == "busuclm"]
    for row in uclm.itertuples():
        assert mask_colour_label(phantom_root / row.mask_paths) == row.label


def _compactness(mask):
    """4 pi area / perimeter^2: 1 for a disc, small for spiculated outlines."""
    perimeter = (mask & ~ndimage.binary_erosion(mask)).sum()
    return 4 * np.pi * mask.sum() / perimeter ** 2


def test_malignant_outlines_are_irregular(phantom_root):
    f = build_manifest(phantom_root).frame
    lesion = f[f.label != "normal"]
    comp = {lab: [] for lab in ("benign", "malignant")}
    for row in lesion.itertuples():
        m = read_mask([phantom_root / row.mask_paths.split(";")[0]])
        comp[row.label].append(_compactness(m))
    assert max(comp["malignant"]) < min(comp["benign"])


def test_a_linear_classifier_learns_benign_vs_malignant(tmp_path):
    root = write_phantom_root(tmp_path / "d", n_per_class=12, size=64, seed=3)
    f = build_manifest(root).frame
    f = f[f.label != "normal"]
    x = np.stack([np.asarray(Image.fromarray(read_image(root / p)).resize((16, 16)), float).ravel()
                  for p in f.path]) / 255
    y = (f.label == "malignant").to_numpy()
    acc = cross_val_score(LogisticRegression(max_iter=2000), x, y, cv=5).mean()
    assert acc > 0.85, acc
