"""mini-MIAS (mammography) in the manifest format, and its lesion list.

Layout (see ``../shared/data/README.md``): ``mias/all-mias/mdbNNN.png`` (512 x 512, downscaled by
exactly 2 from the 1024-px originals) and ``mias/all-mias/Info.txt``, one line per abnormality::

    REFNUM BG CLASS [SEVERITY X Y RADIUS]

``X, Y, RADIUS`` are in original 1024-px units with the origin at the *bottom-left* corner. Films
come in pairs per woman (note 1 of Info.txt: even numbers left, odd numbers right breast), so the
patient of ``mdbN`` is woman ``(N + 1) // 2``: every split must keep both films of a woman together.

Labels: ``normal`` (CLASS NORM), else ``malignant`` if any of the film's lesions is malignant (one
film, mdb144, has a benign and a malignant lesion: reported as ``label_conflict``), else
``benign``. Four abnormal films have no location (mdb059 none at all; mdb216, mdb233, mdb245 say
``*NOTE 3*``, i.e. widely distributed calcifications): kept, reported as ``bad_metadata``.

The reader is not (yet) registered in :data:`bus_paper.data.adapters.ADAPTERS`; it reuses the
adapters' collector, so its rows and issues have the same columns and kinds.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ...data.adapters import (
    AdapterResult,
    Entry,
    _BadRow,
    _Collector,
    _index_metadata,
    _join,
    _pngs,
    _reading,
    _require,
)

ORIGINAL_SIDE = 1024          # Info.txt coordinates refer to the 1024-px originals
CLASSES = {"CALC": "calcification", "CIRC": "circumscribed mass", "SPIC": "spiculated mass",
           "MISC": "ill-defined mass", "ARCH": "architectural distortion", "ASYM": "asymmetry",
           "NORM": "normal"}
TISSUE = {"F": "fatty", "G": "fatty-glandular", "D": "dense-glandular"}
_REF = re.compile(r"^mdb(\d{3})$")


@dataclass(frozen=True)
class Lesion:
    """One line of Info.txt. ``x, y, radius`` in 1024-px units, origin bottom-left; None when the
    line gives no location."""
    ref: str
    tissue: str
    cls: str
    severity: str | None          # "B" | "M" | None (normal)
    x: float | None = None
    y: float | None = None
    radius: float | None = None

    @property
    def located(self) -> bool:
        return self.x is not None and self.y is not None and self.radius is not None


def woman_of(ref: str) -> int:
    """Woman number of film ``mdbNNN``: films 2k-1 (right) and 2k (left) belong to woman k."""
    m = _REF.match(ref)
    if not m:
        raise ValueError(f"not a mini-MIAS reference number: {ref!r}")
    return (int(m.group(1)) + 1) // 2


def parse_info(text: str, on_bad_line: Callable[[int, str, str], None] | None = None
               ) -> list[Lesion]:
    """Every abnormality line of Info.txt (normal films: one line with CLASS NORM), in file order.

    Lines are split on whitespace (some have trailing spaces); the free-text header is skipped.
    A line whose coordinates are missing or not numbers (``*NOTE 3*``) gives a lesion without a
    location. A malformed line (unknown class, abnormal without severity) raises ValueError, or
    with ``on_bad_line`` is passed to it as ``(line number, ref, reason)`` and skipped.
    """
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if len(parts) < 3 or not _REF.match(parts[0]):
            continue
        ref, tissue, cls = parts[:3]
        severity = parts[3] if len(parts) > 3 and parts[3] in ("B", "M") else None
        bad = (f"unknown class {cls!r}" if cls not in CLASSES else
               "abnormal film without severity" if cls != "NORM" and severity is None else None)
        if bad and on_bad_line is None:
            raise ValueError(f"Info.txt line {number}: {bad}: {line.strip()!r}")
        if bad:
            on_bad_line(number, ref, bad)
            continue
        coords = parts[4:7] if severity else []
        try:
            x, y, r = (float(v) for v in coords) if len(coords) == 3 else (None, None, None)
        except ValueError:   # "*NOTE 3*"
            x = y = r = None
        out.append(Lesion(ref, tissue, cls, severity, x, y, r))
    return out


def read_lesions(root: str | Path) -> pd.DataFrame:
    """Info.txt as a table: ``ref, path, woman, tissue, cls, severity, x, y, radius, located``."""
    base = Path(root) / "mias" / "all-mias"
    rows = [{"ref": le.ref, "path": f"mias/all-mias/{le.ref}.png", "woman": woman_of(le.ref),
             "tissue": le.tissue, "cls": le.cls, "severity": le.severity, "x": le.x, "y": le.y,
             "radius": le.radius, "located": le.located}
            for le in parse_info((base / "Info.txt").read_text())]
    return pd.DataFrame(rows)


def film_label(lesions: list[Lesion]) -> str:
    """normal | benign | malignant (any malignant lesion makes the film malignant)."""
    sev = {le.severity for le in lesions}
    if sev == {None}:
        return "normal"
    return "malignant" if "M" in sev else "benign"


def read_mias(root: Path) -> AdapterResult:
    """mini-MIAS: ``mias/all-mias/mdbNNN.png`` and ``Info.txt`` into manifest rows (no masks:
    lesions are circles, see :func:`read_lesions`). ``patient_id`` is the woman, ``view`` the side."""
    root = Path(root)
    c = _Collector(root, "mias")
    base = root / "mias" / "all-mias"
    info = base / "Info.txt"
    _require(root, "mias", base, info)

    def image_rel(key: str) -> str:
        return f"mias/all-mias/{key}.png"

    entries: list[Entry] = []

    def bad_line(number: int, ref: str, reason: str) -> None:
        entries.append((ref, _BadRow(reason), {}, number))  # reported, the film excluded

    with _reading(c, info):
        parsed = parse_info(info.read_text(encoding="utf-8"), bad_line)
        if not parsed and not entries:
            raise ValueError("no line of the form 'mdbNNN BG CLASS ...'")
    by_film: dict[str, list[Lesion]] = {}
    for le in parsed:
        by_film.setdefault(le.ref, []).append(le)
    for ref, lesions in by_film.items():
        label = film_label(lesions)
        if {le.severity for le in lesions} == {"B", "M"}:
            c.issue(image_rel(ref), "label_conflict", "Info.txt lists a benign and a malignant "
                    "lesion on this film; labelled malignant (any malignant lesion), kept")
        if label != "normal" and not any(le.located for le in lesions):
            c.issue(image_rel(ref), "bad_metadata", "no lesion location in Info.txt (none given, "
                    "or *NOTE 3*: widely distributed calcifications); kept")
        n = int(ref[3:])
        entries.append((ref, label, {"patient_id": f"w{woman_of(ref):03d}",
                                     "view": "right" if n % 2 else "left"}, None))
    meta = _index_metadata(c, entries, image_rel, info)
    _join(c, meta, _pngs(base), image_rel, lambda key: [], info)
    # mini-MIAS has no mask files (lesions are circles in Info.txt): not an issue here
    c.issues = [i for i in c.issues if i.kind != "missing_mask"]
    return c.frame(), c.issues


def mias_manifest(root: str | Path) -> pd.DataFrame:
    """The manifest rows of mini-MIAS (issues dropped; see :func:`read_mias` for them)."""
    return read_mias(Path(root))[0]
