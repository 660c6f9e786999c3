"""The lesion-recognition contrastive loss of paper 002 (Guo et al. 2022, eq. 2-3) and its variants.

For a batch of backbone features ``z_1 .. z_N`` (no projection head: the paper contrasts
``z_i = f_theta(T(x_i))`` directly) and the cosine similarity ``S``,

    L_con = -1/N  sum_i  sum_{j in P(i)}  log( exp(S(z_i, z_j)/tau) / sum_{k in N(i) u P(i)} exp(S(z_i, z_k)/tau) )

(eq. 2; the paper has no temperature, i.e. ``tau = 1``). The variants of Tables 1-2 differ only in
the positive set ``P(i)`` and the negative set ``N(i)``:

=============  ===========================================  =============================================
variant        P(i)                                         N(i)
=============  ===========================================  =============================================
``ir``         the other copies of the *same image*         every other image (other views of the same
               (differently augmented)                      lesion included)
``lr``         the other images of the *same lesion* (eq.3) every image of another lesion (eq. 3)
``lr_minus_sc`` as ``lr``                                   other lesions of the *other* class only
``lr_minus_dc`` as ``lr``                                   other lesions of the *same* class only
``lr_minus_all`` as ``lr``                                  none: the softmax runs over P(i) alone
=============  ===========================================  =============================================

Choices where eq. 2-3 are literal but odd, written down:

- ``P(i) = {j | L(j) = L(i)}`` literally contains ``i`` itself (``S(z_i, z_i) = 1`` always); we
  leave ``i`` out of ``P(i)`` and of the denominator, as every contrastive loss does (the issue's
  "the *other* images of the same lesion").
- Eq. 2 *sums* over the positives (SupCon's "L_out" would average them), so the loss grows with
  the number of positives; kept as written.
- Without negatives (``lr_minus_all``) the softmax runs over the positives only: the loss no longer
  pulls positives together, it asks them to be *equally* similar, and with one positive per anchor
  it is identically 0. That is what eq. 2 says once ``N(i)`` is empty, and it may explain why the
  paper's LR(−) scores like its baseline.

Every anchor must have at least one positive (a lesion or image that appears once in the batch has
none, and eq. 2 would silently ignore it): such a batch is an error, not a smaller loss. Build
batches of P lesions x K images with K >= 2 (IR: every image at least twice), see
:func:`bus_paper.papers.p002.train.pk_batch`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

POSITIVES = ("lesion", "instance")
NEGATIVES = ("all", "other_class", "same_class", "none")

#: variant -> (positives, negatives); ``baseline`` has no contrastive term.
VARIANTS: dict[str, tuple[str, str]] = {
    "ir": ("instance", "all"),
    "lr": ("lesion", "all"),
    "lr_minus_sc": ("lesion", "other_class"),
    "lr_minus_dc": ("lesion", "same_class"),
    "lr_minus_all": ("lesion", "none"),
}


def _ids(name: str, t: torch.Tensor | None, n: int) -> torch.Tensor:
    if t is None:
        raise ValueError(f"{name} is required for this variant")
    t = torch.as_tensor(t)
    if t.ndim != 1 or t.shape[0] != n:
        raise ValueError(f"{name} must be a 1-D tensor with one entry per embedding ({n}), "
                         f"got shape {list(t.shape)}")
    if t.is_floating_point():
        raise ValueError(f"{name} must hold integer ids, got {t.dtype}")
    return t


def _constant_within(groups: torch.Tensor, values: torch.Tensor, what: str, of: str) -> None:
    """Raise if one group (lesion) carries two values (labels; or an image two lesions)."""
    same_group = groups[:, None] == groups[None, :]
    clash = same_group & (values[:, None] != values[None, :])
    if clash.any():
        i = int(clash.any(1).nonzero()[0])
        raise ValueError(f"{of} {int(groups[i])} has more than one {what} in the batch")


class LesionContrastiveLoss(nn.Module):
    """Eq. 2 of paper 002 with the positive/negative sets of one variant (module docstring).

    Args:
        positives: ``"lesion"`` (LR: other images of the same lesion) or ``"instance"`` (IR:
            other augmented copies of the same image).
        negatives: ``"all"`` (every image outside the positive unit), ``"other_class"``
            (LR(−SC): drop same-class negatives), ``"same_class"`` (LR(−DC): drop other-class
            negatives) or ``"none"`` (LR(−)).
        temperature: divides the cosine similarity; eq. 2 has none (1.0). Must be > 0.

    ``forward(z, lesion, label=None, instance=None)``: ``z`` ``[N, D]`` features; ``lesion``
    ``[N]`` lesion ids; ``label`` ``[N]`` class ids (needed for ``other_class``/``same_class``);
    ``instance`` ``[N]`` image ids (needed for ``instance`` positives; copies of one image share
    it). Returns the scalar loss in float32 (similarities are computed with autocast off).

    Example:
        >>> loss = LesionContrastiveLoss("lesion", "all")
        >>> z = torch.randn(8, 16)
        >>> lesion = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
        >>> value = loss(z, lesion)                      # scalar tensor
        >>> tight = z[[0, 0, 2, 2, 4, 4, 6, 6]]          # views of a lesion identical
        >>> bool(loss(tight, lesion) < value)
        True
    """

    def __init__(self, positives: str = "lesion", negatives: str = "all",
                 temperature: float = 1.0) -> None:
        super().__init__()
        if positives not in POSITIVES:
            raise ValueError(f"positives must be one of {POSITIVES}, got {positives!r}")
        if negatives not in NEGATIVES:
            raise ValueError(f"negatives must be one of {NEGATIVES}, got {negatives!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.positives, self.negatives = positives, negatives
        self.temperature = float(temperature)

    @classmethod
    def for_variant(cls, variant: str, temperature: float = 1.0) -> LesionContrastiveLoss:
        """The loss of a named variant of :data:`VARIANTS` (``baseline`` has none)."""
        if variant not in VARIANTS:
            raise ValueError(f"no contrastive loss for variant {variant!r}; "
                             f"variants with one: {', '.join(VARIANTS)}")
        return cls(*VARIANTS[variant], temperature=temperature)

    def masks(self, lesion: torch.Tensor, label: torch.Tensor | None = None,
              instance: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Boolean ``[N, N]`` masks (positives, negatives), row = anchor; checked as in forward."""
        n = lesion.shape[0]
        lesion = _ids("lesion", lesion, n)
        eye = torch.eye(n, dtype=torch.bool, device=lesion.device)
        if self.positives == "instance":
            instance = _ids("instance", instance, n).to(lesion.device)
            _constant_within(instance, lesion, "lesion", "image")
            unit = instance
        else:
            unit = lesion
        same_unit = unit[:, None] == unit[None, :]
        pos = same_unit & ~eye
        neg = ~same_unit
        if self.negatives in ("other_class", "same_class"):
            label = _ids("label", label, n).to(lesion.device)
            _constant_within(lesion, label, "label", "lesion")
            same_class = label[:, None] == label[None, :]
            neg = neg & (~same_class if self.negatives == "other_class" else same_class)
        elif self.negatives == "none":
            neg = torch.zeros_like(neg)
        lonely = ~pos.any(1)
        if lonely.any():
            i = int(lonely.nonzero()[0])
            what = "image" if self.positives == "instance" else "lesion"
            raise ValueError(f"{int(lonely.sum())} of {n} embeddings have no positive (e.g. "
                             f"index {i}, {what} {int(unit[i])} appears once in the batch): "
                             f"every {what} needs at least two entries")
        return pos, neg

    def forward(self, z: torch.Tensor, lesion: torch.Tensor, label: torch.Tensor | None = None,
                instance: torch.Tensor | None = None) -> torch.Tensor:
        if z.ndim != 2:
            raise ValueError(f"expected features [N, D], got shape {list(z.shape)}")
        if z.shape[0] < 2:
            raise ValueError(f"need at least 2 embeddings, got {z.shape[0]}")
        lesion = _ids("lesion", torch.as_tensor(lesion, device=z.device), z.shape[0])
        pos, neg = self.masks(lesion, label, instance)
        with torch.autocast(device_type=z.device.type, enabled=False):
            u = F.normalize(z.float(), dim=1)
            logits = u @ u.T / self.temperature
            # log of the denominator over N(i) u P(i) only (i itself is in neither)
            log_den = torch.logsumexp(logits.masked_fill(~(pos | neg), float("-inf")), dim=1)
            log_prob = logits - log_den[:, None]
            return -(log_prob * pos).sum(1).mean()   # sum over P(i), mean over anchors (eq. 2)

    def extra_repr(self) -> str:
        return (f"positives={self.positives!r}, negatives={self.negatives!r}, "
                f"temperature={self.temperature}")
