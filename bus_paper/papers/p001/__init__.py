"""Paper 001 (MobileNetV2 + DenseNet121 fusion with attention): :mod:`.fusion` (the model
family), :mod:`.experiments` (the chapter's runs and comparisons), :mod:`.claims`."""

from . import fusion  # noqa: F401  (registers the "fusion" model family with bus_paper.models)
