"""`bus-paper bench`: our pretraining step loop vs the recipe a user would pick instead.

Reference recipe: lightly's SimCLR transforms (adapted to grayscale: no saturation/hue jitter, no
random-grayscale, one-channel normalisation) applied per image in a torch DataLoader that decodes
PNGs, lightly's ``NTXentLoss``, fp32, contiguous NCHW. Ours: uint8 images decoded once and cached,
batched augmentations as tensor ops, bf16 autocast, channels_last. Same backbone, image size, batch
size and optimiser. The run also measures this machine's bf16 matmul peak, so our achieved GFLOP/s
can be read as a fraction of what the hardware can do.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..config import Profile
from .data import load_pool, resolve_root
from .engine import autocast, effective_precision, prepare_input, select_device
from .pretraining import PretrainStage


def matmul_peak_gflops(device: torch.device, n: int = 2048, reps: int = 12,
                       precision: str = "bf16") -> float:
    """Best-of square-matmul throughput in the precision the training step really uses (bf16, or
    fp32 where this CPU would only emulate bf16): the ceiling our step is compared with."""
    dtype = torch.bfloat16 if effective_precision(device, precision) == "bf16" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(3):
        a @ b
    for _ in range(reps):
        _sync(device)
        t = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time_steps(step, steps: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        step()
    _sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return (time.perf_counter() - t) / steps


def bench_ours(profile: Profile, images: torch.Tensor, steps: int,
               stages: bool = False) -> dict[str, Any]:
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        stage = PretrainStage(profile, images, Path(tmp), key="bench")
    bs = profile.pretrain.batch_size
    g = torch.Generator().manual_seed(0)

    def step():
        idx = torch.randint(0, len(images), (bs,), generator=g)
        loss = stage.train_step(idx)
        stage.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        stage.optimizer.step()

    # FLOPs of one step by the usual convention: forward FLOPs of both views x 3 (backward ~ 2x
    # forward). torch's counter is used on the forward only: its convolution_backward formula
    # over-counts grouped (depthwise) convolutions by ~20x on this model.
    model = stage.model.m
    x = stage.normalizer(images[:bs].float() / 255.0).to(stage.device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.project(x)
    flops = 3 * 2 * counter.get_total_flops()
    sec = _time_steps(step, steps, warmup=2, device=stage.device)
    res = {"img_s": bs / sec, "step_s": sec, "step_gflop": flops / 1e9, "gflop_s": flops / sec / 1e9}
    if stages:
        res["stages"] = stage_times(stage)
    return res


def stage_times(stage: PretrainStage, reps: int = 3) -> dict[str, dict[str, float]]:
    """Seconds per training step spent in each encoder stage S0-S4, forward and backward.

    Each stage is timed on its own (best of ``reps``), on the maps it sees at every input scale,
    and multiplied by two views, so the numbers add up to most of one step of :func:`bench_ours`
    (the rest is fusion, heads, loss and optimiser). It tells which stages bound the step, e.g.
    how fast the step could be if the memory-bound stem and MBConv stage S1 cost nothing.
    """
    model = stage.model.m
    enc, run, device = model.encoder, stage.run, stage.device
    names = ["S0"] + [f"S{i + 1}" for i in range(len(enc.stages))]
    out = {n: {"forward_s": 0.0, "backward_s": 0.0} for n in names}
    for side in model.scales:
        x = prepare_input(torch.randn(stage.batch_size, model.cfg.in_chans, side, side,
                                      device=device), run)
        with torch.no_grad():
            enc(x)      # sets the attention's map sizes for this scale
        for name, module in zip(names, [enc.stem, *enc.stages]):
            x = x.detach().requires_grad_(name != "S0")
            fwd = bwd = float("inf")
            for _ in range(reps):
                _sync(device)
                t0 = time.perf_counter()
                with autocast(device, run.precision):
                    y = module(x)
                _sync(device)
                t1 = time.perf_counter()
                y.backward(torch.ones_like(y))
                _sync(device)
                fwd, bwd = min(fwd, t1 - t0), min(bwd, time.perf_counter() - t1)
            module.zero_grad(set_to_none=True)
            out[name]["forward_s"] += 2 * fwd     # two views per step
            out[name]["backward_s"] += 2 * bwd
            x = y
    return out


class _FileDataset(torch.utils.data.Dataset):
    def __init__(self, files: list[Path], transform):
        self.files, self.transform = files, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        from PIL import Image
        with Image.open(self.files[i]) as im:
            img = im.convert("L")
        return self.transform(img)


def bench_reference(profile: Profile, files: list[Path], steps: int, workers: int) -> dict[str, float]:
    from lightly.loss import NTXentLoss as LightlyNTXent
    from lightly.transforms import SimCLRTransform

    from ..models import build_model
    device = select_device(profile.run)
    size, bs = profile.data.image_size, profile.pretrain.batch_size
    transform = SimCLRTransform(input_size=size, cj_sat=0.0, cj_hue=0.0, random_gray_scale=0.0,
                                vf_prob=0.5, rr_prob=0.5, rr_degrees=30,
                                normalize={"mean": [0.5], "std": [0.25]})
    loader = torch.utils.data.DataLoader(_FileDataset(files, transform), batch_size=bs, shuffle=True,
                                         num_workers=workers, drop_last=True,
                                         persistent_workers=workers > 0,
                                         generator=torch.Generator().manual_seed(0))
    model = build_model(profile.model).to(device)
    loss_fn = LightlyNTXent(temperature=profile.pretrain.temperature)
    opt = torch.optim.Adam(model.parameters(), lr=profile.pretrain.lr)
    it = iter(loader)

    def step():
        nonlocal it
        try:
            (v1, v2) = next(it)
        except StopIteration:
            it = iter(loader)
            (v1, v2) = next(it)
        # two passes, as in lightly's SimCLR example
        loss = loss_fn(model.project(v1.to(device)), model.project(v2.to(device)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    sec = _time_steps(step, steps, warmup=2, device=device)
    return {"img_s": bs / sec, "step_s": sec, "workers": workers}


def run_bench(profile: Profile, root: str | Path | None = None, steps: int = 8,
              ref_workers: int | None = None) -> dict[str, Any]:
    """Returns the JSON of `bus-paper bench` (keys: ours_img_s, reference_img_s, speedup, ...).

    It also times each encoder stage of the proposed model (:func:`stage_times`) and gives
    ``speedup_without_s0_s1``: the speedup our step would reach if the stem and the first MBConv
    stage took no time at all, an upper bound on what faster kernels for them could buy.
    """
    root = resolve_root(profile, root)
    images, pool = load_pool(profile, root)
    files = [root / p for p in pool.path]
    device = select_device(profile.run)
    torch.manual_seed(0)
    ours = bench_ours(profile, images, steps, stages=True)
    # the reference at its best DataLoader worker count on this machine (None: try 0, 1, 2)
    tries = [bench_reference(profile, files, max(3, steps // 2), w)
             for w in ((0, 1, 2) if ref_workers is None else (ref_workers,))]
    ref = max(tries, key=lambda r: r["img_s"])
    peak = matmul_peak_gflops(device, precision=profile.run.precision)
    stages = ours.pop("stages")   # reported at the top level, beside the speedup it bounds
    s0_s1 = sum(sum(stages[n].values()) for n in ("S0", "S1"))
    return {
        "profile": profile.name, "device": str(device), "threads": torch.get_num_threads(),
        "precision": effective_precision(device, profile.run.precision),
        "cpu": platform.processor() or platform.machine(),
        "model": profile.model.variant, "scales": list(profile.model.scales),
        "image_size": profile.data.image_size, "batch_size": profile.pretrain.batch_size,
        "ours_img_s": ours["img_s"], "reference_img_s": ref["img_s"],
        "speedup": ours["img_s"] / ref["img_s"],
        "ours_gflop_s": ours["gflop_s"], "step_gflop": ours["step_gflop"],
        "matmul_peak_gflop_s": peak, "peak_fraction": ours["gflop_s"] / peak,
        "stages": stages,
        "speedup_without_s0_s1": ref["step_s"] / max(ours["step_s"] - s0_s1, 1e-9),
        "reference_workers": ref["workers"], "ours": ours, "reference": ref,
        "reference_tries": tries,
        "targets": {"speedup": 2.5, "peak_fraction": 0.20},
    }
