"""bus-paper: a reproducible, executable paper on breast-ultrasound malignancy prediction.

Layers, top to bottom (each imports only the ones below it; pyproject.toml's
[tool.importlinter] contracts check it in the tests, tests/test_layers.py):
    cli        -> every command (train/cli.py and data/cli.py register theirs)
    pipeline   -> papermill runner, content hashes, which chapter reads which
    pages      -> model card, reproducibility tables, re-run boxes
    papers     -> papers/ (claims as data), paper001, paper002, paper004, generalisation,
                  experiments (paper 000), analysis, literature
    library    -> train, models, data, explain, losses, augment, metrics, config, provenance, paths
    core       -> core/: stats (legend, bootstrap, AUC), runs (recipe keys), calibration
"""

__version__ = "0.1.0"
