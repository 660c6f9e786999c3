"""The training engine: device, precision, seeding, atomic checkpoints with resume, DDP.

One base class, :class:`Stage`, runs epochs with checkpoint/resume; pretraining and fine-tuning
subclass it and override one hook each (``train_step``, plus ``validate`` for fine-tuning), the way
moco-v3 keeps its trainers small. Multi-GPU / multi-node uses torchrun + DistributedDataParallel;
on CPU the same code runs several processes on the gloo backend (that is how it is tested).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import logging
import math
import os
import pickle
import re
import shutil
import socket
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from ..config import RunConfig
from ..core.atomic import atomic_path, atomic_write_text
from ..core.log import shows_progress
from ..core.runs import note_run_used

log = logging.getLogger(__name__)


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


def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bf16 in hardware (AVX512-BF16 or AMX).

    Without it PyTorch emulates bf16: a 1024^2 bf16 matmul ran at 0.7 GFLOP/s against 65 GFLOP/s in
    fp32 on an AVX2-only EPYC here, so a "bf16" profile would train ~10-90x slower than fp32.
    ``BUS_PAPER_CPU_BF16=1`` / ``=0`` overrides the detection (read on every call, so a test can
    set it)."""
    forced = os.environ.get("BUS_PAPER_CPU_BF16")
    if forced in ("0", "1"):
        return forced == "1"
    return _hardware_bf16()


@functools.cache
def _hardware_bf16() -> bool:
    from ..provenance import hardware_bf16
    return hardware_bf16()


def effective_precision(device: torch.device, precision: str) -> str:
    """The precision a run really uses: a profile's ``bf16`` falls back to ``fp32`` on a CPU
    without native bf16 (it would be slower, not faster). Result files record it
    (``provenance.hardware()['cpu_bf16']``), so a number is always traceable to its arithmetic."""
    if precision not in ("bf16", "fp32"):
        raise ValueError(f"precision must be 'bf16' or 'fp32', not {precision!r}")
    if precision == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        return "fp32"
    return precision


def autocast(device: torch.device, precision: str):
    """bf16 autocast on GPU and on CPUs with native bf16; a no-op context for fp32 (and for bf16
    on a CPU that would only emulate it, see :func:`effective_precision`)."""
    if effective_precision(device, precision) == "fp32":
        return contextlib.nullcontext()
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
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Checkpoints hold tensors and plain containers only, so they load with ``weights_only=True``."""
    return torch.load(Path(path), map_location=map_location, weights_only=True)


# ----------------------------------------------------------------------------- files that heal
# A run folder's files are rewritten atomically, but a full disk, a copy cut short or a crash of
# the machine can still leave a truncated one. Such a file is named on stderr and moved aside
# (kept for a post-mortem, never read again), and what it held is recomputed: a rerun never
# dies on it.
_T = TypeVar("_T")
# what reading a truncated or garbled file raises (torch: RuntimeError from the zip reader,
# EOFError when empty, UnpicklingError when not a zip at all; json/pandas/numpy: ValueError)
UNREADABLE = (ValueError, EOFError, RuntimeError, KeyError, pickle.UnpicklingError,
              zipfile.BadZipFile)


class CorruptFile(ValueError):
    """A file that reads but does not hold what it should (e.g. a checkpoint without its keys)."""


def set_aside(path: Path, why: str, delete: bool = False, then: str = "recomputing it") -> None:
    """Rename an unreadable ``path`` to ``<name>.corrupt-<time>`` (a cache file: ``delete``) and
    say so, and what happens ``then``, in one line on stderr."""
    path = Path(path)
    dest = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
    with contextlib.suppress(FileNotFoundError):  # another process was first
        path.unlink() if delete else os.replace(path, dest)
    log.warning("bus-paper: %s is corrupt or truncated (%s); %s; %s", path, why,
                "deleted" if delete else f"moved aside to {dest.name}", then)


def read_or_heal(path: Path, read: Callable[[Path], _T], heal: bool = True,
                 delete: bool = False, then: str = "recomputing it") -> _T | None:
    """``read(path)``, or None when the file is absent or unreadable (then, with ``heal``, it is
    :func:`set_aside`). Under DDP only rank 0 heals: the other ranks read the same bytes, so
    they come to the same answer (or find the file gone: None as well)."""
    try:
        return read(Path(path))
    except FileNotFoundError:
        return None
    except UNREADABLE as err:
        if heal:
            first = (str(err).splitlines() or [""])[0][:120]
            set_aside(path, f"{type(err).__name__}: {first}" if first else type(err).__name__,
                      delete, then)
        return None


def load_checkpoint_or_heal(path: Path, map_location: str | torch.device = "cpu",
                            needs: tuple[str, ...] = ("model",), heal: bool = True,
                            then: str = "recomputing it") -> dict[str, Any] | None:
    """:func:`load_checkpoint`, or None when ``path`` is absent, unreadable or lacks ``needs``
    (an unreadable one is moved aside, see :func:`read_or_heal`)."""
    def read(p: Path) -> dict[str, Any]:
        state = load_checkpoint(p, map_location)
        missing = [k for k in needs if k not in state] if isinstance(state, dict) else needs
        if missing:
            raise CorruptFile(f"a checkpoint without {list(missing)}")
        return state
    return read_or_heal(path, read, heal, then=then)


def read_json_or_heal(path: Path, heal: bool = True) -> Any | None:
    return read_or_heal(path, lambda p: json.loads(p.read_text()), heal)


def write_json(path: Path, obj: Any) -> None:
    """Write atomically (temporary file, then rename): a killed write never leaves half a file."""
    atomic_write_text(path, json.dumps(obj, indent=1, default=float))


def checkpoint_intact(path: Path) -> bool:
    """Cheap check of a ``torch.save`` file (a zip archive) for reuse: its index at the end is
    there, which a truncated file's is not (the tensors are not read). Raises when it is not."""
    with zipfile.ZipFile(path) as z:
        if not z.namelist():
            raise CorruptFile("an empty archive")
    return True


def read_cached_run(run_dir: Path, read_predictions: Callable[[Path], Any],
                    heal: bool = True) -> dict[str, Any] | None:
    """``result.json`` of a finished run with its predictions (``result["predictions"]``), or
    None: not finished, or a file is unreadable (moved aside) or incomplete, so rerun it."""
    def read_result(p: Path) -> dict[str, Any]:
        obj = json.loads(p.read_text())
        if not isinstance(obj, dict):
            raise CorruptFile("not a JSON object")
        return obj
    result = read_or_heal(run_dir / "result.json", read_result, heal)
    if result is None:
        return None

    def read(p: Path) -> Any:
        preds = read_predictions(p)
        n = result.get("n", {})
        want = n.get("val", 0) + n.get("test", 0) if {"val", "test"} <= set(n) else len(preds)
        if len(preds) != want or preds["prob"].isna().any():  # cut at a line or mid-line
            raise CorruptFile(f"{len(preds)} rows of {want}, or a missing probability")
        return preds
    preds = read_or_heal(run_dir / "predictions.csv", read, heal)
    if preds is None:
        return None
    return result | {"predictions": preds}


# ----------------------------------------------------------------------------- run-folder locks
# Two processes on one run folder would both train, write the same files and delete them under
# each other ("No such file: best.pt"). The first takes an advisory flock on <run_dir>/.lock;
# the kernel releases it when the process dies (kill -9 included), so a lock is never stale.
# The lock file itself is never deleted: another process may be waiting on its inode.
LOCK_NAME = ".lock"
_HELD: dict[Path, int | None] = {}        # run folders this process holds (its fd on rank 0)
_SCOPES: list[contextlib.ExitStack] = []  # see releases_run_locks
_TMP = re.compile(r"\.tmp\d*$")  # core.atomic: .last.pt.<random>.tmp; older: last.pt.tmp<pid>


class RunInUse(ValueError):
    """Another live process holds the run folder (a ValueError: the CLI prints it as one line)."""


def _holder(lock: Path) -> str:
    try:
        pid, host = lock.read_text().split()[:2]
        return f"pid {pid} on host {host}"
    except (OSError, ValueError):  # the holder has not written its name yet
        return "another process"


def _acquire(lock: Path, d: Dist) -> int:
    """The locked fd of ``lock``. A single process waits for the holder (printing who it is)
    up to $BUS_PAPER_LOCK_WAIT seconds (default: as long as it takes); under DDP rank 0 fails at
    once, since the other ranks wait for it in a barrier with a timeout."""
    wait = 0.0 if d.enabled else (float(os.environ["BUS_PAPER_LOCK_WAIT"])
                                  if os.environ.get("BUS_PAPER_LOCK_WAIT") else math.inf)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    t0, told = time.monotonic(), False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            who = _holder(lock)
            if time.monotonic() - t0 >= wait:
                os.close(fd)
                raise RunInUse(f"{lock.parent} is in use by {who} (a run of the same "
                               f"configuration); rerun once it has finished: its result is "
                               f"then reused") from None
            if not told:
                log.warning("bus-paper: %s is in use by %s; waiting for it to finish "
                            "(BUS_PAPER_LOCK_WAIT=<seconds> to give up sooner)", lock.parent, who)
                told = True
            time.sleep(0.5)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
    return fd


def remove_stale_tmp(run_dir: Path) -> None:
    """Delete the temporary files of writes that were killed (``last.pt.tmp<pid>``, ...); called
    with the run's lock held, so no live process is writing any of them."""
    stale = sorted(p.name for p in Path(run_dir).iterdir() if _TMP.search(p.name) and p.is_file())
    for name in stale:
        (Path(run_dir) / name).unlink(missing_ok=True)
    if stale:
        log.warning("bus-paper: removed temporary files of killed writes in %s: %s", run_dir,
                    ", ".join(stale))


@contextlib.contextmanager
def run_lock(run_dir: Path, d: Dist = Dist()) -> Iterator[None]:
    """Hold ``run_dir`` (created if needed) against other processes; nests within a process.
    Under DDP rank 0 holds it for all ranks; every rank must enter (it ends in a barrier)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = (run_dir / LOCK_NAME).resolve()
    if lock in _HELD:  # e.g. finetune() holds it while its Stage fits: the same on every rank
        yield
        return
    fd = _acquire(lock, d) if d.main else None
    _HELD[lock] = fd
    try:
        if d.main:
            remove_stale_tmp(run_dir)
            note_run_used(run_dir)  # the runner's ledger of the runs a chapter used
        barrier(d)
        yield
    finally:
        del _HELD[lock]
        if fd is not None:
            os.close(fd)  # releases the flock


def releases_run_locks(fn: Callable[..., _T]) -> Callable[..., _T]:
    """Decorator: the run locks ``fn`` takes with :func:`hold_run_lock` are released when it
    returns or raises. A cached-run function holds its folder from the cache check to the last
    write, which it only knows after computing the key half-way through its body."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> _T:
        with contextlib.ExitStack() as stack:
            _SCOPES.append(stack)
            try:
                return fn(*args, **kwargs)
            finally:
                _SCOPES.pop()
    return wrapper


def hold_run_lock(run_dir: Path, d: Dist = Dist()) -> None:
    """:func:`run_lock` of ``run_dir`` until the enclosing :func:`releases_run_locks` returns."""
    if not _SCOPES:
        raise RuntimeError("hold_run_lock() outside a function decorated with releases_run_locks")
    _SCOPES[-1].enter_context(run_lock(run_dir, d))


def clear_run_dir(run_dir: Path, d: Dist = Dist()) -> None:
    """Empty ``run_dir`` for a forced rerun, keeping its (held) lock file."""
    if d.main and Path(run_dir).is_dir():
        for p in Path(run_dir).iterdir():
            if p.name != LOCK_NAME:
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    barrier(d)


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
                 max_steps: int | None = None, key: str = "", patience: int | None = None):
        if epochs < 1:
            raise ValueError("epochs must be >= 1")
        if patience is not None and patience < 1:
            raise ValueError("patience must be >= 1 (or None: never stop early)")
        self.run = run
        self.device = select_device(run)
        self.dist = init_distributed(self.device.type)
        self.model = to_model_memory_format(model.to(self.device), run)
        self.ddp_model = wrap_ddp(self.model, self.dist, self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr, weight_decay=weight_decay)
        self.run_dir = Path(run_dir)
        self.epochs, self.batch_size, self.seed = epochs, batch_size, seed
        self.n_train, self.max_steps, self.key = n_train, max_steps, key
        self.patience = patience
        self.progress = self.dist.main and shows_progress(log)  # tqdm bars and epoch lines
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

    def after_epoch(self, epoch: int) -> None:
        """Called on the main process after epoch ``epoch`` (0-based), before its ``last.pt``: a
        file written here (e.g. an encoder snapshot) exists whenever the epoch counts as done,
        and a run killed in between redoes the epoch and writes it again."""

    def extra_state(self) -> dict[str, Any]:
        """What a checkpoint carries besides weights (config, normaliser, ...)."""
        return {}

    # machinery --------------------------------------------------------------
    @property
    def done_file(self) -> Path:
        return self.run_dir / "done.json"

    def is_done(self) -> bool:
        return read_json_or_heal(self.done_file, heal=self.dist.main) is not None

    def _state(self, epoch: int) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "epoch": epoch, "best_score": self.best_score, "key": self.key,
                "history": json.dumps(self.history.epochs), **self.extra_state()}

    def _say(self, message: str) -> None:
        if self.dist.main:
            log.warning("[%s] %s: %s", self.name, self.run_dir.name, message)

    def _try_resume(self) -> None:
        last = self.run_dir / "last.pt"
        if not last.exists():
            return
        state = load_checkpoint_or_heal(
            last, self.device, ("model", "optimizer", "epoch", "best_score", "history"),
            heal=self.dist.main,  # best.pt cannot stand in for it: it has no optimizer state
            then=f"training {self.name} from scratch")
        if state is None:
            return
        if state.get("key") != self.key:
            raise ValueError(f"{last} belongs to another configuration; delete {self.run_dir} to restart")
        # the best epoch's weights must survive too (read after fit); they cannot be rebuilt
        finished = int(state["epoch"]) + 1 >= self.epochs
        then = (f"{self.name} had finished: training it again from scratch" if finished
                else "the best of the remaining epochs will be selected")
        best = self.run_dir / "best.pt"
        missing = not best.exists()
        best_ok = float(state["best_score"]) == -math.inf or load_checkpoint_or_heal(
            best, "cpu", heal=self.dist.main, then=then) is not None
        if not best_ok and missing:
            self._say(f"best.pt is missing; {then}")
        if not best_ok and finished:
            if self.dist.main:
                last.unlink()
            return  # the model still holds its initial weights
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.start_epoch = int(state["epoch"]) + 1
        self.best_score = float(state["best_score"]) if best_ok else -math.inf
        self.history.epochs = json.loads(state["history"])
        if self.dist.main:
            log.info("[%s] resuming %s at epoch %d/%d", self.name, self.run_dir.name,
                     self.start_epoch, self.epochs)

    def epoch_batches(self, epoch_seed: int) -> list[torch.Tensor]:
        """The batches of training indices of one epoch (this rank's shard): every training
        example once, shuffled by ``epoch_seed``. A stage that samples otherwise (e.g. capped per
        site) overrides this; it must depend on ``epoch_seed`` alone, so a resumed epoch replays."""
        return list(shard_batches(self.n_train, self.batch_size, epoch_seed, self.dist,
                                  self.drop_last))

    def stalled(self) -> bool:
        """True when ``patience`` epochs have passed without a better validation score than the
        best one. Worked out from the checkpointed history, not from a counter, so a resumed run
        stops where an uninterrupted one would."""
        scores = [r["score"] for r in self.history.epochs if "score" in r]
        if self.patience is None or not scores:
            return False
        best = max(range(len(scores)), key=lambda i: (scores[i], -i))  # the first best epoch
        return len(scores) - 1 - best >= self.patience

    def fit(self) -> History:
        """Train the remaining epochs, holding the run folder against other processes."""
        with run_lock(self.run_dir, self.dist):
            return self._fit()

    def _fit(self) -> History:
        self._try_resume()
        for epoch in range(self.start_epoch, self.epochs):
            if self.stalled():  # early stop: the best epoch is already saved as best.pt
                if self.progress:
                    log.info("[%s] no better validation score in %d epochs: stopping after epoch %d/%d",
                             self.name, self.patience, epoch, self.epochs)
                break
            self.ddp_model.train()
            # every epoch draws from its own seed: a resumed run replays the same batches and views
            epoch_seed = self.seed * 100_003 + epoch
            seed_everything(epoch_seed * 31 + self.dist.rank)
            batches = self.epoch_batches(epoch_seed)
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
                self.after_epoch(epoch)
                save_checkpoint(self.run_dir / "last.pt", self._state(epoch))
                # rewritten from the checkpointed history, so log and checkpoint never disagree
                atomic_write_text(self.run_dir / "log.jsonl",
                                  "".join(json.dumps(r) + "\n" for r in self.history.epochs))
                shown = {k: round(v, 4) for k, v in row.items() if isinstance(v, float)}
                log.info("[%s] epoch %d/%d %s", self.name, epoch + 1, self.epochs, shown)
            barrier(self.dist)
        if self.dist.main:
            write_json(self.done_file, {"epochs": self.epochs, "best_score": self.best_score,
                                        "key": self.key, "epochs_run": len(self.history.epochs)})
        barrier(self.dist)
        return self.history
