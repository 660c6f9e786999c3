"""`bus-paper pretrain | train | predict | bench`."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def _profile(args):
    from ..config import load_profile
    p = load_profile(args.profile)
    overrides = {}
    for item in getattr(args, "set", None) or []:
        if "=" not in item:
            raise ValueError(f"--set expects section.field=value, got {item!r}")
        k, v = item.split("=", 1)
        try:  # numbers, booleans, lists as JSON; anything else is a plain string
            overrides[k] = json.loads(v)
        except json.JSONDecodeError:
            overrides[k] = v
    try:
        return p.replace(**overrides) if overrides else p
    except (ValueError, KeyError) as err:  # one line that names the option, before any work
        raise ValueError(f"--set {err.args[0] if err.args else err}") from None


def _cmd_pretrain(args) -> int:
    from ..train.pretraining import load_pretrained, pretrain
    path = pretrain(_profile(args), args.data_root, force=args.force)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    state = load_pretrained(path)
    last = state["history"][-1] if state["history"] else {}
    print(f"encoder: {path}\nimages: {state['n_images']}  epochs: {len(state['history'])}  "
          f"final loss: {last.get('train_loss', float('nan')):.4f}")
    return 0


def _cmd_train(args) -> int:
    from ..config import load_profile
    from ..paths import runs_dir
    from ..train.engine import load_checkpoint, save_checkpoint
    from ..train.finetuning import finetune, model_recipe
    profile = _profile(args)
    if args.no_pretrain:
        profile = profile.replace(**{"pretrain.enabled": False})
    runs = [(d, s) for d in args.dataset or profile.finetune.datasets
            for s in (args.seed if args.seed is not None else profile.finetune.seeds)]
    if args.no_pretrain and any(d == ALL for d, _ in runs):
        raise ValueError("--dataset all trains the SSL-pretrained proposed model; "
                         "--no-pretrain is not available for it")
    if args.model_out and len(runs) > 1:
        raise ValueError(f"--model-out names one file, but this trains {len(runs)} models "
                         "(give one --dataset and one --seed)")
    base = load_profile(args.profile)  # the recipe's overrides are the differences from it
    # where each model goes, checked before any training: never replace another recipe's model
    targets = {run: _model_file(profile, base, *run, runs_dir(), args.model_out) for run in runs}
    if not args.force:
        for target, recipe in targets.values():
            _refuse_other_recipe(target, recipe)
    for dataset, seed in runs:
        if dataset == ALL:
            r = _train_all_sites(profile, args.data_root, seed)
        else:
            r = finetune(profile, dataset, seed, args.data_root, force=args.force)
        if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 reports
            continue
        m = r["metrics"]
        print(f"{dataset} seed {seed}: AUC {m['auc']:.3f} acc {m['accuracy']:.3f} "
              f"F1 {m['f1']:.3f} (threshold {r['threshold']:.3f}, n_test {r['n']['test']})")
        target = targets[dataset, seed][0]
        state = load_checkpoint(r["checkpoint"]) | r.get("calibration", {})
        state["recipe"] = model_recipe(profile, dataset, seed, Path(r["run_dir"]).name,
                                       r["pretrained"], base)
        save_checkpoint(target, state)  # atomic: a killed copy leaves the old file or the new one
        print(f"  model: {target}  ({state['recipe']['summary']})")
    return 0


#: ``--dataset all``: one deployable model on every labelled ultrasound site (issue 19)
ALL = "all"


def _train_all_sites(profile, root, seed: int) -> dict:
    from ..papers.beyond.generalisation import deployable_model
    r = deployable_model(profile, root, seed)
    ece = r["calibration"]["ece_test"]
    print(f"calibration: temperature {r['calibration']['temperature']:.3f} (fitted on the pooled "
          f"validation images); ECE on the pooled test parts {ece['before']:.3f} -> "
          f"{ece['after']:.3f}")
    return r


def _model_file(profile, base, dataset: str, seed: int, models_root: Path,
                model_out: str | None) -> tuple[Path, dict]:
    """(file, recipe) of the deployable model `train` writes. The shipped recipe gets the
    documented name ``<profile>_<dataset>_seed<k>.pt``; any other (``--set``, ``--no-pretrain``)
    that name plus a short hash of its overrides, so it never takes the default model's place."""
    import hashlib

    from ..train.finetuning import model_recipe
    recipe = model_recipe(profile, dataset, seed, "", profile.pretrain.enabled, base)
    if model_out:
        return Path(model_out), recipe
    name = f"{profile.name}_{dataset}_seed{seed}"
    if recipe["overrides"]:
        name += "_" + hashlib.sha1(" ".join(recipe["overrides"]).encode()).hexdigest()[:8]
    return models_root / "models" / f"{name}.pt", recipe


def _refuse_other_recipe(target: Path, recipe: dict) -> None:
    """ValueError (one line) if ``target`` holds anything but a model of the same recipe."""
    from ..train.finetuning import ModelFileError, read_deployable, same_recipe
    if not target.exists() or (target.is_file() and target.stat().st_size == 0):
        return  # nothing, or the 0-byte leftover of a killed plain copy: nothing to keep
    try:
        old = read_deployable(target).get("recipe")
        held = old["summary"] if old else "a model whose recipe is not recorded (older bus-paper)"
    except ModelFileError as err:
        old, held = None, str(err).split(": ", 1)[-1]
    if not same_recipe(old, recipe):
        raise ValueError(f"{target} holds another model ({held}); not replacing it with this "
                         f"one ({recipe['summary']}): "
                         "pass --force to retrain and replace it, or --model-out PATH to write "
                         "this model elsewhere")


def _cmd_experiment(args) -> int:
    """Run (or reuse from the cache) the training runs behind a results chapter. Under torchrun
    every run is data-parallel; the chapter notebook then finds them all cached."""
    from ..papers.p000 import experiments as ex
    profile = _profile(args)
    if args.chapter == "ssl_budget":  # its budgets, folds and data sets: [papers.p000]
        from ..papers.p000 import budget
        curve, _, _ = budget.budget_curve(profile, args.data_root)
        if int(os.environ.get("RANK", "0")) == 0:
            print(curve[["dataset", "ssl_epochs", "auc", "ci_low", "ci_high", "diff", "diff_low",
                         "diff_high", "knn_auc"]].round(1).to_string(index=False))
        return 0
    if args.chapter == "generalisation":  # the chapter's defaults: its four sites, two rows
        from ..papers.beyond import generalisation as gen
        seeds = args.seed if args.seed is not None else list(profile.finetune.seeds)
        runs = gen.chapter_runs(profile, args.data_root, args.only or ["proposed", "simclr_resnet50"],
                                args.dataset or list(gen.SITES), seeds, seeds[:args.pooled_seeds])
        if int(os.environ.get("RANK", "0")) == 0:
            for r in runs:
                print(f"{r['row']:<16} {r['kind']:<16} {r['train']:<28} seed {r['seed']}: "
                      f"AUC {r['auc']:.3f}  ({r['minutes']:.1f} min when run)  {r['run_dir']}")
        return 0
    if args.chapter == "paper002":  # the chapter's defaults: six variants, the profile's folds
        from ..papers.p002 import experiments as p2
        if args.seed and len(args.seed) > 1:
            raise ValueError("paper002: one --seed (the chapter's seed parameter)")
        results = p2.run_all(profile, args.data_root, p2.parse_variants(args.only),
                             p2.parse_folds(args.fold, profile), seed=(args.seed or [0])[0])
        if int(os.environ.get("RANK", "0")) == 0:
            for r in results:
                print(f"{r['variant']:<14} fold {r['fold']}: AUC {r['metrics']['auc']:.3f}  "
                      f"({r['seconds'] / 60:.1f} min when run)  {r['run_dir']}")
        return 0
    # the chapters' defaults: label efficiency on BUSI only, paper 001 on its chapter's BUSI and
    # UDIAT; ablations pretrain per variant where the profile says so ([papers.p000]
    # ablations_own_pretraining: gpu)
    datasets = args.dataset or (["busi"] if args.chapter == "label_efficiency"
                                else ["busi", "udiat"] if args.chapter == "paper001"
                                else list(profile.finetune.datasets))
    own = args.own_pretraining if args.own_pretraining is not None else ex.own_pretraining(profile)
    seeds = args.seed if args.seed is not None else list(profile.finetune.seeds)
    results = []
    if args.chapter == "table1":
        for row in args.only or [r.key for r in ex.TABLE1]:
            results += ex.table1_runs(profile, args.data_root, row, datasets, seeds)
    elif args.chapter == "paper001":  # the chapter's models, seeds and plan
        from ..papers.p001 import experiments as p1
        plan = p1.default_plan(profile, p1.model_list(args.only, profile), seeds)
        results = p1.run_plan(profile, args.data_root, plan, datasets)
    elif args.chapter == "ablations":
        for key in args.only or list(ex.ABLATIONS):
            results += ex.ablation_runs(profile, args.data_root, key, datasets, seeds,
                                        own_pretraining=own)
    else:  # label_efficiency
        for fraction in args.fraction or [0.1, 0.25, 0.5, 1.0]:
            for ssl in (True, False):
                results += ex.label_fraction_runs(profile, args.data_root, fraction, ssl,
                                                  datasets, seeds)
    if int(os.environ.get("RANK", "0")) == 0:
        for r in results:
            print(f"{r['row']:<18} {r['dataset']:<6} seed {r['seed']}: AUC {r['metrics']['auc']:.3f}"
                  f"  ({r['seconds'] / 60:.1f} min when run)  {r['run_dir']}")
    return 0


def _cmd_predict(args) -> int:
    import sys

    import pandas as pd

    from .. import papers  # noqa: F401  (the papers' model families, so any model file loads)
    from ..train.predict import predict_paths
    out = Path(args.out)
    # checked before any work: a missing folder must not cost the whole run
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; give a CSV file name")
    if not out.parent.is_dir() or not os.access(out.parent, os.W_OK):
        raise ValueError(f"--out {out}: folder {out.parent} does not exist or is not writable")
    heat = Path(args.heatmaps) if args.heatmaps is not None else None
    if heat is not None and heat.exists() and not heat.is_dir():
        raise ValueError(f"--heatmaps {heat} is a file; give a folder")
    skipped_csv = out.with_name(f"{out.stem}_skipped.csv")
    df, skipped = predict_paths(args.checkpoint, args.paths, heat)
    df.to_csv(out, index=False)
    pd.DataFrame(skipped, columns=["path", "reason"]).to_csv(skipped_csv, index=False)
    flagged = int((df["flag"].fillna("") != "").sum()) if len(df) else 0
    print(f"{len(df)} images -> {out} ({flagged} flagged as far from the training images); "
          f"{len(skipped)} skipped -> {skipped_csv}", file=sys.stderr)
    if heat is not None and len(df):
        print(f"heatmaps: {heat / 'index.html'} (open it in a browser)", file=sys.stderr)
    if df.empty:
        why = f"all {len(skipped)} input files skipped" if skipped else "no image file found"
        print(f"bus-paper predict: error: nothing was predicted ({why})", file=sys.stderr)
        return 1
    return 0


def _cmd_bench(args) -> int:
    import time

    from ..provenance import provenance
    from ..train.bench import run_bench
    from ..train.data import resolve_root
    started, profile = time.time(), _profile(args)
    res = run_bench(profile, args.data_root, steps=args.steps, ref_workers=args.ref_workers)
    res["provenance"] = provenance(profile, 0, resolve_root(profile, args.data_root),
                                   profile.pretrain.pool, started)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=1)
    print(json.dumps({k: v for k, v in res.items() if not isinstance(v, dict)}, indent=1))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    def common(p, profile_default="cpu"):
        p.add_argument("--profile", default=profile_default, help="smoke | cpu | gpu | a TOML file")
        p.add_argument("--data-root", default=None, help="data root (default: $BUS_PAPER_DATA, ...)")
        p.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE",
                       help="override a profile field, e.g. --set model.fusion=false")

    p = sub.add_parser("pretrain", help="self-supervised pretraining on the unlabeled pool (cached)")
    common(p)
    p.add_argument("--force", action="store_true", help="retrain even if a cached encoder exists")
    p.set_defaults(func=_cmd_pretrain)

    p = sub.add_parser("train", help="fine-tune + evaluate; writes the model to runs/models/")
    common(p)
    p.add_argument("--dataset", action="append",
                   help="busi | udiat | busbra | busuclm | all (all four sites pooled, calibrated:"
                   " the model for images from another hospital); default: the profile's")
    p.add_argument("--seed", type=int, action="append", help="fine-tuning seed(s)")
    p.add_argument("--no-pretrain", action="store_true", help="random init (No-SSL ablation)")
    p.add_argument("--force", action="store_true",
                   help="retrain even if cached, and replace the model file whatever it holds")
    p.add_argument("--model-out", default=None, metavar="PATH",
                   help="write the deployable model here (default: runs/models/<profile>_<dataset>"
                        "_seed<k>[_<recipe hash>].pt; the hash for --set / --no-pretrain recipes)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("experiment", help="the training runs behind a results chapter (cached; "
                       "e.g. under torchrun before running the chapter)")
    common(p)
    p.add_argument("chapter", choices=["table1", "ablations", "label_efficiency", "ssl_budget",
                                       "generalisation", "paper001", "paper002"])
    p.add_argument("--only", action="append", metavar="NAME",
                   help="Table 1 row or ablation variant (default: all), e.g. dino_vit, no_fusion; "
                   "generalisation: Table 1 rows (default: proposed, simclr_resnet50); paper001: "
                   "its models (default: the profile's); paper002: its variants (default: all six)")
    p.add_argument("--fold", type=int, action="append",
                   help="paper002: BUS-BRA fold(s) 0-4 (default: the profile's)")
    p.add_argument("--dataset", action="append", help="busi | udiat (default: the profile's); "
                   "generalisation: its sites (default: busi udiat busbra busuclm)")
    p.add_argument("--pooled-seeds", type=int, default=3, metavar="N",
                   help="generalisation: the pooled runs use the first N seeds (default 3, as the "
                   "chapter)")
    p.add_argument("--seed", type=int, action="append", help="fine-tuning seed(s)")
    p.add_argument("--fraction", type=float, action="append",
                   help="label_efficiency: share(s) of the training labels (default 0.1 0.25 0.5 1)")
    p.add_argument("--own-pretraining", action=argparse.BooleanOptionalAction, default=None,
                   help="ablations: pretrain each variant with its change (default: on for gpu)")
    p.set_defaults(func=_cmd_experiment)

    p = sub.add_parser("predict", help="malignancy probability per image from a trained checkpoint")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("paths", nargs="+", help="image files or folders: PNG, JPEG, BMP, TIFF (8/16-"
                   "bit, float), GIF, PGM, WebP, DICOM (single frame; found by content in folders)")
    p.add_argument("--out", required=True, help="CSV: path, prob_malignant, prediction, threshold, "
                   "flag; files not predicted go to <out>_skipped.csv with the reason")
    p.add_argument("--heatmaps", default=None, metavar="DIR",
                   help="write per image a PNG (image | Grad-CAM overlay, titled with the "
                   "probability and decision) and DIR/index.html, a gallery page of them all")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("bench", help="time our pretraining step vs lightly's SimCLR recipe")
    common(p)
    p.add_argument("--json", default=None)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--ref-workers", type=int, default=None,
                   help="DataLoader workers of the reference (default: the fastest of 0, 1, 2)")
    p.set_defaults(func=_cmd_bench)
