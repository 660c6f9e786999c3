"""The core library: what every paper's chapter builds on (statistics first; data, models and
training move here with the layout issue, see ARCHITECTURE.md)."""

#: How every table and page writes a value that does not exist (an undefined metric, a result not
#: yet run): one dash, never ``nan``, ``None`` or ``<NA>``. The book's formatting and the papers'
#: tables both use it, so it lives below them.
MISSING = "–"


class MissingResult(FileNotFoundError):
    """A result file that a generated page block or a claim needs is absent: its chapter has not
    run. One class for the book and the papers, so a page catches what a claim raises."""
