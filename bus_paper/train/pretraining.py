"""Self-supervised contrastive pretraining (paper 000, eq. 1-7) on the unlabeled pool.

Two augmented views of each image go through the shared encoder and the projection head; NT-Xent
pulls the views of the same image together against the 2N-2 other embeddings of the batch. Under
DDP the embeddings of all ranks are gathered (differentiably), so the negatives are those of the
global batch, as on one large GPU.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..augment import build_augment
from ..config import Profile
from ..core.runs import SELECT_LAST_EPOCH, config_part, recipe_key, recipe_version
from ..losses import NTXentLoss
from ..models import build_network
from ..paths import runs_dir
from .data import Normalizer, load_pool, resolve_root
from .engine import (
    Stage,
    autocast,
    barrier,
    checkpoint_intact,
    clear_run_dir,
    hold_run_lock,
    init_distributed,
    load_checkpoint,
    main_first,
    prepare_input,
    read_or_heal,
    releases_run_locks,
    save_checkpoint,
    seed_everything,
    select_device,
)

log = logging.getLogger(__name__)


class _Project(nn.Module):
    """forward = encoder + projection head of both views, in one call that DDP wraps and syncs.

    The two views go through as two passes of N rather than one of 2N: measured 1.5x faster on
    CPU (smaller working set), and BatchNorm then normalises each view's batch on its own.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.m = model

    def forward(self, v1: torch.Tensor, v2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.m.project(v1), self.m.project(v2)


def _gather(z: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return z
    from torch.distributed.nn.functional import all_gather  # keeps gradients flowing to every rank
    return torch.cat(all_gather(z), dim=0)


class PretrainStage(Stage):
    name = "pretrain"

    def __init__(self, profile: Profile, images: torch.Tensor, run_dir: Path, key: str, baseline: str | None = None,
                 network: Mapping[str, Any] | None = None, snapshots: Sequence[int] = ()):
        p = profile.pretrain
        if bad := [e for e in snapshots if not 1 <= e <= p.epochs]:
            raise ValueError(f"snapshot epochs {bad} are outside 1..{p.epochs} (pretrain.epochs)")
        self.snapshots = frozenset(int(e) for e in snapshots)
        self.model_config = network_config(profile, baseline, network)
        self.profile = profile
        self.images = images
        self.normalizer = Normalizer.fit(images.numpy())
        self.augment = build_augment(p.augment)
        self.loss_fn = NTXentLoss(p.temperature)
        seed_everything(0)  # initial weights
        super().__init__(_Project(build_network(self.model_config)), run_dir, epochs=p.epochs,
                         batch_size=p.batch_size, lr=p.lr, weight_decay=p.weight_decay,
                         seed=0, run=profile.run, n_train=len(images), max_steps=p.max_steps,
                         key=key)
        self.augment = self.augment.to(self.device)

    def train_step(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.images[idx].to(self.device, non_blocking=True).float().div_(255.0)
        with torch.no_grad():  # views are data, not part of the graph
            v1, v2 = (prepare_input(self.normalizer(self.augment(x)), self.run) for _ in range(2))
        with autocast(self.device, self.run.precision):
            z1, z2 = self.ddp_model(v1, v2)
        return self.loss_fn(_gather(z1.float()), _gather(z2.float()))

    def extra_state(self) -> dict[str, Any]:
        return {"normalizer": self.normalizer.to_dict()}

    def after_epoch(self, epoch: int) -> None:
        e = epoch + 1
        if e in self.snapshots:  # the rest of what run_pretraining writes into encoder.pt
            history = self.history.epochs[:e]
            save_checkpoint(snapshot_path(self.run_dir, e), {
                **self.export(), "normalizer": self.normalizer.to_dict(),
                "key": f"{self.key}@e{e}",  # fine-tunings from different snapshots never share
                "pool": list(self.profile.pretrain.pool), "n_images": len(self.images),
                "epochs": e, "history": json.dumps(history),
                "seconds": float(sum(r["train_seconds"] for r in history))})

    def export(self) -> dict[str, Any]:
        """This objective's own entries of ``encoder.pt`` (:func:`run_pretraining` adds the rest)."""
        return {"encoder": self.model.m.encoder_state_dict(), "model_config": self.model_config,
                "recipe_version": recipe_version("pretrain")}


def snapshot_path(run_dir: Path, epochs: int) -> Path:
    """The encoder of a pretraining run after ``epochs`` epochs (see :func:`pretrain_snapshots`)."""
    return Path(run_dir) / f"encoder_e{epochs}.pt"


def baseline_config(profile: Profile, name: str, dynamic_size: bool = False) -> dict[str, Any]:
    """The :meth:`~bus_paper.models.baselines.BaselineNet.config` of baseline ``name`` under
    ``profile``: its input side (the profile's image size) and the heads and regularisation of
    ``profile.model``. DINO's local crops need ``dynamic_size`` in pretraining only; the weights
    are the same without it, so checkpoints store it off."""
    m = profile.model
    return {"baseline": name, "img_size": profile.data.image_size, "num_classes": m.num_classes,
            "proj_hidden": m.proj_hidden, "proj_dim": m.proj_dim,
            "drop_path_rate": m.drop_path_rate, "drop_rate": m.drop_rate,
            "dynamic_size": dynamic_size}


def network_config(profile: Profile, baseline: str | None = None,
                   network: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What :func:`~bus_paper.models.build_network` builds: ``network`` when given (an explicit
    config of any family), else Table 1 baseline ``baseline`` at the profile's image size, else
    the proposed model of ``profile.model``."""
    if network is not None:
        if baseline is not None:
            raise ValueError("give baseline= or network=, not both")
        return dict(network)
    return baseline_config(profile, baseline) if baseline else dataclasses.asdict(profile.model)


def network_name(model_config: Mapping[str, Any]) -> str:
    """Short name of a network config: its ``name`` or ``family`` or ``baseline``, else proposed."""
    for key in ("name", "family", "baseline"):
        if model_config.get(key):
            return str(model_config[key])
    return "proposed"


def pool_split(profile: Profile) -> dict[str, Any]:
    """What carves the pretraining pool: its datasets, minus the images that duplicate an image of
    the evaluation datasets (see :func:`~bus_paper.train.data.load_pool`)."""
    return {"pool": list(profile.pretrain.pool),
            "without_duplicates_of": sorted(profile.finetune.datasets)}


def pretrain_key(profile: Profile, checksums: dict[str, str], baseline: str | None = None,
                 network: Mapping[str, Any] | None = None) -> str:
    """The run key of a SimCLR pretraining: its recipe (:mod:`bus_paper.core.runs`)."""
    return recipe_key("pretrain", network=network_config(profile, baseline, network),
                      pretrain=config_part(profile.pretrain), data=config_part(profile.data),
                      split=pool_split(profile), checksums=dict(checksums),
                      selection=SELECT_LAST_EPOCH)


@releases_run_locks
def run_pretraining(profile: Profile, root: str | Path | None, kind: str, key_of, make_stage,
                    export, force: bool = False) -> Path:
    """Cache-or-run one self-supervised pretraining; returns ``runs/<kind>/<key>/encoder.pt``.

    Shared by every objective (SimCLR here, DINO in :mod:`.dino`): ``key_of(checksums)`` names the
    run, ``make_stage(images, run_dir, key)`` builds its :class:`Stage`, ``export(stage)`` gives
    the objective's own entries of ``encoder.pt`` (at least ``encoder`` and ``model_config``).
    A finished run is reused (a truncated ``encoder.pt`` is moved aside and recomputed), a
    killed one resumes from ``last.pt``; a second process of the same key waits for the first.
    """
    from ..data.checksum import data_checksum
    d = init_distributed(select_device(profile.run).type)
    root = main_first(d, resolve_root, profile, root)
    pool_and_eval = tuple(profile.pretrain.pool) + tuple(profile.finetune.datasets)
    key = key_of(data_checksum(root, pool_and_eval))
    run_dir = runs_dir() / kind / key
    out = run_dir / "encoder.pt"
    hold_run_lock(run_dir, d)
    if not force and read_or_heal(out, checkpoint_intact, heal=d.main):
        return out
    if force:
        clear_run_dir(run_dir, d)
    images, pool = main_first(d, load_pool, profile, root)
    stage = make_stage(images, run_dir, key)
    t0 = time.perf_counter()
    history = stage.fit()
    if stage.dist.main:
        save_checkpoint(out, {**export(stage), "normalizer": stage.normalizer.to_dict(),
                              "key": key, "pool": list(profile.pretrain.pool),
                              "n_images": len(pool), "history": json.dumps(history.epochs),
                              "seconds": time.perf_counter() - t0})
        (run_dir / "last.pt").unlink(missing_ok=True)  # resume state, not needed once finished
    barrier(d)  # other ranks return only once encoder.pt exists
    return out


def pretrain(profile: Profile, root: str | Path | None = None,
             force: bool = False, baseline: str | None = None,
             network: Mapping[str, Any] | None = None) -> Path:
    """SimCLR-pretrain (or reuse) the encoder of ``profile``; returns the path of ``encoder.pt``.

    ``baseline`` pretrains a Table 1 baseline (e.g. ``"resnet50"``: the SimCLR row) with the same
    objective, pool, epochs and optimiser instead of the proposed model; ``network`` any network
    config (e.g. a family of a later chapter, see :func:`~bus_paper.models.build_network`).

    The result is cached under ``runs/pretrain/<key>/`` where the key is the recipe (model,
    pretraining and data configs, the pool, its data checksums and the ``pretrain`` recipe
    version of :mod:`bus_paper.core.runs`): every fine-tuning
    (any seed, any dataset) of the same profile shares it. A killed run resumes from ``last.pt``.
    """
    return _simclr(profile, root, baseline, network, force=force)


def _simclr(profile: Profile, root: str | Path | None, baseline: str | None,
            network: Mapping[str, Any] | None, force: bool = False,
            snapshots: Sequence[int] = ()) -> Path:
    """:func:`run_pretraining` of the SimCLR objective (see :func:`pretrain`)."""
    return run_pretraining(
        profile, root, "pretrain", lambda sums: pretrain_key(profile, sums, baseline, network),
        lambda images, run_dir, key: PretrainStage(profile, images, run_dir, key, baseline=baseline,
                                                   network=network, snapshots=snapshots),
        PretrainStage.export, force)


def pretrain_snapshots(profile: Profile, epochs: Sequence[int], root: str | Path | None = None,
                       baseline: str | None = None, network: Mapping[str, Any] | None = None
                       ) -> dict[int, Path]:
    """The encoder after each of ``epochs`` epochs, from ONE run of ``max(epochs)`` epochs:
    ``{epochs: path of an encoder.pt-format file}``.

    Pretraining uses a constant learning rate and seeds every epoch on its own, so the snapshot
    after 5 epochs of a 20-epoch run is the encoder a 5-epoch run would give: one run yields a
    whole budget curve. The longest budget is the run's own ``encoder.pt`` (the same key as a
    plain :func:`pretrain` with ``pretrain.epochs = max(epochs)``, so the two share the cache);
    the shorter ones are ``encoder_e<N>.pt`` beside it. When that run is cached without them (it
    was a plain :func:`pretrain`), they come from a run of the longest missing budget instead,
    which costs only those epochs.
    """
    budgets = sorted({int(e) for e in epochs})
    if not budgets or budgets[0] < 1:
        raise ValueError(f"epochs must be a non-empty list of positive numbers, got {list(epochs)}")
    shorter = budgets[:-1]
    out = _simclr(profile.replace(**{"pretrain.epochs": budgets[-1]}), root, baseline, network,
                  snapshots=shorter)
    have = {e: snapshot_path(out.parent, e) for e in shorter}
    missing = [e for e, path in have.items() if not path.exists()]
    if missing:  # a cached run trained without them: a shorter run gives the same encoders
        log.info("%s has no snapshots at epochs %s; taking them from a %d-epoch run",
                 out.parent, missing, missing[-1])
        have.update(pretrain_snapshots(profile, missing, root, baseline, network))
    return {**have, budgets[-1]: out}


def load_pretrained(path: Path) -> dict[str, Any]:
    state = load_checkpoint(path)
    state["history"] = json.loads(state["history"])
    return state
