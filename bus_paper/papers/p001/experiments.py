"""Paper 001 (Asif et al., Academic Radiology 2025): its models, runs, comparisons and explanations.

Only the abstract is available. It proposes a model built on MobileNetV2 and DenseNet121 "enhanced
with feature fusion and attention mechanisms", reports an AUC of 0.9834 on BUSI (and 0.9320 on a
private set), says that it "significantly" outperforms "traditional deep convolutional neural
network models" and radiologists, and explains it with Grad-CAM, saliency maps and SHAP. Our
reading of each part is in :mod:`bus_paper.papers.p001.fusion` (the model) and in the chapter.

Models (:data:`MODELS`), all trained by the book's engine with the same splits, epochs, optimiser,
augmentation and model selection as every other chapter:

- ``proposed``: MobileNetV2 + DenseNet121, CBAM on each, fused by concatenation; the two backbones
  start from their own SimCLR encoders (the ``mobilenetv2`` and ``densenet121`` baselines'
  pretraining on the unlabeled pool, our stand-in for the paper's ImageNet weights), the
  attention modules and heads from random initialisation (:func:`fusion_encoder`).
- ablations: the same model from random initialisation (what the SSL stand-in for ImageNet
  weights adds), without attention, and each backbone alone with attention (what fusion adds).
- baselines: the "traditional" CNNs as Table 1 wrappers (:mod:`bus_paper.models.baselines`):
  MobileNetV2 and DenseNet121 (each backbone alone, no attention), ResNet-50 and VGG16, each from
  its own SimCLR encoder (ResNet-50's is Table 1's, so its runs are shared) unless listed in
  ``random_init``.

:func:`default_plan` says which models get every seed and which are trained from random
initialisation at a profile; at ``cpu`` the plan fits the chapter in about 20 minutes on 2 cores.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ...config import Profile, load_profile
from ..p000.experiments import paired_table  # noqa: F401 (the chapter's name for it)

#: The abstract's numbers (AUC only; no other metric, interval, split or seed count is given).
PAPER_001 = {"busi": {"auc": 98.34}, "private": {"auc": 93.20}}
FUSED = ("mobilenetv2", "densenet121")


@dataclass(frozen=True)
class Model:
    """One row of the chapter: a Table 1 wrapper (``baseline``) or a :mod:`~.models.fusion`
    network (``backbones``, ``attention``); ``ssl`` False trains it from random initialisation."""
    key: str
    label: str
    group: str                        # proposed | ablation | baseline
    baseline: str | None = None
    backbones: tuple[str, ...] = ()
    attention: str = "cbam"
    ssl: bool = True


MODELS: dict[str, Model] = {m.key: m for m in (
    Model("proposed", "MobileNetV2 + DenseNet121 + CBAM, fused (SSL init)", "proposed",
          backbones=FUSED),
    Model("proposed_random", "Proposed, random init (no SSL)", "ablation", backbones=FUSED,
          ssl=False),
    Model("no_attention", "Fusion without attention", "ablation", backbones=FUSED,
          attention="none"),
    Model("mobilenetv2_cbam", "MobileNetV2 + CBAM (no fusion)", "ablation",
          backbones=("mobilenetv2",)),
    Model("densenet121_cbam", "DenseNet121 + CBAM (no fusion)", "ablation",
          backbones=("densenet121",)),
    Model("mobilenetv2", "MobileNetV2", "baseline", baseline="mobilenetv2"),
    Model("densenet121", "DenseNet121", "baseline", baseline="densenet121"),
    Model("resnet50", "ResNet-50", "baseline", baseline="resnet50"),
    Model("vgg16", "VGG16", "baseline", baseline="vgg16"),
)}
#: what each ablation is compared with, and what the difference measures
CONTRASTS: dict[str, str] = {
    "proposed_random": "SSL initialisation (our stand-in for ImageNet weights)",
    "no_attention": "attention (CBAM on each backbone)",
    "mobilenetv2_cbam": "fusion (adding DenseNet121 to MobileNetV2)",
    "densenet121_cbam": "fusion (adding MobileNetV2 to DenseNet121)",
}


def _model(key: str) -> Model:
    if key not in MODELS:
        raise KeyError(f"unknown model {key!r}; choose one of {', '.join(MODELS)}")
    return MODELS[key]


@dataclass(frozen=True)
class Plan:
    """Per model: its fine-tuning seeds and whether it starts from SSL weights."""
    seeds: dict[str, list[int]]
    ssl: dict[str, bool]

    def label(self, key: str) -> str:
        m = MODELS[key]
        return m.label + (" (random init)" if m.group == "baseline" and not self.ssl[key] else "")


def model_list(models: Sequence[str] | None, profile: Profile | str) -> list[str]:
    """The chapter's models: ``models`` (keys of :data:`MODELS`), else the profile's
    ``[papers.p001] variants``, else all of them; the proposed model always first, since every
    comparison is against it.

    >>> model_list(None, "smoke")[:2], "vgg16" in model_list(None, "smoke")
    (['proposed', 'proposed_random'], False)
    >>> model_list(["vgg16"], "cpu"), len(model_list(None, "cpu")) == len(MODELS)
    (['proposed', 'vgg16'], True)
    """
    if models is None:
        models = load_profile(profile).section("p001").get("variants") or list(MODELS)
    keys = [_model(k).key for k in models]
    return keys if "proposed" in keys else ["proposed", *keys]


def default_plan(profile: Profile | str, models: Sequence[str], seeds: Sequence[int],
                 one_seed: Sequence[str] | None = None,
                 random_init: Sequence[str] | None = None) -> Plan:
    """Seeds and initialisation of every model. ``one_seed``: models fine-tuned with the first
    seed only; ``random_init``: baselines trained from random initialisation instead of their own
    SimCLR encoder. None means the profile's ``[papers.p001]``: ``all_seeds`` (the models that get
    every seed; absent: all of them) and ``random_init``. The cpu profile (2 cores, 20 minutes)
    gives every seed to the proposed model and ResNet-50 only (Table 1 has their runs cached) and
    trains VGG16 (8x ResNet-50's cost at 96 px, 138 M parameters) from random init, sparing its
    SimCLR pretraining.

    >>> p = default_plan("cpu", ["proposed", "vgg16"], [0, 1, 2])
    >>> p.seeds, p.ssl
    ({'proposed': [0, 1, 2], 'vgg16': [0]}, {'proposed': True, 'vgg16': False})
    """
    section = load_profile(profile).section("p001")
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("need at least one seed")
    if one_seed is None:
        every = section.get("all_seeds")
        one_seed = [] if every is None else [k for k in models if k not in every]
    if random_init is None:
        random_init = list(section.get("random_init", ()))
    for k in [*models, *one_seed, *random_init]:
        _model(k)
    if bad := [k for k in random_init if MODELS[k].group != "baseline"]:
        raise ValueError(f"random_init is for baselines (ablations fix their own init): {bad}")
    return Plan({k: seeds[:1] if k in one_seed else list(seeds) for k in models},
                {k: MODELS[k].ssl and k not in random_init for k in models})


# ----------------------------------------------------------------------------- networks, encoders
def network_for(profile: Profile, key: str) -> dict[str, Any] | None:
    """The fusion config of model ``key`` at ``profile`` (None for a Table 1 wrapper): the
    profile's image size and the heads of ``profile.model``, as the baselines get them."""
    from .fusion import fusion_config
    m = _model(key)
    if m.baseline:
        return None
    pm = profile.model
    return fusion_config(profile.data.image_size, m.backbones, m.attention,
                         num_classes=pm.num_classes, proj_hidden=pm.proj_hidden,
                         proj_dim=pm.proj_dim, drop_rate=pm.drop_rate)


def baseline_encoder(profile: Profile, root, name: str) -> Path:
    """The (cached) SimCLR ``encoder.pt`` of Table 1 wrapper ``name`` (VGG16 with the capped
    epochs of :func:`bus_paper.papers.p000.experiments.pretraining_profile`, shared with paper 004)."""
    from ...train.pretraining import pretrain
    from ..p000.experiments import pretraining_profile
    return pretrain(pretraining_profile(profile, name), root, baseline=name)


def fusion_encoder(profile: Profile, root, cfg: Mapping[str, Any]) -> Path:
    """An ``encoder.pt`` for fusion network ``cfg`` whose backbones are the SimCLR encoders of
    the baselines of the same names (:func:`baseline_encoder`): the attention modules and the
    projection head keep the network's initialisation at seed 0 (as pretraining seeds it), so
    the file loads strictly. Cached under ``runs/compose/<key>/`` with the source encoders' keys
    in its key; ``sources`` and ``not_pretrained`` inside say what came from where."""
    from ...core.runs import recipe_key
    from ...models import build_network
    from ...paths import runs_dir
    from ...train.engine import save_checkpoint, seed_everything
    from ...train.pretraining import load_pretrained
    from .fusion import compose_encoder_state
    cfg = dict(cfg)
    states = {b: load_pretrained(baseline_encoder(profile, root, b))
              for b in cfg["backbones"]}
    sources = {b: s["key"] for b, s in states.items()}
    key = recipe_key("compose", network=cfg, sources=sources, seed=0)
    out = runs_dir() / "compose" / key / "encoder.pt"
    if out.exists():
        return out
    seed_everything(0)
    state, own = compose_encoder_state(build_network(cfg),
                                       {b: s["encoder"] for b, s in states.items()})
    first = states[cfg["backbones"][0]]
    save_checkpoint(out, {"encoder": state, "model_config": cfg, "normalizer": first["normalizer"],
                          "key": key, "pool": first["pool"], "n_images": first["n_images"],
                          "history": json.dumps([]), "seconds": 0.0, "sources": sources,
                          "not_pretrained": own})
    return out


def ssl_backbones(plan: Plan) -> list[str]:
    """The Table 1 wrappers whose SimCLR encoders ``plan`` starts from: each SSL baseline's own,
    and each backbone of an SSL fusion model (fusion adds no pretraining of its own), in order.

    >>> ssl_backbones(default_plan("cpu", ["proposed", "vgg16", "resnet50"], [0]))
    ['mobilenetv2', 'densenet121', 'resnet50']
    """
    out: list[str] = []
    for k, ssl in plan.ssl.items():
        if ssl:
            out += [b for b in (MODELS[k].backbones or (MODELS[k].baseline,)) if b not in out]
    return out


def encoder_table(profile: Profile, root, plan: Plan) -> pd.DataFrame:
    """Whether each SimCLR encoder the plan uses (:func:`ssl_backbones`) learned: epochs, first
    and last loss, the run's own chance loss (NT-Xent ln(2N - 1), N the batch or the pool when
    smaller) and the learning check (:func:`~bus_paper.core.stats.ssl_loss_check`). Reads the
    cached ``encoder.pt`` (pretrains it when absent, as the chapter's runs would)."""
    from ...core.stats import ssl_chance_loss, ssl_loss_check
    from ...train.pretraining import load_pretrained
    from ..p000.experiments import pretraining_profile
    rows = []
    for b in ssl_backbones(plan):
        state = load_pretrained(baseline_encoder(profile, root, b))
        losses = [h["train_loss"] for h in state["history"]]
        chance = ssl_chance_loss(state, pretraining_profile(profile, b).pretrain.batch_size)
        check = ssl_loss_check(losses, chance)
        rows.append({"backbone": b, "key": state["key"], "epochs": len(losses),
                     "first loss": losses[0], "last loss": losses[-1], "chance loss": chance,
                     "learned": check.passed, "check": check.detail,
                     "pretraining minutes (when run)": float(state["seconds"]) / 60,
                     "used by": ", ".join(k for k, ssl in plan.ssl.items() if ssl and b in
                                          (MODELS[k].backbones or (MODELS[k].baseline,)))})
    return pd.DataFrame(rows, columns=["backbone", "key", "epochs", "first loss", "last loss",
                                       "chance loss", "learned", "check",
                                       "pretraining minutes (when run)", "used by"])


def model_runs(profile: Profile, root, key: str, datasets: Sequence[str], seeds: Sequence[int],
               ssl: bool | None = None) -> list[dict[str, Any]]:
    """Fine-tune model ``key`` on every dataset and seed (cached); ``ssl`` None: the model's own
    setting. Each result gets ``row`` (the key) and ``ssl``."""
    from ...train import finetune
    m = _model(key)
    ssl = m.ssl if ssl is None else bool(ssl)
    cfg = network_for(profile, key)
    if cfg is None:
        enc = baseline_encoder(profile, root, m.baseline) if ssl else None
        kw: dict[str, Any] = {"baseline": m.baseline}
    else:
        enc = fusion_encoder(profile, root, cfg) if ssl else None
        kw = {"network": cfg}
    return [finetune(profile, d, s, root, encoder_path=enc, **kw)
            | {"row": key, "ssl": ssl} for d in datasets for s in seeds]


def run_plan(profile: Profile, root, plan: Plan, datasets: Sequence[str]) -> list[dict[str, Any]]:
    """:func:`model_runs` of every model of ``plan`` (in its order)."""
    out: list[dict[str, Any]] = []
    for key, seeds in plan.seeds.items():
        out += model_runs(profile, root, key, datasets, seeds, plan.ssl[key])
    return out


# ----------------------------------------------------------------------------- comparisons
def mean_roc(results: Sequence[Mapping[str, Any]], grid: int = 101
             ) -> tuple[np.ndarray, np.ndarray, float]:
    """ROC curve of runs on the same test images, averaged vertically over seeds (mean
    sensitivity at each 1 - specificity of ``grid`` points; Fawcett 2006): (fpr, tpr, mean AUC)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    from ..p000.analysis import aligned_test_predictions
    y, probs, _ = aligned_test_predictions(results)
    fpr = np.linspace(0, 1, grid)
    if not 0 < y.sum() < y.size:
        return fpr, np.full(grid, np.nan), float("nan")
    tprs, aucs = [], []
    for p in probs:
        f, t, _ = roc_curve(y, p)
        tprs.append(np.interp(fpr, f, t))
        aucs.append(roc_auc_score(y, p))
    tpr = np.mean(tprs, axis=0)
    tpr[0] = 0.0
    return fpr, tpr, float(np.mean(aucs))


# ----------------------------------------------------------------------------- explanations
def background_images(profile: Profile, root, dataset: str, n: int = 32, seed: int = 0
                      ) -> np.ndarray:
    """``n`` training images of ``dataset`` (uint8 ``[n, S, S]``, drawn at random, both classes)
    for SHAP's expectation: the data the model was fitted to, never a test image."""
    from ...train.data import load_labelled
    x = load_labelled(profile, Path(root), dataset).x["train"][:, 0].numpy()
    rng = np.random.default_rng(seed)
    return x[np.sort(rng.choice(len(x), size=min(n, len(x)), replace=False))]


def explain_run(result: Mapping[str, Any], profile: Profile, root, target: str = "label",
                methods: Sequence[str] | None = None, smoothgrad_n: int = 8,
                shap_nsamples: int = 16, n_background: int = 32, device: str = "cpu"
                ) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, dict[str, np.ndarray],
                           pd.DataFrame]:
    """Every explanation method on every test image of a fine-tuning ``result``, for the class
    ``target`` (:func:`bus_paper.explain.cam_targets`): (test predictions sorted by path, uint8
    images, masks, ``{method: maps}``, per-image scores with ``method``, ``dataset``, ``seed``)."""
    from ... import explain
    from ...data.preprocess import Normalizer
    from ...explain import saliency
    from ...train import load_deployable
    methods = list(methods or saliency.METHODS)
    model, state = load_deployable(result["checkpoint"], device)
    test, images, masks = explain.load_test_with_masks(result, root, state["image_size"])
    classes = explain.cam_targets(target, test["label"], test["prob"], result["threshold"])
    bg = background_images(profile, root, result["dataset"], n_background)
    maps = saliency.explanation_maps(model, images, Normalizer.from_dict(state["normalizer"]),
                                     classes, bg, methods, smoothgrad_n=smoothgrad_n,
                                     shap_nsamples=shap_nsamples)
    scores = saliency.method_scores(maps, masks, test.assign(target=classes)).assign(
        dataset=result["dataset"], seed=result["seed"], model=result["row"])
    return test, images, masks, maps, scores


# ----------------------------------------------------------------------------- the chapter's summary
def findings(results: Sequence[Mapping[str, Any]], paired: pd.DataFrame,
             localisation: pd.DataFrame, plan: Plan, datasets: Sequence[str], profile: Profile,
             n_boot: int = 1000, encoders: pd.DataFrame | None = None) -> list[str]:
    """The chapter's closing summary, one markdown bullet per finding: the proposed model against
    each baseline trained from random init *from random init itself* (so pretraining does not
    decide it), what each ablated part adds (``paired``: :func:`paired_table`), the explanations'
    share inside the lesion (``localisation``: :func:`bus_paper.explain.localisation_summary`),
    what cannot be repeated here, and the profile's caveat. ``encoders`` (:func:`encoder_table`):
    a first bullet on which SimCLR encoders learned; "what SSL initialisation adds" is then read
    as untested when one of the proposed model's encoders did not."""
    from ...explain.saliency import summary_text
    from ..p000.experiments import paired_difference
    lines = []
    failed: list[str] = []
    if encoders is not None and len(encoders):
        parts = [f"{r['backbone']} {r['first loss']:.2f} -> {r['last loss']:.2f} (chance "
                 f"{r['chance loss']:.2f}, {r['epochs']} epochs): "
                 + ("learned" if r["learned"] else "**did not learn**")
                 for _, r in encoders.iterrows()]
        failed = list(encoders.loc[~encoders["learned"].astype(bool), "backbone"])
        lines.append("- **SimCLR encoders** (first -> last pretraining loss): " + "; ".join(parts)
                     + "." + ("" if not failed else
                              f" A model that starts from {' and '.join(failed)}'s encoder starts "
                              "from weights that barely differ from random initialisation; its "
                              "comparisons with other models still hold (all are trained alike), "
                              "but what SSL initialisation adds is not tested at this budget."))
    untested = set(failed) & set(FUSED)
    auc = paired[paired["metric"] == "auc"]
    group = {k: MODELS[k].group for k in auc["model"]}
    for d in datasets:
        t = auc[auc["dataset"] == d]
        base = [k for k in t["model"] if group[k] == "baseline" and not plan.ssl[k]]
        mine = [r for r in results if r["row"] == "proposed_random" and r["dataset"] == d]
        if base and mine:
            parts = []
            for k in base:
                p = paired_difference(mine, [r for r in results if r["row"] == k and r["dataset"] == d],
                                      "auc", n_boot=n_boot)
                parts.append(f"{plan.label(k)} {p['diff']:+.1f} ({p['lo']:+.1f} to {p['hi']:+.1f})")
            lines.append(f"- **Both from random initialisation, {d.upper()}** (AUC of the proposed "
                         "model from random init minus each CNN from random init): "
                         + "; ".join(parts) + ".")
        abl = t[[group[k] == "ablation" for k in t["model"]]]
        if len(abl):
            parts = [f"{CONTRASTS[r['model']]}: {r['difference']:+.1f} points ({r['ci_low']:+.1f} "
                     f"to {r['ci_high']:+.1f}), interval {r['interval']}"
                     + (" (not tested at this budget: the encoder of "
                        f"{' and '.join(sorted(untested))} did not learn)"
                        if r["model"] == "proposed_random" and untested else "")
                     for _, r in abl.iterrows()]
            lines.append(f"- **What each part adds, {d.upper()}** (AUC of the proposed model minus "
                         "the model without that part): " + "; ".join(parts) + ".")
    lines.append("- **Explanations** (share of each map inside the lesion):")
    lines += ["  " + s for s in summary_text(localisation)]
    lines.append(
        "- **Not repeatable here**: the AUC of 0.9320 on the private data set (2,171 images of "
        "1,758 patients) and the comparison with radiologists. Neither the images nor any reader "
        "data are public.")
    side = profile.data.image_size // 32
    caveat = ("synthetic phantoms and a few training steps: a test of the plumbing, not of the models"
              if profile.data.synthetic else
              f"{profile.data.image_size} px, {profile.pretrain.epochs} SimCLR epochs on the "
              f"unlabeled pool instead of ImageNet weights, {profile.finetune.epochs} fine-tuning epochs")
    lines.append(
        f"\nProfile `{profile.name}` ({caveat}). At this size both backbones end in a {side}x{side} "
        f"map, so the spatial half of CBAM and Grad-CAM each work on {side ** 2} cells. With "
        "ImageNet weights, 224 px and longer training (the paper's setting, presumably), every "
        "model, the baselines too, would likely score higher. What these numbers test is the "
        "paper's *comparisons* under equal conditions and leak-free splits, and its headline AUC "
        "against a model trained the way this book can train it. Where the paired intervals "
        "contain 0, the test set is too small to rank the models, and the paper's single numbers, "
        "given without intervals, could not have ranked them either.")
    return lines
