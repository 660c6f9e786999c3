"""The package's layering holds: ``core`` <- library <- papers <- book <- cli (issue 17).

The contracts are ``[tool.importlinter]`` in ``pyproject.toml``: the layers (exhaustive, so a new
top-level module must be given a layer), what core, the library and the papers may not import, and
no import cycles. This runs ``lint-imports`` on them in a subprocess (it reads the configuration
from the working folder, and its report is what a reader needs when a contract breaks). It parses
source files only: well under a second, and no torch.
"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# `lint-imports` is importlinter.cli's click command; calling it from the running interpreter works
# wherever the package is installed, whether or not the venv's bin/ is on PATH
LINT_IMPORTS = ("import sys; from importlinter.cli import lint_imports_command; "
                "sys.exit(lint_imports_command())")


def test_import_contracts_are_kept():
    try:
        import importlinter  # noqa: F401
    except ImportError:
        raise AssertionError("import-linter is missing: pip install -e '.[test]'") from None
    # --no-cache: no .import_linter_cache/ in the checkout, and never a stale graph
    done = subprocess.run([sys.executable, "-c", LINT_IMPORTS, "--no-cache"], cwd=ROOT, check=False,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "0 broken" in done.stdout, (
        "an import breaks the layering (pyproject.toml [tool.importlinter]): move the code it "
        f"needs to the lower layer instead of importing upwards\n{done.stdout}\n{done.stderr}")
