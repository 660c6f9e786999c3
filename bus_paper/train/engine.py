"""The training engine: device, precision, seeding, atomic checkpoints with resume, DDP.

One base class, :class:`Stage`, runs epochs with checkpoint/resume; pretraining and fine-tuning
subclass it and override one hook each (``train_step``, plus ``validate`` for fine-tuning), the way
moco-v3 keeps its trainers small. Multi-GPU / multi-node uses torchrun + DistributedDataParallel;
on CPU the same code runs several processes on the gloo backend (that is how it is tested).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from ..config import RunConfig


# ----------------------------------------------------------------------------- device & precision
def select_device(run: RunConfig) -> torch.device:
    if run.device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    if run.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("run.device = 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    if run.device == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(run.device)


def autocast(device: torch.device, precision: str):
    """bf16 autocast on CPU (AMX) and GPU; fp32 is a no-op context."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision != "bf16":
        raise ValueError(f"precision must be 'bf16' or 'fp32', not {precision!r}")
    return torch.autocast(device.type, dtype=torch.bfloat16)


def setup_threads(run: RunConfig) -> None:
    if run.threads:
        torch.set_num_threads(run.threads)


def seed_everything(seed: int) -> None:
    """Seed torch's global RNG (kornia augmentations draw from it); python/numpy are not used."""
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def to_model_memory_format(model: nn.Module, run: RunConfig) -> nn.Module:
    return model.to(memory_format=torch.channels_last) if run.channels_last else model


def prepare_input(x: torch.Tensor, run: RunConfig) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if run.channels_last else x


@torch.no_grad()
def infer(model: nn.Module, x_u8: torch.Tensor, normalizer, run: RunConfig, fn,
          batch_size: int = 64) -> torch.Tensor:
    """``fn(model, x)`` over uint8 images ``[N, 1, S, S]``: z-scored, in eval mode, batched, under
    the run's autocast; the outputs concatenated as float32 on the CPU (empty for no images)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, len(x_u8), batch_size):
        x = normalizer(x_u8[i:i + batch_size].to(device).float() / 255.0)
        with autocast(device, run.precision):
            out.append(fn(model, prepare_input(x, run)).float().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


# ----------------------------------------------------------------------------- distributed
@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init_distributed(device_type: str = "cpu") -> Dist:
    """Join the process group torchrun set up (RANK/WORLD_SIZE in the environment), if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def main_first(d: Dist, fn, *args, **kwargs):
    """Run ``fn`` on rank 0 first (it fills the caches), then on the other ranks (they read them)."""
    if d.main:
        out = fn(*args, **kwargs)
    barrier(d)
    if not d.main:
        out = fn(*args, **kwargs)
    return out


def wrap_ddp(model: nn.Module, d: Dist, device: torch.device) -> nn.Module:
    if not d.enabled:
        return model
    ids = [device.index] if device.type == "cuda" else None
    # the classifier is idle during pretraining and the projector during fine-tuning
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def shard_batches(n: int, batch_size: int, seed: int, d: Dist, drop_last: bool) -> Iterator[torch.Tensor]:
    """Indices of one epoch: the same shuffled permutation on every rank, each rank its own shard.

    Equivalent to torch's DistributedSampler (padding to equal shards so ranks stay in step), but
    driven by an explicit seed so a resumed epoch replays exactly the same batches.
    """
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    per_rank = math.ceil(n / d.world)
    if per_rank * d.world > n:  # pad by wrapping, as DistributedSampler does
        perm = torch.cat([perm, perm[: per_rank * d.world - n]])
    shard = perm[d.rank::d.world]
    stop = (len(shard) // batch_size) * batch_size if drop_last else len(shard)
    for i in range(0, stop, batch_size):
        yield shard[i:i + batch_size]


# ----------------------------------------------------------------------------- checkpoints
def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write atomically: a killed process leaves either the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Checkpoints hold tensors and plain containers only, so they load with ``weights_only=True``."""
    return torch.load(Path(path), map_location=map_location, weights_only=True)


# ----------------------------------------------------------------------------- the stage loop
@dataclass
class History:
    epochs: list[dict[str, float]] = field(default_factory=list)

    def append(self, row: dict[str, float]) -> None:
        self.epochs.append(row)


class Stage:
    """One training stage with per-epoch atomic checkpoints and resume.

    Subclasses implement :meth:`train_step` (one batch of indices -> loss tensor) and may override
    :meth:`validate` (-> dict of metrics, with ``score`` for model selection; higher is better).

    Files in ``run_dir``: ``last.pt`` (every epoch, for resume), ``best.pt`` (best validation score),
    ``log.jsonl`` (one line per epoch), ``done.json`` (written when the stage finished: a finished
    stage is reused, not recomputed).
    """

    name = "stage"
    drop_last = True

    def __init__(self, model: nn.Module, run_dir: Path, *, epochs: int, batch_size: int, lr: float,
                 weight_decay: float, seed: int, run: RunConfig, n_train: int,
                 max_steps: int | None = None, key: str = "", progress: bool = True):
        if epochs < 1:
            raise ValueError("epochs must be >= 1")
        self.run = run
        self.device = select_device(run)
        self.dist = init_distributed(self.device.type)
        self.model = to_model_memory_format(model.to(self.device), run)
        self.ddp_model = wrap_ddp(self.model, self.dist, self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr, weight_decay=weight_decay)
        self.run_dir = Path(run_dir)
        self.epochs, self.batch_size, self.seed = epochs, batch_size, seed
        self.n_train, self.max_steps, self.key = n_train, max_steps, key
        self.progress = progress and self.dist.main
        self.history = History()
        self.best_score = -math.inf
        self.start_epoch = 0

    # hooks ------------------------------------------------------------------
    def train_step(self, idx: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def after_step(self, step: int) -> None:
        """Called after every optimizer step (e.g. a DINO teacher's EMA update)."""

    def validate(self) -> dict[str, float]:
        return {}

    def extra_state(self) -> dict[str, Any]:
        """What a checkpoint carries besides weights (config, normaliser, ...)."""
        return {}

    # machinery --------------------------------------------------------------
    @property
    def done_file(self) -> Path:
        return self.run_dir / "done.json"

    def is_done(self) -> bool:
        return self.done_file.exists()

    def _state(self, epoch: int) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "epoch": epoch, "best_score": self.best_score, "key": self.key,
                "history": json.dumps(self.history.epochs), **self.extra_state()}

    def _try_resume(self) -> None:
        last = self.run_dir / "last.pt"
        if not last.exists():
            return
        state = load_checkpoint(last, self.device)
        if state.get("key") != self.key:
            raise ValueError(f"{last} belongs to another configuration; delete {self.run_dir} to restart")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.start_epoch = int(state["epoch"]) + 1
        self.best_score = float(state["best_score"])
        self.history.epochs = json.loads(state["history"])
        if self.dist.main:
            print(f"[{self.name}] resuming {self.run_dir.name} at epoch {self.start_epoch}/{self.epochs}")

    def fit(self) -> History:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._try_resume()
        for epoch in range(self.start_epoch, self.epochs):
            self.ddp_model.train()
            # every epoch draws from its own seed: a resumed run replays the same batches and views
            epoch_seed = self.seed * 100_003 + epoch
            seed_everything(epoch_seed * 31 + self.dist.rank)
            batches = list(shard_batches(self.n_train, self.batch_size, epoch_seed, self.dist,
                                         self.drop_last))
            if self.max_steps:
                batches = batches[: self.max_steps]
            t0, seen, total = time.perf_counter(), 0, 0.0
            bar = tqdm(batches, desc=f"{self.name} {epoch + 1}/{self.epochs}", leave=False,
                       disable=not self.progress, mininterval=2.0)
            for i, idx in enumerate(bar):
                loss = self.train_step(idx)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                self.after_step(epoch * len(batches) + i)  # global step index
                seen += len(idx) * self.dist.world
                value = float(loss.detach())
                total += value * len(idx)
                bar.set_postfix(loss=f"{value:.4f}",
                                img_s=f"{seen / (time.perf_counter() - t0):.1f}")
            train_time = time.perf_counter() - t0
            row = {"epoch": epoch, "train_loss": total / max(1, seen / self.dist.world),
                   "img_per_s": seen / train_time, "train_seconds": train_time}
            row.update(self.validate())
            self.history.append(row)
            improved = "score" in row and row["score"] > self.best_score
            if improved:
                self.best_score = row["score"]
            if self.dist.main:
                if improved:  # model selection on validation only
                    save_checkpoint(self.run_dir / "best.pt", {"model": self.model.state_dict(),
                                                               "epoch": epoch, **self.extra_state()})
                save_checkpoint(self.run_dir / "last.pt", self._state(epoch))
                # rewritten from the checkpointed history, so log and checkpoint never disagree
                tmp = self.run_dir / "log.jsonl.tmp"
                tmp.write_text("".join(json.dumps(r) + "\n" for r in self.history.epochs))
                os.replace(tmp, self.run_dir / "log.jsonl")
                if self.progress:
                    shown = {k: round(v, 4) for k, v in row.items() if isinstance(v, float)}
                    print(f"[{self.name}] epoch {epoch + 1}/{self.epochs} {shown}", flush=True)
            barrier(self.dist)
        if self.dist.main:
            self.done_file.write_text(json.dumps({"epochs": self.epochs, "best_score": self.best_score,
                                                  "key": self.key}))
        barrier(self.dist)
        return self.history
