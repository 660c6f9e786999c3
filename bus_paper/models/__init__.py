"""Models: the multiscale CoAtNet of paper 000 (:func:`build_model`) and its parts."""

from .busnet import BusNet, ScaleConcat, StageFusion, build_model
from .coatnet import VARIANTS, CoAtNetEncoder, ScaleFreeRelPosBias, dilate_stage
from .heads import ClassifierHead, ProjectionHead

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
    "dilate_stage",
]
