"""Section 3.4 of paper 004: the attention fusion module, and the differentiable models Grad-CAM
needs (backbones -> reduction -> classifier as one torch module).

:class:`AttentionFusion` takes one reduced embedding per backbone (a "token" each), projects them
to a common width, lets them attend to each other (multi-head self-attention, residual,
LayerNorm), pools them with a learned query (single-head attention: its weights say how much each
backbone contributes to an image's fused vector, the paper's "highlight dominant features") and
passes the pooled vector through a fully connected layer (the "joint representation"), then a
linear classifier. It is trained on the training part only (:func:`train_fusion`: class-balanced
cross-entropy, AdamW, early stopping on a grouped validation share of the training part); its
fused vectors then feed the classical classifiers like any other feature set.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


class AttentionFusion(nn.Module):
    """Multi-head attention over per-backbone embeddings: ``[x_1 .. x_n]`` -> logits [B, 2]."""

    def __init__(self, dims: Sequence[int], width: int = 64, heads: int = 4, hidden: int = 64,
                 dropout: float = 0.1, n_classes: int = 2):
        super().__init__()
        if not dims or width % heads:
            raise ValueError(f"need at least one input and width divisible by heads "
                             f"(got dims={list(dims)}, width={width}, heads={heads})")
        self.dims = [int(d) for d in dims]
        self.config = {"dims": self.dims, "width": width, "heads": heads, "hidden": hidden,
                       "dropout": dropout, "n_classes": n_classes}
        self.proj = nn.ModuleList(nn.Sequential(nn.Linear(d, width), nn.LayerNorm(width))
                                  for d in self.dims)
        self.kind = nn.Parameter(torch.randn(len(self.dims), width) * 0.02)  # which backbone
        self.attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(width)
        self.query = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.pool = nn.MultiheadAttention(width, 1, batch_first=True)
        self.fc = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.head = nn.Linear(hidden, n_classes)

    def _check(self, xs: Sequence[torch.Tensor]) -> None:
        if len(xs) != len(self.dims) or any(x.ndim != 2 or x.shape[1] != d
                                            for x, d in zip(xs, self.dims)):
            raise ValueError(f"expected {len(self.dims)} inputs of widths {self.dims}, got "
                             f"{[tuple(x.shape) for x in xs]}")

    def embed(self, xs: Sequence[torch.Tensor], weights: bool = False):
        """The fused vector [B, hidden] (and the pooling weights per backbone [B, n])."""
        self._check(xs)
        t = torch.stack([p(x) for p, x in zip(self.proj, xs)], dim=1) + self.kind
        a, _ = self.attn(t, t, t, need_weights=False)
        t = self.norm(t + a)
        pooled, w = self.pool(self.query.expand(len(t), -1, -1), t, t)
        e = self.fc(pooled[:, 0])
        return (e, w[:, 0]) if weights else e

    def forward(self, xs: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.head(self.embed(xs))


@dataclass
class FusionFit:
    model: AttentionFusion
    history: list[dict[str, float]]
    best_epoch: int


def _grouped_holdout(y: np.ndarray, groups: np.ndarray, is_copy: np.ndarray, share: float,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import StratifiedGroupKFold
    orig = np.flatnonzero(~is_copy)
    k = max(2, round(1 / share))
    k = min(k, len(np.unique(groups[orig])), int(np.bincount(y[orig]).min()))
    if k < 2:
        return np.arange(len(y)), np.array([], dtype=int)
    _, val = next(StratifiedGroupKFold(k, shuffle=True, random_state=seed)
                  .split(np.zeros(len(orig)), y[orig], groups[orig]))
    val_rows = orig[val]
    return np.flatnonzero(~np.isin(groups, groups[val_rows])), val_rows


def train_fusion(blocks: Sequence[np.ndarray], y: np.ndarray, groups: np.ndarray,
                 is_copy: np.ndarray | None = None, seed: int = 0, epochs: int = 200,
                 patience: int = 25, lr: float = 1e-3, weight_decay: float = 1e-2,
                 batch_size: int = 64, val_share: float = 0.2, **module_kwargs) -> FusionFit:
    """Train :class:`AttentionFusion` on the training part's reduced blocks (float32 [N, d_i]).

    A grouped, stratified ``val_share`` of the training part (originals only) stops training at the
    epoch of lowest validation loss; its weights are kept. Deterministic for a seed.
    """
    y = np.asarray(y).astype(int)
    groups = np.asarray(groups)
    is_copy = np.zeros(len(y), bool) if is_copy is None else np.asarray(is_copy, bool)
    torch.manual_seed(seed)
    model = AttentionFusion([b.shape[1] for b in blocks], **module_kwargs)
    fit_rows, val_rows = _grouped_holdout(y, groups, is_copy, val_share, seed)
    xs = [torch.as_tensor(np.asarray(b, np.float32)) for b in blocks]
    yt = torch.as_tensor(y)
    counts = np.bincount(y[fit_rows], minlength=2).astype(np.float32)
    weight = torch.as_tensor(counts.sum() / (2 * np.maximum(counts, 1)))
    loss_fn = nn.CrossEntropyLoss(weight=weight)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    best, best_state, best_epoch, history = np.inf, None, -1, []
    for epoch in range(epochs):
        model.train()
        perm = torch.as_tensor(fit_rows)[torch.randperm(len(fit_rows), generator=gen)]
        total = 0.0
        for i in range(0, len(perm), batch_size):
            idx = perm[i:i + batch_size]
            if len(idx) < 2:
                continue
            loss = loss_fn(model([x[idx] for x in xs]), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        row = {"epoch": epoch, "train_loss": total / max(1, len(perm))}
        if len(val_rows):
            model.eval()
            with torch.no_grad():
                row["val_loss"] = float(loss_fn(model([x[val_rows] for x in xs]), yt[val_rows]))
        history.append(row)
        score = row.get("val_loss", row["train_loss"])
        if score < best - 1e-4:
            best, best_epoch = score, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        elif epoch - best_epoch >= patience:
            break
    model.load_state_dict(best_state)
    model.eval()
    return FusionFit(model, history, best_epoch)


@torch.no_grad()
def fused_features(model: AttentionFusion, blocks: Sequence[np.ndarray],
                   batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """(fused vectors [N, hidden], pooling weights per backbone [N, n]) in eval mode."""
    model.eval()
    xs = [torch.as_tensor(np.asarray(b, np.float32)) for b in blocks]
    emb, wts = [], []
    for i in range(0, len(xs[0]), batch_size):
        e, w = model.embed([x[i:i + batch_size] for x in xs], weights=True)
        emb.append(e.numpy())
        wts.append(w.numpy())
    return np.concatenate(emb), np.concatenate(wts)


# ----------------------------------------------------------------------------- for Grad-CAM
class AffineBlock(nn.Module):
    """A fitted :class:`~.classical.BlockReducer` block as a fixed affine map (standardise, PCA)."""

    def __init__(self, scaler, pca=None):
        super().__init__()
        mean = torch.as_tensor(scaler.mean_, dtype=torch.float32)
        scale = torch.as_tensor(scaler.scale_, dtype=torch.float32)
        if pca is not None:
            comp = torch.as_tensor(pca.components_, dtype=torch.float32)       # [k, d]
            pmean = torch.as_tensor(pca.mean_, dtype=torch.float32)
            weight = comp / scale                                            # x -> (x-m)/s - pm
            bias = -(comp @ (mean / scale + pmean))
        else:
            weight = torch.diag(1 / scale)
            bias = -mean / scale
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() @ self.weight.T + self.bias


def reducer_modules(reducer) -> nn.ModuleList:
    return nn.ModuleList(AffineBlock(sc, p) for sc, p in reducer.parts_)


class MLPHead(nn.Module):
    """A fitted scikit-learn ``Pipeline(StandardScaler, MLPClassifier)`` (binary, ReLU) as torch;
    returns two logits ``(-z/2, z/2)`` whose softmax is the MLP's ``predict_proba``."""

    def __init__(self, pipe):
        super().__init__()
        scaler, mlp = pipe.named_steps["scale"], pipe.named_steps["mlp"]
        if mlp.activation != "relu" or mlp.out_activation_ != "logistic":
            raise ValueError("only a binary ReLU MLPClassifier can be converted")
        self.register_buffer("mean", torch.as_tensor(scaler.mean_, dtype=torch.float32))
        self.register_buffer("scale", torch.as_tensor(scaler.scale_, dtype=torch.float32))
        self.layers = nn.ModuleList()
        for w, b in zip(mlp.coefs_, mlp.intercepts_):
            lin = nn.Linear(w.shape[0], w.shape[1])
            lin.weight.data = torch.as_tensor(w.T, dtype=torch.float32)
            lin.bias.data = torch.as_tensor(b, dtype=torch.float32)
            self.layers.append(lin)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = (z - self.mean) / self.scale
        for i, lin in enumerate(self.layers):
            z = lin(z)
            if i < len(self.layers) - 1:
                z = torch.relu(z)
        return torch.cat([-z / 2, z / 2], dim=1)


class FeatureClassifier(nn.Module):
    """Image -> backbones' pooled features -> fitted reduction -> head: one differentiable model.

    ``head`` maps the list of reduced blocks to logits: ``"concat"`` concatenates them first (the
    NN classifier of a single or concatenated feature set), ``"list"`` passes the list (the
    attention fusion module). Grad-CAM targets every backbone's own target layer; with several
    backbones, grad-cam averages the per-layer maps (each min-max scaled).
    """

    def __init__(self, backbones: Sequence[nn.Module], reducer, head: nn.Module, mode: str):
        super().__init__()
        if mode not in ("concat", "list"):
            raise ValueError(f"mode must be 'concat' or 'list', got {mode!r}")
        self.backbones = nn.ModuleList(backbones)
        self.reduce = reducer_modules(reducer)
        if len(self.reduce) != len(self.backbones):
            raise ValueError("one reduction block per backbone is needed")
        self.head, self.mode = head, mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blocks = [r(b.encode(x)) for b, r in zip(self.backbones, self.reduce)]
        return self.head(torch.cat(blocks, dim=1) if self.mode == "concat" else blocks)

    def gradcam_target_layers(self) -> list[nn.Module]:
        return [layer for b in self.backbones for layer in b.gradcam_target_layers()]

    def gradcam_reshape_transform(self):
        fns = [b.gradcam_reshape_transform() for b in self.backbones]
        if any(f is not None for f in fns) and len(fns) > 1:
            raise ValueError("token backbones (ViT) can only be explained alone")
        return fns[0]
