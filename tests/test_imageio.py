"""Every PNG mode becomes uint8 (H, W) gray; broken files raise ImageReadError naming the file."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from bus_paper.data.imageio import (
    ImageReadError,
    mask_colour_label,
    probe_image,
    read_image,
    read_mask,
)

GRAY = (np.arange(12 * 10, dtype=np.uint16).reshape(12, 10) * 2).astype(np.uint8)


def _save(tmp_path, arr, name="x.png", mode=None):
    p = tmp_path / name
    im = Image.fromarray(arr)
    (im.convert(mode) if mode else im).save(p)
    return p


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "LA"])
def test_gray_content_survives_colour_modes(tmp_path, mode):
    p = _save(tmp_path, GRAY, mode=mode)
    assert Image.open(p).mode == mode
    out = read_image(p)
    assert out.dtype == np.uint8 and out.shape == GRAY.shape
    np.testing.assert_array_equal(out, GRAY)


def test_palette_image_uses_its_palette(tmp_path):
    inverted = Image.fromarray(GRAY, mode="P")
    inverted.putpalette([v for i in range(256) for v in (255 - i,) * 3])
    inverted.save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_image(tmp_path / "p.png"), 255 - GRAY)


def test_bilevel_image(tmp_path):
    p = _save(tmp_path, GRAY > 100, mode="1")
    np.testing.assert_array_equal(read_image(p), np.where(GRAY > 100, 255, 0))


def test_16bit_is_rescaled_not_clipped(tmp_path):
    a = np.array([[0, 1000, 30000, 65535]], dtype=np.uint16)
    p = _save(tmp_path, a)
    assert Image.open(p).mode.startswith("I;16")
    np.testing.assert_array_equal(read_image(p), [[0, 4, 117, 255]])  # round(x * 255 / 65535)


def test_32bit_int_and_float_modes():
    from bus_paper.data.imageio import to_gray8
    small = Image.fromarray(np.array([[0, 17, 255]], dtype=np.int32), mode="I")
    np.testing.assert_array_equal(to_gray8(small), [[0, 17, 255]])           # 8-bit content
    wide = Image.fromarray(np.array([[0, 257, 65535]], dtype=np.int32), mode="I")
    np.testing.assert_array_equal(to_gray8(wide), [[0, 1, 255]])             # 16-bit content
    f = Image.fromarray(np.array([[-1.0, 0.0, 1.0]], dtype=np.float32), mode="F")
    np.testing.assert_array_equal(to_gray8(f), [[0, 128, 255]])              # min-max
    flat = Image.fromarray(np.full((2, 2), 3.5, dtype=np.float32), mode="F")
    np.testing.assert_array_equal(to_gray8(flat), np.zeros((2, 2)))


@settings(max_examples=25, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(1, 12), st.integers(1, 12))))
def test_every_encoding_of_a_gray_image_reads_back_identical(tmp_path_factory, a):
    d = tmp_path_factory.mktemp("h")
    pal = Image.fromarray(a, mode="P")
    pal.putpalette([v for i in range(256) for v in (i, i, i)])
    pal.save(d / "p.png")
    paths = [_save(d, a, "l.png"), _save(d, a, "rgb.png", "RGB"), _save(d, a, "rgba.png", "RGBA"),
             _save(d, a.astype(np.uint16) * 257, "i16.png"), d / "p.png"]
    for p in paths:
        np.testing.assert_array_equal(read_image(p), a, err_msg=p.name)


def test_truncated_png_raises_with_file_name(tmp_path):
    p = _save(tmp_path, np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8),
              "cut.png")
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    for fn in (read_image, probe_image):
        with pytest.raises(ImageReadError, match="cut.png") as e:
            fn(p)
        assert e.value.reason and e.value.path == p


def test_non_image_and_missing_file_raise(tmp_path):
    p = tmp_path / "fake.png"
    p.write_text("hello")
    with pytest.raises(ImageReadError, match="fake.png.*unreadable"):
        read_image(p)
    with pytest.raises(ImageReadError, match="absent.png"):
        read_image(tmp_path / "absent.png")


def test_probe_reports_size_and_mode_without_converting(tmp_path):
    p = _save(tmp_path, GRAY, mode="RGB")
    assert probe_image(p) == (10, 12, "RGB")


def test_read_mask_union_resize_and_modes(tmp_path):
    a = np.zeros((8, 8), bool)
    a[1:3, 1:3] = True
    b = np.zeros((8, 8), bool)
    b[5:7, 5:7] = True
    pa = _save(tmp_path, a, "a.png", "1")
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[b] = (0, 255, 0)
    pb = _save(tmp_path, rgb, "b.png")
    m = read_mask([pa, pb], (8, 8))
    assert m.dtype == bool
    np.testing.assert_array_equal(m, a | b)
    # a mask of another size is resized nearest-neighbour to the requested shape
    big = _save(tmp_path, np.kron(a, np.ones((2, 2), bool)).astype(np.uint8) * 255, "big.png")
    np.testing.assert_array_equal(read_mask([big], (8, 8)), a)
    # a 16-bit label mask holding 1s is foreground, not rescaled away
    p16 = _save(tmp_path, a.astype(np.uint16), "m16.png")
    np.testing.assert_array_equal(read_mask([p16]), a)
    np.testing.assert_array_equal(read_mask([], (3, 4)), np.zeros((3, 4), bool))


def test_read_mask_argument_checks(tmp_path):
    with pytest.raises(ValueError, match="at least one path or a shape"):
        read_mask([])
    with pytest.raises(ValueError, match="shape"):
        read_mask([], (0, 4))


@pytest.mark.parametrize("colour, expected", [((0, 255, 0), "benign"), ((255, 0, 0), "malignant"),
                                              (None, "normal")])
def test_mask_colour_label(tmp_path, colour, expected):
    a = np.zeros((6, 6, 3), np.uint8)
    if colour:
        a[2:4, 2:4] = colour
    assert mask_colour_label(_save(tmp_path, a)) == expected


def test_mask_colour_label_mixed_and_gray(tmp_path):
    a = np.zeros((6, 6, 3), np.uint8)
    a[0, 0], a[5, 5] = (255, 0, 0), (0, 255, 0)
    assert mask_colour_label(_save(tmp_path, a, "mixed.png")) == "mixed"
    assert mask_colour_label(_save(tmp_path, GRAY, "gray.png")) is None
