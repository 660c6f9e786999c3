"""The book's runner: execute the chapter notebooks with papermill, skip what is up to date, build.

``bus-paper run`` executes ``notebooks/NN_name.ipynb`` (sources, no outputs) into
``book/chapters/NN_name.ipynb`` (what the book renders); each chapter writes its result files into
``book/results/<name>/``. A chapter is re-executed only when its *content hash* changes: the hash of
the notebook's cells, the parameters, every ``bus_paper/**/*.py`` and profile TOML, the data
checksums, and the result tables of the chapters it reads (:data:`READS`; such a chapter also runs
after them). The hash and the provenance are kept in the executed notebook (``metadata.bus_paper``).
A run replaces a chapter and its results together, on success only (see :func:`execute`); with
``-p`` overrides it writes to ``runs/chapters`` and ``runs/results`` unless ``--update-book``.
``bus-paper book`` then builds the HTML with jupyter-book, warnings as errors.

Inside a notebook, :func:`~bus_paper.book.chapter.chapter` (the one module notebooks import)
turns the papermill parameters into a :class:`~bus_paper.book.chapter.Chapter`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat

from ..config import PROFILE_NAMES, Profile, load_profile
from ..core.runs import LEDGER_ENV, ledger_summary
from ..paths import PACKAGE_DIR, project_root, runs_dir  # project_root: tests' name
from ..paths import data_root as find_data_root
from ..provenance import atomic_write_text, data_checksums, provenance
from . import pages
from .boxes import chapter_times, times_markdown  # noqa: F401 (re-exported: the CLI's tables)
from .boxes import EMPTY_CACHE, estimate_here, notebook_digest
from .codedeps import chapter_inputs
from .chapter import READS, READS_FILE, registry_datasets

KERNEL = "python3"

MAX_TEXT_CHARS = 20_000          # per text output; a runaway print must not bloat the book
MAX_HTML_CHARS = 200_000         # per HTML output: a styled 50-row table is ~25 000 characters
MAX_NOTEBOOK_BYTES = 5_000_000   # warn above this: figures are meant to be ~100 dpi PNGs
BOOK_SOURCES = ("_config.yml", "_toc.yml")  # + the book/ folder, minus generated parts
GENERATED = ("_build", "chapters", "results", "failed")  # under book/: outputs, not sources


def kernel_config() -> dict[str, Any]:
    """papermill's keywords for the kernel: CurveZMQ encryption where jupyter_client and pyzmq
    offer it ("auto": where the kernelspec declares support). ipykernel >= 7.3 otherwise prints
    a warning about unencrypted TCP at every chapter's start, 14 times in a `make book`."""
    try:
        import zmq
        from jupyter_client.manager import KernelManager
        from traitlets.config import Config
    except ImportError:
        return {}
    if "transport_encryption" not in KernelManager.class_trait_names() or not zmq.has("curve"):
        return {}
    return {"config": Config({"KernelManager": {"transport_encryption": "auto"}})}


# ----------------------------------------------------------------------------- discovery
@dataclass(frozen=True)
class Notebook:
    path: Path   # notebooks/01_data.ipynb
    stem: str    # 01_data
    name: str    # data: the stem without its numeric prefix


def discover(notebooks_dir: str | os.PathLike) -> list[Notebook]:
    """``NN_name.ipynb`` files in book order; other notebooks (scratch, checkpoints) are ignored."""
    folder = Path(notebooks_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"no notebooks folder {folder}")
    out = []
    for p in sorted(folder.glob("*.ipynb")):
        m = pages.CHAPTER_STEM.match(p.stem)
        if m:
            out.append(Notebook(p, p.stem, m.group(2)))
    names = [nb.name for nb in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"two notebooks share the name(s) {dupes} in {folder}")
    return out


def in_read_order(notebooks: Sequence[Notebook]) -> list[Notebook]:
    """Book order, except that a chapter comes after the chapters it :data:`READS` among
    ``notebooks`` (the claims chapter, 09, after 10-13)."""
    names = {nb.name for nb in notebooks}
    out: list[Notebook] = []
    pending = list(notebooks)
    while pending:
        done = {nb.name for nb in out}
        ready = next((nb for nb in pending
                      if all(r in done or r not in names for r in READS.get(nb.name, ()))), None)
        if ready is None:
            raise ValueError(f"chapters that read each other: {[nb.name for nb in pending]}")
        pending.remove(ready)
        out.append(ready)
    return out


def select(notebooks: Sequence[Notebook], only: Iterable[str] | None) -> list[Notebook]:
    """Keep those named in ``only`` (name ``data`` or stem ``01_data``), in book order."""
    if not only:
        return list(notebooks)
    wanted = set(only)
    known = {nb.name for nb in notebooks} | {nb.stem for nb in notebooks}
    unknown = sorted(wanted - known)
    if unknown:
        raise ValueError(f"unknown notebook(s) {unknown}; known: "
                         f"{', '.join(nb.name for nb in notebooks) or 'none'}")
    return [nb for nb in notebooks if nb.name in wanted or nb.stem in wanted]


# ----------------------------------------------------------------------------- content hash
def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def code_digest(package_dir: Path = PACKAGE_DIR, notebook: Path | None = None) -> str:
    """sha256 over package files (path + content): with ``notebook``, what it can run
    (:func:`~bus_paper.book.codedeps.chapter_inputs`: its import closure, the profiles less the
    paper sections it does not read, the data files beside its modules), so an edit elsewhere
    leaves the chapter up to date; without, every ``*.py`` and ``*.toml`` except ``cli/`` (the
    top layer, which nothing a notebook imports may import: the import-linter layers in
    ``pyproject.toml``)."""
    if notebook is not None:
        inputs = chapter_inputs(Path(notebook), package_dir)
    else:
        inputs = sorted((p.relative_to(package_dir).as_posix(), p.read_bytes())
                        for p in package_dir.rglob("*")
                        if p.suffix in (".py", ".toml") and p.is_file()
                        and "__pycache__" not in p.parts
                        and p.relative_to(package_dir).parts[0] != "cli")
    h = hashlib.sha256()
    for rel, content in inputs:
        h.update(rel.encode() + b"\0" + _sha(content).encode() + b"\n")
    return h.hexdigest()


def results_digest(folder: Path) -> str:
    """sha256 over a chapter's result tables (``*.csv``, ``*.json``: name + content); "absent"
    when it has not run."""
    if not folder.is_dir():
        return "absent"
    h = hashlib.sha256()
    for p in sorted(q for q in folder.iterdir() if q.suffix in (".csv", ".json") and q.is_file()):
        h.update(p.name.encode() + b"\0" + _sha(p.read_bytes()).encode() + b"\n")
    return h.hexdigest()


def content_hash(notebook: str | os.PathLike, parameters: Mapping[str, Any],
                 data: Mapping[str, str], code: str | None = None,
                 reads: Mapping[str, str] | None = None) -> tuple[str, dict[str, Any]]:
    """The hash that decides whether a chapter is re-executed, and the parts it was made of.

    ``data_root`` and ``results_dir`` are not hashed: *where* things live changes nothing that
    ``data`` (the checksums) and the output location do not already capture. ``reads``: the
    :func:`results_digest` of each chapter this one :data:`READS` (only chapters that read others
    have the part, so the others' hashes are as before).
    """
    params = {k: v for k, v in parameters.items() if k not in ("data_root", "results_dir")}
    parts = {"notebook": notebook_digest(notebook),
             "parameters": params,
             "code": code if code is not None else code_digest(notebook=Path(notebook)),
             "data": dict(sorted(data.items()))}
    if reads:
        parts["reads"] = dict(sorted(reads.items()))
    return _sha(json.dumps(parts, sort_keys=True, default=str).encode()), parts


# ----------------------------------------------------------------------------- data root
def _portable(path: str | os.PathLike, cwd: Path) -> str:
    """``path`` relative to the folder the notebooks run in, when it is near it (what a reader sees
    in the committed notebook: ``../shared/data``, not one machine's absolute layout)."""
    rel = os.path.relpath(Path(path).resolve(), cwd.resolve())
    return rel if not rel.startswith(os.pardir + os.sep + os.pardir) else str(Path(path).resolve())




def data_state(profile: Profile, data_root: str | os.PathLike | None
               ) -> tuple[Path | None, dict[str, str]]:
    """(root to pass to the notebooks, data part of the hash).

    A synthetic profile without an explicit root gets ``None``: each notebook then writes its own
    phantom root, which is a function of the code (already hashed), so it needs no checksum.
    """
    if data_root is None and profile.data.synthetic:
        return None, {"synthetic": "phantom"}
    root = find_data_root(data_root)
    return root, data_checksums(root, registry_datasets())


# ----------------------------------------------------------------------------- execution
def trim_outputs(nb: nbformat.NotebookNode, max_chars: int = MAX_TEXT_CHARS,
                 max_html: int = MAX_HTML_CHARS) -> int:
    """Cap text outputs, drop widget views (no widget state in a static book). Returns # trimmed.
    An HTML output over ``max_html`` is dropped whole (cut mid-tag it would break the page), and
    its plain-text form, often only a repr such as ``<pandas.io.formats.style.Styler at 0x...>``,
    says so instead."""
    def cap(text: str | list[str]) -> tuple[str, bool]:
        text = "".join(text) if isinstance(text, list) else text
        if len(text) <= max_chars:
            return text, False
        return text[:max_chars] + f"\n... [{len(text) - max_chars} characters cut by bus-paper]", True

    trimmed = 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.output_type == "stream":
                out.text, cut = cap(out.text)
                trimmed += cut
            elif out.output_type in ("display_data", "execute_result"):
                data = out.data
                data.pop("application/vnd.jupyter.widget-view+json", None)
                html = data.get("text/html")
                for mime in ("text/plain", "text/markdown", "text/latex"):
                    if mime in data:
                        data[mime], cut = cap(data[mime])
                        trimmed += cut
                if html is not None and len("".join(html)) > max_html:
                    del data["text/html"]
                    data["text/plain"] = (f"[an HTML output of {len(''.join(html)):,} characters, "
                                          "too large for the book; the chapter's result files "
                                          "hold its numbers]")
                    trimmed += 1
            elif out.output_type == "error":
                out.traceback = [cap(line)[0] for line in out.traceback]
    nb.metadata.pop("widgets", None)
    return trimmed


def executed_meta(executed: Path) -> dict[str, Any]:
    """The ``bus_paper`` metadata an executed chapter was written with (its hash, hash parts,
    wall time, the runs it used); ``{}`` when it is absent or unreadable (a corrupt chapter is
    simply re-executed). Read once and handed to :func:`stale_parts` and
    :func:`~bus_paper.book.boxes.estimate_here`."""
    try:
        meta = nbformat.read(executed, as_version=4).metadata.get("bus_paper", {})
    except (OSError, ValueError):
        return {}
    return dict(meta) if isinstance(meta, Mapping) else {}


def stale_parts(meta: Mapping[str, Any], parts: Mapping[str, Any]) -> list[str]:
    """Why a chapter is re-executed: the :func:`content_hash` parts (notebook, parameters, code,
    data, reads) that differ from those its executed copy was made with (``meta``:
    :func:`executed_meta`); ``["not executed"]`` when it records none.

    >>> stale_parts(executed_meta(Path("/nonexistent.ipynb")), {"code": "x"})
    ['not executed']
    """
    old = meta.get("hash_parts")
    if not isinstance(old, Mapping):
        return ["not executed"]
    return [k for k in sorted({*parts, *old}) if parts.get(k) != old.get(k)]


@dataclass
class Outcome:
    notebook: Notebook
    status: str                 # executed | up to date | failed | skipped
    seconds: float = 0.0
    output: Path | None = None
    error: str = ""
    note: str = ""              # why a chapter whose hash is unchanged was re-executed


# ----------------------------------------------------------------------------- transactions
# A chapter's executed notebook and its results folder change together, on success only. The
# notebook writes into results/.<name>.staging; on success the record says "committing" (with the
# new notebook's sha256), results -> .<name>.old, staging -> results, the executed notebook is
# replaced (the commit point), .old deleted. The record failed/<stem>.json exists from the start
# of a run until it has committed ("running", "committing"), or says why it failed ("failed",
# "interrupted"): while it exists the chapter is re-run, and `recover` first resolves what a
# killed run left behind.
def record_path(out_dir: Path, stem: str) -> Path:
    return out_dir.parent / "failed" / f"{stem}.json"


def _write_record(path: Path, rec: Mapping[str, Any]) -> None:
    atomic_write_text(path, json.dumps(rec, indent=1, default=str) + "\n")


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def read_record(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):  # half-written by a killed run: it was running
        return {"status": "running"}


def _aside(results: Path, what: str) -> Path:
    return results.with_name(f".{results.name}.{what}")   # results/.data.staging, .data.old


def recover(results: Path, target: Path, record: Path) -> None:
    """Bring a chapter killed mid-run back to a complete state: the old one (notebook and results
    as before the run), or the new one if the run had already written its notebook."""
    rec = read_record(record) or {}
    committed = (rec.get("status") == "committing" and target.is_file()
                 and _sha(target.read_bytes()) == rec.get("notebook"))
    old = _aside(results, "old")
    if old.exists():
        if committed and results.exists():  # killed after the commit point: finish it
            shutil.rmtree(old)
        else:                               # killed between the two renames: roll back
            if results.exists():
                shutil.rmtree(results)
            old.rename(results)
    shutil.rmtree(_aside(results, "staging"), ignore_errors=True)  # never a complete result
    if committed:
        record.unlink()


def chapter_hash(nb: Notebook, parameters: Mapping[str, Any], data: Mapping[str, str], code: str,
                 cwd: Path) -> tuple[str, dict[str, Any]]:
    """:func:`content_hash` of a chapter with the results of the siblings it reads, where the
    notebook will find them (:meth:`~bus_paper.book.chapter.Chapter.sibling_results`)."""
    results = cwd / parameters["results_dir"]
    reads = {name: results_digest(results.parent / name if (results.parent / name).is_dir()
                                  else cwd / "book" / "results" / name)
             for name in READS.get(nb.name, ())}
    return content_hash(nb.path, parameters, data, code, reads)


def execute(nb: Notebook, parameters: Mapping[str, Any], *, out_dir: Path, data: Mapping[str, str],
            profile: Profile, data_root: Path | None, code: str, force: bool = False,
            cwd: Path | None = None, echo: bool = False) -> Outcome:
    """Execute one notebook into ``out_dir`` unless its content hash is unchanged (and no record
    of a failed or interrupted run is there). ``echo``: say when it starts, and why
    (:func:`stale_parts`; a chapter may train for hours before its outcome line).

    Transactional (see above): a failure, an exception, Ctrl-C or a dead kernel leaves the
    chapter and its results as they were; the failed notebook is kept in ``<out_dir>/../failed/``.
    """
    import papermill as pm

    cwd = cwd or project_root()
    target = out_dir / f"{nb.stem}.ipynb"
    record = record_path(out_dir, nb.stem)
    results = cwd / parameters["results_dir"]
    recover(results, target, record)
    prev = read_record(record)
    digest, parts = chapter_hash(nb, parameters, data, code, cwd)
    meta = executed_meta(target)
    if not force and prev is None and results.is_dir() and meta.get("hash") == digest:
        return Outcome(nb, "up to date", 0.0, target)
    note = "" if prev is None else (
        f"re-run: the last run ({prev.get('started', '?')}) "
        + ("did not finish (killed?)" if prev.get("status") in ("running", "committing") else
           f"{prev.get('status')}: {prev.get('error', '')}".splitlines()[0]))
    if echo:
        why = "forced" if force else ", ".join(stale_parts(meta, parts)) or "same hash"
        print(f"{nb.stem:<24} {'running':<11} ({why}{'; ' + note if note else ''}) since "
              f"{time.strftime('%H:%M')}", flush=True)
    started = time.time()
    rec = {"status": "running", "hash": digest, "parameters": dict(parameters), "started": _now()}
    _write_record(record, rec)
    staging = _aside(results, "staging")
    staging.mkdir(parents=True)
    # what the notebook sees: the staging folder, beside its siblings (their parent is the same)
    staged = {**parameters,
              "results_dir": str(Path(parameters["results_dir"]).with_name(staging.name))}
    with tempfile.TemporaryDirectory(prefix="bus-paper-run-") as tmp:
        work = Path(tmp) / target.name
        ledger = Path(tmp) / "runs_used.jsonl"  # the training runs the kernel takes (core.runs)
        before = os.environ.get(LEDGER_ENV)
        os.environ[LEDGER_ENV] = str(ledger)    # the kernel inherits it
        try:
            executed = pm.execute_notebook(
                nb.path, work, parameters=staged, kernel_name=KERNEL,
                cwd=str(cwd), progress_bar=False, log_output=False, **kernel_config())
            runs_used = ledger_summary(ledger, runs_dir())
        except BaseException as err:  # a cell raised, the kernel died or timed out, Ctrl-C
            if isinstance(err, pm.PapermillExecutionError):
                msg = f"cell {err.exec_count}: {err.ename}: {err.evalue}"
            else:
                msg = f"{type(err).__name__}: {err}"
            shutil.rmtree(staging, ignore_errors=True)
            _write_record(record, {**rec, "error": msg, "finished": _now(), "status":
                                   "failed" if isinstance(err, Exception) else "interrupted"})
            if work.exists():
                shutil.copy2(work, record.with_suffix(".ipynb"))
                msg += f"\n  failed copy: {record.with_suffix('.ipynb')}"
            if not isinstance(err, Exception):
                raise
            return Outcome(nb, "failed", time.time() - started, None, msg, note)
        finally:
            if before is None:
                os.environ.pop(LEDGER_ENV, None)
            else:
                os.environ[LEDGER_ENV] = before
    trim_outputs(executed)
    read, undeclared = siblings_read(staging, nb.name)
    if undeclared:  # its hash misses those siblings: a change there would not re-run it
        note = (note + "; " if note else "") + (
            f"WARNING: it read the results of {', '.join(undeclared)} without declaring them in "
            f"bus_paper.book.chapter.READS")
    executed.metadata["bus_paper"] = {
        "hash": digest,
        "hash_parts": parts,
        "source": nb.path.name,
        "parameters": dict(parameters),
        "reads": read,
        "runs_used": runs_used,
        "provenance": provenance(profile, parameters.get("seed"), data_root,
                                 [k for k in data if k != "synthetic"], started),
    }
    # the "download or re-run" box under the title: written into the executed copy only, so the
    # content hash (of the source notebook) is unchanged
    pages.add_rerun_cell(executed, nb.stem, pages.declared_parameters(nb.path),
                         results=out_dir.parent / "results")
    pages.hide_code(executed)
    # readers see where the results are (injected parameters, printed paths), not the staging
    text = (nbformat.writes(executed) + "\n").replace(f"/{staging.name}", f"/{results.name}")
    # commit (see `recover` for a kill between any two steps)
    _write_record(record, {**rec, "status": "committing", "notebook": _sha(text.encode())})
    old = _aside(results, "old")
    if results.exists():
        results.rename(old)
    staging.rename(results)
    atomic_write_text(target, text)
    shutil.rmtree(old, ignore_errors=True)
    record.unlink(missing_ok=True)
    record.with_suffix(".ipynb").unlink(missing_ok=True)  # an older failure is moot
    return Outcome(nb, "executed", time.time() - started, target, note=note)


def siblings_read(results: Path, name: str) -> tuple[list[str], list[str]]:
    """The chapters whose results chapter ``name`` read while it wrote ``results`` (its
    :data:`~bus_paper.book.chapter.READS_FILE`, removed here), and those of them it does not
    declare in :data:`~bus_paper.book.chapter.READS`."""
    record = results / READS_FILE
    read = sorted(json.loads(record.read_text())) if record.is_file() else []
    record.unlink(missing_ok=True)
    return read, [r for r in read if r not in READS.get(name, ())]


def parse_value(text: str) -> Any:
    """``-p KEY VALUE`` values, typed like papermill's ``-p``: int, float, bool, None, else str."""
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return {"True": True, "true": True, "False": False, "false": False,
            "None": None, "null": None}.get(text, text)


# ----------------------------------------------------------------------------- empty cache
_OUTPUTS_IN_RUNS = ("chapters", "results", "notebook-results")  # runs/: outputs, not a cache


def _cached_files(folder: Path, skip: Sequence[str] = ()) -> int:
    if not folder.is_dir():
        return 0
    return sum(1 for top in folder.iterdir() if top.name not in skip
               for p in ([top] if top.is_file() else top.rglob("*")) if p.is_file())


def check_empty_cache() -> None:
    """Refuse to time the book "from an empty cache" while the runs folder (trained models) or the
    data cache holds anything: the time would then leave out the training they spare."""
    from ..paths import cache_dir
    held = [f"{folder} ({n} file{'' if n == 1 else 's'})" for folder, n in (
        (runs_dir(), _cached_files(runs_dir(), _OUTPUTS_IN_RUNS)),
        (cache_dir(), _cached_files(cache_dir()))) if n]
    if held:
        raise ValueError(f"--from-empty-cache needs empty caches, but {' and '.join(held)} hold "
                         "earlier work: move them aside, or point BUS_PAPER_RUNS and "
                         "BUS_PAPER_CACHE at new folders")


def empty_cache_record(prof: Profile, outcomes: Sequence[Outcome], started: float,
                       seconds: float) -> dict[str, Any]:
    """What ``bus-paper run --from-empty-cache`` measured: the whole book's wall time against the
    profile's ``book_minutes``, chapter by chapter, with the commit and the hardware."""
    from ..provenance import git_state, hardware
    minutes = seconds / 60
    complete = bool(outcomes) and all(o.status == "executed" for o in outcomes)
    return {"profile": prof.name, "minutes": minutes, "target_minutes": prof.book_minutes,
            "within_target": (complete and prof.book_minutes is not None
                              and minutes <= prof.book_minutes),
            "complete": complete,
            "started": dt.datetime.fromtimestamp(started, dt.timezone.utc).isoformat(
                timespec="seconds"),
            "git": git_state(), "hardware": hardware(),
            "chapters": [{"chapter": o.notebook.stem, "status": o.status,
                          "minutes": o.seconds / 60} for o in outcomes]}


def run(profile: str = "cpu", *, only: Iterable[str] | None = None, force: bool = False,
        out: str | os.PathLike | None = None, data_root: str | os.PathLike | None = None,
        overrides: Mapping[str, Any] | None = None, notebooks_dir: str | os.PathLike | None = None,
        update_book: bool = False, echo: bool = True,
        from_empty_cache: bool = False) -> list[Outcome]:
    """Execute the selected chapters in order; stop at the first failure (later chapters may read
    its results). Executed chapters go to ``out`` (default: ``book/chapters``; with ``-p``
    overrides ``runs/chapters`` unless ``update_book``), results to ``<out>/../results/<name>/``.

    ``from_empty_cache``: every chapter, re-executed, with empty runs and data caches (checked:
    :func:`check_empty_cache`); the time is written to ``<out>/../results/`` :data:`EMPTY_CACHE`
    (:func:`empty_cache_record`), which the reproducibility page shows."""
    if from_empty_cache:
        if only or overrides:
            raise ValueError("--from-empty-cache times the whole book as published: "
                             "no --only, no -p")
        check_empty_cache()
        force = True
    started = time.time()
    root, prof, notebooks, out_dir, root_for_nb, data, params_of = _selection(
        profile, only, out, data_root, overrides, notebooks_dir, update_book)
    if echo:
        print(f"chapters -> {out_dir}, results -> {out_dir.parent / 'results'}"
              + (" (-p: not the book; --update-book to replace it)"
                 if overrides and out is None and not update_book else ""), flush=True)
    outcomes: list[Outcome] = []
    for nb in notebooks:
        if outcomes and outcomes[-1].status in ("failed", "skipped"):
            outcomes.append(Outcome(nb, "skipped", error="an earlier chapter failed"))
        else:
            outcomes.append(execute(nb, params_of(nb), out_dir=out_dir, data=data, profile=prof,
                                    data_root=root_for_nb, code=code_digest(notebook=nb.path),
                                    force=force, cwd=root, echo=echo))
        if echo:
            _report(outcomes[-1])
    if from_empty_cache:
        record = out_dir.parent / "results" / EMPTY_CACHE
        record.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(record, json.dumps(empty_cache_record(
            prof, outcomes, started, time.time() - started), indent=1) + "\n")
        if echo:
            print(f"from an empty cache: {(time.time() - started) / 60:.1f} min -> {record}",
                  flush=True)
    return outcomes


def _selection(profile: str, only: Iterable[str] | None, out: str | os.PathLike | None,
               data_root: str | os.PathLike | None, overrides: Mapping[str, Any] | None,
               notebooks_dir: str | os.PathLike | None, update_book: bool):
    """What :func:`run` and :func:`plan` share: project root, profile, the selected notebooks in
    read order, the chapters' folder, the data root and checksums, and each notebook's papermill
    parameters (a function of the notebook)."""
    root = project_root()
    prof = load_profile(profile)
    notebooks = in_read_order(select(discover(notebooks_dir or root / "notebooks"), only))
    overrides = dict(overrides or {})
    out_dir = chapters_dir(out, overrides, update_book)
    declared = {nb.stem: _declared_parameters(nb.path) for nb in notebooks}
    unused = sorted(k for k in overrides if not any(k in d for d in declared.values()))
    if unused:
        raise ValueError(f"-p {', '.join(unused)}: no selected notebook has such a parameter")
    root_for_nb, data = data_state(prof, data_root)

    def params_of(nb: Notebook) -> dict[str, Any]:
        return {"profile": prof.name,
                "data_root": _portable(root_for_nb, root) if root_for_nb else None,
                "results_dir": _portable(out_dir.parent / "results" / nb.name, root),
                **{k: v for k, v in overrides.items() if k in declared[nb.stem]}}
    return root, prof, notebooks, out_dir, root_for_nb, data, params_of


@dataclass
class PlanRow:
    stem: str
    state: str                  # up to date | stale
    why: list[str]              # stale_parts, or the failed / interrupted last run
    runs: int | None = None     # the runs its last execution used (None: no record of them)
    missing: int | None = None  # of those, not finished under runs/ now: they would be trained
    minutes: float | None = None  # boxes.estimate_here; 0 when up to date


def plan(profile: str = "cpu", *, only: Iterable[str] | None = None,
         out: str | os.PathLike | None = None, data_root: str | os.PathLike | None = None,
         overrides: Mapping[str, Any] | None = None,
         notebooks_dir: str | os.PathLike | None = None, update_book: bool = False,
         force: bool = False) -> list[PlanRow]:
    """What :func:`run` with the same arguments would do, without executing anything: per chapter
    whether it is up to date, and if not why, which of the runs its last execution used are no
    longer cached, and the minutes that would take here (:func:`~bus_paper.book.boxes.estimate_here`).
    A chapter that reads others (:data:`~bus_paper.book.chapter.READS`) is judged on their
    results as they are now; a re-run of those changes its hash too."""
    root, prof, notebooks, out_dir, _, data, params_of = _selection(
        profile, only, out, data_root, overrides, notebooks_dir, update_book)
    rows = []
    for nb in notebooks:
        target = out_dir / f"{nb.stem}.ipynb"
        digest, parts = chapter_hash(nb, params_of(nb), data, code_digest(notebook=nb.path), root)
        prev = read_record(record_path(out_dir, nb.stem))
        meta = executed_meta(target)
        if not force and prev is None and meta.get("hash") == digest:
            rows.append(PlanRow(nb.stem, "up to date", [], minutes=0.0))
            continue
        why = (["forced"] if force else stale_parts(meta, parts) or ["same hash"])
        if prev is not None:
            why.append(f"last run {prev.get('status', '?')}")
        est = estimate_here(meta, runs_dir()) or {}
        rows.append(PlanRow(nb.stem, "stale", why, est.get("runs"), est.get("missing"),
                            est.get("minutes")))
    return rows


def plan_markdown(rows: Sequence[PlanRow]) -> str:
    """:func:`plan` as the table ``bus-paper run --plan`` prints."""
    def num(v: float | int | None, fmt: str) -> str:
        return "?" if v is None else format(v, fmt)
    lines = ["| chapter | state | why | runs used (not cached now) | minutes here |",
             "| --- | --- | --- | --- | ---: |"]
    for r in rows:
        runs = "" if r.state == "up to date" else (
            f"{r.runs} ({r.missing})" if r.runs is not None
            else "? (not executed there yet)" if "not executed" in r.why
            else "? (executed before the runner recorded its runs)")
        lines.append(f"| {r.stem} | {r.state} | {', '.join(r.why)} | {runs} | "
                     f"{num(r.minutes, '.1f')} |")
    known = [r.minutes for r in rows if r.minutes is not None]
    unknown = [r.stem for r in rows if r.minutes is None]
    lines.append(f"| **total** | | | | **{sum(known):.1f}**"
                 + (f" + {', '.join(unknown)}" if unknown else "") + " |")
    return "\n".join(lines) + "\n"


def chapters_dir(out: str | os.PathLike | None, overrides: Mapping[str, Any] | None,
                 update_book: bool = False) -> Path:
    """Where executed chapters go: ``out``, else the book's, but a run with ``-p`` overrides
    (another seed, a subset) goes to ``runs/chapters``: it must not replace the published chapter
    and results with ones the rest of the book was not made from."""
    if out:
        return Path(out).resolve()
    if overrides and not update_book:
        return runs_dir() / "chapters"
    return project_root() / "book" / "chapters"


def _declared_parameters(path: Path) -> set[str]:
    import papermill as pm
    return set(pm.inspect_notebook(str(path)))


def _report(o: Outcome) -> None:
    size = ""
    if o.status == "executed" and o.output is not None:
        nbytes = o.output.stat().st_size
        size = f"  {nbytes / 1e6:.1f} MB" + ("  (large: check figure sizes)"
                                            if nbytes > MAX_NOTEBOOK_BYTES else "")
    print(f"{o.notebook.stem:<24} {o.status:<11} {o.seconds:7.1f} s{size}", flush=True)
    if o.note:
        print(f"  {o.note}", flush=True)
    if o.error:
        print(f"  {o.error}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- book
def build_book(chapters: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
               source: str | os.PathLike | None = None, strict: bool = True) -> int:
    """Build the HTML book into ``<out>/_build/html``; returns jupyter-book's exit status.

    The book's sources (``_config.yml``, ``_toc.yml``, ``book/*``) and the executed chapters (and
    their results, beside them) are staged in a fresh temporary folder, so any chapters folder can
    be built (tests build into tmp) and every build is a full one: an incremental Sphinx build
    would not repeat the warnings of unchanged pages, and ``-W`` must see them all.
    """
    src = Path(source) if source else project_root()
    chapters = Path(chapters) if chapters else src / "book" / "chapters"
    out = Path(out).resolve() if out else src / "book"
    if not chapters.is_dir():
        raise FileNotFoundError(f"no executed chapters in {chapters}: run `bus-paper run` first")
    for name in BOOK_SOURCES:
        if not (src / name).is_file():
            raise FileNotFoundError(f"{src / name} is missing: not a book checkout?")
    with tempfile.TemporaryDirectory(prefix="bus-paper-book-") as tmp:
        stage = Path(tmp)
        for name in BOOK_SOURCES:
            shutil.copy2(src / name, stage / name)
        shutil.copytree(src / "book", stage / "book",
                        ignore=lambda d, names: GENERATED if Path(d) == src / "book" else ())
        shutil.copytree(chapters, stage / "book" / "chapters")
        if (chapters.parent / "results").is_dir():
            shutil.copytree(chapters.parent / "results", stage / "book" / "results")
        # generated parts (model card, reproducibility page, rerun boxes) from exactly the
        # chapters and results being built, so the HTML cannot disagree with them
        pages.refresh(stage / "book", stage / "book" / "chapters")
        cmd = [str(Path(sys.executable).with_name("jupyter-book")), "build", str(stage),
               "--path-output", str(out)]
        if strict:
            cmd += ["-W", "-n", "--keep-going"]
        return subprocess.run(cmd, check=False).returncode


# ----------------------------------------------------------------------------- CLI
def write_times_page(chapters_dir: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Write :func:`~bus_paper.book.pages.times_markdown` of ``chapters_dir`` to ``target``."""
    return atomic_write_text(target, times_markdown(chapters_dir))


def _cmd_run(args: argparse.Namespace) -> int:
    overrides = {k: parse_value(v) for k, v in (args.param or [])}
    t0 = time.time()
    if args.plan:
        try:
            rows = plan(args.profile, only=args.only, out=args.out, data_root=args.data_root,
                        overrides=overrides, notebooks_dir=args.notebooks,
                        update_book=args.update_book, force=args.force)
        except ValueError as err:
            print(f"bus-paper run: {err}", file=sys.stderr)
            return 2
        print(plan_markdown(rows), end="")
        return 0
    try:
        outcomes = run(args.profile, only=args.only, force=args.force, out=args.out,
                       data_root=args.data_root, overrides=overrides,
                       notebooks_dir=args.notebooks, update_book=args.update_book,
                       from_empty_cache=args.from_empty_cache)
    except KeyboardInterrupt:  # the chapter was left as it was (see execute)
        print("bus-paper run: interrupted", file=sys.stderr)
        return 130
    except ValueError as err:  # a request it cannot carry out (nothing was run)
        print(f"bus-paper run: {err}", file=sys.stderr)
        return 2
    bad = [o for o in outcomes if o.status == "failed"]
    out = chapters_dir(args.out, overrides, args.update_book)
    if outcomes and out.is_dir():
        # chapter times, model card, reproducibility page: from the results just written; the
        # prose of up-to-date chapters from their source notebooks (boxes.sync_prose)
        for path in pages.refresh(out.parent, out):
            print(f"refreshed {path}")
    print(f"{len(outcomes)} notebook(s), {sum(o.status == 'executed' for o in outcomes)} executed,"
          f" {len(bad)} failed, {time.time() - t0:.1f} s")
    if bad:
        print(f"bus-paper run: failed: {', '.join(o.notebook.stem for o in bad)}", file=sys.stderr)
    return 1 if bad else 0


def _cmd_book(args: argparse.Namespace) -> int:
    return build_book(args.chapters, args.out, strict=not args.no_strict)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("run", help="execute the chapter notebooks (skips up-to-date ones)",
                              description=run.__doc__)
    p.add_argument("--profile", default="cpu", choices=PROFILE_NAMES)
    p.add_argument("--only", nargs="+", metavar="NAME",
                   help="chapters to run: name (data) or stem (01_data)")
    p.add_argument("--force", action="store_true", help="re-execute even if up to date")
    p.add_argument("--out", help="folder for executed chapters (default: book/chapters)")
    p.add_argument("--data-root", help="data root (default: $BUS_PAPER_DATA, ./data, ...)")
    p.add_argument("--notebooks", help="source notebooks folder (default: notebooks/)")
    p.add_argument("-p", "--param", nargs=2, action="append", metavar=("KEY", "VALUE"),
                   help="extra notebook parameter (repeatable), as papermill -p; the outputs "
                   "then go to runs/chapters and runs/results (see --update-book)")
    p.add_argument("--update-book", action="store_true",
                   help="with -p: replace the book's chapters and results all the same")
    p.add_argument("--plan", action="store_true",
                   help="execute nothing: say which chapters would run, why, which of their runs "
                   "are no longer cached, and the minutes that would take here")
    p.add_argument("--from-empty-cache", action="store_true",
                   help="time the whole book from empty runs/ and data caches (refused "
                   "otherwise): every chapter re-executed, the time written to "
                   "book/results/reproducibility/empty_cache.json")
    p.set_defaults(func=_cmd_run)

    b = subparsers.add_parser("book", help="build the HTML book from the executed chapters",
                              description=build_book.__doc__)
    b.add_argument("--chapters", help="executed chapters (default: book/chapters)")
    b.add_argument("--out", help="output folder; HTML in <out>/_build/html (default: book)")
    b.add_argument("--no-strict", action="store_true",
                   help="do not treat warnings as errors (drafts only)")
    b.set_defaults(func=_cmd_book)

    pages.register(subparsers)
