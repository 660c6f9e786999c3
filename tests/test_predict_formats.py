"""Issue 19 item 4: `bus-paper predict` for a clinician-researcher. It reads the formats images come
in (PNG, JPEG, BMP, 16-bit and float TIFF, colour, DICOM: MONOCHROME1/2, rescaled, windowed,
colour, suffix-less), refuses multi-frame and undecodable files with a reason and never stops on
one, flags images unlike the training set, and `--heatmaps` writes readable side-by-side figures
and an offline gallery page (checked in headless Chromium too)."""

from __future__ import annotations

import html.parser
import os
import types
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pandas as pd
import pydicom
import pytest
import torch
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless, generate_uid

from bus_paper.cli import main
from bus_paper.data.imageio_any import read_any
from bus_paper.data.preprocess import Normalizer
from bus_paper.train.predict import image_flags

US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"  # Ultrasound Image Storage
NORM = Normalizer(0.33, 0.22)  # about BUSI's: the smoke model's checkpoint carries it


# ------------------------------------------------------------------------------ inputs
def _texture(shape=(120, 160), lo=20, hi=200, seed=0) -> np.ndarray:
    """An ultrasound-like image: smooth blobs plus speckle, in [lo, hi]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    a = np.sin(yy / 9.0) * np.cos(xx / 13.0) + 0.5 * rng.random(shape)
    return lo + (a - a.min()) / (a.max() - a.min()) * (hi - lo)


def _dicom(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2",
           syntax=ExplicitVRLittleEndian, frames: int = 1, **tags) -> Path:
    """A DICOM file as a scanner's export would be: file meta, Part 10 preamble, native pixels
    (``pixels`` [rows, cols], [rows, cols, 3] or, with ``frames`` > 1, [frames, rows, cols])."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = US_IMAGE, generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = US_IMAGE, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientName = "US", "Phantom^Test"
    colour = pixels.ndim == 3 and frames == 1
    ds.Rows, ds.Columns = pixels.shape[:2] if colour else pixels.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = (3 if colour else 1), photometric
    if colour:
        ds.PlanarConfiguration = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    bits = pixels.dtype.itemsize * 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    ds.PixelData = pixels.tobytes()
    for k, v in tags.items():
        setattr(ds, k, v)
    ds.save_as(path, enforce_file_format=True)
    return path


def _jpegls_dicom(path: Path) -> Path:
    """A JPEG-LS compressed DICOM: pydicom needs a plugin (not installed) to decode it."""
    from pydicom.encaps import encapsulate
    p = _dicom(path, np.zeros((8, 8), np.uint8))
    ds = pydicom.dcmread(p)
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xf7" + bytes(32) + b"\xff\xd9"])
    ds["PixelData"].VR = "OB"
    ds.save_as(p, enforce_file_format=True)
    return p


def _save(path: Path, a: np.ndarray, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path, **kw)
    return path


def make_folder(d: Path) -> tuple[set[str], dict[str, str]]:
    """Every kind of input in one folder: (names to be predicted, {name to skip: reason word})."""
    g = _texture().astype(np.uint8)
    _save(d / "gray.png", g)
    _save(d / "photo.jpg", g, quality=90)
    _save(d / "scan.bmp", g)
    _save(d / "deep16.tif", (_texture() * 16).astype(np.uint16))        # 12-bit data, 16 bits
    _save(d / "float.tif", (_texture() / 300).astype(np.float32))
    rgb = np.repeat(g[..., None], 3, axis=2)
    _save(d / "rgb_gray.png", rgb)                                         # BUSI stores gray as RGB
    doppler = rgb.copy()
    doppler[30:70, 40:90] = (220, 30, 30)
    _save(d / "doppler.png", doppler)
    _save(d / "rgba.png", np.dstack([rgb, np.full(g.shape, 255, np.uint8)]))
    Image.fromarray(g).convert("P").save(d / "palette.gif")
    _save(d / "one" / "case.png", g)                                       # same stem, two folders
    _save(d / "two" / "case.png", 255 - g)
    _save(d / 'odd <b>&"name.png', g)                                      # must be HTML-escaped
    raw = (_texture() * 20).astype(np.uint16)
    _dicom(d / "mono2.dcm", raw, RescaleSlope=1, RescaleIntercept=-100,
           WindowCenter=1800, WindowWidth=3000)
    _dicom(d / "mono1.dcm", raw, "MONOCHROME1")
    _dicom(d / "IM0001", raw)                                               # PACS export, no suffix
    _dicom(d / "colour.dcm", doppler, "RGB")
    _dicom(d / "cine.dcm", np.stack([raw] * 3), frames=3)
    _jpegls_dicom(d / "jpegls.dcm")
    (d / "garbage.dcm").write_bytes(np.random.default_rng(1).bytes(3000))
    (d / "notes.txt").write_text("not an image\n")
    predicted = {"gray.png", "photo.jpg", "scan.bmp", "deep16.tif", "float.tif", "rgb_gray.png",
                 "doppler.png", "rgba.png", "palette.gif", "case.png", 'odd <b>&"name.png',
                 "mono2.dcm", "mono1.dcm", "IM0001", "colour.dcm"}
    skipped = {"cine.dcm": "frames", "jpegls.dcm": "decoder", "garbage.dcm": "DICOM"}
    return predicted, skipped


# ------------------------------------------------------------------------------ the model, the run
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A deployable model file of the untrained smoke network (seconds, where `train` takes a
    minute): the format, preprocessing and threshold predict reads, from the code writing them."""
    import dataclasses

    from bus_paper.config import load_profile
    from bus_paper.models import build_network
    from bus_paper.train.finetuning import deployable_state
    profile = load_profile("smoke")
    torch.manual_seed(0)
    model = build_network(dataclasses.asdict(profile.model))
    state = deployable_state(model, profile, types.SimpleNamespace(normalizer=NORM), 0.5, "busi")
    path = tmp_path_factory.mktemp("model") / "smoke.pt"
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def run(checkpoint, tmp_path_factory):
    """`predict --heatmaps` on the folder of every kind of input; the figure titles recorded."""
    from bus_paper.train import gallery
    base = tmp_path_factory.mktemp("formats")
    predicted, skipped = make_folder(base / "in")
    titles: list[str] = []
    real = gallery._figure

    def recording(view, cam, title, dest):
        titles.append(title)
        real(view, cam, title, dest)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gallery, "_figure", recording)
        rc = main(["predict", "--checkpoint", str(checkpoint), str(base / "in"),
                   "--out", str(base / "p.csv"), "--heatmaps", str(base / "heat")])
    assert rc == 0
    preds = pd.read_csv(base / "p.csv", keep_default_na=False)
    return types.SimpleNamespace(base=base, heat=base / "heat", preds=preds, titles=titles,
                                 skipped=pd.read_csv(base / "p_skipped.csv"),
                                 expect_predicted=predicted, expect_skipped=skipped)


def test_every_file_is_predicted_or_skipped_with_its_reason(run):
    names = sorted(Path(p).name for p in run.preds.path)
    assert names == sorted([*run.expect_predicted, "case.png"])            # case.png twice
    assert list(run.preds.columns[:5]) == ["path", "prob_malignant", "prediction", "threshold",
                                           "flag"]
    assert run.preds.prob_malignant.between(0, 1).all()
    assert set(run.preds.prediction) <= {"benign", "malignant"}
    reasons = {Path(p).name: r for p, r in run.skipped.itertuples(index=False)}
    assert set(reasons) == set(run.expect_skipped)                         # notes.txt: ignored
    for name, word in run.expect_skipped.items():
        assert word in reasons[name] and "Traceback" not in reasons[name], (name, reasons[name])
    assert "multi-frame" in reasons["cine.dcm"] and "JPEG-LS" in reasons["jpegls.dcm"]


def test_colour_and_odd_inputs_are_flagged_not_plain_ones(run):
    flags = {Path(p).name: f for p, f in run.preds[["path", "flag"]].itertuples(index=False)}
    assert "colour DICOM (RGB)" in flags["colour.dcm"]
    assert "colour content" in flags["doppler.png"]
    for name in ("gray.png", "rgb_gray.png", "photo.jpg", "deep16.tif", "mono2.dcm", "IM0001"):
        assert flags[name] == "", (name, flags[name])


def test_heatmap_figures_are_side_by_side_readable_and_unique(run):
    figures = [Path(p) for p in run.preds.heatmap]
    assert len(set(figures)) == len(figures) == len(run.preds)            # the two case.png too
    for f in figures:
        assert f.parent == run.heat
        with Image.open(f) as im:
            w, h = im.size
        assert min(w, h) >= 256 and w >= 2 * 256 and w > h, (f, im.size)
    for t, row in zip(run.titles, run.preds.itertuples(index=False), strict=True):
        assert Path(row.path).name[:20] in t
        assert f"{row.prob_malignant:.3f}" in t and row.prediction in t


class _Page(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[str] = []
        self.links: list[str] = []
        self.tags: set[str] = set()
        self.text: list[str] = []
        self.external: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.add(tag)
        if tag == "img":
            self.imgs.append(a["src"])
        if tag == "a":
            self.links.append(a["href"])
        for key in ("src", "href"):
            if a.get(key) and ("//" in a[key] or a[key].startswith("/")):
                self.external.append(a[key])

    def handle_data(self, data):
        self.text.append(data)


def test_gallery_page_lists_every_image_offline(run):
    page = _Page()
    page.feed((run.heat / "index.html").read_text(encoding="utf-8"))
    figures = {Path(p).name for p in run.preds.heatmap}
    assert {unquote(s) for s in page.imgs} == figures == {unquote(s) for s in page.links}
    assert all((run.heat / unquote(s)).is_file() for s in page.imgs)
    assert not page.external and "link" not in page.tags and "script" not in page.tags
    text = "".join(page.text)
    for name in run.expect_predicted | set(run.expect_skipped):
        assert name in text, name
    assert "b" not in page.tags                                            # the odd name: escaped
    assert "not a medical device" in text
    for row in run.preds.itertuples(index=False):
        assert f"{row.prob_malignant:.3f}" in text


@pytest.mark.slow
def test_gallery_opens_in_a_browser_from_the_file_system(run):
    import chromium
    if chromium.find_chromium() is None:
        msg = "no Chromium on this machine (apt-get install chromium)"
        if os.environ.get("BUS_PAPER_REQUIRE_BROWSER"):
            pytest.fail(msg)
        pytest.skip(msg)
    with chromium.Chromium() as browser:
        browser.navigate((run.heat / "index.html").as_uri())
        images = browser.evaluate("""(async () => {
          const imgs = [...document.images];
          await Promise.all(imgs.map(i => i.complete ? null : new Promise(done => {
            i.addEventListener("load", done); i.addEventListener("error", done);
            setTimeout(done, 15000); })));
          return imgs.map(i => [i.currentSrc, i.complete, i.naturalWidth, i.naturalHeight]);
        })()""")
    assert len(images) == len(run.preds)
    for src, complete, w, h in images:
        assert src.startswith("file://") and complete and w >= 512 and h >= 256, src


def test_one_odd_file_never_stops_the_run(checkpoint, tmp_path, monkeypatch):
    from bus_paper.train import predict
    real = predict.read_any

    def odd(path):  # a failure no reader anticipates (e.g. a malformed DICOM tag)
        if Path(path).name == "b.png":
            raise ValueError("malformed tag")
        return real(path)

    monkeypatch.setattr(predict, "read_any", odd)
    g = _texture().astype(np.uint8)
    _save(tmp_path / "in" / "a.png", g)
    _save(tmp_path / "in" / "b.png", g)
    out = tmp_path / "p.csv"
    assert main(["predict", "--checkpoint", str(checkpoint), str(tmp_path / "in"),
                 "--out", str(out)]) == 0
    assert [Path(p).name for p in pd.read_csv(out).path] == ["a.png"]
    skipped = pd.read_csv(tmp_path / "p_skipped.csv")
    assert [Path(p).name for p in skipped.path] == ["b.png"]
    assert "ValueError: malformed tag" in skipped.reason[0]


# ------------------------------------------------------------------------------ conversions
def test_readers_scale_any_depth_and_photometry_to_8_bits(tmp_path):
    t = _texture()
    deep, _ = read_any(_save(tmp_path / "d.tif", (t * 16).astype(np.uint16)))  # 12-bit in 16
    assert deep.dtype == np.uint8 and deep.max() >= 190                        # not near black
    f, _ = read_any(_save(tmp_path / "f.tif", (t / 300 - 7).astype(np.float32)))
    assert f.min() == 0 and f.max() == 255
    raw = (t * 20).astype(np.uint16)                                            # 400 .. 4000
    m2, flags = read_any(_dicom(tmp_path / "m2.dcm", raw))
    m1, _ = read_any(_dicom(tmp_path / "m1.dcm", raw, "MONOCHROME1"))
    assert flags == [] and m2.min() == 0 and m2.max() == 255                   # min-max
    assert np.array_equal(m1, 255 - m2)                                         # 0 is white
    assert np.corrcoef(m2.ravel(), t.ravel())[0, 1] > 0.99
    # window 1000..3000 in rescaled units (stored - 100): stored <= 1100 black, >= 3100 white
    w, _ = read_any(_dicom(tmp_path / "w.dcm", raw, RescaleSlope=1, RescaleIntercept=-100,
                           WindowCenter=2000, WindowWidth=2000))
    assert (w[raw <= 1100] == 0).all() and (w[raw >= 3100] == 255).all()
    mid = (raw > 1500) & (raw < 2700)
    assert mid.any() and ((w[mid] > 0) & (w[mid] < 255)).all()
    rgb = np.zeros((40, 50, 3), np.uint8)
    rgb[..., 0] = 200
    c, flags = read_any(_dicom(tmp_path / "c.dcm", rgb, "RGB"))
    assert c.shape == (40, 50) and abs(int(c.mean()) - round(0.299 * 200)) <= 1 and flags


def test_unreadable_files_raise_one_clear_reason(tmp_path):
    from bus_paper.data.imageio import ImageReadError
    cases = {_dicom(tmp_path / "cine.dcm", np.zeros((4, 8, 8), np.uint8), frames=4): "4 frames",
             _jpegls_dicom(tmp_path / "ls.dcm"): "pylibjpeg",
             tmp_path / "x.dcm": "DICOM", tmp_path / "x.png": "unreadable"}
    (tmp_path / "x.dcm").write_text("hello")
    (tmp_path / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    frames = [Image.fromarray(np.full((8, 8), v, np.uint8)) for v in (0, 255)]
    frames[0].save(tmp_path / "stack.tif", save_all=True, append_images=frames[1:])
    cases[tmp_path / "stack.tif"] = "2 frames"
    for path, word in cases.items():
        with pytest.raises(ImageReadError) as err:
            read_any(path)
        assert word in err.value.reason, (path, err.value.reason)


def test_training_range_flags_use_the_checkpoints_normaliser():
    normal = _texture((200, 200), 0, 200).astype(np.uint8)
    bright = _texture((200, 200), 220, 255).astype(np.uint8)
    dull = _texture((200, 200), 60, 75).astype(np.uint8)
    assert image_flags(normal, NORM, 64) == ""
    assert "mean intensity" in image_flags(bright, NORM, 64)
    assert "low contrast" in image_flags(dull, NORM, 64)
    assert image_flags(bright) == image_flags(dull) == ""                     # generic rules only
    small = _texture((40, 40)).astype(np.uint8)
    assert "small for this model" in image_flags(small, NORM, 256)
    assert "small" not in image_flags(small, NORM, 64)
