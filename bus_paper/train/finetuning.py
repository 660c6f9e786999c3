"""Supervised fine-tuning (benign vs malignant) and evaluation on a leak-free split.

Model selection (best epoch) and the decision threshold use the validation split only; the test
split is touched once, at the end, by the selected model at the selected threshold.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..augment import build_augment
from ..config import Profile
from ..core.runs import SELECT_VAL_AUC_YOUDEN, config_part, recipe_key, recipe_version
from ..metrics import binary_metrics, bootstrap_ci, choose_threshold
from ..models import build_network
from ..paths import runs_dir
from .data import (
    LABELS,
    Fold,
    LabelledSplits,
    Normalizer,
    load_labelled,
    resolve_root,
)
from .engine import (
    Stage,
    autocast,
    barrier,
    clear_run_dir,
    hold_run_lock,
    infer,
    init_distributed,
    load_checkpoint,
    main_first,
    prepare_input,
    read_cached_run,
    releases_run_locks,
    save_checkpoint,
    seed_everything,
    select_device,
    write_json,
)


def predict_proba(model: torch.nn.Module, x_u8: torch.Tensor, normalizer: Normalizer,
                  run, batch_size: int = 64) -> np.ndarray:
    """P(malignant) for uint8 images [N, 1, S, S], in eval mode, batched, under autocast."""
    return infer(model, x_u8, normalizer, run,
                 lambda m, x: torch.softmax(m(x).float(), dim=1)[:, 1], batch_size).numpy()


class FinetuneStage(Stage):
    name = "finetune"

    def __init__(self, profile: Profile, data: LabelledSplits, seed: int, run_dir: Path, key: str,
                 encoder: dict[str, Any] | None,
                 model_config: dict[str, Any] | None = None, strict: bool = True):
        f = profile.finetune
        self.profile, self.data = profile, data
        seed_everything(seed)  # the classifier's (and, from scratch, the encoder's) initial weights
        model = build_network(model_config or dataclasses.asdict(profile.model))
        # not strict: an ablation variant (no fusion, one scale) takes the full model's encoder;
        # its heads differ in width, so only the matching (encoder) weights load
        self.skipped = model.load_encoder_state_dict(encoder, strict=strict) if encoder else []
        self.augment = build_augment(f.augment)
        super().__init__(model, run_dir, epochs=f.epochs, batch_size=f.batch_size, lr=f.lr,
                         weight_decay=f.weight_decay, seed=seed, run=profile.run,
                         n_train=len(data.y["train"]), max_steps=f.max_steps, key=key,
                         patience=f.patience)
        self.augment = self.augment.to(self.device)
        # drop_last keeps BatchNorm away from a batch of one, unless the set is smaller than a batch
        self.drop_last = len(data.y["train"]) > f.batch_size

    def train_step(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.data.x["train"][idx].to(self.device).float().div_(255.0)
        y = self.data.y["train"][idx].to(self.device)
        with torch.no_grad():
            x = prepare_input(self.data.normalizer(self.augment(x)), self.run)
        with autocast(self.device, self.run.precision):
            logits = self.ddp_model(x)
        return F.cross_entropy(logits.float(), y)

    def validate(self) -> dict[str, float]:
        p = predict_proba(self.model, self.data.x["val"], self.data.normalizer, self.run)
        y = self.data.y["val"].numpy()
        eps = 1e-7
        loss = float(-np.mean(y * np.log(p + eps) + (1 - y) * np.log(1 - p + eps)))
        auc = binary_metrics(y, p, 0.5)["auc"]
        # validation AUC selects the epoch; with one class in validation fall back to the loss
        score = auc if np.isfinite(auc) else -loss
        return {"val_loss": loss, "val_auc": auc, "score": score}

    def extra_state(self) -> dict[str, Any]:
        return {"normalizer": self.data.normalizer.to_dict()}


def split_recipe(profile: Profile, dataset: str, seed: int, fold: Fold | None = None
                  ) -> dict[str, Any]:
    """What carves a fine-tuning run's data (:func:`~bus_paper.train.data.load_labelled`): the
    dataset's leak-free holdout split (fractions and duplicate rules are in ``profile.data``), or
    one fold of its grouped cross-validation, and the run seed's subset of training labels."""
    if fold is not None:
        return {"dataset": dataset, "scheme": "kfold", "k": fold.k, "fold": fold.index,
                "split_seed": fold.split_seed(profile),
                "label_fraction": profile.finetune.label_fraction, "label_seed": seed}
    return {"dataset": dataset, "scheme": "holdout", "split_seed": profile.finetune.split_seed,
            "label_fraction": profile.finetune.label_fraction, "label_seed": seed}


def finetune_key(profile: Profile, dataset: str, seed: int, encoder_key: str | None,
                 checksum: str, model_config: dict[str, Any] | None = None,
                 fold: Fold | None = None) -> str:
    """The run key of a fine-tuning: its recipe (:mod:`bus_paper.core.runs`). The fields that
    list what to run (``finetune.datasets``, ``finetune.seeds``) are not in it."""
    model = model_config or dataclasses.asdict(profile.model)
    return recipe_key("finetune", network=model,
                      finetune=config_part(profile.finetune, without=("datasets", "seeds")),
                      data=config_part(profile.data), split=split_recipe(profile, dataset, seed, fold),
                      seed=seed, encoder=encoder_key, checksum=checksum,
                      selection=SELECT_VAL_AUC_YOUDEN)


@releases_run_locks
def finetune(profile: Profile, dataset: str, seed: int = 0, root: str | Path | None = None,
             encoder_path: Path | None | str = "auto",
             force: bool = False, baseline: str | None = None,
             network: dict[str, Any] | None = None, fold: Fold | None = None) -> dict[str, Any]:
    """Fine-tune and evaluate on ``dataset``; returns metrics, CIs, predictions and paths.

    ``encoder_path="auto"`` pretrains (or reuses the cached) encoder when ``profile.pretrain.enabled``;
    ``None`` starts from random initialisation; a path loads that ``encoder.pt`` (e.g. the full
    model's encoder for an ablation variant: the matching weights are loaded). ``baseline``
    fine-tunes a Table 1 baseline instead of the proposed model (``"auto"``: SimCLR-pretrained;
    a DINO encoder comes as a path from :func:`~bus_paper.train.dino.dino_pretrain`); ``network``
    any network config (see :func:`~bus_paper.models.build_network`), pretrained the same way.
    ``fold`` trains and tests on that fold of a grouped cross-validation instead of the holdout.
    Results are cached under ``runs/finetune/<key>/``; only ``model.pt`` (the deployable model),
    ``predictions.csv``, ``result.json`` and the log stay there.
    """
    from ..data.checksum import dataset_checksum
    from .pretraining import load_pretrained, network_config, network_name, pretrain
    d = init_distributed(select_device(profile.run).type)
    root = main_first(d, resolve_root, profile, root)
    if encoder_path == "auto":
        encoder_path = (pretrain(profile, root, baseline=baseline, network=network)
                        if profile.pretrain.enabled else None)
    encoder = load_pretrained(Path(encoder_path)) if encoder_path else None
    model_config = network_config(profile, baseline, network)
    name = network_name(model_config)
    if encoder is not None and network_name(encoder["model_config"]) != name:
        raise ValueError(f"encoder {encoder_path} is a {network_name(encoder['model_config'])} "
                         f"encoder, but fine-tuning builds {name}")
    key = finetune_key(profile, dataset, seed, encoder["key"] if encoder else None,
                       dataset_checksum(root, dataset), model_config, fold)
    run_dir = runs_dir() / "finetune" / key
    hold_run_lock(run_dir, d)  # a second process of this key waits here, then finds the result
    result = None if force else read_cached_run(run_dir, read_predictions, heal=d.main)
    if result is not None:
        return result
    if force:
        clear_run_dir(run_dir, d)
    t0 = time.perf_counter()
    data = main_first(d, load_labelled, profile, root, dataset, profile.finetune.label_fraction,
                      label_seed=seed, fold=fold)
    same = encoder is None or _canonical(encoder["model_config"]) == _canonical(model_config)
    stage = FinetuneStage(profile, data, seed, run_dir, key,
                          encoder["encoder"] if encoder else None,
                          model_config=model_config, strict=same)
    history = stage.fit()
    probs, threshold, preds = select_and_predict(stage, data, profile)
    y_test = data.y["test"].numpy()
    metrics = binary_metrics(y_test, probs["test"], threshold)
    ci = bootstrap_ci(y_test, probs["test"], threshold, n_boot=1000, seed=seed,
                      clusters=data.clusters("test"))   # clusters: duplicates count once
    result = {"dataset": dataset, "seed": seed, "profile": profile.name, "threshold": threshold,
              "recipe_version": recipe_version("finetune"),
              "metrics": metrics, "ci": ci, "history": history.epochs,
              "pretrained": encoder is not None, "encoder_key": encoder["key"] if encoder else None,
              "model": name, "label_fraction": profile.finetune.label_fraction,
              "fold": dataclasses.asdict(fold) if fold else None,
              "encoder_weights_not_loaded": stage.skipped,
              "n": {s: len(data.y[s]) for s in ("train", "val", "test")},
              "seconds": time.perf_counter() - t0, "run_dir": str(run_dir),
              "checkpoint": str(run_dir / "model.pt")}
    if stage.dist.main:
        write_finished_run(run_dir, deployable_state(
            stage.model, profile, data, threshold, dataset, model_config,
            recipe=model_recipe(profile, dataset, seed, key, encoder is not None)), preds, result)
    barrier(d)  # other ranks return only once model.pt exists
    result["predictions"] = preds
    return result


PARTS = ("val", "test")


def predict_best_epoch(stage: Stage, predict: Callable[[str], np.ndarray],
                       labels: Mapping[str, np.ndarray],
                       columns: Callable[[str], Mapping[str, Any]]
                       ) -> tuple[dict[str, np.ndarray], float, pd.DataFrame]:
    """The end of every fine-tuning run, before it is written (the library's, the generalisation
    chapter's, paper 002's): reload the best validation epoch (model selection on validation
    only), predict the validation and test parts (``predict(part)``), choose the threshold on
    validation. Returns (probabilities per part, threshold, the predictions table: the caller's
    ``columns(part)`` (path first), split, label, prob)."""
    stage.model.load_state_dict(load_checkpoint(stage.run_dir / "best.pt", stage.device)["model"])
    probs = {s: predict(s) for s in PARTS}
    threshold = choose_threshold(np.asarray(labels["val"]), probs["val"])
    preds = pd.concat([pd.DataFrame({**columns(s), "split": s, "label": np.asarray(labels[s]),
                                     "prob": probs[s]}) for s in PARTS], ignore_index=True)
    return probs, threshold, preds


def select_and_predict(stage: FinetuneStage, data: LabelledSplits, profile: Profile
                       ) -> tuple[dict[str, np.ndarray], float, pd.DataFrame]:
    """:func:`predict_best_epoch` for a classifier on :class:`LabelledSplits`: predictions
    ``path, split, label, prob, cluster`` (each image's cluster, for the two-level bootstraps)."""
    probs, threshold, preds = predict_best_epoch(
        stage, lambda s: predict_proba(stage.model, data.x[s], data.normalizer, profile.run),
        {s: data.y[s].numpy() for s in PARTS},
        lambda s: {"path": data.paths[s], "cluster": data.clusters(s)})
    return probs, threshold, preds[["path", "split", "label", "prob", "cluster"]]


def write_finished_run(run_dir: Path, model_state: dict[str, Any] | None, preds: pd.DataFrame,
                       result: dict[str, Any]) -> None:
    """Write a finished fine-tuning run: the deployable ``model.pt`` (unless ``model_state`` is
    None: a run whose predictions are all that is kept), ``predictions.csv``, then
    ``result.json`` (atomic: the mark of a finished run, written last), and drop the resume and
    best-epoch checkpoints (~2 x model + optimizer; ``model.pt`` has what is kept)."""
    if model_state is not None:
        save_checkpoint(run_dir / "model.pt", model_state)
    write_predictions(preds, run_dir / "predictions.csv")
    write_json(run_dir / "result.json", result)
    for stale in ("best.pt", "last.pt"):
        (run_dir / stale).unlink(missing_ok=True)


def write_predictions(preds: pd.DataFrame, path: Path) -> None:
    """CSV whose ``prob`` column reads back bit-identical (see :func:`read_predictions`): the
    threshold metrics of a cached run must equal those computed in memory, even for a test
    probability that ties the threshold."""
    preds.to_csv(path, index=False, float_format="%.9g")  # 9 significant digits: float32-exact


def read_predictions(path: Path) -> pd.DataFrame:
    """Predictions written by :func:`write_predictions`, probabilities as the float32 they were."""
    return pd.read_csv(path, dtype={"prob": np.float32})


def _canonical(cfg: dict[str, Any]) -> str:
    return json.dumps(cfg, sort_keys=True)  # tuples and lists (from JSON) compare equal


# profile fields that list what to run, not how: they do not change the trained model
_NOT_RECIPE = {"finetune.datasets", "finetune.seeds"}


def model_recipe(profile: Profile, dataset: str, seed: int, key: str, pretrained: bool,
                 base: Profile | None = None) -> dict[str, Any]:
    """What a deployable model is: its fine-tuning run key and a readable summary.

    ``overrides`` are the fields that differ from ``base`` (default: the shipped profile of the
    same name), i.e. the ``--set`` options (``--no-pretrain`` is ``pretrain.enabled=false``).
    Only the sections in the run key count (``run`` settings reuse the same cached run).
    ``None`` where there is no base to compare with (a custom profile file).
    """
    from ..config import PROFILE_NAMES, load_profile
    if base is None and profile.name in PROFILE_NAMES:
        base = load_profile(profile.name)
    overrides: list[str] | None = None
    if base is not None:
        overrides = []
        for sec in ("data", "model", "pretrain", "finetune"):
            new = dataclasses.asdict(getattr(profile, sec))
            old = dataclasses.asdict(getattr(base, sec))
            overrides += [f"{sec}.{k}={json.dumps(v)}" for k, v in sorted(new.items())
                          if f"{sec}.{k}" not in _NOT_RECIPE
                          and json.dumps(v) != json.dumps(old.get(k))]
    summary = (f"{profile.name} {dataset} seed {seed}, "
               f"{'SSL-pretrained' if pretrained else 'random init (no SSL)'}, "
               + ("overrides: " + " ".join(overrides) if overrides
                  else "no overrides" if overrides is not None else "custom profile"))
    return {"key": key, "profile": profile.name, "dataset": dataset, "seed": int(seed),
            "pretrained": bool(pretrained), "overrides": overrides, "summary": summary}


def same_recipe(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    """Same training recipe; the run key may differ (newer code or data, same options)."""
    fields = ("profile", "dataset", "seed", "pretrained", "overrides")
    return a is not None and b is not None and all(a.get(f) == b.get(f) for f in fields)


def deployable_state(model, profile: Profile, data: LabelledSplits, threshold: float,
                     dataset: str, model_config: dict[str, Any] | None = None,
                     recipe: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything `bus-paper predict` needs: weights, architecture, preprocessing, threshold,
    and (``recipe``, see :func:`model_recipe`) which training run it is."""
    state = {"model": model.state_dict(),
             "model_config": model_config or dataclasses.asdict(profile.model),
             "image_size": profile.data.image_size, "normalizer": data.normalizer.to_dict(),
             "threshold": float(threshold), "classes": list(LABELS), "dataset": dataset,
             "profile": profile.name, "run": dataclasses.asdict(profile.run)}
    return state | ({"recipe": recipe} if recipe is not None else {})


class ModelFileError(ValueError):
    """A file that is not a usable bus-paper deployable model; the message is one line."""


DEPLOYABLE_KEYS = ("model", "model_config", "image_size", "normalizer", "threshold", "run")


def read_deployable(path: str | Path, device: str = "cpu") -> dict[str, Any]:
    """The checkpoint dict of a deployable model, or :class:`ModelFileError` saying what it is.

    Loaded with ``weights_only=True`` only: a file that needs more (arbitrary pickled objects)
    is refused, never loaded unsafely.
    """
    import pickle
    import zipfile
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"model file {path}: no such file")
    if not path.is_file():
        raise ModelFileError(f"model file {path}: not a regular file")
    if path.stat().st_size == 0:
        raise ModelFileError(f"model file {path}: empty file (0 bytes), not a bus-paper model")
    try:
        state = load_checkpoint(path, device)
    except pickle.UnpicklingError:  # torch's text here suggests weights_only=False: never do that
        raise ModelFileError(f"model file {path}: holds Python objects other than tensors and "
                             f"plain containers; refused (not a bus-paper model)") from None
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile, KeyError,
            AttributeError, TypeError) as err:
        raise ModelFileError(f"model file {path}: not a readable PyTorch checkpoint "
                             f"({type(err).__name__}); not a bus-paper model") from None
    if not isinstance(state, dict):
        raise ModelFileError(f"model file {path}: a torch file of a {type(state).__name__}, "
                             f"not a bus-paper model")
    missing = [k for k in DEPLOYABLE_KEYS if k not in state]
    if missing:
        kind = ("a training checkpoint (resume/best-epoch state)" if "epoch" in state
                else "an SSL encoder checkpoint" if "encoder" in state
                else f"a dict without {', '.join(missing)}")
        raise ModelFileError(f"model file {path}: {kind}, not a bus-paper deployable model "
                             f"(use runs/models/*.pt or runs/finetune/<key>/model.pt)")
    try:
        threshold = float(state["threshold"])
    except (TypeError, ValueError):
        threshold = float("nan")
    if not 0.0 <= threshold <= 1.0:  # also false for NaN
        raise ModelFileError(f"model file {path}: threshold {state['threshold']!r} is not a "
                             f"probability in [0, 1]; refused")
    return state


def load_deployable(path: str | Path, device: str = "cpu"):
    """(model in eval mode, checkpoint dict) from a `model.pt` written by :func:`finetune`;
    :class:`ModelFileError` (one line) for anything else."""
    from ..config import RunConfig
    state = read_deployable(path, device)
    try:
        model = build_network(state["model_config"])  # validates the stored config
        model.load_state_dict(state["model"])
    except (KeyError, ValueError, TypeError, RuntimeError, AttributeError) as err:
        raise ModelFileError(f"model file {path}: its weights do not match its model_config "
                             f"({type(err).__name__}); not a usable bus-paper model") from None
    return model.to(select_device(RunConfig(device=device))).eval(), state
