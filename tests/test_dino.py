"""DINO: loss vs a plain loop, centring, sharpening, EMA, multi-crop, and a smoke pretraining run."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bus_paper.config import load_profile
from bus_paper.models.baselines import build_baseline_from_config
from bus_paper.train.data import load_pool, resolve_root
from bus_paper.train.dino import (
    DinoConfig,
    DINOHead,
    DINOLoss,
    DinoPretrainStage,
    MultiCrop,
    cosine_momentum,
    dino_key,
    dino_pretrain,
    ema_update,
)
from bus_paper.train.engine import load_checkpoint

SMOKE = load_profile("smoke")
TINY = DinoConfig(out_dim=64, hidden_dim=32, bottleneck_dim=16, n_local_crops=2)


def reference_dino_loss(student, teacher, center, t_temp, s_temp):
    """Plain Python over views, samples and classes (Caron et al., Algorithm 1 with multi-crop)."""
    total, pairs = 0.0, 0
    for g, t_view in enumerate(teacher):
        for v, s_view in enumerate(student):
            if v == g:
                continue
            per_sample = []
            for t_row, s_row in zip(t_view.tolist(), s_view.tolist()):
                t_logits = [(t - c) / t_temp for t, c in zip(t_row, center)]
                t_max = max(t_logits)
                t_exp = [math.exp(a - t_max) for a in t_logits]
                q = [e / sum(t_exp) for e in t_exp]
                s_logits = [s / s_temp for s in s_row]
                s_max = max(s_logits)
                log_z = s_max + math.log(sum(math.exp(a - s_max) for a in s_logits))
                per_sample.append(-sum(qk * (a - log_z) for qk, a in zip(q, s_logits)))
            total += sum(per_sample) / len(per_sample)
            pairs += 1
    return total / pairs


def test_dino_loss_matches_plain_loop():
    g = torch.Generator().manual_seed(0)
    k, b = 7, 5
    student = [torch.randn(b, k, generator=g) for _ in range(4)]  # 2 global + 2 local views
    teacher = [torch.randn(b, k, generator=g) for _ in range(2)]
    loss = DINOLoss(k, teacher_temp=0.04, student_temp=0.1)
    loss.center.copy_(torch.randn(1, k, generator=g))
    expected = reference_dino_loss(student, teacher, loss.center[0].tolist(), 0.04, 0.1)
    assert float(loss(student, teacher)) == pytest.approx(expected, rel=1e-5)


def test_dino_loss_gradient_reaches_student_only():
    student = [torch.randn(3, 8, requires_grad=True) for _ in range(3)]
    teacher = [torch.randn(3, 8, requires_grad=True) for _ in range(2)]
    DINOLoss(8)(student, teacher).backward()
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in student)
    assert all(t.grad is None for t in teacher)


def test_dino_loss_rejects_a_single_view():
    with pytest.raises(ValueError, match="one view"):
        DINOLoss(4)([torch.randn(2, 4)], [torch.randn(2, 4)])


def test_center_moves_toward_batch_mean_by_momentum():
    loss = DINOLoss(6, center_momentum=0.9)
    c0 = torch.randn(1, 6)
    loss.center.copy_(c0)
    teacher = [torch.randn(4, 6) + 3.0, torch.randn(4, 6) + 3.0]
    loss([torch.randn(4, 6) for _ in range(3)], teacher)
    batch_mean = torch.cat(teacher).mean(dim=0, keepdim=True)
    torch.testing.assert_close(loss.center, 0.9 * c0 + 0.1 * batch_mean)
    # and it keeps moving toward a constant teacher output geometrically
    gap_before = (loss.center - batch_mean).norm()
    loss([torch.randn(4, 6) for _ in range(3)], [batch_mean.expand(4, 6)] * 2)
    torch.testing.assert_close((loss.center - batch_mean).norm(), 0.9 * gap_before)


def test_sharpening_lowers_teacher_entropy():
    loss = DINOLoss(50)
    t = torch.randn(16, 50)

    def entropy(p):
        return float(-torch.special.xlogy(p, p).sum(dim=1).mean())

    e_sharp, e_soft = entropy(loss.teacher_probs(t, 0.04)), entropy(loss.teacher_probs(t, 0.1))
    assert e_sharp < e_soft < math.log(50)


def test_teacher_temperature_warmup_follows_linspace():
    loss = DINOLoss(4, teacher_temp=0.07, warmup_teacher_temp=0.04, warmup_teacher_temp_epochs=5)
    expected = list(np.linspace(0.04, 0.07, 5)) + [0.07, 0.07]
    assert [loss.teacher_temp_at(e) for e in range(7)] == pytest.approx(expected)


def test_ema_update_equals_formula():
    torch.manual_seed(0)
    student, teacher = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)), nn.Sequential(
        nn.Linear(3, 4), nn.BatchNorm1d(4))
    teacher[1].running_mean.fill_(5.0)
    before = [p.clone() for p in teacher.parameters()]
    ema_update(student, teacher, 0.9)
    for s, t0, t1 in zip(student.parameters(), before, teacher.parameters()):
        torch.testing.assert_close(t1, 0.9 * t0 + 0.1 * s)
    assert torch.equal(teacher[1].running_mean, torch.full((4,), 5.0))  # buffers are not averaged


def test_cosine_momentum_schedule():
    total = 10
    reference = 1 + 0.5 * (0.996 - 1) * (1 + np.cos(np.pi * np.arange(total) / total))
    assert [cosine_momentum(i, total) for i in range(total)] == pytest.approx(list(reference))
    assert cosine_momentum(total, total) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        cosine_momentum(11, total)


def test_dino_head_is_normalised_cosine_to_prototypes():
    head = DINOHead(12, 20, hidden_dim=16, bottleneck_dim=8)
    x = torch.randn(5, 12)
    z = F.normalize(head.mlp(x), dim=-1)
    prototypes = F.normalize(head.last_layer.parametrizations.weight.original1, dim=1)
    torch.testing.assert_close(head(x), z @ prototypes.T)
    assert head(x).abs().max() <= 1 + 1e-5
    frozen = [n for n, p in head.named_parameters() if not p.requires_grad]
    assert frozen == ["last_layer.parametrizations.weight.original0"]


def test_multicrop_views():
    crop = MultiCrop(64, 32, n_local=3)
    x = torch.rand(4, 1, 80, 80)
    torch.manual_seed(0)
    views = crop(x)
    assert [tuple(v.shape) for v in views] == [(4, 1, 64, 64)] * 2 + [(4, 1, 32, 32)] * 3
    assert all(v.min() >= 0 and v.max() <= 1 for v in views)
    assert not torch.equal(views[2], views[3])  # each local crop draws its own parameters
    torch.manual_seed(0)
    assert all(torch.equal(a, b) for a, b in zip(views, crop(x)))  # reproducible from the seed


def test_local_side_rule():
    assert DinoConfig().local_side(224, 16) == 96
    assert DinoConfig().local_side(96, 16) == 48
    assert DinoConfig().local_side(64, 32) == 32
    with pytest.raises(ValueError, match="multiple"):
        DinoConfig(local_size=40).local_side(96, 16)


@pytest.fixture(scope="module")
def pool():
    profile = SMOKE
    return load_pool(profile, resolve_root(profile))[0]


class RecordingStage(DinoPretrainStage):
    """Checks, at every step, that only the EMA (never the optimiser) changed the teacher."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.expected_teacher = [p.detach().clone() for p in self.model.teacher.parameters()]
        self.untouched, self.ema_ok, self.steps = [], [], []

    def after_step(self, step):
        teacher, before = list(self.model.teacher.parameters()), self.expected_teacher
        self.untouched.append(all(torch.equal(a, b) for a, b in zip(before, teacher)))
        student = [p.detach().clone() for p in self.model.student.parameters()]
        super().after_step(step)
        m = cosine_momentum(step, self.total_steps, self.dino.momentum_teacher)
        self.ema_ok.append(all(torch.allclose(t1, m * t0 + (1 - m) * s, atol=1e-6)
                               for t0, s, t1 in zip(before, student, teacher)))
        self.expected_teacher = [p.detach().clone() for p in teacher]
        self.steps.append(step)


def test_stage_smoke_teacher_is_ema_of_student(pool, tmp_path):
    stage = RecordingStage(SMOKE, pool, tmp_path / "run", key="k", dino=TINY)
    optimised = {id(p) for group in stage.optimizer.param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in stage.model.teacher.parameters()}
    initial_student = [p.detach().clone() for p in stage.model.student.parameters()]
    stage.fit()
    assert stage.steps == [0, 1] and stage.untouched == [True, True] and stage.ema_ok == [True, True]
    student = list(stage.model.student.parameters())
    teacher = list(stage.model.teacher.parameters())
    assert any(not torch.equal(s, s0) for s, s0 in zip(student, initial_student))
    assert any(not torch.equal(s, t) for s, t in zip(student, teacher))
    assert stage.model.loss.center.abs().sum() > 0
    state = load_checkpoint(tmp_path / "run" / "last.pt")  # teacher and centre are checkpointed
    assert "loss.center" in state["model"] and any(k.startswith("teacher.") for k in state["model"])
    assert state["baseline"] == "vit_small" and np.isfinite(stage.history.epochs[0]["train_loss"])


def test_dino_pretrain_writes_a_loadable_encoder(pool, tmp_path, monkeypatch):
    monkeypatch.setenv("BUS_PAPER_RUNS", str(tmp_path / "runs"))
    path = dino_pretrain(SMOKE, dino=TINY)
    assert path.parent.parent.name == "pretrain-dino"
    state = load_checkpoint(path)
    assert {"encoder", "model_config", "normalizer", "key", "pool", "n_images", "history",
            "seconds", "dino"} <= set(state)
    assert state["n_images"] == len(pool) and state["model_config"]["baseline"] == "vit_small"
    net = build_baseline_from_config(state["model_config"])
    assert net.img_size == SMOKE.data.image_size
    assert net.load_encoder_state_dict(state["encoder"]) == []  # strict: every key and shape
    mtime = path.stat().st_mtime_ns
    assert dino_pretrain(SMOKE, dino=TINY) == path  # reused, not retrained
    assert path.stat().st_mtime_ns == mtime
    # the key covers the DINO config, the baseline and the profile
    checksums = {"busbra": "a", "busuclm": "b"}
    keys = {dino_key(SMOKE, "vit_small", TINY, checksums),
            dino_key(SMOKE, "vit_small", DinoConfig(**{**TINY.__dict__, "out_dim": 32}), checksums),
            dino_key(SMOKE, "resnet50", TINY, checksums),
            dino_key(SMOKE.replace(**{"pretrain.epochs": 2}), "vit_small", TINY, checksums),
            dino_key(SMOKE, "vit_small", TINY, {**checksums, "busbra": "c"})}
    assert len(keys) == 5 and state["key"] == path.parent.name
