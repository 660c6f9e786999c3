"""The ``gpu`` profile's real shapes, on the CPU: every network the book trains takes one
pretraining step and one fine-tuning step at 224 px (batch 2) with finite losses and gradients
that reach its input layer, and the engine's device and precision helpers are ready for CUDA.

A run on the GPU costs hours before its first checkpoint; a shape error at 224 px (a window size,
a patch grid, a scale that is not a multiple of 32, an encoder that does not load into its
fine-tuning model) should fail here in seconds instead. The steps are built by the same classes
the training code uses (:class:`PretrainStage`, :class:`DinoPretrainStage`,
:class:`FinetuneStage`, :class:`LesionStage`), on random uint8 images.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import warnings

import pytest
import torch
from torch import nn

from bus_paper.config import RunConfig, load_profile
from bus_paper.data.preprocess import Normalizer
from bus_paper.models.baselines import IN_CHANS

#: the paper's settings (224 px, coatnet_0, scales 224/128/32), batch 2, on this CPU
GPU = load_profile("gpu").replace(**{"run.device": "cpu", "pretrain.batch_size": 2,
                                     "finetune.batch_size": 2})
SIDE = GPU.data.image_size
#: the Table 1 baselines that are SimCLR-pretrained (Table 1, papers 001 and 004); vit_small
#: is DINO-pretrained (Table 1's DINO-ViT, paper 004's ViT) and has its own test below, and
#: vit_small_p8 is trained by no chapter
#: one thread: two OpenMP threads on a busy 2-core machine ran these steps 2-5x slower
THREADS = 1
SIMCLR_BASELINES = ("convnext_tiny", "efficientnetv2_s", "swin_tiny", "resnet50", "mobilenetv2",
                    "densenet121", "vgg16", "efficientnet_b0")


@pytest.fixture(autouse=True)
def fp32_cpu(monkeypatch, tmp_path):
    """fp32 arithmetic on any CPU (as a CPU without native bf16 computes), runs in tmp_path."""
    monkeypatch.setenv("BUS_PAPER_CPU_BF16", "0")  # read by the engine on every call
    monkeypatch.setenv("BUS_PAPER_RUNS", str(tmp_path / "runs"))
    rng, threads = torch.get_rng_state(), torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(threads)
    torch.set_rng_state(rng)


def _images(n: int, side: int = SIDE, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, side, side), generator=g, dtype=torch.uint8)


@contextlib.contextmanager
def _input_layers(model: nn.Module):
    """Yields the list of the convolutions that the input image itself enters (its
    ``IN_CHANS`` channels), filled during the forward passes inside the block."""
    seen: list[nn.Module] = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append(m) if m not in seen else None)
             for m in model.modules()
             if isinstance(m, nn.Conv2d) and m.in_channels == IN_CHANS]
    try:
        yield seen
    finally:
        for h in hooks:
            h.remove()


def _step(stage, idx: torch.Tensor, net: nn.Module) -> float:
    """One optimizer step of ``stage`` (as :meth:`Stage._fit` runs it); checks the gradient of
    every input layer of ``net`` and returns the loss."""
    with _input_layers(net) as first:
        loss = stage.train_step(idx)
    assert first, f"no {IN_CHANS}-channel convolution saw the input"
    stage.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    value = float(loss.detach())
    assert math.isfinite(value), value
    for conv in first:
        g = conv.weight.grad
        assert g is not None, f"no gradient reached {conv}"
        assert torch.isfinite(g).all() and g.abs().sum() > 0, f"gradient at {conv}: {g.abs().sum()}"
    stage.optimizer.step()
    stage.after_step(0)
    return value


def _labelled(n_train: int = 2) -> object:
    from bus_paper.train.data import LabelledSplits
    x = {s: _images(2 if s != "train" else n_train, seed=i)
         for i, s in enumerate(("train", "val", "test"))}
    y = {s: torch.tensor([0, 1] * (len(v) // 2)) for s, v in x.items()}
    return LabelledSplits("phantom", x, y, {s: [f"{s}{i}" for i in range(len(v))]
                                           for s, v in x.items()},
                          Normalizer.fit(x["train"].numpy()), None)


def _pretrain_then_finetune(tmp_path, baseline: str | None = None,
                            network: dict | None = None) -> tuple[float, float]:
    """A SimCLR step, then a fine-tuning step from its encoder (loaded strictly: the shapes of
    the pretrained encoder and of the fine-tuning model agree)."""
    from bus_paper.train.finetuning import FinetuneStage
    from bus_paper.train.pretraining import PretrainStage, network_config
    pre = PretrainStage(GPU, _images(2), tmp_path / "pre", "k",
                        baseline=baseline, network=network)
    pre_loss = _step(pre, torch.arange(2), pre.model.m)
    encoder = pre.model.m.encoder_state_dict()
    del pre
    fine = FinetuneStage(GPU, _labelled(), 0, tmp_path / "fine", "k", encoder,
                         model_config=network_config(GPU, baseline, network), strict=True)
    assert fine.skipped == []
    return pre_loss, _step(fine, torch.arange(2), fine.model)


def test_gpu_profile_is_what_these_shapes_claim():
    assert SIDE == 224 and GPU.model.variant == "coatnet_0"
    assert max(GPU.model.scales) == 224 and all(s % 32 == 0 for s in GPU.model.scales)


def test_proposed_model(tmp_path):
    _pretrain_then_finetune(tmp_path)


@pytest.mark.parametrize("name", SIMCLR_BASELINES)
def test_table1_baseline(tmp_path, name):
    _pretrain_then_finetune(tmp_path, baseline=name)


def test_paper001_fusion_model(tmp_path):
    from bus_paper.papers.p001.experiments import network_for
    cfg = network_for(GPU, "proposed")
    assert cfg["family"] == "fusion" and cfg["img_size"] == SIDE
    _pretrain_then_finetune(tmp_path, network=cfg)


def test_dino_vit(tmp_path):
    """DINO (2 global 224-px crops and the default 8 local crops through the student, the global
    ones through the teacher, EMA update), then fine-tuning from the teacher, as Table 1 does."""
    from bus_paper.train.dino import DinoPretrainStage
    from bus_paper.train.finetuning import FinetuneStage
    from bus_paper.train.pretraining import baseline_config
    pre = DinoPretrainStage(GPU, _images(2), tmp_path / "dino", "k", baseline="vit_small")
    _step(pre, torch.arange(2), pre.model.student)
    encoder = pre.model.teacher["net"].encoder_state_dict()
    del pre
    fine = FinetuneStage(GPU, _labelled(), 0, tmp_path / "fine", "k", encoder,
                         model_config=baseline_config(GPU, "vit_small"), strict=True)
    assert fine.skipped == []
    _step(fine, torch.arange(2), fine.model)


def test_paper002_lesion_model(tmp_path):
    """Paper 002's ResNet-50 at its gpu settings (crops of 256-px images to 224), the full loss
    (CE + lesion contrastive), P x K = 2 lesions x 2 images. Its SimCLR encoder is resnet50's."""
    from bus_paper.models import build_network
    from bus_paper.papers.p002.train import FoldData, LesionStage, model_config, settings_for
    settings = dataclasses.replace(settings_for(GPU), lesions_per_batch=2, images_per_lesion=2)
    assert settings.image_size == SIDE
    x = {s: _images(4, settings.load_size, seed=i) for i, s in enumerate(("train", "val", "test"))}
    y = {s: torch.tensor([0, 0, 1, 1]) for s in x}
    lesion = {s: ["a", "a", "b", "b"] for s in x}
    data = FoldData(0, x, y, lesion, {s: [f"{s}{i}" for i in range(4)] for s in x},
                    [[0, 1], [2, 3]], Normalizer.fit(x["train"].numpy()), settings.load_size)
    model = build_network(model_config(GPU, settings))
    stage = LesionStage(model, data, "lr", settings, 1.0, 0.5, 0, tmp_path / "lesion", "k",
                        GPU.run)
    _step(stage, torch.arange(2), stage.model.m)


# ----------------------------------------------------------------------------- CUDA readiness
def test_select_device_picks_cuda_without_code_changes(monkeypatch):
    from bus_paper.train.engine import select_device
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert select_device(RunConfig(device="auto")) == torch.device("cuda", 0)
    assert select_device(RunConfig(device="cuda")) == torch.device("cuda", 0)
    monkeypatch.setenv("LOCAL_RANK", "3")  # torchrun: one process per GPU
    assert select_device(RunConfig(device="auto")) == torch.device("cuda", 3)
    assert select_device(RunConfig(device="cpu")) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device(RunConfig(device="auto")) == torch.device("cpu")
    with pytest.raises(ValueError, match="no CUDA device"):
        select_device(RunConfig(device="cuda"))


def test_autocast_is_bf16_on_cuda_whatever_the_cpu():
    """bf16 autocast on CUDA even where the CPU falls back to fp32 (BUS_PAPER_CPU_BF16=0 here);
    building it needs no GPU (torch only warns that it is disabled without one)."""
    from bus_paper.train.engine import autocast, effective_precision
    cuda = torch.device("cuda", 0)
    assert effective_precision(cuda, "bf16") == "bf16"
    assert effective_precision(cuda, "fp32") == "fp32"
    assert effective_precision(torch.device("cpu"), "bf16") == "fp32"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "CUDA is not available ... disabling" on this machine
        ctx = autocast(cuda, "bf16")
    assert isinstance(ctx, torch.autocast)
    assert ctx.device == "cuda" and ctx.fast_dtype == torch.bfloat16
    assert isinstance(autocast(cuda, "fp32"), contextlib.nullcontext)


def test_memory_format_helpers_keep_the_device():
    """channels_last on a model and a batch never moves them (checked on the meta device, which
    stands for any non-CPU device here)."""
    from bus_paper.models import build_network
    from bus_paper.train.engine import prepare_input, to_model_memory_format
    from bus_paper.train.pretraining import baseline_config
    run = RunConfig(channels_last=True)
    with torch.device("meta"):
        net = build_network(baseline_config(GPU, "resnet50"))
        x = torch.empty(2, 1, SIDE, SIDE)
    net = to_model_memory_format(net, run)
    assert all(p.device.type == "meta" for p in net.parameters())
    stem = next(m for m in net.modules() if isinstance(m, nn.Conv2d))
    assert stem.weight.is_contiguous(memory_format=torch.channels_last)
    y = prepare_input(x, run)
    assert y.device.type == "meta" and y.is_contiguous(memory_format=torch.channels_last)
    assert prepare_input(x, RunConfig(channels_last=False)) is x
