"""Models: the multiscale CoAtNet of paper 000 (:func:`build_model`), its parts, and the Table 1
baselines (:mod:`.baselines`). :func:`build_network` builds any of them from a stored config.

A later chapter adds its own architecture as a *family*: a module ``bus_paper/models/<family>.py``
with ``build_from_config(cfg)``, and configs carrying ``"family": "<family>"``. The engine then
pretrains and fine-tunes it unchanged (``pretrain(network=cfg)``, ``finetune(network=cfg)``); its
config is in the run key (:mod:`bus_paper.core.runs`): adding a family invalidates no other run.
"""

import importlib
import re
from collections.abc import Mapping
from typing import Any

from .busnet import BusNet, ScaleConcat, StageFusion, build_model
from .coatnet import VARIANTS, CoAtNetEncoder, ScaleFreeRelPosBias, dilate_stage
from .heads import ClassifierHead, ProjectionHead


def build_network(cfg: Any):
    """The model a stored config describes: a :class:`~.baselines.BaselineNet` for a baseline
    config (it has the key ``baseline``), else a :class:`BusNet` (``ModelConfig`` or its asdict).
    Checkpoints store either, so loaders call this rather than :func:`build_model`. A config with
    the key ``family`` is built by ``bus_paper.models.<family>.build_from_config``."""
    if isinstance(cfg, Mapping) and "family" in cfg:
        return family_module(cfg["family"]).build_from_config(cfg)
    if isinstance(cfg, Mapping) and "baseline" in cfg:
        from .baselines import build_baseline_from_config
        return build_baseline_from_config(cfg)
    return build_model(cfg)


def family_module(family: str):
    """The module ``bus_paper.models.<family>`` behind configs with ``"family": family``."""
    if not isinstance(family, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", family):
        raise ValueError(f"model family must be a module name like 'fusion', got {family!r}")
    try:
        module = importlib.import_module(f"{__name__}.{family}")
    except ModuleNotFoundError as e:
        raise KeyError(f"unknown model family {family!r}: no module bus_paper/models/{family}.py") from e
    if not hasattr(module, "build_from_config"):
        raise TypeError(f"bus_paper.models.{family} has no build_from_config(cfg)")
    return module


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
    "family_module",
]
