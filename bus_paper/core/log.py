"""The package's messages: one logger tree under ``bus_paper`` (``logging.getLogger(__name__)``
in each module), instead of bare prints and a ``progress`` flag passed through every function.

- WARNING and above (a corrupt cache file moved aside, a run folder held by another process)
  always reach stderr, in one plain line.
- INFO is progress: epoch lines, resumption, the tqdm bars (which show only when INFO is on).
  The ``bus-paper`` command turns it on (``-q`` keeps it off); a notebook or script asks for it
  with :func:`verbose`. The book's notebooks leave it off, so chapters hold results, not bars.

The handler writes to whatever ``sys.stderr`` is when a message is emitted (pytest's capture, a
notebook's stream), and the tree does not propagate to the root logger, so an application's own
logging configuration never prints a message twice.
"""

from __future__ import annotations

import logging
import sys

ROOT = "bus_paper"


class _CurrentStderr(logging.StreamHandler):
    """A StreamHandler bound to the current ``sys.stderr`` at each message, not at creation."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self):  # noqa: D102
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def _install() -> logging.Logger:
    log = logging.getLogger(ROOT)
    if not any(isinstance(h, _CurrentStderr) for h in log.handlers):
        handler = _CurrentStderr()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.WARNING)
        log.propagate = False
    return log


_install()


def verbose(on: bool = True) -> int:
    """Show progress (INFO: epoch lines and tqdm bars) or only warnings; returns the level it
    replaced (``logging.getLogger("bus_paper").setLevel(previous)`` restores it)."""
    log = logging.getLogger(ROOT)
    previous = log.level
    log.setLevel(logging.INFO if on else logging.WARNING)
    return previous


def shows_progress(log: logging.Logger) -> bool:
    """Whether ``log`` passes INFO: what decides if a tqdm bar is drawn."""
    return log.isEnabledFor(logging.INFO)
