"""Models: the multiscale CoAtNet of paper 000 (:func:`build_model`), its parts, and the Table 1
baselines (:mod:`.baselines`). :func:`build_network` builds any of them from a stored config.

A paper adds its own architecture as a *family*: a ``build_from_config(cfg)`` registered with
:func:`register_family` (paper 001's ``fusion``, in :mod:`bus_paper.papers.p001.fusion`, registered
when ``bus_paper.papers`` is imported), or a library module ``bus_paper/models/<family>.py`` with
that function; configs carry ``"family": "<family>"``. The engine then pretrains and fine-tunes it
unchanged (``pretrain(network=cfg)``, ``finetune(network=cfg)``); its config is in the run key
(:mod:`bus_paper.core.runs`): adding a family invalidates no other run.
"""

import importlib
import re
from collections.abc import Callable, Mapping
from typing import Any

from .busnet import BusNet, ScaleConcat, StageFusion, build_model
from .coatnet import VARIANTS, CoAtNetEncoder, ScaleFreeRelPosBias, dilate_stage
from .heads import ClassifierHead, ProjectionHead, SSLNet


def build_network(cfg: Any):
    """The model a stored config describes: a :class:`~.baselines.BaselineNet` for a baseline
    config (it has the key ``baseline``), else a :class:`BusNet` (``ModelConfig`` or its asdict).
    Checkpoints store either, so loaders call this rather than :func:`build_model`. A config with
    the key ``family`` is built by ``bus_paper.models.<family>.build_from_config``."""
    if isinstance(cfg, Mapping) and "family" in cfg:
        return family_builder(cfg["family"])(cfg)
    if isinstance(cfg, Mapping) and "baseline" in cfg:
        from .baselines import build_baseline_from_config
        return build_baseline_from_config(cfg)
    return build_model(cfg)


#: family name -> ``build_from_config`` of the families the papers registered
_FAMILIES: dict[str, Callable[[Mapping[str, Any]], Any]] = {}


def _check_name(family: Any) -> str:
    if not isinstance(family, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", family):
        raise ValueError(f"model family must be a module name like 'fusion', got {family!r}")
    return family


def register_family(family: str):
    """Decorator: ``build`` (config -> network) builds the configs with ``"family": family``.
    The library cannot import the papers (layering), so a paper registers its network here."""
    _check_name(family)

    def register(build: Callable[[Mapping[str, Any]], Any]):
        if _FAMILIES.get(family, build) is not build:
            raise ValueError(f"model family {family!r} is already registered")
        _FAMILIES[family] = build
        return build
    return register


def family_builder(family: str) -> Callable[[Mapping[str, Any]], Any]:
    """What builds configs with ``"family": family``: the registered function, else the library
    module ``bus_paper.models.<family>``'s ``build_from_config``."""
    _check_name(family)
    if family in _FAMILIES:
        return _FAMILIES[family]
    try:
        module = importlib.import_module(f"{__name__}.{family}")
    except ModuleNotFoundError as e:
        raise KeyError(f"unknown model family {family!r}: not registered (import the paper that "
                       f"defines it, e.g. bus_paper.papers) and no module "
                       f"bus_paper/models/{family}.py") from e
    if not hasattr(module, "build_from_config"):
        raise TypeError(f"bus_paper.models.{family} has no build_from_config(cfg)")
    return module.build_from_config


__all__ = [
    "VARIANTS",
    "BusNet",
    "ClassifierHead",
    "CoAtNetEncoder",
    "ProjectionHead",
    "SSLNet",
    "ScaleConcat",
    "ScaleFreeRelPosBias",
    "StageFusion",
    "build_model",
    "build_network",
    "dilate_stage",
    "family_builder",
    "register_family",
]
