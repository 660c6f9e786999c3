"""`bus-paper data ...`: manifest | check | duplicates | splits | phantom.

Each command is a few calls into this package, the same the data notebook makes. Nothing here
imports torch, so the data commands start in about a second.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import pandas as pd

from ..config import DataConfig, load_profile
from ..data.registry import BUS_DATASETS


def _data_config(args: argparse.Namespace) -> DataConfig:
    cfg = load_profile(args.profile).data if args.profile else DataConfig()
    if getattr(args, "conflict_policy", None):
        cfg = dataclasses.replace(cfg, conflict_policy=args.conflict_policy)
    return cfg


def _manifest(args: argparse.Namespace, datasets: list[str] | None = None):
    from ..data.manifest import build_manifest
    return build_manifest(args.root, datasets or args.datasets)


def _report_failed(failed: dict[str, str]) -> None:
    for line in failed.values():
        print(f"bus-paper data: error: dataset left out: {line}", file=sys.stderr)


def cmd_manifest(args: argparse.Namespace) -> int:
    from ..data.manifest import build_manifest
    # a dataset that cannot be read is left out; the others are written, and the exit code says so
    res = build_manifest(args.root, args.datasets, keep_going=True)
    out = res.to_csv(args.out)
    if len(res.frame):
        print(pd.crosstab(res.frame["dataset"], res.frame["label"], margins=True).to_string())
    excluded = sum(i.excluded for i in res.issues)
    print(f"wrote {out} ({len(res.frame)} images; {len(res.issues)} issues, {excluded} excluded; "
          f"issues in {out.with_name(out.stem + '_issues.csv')})")
    _report_failed(res.failed)
    return 1 if res.failed else 0


def cmd_check(args: argparse.Namespace) -> int:
    from ..data.check import (
        check_datasets,
        format_issues,
        format_table,
        issues_table,
        summarize_issues,
    )
    table, issues = check_datasets(args.root, args.datasets)
    print(format_table(table))
    if issues:
        print("\nissues:")
        print(summarize_issues(issues).to_string(index=False))
        print(f"\n{len(issues)} problems (first {min(len(issues), 20)}; all of them with "
              + (f"their reasons in {args.out}):" if args.out else "--out FILE):"))
        print(format_issues(issues, limit=20))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        issues_table(issues).to_csv(args.out, index=False)
        print(f"wrote {args.out} ({len(issues)} problems)")
    failed = {i.dataset: i.message for i in issues if i.kind == "dataset_failed"}
    _report_failed(failed)
    ok = (bool(table["counts_match"].all()) and int(table["unreadable"].sum()) == 0
          and not failed)
    print("\nOK: counts match the publications and every file decodes" if ok else
          "\nFAILED: a dataset cannot be read, counts differ from the publications or files are "
          "unreadable (see above)")
    return 0 if ok else 1


def cmd_duplicates(args: argparse.Namespace) -> int:
    from ..data.duplicates import group_members, load_duplicates, summarize_duplicates
    res = _manifest(args)
    dups = load_duplicates(res.frame, res.root, _data_config(args))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    dups.to_csv(args.out, index=False)
    summary = summarize_duplicates(dups)
    print(summary.to_string(index=False) if len(summary) else "no duplicate pairs found")
    conflicts = group_members(dups).query("conflict")
    if len(conflicts):
        print(f"\n{len(conflicts)} groups with conflicting labels:")
        for g in conflicts.itertuples():
            print(f"  group {g.group} ({g.labels}): {g.paths.replace(';', ' | ')}")
    print(f"\nwrote {args.out} ({len(dups)} pairs)")
    return 0


def cmd_splits(args: argparse.Namespace) -> int:
    from ..data.duplicates import load_duplicates
    from ..data.splits import PARTS, make_splits
    cfg = _data_config(args)
    res = _manifest(args, [args.dataset])
    dups = load_duplicates(res.frame, res.root, cfg)
    splits = make_splits(res.frame, args.dataset, args.seed, scheme=args.scheme, k=args.k,
                         duplicates=dups, cfg=cfg, root=res.root)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    splits.to_csv(args.out, index=False)
    part = "split" if "split" in splits.columns else "fold"
    table = pd.crosstab(splits[part], splits["label"])
    if part == "split":
        table = table.reindex([p for p in PARTS if p in table.index])
    table["groups"] = splits.groupby(part)["group"].nunique()
    print(table.to_string())
    print(f"excluded (duplicate groups with conflicting labels): {len(splits.attrs['excluded'])}")
    print(f"wrote {args.out} ({len(splits)} images, no group spans two parts)")
    return 0


def cmd_phantom(args: argparse.Namespace) -> int:
    from ..data.phantom import write_phantom_root
    root = write_phantom_root(Path(args.out), n_per_class=args.n_per_class, size=args.size,
                              seed=args.seed)
    print(f"wrote a phantom data root to {root}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="datasets: manifest, check, duplicates, splits")
    sub = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")

    def common(p: argparse.ArgumentParser, datasets: bool = True) -> None:
        p.add_argument("--root",
                       help="data root (default: $BUS_PAPER_DATA, ./data, ../shared/data)")
        if datasets:
            p.add_argument("--datasets", nargs="+", choices=BUS_DATASETS, default=None,
                           help="default: all four ultrasound datasets")

    p = sub.add_parser("manifest", help="one row per usable image -> CSV (+ issues CSV)")
    common(p)
    p.add_argument("--out", required=True, help="manifest CSV to write")
    p.set_defaults(func=cmd_manifest)

    p = sub.add_parser("check", help="decode everything, compare with the published counts")
    common(p)
    p.add_argument("--out", help="CSV of every problem: dataset, path, kind, reason, excluded")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("duplicates", help="identical and near-duplicate pairs -> CSV")
    common(p)
    p.add_argument("--out", required=True, help="CSV, one row per pair")
    p.add_argument("--profile", help="profile whose [data] thresholds to use (default: built-in)")
    p.set_defaults(func=cmd_duplicates)

    p = sub.add_parser("splits", help="leak-free holdout / k-fold / official split -> CSV")
    common(p, datasets=False)
    p.add_argument("--dataset", required=True, choices=BUS_DATASETS)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", required=True, help="CSV: path, label, group, split|fold")
    p.add_argument("--scheme", choices=("holdout", "kfold", "official"), default="holdout")
    p.add_argument("--k", type=int, default=5, help="folds for kfold / official (default 5)")
    p.add_argument("--conflict-policy", choices=("exclude", "keep"), default=None,
                   help="duplicate groups with conflicting labels (default: the profile's)")
    p.add_argument("--profile", help="profile whose [data] settings to use (default: built-in)")
    p.set_defaults(func=cmd_splits)

    p = sub.add_parser("phantom", help="write a synthetic data root in all four layouts")
    p.add_argument("--out", required=True, help="folder to create")
    p.add_argument("--n-per-class", type=int, default=8)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_phantom)
