"""Heads on the pooled encoder features: the SSL projection head and the classifier."""

from __future__ import annotations

from torch import nn


class ProjectionHead(nn.Sequential):
    """Paper 000, eq. 3-4: ``R = W2 ReLU(BN(W1 Out))``, d -> 2048 -> 128.

    The equations have no bias terms, so neither do the linear layers (a bias before BatchNorm
    would be cancelled by it anyway).
    """

    def __init__(self, in_dim: int, hidden_dim: int = 2048, out_dim: int = 128) -> None:
        super().__init__(
            nn.Linear(in_dim, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim, bias=False),
        )


class ClassifierHead(nn.Sequential):
    """Dropout + linear layer giving ``num_classes`` logits (2 for benign / malignant, softmax)."""

    def __init__(self, in_dim: int, num_classes: int = 2, drop_rate: float = 0.0) -> None:
        super().__init__(nn.Dropout(drop_rate), nn.Linear(in_dim, num_classes))
