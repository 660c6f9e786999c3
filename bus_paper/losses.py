"""Loss functions: the NT-Xent contrastive loss of paper 000 (eq. 5-7, as in SimCLR)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class NTXentLoss(nn.Module):
    """Normalised temperature-scaled cross-entropy over two batches of paired embeddings.

    For the 2N embeddings ``[z_i; z_j]``, with cosine similarity ``CM`` (eq. 7), each point's
    positive is its partner from the other view and the denominator runs over the 2N-1 other
    points (eq. 6); the loss is the mean over all 2N points, i.e. both directions of every pair
    divided by 2N (eq. 5). That is a cross-entropy over each row of the similarity matrix with the
    diagonal removed, which is how it is computed.

    The similarities are computed in float32 with autocast disabled: with bf16 (8 mantissa bits)
    and tau = 0.07 the logits ``cos / tau`` reach +-14 and would be rounded by up to ~0.06.

    Args:
        temperature: tau in eq. 6 (paper: 0.07); must be > 0.

    Example:
        >>> loss = NTXentLoss(temperature=0.07)
        >>> z_i, z_j = torch.randn(8, 128), torch.randn(8, 128)
        >>> value = loss(z_i, z_j)            # scalar tensor
        >>> bool(loss(z_i, z_i) < value)      # identical views are easier positives
        True
    """

    def __init__(self, temperature: float = 0.07) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def forward(self, z_i: torch.Tensor, z_j: torch.Tensor) -> torch.Tensor:
        if z_i.ndim != 2 or z_j.ndim != 2:
            raise ValueError(f"expected two [N, D] batches, got shapes {list(z_i.shape)} and "
                             f"{list(z_j.shape)}")
        if z_i.shape != z_j.shape:
            raise ValueError(f"the two views must have the same shape, got {list(z_i.shape)} and "
                             f"{list(z_j.shape)}")
        n = z_i.shape[0]
        if n < 2:
            raise ValueError(f"NT-Xent needs a batch of at least 2 pairs (got {n}): with one pair "
                             "there are no negatives and the loss is identically 0")
        with torch.autocast(device_type=z_i.device.type, enabled=False):
            z = F.normalize(torch.cat([z_i, z_j]).float(), dim=1)
            logits = z @ z.T / self.temperature                            # [2N, 2N]
            self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
            logits = logits.masked_fill(self_mask, float("-inf"))          # k != i in eq. 6
            idx = torch.arange(n, device=z.device)
            targets = torch.cat([idx + n, idx])                            # partner in other view
            return F.cross_entropy(logits, targets)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"
