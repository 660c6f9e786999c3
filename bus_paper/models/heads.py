"""Heads on the pooled encoder features (the SSL projection head and the classifier) and
:class:`SSLNet`, the one base class of every network the book trains."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
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


class SSLNet(nn.Module):
    """An encoder with two heads: ``projector`` (SSL embedding) and ``head`` (class logits).

    A subclass builds ``projector`` and ``head`` and overrides one hook, :meth:`encode` (pooled
    features ``[B, feature_dim]``), plus :meth:`gradcam_target_layers`; the rest is shared: the
    SimCLR embedding, the logits, and the encoder's state (everything but ``head``), which is
    what pretraining hands to fine-tuning. The multiscale CoAtNet (``BusNet``), the Table 1
    baselines and paper 001's fusion network are all SSLNets.
    """

    projector: nn.Module
    head: nn.Module

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """SSL embedding ``R`` (paper 000, eq. 3-4), ``[B, proj_dim]``; not normalised (the loss
        does it)."""
        return self.projector(self.encode(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``[B, num_classes]``."""
        return self.head(self.encode(x))

    def gradcam_target_layers(self) -> list[nn.Module]:
        raise NotImplementedError

    def gradcam_reshape_transform(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """``reshape_transform`` for pytorch-grad-cam: None where the target maps are NCHW."""
        return None

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """Everything but the classifier: encoder (and fusion, attention) and projection head."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("head.")}

    def load_encoder_state_dict(self, state: Mapping[str, torch.Tensor],
                                strict: bool = True) -> list[str]:
        """Load a pretrained :meth:`encoder_state_dict`; the classifier keeps its initialisation.

        With ``strict`` every key must match in name and shape (a KeyError / ValueError says which
        do not). With ``strict=False`` only matching keys are loaded (e.g. the encoder of a model
        whose projection head has another width) and the skipped own keys are returned.
        """
        own = self.encoder_state_dict()
        extra = sorted(set(state) - set(own))
        missing = sorted(set(own) - set(state))
        wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
        if strict and (extra or missing):
            raise KeyError(f"encoder state does not match this model: missing {missing[:5]}, "
                           f"unexpected {extra[:5]} ({len(missing)} / {len(extra)} keys)")
        if strict and wrong:
            raise ValueError(f"encoder state has other shapes for {wrong[:5]} ({len(wrong)} keys); "
                             "was it pretrained with another variant, scales or fusion setting?")
        keep = {k: v for k, v in state.items() if k in own and k not in wrong}
        self.load_state_dict(keep, strict=False)
        return sorted(set(own) - set(keep))
