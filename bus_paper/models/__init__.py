"""Models: the multiscale CoAtNet of paper 000 (:func:`build_model`), its parts, and the Table 1
baselines (:mod:`.baselines`). :func:`build_network` builds either from a stored config."""

from collections.abc import Mapping
from typing import Any

from .busnet import BusNet, ScaleConcat, StageFusion, build_model
from .coatnet import VARIANTS, CoAtNetEncoder, ScaleFreeRelPosBias, dilate_stage
from .heads import ClassifierHead, ProjectionHead


def build_network(cfg: Any):
    """The model a stored config describes: a :class:`~.baselines.BaselineNet` for a baseline
    config (it has the key ``baseline``), else a :class:`BusNet` (``ModelConfig`` or its asdict).
    Checkpoints store either, so loaders call this rather than :func:`build_model`."""
    if isinstance(cfg, Mapping) and "baseline" in cfg:
        from .baselines import build_baseline_from_config
        return build_baseline_from_config(cfg)
    return build_model(cfg)


__all__ = [
    "VARIANTS",
    "BusNet",
    "ClassifierHead",
    "CoAtNetEncoder",
    "ProjectionHead",
    "ScaleConcat",
    "ScaleFreeRelPosBias",
    "StageFusion",
    "build_model",
    "build_network",
    "dilate_stage",
]
