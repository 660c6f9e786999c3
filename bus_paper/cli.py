"""`bus-paper`: a thin command-line face over the same functions the notebooks call.

Each command group lives beside the code it drives and registers itself here through a
``register(subparsers)`` function, so this file stays a table of contents.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# (module, what it adds) -- imported lazily so `bus-paper data ...` never imports torch.
COMMAND_MODULES = (
    "bus_paper.data.cli",       # data manifest | check | duplicates | splits | phantom
    "bus_paper.pipeline",       # run
    "bus_paper.train.cli",      # pretrain | train | predict | bench
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bus-paper", description=__doc__.splitlines()[0])
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
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError, KeyError) as err:
        print(f"bus-paper {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
