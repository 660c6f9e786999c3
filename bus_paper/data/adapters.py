"""One adapter per dataset, reading its ORIGINAL layout into manifest rows plus a list of issues.

Labels only ever come from the dataset's own folders or metadata files. Anything odd (a broken
image, a metadata row without image, a mask of another size, a mask colour that disagrees with
the label) is recorded as a :class:`DataIssue` naming the file and the reason; it is never
silently fixed. Images whose label is unknown or that cannot be decoded are left out of the
manifest (``excluded=True``); everything else stays in, with the issue as information.

A malformed metadata row (ragged, unknown label, naming a missing image) is reported with its
file and line and skipped; a metadata file that cannot be read at all raises
:class:`MetadataError` (one line: dataset, file, what is wrong, what to do), which
:func:`bus_paper.data.manifest.build_manifest` can turn into a failure of that dataset only.

Every image and mask is fully decoded once (verdicts cached by file size and mtime, see
:class:`bus_paper.data.imageio.DecodeCache`), so the manifest never lists a file that a training
run cannot read; :mod:`bus_paper.data.check` additionally looks at the mask pixels.
"""

from __future__ import annotations

import csv
import re
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openpyxl
import pandas as pd

from .imageio import DecodeCache, ImageReadError, mask_colour_label
from .registry import DATASETS, DatasetNotFound

LABELS = ("benign", "malignant", "normal")
CORE_COLUMNS = ["dataset", "path", "label", "patient_id", "lesion_id", "view", "mask_paths",
                "width", "height", "mode"]
# dataset-specific columns and their dtypes (pandas nullable types: missing stays NA)
EXTRA_COLUMNS = {"histology": "str", "birads": "Int64", "device": "str",
                 "doppler": "boolean", "marks": "boolean", "combined": "boolean"}

ISSUE_KINDS: dict[str, str] = {
    "unreadable": "the image cannot be decoded; excluded",
    "no_metadata": "an image without a metadata row, so without a label; excluded",
    "missing_image": "a metadata row whose image file is missing",
    "bad_metadata": "a metadata value that cannot be parsed (an unknown label excludes the row; "
                    "other fields are left NA)",
    "duplicate_metadata": "an image listed twice with the same label; first row used",
    "label_conflict": "the dataset's own sources disagree on a label (two metadata rows: excluded; "
                      "mask colour vs metadata: reported, label kept)",
    "missing_mask": "no mask file for the image",
    "mask_unreadable": "a mask that cannot be decoded; left out of mask_paths",
    "mask_size_mismatch": "a mask of another size than its image; kept, resized "
                          "nearest-neighbour when read",
    "orphan_mask": "a mask file without its image",
    "converted_mode": "an image not stored as 8-bit grayscale; converted when read (information)",
    "empty_mask": "a lesion image whose mask is empty (found by the full check)",
    "dataset_failed": "a dataset that cannot be read at all (a missing folder or an unreadable "
                      "metadata file); all its images are left out",
}


class MetadataError(ValueError):
    """A dataset's metadata file cannot be read at all; the message is one line naming the
    dataset, the file (relative to the data root), what is wrong and what to do."""

    def __init__(self, dataset: str, path: str, problem: str):
        self.dataset, self.path, self.problem = dataset, path, problem
        info = DATASETS.get(dataset)
        source = f" ({info.url})" if info else ""
        super().__init__(f"{dataset}: {path} {problem}. Replace it with the original file, "
                         f"e.g. re-download the dataset{source}")


@dataclass(frozen=True)
class DataIssue:
    dataset: str
    path: str        # the file concerned, relative to the data root (POSIX)
    kind: str        # one of ISSUE_KINDS
    message: str     # "<file name>: <reason>" (dataset_failed: the error's one line)
    excluded: bool = False  # True: the image named by `path` is not in the manifest


class _Collector:
    """Rows and issues of one dataset under construction."""

    def __init__(self, root: Path, dataset: str):
        self.root, self.dataset = root, dataset
        self.rows: list[dict[str, Any]] = []
        self.issues: list[DataIssue] = []
        self.decoded = DecodeCache()

    def rel(self, p: Path) -> str:
        return p.relative_to(self.root).as_posix()

    def issue(self, rel: str, kind: str, reason: str, excluded: bool = False) -> None:
        assert kind in ISSUE_KINDS, kind
        name = rel.rsplit("/", 1)[-1]
        self.issues.append(DataIssue(self.dataset, rel, kind, f"{name}: {reason}", excluded))

    def add_image(self, img: Path, label: str, masks: list[Path], **fields: Any) -> dict | None:
        """Decode ``img`` and its expected ``masks``; append a manifest row unless unreadable."""
        rel = self.rel(img)
        try:
            w, h, mode = self.decoded.probe(img)
        except ImageReadError as e:
            self.issue(rel, "unreadable", f"unreadable image ({e.reason}); excluded", excluded=True)
            return None
        if mode != "L":
            self.issue(rel, "converted_mode",
                       f"mode {mode}, converted to 8-bit grayscale when read")
        if not masks:
            self.issue(rel, "missing_mask", "no mask file found")
        good: list[str] = []
        for m in masks:
            mrel = self.rel(m)
            if not m.is_file():
                self.issue(rel, "missing_mask", f"missing mask (expected {mrel})")
                continue
            try:
                mw, mh, _ = self.decoded.probe(m)
            except ImageReadError as e:
                self.issue(mrel, "mask_unreadable", f"unreadable mask ({e.reason}); not used")
                continue
            if (mw, mh) != (w, h):
                self.issue(rel, "mask_size_mismatch",
                           f"mask size mismatch: mask {mrel} is {mw}x{mh}, image {w}x{h}; "
                           "resized nearest-neighbour when read")
            good.append(mrel)
        row = {"dataset": self.dataset, "path": rel, "label": label, "patient_id": None,
               "lesion_id": None, "view": None, "mask_paths": ";".join(good),
               "width": w, "height": h, "mode": mode, **fields}
        self.rows.append(row)
        return row

    def orphan_masks(self, masks: list[Path]) -> None:
        for m in masks:
            self.issue(self.rel(m), "orphan_mask", "mask without an image")

    def frame(self) -> pd.DataFrame:
        self.decoded.save()
        extras = [c for c in EXTRA_COLUMNS if any(c in r for r in self.rows)]
        df = pd.DataFrame(self.rows, columns=CORE_COLUMNS + extras)
        for col in ["dataset", "path", "label", "patient_id", "lesion_id", "view", "mask_paths",
                    "mode"]:
            df[col] = df[col].astype("str")
        df["width"] = df["width"].astype("int64")
        df["height"] = df["height"].astype("int64")
        for col in extras:
            df[col] = df[col].astype(EXTRA_COLUMNS[col])
        return df.sort_values("path", kind="stable").reset_index(drop=True)


AdapterResult = tuple[pd.DataFrame, list[DataIssue]]
# a metadata row: (image key, raw label or _BadRow, fields, line number or None)
Entry = tuple[str, Any, dict, int | None]
# ({key: (label, fields)}, {every key listed: where its first row is, e.g. "INFO.csv line 7"})
Metadata = tuple[dict[str, tuple[str, dict]], dict[str, str]]


@dataclass(frozen=True)
class _BadRow:
    """Stands for the label of a malformed metadata row: the row is reported and skipped."""
    reason: str


@contextmanager
def _reading(c: _Collector, path: Path) -> Iterator[None]:
    """Any failure to read the metadata file ``path`` becomes a :class:`MetadataError`.

    Broken files raise a zoo of types (BadZipFile, InvalidFileException, KeyError, XML and
    Unicode errors, our own ValueErrors): all of them mean "this file cannot be used".
    """
    try:
        yield
    except MetadataError:
        raise
    except Exception as e:
        why = str(e) if type(e) is ValueError else f"{type(e).__name__}: {e}"
        raise MetadataError(c.dataset, c.rel(path), f"cannot be read ({why})") from e


CsvRow = tuple[int, dict[str, str], str | None]  # (line, {column: value}, why malformed)


def _read_csv(c: _Collector, path: Path, required: set[str], sep: str = ",",
              encoding: str = "utf-8") -> list[CsvRow]:
    """The rows of a CSV file with their line numbers. A row with another number of fields than
    the header comes with the reason (its fields zipped to the columns as far as they go), for
    the caller to report and skip. Values are the raw strings; blank lines are skipped."""
    with _reading(c, path), open(path, encoding=encoding, newline="") as fh:
        reader = csv.reader(fh, delimiter=sep)
        header = [col.strip() for col in next(reader, [])]
        if not header:
            raise ValueError("the file is empty")
        if missing := required - set(header):
            raise ValueError(f"columns {sorted(missing)} missing (found {header})")
        rows: list[CsvRow] = []
        for fields in reader:
            if not fields:
                continue
            while len(fields) > len(header) and not fields[-1].strip():
                fields = fields[:-1]  # trailing separators carry nothing
            bad = (None if len(fields) == len(header) else
                   f"{len(fields)} fields, expected {len(header)}")
            # line_num is the row's last physical line (the line itself for one-line rows)
            rows.append((reader.line_num, dict(zip(header, fields)), bad))
        return rows


def _require(root: Path, dataset: str, *paths: Path) -> None:
    for p in paths:
        if not p.exists():
            raise DatasetNotFound(dataset, [root], f"{p.relative_to(root).as_posix()} is missing")


def _pngs(folder: Path) -> dict[str, Path]:
    """{stem: path} of the PNG files in ``folder`` (hidden files are not data)."""
    return {p.stem: p for p in sorted(folder.iterdir())
            if p.is_file() and p.suffix.lower() == ".png" and not p.name.startswith(".")}


def _label(value: Any) -> str | None:
    v = str(value).strip().lower() if value is not None else ""
    return v if v in LABELS else None


def _text(value: Any) -> str | None:
    v = str(value).strip() if value is not None else ""
    return v or None


# ------------------------------------------------------------------ metadata rows <-> image files

def _index_metadata(c: _Collector, entries: list[Entry], image_rel: Callable[[str], str],
                    source: Path) -> Metadata:
    """Index the metadata rows ``(key, raw label, fields, line)`` of the file ``source`` by key.

    A malformed row (:class:`_BadRow`), an unknown label, or two rows with different labels
    leaves the key out (reported with file and line); a repeated row with the same label is
    reported and its first occurrence used; a row without image name is reported and skipped.
    """
    meta: dict[str, tuple[str, dict]] = {}
    listed: dict[str, str] = {}
    rejected: set[str] = set()
    for key, raw, fields, line in entries:
        where = f"{source.name} line {line}" if line is not None else source.name
        if not key:
            why = raw.reason if isinstance(raw, _BadRow) else "no image name"
            c.issue(c.rel(source), "bad_metadata", f"{where}: {why}; row skipped")
            continue
        listed.setdefault(key, where)
        rel = image_rel(key)
        label = None if isinstance(raw, _BadRow) else _label(raw)
        if label is None:
            why = raw.reason if isinstance(raw, _BadRow) else f"unknown label {raw!r}"
            c.issue(rel, "bad_metadata", f"{where}: {why}; row skipped, image excluded",
                    excluded=True)
            rejected.add(key)
            meta.pop(key, None)
        elif key in rejected:
            continue
        elif key not in meta:
            meta[key] = (label, fields)
        elif meta[key][0] == label:
            c.issue(rel, "duplicate_metadata", f"listed again in {where}; first row "
                    f"({listed[key]}) used")
        else:
            c.issue(rel, "label_conflict", f"listed twice ({listed[key]}, {where}) with labels "
                    f"{meta[key][0]!r} and {label!r}; excluded", excluded=True)
            rejected.add(key)
            del meta[key]
    return meta, listed


def _join(c: _Collector, metadata: Metadata, images: dict[str, Path],
          image_rel: Callable[[str], str], masks_of: Callable[[str], list[Path]],
          source: Path) -> list[dict]:
    """Match metadata keys with image files; every mismatch becomes an issue."""
    meta, listed = metadata
    rows = []
    for key in sorted(set(listed) | set(images)):
        if key not in images:
            c.issue(image_rel(key), "missing_image", f"listed in {listed[key]} but the image "
                    "file is missing; row skipped", excluded=True)
        elif key not in listed:
            c.issue(image_rel(key), "no_metadata", f"no row in {source.name}; excluded "
                    "(no label)", excluded=True)
        elif key in meta:  # listed but not in meta: a bad or conflicting row, already reported
            label, fields = meta[key]
            row = c.add_image(images[key], label, masks_of(key), **fields)
            if row is not None:
                rows.append(row)
    return rows


# -------------------------------------------------------------------------------------- datasets

_BUSI_MASK = re.compile(r"^(?P<stem>.+?)_mask(?:_\d+)?\.png$", re.IGNORECASE)


def read_busi(root: Path) -> AdapterResult:
    """BUSI: ``busi/Dataset_BUSI_with_GT/<label>/<label> (N).png`` with ``_mask[_k].png`` beside.

    The label is the folder; there are no patient or lesion ids.
    """
    c = _Collector(root, "busi")
    base = root / "busi" / "Dataset_BUSI_with_GT"
    _require(root, "busi", *(base / label for label in LABELS))
    for label in LABELS:
        images: dict[str, Path] = {}
        masks: dict[str, list[Path]] = defaultdict(list)
        for stem, p in _pngs(base / label).items():
            m = _BUSI_MASK.match(p.name)
            if m:
                masks[m["stem"]].append(p)
            else:
                images[stem] = p
        for stem, p in images.items():
            c.add_image(p, label, masks.pop(stem, []))
        c.orphan_masks([m for ms in masks.values() for m in ms])
    return c.frame(), c.issues


def _udiat_id(value: Any) -> str | None:
    """A data row's image id, zero-padded to 6 digits; None for legend, header or blank rows."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return f"{int(value):06d}" if float(value).is_integer() and value >= 0 else None
    v = str(value).strip()
    if v.lower().endswith(".png"):
        v = v[:-4]
    return v.zfill(6) if v.isdigit() and len(v) <= 6 else None


def _udiat_rows(xlsx: Path) -> list[Entry]:
    """Data rows of ``DatasetB.xlsx`` as ``(image id, Type, {"histology": Diagnosis}, row)``.

    The sheet also holds a legend (abbreviation, meaning) beside or below the table; only rows
    whose Image cell is an image id are data, so the legend is skipped wherever it sits.
    """
    wb = openpyxl.load_workbook(xlsx, read_only=True, data_only=True)
    try:
        ws = wb["Hoja1"] if "Hoja1" in wb.sheetnames else wb.worksheets[0]
        rows = enumerate(ws.iter_rows(values_only=True), start=ws.min_row or 1)
        cols: dict[str, int] = {}
        for _, row in rows:
            names = {str(v).strip().lower(): i for i, v in enumerate(row) if v is not None}
            if "image" in names and "type" in names:
                cols = names
                break
        if not cols:
            raise ValueError(f"no header row with columns Image and Type in sheet {ws.title}")

        def cell(row: tuple, name: str) -> Any:
            i = cols.get(name)
            return row[i] if i is not None and i < len(row) else None

        out: list[Entry] = []
        for line, row in rows:
            key = _udiat_id(cell(row, "image"))
            if key is not None:
                out.append((key, cell(row, "type"),
                            {"histology": _text(cell(row, "diagnosis"))}, line))
        return out
    finally:
        wb.close()


def read_udiat_metadata(xlsx: Path) -> list[tuple[str, Any, dict]]:
    """Data rows of ``DatasetB.xlsx`` as ``(image id, Type, {"histology": Diagnosis})``."""
    return [(key, raw, fields) for key, raw, fields, _ in _udiat_rows(xlsx)]


def read_udiat(root: Path) -> AdapterResult:
    """UDIAT Dataset B: ``udiat/BUS/original/NNNNNN.png``, ``GT/NNNNNN.png``, ``DatasetB.xlsx``."""
    c = _Collector(root, "udiat")
    base = root / "udiat" / "BUS"
    xlsx = base / "DatasetB.xlsx"
    _require(root, "udiat", base / "original", base / "GT", xlsx)

    def image_rel(key: str) -> str:
        return f"udiat/BUS/original/{key}.png"

    with _reading(c, xlsx):
        entries = _udiat_rows(xlsx)
    meta = _index_metadata(c, entries, image_rel, xlsx)
    images = _pngs(base / "original")
    _join(c, meta, images, image_rel, lambda key: [base / "GT" / f"{key}.png"], xlsx)
    c.orphan_masks([p for stem, p in _pngs(base / "GT").items() if stem not in images])
    return c.frame(), c.issues


def _int_or_none(value: Any) -> int | None:
    try:
        return int(str(value).strip())
    except ValueError:
        return None


def read_busbra(root: Path) -> AdapterResult:
    """BUS-BRA: ``busbra/BUSBRA/Images/bus_NNNN-{l,r,s}.png``, ``Masks/mask_...``, ``bus_data.csv``.

    ``Case`` is the patient; the ``-l``/``-r`` images are two views of ONE lesion, so the
    lesion id is the case as well and ``view`` is the l/r/s suffix.
    """
    c = _Collector(root, "busbra")
    base = root / "busbra" / "BUSBRA"
    csv = base / "bus_data.csv"
    _require(root, "busbra", base / "Images", base / "Masks", csv)

    def image_rel(key: str) -> str:
        return f"busbra/BUSBRA/Images/{key}.png"

    def mask_of(key: str) -> Path:
        return base / "Masks" / f"{key.replace('bus_', 'mask_', 1)}.png"

    entries: list[Entry] = []
    for line, r, bad in _read_csv(c, csv, {"ID", "Case", "Pathology"}):
        key = r.get("ID", "").strip()
        if bad:
            entries.append((key, _BadRow(bad), {}, line))
            continue
        case = _text(r["Case"])
        view = re.search(r"-([lrs])$", key)
        raw_birads = r.get("BIRADS", "").strip()
        birads = _int_or_none(raw_birads)
        if raw_birads and birads is None:
            c.issue(image_rel(key), "bad_metadata",
                    f"BIRADS {raw_birads!r} is not a number; left NA")
        entries.append((key, r["Pathology"], {
            "patient_id": case, "lesion_id": case, "view": view[1] if view else None,
            "histology": _text(r.get("Histology")), "birads": birads,
            "device": _text(r.get("Device"))}, line))
    meta = _index_metadata(c, entries, image_rel, csv)
    images = _pngs(base / "Images")
    _join(c, meta, images, image_rel, lambda key: [mask_of(key)], csv)
    used = {mask_of(key).name for key in images}
    c.orphan_masks([p for p in _pngs(base / "Masks").values() if p.name not in used])
    return c.frame(), c.issues


def busbra_official_folds(root: Path, k: int = 5) -> pd.DataFrame:
    """The authors' patient-wise folds from ``<k>-fold-cv.csv`` as ``DataFrame(path, fold)``."""
    base = Path(root) / "busbra" / "BUSBRA"
    csv = base / f"{k}-fold-cv.csv"
    if not csv.is_file():
        have = sorted(p.name for p in base.glob("*-fold-cv.csv")) if base.is_dir() else []
        raise FileNotFoundError(f"no official {k}-fold file {csv}; available: {have or 'none'}")
    df = pd.read_csv(csv, dtype={"ID": str})
    if not {"ID", "kFold"} <= set(df.columns):
        raise ValueError(f"{csv}: expected columns ID and kFold, found {list(df.columns)}")
    return pd.DataFrame({"path": "busbra/BUSBRA/Images/" + df["ID"].str.strip() + ".png",
                         "fold": df["kFold"].astype("int64")})


_YES, _NO = {"yes", "y", "true", "1"}, {"no", "n", "false", "0"}


def read_busuclm(root: Path) -> AdapterResult:
    """BUS-UCLM: ``busuclm/BUS-UCLM/images/XXXX_NNN.png``, ``masks/`` and ``INFO.csv``.

    INFO.csv is ';'-separated with a UTF-8 BOM. The 4-letter prefix is the patient. Masks are
    colour-coded (green benign, red malignant, black normal); a colour that disagrees with
    INFO.csv is reported, and INFO.csv's label kept.
    """
    c = _Collector(root, "busuclm")
    base = root / "busuclm" / "BUS-UCLM"
    csv = base / "INFO.csv"
    _require(root, "busuclm", base / "images", base / "masks", csv)

    def image_rel(key: str) -> str:
        return f"busuclm/BUS-UCLM/images/{key}.png"

    entries: list[Entry] = []
    for line, r, bad in _read_csv(c, csv, {"Image", "Label"}, sep=";", encoding="utf-8-sig"):
        key = Path(r.get("Image", "").strip()).stem
        if bad:
            entries.append((key, _BadRow(bad), {}, line))
            continue
        fields: dict[str, Any] = {"patient_id": key.split("_")[0]}
        for col in ("Doppler", "Marks", "Combined"):
            raw = r.get(col, "").strip()
            value = True if raw.lower() in _YES else False if raw.lower() in _NO else None
            if raw and value is None:
                c.issue(image_rel(key), "bad_metadata", f"{col} {raw!r} is not yes/no; left NA")
            fields[col.lower()] = value
        entries.append((key, r["Label"], fields, line))
    meta = _index_metadata(c, entries, image_rel, csv)
    images = _pngs(base / "images")
    rows = _join(c, meta, images, image_rel, lambda key: [base / "masks" / f"{key}.png"], csv)
    for row in rows:
        for m in filter(None, row["mask_paths"].split(";")):
            try:
                colour = mask_colour_label(root / m)
            except ImageReadError as e:  # decoded in add_image; changed since?
                c.issue(m, "mask_unreadable", f"unreadable mask ({e.reason}); not used")
                row["mask_paths"] = ";".join(x for x in row["mask_paths"].split(";") if x != m)
                continue
            if colour is not None and colour != row["label"]:
                c.issue(row["path"], "label_conflict", f"mask {m} is coloured {colour!r} but "
                        f"INFO.csv says {row['label']!r}; label kept")
    c.orphan_masks([p for stem, p in _pngs(base / "masks").items() if stem not in images])
    return c.frame(), c.issues


ADAPTERS: dict[str, Callable[[Path], AdapterResult]] = {
    "busi": read_busi, "udiat": read_udiat, "busbra": read_busbra, "busuclm": read_busuclm,
}
