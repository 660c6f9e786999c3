"""The papers' claims as data, one module beside each paper (``p000/claims.py``, ``p001``,
``p002``, ``p004``, ``beyond``), and the book's one claims table built from the chapters' result
files (:func:`claims_table`; the claims chapter writes it to ``book/results/claims/claims.csv``).
"""

from .table import COLUMNS, PAPERS, TITLES, claims_table, display, sources, verdict_counts

__all__ = ["COLUMNS", "PAPERS", "TITLES", "claims_table", "display", "sources", "verdict_counts"]
