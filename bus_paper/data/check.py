"""``bus-paper data check``: decode every image and mask and compare counts with the papers.

The manifest already leaves out files that do not decode (its verdicts are cached by file size
and mtime); this check decodes every pixel again, so it also finds masks that are empty for a
lesion image or non-empty for a normal one, and a copy whose counts differ from the published
ones. A dataset that cannot be read at all (e.g. a damaged metadata file) fails alone, as a
``dataset_failed`` issue; the others are still checked.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from .adapters import LABELS, DataIssue
from .imageio import ImageReadError, read_image, read_mask
from .manifest import build_manifest
from .registry import BUS_DATASETS, get_info

TABLE_COLUMNS = ["dataset", "images", *LABELS, "patients", "masks", "unreadable", "issues",
                 "counts_match"]
ISSUE_COLUMNS = ["dataset", "path", "kind", "reason", "excluded"]


def _decode(root: Path, frame: pd.DataFrame) -> tuple[set[str], list[DataIssue]]:
    """Decode every image and its masks; the unreadable paths and the issues found."""
    bad: set[str] = set()
    issues: list[DataIssue] = []

    def issue(row, path: str, kind: str, reason: str, excluded: bool = False) -> None:
        name = path.rsplit("/", 1)[-1]
        issues.append(DataIssue(row.dataset, path, kind, f"{name}: {reason}", excluded))

    for row in frame.itertuples(index=False):
        try:
            img = read_image(root / row.path)
        except ImageReadError as e:
            bad.add(row.path)
            issue(row, row.path, "unreadable", f"unreadable image ({e.reason}); excluded", True)
            continue
        lesion, any_mask = False, False
        for m in filter(None, row.mask_paths.split(";")):
            try:
                lesion |= bool(read_mask([root / m], img.shape).any())
                any_mask = True
            except ImageReadError as e:
                issue(row, m, "mask_unreadable", f"unreadable mask ({e.reason}); not used")
        if not any_mask:
            continue
        if row.label == "normal" and lesion:
            issue(row, row.path, "label_conflict", "labelled normal but its mask shows a lesion; "
                  "label kept")
        elif row.label != "normal" and not lesion:
            issue(row, row.path, "empty_mask", f"labelled {row.label} but its mask is empty")
    return bad, issues


def check_datasets(root: str | os.PathLike | None = None,
                   datasets: Iterable[str] | None = None) -> tuple[pd.DataFrame, list[DataIssue]]:
    """One row per dataset (see ``TABLE_COLUMNS``) and every issue, manifest's and decoder's.

    ``counts_match`` is True when the decodable images per label, and the patients where the
    paper gives them, equal the published numbers in the registry.
    """
    names = list(BUS_DATASETS if datasets is None else datasets)
    res = build_manifest(root, names, keep_going=True)
    bad, decode_issues = _decode(res.root, res.frame)
    issues = res.issues + decode_issues
    rows = []
    for name in names:
        info = get_info(name)
        df = res.frame[res.frame["dataset"] == name]
        unreadable = sum(1 for i in issues if i.dataset == name and i.kind == "unreadable")
        ok = df[~df["path"].isin(bad)]
        counts = ok["label"].value_counts()
        row = {"dataset": name, "images": len(ok)}
        row.update({label: int(counts.get(label, 0)) for label in LABELS})
        patients = ok["patient_id"].dropna().nunique() if ok["patient_id"].notna().any() else None
        row["patients"] = patients
        row["masks"] = sum(len([m for m in s.split(";") if m]) for s in ok["mask_paths"])
        row["unreadable"] = unreadable
        row["issues"] = sum(1 for i in issues if i.dataset == name)
        row["counts_match"] = (all(row[label] == info.counts.get(label, 0) for label in LABELS)
                               and (info.patients is None or patients == info.patients))
        rows.append(row)
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    table["patients"] = table["patients"].astype("Int64")
    return table, issues


def format_table(df: pd.DataFrame) -> str:
    """The check table as fixed-width text, missing values shown as '-'."""
    return df.astype(object).where(df.notna(), "-").to_string(index=False)


def issues_table(issues: Iterable[DataIssue]) -> pd.DataFrame:
    """Every issue as a row of ``ISSUE_COLUMNS``, the most serious first (a failed dataset, then
    the excluded images, then information), in order of discovery within each group."""
    rows = []
    for i in issues:
        prefix = i.path.rsplit("/", 1)[-1] + ": "  # the message repeats the file name
        reason = i.message[len(prefix):] if i.message.startswith(prefix) else i.message
        rows.append((i.dataset, i.path, i.kind, reason, i.excluded))
    df = pd.DataFrame(rows, columns=ISSUE_COLUMNS)
    rank = (df["kind"] != "dataset_failed").astype(int) + (~df["excluded"].astype(bool)).astype(int)
    return df.iloc[rank.argsort(kind="stable")].reset_index(drop=True)


def format_issues(issues: Iterable[DataIssue], limit: int = 20) -> str:
    """The first ``limit`` issues of :func:`issues_table`, one line each, and how many more."""
    df = issues_table(issues)
    lines = [f"  {r.dataset} {r.kind}: {r.path}: {r.reason}"
             for r in df.head(limit).itertuples(index=False)]
    if len(df) > limit:
        lines.append(f"  ... and {len(df) - limit} more")
    return "\n".join(lines)


def summarize_issues(issues: Iterable[DataIssue]) -> pd.DataFrame:
    """Counts of issues per dataset and kind (and how many excluded an image)."""
    df = pd.DataFrame([(i.dataset, i.kind, i.excluded) for i in issues],
                      columns=["dataset", "kind", "excluded"])
    return (df.groupby(["dataset", "kind"], sort=True)
              .agg(count=("kind", "size"), excluded=("excluded", "sum")).reset_index())
