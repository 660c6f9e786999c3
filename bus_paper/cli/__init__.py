"""`bus-paper`: a thin command-line face over the same functions the notebooks call.

Each command group is a module with a ``register(subparsers)`` function: ``cli/data.py``,
``cli/train.py`` and the book's ``run`` / ``book`` (``bus_paper/book/runner.py``), so this file
stays a table of contents. Progress (epoch lines, bars) goes through ``logging``
(:mod:`bus_paper.core.log`): on here, off with ``-q``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from ..core.log import verbose

# (module, what it adds) -- imported lazily so `bus-paper data ...` never imports torch.
COMMAND_MODULES = (
    "bus_paper.cli.data",       # data manifest | check | duplicates | splits | phantom
    "bus_paper.book.runner",    # run | book
    "bus_paper.cli.train",      # pretrain | train | predict | bench
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bus-paper", description=__doc__.splitlines()[0])
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="warnings only: no progress bars or epoch lines")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:  # a layer not built yet must not break the others
            if err.name and err.name.startswith("bus_paper"):
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    previous = verbose(not args.quiet)  # progress goes through logging (bus_paper.core.log)
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError, KeyError) as err:
        print(f"bus-paper {args.command}: error: {err}", file=sys.stderr)
        return 2
    finally:  # main() called from Python (tests, scripts) leaves the caller's level as it was
        logging.getLogger("bus_paper").setLevel(previous)

