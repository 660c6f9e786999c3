"""bus-paper: a reproducible, executable paper on breast-ultrasound malignancy prediction.

Layers (each knows only the ones below it):
    pipeline   -> papermill runner, content hashes, provenance, profiles
    train      -> pretrain / finetune / evaluate / predict
    models, losses, metrics, explain
    data       -> adapters -> manifest -> duplicates -> splits -> preprocessing cache
"""

__version__ = "0.1.0"
