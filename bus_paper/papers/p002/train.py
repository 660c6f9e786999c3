"""Paper 002's training: ResNet-50 + linear head with ``L = L_cls + alpha * L_con`` (eq. 4) on
BUS-BRA's official patient-wise folds, in batches of P lesions x K images.

- **Data.** BUS-BRA images (benign vs malignant) with their lesion ids (``-l``/``-r``: two views of
  one lesion; ``-s``: a single view) and the official ``5-fold-cv.csv`` folds (csv fold f+1 = fold
  f here). Inside each run the test fold is left alone; a share (``val_fraction``) of the
  *training patients*, stratified by label, is held out as validation for the epoch and the
  threshold. (The csv's own ``valid_k`` columns are not used: they put the two views of about 210
  patients per fold on both sides of the train/validation line.)
- **Batches.** :func:`pk_batch`: the engine deals out *lesions* (one epoch = every training lesion
  once, in P-lesion batches); each lesion fills its K slots by cycling through its real views
  (``l, r, l, r`` for K=4, ``s, s, s, s`` for a single view), and every slot is augmented
  independently, so the extra slots are augmented copies. Every variant, the baseline included,
  sees the same batches; only the loss differs.
- **Augmentation** (paper: "resized into 256 x 256, followed by random cropping, flipping and color
  jittering"): images are cached at ``load_size = image_size * 256/224`` and randomly cropped to
  ``image_size`` (evaluation: the centre crop, as in the usual resize-256/crop-224 recipe),
  horizontal flip p=0.5, brightness +-0.2* and contrast x[0.8, 1.2]* each p=0.8* (intensity
  jitter: grayscale has no hue or saturation; * = our choice, the paper gives no strengths).
- **Optimiser.** Adam, lr 1e-4, x0.1 every ``decay_every`` epochs (paper: every 50 of 200).
- **Initialisation.** ``init="ssl"``: the SimCLR ResNet-50 encoder of the Table 1 chapter
  (:func:`~bus_paper.train.pretrain` with ``baseline="resnet50"``), which was pretrained on the
  unlabeled BUS-BRA + BUS-UCLM pool; so the test folds' *images* (never their labels) were seen
  during pretraining (transductive). ``init="random"`` avoids that. The paper starts from ImageNet.

Under DDP each rank contrasts its own shard of the batch only (the paper trained on one GPU).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kornia.augmentation as K
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ...config import Profile, load_profile
from ...core.runs import SELECT_VAL_AUC_YOUDEN, config_part, recipe_key, recipe_version
from ...data.preprocess import Normalizer
from ...metrics import binary_metrics
from ...paths import runs_dir
from ...train.data import LABELS, resolve_root, to_tensor
from ...train.engine import (
    Stage,
    autocast,
    clear_run_dir,
    hold_run_lock,
    infer,
    init_distributed,
    prepare_input,
    read_cached_run,
    releases_run_locks,
    seed_everything,
    select_device,
)
from ...train.finetuning import PARTS, predict_best_epoch, write_finished_run
from .loss import VARIANTS, LesionContrastiveLoss

#: every variant of Tables 1-2, in the order the chapter shows them
VARIANT_NAMES: tuple[str, ...] = ("baseline", "ir", "lr", "lr_minus_all", "lr_minus_sc",
                                  "lr_minus_dc")
assert set(VARIANT_NAMES) == {"baseline", *VARIANTS}, "every loss variant has a name, and back"
INITS = ("ssl", "random")
N_FOLDS = 5


# ----------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Settings:
    """Training settings of the paper-002 chapter: a profile's ``[papers.p002]`` section.

    ``image_size``: the model's input side (a random crop of the image cached at
    :attr:`load_size`); ``lesions_per_batch`` x ``images_per_lesion`` = P x K (paper: 8 x 8);
    ``decay_every``: epochs between x0.1 learning-rate steps (None: constant);
    ``val_fraction``: share of each fold's training patients held out for validation;
    ``max_steps``: cap on steps per epoch (smoke).
    """
    image_size: int
    epochs: int
    lesions_per_batch: int
    images_per_lesion: int
    lr: float = 1e-4
    decay_every: int | None = None
    val_fraction: float = 0.15
    max_steps: int | None = None

    def __post_init__(self) -> None:
        if self.image_size < 32 or self.image_size % 32:
            raise ValueError(f"image_size must be a multiple of 32 (ResNet-50), got {self.image_size}")
        if self.epochs < 1 or self.lesions_per_batch < 2:
            raise ValueError("need epochs >= 1 and lesions_per_batch >= 2 (a batch of one lesion "
                             "has no negatives)")
        if self.images_per_lesion < 2:
            raise ValueError(f"images_per_lesion must be >= 2 (every lesion needs a positive), "
                             f"got {self.images_per_lesion}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.decay_every is not None and self.decay_every < 1:
            raise ValueError(f"decay_every must be >= 1 or None, got {self.decay_every}")

    @property
    def load_size(self) -> int:
        """Side the images are resized to before the random crop (the paper's 256 for 224)."""
        return round(self.image_size * 256 / 224)

    def lr_at(self, epoch: int) -> float:
        """Learning rate of epoch ``epoch`` (0-based): step decay x0.1 every ``decay_every``."""
        return self.lr * 0.1 ** (epoch // self.decay_every) if self.decay_every else self.lr


#: The paper's settings (224 px, 200 epochs, P x K = 8 x 8, x0.1 every 50 epochs): the gpu
#: profile's ``[papers.p002]``. The other profiles set smaller ones in their TOMLs.
PAPER_SETTINGS = Settings(image_size=224, epochs=200, lesions_per_batch=8, images_per_lesion=8,
                          decay_every=50)


def settings_for(profile: Profile | str) -> Settings:
    """The profile's ``[papers.p002]`` section as :class:`Settings` (checked)."""
    prof = load_profile(profile)
    # `folds` (which official folds a chapter run trains) is read by experiments.parse_folds
    section = {k: v for k, v in prof.section("p002").items() if k != "folds"}
    if not section:
        raise KeyError(f"profile {prof.name!r} has no [papers.p002] section: paper 002's training "
                       "settings (see bus_paper/profiles/cpu.toml)")
    try:
        return Settings(**section)
    except TypeError as err:
        raise KeyError(f"[papers.p002] of profile {prof.name!r}: {err}") from None


# ----------------------------------------------------------------------------- data
def busbra_folds(root: str | Path) -> pd.DataFrame:
    """BUS-BRA's benign/malignant images with ``path, label, patient_id, lesion_id, view, fold``
    (fold 0..4 = the official csv's 1..5), checked leak-free by patient and lesion."""
    from ...data.manifest import build_manifest
    from ...data.splits import make_splits
    frame = build_manifest(root, ["busbra"]).frame
    folds = make_splits(frame, "busbra", 0, scheme="official", k=N_FOLDS, labels=LABELS,
                        root=root)
    cols = ["path", "dataset", "patient_id", "lesion_id", "view"]
    return folds.merge(frame[cols], on="path", how="left").sort_values("path",
                                                                       ignore_index=True)


def validation_patients(rows: pd.DataFrame, fraction: float, seed: int) -> set[str]:
    """``fraction`` of the patients in ``rows``, per label (at least one of each label that has
    two or more patients), drawn with ``seed``: the validation part of a fold's training folds."""
    patients = rows.groupby("patient_id")["label"].first()
    rng = np.random.default_rng(seed)
    chosen: set[str] = set()
    for label in sorted(patients.unique()):
        ids = np.array(sorted(patients.index[patients == label]))
        n = len(ids)
        take = min(n - 1, max(1, round(fraction * n))) if n >= 2 else 0
        chosen |= set(ids[rng.permutation(n)[:take]].tolist())
    return chosen


def assign_parts(table: pd.DataFrame, fold: int, val_fraction: float, seed: int = 0
                 ) -> pd.Series:
    """``train`` / ``val`` / ``test`` per row of :func:`busbra_folds`: the test fold, and a
    patient-wise validation share of the other folds (seeded by ``seed`` and ``fold``)."""
    if not 0 <= fold < N_FOLDS:
        raise ValueError(f"fold must be in 0..{N_FOLDS - 1}, got {fold}")
    part = pd.Series("train", index=table.index, name="split")
    part[table["fold"] == fold] = "test"
    rest = table[table["fold"] != fold]
    val = validation_patients(rest, val_fraction, seed * 1000 + fold)
    part[(table["fold"] != fold) & table["patient_id"].isin(val)] = "val"
    return part


@dataclass
class FoldData:
    """One fold's images (uint8 ``[N, 1, L, L]``, L = ``load_size``), labels and lesion ids."""
    fold: int
    x: dict[str, torch.Tensor]
    y: dict[str, torch.Tensor]
    lesion: dict[str, list[str]]
    paths: dict[str, list[str]]
    views: list[list[int]]          # training lesion -> its images (indices into x["train"])
    normalizer: Normalizer
    load_size: int


def load_fold(root: str | Path, fold: int, settings: Settings, seed: int = 0,
              table: pd.DataFrame | None = None) -> FoldData:
    """The train / val / test images of ``fold`` (see :func:`assign_parts`), from the cache."""
    from ...data.preprocess import load_images
    table = busbra_folds(root) if table is None else table
    part = assign_parts(table, fold, settings.val_fraction, seed)
    images = to_tensor(load_images(table, root, settings.load_size).images)
    y_all = torch.tensor([LABELS.index(v) for v in table["label"]], dtype=torch.long)
    x, y, lesion, paths = {}, {}, {}, {}
    for name in ("train", "val", "test"):
        m = np.array(part == name, dtype=bool)
        x[name], y[name] = images[torch.from_numpy(m)], y_all[torch.from_numpy(m)]
        lesion[name] = table["lesion_id"][m].astype(str).tolist()
        paths[name] = table["path"][m].tolist()
    groups: dict[str, list[int]] = {}
    for i, les in enumerate(lesion["train"]):
        groups.setdefault(les, []).append(i)
    views = [groups[k] for k in sorted(groups)]
    return FoldData(fold, x, y, lesion, paths, views, Normalizer.fit(x["train"].numpy()),
                    settings.load_size)


def pk_batch(lesions: torch.Tensor, views: list[list[int]], k: int
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """P lesions x K images: ``(image index, lesion id, image id)``, each ``[P * K]``.

    Lesion ``l`` fills its K slots by cycling through ``views[l]`` (its real images), so a lesion
    with two views gives ``a, b, a, b`` for K=4 and a single view ``s, s, s, s``: the repeats become
    augmented copies once each slot is augmented. The lesion id is the lesion's index in
    ``views``; the image id is the image index (copies of one image share it).

    >>> img, les, inst = pk_batch(torch.tensor([1, 0]), [[0], [1, 2]], 4)
    >>> img.tolist(), les.tolist()
    ([1, 2, 1, 2, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0, 0, 0])
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    lesions = torch.as_tensor(lesions).long()
    if len(set(lesions.tolist())) != len(lesions):
        raise ValueError(f"a batch must hold distinct lesions, got {lesions.tolist()}")
    img = [views[int(les)][j % len(views[int(les)])] for les in lesions for j in range(k)]
    img_t = torch.tensor(img, dtype=torch.long)
    return img_t, lesions.repeat_interleave(k), img_t.clone()


def train_augment(image_size: int) -> nn.Sequential:
    """Random crop to ``image_size``, h-flip, intensity jitter (module docstring); on [0, 1]."""
    return nn.Sequential(
        K.RandomCrop((image_size, image_size)),
        K.RandomHorizontalFlip(p=0.5),
        K.RandomBrightness((0.8, 1.2), p=0.8),
        K.RandomContrast((0.8, 1.2), p=0.8),
    )


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """The central ``size x size`` window of ``[N, C, L, L]`` images."""
    top = (x.shape[-2] - size) // 2
    left = (x.shape[-1] - size) // 2
    if top < 0 or left < 0:
        raise ValueError(f"cannot crop {size} px out of {list(x.shape[-2:])}")
    return x[..., top:top + size, left:left + size]


def predict_proba(model: nn.Module, x_u8: torch.Tensor, normalizer: Normalizer, image_size: int,
                  run) -> np.ndarray:
    """P(malignant) on the centre crops of uint8 images, eval mode, batched."""
    return infer(model, center_crop(x_u8, image_size), normalizer, run,
                 lambda m, x: torch.softmax(m(x).float(), dim=1)[:, 1]).numpy()


# ----------------------------------------------------------------------------- the stage
class _FeaturesAndLogits(nn.Module):
    """forward = (backbone features z, class logits), one call that DDP can wrap."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.m = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.m.encode(x)
        return z, self.m.head(z)


class LesionStage(Stage):
    """Eq. 4: cross-entropy (eq. 1) + ``alpha`` x the variant's contrastive loss (eq. 2) on the
    backbone features, per P x K batch; validation AUC selects the epoch; step-decayed lr."""
    name = "paper002"

    def __init__(self, model: nn.Module, data: FoldData, variant: str, settings: Settings,
                 alpha: float, temperature: float, seed: int, run_dir: Path, key: str, run):
        if variant not in VARIANT_NAMES:
            raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANT_NAMES)}")
        self.data, self.settings, self.alpha, self.variant = data, settings, float(alpha), variant
        self.loss_con = (None if variant == "baseline"
                         else LesionContrastiveLoss.for_variant(variant, temperature))
        augment = train_augment(settings.image_size)
        super().__init__(_FeaturesAndLogits(model), run_dir, epochs=settings.epochs,
                         batch_size=settings.lesions_per_batch, lr=settings.lr, weight_decay=0.0,
                         seed=seed, run=run, n_train=len(data.views), max_steps=settings.max_steps,
                         key=key)
        self.augment = augment.to(self.device)
        self.drop_last = len(data.views) > settings.lesions_per_batch
        self._sums = {"cls": 0.0, "con": 0.0, "n": 0}

    def train_step(self, idx: torch.Tensor) -> torch.Tensor:
        img, lesion, instance = pk_batch(idx, self.data.views, self.settings.images_per_lesion)
        x = self.data.x["train"][img].to(self.device).float().div_(255.0)
        y = self.data.y["train"][img].to(self.device)
        with torch.no_grad():
            x = prepare_input(self.data.normalizer(self.augment(x)), self.run)
        with autocast(self.device, self.run.precision):
            z, logits = self.ddp_model(x)
        cls = F.cross_entropy(logits.float(), y)
        loss = cls
        if self.loss_con is not None:
            con = self.loss_con(z, lesion.to(self.device), y, instance.to(self.device))
            loss = cls + self.alpha * con
            self._sums["con"] += float(con.detach())
        self._sums["cls"] += float(cls.detach())
        self._sums["n"] += 1
        return loss

    def validate(self) -> dict[str, float]:
        d = self.data
        p = predict_proba(self.model.m, d.x["val"], d.normalizer, self.settings.image_size,
                          self.run)
        y = d.y["val"].numpy()
        eps = 1e-7
        loss = float(-np.mean(y * np.log(p + eps) + (1 - y) * np.log(1 - p + eps)))
        auc = binary_metrics(y, p, 0.5)["auc"]
        n = max(1, self._sums["n"])
        row = {"val_loss": loss, "val_auc": auc, "score": auc if np.isfinite(auc) else -loss,
               "train_cls": self._sums["cls"] / n,
               "train_con": self._sums["con"] / n if self.loss_con is not None else float("nan"),
               "lr": float(self.optimizer.param_groups[0]["lr"])}
        self._sums = {"cls": 0.0, "con": 0.0, "n": 0}
        # the next epoch's learning rate; it travels in the optimizer state of last.pt, so a
        # resumed run continues with the decayed rate
        for g in self.optimizer.param_groups:
            g["lr"] = self.settings.lr_at(len(self.history.epochs) + 1)
        return row

    def extra_state(self) -> dict[str, Any]:
        return {"normalizer": self.data.normalizer.to_dict()}


# ----------------------------------------------------------------------------- one run
def model_config(profile: Profile, settings: Settings) -> dict[str, Any]:
    """timm ResNet-50 (1 input channel) + linear head at the settings' input side."""
    from ...train.pretraining import baseline_config
    return {**baseline_config(profile, "resnet50"), "img_size": settings.image_size}


def run_key(profile: Profile, variant: str, fold: int, seed: int, settings: Settings,
            alpha: float, temperature: float, encoder_key: str | None, checksum: str) -> str:
    """The run key of a paper-002 run: its recipe (:mod:`bus_paper.core.runs`)."""
    contrastive = variant != "baseline"   # alpha and tau change nothing for the baseline
    split = {"dataset": "busbra", "scheme": f"official {N_FOLDS}-fold, patient-wise",
             "fold": fold, "val_fraction": settings.val_fraction, "val_seed": seed}
    return recipe_key("lesion", variant=variant, settings=config_part(settings),
                      network=model_config(profile, settings),
                      alpha=alpha if contrastive else None,
                      temperature=temperature if contrastive else None, seed=seed,
                      encoder=encoder_key, checksum=checksum, run=config_part(profile.run),
                      split=split, selection=SELECT_VAL_AUC_YOUDEN)


@releases_run_locks
def run_fold(profile: Profile, root: str | Path | None, variant: str, fold: int, *,
             alpha: float = 1.0, temperature: float = 1.0, init: str = "ssl", seed: int = 0,
             settings: Settings | None = None, force: bool = False,
             table: pd.DataFrame | None = None) -> dict[str, Any]:
    """Train ``variant`` on the training folds of ``fold`` and predict its validation and test
    images; cached under ``runs/paper002/<key>/`` (``result.json``, ``predictions.csv``, log).

    The returned dict has the image-level ``threshold`` (Youden on validation) and test
    ``metrics``, the epoch ``history`` and ``predictions`` (``path, split, lesion, label, prob``,
    val and test). Weights are not kept (30 runs x 100 MB); the predictions are what the chapter
    needs.
    """
    from ...data.checksum import dataset_checksum
    from ...models import build_network
    from ...train.pretraining import load_pretrained, pretrain
    if variant not in VARIANT_NAMES:
        raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANT_NAMES)}")
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    settings = settings or settings_for(profile)
    if variant == "ir" and settings.images_per_lesion < 4:
        raise ValueError("IR needs every image twice in a batch: images_per_lesion >= 4 with "
                         "two views per lesion")
    root = resolve_root(profile, root)
    encoder = None
    if init == "ssl":
        encoder = load_pretrained(pretrain(profile, root, baseline="resnet50"))
    key = run_key(profile, variant, fold, seed, settings, alpha, temperature,
                  encoder["key"] if encoder else None, dataset_checksum(root, "busbra"))
    run_dir = runs_dir() / "paper002" / key
    d = init_distributed(select_device(profile.run).type)
    hold_run_lock(run_dir, d)
    result = None if force else read_cached_run(
        run_dir, lambda p: pd.read_csv(p, dtype={"prob": np.float32, "lesion": str}), d.main)
    if result is not None:
        return result
    if force:
        clear_run_dir(run_dir, d)
    t0 = time.perf_counter()
    data = load_fold(root, fold, settings, seed, table)
    seed_everything(seed)   # the head's (and, at random init, the backbone's) initial weights
    model = build_network(model_config(profile, settings))
    if encoder is not None:
        model.load_encoder_state_dict(encoder["encoder"])
    stage = LesionStage(model, data, variant, settings, alpha, temperature, seed, run_dir, key,
                        profile.run)
    history = stage.fit()
    # the library's end of a fine-tuning run: best validation epoch, Youden threshold on val
    probs, threshold, preds = predict_best_epoch(
        stage, lambda s: predict_proba(stage.model.m, data.x[s], data.normalizer,
                                       settings.image_size, profile.run),
        {s: data.y[s].numpy() for s in PARTS},
        lambda s: {"path": data.paths[s], "fold": fold, "lesion": data.lesion[s]})
    preds = preds[["path", "split", "fold", "lesion", "label", "prob"]]
    metrics = binary_metrics(data.y["test"].numpy(), probs["test"], threshold)
    result = {"variant": variant, "fold": fold, "seed": seed, "profile": profile.name,
              "settings": dataclasses.asdict(settings), "alpha": alpha,
              "temperature": temperature, "init": init,
              "recipe_version": recipe_version("lesion"),
              "encoder_key": encoder["key"] if encoder else None, "threshold": threshold,
              "metrics": metrics, "history": history.epochs,
              "n": {s: len(data.y[s]) for s in ("train", "val", "test")},
              "n_lesions": {s: len(set(data.lesion[s])) for s in ("train", "val", "test")},
              "seconds": time.perf_counter() - t0, "run_dir": str(run_dir), "key": key}
    if stage.dist.main:
        write_finished_run(run_dir, None, preds, result)   # no weights: 30 runs x 100 MB
    result["predictions"] = preds
    return result
