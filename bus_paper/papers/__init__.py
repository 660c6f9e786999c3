"""One folder per paper: ``p000`` (the multiscale CoAtNet with SimCLR; its ``experiments`` are
also the Table 1 zoo that the others compare with), ``p001`` (MobileNetV2 + DenseNet121 fusion),
``p002`` (lesion recognition as an auxiliary loss), ``p004`` (multi-backbone features and
classical classifiers), ``beyond`` (cross-site generalisation, which no paper tests). Each holds
its experiments, its claims as data (``claims.py``) and any model, loss or trainer only it uses;
``literature`` holds the papers' published numbers. The book's one claims table is built from
the chapters' result files (:func:`claims_table`; the claims chapter writes it to
``book/results/claims/claims.csv``). Dependencies: ``table`` > papers > ``p000`` > ``measure``,
``literature`` (an import-linter contract in ``pyproject.toml``).
"""

from . import p001  # noqa: F401  (registers paper 001's model family: its checkpoints then load anywhere)
from .table import (
    COLUMNS,
    PAPERS,
    TITLES,
    claims_table,
    compact,
    display,
    source_files,
    sources,
    styled,
    summary,
    verdict_counts,
)

__all__ = ["COLUMNS", "PAPERS", "TITLES", "claims_table", "compact", "display", "source_files", "sources",
           "styled", "summary", "verdict_counts"]
