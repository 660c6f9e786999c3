"""Pad-to-square + resize, the decoded-image cache, z-score statistics and the Normalizer."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bus_paper.data import preprocess
from bus_paper.data.preprocess import (
    Normalizer,
    load_images,
    pad_to_square,
    square_resize,
    zscore_stats,
)


def test_pad_to_square_centres_and_keeps_pixels():
    img = np.arange(1, 2 * 5 + 1, dtype=np.uint8).reshape(2, 5)
    sq = pad_to_square(img)
    assert sq.shape == (5, 5) and sq.dtype == np.uint8
    np.testing.assert_array_equal(sq[1:3], img)            # (5 - 2) // 2 = 1 row above
    assert sq[[0, 3, 4]].sum() == 0
    tall = pad_to_square(np.ones((6, 3), np.uint8))
    assert tall.shape == (6, 6) and tall[:, 1:4].all() and not tall[:, [0, 4, 5]].any()
    square = np.ones((4, 4), np.uint8)
    np.testing.assert_array_equal(pad_to_square(square), square)
    with pytest.raises(ValueError, match="2-D"):
        pad_to_square(np.zeros((2, 2, 3), np.uint8))


def test_square_resize_image_and_mask():
    img = np.full((40, 80), 200, np.uint8)                  # wide: padded top and bottom
    out = square_resize(img, 32)
    assert out.shape == (32, 32) and out.dtype == np.uint8
    assert out[0].max() == 0 and out[-1].max() == 0 and out[16, 16] == 200
    mask = np.zeros((40, 80), bool)
    mask[10:30, 20:60] = True
    m = square_resize(mask, 32, mask=True)
    assert m.dtype == bool and set(np.unique(m)) == {False, True}
    assert abs(m.mean() - mask.sum() / 80**2) < 0.02       # area fraction of the padded square


@pytest.fixture()
def image_root(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for ds, n in (("busi", 3), ("udiat", 2)):
        for i in range(n):
            h, w = rng.integers(30, 60, size=2)
            rel = f"{ds}/img{i}.png"
            mrel = f"{ds}/img{i}_mask.png"
            (tmp_path / ds).mkdir(exist_ok=True)
            Image.fromarray(rng.integers(1, 256, (h, w), dtype=np.uint8)).save(tmp_path / rel)
            mask = np.zeros((h, w), np.uint8)
            mask[h // 4: h // 2, w // 4: w // 2] = 255
            Image.fromarray(mask).save(tmp_path / mrel)
            rows.append({"dataset": ds, "path": rel, "mask_paths": mrel if i else ""})
    return tmp_path, pd.DataFrame(rows)


def test_load_images_order_values_and_cache(image_root, monkeypatch, tmp_path):
    root, rows = image_root
    monkeypatch.setenv("BUS_PAPER_CACHE", str(tmp_path / "cache"))
    rows = rows.sample(frac=1, random_state=3)                 # any order in, same order out
    first = load_images(rows, root, 24, with_masks=True)
    assert first.paths == list(rows.path) and len(first) == 5
    assert first.images.shape == (5, 24, 24) and first.images.dtype == np.uint8
    assert first.masks.shape == (5, 24, 24) and first.masks.dtype == bool
    for k, path in enumerate(first.paths):
        expect = square_resize(np.asarray(Image.open(root / path)), 24)
        np.testing.assert_array_equal(first.images[k], expect)
    no_mask = rows.path.map(dict(zip(rows.path, rows.mask_paths))) == ""
    assert not first.masks[no_mask.to_numpy()].any() and first.masks[~no_mask.to_numpy()].any()
    assert len(list((tmp_path / "cache" / "images").glob("*.npz"))) == 2   # one per dataset

    def fail(*args, **kwargs):
        raise AssertionError("decoded although cached")
    monkeypatch.setattr(preprocess, "read_image", fail)
    again = load_images(rows.iloc[::-1], root, 24, with_masks=True)
    assert again.paths == list(rows.path[::-1])
    np.testing.assert_array_equal(again.images, first.images[::-1])
    np.testing.assert_array_equal(again.masks, first.masks[::-1])
    subset = load_images(rows.iloc[[3, 0]], root, 24)        # a split: served from the same file
    np.testing.assert_array_equal(subset.images, first.images[[3, 0]])
    assert subset.masks is None

    # another size, or an edited file, is a cache miss
    with pytest.raises(AssertionError, match="decoded"):
        load_images(rows, root, 16)
    target = root / rows.path.iloc[0]
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(AssertionError, match="decoded"):
        load_images(rows, root, 24, with_masks=True)


def test_load_images_argument_checks(image_root):
    root, rows = image_root
    with pytest.raises(ValueError, match="mask_paths"):
        load_images(rows.drop(columns="mask_paths"), root, 24, with_masks=True)
    with pytest.raises(ValueError, match="repeat"):
        load_images(pd.concat([rows, rows.iloc[:1]]), root, 24)
    with pytest.raises(ValueError, match="size"):
        load_images(rows, root, 0)


def test_zscore_stats_and_normalizer():
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, (7, 13, 11), dtype=np.uint8)
    mean, std = zscore_stats(imgs)
    f = imgs.astype(np.float64) / 255
    assert mean == pytest.approx(f.mean()) and std == pytest.approx(f.std())
    norm = Normalizer.fit(imgs)
    z = norm(imgs)
    assert z.mean() == pytest.approx(0, abs=1e-9) and z.std() == pytest.approx(1)
    np.testing.assert_allclose(norm(f), z)                  # uint8 and [0, 1] floats agree
    assert Normalizer.from_dict(norm.to_dict()) == norm
    with pytest.raises(ValueError, match="std"):
        Normalizer.fit(np.full((2, 4, 4), 7, np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        zscore_stats(f)
