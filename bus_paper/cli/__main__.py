"""``python -m bus_paper.cli``: the same as the ``bus-paper`` command."""
import sys

from . import main

sys.exit(main())
