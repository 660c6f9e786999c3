"""bus-paper: a reproducible, executable paper on breast-ultrasound malignancy prediction.

Layers, top to bottom (each imports only the ones below it; pyproject.toml's
[tool.importlinter] contracts check it in the tests, tests/test_layers.py):
    cli        -> cli/: every command (data.py, train.py; book's run and build in book/runner.py)
    book       -> book/: runner (papermill, content hashes), pages (model card, reproducibility,
                  re-run boxes), chapter (the one module notebooks import; which chapter reads which)
    papers     -> papers/: p000 (experiments: Table 1, ablations, label efficiency; analysis),
                  p001 (fusion model family), p002 (lesion loss and trainer), p004 (features,
                  classical classifiers, mini-MIAS), beyond (generalisation), literature (published
                  numbers), each paper's claims as data; a paper may build on p000, never on another
    library    -> train, models, data, explain (Grad-CAM, saliency), losses, augment, metrics,
                  plotting, provenance, config, paths
    core       -> core/: stats (legend, bootstrap, AUC), runs (recipe keys), calibration, atomic,
                  log (messages through logging; progress only when asked)
"""

__version__ = "0.1.0"

from .core import log as _log  # noqa: E402,F401  (the package's warnings reach stderr from the first import)
