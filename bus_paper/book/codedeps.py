"""Which package files a chapter depends on: the static import closure of its notebook.

A chapter is re-executed when code it can run changes (:func:`~bus_paper.book.runner.code_digest`
of these files), not when any file of the package does: an edit of the model card, the runner or
paper 004's code leaves the training chapters of paper 000 as they are. The closure is taken from
the source text (``ast``), never by importing, and errs on the side of re-running:

- every ``import`` anywhere in a module counts, those inside functions included;
- importing ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__`` too;
- a package whose ``__init__`` (or any module of it) imports by name at run time
  (``importlib.import_module``: the model-family registry, lazy attributes) brings in all of its
  modules;
- every profile belongs to every chapter, less the ``[papers.<paper>]`` tables that no module
  of its closure reads (``profile.section("<paper>")`` with a literal name; any other argument
  keeps them all), and compared by their values, not their text (a comment changes nothing);
- any other data file (``*.toml``, e.g. the published numbers) belongs to a chapter whose closure
  holds a module of the folder it lies in.
"""
from __future__ import annotations

import ast
import json
import tomllib
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

PACKAGE = "bus_paper"


def modules(package_dir: Path) -> dict[str, Path]:
    """``{dotted module name: file}`` for every ``*.py`` of the package."""
    out = {}
    for p in package_dir.rglob("*.py"):
        if "__pycache__" in p.parts:
            continue
        parts = (PACKAGE, *p.relative_to(package_dir).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


# Every chapter of a run or a plan walks the same modules: what each module imports and which
# paper sections it reads are worked out once per content (not per file time, which two quick
# edits can share).
@lru_cache(maxsize=1024)
def _tree(source: bytes) -> ast.AST:
    return ast.parse(source)


@lru_cache(maxsize=1024)
def _module_imports(source: bytes, name: str, is_package: bool) -> tuple[frozenset[str], bool]:
    names, dynamic = _imported(_tree(source), name, is_package)
    return frozenset(names), dynamic


@lru_cache(maxsize=1024)
def _module_sections(source: bytes) -> frozenset[str] | None:
    out: set[str] = set()
    for node in ast.walk(_tree(source)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "section"):
            arg = node.args[0] if node.args else None
            if not (isinstance(arg, ast.Constant) and isinstance(arg.value, str)):
                return None
            out.add(arg.value)
    return frozenset(out)


def sections_read(paths: Iterable[Path]) -> set[str] | None:
    """The paper sections (``[papers.<name>]``) that code in ``paths`` reads through
    ``profile.section("<name>")``; None when a call names one by anything but a literal."""
    out: set[str] = set()
    for path in paths:
        found = _module_sections(path.read_bytes())
        if found is None:
            return None
        out |= found
    return out


def _imported(tree: ast.AST, name: str, is_package: bool) -> tuple[set[str], bool]:
    """The dotted names a module's imports may refer to (modules, or attributes of them), and
    whether it imports by name at run time."""
    names: set[str] = set()
    dynamic = False
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's package, up level - 1 more
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            names.add(mod)
            names.update(f"{mod}.{a.name}" for a in node.names)  # `from pkg import module`
        elif isinstance(node, ast.Call):
            f = node.func
            called = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            dynamic |= called in ("import_module", "__import__")
    return names, dynamic


def closure(roots: Iterable[str], package_dir: Path,
            known: dict[str, Path] | None = None) -> set[str]:
    """Every package module that importing ``roots`` (dotted names) can run (``known``: the
    package's :func:`modules`, when the caller has them)."""
    known = known if known is not None else modules(package_dir)
    seen: set[str] = set()
    todo = [r for r in roots if r in known]
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        seen.add(mod)
        path = known[mod]
        imported, dynamic = _module_imports(path.read_bytes(), mod, path.name == "__init__.py")
        names = set(imported)
        parts = mod.split(".")
        names.update(".".join(parts[:i]) for i in range(1, len(parts)))  # parents' __init__
        if dynamic:  # imports by name: the whole package it lives in
            pkg = mod if path.name == "__init__.py" else ".".join(parts[:-1])
            names.update(m for m in known if m == pkg or m.startswith(pkg + "."))
        todo.extend(n for n in names if n in known and n not in seen)
    return seen


def notebook_imports(notebook: Path) -> set[str]:
    """The package names a notebook's code cells import (cells that are not plain Python, e.g.
    with IPython magics, are read line by line)."""
    cells = json.loads(Path(notebook).read_text())["cells"]
    roots: set[str] = set()
    for cell in cells:
        if cell.get("cell_type") != "code":
            continue
        src = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        try:
            trees = [ast.parse(src)]
        except SyntaxError:
            trees = []
            for line in src.splitlines():
                try:
                    trees.append(ast.parse(line.strip()))
                except SyntaxError:
                    pass
        for tree in trees:
            names, _ = _imported(tree, "__main__", False)
            roots.update(n for n in names if n == PACKAGE or n.startswith(PACKAGE + "."))
    return roots


def chapter_inputs(notebook: Path, package_dir: Path) -> list[tuple[str, bytes]]:
    """What decides what ``notebook`` computes, as ``(path in the package, content)`` sorted by
    path: the files of its import closure, the profiles (their values, less the paper sections it
    does not read: :func:`sections_read`) and the data files beside its modules."""
    known = modules(package_dir)
    files = {known[m] for m in closure(notebook_imports(notebook), package_dir, known)}
    folders = {p.parent for p in files}
    read = sections_read(files)
    profiles = package_dir / "profiles"
    out = [(p.relative_to(package_dir).as_posix(), p.read_bytes()) for p in files]
    for p in package_dir.rglob("*.toml"):
        if "__pycache__" in p.parts:
            continue
        if p.parent == profiles:
            values = tomllib.loads(p.read_text())
            papers = values.get("papers", {})
            if read is not None and isinstance(papers, dict):
                values["papers"] = {k: v for k, v in papers.items() if k in read}
            content = json.dumps(values, sort_keys=True, default=str).encode()
        elif p.parent in folders:
            content = p.read_bytes()
        else:
            continue
        out.append((p.relative_to(package_dir).as_posix(), content))
    return sorted(out)
