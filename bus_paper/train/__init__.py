"""Training engine: pretraining, fine-tuning, prediction and the benchmark.

Names are imported lazily so that `bus-paper data ...` and `bus-paper --help` never load torch.
"""

from importlib import import_module

_LAZY = {"finetune": ".finetuning", "load_deployable": ".finetuning", "predict_proba": ".finetuning",
         "pretrain": ".pretraining", "load_pretrained": ".pretraining"}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
