"""The experiments of the paper-004 chapter, one task at a time (:func:`run_task`).

Tasks (:data:`TASKS`):

- ``mias_abnormal``: mini-MIAS, abnormal (benign or malignant) vs normal film;
- ``mias_malignant``: mini-MIAS, malignant vs benign, abnormal films only;
- ``busi``, ``udiat``: ultrasound, malignant vs benign;
- ``busbra_clinical``: BUS-BRA, malignant vs benign from the image, from the metadata a
  radiologist supplies (BI-RADS category, plus the scanner), and from both.

Splits. Ultrasound: the book's leak-free split (``profile.finetune.split_seed``); its train and
validation parts form the training part, the test part is touched once. mini-MIAS: a stratified
80/20 split *by woman* per seed (both films of a woman on one side), so the tiny test sets are
drawn several times. Everything that is fitted (PCA, the attention module, the classifiers, their
hyperparameters and thresholds) sees the training part only.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ...config import Profile
from ...core import MISSING
from .classical import CLASSIFIERS, BlockReducer, select_and_fit
from .evaluate import METRICS, Part, paired_difference, point_metrics, repeat_mean_ci
from .features import LABELS as BACKBONE_LABELS
from .features import Encoder, features, mias_encoder, ultrasound_encoder
from .fusion import fused_features, train_fusion
from .prep import Prep, RoiSet, roi_set


@dataclass(frozen=True)
class Task:
    key: str
    label: str
    modality: str                 # mammography | ultrasound
    dataset: str
    classes: tuple[str, ...]      # labels kept
    positive: tuple[str, ...]     # labels counted as the positive class
    kind: str = "image"           # image | clinical


TASKS: dict[str, Task] = {t.key: t for t in (
    Task("mias_abnormal", "mini-MIAS: abnormal vs normal", "mammography", "mias",
         ("normal", "benign", "malignant"), ("benign", "malignant")),
    Task("mias_malignant", "mini-MIAS: malignant vs benign", "mammography", "mias",
         ("benign", "malignant"), ("malignant",)),
    Task("busi", "BUSI: malignant vs benign", "ultrasound", "busi",
         ("benign", "malignant"), ("malignant",)),
    Task("udiat", "UDIAT: malignant vs benign", "ultrasound", "udiat",
         ("benign", "malignant"), ("malignant",)),
    Task("busbra_clinical", "BUS-BRA: image + clinical data", "ultrasound", "busbra",
         ("benign", "malignant"), ("malignant",), kind="clinical"),
)}


def task_list(task: str | Sequence[str]) -> list[str]:
    """``"all"``, one task key, or a list of them."""
    keys = list(TASKS) if task == "all" else [task] if isinstance(task, str) else list(task)
    unknown = [k for k in keys if k not in TASKS]
    if unknown:
        raise KeyError(f"unknown task(s) {unknown}; choose from {', '.join(TASKS)} or 'all'")
    return keys


@dataclass(frozen=True)
class Settings:
    """What the chapter varies; the defaults are the chapter's."""
    backbones: tuple[str, ...] = ("resnet50", "vgg16", "efficientnet_b0")
    vit: str | None = "vit_small"     # ultrasound only: a ViT (Table 1's DINO) beside the CNNs
    classifiers: tuple[str, ...] = CLASSIFIERS
    pca_dim: int = 64                 # PCA components per backbone
    inner_folds: int = 3              # cross-validation inside the training part
    mias_test_fraction: float = 0.2   # share of women in a mini-MIAS test part
    mias_pool: str = "all"            # MIAS pretraining pool: all films | each split's training films
    mias_pool_crops: int = 2          # pretraining crops per film
    fusion_width: int = 64            # attention fusion: token width (and fused vector width)
    rf_trees: int = 100               # random forest size
    nn_max_iter: int = 200            # neural network: most Adam epochs
    n_boot: int = 1000
    prep: Prep = field(default_factory=Prep)

    def __post_init__(self) -> None:
        for name in ("backbones", "classifiers"):   # a profile's TOML gives lists
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not self.backbones:
            raise ValueError("paper 004 needs at least one backbone")
        if self.mias_pool not in ("all", "train"):
            raise ValueError(f"mias_pool must be 'all' or 'train', got {self.mias_pool!r}")


def settings_for(profile: Profile, **overrides: Any) -> Settings:
    """The chapter's :class:`Settings`: the defaults, then the profile's ``[papers.p004]``, then
    ``overrides`` that are not None (the notebook's parameters)."""
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**{**profile.section("p004"), **given})
    except TypeError as err:
        raise KeyError(f"[papers.p004] of profile {profile.name!r}: {err}") from None


@dataclass(frozen=True)
class FeatureSet:
    key: str
    label: str
    backbones: tuple[str, ...]
    init: str | None              # ssl | dino | random (None: no image features)
    fusion: str = "none"          # none | concat | attention
    metadata: bool = False        # clinical variables as one more block


def feature_sets(task: Task, s: Settings) -> list[FeatureSet]:
    if task.kind == "clinical":
        return [FeatureSet("metadata", "BI-RADS + device (no image)", (), None, "none", True),
                FeatureSet("image", f"Image ({len(s.backbones)} backbones, concatenated)",
                           s.backbones, "ssl", "concat"),
                FeatureSet("image_metadata", "Image + BI-RADS + device", s.backbones, "ssl",
                           "concat", True)]
    sets = [FeatureSet(b, BACKBONE_LABELS.get(b, b), (b,), "ssl") for b in s.backbones]
    if task.modality == "ultrasound" and s.vit:
        sets.append(FeatureSet("vit", f"{BACKBONE_LABELS.get(s.vit, s.vit)} (DINO)", (s.vit,),
                               "dino"))
    sets += [FeatureSet("concat", "Fused: concatenation", s.backbones, "ssl", "concat"),
             FeatureSet("attention", "Fused: attention", s.backbones, "ssl", "attention"),
             FeatureSet("random_concat", "Random init, concatenated (floor)", s.backbones,
                        "random", "concat")]
    return sets


# ----------------------------------------------------------------------------- data
@dataclass
class Repeat:
    seed: int
    split: pd.DataFrame           # path, label, group, split (train | val | test)
    train: np.ndarray             # row positions in the ROI set (training part)
    test: np.ndarray


def task_frame(task: Task, profile: Profile, root: Path) -> pd.DataFrame:
    """All manifest rows of the task's data set (the smoke profile's cap applies to ultrasound)."""
    if task.dataset == "mias":
        from .mias import mias_manifest
        return mias_manifest(root)
    from ...train.data import manifest_for
    return manifest_for(profile, root, (task.dataset,))


def task_repeats(task: Task, profile: Profile, root: Path, frame: pd.DataFrame,
                 seeds: Sequence[int], s: Settings) -> list[Repeat]:
    """The splits: the book's leak-free split for ultrasound (one), one per seed for mini-MIAS."""
    from ...data.splits import make_splits
    if task.dataset == "mias":
        cfg = dataclasses.replace(profile.data, val_fraction=0.0,
                                  test_fraction=s.mias_test_fraction)
        return [Repeat(int(seed), make_splits(frame, "mias", int(seed), scheme="holdout",
                                              cfg=cfg, labels=task.classes), None, None)
                for seed in seeds]
    dups = None
    if task.dataset in ("busi", "udiat"):   # BUS-BRA: no near-duplicates (data chapter)
        from ...data.duplicates import load_duplicates
        dups = load_duplicates(frame, root, profile.data)
    split = make_splits(frame, task.dataset, profile.finetune.split_seed, scheme="holdout",
                        duplicates=dups, cfg=profile.data, labels=task.classes)
    return [Repeat(int(seeds[0]), split, None, None)]


def clinical_matrix(frame: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
    """BI-RADS (category, and one indicator per category) and the scanner (one indicator each)."""
    b = pd.to_numeric(frame["birads"], errors="coerce")
    b = b.fillna(b.median())
    cols, names = [b.to_numpy(float)], ["BI-RADS"]
    for v in sorted(b.unique()):
        cols.append((b == v).to_numpy(float))
        names.append(f"BI-RADS {v:g}")
    dev = frame["device"].fillna("unknown").astype(str)
    for v in sorted(dev.unique()):
        cols.append((dev == v).to_numpy(float))
        names.append(f"device {v}")
    return np.stack(cols, axis=1), names


# ----------------------------------------------------------------------------- results
@dataclass
class TaskResult:
    task: Task
    settings: Settings
    root: Path                    # the data root the images were read from
    roi: RoiSet
    repeats: list[Repeat]
    sets: list[FeatureSet]
    predictions: pd.DataFrame     # repeat, set, classifier, path, group, y, score, threshold, pred
    selection: pd.DataFrame       # repeat, set, classifier, params, cv_auc, threshold, seconds
    attention: pd.DataFrame       # test images: repeat, path, y, one weight per backbone
    encoders: dict[tuple[int, str, str], Encoder]
    models: dict[str, Any]        # first repeat: fitted NN per set, fusion (reducer, module)
    timings: dict[str, float]
    rule: pd.DataFrame | None = None   # busbra_clinical: BI-RADS >= 4 on the test part

    @property
    def task_rows(self) -> np.ndarray:
        """Positions (in the ROI set) of the task's images; the ROI set of mini-MIAS holds every
        film, the malignant-vs-benign task only the abnormal ones."""
        return np.union1d(self.repeats[0].train, self.repeats[0].test)

    @property
    def y(self) -> np.ndarray:
        """1 for the positive class, per ROI-set row."""
        return self.roi.frame["label"].isin(self.task.positive).to_numpy(int)

    def parts(self, set_key: str, classifier: str) -> list[Part]:
        p = self.predictions
        p = p[(p["set"] == set_key) & (p["classifier"] == classifier)]
        if p.empty:
            raise KeyError(f"no predictions for set {set_key!r}, classifier {classifier!r}")
        return [Part(g["y"].to_numpy(int), g["score"].to_numpy(float), g["pred"].to_numpy(int),
                     g["group"].to_numpy(str))
                for _, g in p.sort_values(["repeat", "path"]).groupby("repeat", sort=True)]

    def rule_parts(self) -> list[Part]:
        r = self.rule
        return [Part(g["y"].to_numpy(int), g["score"].to_numpy(float), g["pred"].to_numpy(int),
                     g["group"].to_numpy(str))
                for _, g in r.sort_values(["repeat", "path"]).groupby("repeat", sort=True)]


def _encoders(task: Task, profile: Profile, root: Path, rep: Repeat, roi: RoiSet,
              sets: list[FeatureSet], s: Settings) -> dict[tuple[str, str], Encoder]:
    need = sorted({(b, fs.init) for fs in sets if fs.init for b in fs.backbones})
    out = {}
    for b, init in need:
        if task.modality == "ultrasound":
            out[b, init] = ultrasound_encoder(profile, root, b, init)
        else:
            if s.mias_pool == "all":        # every film, shared by both mini-MIAS tasks
                from .mias import mias_manifest
                films = list(mias_manifest(root)["path"])
            else:                           # this split's training films only
                films = list(np.asarray(roi.paths)[rep.train])
            out[b, init] = mias_encoder(profile, root, b, films, s.prep, s.mias_pool_crops, init)
    return out


def run_task(task_key: str, profile: Profile, root: str | Path, seeds: Sequence[int],
             settings: Settings | None = None,
             log: Callable[[str], None] = lambda m: None) -> TaskResult:
    """Preprocess, extract (cached), fuse, select and fit every classifier on every feature set of
    one task, for every repeat; test predictions of all of them."""
    s = settings or Settings()
    task = TASKS[task_key]
    root = Path(root)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if task.dataset == "mias":
        from .phantom_mias import mias_root
        root = mias_root(root, profile.data.synthetic)
    frame = task_frame(task, profile, root)
    repeats = task_repeats(task, profile, root, frame, seeds, s)
    kept = sorted(set().union(*(set(r.split["path"]) for r in repeats)))
    if task.dataset != "mias":    # mini-MIAS: every film, so both tasks share ROIs and features
        frame = frame[frame["path"].isin(kept)]
    frame = frame.sort_values("path").reset_index(drop=True)
    roi = roi_set(task.dataset, root, s.prep, profile.data.image_size, frame)
    pos = pd.Series(np.arange(len(roi)), index=roi.paths)
    for r in repeats:
        train = r.split["split"].isin(["train", "val"]).to_numpy()
        r.train = pos.loc[r.split["path"][train]].to_numpy()
        r.test = pos.loc[r.split["path"][~train]].to_numpy()
    y_all = roi.frame["label"].isin(task.positive).to_numpy(int)
    timings["preprocessing"] = time.perf_counter() - t0
    log(f"{task_key}: {len(kept)} images, {len(repeats)} repeat(s), ROIs ready")

    sets = feature_sets(task, s)
    copies = s.prep.augment_copies if task.kind == "image" else 0
    meta = clinical_matrix(roi.frame)[0] if task.kind == "clinical" else None
    feats: dict[tuple[str, str, str], np.ndarray] = {}
    encoders: dict[tuple[int, str, str], Encoder] = {}
    preds, sel, att = [], [], []
    models: dict[str, Any] = {}
    timings.update(pretraining=0.0, features=0.0, fusion=0.0, classifiers=0.0)
    for ri, rep in enumerate(repeats):
        t = time.perf_counter()
        encs = _encoders(task, profile, root, rep, roi, sets, s)
        timings["pretraining"] += time.perf_counter() - t
        t = time.perf_counter()
        for (b, init), enc in encs.items():
            encoders[rep.seed, b, init] = enc
            if (b, init, enc.key) not in feats:
                feats[b, init, enc.key] = features(profile, enc, roi, s.prep, copies)
        timings["features"] += time.perf_counter() - t
        tr, te = rep.train, rep.test
        group_all = rep.split.set_index("path")["group"].reindex(roi.paths).astype(str).to_numpy()
        n_tr = len(tr)
        ytr = np.tile(y_all[tr], copies + 1)
        gtr = np.tile(group_all[tr], copies + 1)
        is_copy = np.repeat(np.arange(copies + 1) > 0, n_tr)
        for fs in sets:
            mats, blocks, start = [], [], 0
            for b in fs.backbones:
                f = feats[b, fs.init, encs[b, fs.init].key]
                mats.append(f)
                blocks.append((start, start + f.shape[2], True))
                start += f.shape[2]
            if fs.metadata:
                mats.append(np.broadcast_to(meta, (copies + 1, *meta.shape)))
                blocks.append((start, start + meta.shape[1], False))
            X = np.concatenate(mats, axis=2)                    # [copies + 1, N, D]
            Xtr = np.concatenate([X[c][tr] for c in range(copies + 1)])
            Xte = X[0][te]
            if fs.fusion == "attention":
                t = time.perf_counter()
                red = BlockReducer(blocks, s.pca_dim).fit(Xtr)
                fit = train_fusion(red.transform_blocks(Xtr), ytr, gtr, is_copy, seed=rep.seed,
                                   width=s.fusion_width, hidden=s.fusion_width)
                Xtr = fused_features(fit.model, red.transform_blocks(Xtr))[0]
                Xte, w = fused_features(fit.model, red.transform_blocks(Xte))
                blocks = [(0, Xtr.shape[1], False)]
                att.append(pd.DataFrame(w, columns=list(fs.backbones)).assign(
                    repeat=rep.seed, path=np.asarray(roi.paths)[te], y=y_all[te],
                    epochs=fit.best_epoch + 1))
                if ri == 0:
                    models["fusion"] = (red, fit.model, fs.backbones)
                timings["fusion"] += time.perf_counter() - t
            t = time.perf_counter()
            fitted = select_and_fit(Xtr, ytr, gtr, is_copy, blocks, s.classifiers, s.pca_dim,
                                    s.inner_folds, rep.seed, rf_trees=s.rf_trees,
                                    nn_max_iter=s.nn_max_iter)
            timings["classifiers"] += time.perf_counter() - t
            for name, f in fitted.items():
                score = f.score(Xte)
                preds.append(pd.DataFrame({
                    "repeat": rep.seed, "set": fs.key, "classifier": name,
                    "path": np.asarray(roi.paths)[te], "group": group_all[te], "y": y_all[te],
                    "score": score, "threshold": f.threshold,
                    "pred": (score >= f.threshold).astype(int)}))
                sel.append({"repeat": rep.seed, "set": fs.key, "classifier": name,
                            "params": str(f.params), "cv_auc": f.cv_auc,
                            "threshold": f.threshold, "train_images": n_tr,
                            "train_rows": len(ytr), "seconds": f.seconds})
            if ri == 0 and "nn" in fitted and fs.fusion == "none" and not fs.metadata:
                models[f"nn:{fs.key}"] = (fitted["nn"], fs.backbones, fs.init)
        log(f"{task_key}: repeat {rep.seed} done ({time.perf_counter() - t0:.0f} s)")
    rule = None
    if task.kind == "clinical":
        b = pd.to_numeric(roi.frame["birads"], errors="coerce").to_numpy(float)
        rule = pd.concat([pd.DataFrame({
            "repeat": r.seed, "path": np.asarray(roi.paths)[r.test],
            "group": r.split.set_index("path")["group"].reindex(
                np.asarray(roi.paths)[r.test]).astype(str).to_numpy(),
            "y": y_all[r.test], "score": b[r.test],
            "pred": (b[r.test] >= 4).astype(int)}) for r in repeats], ignore_index=True)
    timings["total"] = time.perf_counter() - t0
    return TaskResult(task, s, root, roi, repeats, sets, pd.concat(preds, ignore_index=True),
                      pd.DataFrame(sel), pd.concat(att, ignore_index=True) if att else
                      pd.DataFrame(), encoders, models, timings, rule)


# ----------------------------------------------------------------------------- tables
def encoder_table(results: dict[str, TaskResult], profile: Profile) -> pd.DataFrame:
    """The self-supervised encoders each task's features came from, with what their learning
    check needs (:mod:`.claims`): first and last pretraining loss and the run's own chance loss
    (NT-Xent: ln(2N - 1) with N the batch, or the pool when smaller; DINO: ln K). One row per
    task, backbone and init; random-init encoders have no loss and no row."""
    from ...core.stats import ssl_chance_loss
    from ...train.pretraining import load_pretrained
    from ..p000.experiments import pretraining_profile
    rows, seen = [], set()
    states: dict[str, dict] = {}  # the tasks of one modality share their encoders: read each once
    for task, res in results.items():
        for (_, backbone, init), enc in sorted(res.encoders.items()):
            if enc.path is None or (task, backbone, init) in seen:
                continue
            seen.add((task, backbone, init))
            if enc.path not in states:
                states[enc.path] = load_pretrained(Path(enc.path))
            state = states[enc.path]
            hist = state["history"]
            batch = pretraining_profile(profile, backbone).pretrain.batch_size
            chance = ssl_chance_loss(state, batch)
            rows.append({"task": task, "modality": enc.modality, "backbone": backbone,
                         "init": init, "key": enc.key, "epochs": len(hist),
                         "first loss": hist[0]["train_loss"], "last loss": hist[-1]["train_loss"],
                         "chance loss": chance})
    return pd.DataFrame(rows, columns=["task", "modality", "backbone", "init", "key", "epochs",
                                       "first loss", "last loss", "chance loss"])


def metrics_table(result: TaskResult, n_boot: int | None = None, seed: int = 0) -> pd.DataFrame:
    """One row per (feature set, classifier): every metric (repeat mean, 95% CI), in %, the
    confusion counts summed over repeats and the inner-CV AUC."""
    n_boot = n_boot or result.settings.n_boot
    rows = []
    labels = {fs.key: fs.label for fs in result.sets}
    cv = result.selection.groupby(["set", "classifier"])["cv_auc"].mean()
    for fs in result.sets:
        for clf in result.settings.classifiers:
            parts = result.parts(fs.key, clf)
            ci = repeat_mean_ci(parts, n_boot, seed)
            row = {"set": fs.key, "features": labels[fs.key], "classifier": clf,
                   "repeats": len(parts), "test images": int(np.mean([len(p.y) for p in parts]))}
            for m in METRICS:
                row[m], row[f"{m}_lo"], row[f"{m}_hi"] = (100 * v for v in ci[m])
            counts = [point_metrics(p) for p in parts]
            for k in ("tp", "fp", "tn", "fn"):
                row[k] = int(sum(c[k] for c in counts))
            row["inner-CV AUC"] = 100 * float(cv.get((fs.key, clf), np.nan))
            rows.append(row)
    return pd.DataFrame(rows)


def rule_table(result: TaskResult, n_boot: int | None = None, seed: int = 0) -> pd.DataFrame:
    """The BI-RADS rule (category >= 4 = malignant; AUC from the category) on the test part."""
    if result.rule is None:
        return pd.DataFrame()
    ci = repeat_mean_ci(result.rule_parts(), n_boot or result.settings.n_boot, seed)
    row = {"set": "birads_rule", "features": "BI-RADS ≥ 4 (radiologist, no learning)",
           "classifier": "rule"}
    for m in METRICS:
        row[m], row[f"{m}_lo"], row[f"{m}_hi"] = (100 * v for v in ci[m])
    return pd.DataFrame([row])


def fmt(table: pd.DataFrame, metrics: Sequence[str] = METRICS) -> pd.DataFrame:
    """"value (lo–hi)" strings per metric."""
    out = pd.DataFrame(index=table.index)
    for m in metrics:
        out[m] = [f"{v:.1f} ({lo:.1f}–{hi:.1f})" if np.isfinite(v) else MISSING
                  for v, lo, hi in zip(table[m], table[f"{m}_lo"], table[f"{m}_hi"])]
    return out


def paired_table(result: TaskResult, pairs: Sequence[tuple[str, str]], metric: str = "auc",
                 n_boot: int | None = None, seed: int = 0) -> pd.DataFrame:
    """``a - b`` per classifier for each (a, b) pair of feature sets, on the same test images."""
    rows = []
    labels = {fs.key: fs.label for fs in result.sets} | {"birads_rule": "BI-RADS ≥ 4 rule"}
    for a, b in pairs:
        for clf in result.settings.classifiers:
            pb = result.rule_parts() if b == "birads_rule" else result.parts(b, clf)
            d = paired_difference(result.parts(a, clf), pb, metric,
                                  n_boot or result.settings.n_boot, seed)
            rows.append({"a": a, "b": b, "comparison": f"{labels[a]} − {labels[b]}",
                         "classifier": clf, "metric": metric, "difference": 100 * d["diff"],
                         "lo": 100 * d["lo"], "hi": 100 * d["hi"], "p": d["p"]})
    return pd.DataFrame(rows)
