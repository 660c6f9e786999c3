"""DINO self-distillation (Caron et al., 2021) for the "DINO-ViT" row of paper 000's Table 1.

A student and a teacher network of the same architecture (a Table 1 baseline backbone followed by
a :class:`DINOHead`) see multi-crop views of an image: the teacher only the 2 global views, the
student all of them (2 global + ``n_local`` small local crops). The loss is the cross-entropy
between the teacher's sharpened, centred softmax of one global view and the student's softmax of
every *other* view (:class:`DINOLoss`). Only the student is trained; the teacher is an EMA of it
(:func:`ema_update`, momentum on a cosine schedule 0.996 -> 1). Centring (subtracting an EMA of the
teacher's mean output) and sharpening (a low teacher temperature) together avoid collapse.

Grayscale ultrasound. The views reuse the SimCLR recipe of :mod:`bus_paper.augment` (``ssl``: both
flips, rotation up to 30 deg, brightness, contrast, gamma as the intensity jitter), so the DINO and
SimCLR rows differ in objective and cropping, not in invariances, plus DINO's multi-crop (global
crops 40-100 % of the area, local crops 5-40 %) and its asymmetric blur (p = 1.0 / 0.1 on the
global views, 0.5 on local ones) and solarisation (p = 0.2 on the second global view).

Differences from the reference implementation, all for a fair Table 1 (paper 000: every baseline
"pretrained on the same unlabeled images for the same number of epochs" with identical
optimiser settings): the profile's optimiser (Adam, constant lr, its weight decay, batch size and
epochs) instead of DINO's AdamW with lr warm-up, cosine lr and weight-decay schedules; no gradient
clipping and no freezing of the last layer in the first epoch (the engine has no hook between
backward and step). The teacher stays in train mode like the reference (no ``eval()``), under
``no_grad``; with a BatchNorm backbone (ResNet-50) it thus normalises with its own batch
statistics. For fine-tuning the *teacher's* backbone is exported (DINO evaluates the teacher).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import kornia.augmentation as K
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..config import DinoConfig, Profile
from ..core.runs import SELECT_LAST_EPOCH, config_part, recipe_key, recipe_version
from ..models.baselines import BASELINES, BaselineNet, build_baseline_from_config
from .data import Normalizer
from .engine import (
    Stage,
    autocast,
    prepare_input,
    seed_everything,
    shard_batches,
)
from .pretraining import baseline_config, pool_split, run_pretraining


# ----------------------------------------------------------------------------- head and loss
class DINOHead(nn.Module):
    """3-layer MLP (GELU) -> L2 normalisation -> weight-normalised linear layer to ``out_dim``.

    As in DINO (``norm_last_layer=True``) the weight norm's gain is fixed at 1: each prototype is
    a unit vector, and the outputs are cosine similarities to the prototypes.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048,
                 bottleneck_dim: int = 256) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim), nn.GELU(),
            nn.Linear(hidden_dim, bottleneck_dim),
        )
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = nn.utils.parametrizations.weight_norm(
            nn.Linear(bottleneck_dim, out_dim, bias=False))
        gain = self.last_layer.parametrizations.weight.original0
        gain.data.fill_(1.0)
        gain.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))


class DINOLoss(nn.Module):
    """Cross-entropy between the centred, sharpened teacher and the student over view pairs.

    ``forward(student, teacher, epoch)`` takes per-view outputs ``[B, out_dim]``: ``teacher[g]``
    for the global views, ``student[v]`` for all views with ``student[g]`` the same view as
    ``teacher[g]``. For every teacher view ``g`` and every student view ``v != g`` the term is
    ``mean_b sum_k -softmax((t_g - c) / tau_t)_bk log softmax(s_v / tau_s)_bk``; the loss is the mean
    over those pairs. Afterwards the centre ``c`` moves toward the teacher's batch mean (averaged
    over all ranks under DDP): ``c <- m c + (1 - m) mean(t)``. Computed in float32 (logits reach
    1 / 0.04 = 25).
    """

    def __init__(self, out_dim: int, teacher_temp: float = 0.04, student_temp: float = 0.1,
                 center_momentum: float = 0.9, warmup_teacher_temp: float = 0.04,
                 warmup_teacher_temp_epochs: int = 0) -> None:
        super().__init__()
        self.teacher_temp, self.student_temp = teacher_temp, student_temp
        self.center_momentum = center_momentum
        self.warmup_teacher_temp, self.warmup_epochs = warmup_teacher_temp, warmup_teacher_temp_epochs
        self.register_buffer("center", torch.zeros(1, out_dim))  # checkpointed with the model

    def teacher_temp_at(self, epoch: int) -> float:
        """Linear warm-up from ``warmup_teacher_temp`` reaching ``teacher_temp`` at the last
        warm-up epoch (``np.linspace`` in the reference), then constant."""
        if epoch >= self.warmup_epochs:
            return self.teacher_temp
        frac = epoch / max(1, self.warmup_epochs - 1)
        return self.warmup_teacher_temp + frac * (self.teacher_temp - self.warmup_teacher_temp)

    def teacher_probs(self, teacher: torch.Tensor, temp: float) -> torch.Tensor:
        """Centred and sharpened teacher distribution ``softmax((t - c) / temp)``."""
        return F.softmax((teacher.float() - self.center) / temp, dim=-1)

    def forward(self, student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor],
                epoch: int = 0) -> torch.Tensor:
        if len(teacher) < 1 or len(student) < len(teacher):
            raise ValueError(f"need >= 1 teacher view and at least as many student views, got "
                             f"{len(teacher)} teacher and {len(student)} student views")
        if len(student) == 1:
            raise ValueError("one view only: every student-teacher pair would be the same view")
        with torch.autocast(device_type=teacher[0].device.type, enabled=False):
            temp = self.teacher_temp_at(epoch)
            targets = [self.teacher_probs(t, temp).detach() for t in teacher]
            log_p = [F.log_softmax(s.float() / self.student_temp, dim=-1) for s in student]
            terms = [-(q * log_p[v]).sum(dim=-1).mean()
                     for g, q in enumerate(targets) for v in range(len(log_p)) if v != g]
            loss = torch.stack(terms).mean()
            self.update_center(torch.cat([t.detach().float() for t in teacher]))
        return loss

    @torch.no_grad()
    def update_center(self, teacher: torch.Tensor) -> None:
        total = teacher.sum(dim=0, keepdim=True)
        count = torch.tensor(float(len(teacher)), device=teacher.device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(total)
            dist.all_reduce(count)
        self.center.mul_(self.center_momentum).add_(total / count, alpha=1 - self.center_momentum)


# ----------------------------------------------------------------------------- teacher EMA
def cosine_momentum(step: int, total_steps: int, base: float = 0.996, final: float = 1.0) -> float:
    """DINO's teacher momentum: ``final + (base - final) (1 + cos(pi step / total)) / 2``."""
    if total_steps < 1 or not 0 <= step <= total_steps:
        raise ValueError(f"need 0 <= step <= total_steps and total_steps >= 1, "
                         f"got step {step}, total {total_steps}")
    return final + 0.5 * (base - final) * (1 + math.cos(math.pi * step / total_steps))


@torch.no_grad()
def ema_update(student: nn.Module, teacher: nn.Module, momentum: float) -> None:
    """``teacher <- momentum * teacher + (1 - momentum) * student``, parameter by parameter
    (buffers are not averaged, as in the reference)."""
    if not 0 <= momentum <= 1:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    s_params, t_params = list(student.parameters()), list(teacher.parameters())
    if len(s_params) != len(t_params):
        raise ValueError("student and teacher have different parameter lists")
    for s, t in zip(s_params, t_params):
        t.mul_(momentum).add_(s.detach(), alpha=1 - momentum)


# ----------------------------------------------------------------------------- multi-crop views
def _view(size: int, scale: tuple[float, float], blur_p: float, solarize_p: float) -> nn.Sequential:
    ops: list[nn.Module] = [
        K.RandomResizedCrop((size, size), scale=scale, cropping_mode="resample"),
        K.RandomHorizontalFlip(p=0.5), K.RandomVerticalFlip(p=0.5),
        K.RandomRotation(30.0, p=1.0),
        K.RandomBrightness((0.8, 1.2), p=0.1),
        K.RandomContrast((0.8, 1.2), p=0.1),
        K.RandomGamma((0.6, 1.6), p=0.8),
        K.RandomGaussianBlur(9, (0.1, 2.0), p=blur_p),
    ]
    if solarize_p > 0:  # threshold 0.5 exactly (DINO: 128), nothing added
        ops.append(K.RandomSolarize(thresholds=0.0, additions=0.0, p=solarize_p))
    return nn.Sequential(*ops)


class MultiCrop(nn.Module):
    """2 global views of side ``size`` and ``n_local`` local views of side ``local_size``.

    Input ``[B, 1, H, W]`` float in [0, 1]; output a list ``[g1, g2, l1, ..., ln]`` of batches,
    each image with its own random parameters (torch's RNG; the local crops in one batched call).
    """

    def __init__(self, size: int, local_size: int, n_local: int,
                 global_scale: tuple[float, float] = (0.4, 1.0),
                 local_scale: tuple[float, float] = (0.05, 0.4)) -> None:
        super().__init__()
        self.n_local = n_local
        self.global1 = _view(size, global_scale, blur_p=1.0, solarize_p=0.0)
        self.global2 = _view(size, global_scale, blur_p=0.1, solarize_p=0.2)
        self.local = _view(local_size, local_scale, blur_p=0.5, solarize_p=0.0)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.ndim != 4 or not x.is_floating_point():
            raise ValueError(f"expected a float batch [B, C, H, W] in [0, 1], got "
                             f"{x.dtype} {list(x.shape)}")
        views = [self.global1(x), self.global2(x)]
        if self.n_local:
            views += list(self.local(x.repeat(self.n_local, 1, 1, 1)).chunk(self.n_local))
        return views


# ----------------------------------------------------------------------------- student / teacher
class DinoModel(nn.Module):
    """Student (backbone + head, trained), teacher (a frozen copy, EMA-updated) and the loss
    (whose centre is state). One module so that a checkpoint and resume carry all three.

    ``forward(views)`` runs the student (what DDP wraps); :meth:`teacher_forward` the teacher.
    """

    def __init__(self, net: BaselineNet, head: DINOHead, loss: DINOLoss) -> None:
        super().__init__()
        self.student = nn.ModuleDict({"net": net, "head": head})
        self.teacher = copy.deepcopy(self.student)  # starts equal, as in the reference
        self.teacher.requires_grad_(False)
        self.loss = loss

    @staticmethod
    def _run(parts: nn.ModuleDict, views: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        # one backbone pass per run of equal-sized views (reference: MultiCropWrapper), one head
        # pass for all of them
        feats, start = [], 0
        while start < len(views):
            end = start
            while end < len(views) and views[end].shape[-1] == views[start].shape[-1]:
                end += 1
            feats.append(parts["net"].encode(torch.cat(list(views[start:end]))))
            start = end
        return list(parts["head"](torch.cat(feats)).chunk(len(views)))

    def forward(self, views: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return self._run(self.student, views)

    @torch.no_grad()
    def teacher_forward(self, global_views: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return self._run(self.teacher, global_views)


class DinoPretrainStage(Stage):
    """DINO pretraining of a Table 1 baseline on the unlabeled pool (uint8 ``[N, 1, S, S]``)."""

    name = "pretrain-dino"

    def __init__(self, profile: Profile, images: torch.Tensor, run_dir: Path, key: str,
                 baseline: str = "vit_small", dino: DinoConfig | None = None):
        p, side = profile.pretrain, profile.data.image_size
        dino = profile.dino if dino is None else dino  # one default: the profile's [dino]
        self.profile, self.images, self.dino, self.baseline = profile, images, dino, baseline
        self.normalizer = Normalizer.fit(images.numpy())
        seed_everything(0)  # initial weights
        net = build_baseline_from_config(baseline_config(profile, baseline, dynamic_size=True))
        head = DINOHead(net.feature_dim, dino.out_dim, dino.hidden_dim, dino.bottleneck_dim)
        loss = DINOLoss(dino.out_dim, dino.teacher_temp, dino.student_temp, dino.center_momentum,
                        dino.warmup_teacher_temp, dino.warmup_teacher_temp_epochs)
        self.augment = MultiCrop(side, dino.local_side(side, net.size_multiple), dino.n_local_crops,
                                 dino.global_crop_scale, dino.local_crop_scale)
        super().__init__(DinoModel(net, head, loss), run_dir, epochs=p.epochs,
                         batch_size=p.batch_size, lr=p.lr, weight_decay=p.weight_decay, seed=0,
                         run=profile.run, n_train=len(images), max_steps=p.max_steps, key=key)
        # the optimiser sees the student only (the base class gave it every parameter)
        self.optimizer = torch.optim.Adam(
            [q for q in self.model.student.parameters() if q.requires_grad],
            lr=p.lr, weight_decay=p.weight_decay)
        self.augment = self.augment.to(self.device)
        steps = len(list(shard_batches(len(images), p.batch_size, 0, self.dist, self.drop_last)))
        self.total_steps = self.epochs * min(steps, p.max_steps or steps)
        if self.total_steps < 1:
            raise ValueError(f"pool of {len(images)} images gives no batch of {p.batch_size}")

    def train_step(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.images[idx].to(self.device, non_blocking=True).float().div_(255.0)
        with torch.no_grad():  # views are data, not part of the graph
            views = [prepare_input(self.normalizer(v), self.run) for v in self.augment(x)]
        with autocast(self.device, self.run.precision):
            student = self.ddp_model(views)
            teacher = self.model.teacher_forward(views[:2])
        # the history holds one row per finished epoch, also after a resume
        return self.model.loss(student, teacher, epoch=len(self.history.epochs))

    def after_step(self, step: int) -> None:
        m = cosine_momentum(step, self.total_steps, self.dino.momentum_teacher)
        ema_update(self.model.student, self.model.teacher, m)

    def extra_state(self) -> dict[str, Any]:
        return {"normalizer": self.normalizer.to_dict(), "baseline": self.baseline}


def dino_key(profile: Profile, baseline: str, dino: DinoConfig, checksums: dict[str, str]) -> str:
    """The run key of a DINO pretraining: its recipe (:mod:`bus_paper.core.runs`)."""
    return recipe_key("dino", network=baseline_config(profile, baseline), dino=config_part(dino),
                      pretrain=config_part(profile.pretrain), data=config_part(profile.data),
                      split=pool_split(profile), checksums=dict(checksums),
                      selection=SELECT_LAST_EPOCH)


def dino_pretrain(profile: Profile, root: str | Path | None = None, name: str = "vit_small",
                  dino: DinoConfig | None = None,
                  force: bool = False) -> Path:
    """DINO-pretrain (or reuse) baseline ``name`` on the profile's pool; returns ``encoder.pt``.

    Same pool, epochs, batch size and optimiser as :func:`~bus_paper.train.pretraining.pretrain`,
    cached under ``runs/pretrain-dino/<key>/``. ``encoder.pt`` has the keys of ``pretrain``'s
    file; ``encoder`` is the teacher's :meth:`BaselineNet.encoder_state_dict` (its SimCLR projector
    is untrained) and ``model_config`` the :meth:`BaselineNet.config` that rebuilds it
    (``baseline`` names the model: rebuild it with ``build_baseline_from_config``), plus ``dino``.
    """
    dino = profile.dino if dino is None else dino
    if name not in BASELINES:  # before the pool is loaded
        raise KeyError(f"unknown baseline {name!r}; choose one of {', '.join(BASELINES)}")
    return run_pretraining(
        profile, root, "pretrain-dino", lambda sums: dino_key(profile, name, dino, sums),
        lambda images, run_dir, key: DinoPretrainStage(profile, images, run_dir, key,
                                                       baseline=name, dino=dino),
        lambda stage: {"encoder": stage.model.teacher["net"].encoder_state_dict(),
                       "model_config": baseline_config(profile, name),
                       "dino": dataclasses.asdict(dino),
                       "recipe_version": recipe_version("dino")},
        force)
