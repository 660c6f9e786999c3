"""`bus-paper pretrain | train | predict | bench`."""

from __future__ import annotations

import argparse
import json
import os
import shutil


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
    return p.replace(**overrides) if overrides else p


def _cmd_pretrain(args) -> int:
    from .pretraining import load_pretrained, pretrain
    path = pretrain(_profile(args), args.data_root, force=args.force)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    state = load_pretrained(path)
    last = state["history"][-1] if state["history"] else {}
    print(f"encoder: {path}\nimages: {state['n_images']}  epochs: {len(state['history'])}  "
          f"final loss: {last.get('train_loss', float('nan')):.4f}")
    return 0


def _cmd_train(args) -> int:
    from ..paths import runs_dir
    from .finetuning import finetune
    profile = _profile(args)
    if args.no_pretrain:
        profile = profile.replace(**{"pretrain.enabled": False})
    for dataset in args.dataset or profile.finetune.datasets:
        for seed in args.seed if args.seed is not None else profile.finetune.seeds:
            r = finetune(profile, dataset, seed, args.data_root, force=args.force)
            if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 reports
                continue
            m = r["metrics"]
            print(f"{dataset} seed {seed}: AUC {m['auc']:.3f} acc {m['accuracy']:.3f} "
                  f"F1 {m['f1']:.3f} (threshold {r['threshold']:.3f}, n_test {r['n']['test']})")
            stable = runs_dir() / "models" / f"{profile.name}_{dataset}_seed{seed}.pt"
            stable.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(r["checkpoint"], stable)  # a documented, stable place for `predict`
            print(f"  checkpoint: {stable}")
    return 0


def _cmd_experiment(args) -> int:
    """Run (or reuse from the cache) the training runs behind a results chapter. Under torchrun
    every run is data-parallel; the chapter notebook then finds them all cached."""
    from .. import experiments as ex
    profile = _profile(args)
    # the chapters' defaults: label efficiency on BUSI only; ablations pretrain per variant on gpu
    datasets = args.dataset or (["busi"] if args.chapter == "label_efficiency"
                                else list(profile.finetune.datasets))
    own = args.own_pretraining if args.own_pretraining is not None else profile.name == "gpu"
    seeds = args.seed if args.seed is not None else list(profile.finetune.seeds)
    results = []
    if args.chapter == "table1":
        for row in args.only or [r.key for r in ex.TABLE1]:
            results += ex.table1_runs(profile, args.data_root, row, datasets, seeds)
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
    from .predict import predict_paths
    df, skipped = predict_paths(args.checkpoint, args.paths, args.heatmaps)
    df.to_csv(args.out, index=False)
    print(f"{len(df)} images -> {args.out}; {len(skipped)} skipped (unreadable)")
    return 0


def _cmd_bench(args) -> int:
    import time

    from ..provenance import provenance
    from .bench import run_bench
    from .data import resolve_root
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

    p = sub.add_parser("train", help="fine-tune + evaluate; writes runs/finetune/<key>/model.pt")
    common(p)
    p.add_argument("--dataset", action="append", help="busi | udiat (default: the profile's)")
    p.add_argument("--seed", type=int, action="append", help="fine-tuning seed(s)")
    p.add_argument("--no-pretrain", action="store_true", help="random init (No-SSL ablation)")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("experiment", help="the training runs behind a results chapter (cached; "
                       "e.g. under torchrun before running the chapter)")
    common(p)
    p.add_argument("chapter", choices=["table1", "ablations", "label_efficiency"])
    p.add_argument("--only", action="append", metavar="NAME",
                   help="Table 1 row or ablation variant (default: all), e.g. dino_vit, no_fusion")
    p.add_argument("--dataset", action="append", help="busi | udiat (default: the profile's)")
    p.add_argument("--seed", type=int, action="append", help="fine-tuning seed(s)")
    p.add_argument("--fraction", type=float, action="append",
                   help="label_efficiency: share(s) of the training labels (default 0.1 0.25 0.5 1)")
    p.add_argument("--own-pretraining", action=argparse.BooleanOptionalAction, default=None,
                   help="ablations: pretrain each variant with its change (default: on for gpu)")
    p.set_defaults(func=_cmd_experiment)

    p = sub.add_parser("predict", help="malignancy probability per image from a trained checkpoint")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("paths", nargs="+", help="image files or folders")
    p.add_argument("--out", required=True, help="CSV: path, prob_malignant, prediction, threshold")
    p.add_argument("--heatmaps", default=None, help="folder for Grad-CAM overlays (optional)")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("bench", help="time our pretraining step vs lightly's SimCLR recipe")
    common(p)
    p.add_argument("--json", default=None)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--ref-workers", type=int, default=None,
                   help="DataLoader workers of the reference (default: the fastest of 0, 1, 2)")
    p.set_defaults(func=_cmd_bench)
