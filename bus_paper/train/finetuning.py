"""Supervised fine-tuning (benign vs malignant) and evaluation on a leak-free split.

Model selection (best epoch) and the decision threshold use the validation split only; the test
split is touched once, at the end, by the selected model at the selected threshold.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..augment import build_augment
from ..config import Profile
from ..metrics import binary_metrics, bootstrap_ci, choose_threshold
from ..models import build_network
from ..paths import runs_dir
from .data import (
    LABELS,
    LabelledSplits,
    Normalizer,
    config_key,
    load_labelled,
    resolve_root,
)
from .engine import (
    Stage,
    autocast,
    barrier,
    infer,
    init_distributed,
    load_checkpoint,
    main_first,
    prepare_input,
    save_checkpoint,
    seed_everything,
    select_device,
)
from .pretraining import network_code_hash


def predict_proba(model: torch.nn.Module, x_u8: torch.Tensor, normalizer: Normalizer,
                  run, batch_size: int = 64) -> np.ndarray:
    """P(malignant) for uint8 images [N, 1, S, S], in eval mode, batched, under autocast."""
    return infer(model, x_u8, normalizer, run,
                 lambda m, x: torch.softmax(m(x).float(), dim=1)[:, 1], batch_size).numpy()


class FinetuneStage(Stage):
    name = "finetune"

    def __init__(self, profile: Profile, data: LabelledSplits, seed: int, run_dir: Path, key: str,
                 encoder: dict[str, Any] | None, progress: bool = True,
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
                         progress=progress)
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


def finetune_key(profile: Profile, dataset: str, seed: int, encoder_key: str | None,
                 checksum: str, model_config: dict[str, Any] | None = None) -> str:
    model = model_config or dataclasses.asdict(profile.model)
    return config_key("finetune", dataset, seed, model, dataclasses.asdict(profile.finetune),
                      dataclasses.asdict(profile.data), encoder_key, checksum,
                      network_code_hash(model))


def finetune(profile: Profile, dataset: str, seed: int = 0, root: str | Path | None = None,
             encoder_path: Path | None | str = "auto", progress: bool = True,
             force: bool = False, baseline: str | None = None,
             network: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fine-tune and evaluate on ``dataset``; returns metrics, CIs, predictions and paths.

    ``encoder_path="auto"`` pretrains (or reuses the cached) encoder when ``profile.pretrain.enabled``;
    ``None`` starts from random initialisation; a path loads that ``encoder.pt`` (e.g. the full
    model's encoder for an ablation variant: the matching weights are loaded). ``baseline``
    fine-tunes a Table 1 baseline instead of the proposed model (``"auto"``: SimCLR-pretrained;
    a DINO encoder comes as a path from :func:`~bus_paper.train.dino.dino_pretrain`); ``network``
    any network config (see :func:`~bus_paper.models.build_network`), pretrained the same way.
    Results are cached under ``runs/finetune/<key>/``; only ``model.pt`` (the deployable model),
    ``predictions.csv``, ``result.json`` and the log stay there.
    """
    from ..data.checksum import dataset_checksum
    from .pretraining import load_pretrained, network_config, network_name, pretrain
    d = init_distributed(select_device(profile.run).type)
    root = main_first(d, resolve_root, profile, root)
    if encoder_path == "auto":
        encoder_path = (pretrain(profile, root, progress=progress, baseline=baseline,
                                 network=network)
                        if profile.pretrain.enabled else None)
    encoder = load_pretrained(Path(encoder_path)) if encoder_path else None
    model_config = network_config(profile, baseline, network)
    name = network_name(model_config)
    if encoder is not None and network_name(encoder["model_config"]) != name:
        raise ValueError(f"encoder {encoder_path} is a {network_name(encoder['model_config'])} "
                         f"encoder, but fine-tuning builds {name}")
    key = finetune_key(profile, dataset, seed, encoder["key"] if encoder else None,
                       dataset_checksum(root, dataset), model_config)
    run_dir = runs_dir() / "finetune" / key
    result_file = run_dir / "result.json"
    if result_file.exists() and not force:
        result = json.loads(result_file.read_text())
        result["predictions"] = read_predictions(run_dir / "predictions.csv")
        return result
    if force and run_dir.exists():
        shutil.rmtree(run_dir)
    t0 = time.perf_counter()
    data = main_first(d, load_labelled, profile, root, dataset, profile.finetune.label_fraction,
                      label_seed=seed)
    same = encoder is None or _canonical(encoder["model_config"]) == _canonical(model_config)
    stage = FinetuneStage(profile, data, seed, run_dir, key,
                          encoder["encoder"] if encoder else None, progress=progress,
                          model_config=model_config, strict=same)
    history = stage.fit()
    # the selected model: best validation epoch; threshold: chosen on validation
    stage.model.load_state_dict(load_checkpoint(run_dir / "best.pt", stage.device)["model"])
    probs = {s: predict_proba(stage.model, data.x[s], data.normalizer, profile.run)
             for s in ("val", "test")}
    threshold = choose_threshold(data.y["val"].numpy(), probs["val"])
    y_test = data.y["test"].numpy()
    metrics = binary_metrics(y_test, probs["test"], threshold)
    ci = bootstrap_ci(y_test, probs["test"], threshold, n_boot=1000, seed=seed)
    preds = pd.concat([pd.DataFrame({"path": data.paths[s], "split": s,
                                     "label": data.y[s].numpy(), "prob": probs[s]})
                       for s in ("val", "test")], ignore_index=True)
    result = {"dataset": dataset, "seed": seed, "profile": profile.name, "threshold": threshold,
              "metrics": metrics, "ci": ci, "history": history.epochs,
              "pretrained": encoder is not None, "encoder_key": encoder["key"] if encoder else None,
              "model": name, "label_fraction": profile.finetune.label_fraction,
              "encoder_weights_not_loaded": stage.skipped,
              "n": {s: len(data.y[s]) for s in ("train", "val", "test")},
              "seconds": time.perf_counter() - t0, "run_dir": str(run_dir),
              "checkpoint": str(run_dir / "model.pt")}
    if stage.dist.main:
        save_checkpoint(run_dir / "model.pt", deployable_state(stage.model, profile, data, threshold,
                                                               dataset, model_config))
        write_predictions(preds, run_dir / "predictions.csv")
        (run_dir / "result.json").write_text(json.dumps(result, indent=1, default=float))
        for stale in ("best.pt", "last.pt"):  # ~2 x model + optimizer; model.pt has what is kept
            (run_dir / stale).unlink(missing_ok=True)
    barrier(d)  # other ranks return only once model.pt exists
    result["predictions"] = preds
    return result


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


def deployable_state(model, profile: Profile, data: LabelledSplits, threshold: float,
                     dataset: str, model_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything `bus-paper predict` needs: weights, architecture, preprocessing, threshold."""
    return {"model": model.state_dict(),
            "model_config": model_config or dataclasses.asdict(profile.model),
            "image_size": profile.data.image_size, "normalizer": data.normalizer.to_dict(),
            "threshold": float(threshold), "classes": list(LABELS), "dataset": dataset,
            "profile": profile.name, "run": dataclasses.asdict(profile.run)}


def load_deployable(path: str | Path, device: str = "cpu"):
    """(model in eval mode, checkpoint dict) from a `model.pt` written by :func:`finetune`."""
    from ..config import RunConfig
    state = load_checkpoint(Path(path), device)
    model = build_network(state["model_config"])  # validates the stored config
    model.load_state_dict(state["model"])
    return model.to(select_device(RunConfig(device=device))).eval(), state
