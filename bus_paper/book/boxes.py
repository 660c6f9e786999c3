"""The executed chapters' own generated parts: the *rerun* box under each chapter's title (the
``bus-paper run --only NAME`` command, the equivalent ``papermill`` command with the notebook's
own parameters and the values this run used, and a download link to the executed ``.ipynb``),
code cells hidden behind a toggle, and the chapters' run records (times, provenance).

A chapter whose source notebook's code has changed since it was executed (its code cells differ
from the executed chapter's) also gets a visible warning above the box: its words, tables and
figures come from the earlier version until ``bus-paper run`` executes it again. Package changes
alone do not raise it (every commit changes the package; the runner re-executes for those). A
change of prose only (Markdown, figure and table captions) needs no re-run: :func:`sync_prose`
carries it into the executed chapter, keeping its outputs, whenever the boxes are refreshed."""

from __future__ import annotations

import ast
import copy
import hashlib
import json
import os
import re
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nbformat

from ..core.runs import run_finished, training_seconds
from ..paths import project_root
from ..provenance import atomic_write_text
from .format import md_table, short_commit

RERUN_ID = "bus-paper-rerun"
HIDE_INPUT = "hide-input"   # jupyter-book: the code sits behind a "show" toggle, outputs stay
# Parameters that `bus-paper run` sets itself; the others are passed with -p.
RUN_PARAMETERS = ("profile", "data_root", "results_dir")
CHAPTER_STEM = re.compile(r"^(\d+)_(.+)$")   # 01_data: number, name


# ----------------------------------------------------------------------------- chapters
def chapter_records(chapters: Path) -> list[dict[str, Any]]:
    """``metadata.bus_paper`` of every executed chapter (book order), with ``stem``/``name``."""
    out = []
    for path in sorted(chapters.glob("*.ipynb")):
        m = CHAPTER_STEM.match(path.stem)
        meta = nbformat.read(path, as_version=4).metadata.get("bus_paper")
        if m and meta and meta.get("provenance"):
            out.append({**meta, "stem": path.stem, "name": m.group(2), "path": path})
    return out


def chapter_times(chapters_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Profile, commit, time and wall time of the last execution of every executed chapter, from
    :func:`chapter_records` (the table of the reproducibility page)."""
    return [{"chapter": r["stem"], "profile": r["provenance"].get("profile"),
             "commit": (r["provenance"].get("git") or {}).get("commit", "")[:12],
             "finished": r["provenance"].get("timestamp"),
             "minutes": r["provenance"].get("wall_s", 0) / 60}
            for r in chapter_records(Path(chapters_dir))]


def chapter_estimate(rec: Mapping[str, Any]) -> float | None:
    """Minutes one chapter would take from an empty cache by its last execution's own records:
    its wall time plus the training time of the runs it read from the cache (the runner's
    ``runs_used``); None for an execution from before that record."""
    used, wall = rec.get("runs_used"), (rec.get("provenance") or {}).get("wall_s")
    if not used or not isinstance(wall, (int, float)):
        return None
    return (wall + float(used.get("cached_training_s") or 0.0)) / 60


def estimate_here(rec: Mapping[str, Any], runs_root: str | os.PathLike) -> dict[str, Any] | None:
    """What re-executing a chapter would cost with the runs now under ``runs_root``, by its last
    execution's records (None for an execution from before the runner's ``runs_used``): the runs
    it used (``runs``), those no longer finished there (``missing``: they would be trained), and
    ``minutes``: its wall time less the training of the runs it trained then and finds now, plus
    the recorded training of the missing runs it had read from the cache (None when one of them
    records no time)."""
    used, wall = rec.get("runs_used"), (rec.get("provenance") or {}).get("wall_s")
    if not used or not isinstance(wall, (int, float)):
        return None
    root = Path(runs_root)
    cached, trained = used.get("cached") or {}, used.get("trained") or []
    gone = {d for d in [*cached, *trained] if not run_finished(root / d)}
    found_trained = [training_seconds(root / d) for d in trained if d not in gone]
    minutes: float | None = (max(0.0, wall - sum(t for t in found_trained if t is not None))
                             + sum(float("nan") if cached[d] is None else cached[d]
                                   for d in gone if d in cached)) / 60
    return {"runs": len(cached) + len(trained), "missing": len(gone),
            "minutes": None if minutes != minutes else minutes}   # NaN: an untimed run is missing


def book_estimate(recs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The whole book from an empty cache, estimated from the chapters' last executions: their
    wall times plus the recorded training time of every run some chapter read from the cache and
    none trained during its execution, each run counted once (chapters share encoders). An
    estimate from measured parts, not a measurement (``bus-paper run --from-empty-cache`` is);
    ``minutes`` is None until every chapter records its runs (``missing`` names the others)."""
    missing = [r["stem"] for r in recs if not r.get("runs_used")]
    cached: dict[str, float | None] = {}
    trained: set[str] = set()
    for r in recs:
        used = r.get("runs_used") or {}
        cached.update(used.get("cached") or {})
        trained.update(used.get("trained") or [])
    extra = [t for d, t in cached.items() if d not in trained]
    wall = sum((r.get("provenance") or {}).get("wall_s") or 0.0 for r in recs)
    return {"minutes": None if missing or not recs else
            (wall + sum(t for t in extra if t is not None)) / 60,
            "missing": missing, "runs": len(set(cached) | trained),
            "untimed": sum(t is None for t in extra)}


def times_markdown(chapters_dir: str | os.PathLike) -> str:
    """A Markdown table of :func:`chapter_times` (included by the reproducibility page)."""
    rows = chapter_times(chapters_dir)
    lines = ["| chapter | profile | finished (UTC) | commit | minutes |", "| --- | --- | --- | --- | ---: |"]
    lines += [f"| {r['chapter']} | {r['profile']} | {str(r['finished'])[:19]} | `{r['commit']}` | "
              f"{r['minutes']:.1f} |" for r in rows]
    lines.append(f"| **total** | | | | **{sum(r['minutes'] for r in rows):.1f}** |")
    return "\n".join(lines) + "\n"


INJECTED = "injected-parameters"   # papermill's tag on the cell of values it was run with


def code_cells(nb: nbformat.NotebookNode) -> list[dict[str, Any]]:
    """What a chapter's outputs depend on: the source and tags of its code cells, in order. In an
    executed copy, papermill's injected cell and the tags the book adds (:data:`HIDE_INPUT`) are
    left out, so an executed chapter and its source notebook compare equal when nothing ran
    differently. Prose (Markdown, raw cells) and cell metadata such as figure captions are not
    here: they change what a reader sees, not what a cell computes (as in jupyter-cache)."""
    return [{"source": c.source, "tags": sorted(t for t in c.get("metadata", {}).get("tags", [])
                                                if t != HIDE_INPUT)}
            for c in nb.cells
            if c.cell_type == "code" and INJECTED not in c.get("metadata", {}).get("tags", [])]


def notebook_digest(path: str | os.PathLike) -> str:
    """sha256 of :func:`code_cells` (``parameters`` is a tag): the notebook's part of the content
    hash. Outputs, prose, cell ids and metadata are left out: opening and saving a notebook in
    Jupyter, or rewording its text, must not force a re-run (:func:`sync_prose` carries new prose
    into the executed chapter)."""
    nb = nbformat.read(path, as_version=4)
    return hashlib.sha256(json.dumps(code_cells(nb), sort_keys=True).encode()).hexdigest()


def _source_of(meta: Mapping[str, Any], root: Path | None) -> Path | None:
    path = (root or project_root()) / "notebooks" / str(meta.get("source") or "")
    return path if meta.get("source") and path.is_file() else None


def source_changed(meta: Mapping[str, Any], root: Path | None = None,
                   nb: nbformat.NotebookNode | None = None,
                   source: nbformat.NotebookNode | None = None) -> bool:
    """Whether the code of the source notebook (``source`` when the caller has read it, else
    ``notebooks/<source>`` under ``root``) differs from the code this chapter was executed from
    (``nb``, the executed chapter, else its path in ``meta``); False when either side is unknown.
    Prose changes do not count: :func:`sync_prose` carries them over without a re-run."""
    if source is None:
        path = _source_of(meta, root)
        if path is None:
            return False
        source = nbformat.read(path, as_version=4)
    if nb is None:
        if not meta.get("path"):
            return False
        nb = nbformat.read(meta["path"], as_version=4)
    return code_cells(source) != code_cells(nb)


def _shown(cells: list) -> str:
    """What a reader sees of ``cells``: papermill's timing metadata (which it writes on every cell,
    Markdown too) and empty tag lists left out."""
    def meta(c):
        m = {k: v for k, v in c.get("metadata", {}).items() if k not in ("execution", "papermill")}
        return {k: v for k, v in m.items() if not (k == "tags" and not v)}
    return json.dumps([{"type": c.cell_type, "source": c.source, "metadata": meta(c),
                        "outputs": c.get("outputs")} for c in cells], sort_keys=True, default=str)


def sync_prose(nb: nbformat.NotebookNode, source: nbformat.NotebookNode) -> bool:
    """Carry the source notebook's prose into its executed chapter ``nb`` (in place): Markdown and
    raw cells, and the metadata of code cells (figure captions and names: ``mystnb``), keeping
    every output. Only when the code cells are the same (:func:`code_cells`); otherwise the
    outputs belong to other code, the chapter needs a re-run, and nothing is done. Papermill's
    injected cell stays after the parameters cell; the rerun box is dropped, for
    :func:`add_rerun_cell` to put back. True if ``nb`` changed."""
    if code_cells(source) != code_cells(nb):
        return False
    return _carry_prose(nb, source)


def _carry_prose(nb: nbformat.NotebookNode, source: nbformat.NotebookNode) -> bool:
    """:func:`sync_prose` once the caller knows the code cells are the same."""
    tags = lambda c: c.get("metadata", {}).get("tags", [])
    injected = [c for c in nb.cells if c.cell_type == "code" and INJECTED in tags(c)]
    executed = iter(c for c in nb.cells if c.cell_type == "code" and INJECTED not in tags(c))
    cells = []
    for src in source.cells:
        if src.cell_type != "code":
            cells.append(copy.deepcopy(src))
            continue
        cell = next(executed)
        meta = copy.deepcopy(dict(src.get("metadata", {})))
        meta.update({k: v for k, v in cell.get("metadata", {}).items()
                     if k in ("execution", "papermill")})   # what the run recorded
        if HIDE_INPUT in tags(cell):
            meta["tags"] = [*meta.get("tags", []), HIDE_INPUT]
        cell["metadata"] = nbformat.from_dict(meta)
        cells.append(cell)
        if "parameters" in tags(src):
            cells += injected
            injected = []
    cells = injected + cells          # papermill puts it first when there is no parameters cell
    before = [c for c in nb.cells if RERUN_ID not in (c.get("id"), *tags(c))]
    if _shown(cells) == _shown(before):
        return False
    nb.cells = cells
    return True


def uncaptioned_outputs(nb: nbformat.NotebookNode) -> list[str]:
    """The code cells of an executed chapter that show a figure or a table (a PNG, an HTML table)
    without a caption (cell metadata ``mystnb.figure.caption``, numbered by the book), each as its
    first line: the book numbers and captions every figure and table."""
    out = []
    for c in nb.cells:
        if c.cell_type != "code" or (c.get("metadata", {}).get("mystnb", {})
                                     .get("figure", {}).get("caption")):
            continue
        shown = [o for o in c.get("outputs", []) if o.get("output_type") in
                 ("display_data", "execute_result")]
        if any("image/png" in o.get("data", {}) or "<table" in str(o.get("data", {}).get(
                "text/html", "")) for o in shown):
            out.append(c.source.strip().splitlines()[0] if c.source.strip() else "(empty cell)")
    return out


# what a reader should never see in an output: a Python repr; nor a missing value without a word
REPR = re.compile(r"<[\w.]+ (?:object )?at 0x[0-9a-f]+>|\b(?:Posix|Windows)Path\(|\bnp\.\w+\(")
MISSING = re.compile(r"<NA>|\bNaN\b|\bnan\b|\bNaT\b")


def reprs_shown(nb: nbformat.NotebookNode, missing: bool = True) -> list[str]:
    """The snippets of an executed chapter's outputs (tables, Markdown, printed text; not
    images, not stylesheets) that show a Python repr (:data:`REPR`) or, with ``missing``, a
    missing value without a word (:data:`MISSING`), each with a little context."""
    pattern = re.compile(f"{REPR.pattern}|{MISSING.pattern}") if missing else REPR
    found = []
    for c in nb.cells:
        for o in c.get("outputs", []) if c.cell_type == "code" else ():
            if o.get("output_type") == "stream":
                texts = [o.get("text", "")]
            elif "image/png" in o.get("data", {}):
                continue
            else:
                d = o.get("data", {})
                shown = d.get("text/html") or d.get("text/markdown") or d.get("text/plain") or ""
                texts = [re.sub(r"<style.*?</style>", "", "".join(shown), flags=re.S)]
            for text in texts:
                text = "".join(text)
                found += [text[max(0, m.start() - 40):m.end() + 20]
                          for m in pattern.finditer(text)]
    return found


def older_chapters(chapters: Path, root: Path | None = None) -> list[dict[str, Any]]:
    """The :func:`chapter_records` of the chapters executed from an earlier version of their
    source notebook (:func:`source_changed`), in book order."""
    return [r for r in chapter_records(chapters) if source_changed(r, root)]


def _cli_text(value: Any) -> str:
    """A parameter value as papermill's ``-p`` takes it (lists as JSON text, as the notebooks
    parse them with ``as_list``)."""
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return "None" if value is None else str(value)


def _default_value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # an expression: shown as written


# what `bus-paper run --from-empty-cache` writes, under the book's results folder
EMPTY_CACHE = Path("reproducibility") / "empty_cache.json"


def empty_cache_cost(results: Path | None, stem: str) -> dict[str, Any] | None:
    """This chapter's minutes in the book's last run from an empty cache (``bus-paper run
    --from-empty-cache``: ``results/reproducibility/empty_cache.json``), with the whole book's
    minutes, the profile, date and commit; None when it was not measured or not executed there."""
    path = results / EMPTY_CACHE if results else None
    if path is None or not path.is_file():
        return None
    try:
        r = json.loads(path.read_text())
        mine = next(c for c in r["chapters"] if c["chapter"] == stem and c["status"] == "executed")
        return {"minutes": float(mine["minutes"]), "book_minutes": float(r["minutes"]),
                "profile": r.get("profile"), "started": str(r.get("started") or "")[:10],
                "commit": short_commit(r.get("git")), "complete": bool(r.get("complete"))}
    except (ValueError, KeyError, TypeError, StopIteration):   # another shape, or not there
        return None


def _estimate(meta: Mapping[str, Any], profile: str) -> str:
    """The box's sentence on the chapter's cost from an empty cache (:func:`chapter_estimate`,
    from the runner's ledger of the training runs it used); empty when not recorded."""
    total, used = chapter_estimate(meta), meta.get("runs_used") or {}
    if total is None or not used.get("runs"):
        return ""
    wall = meta["provenance"]["wall_s"]
    n, cached = int(used["runs"]), int(used["cached_runs"])
    if not cached:
        return (f"It trained all {n} training runs it uses in this execution, so from an empty "
                f"cache it takes about as long: {wall / 60:.1f} min at the `{profile}` profile.")
    train = float(used["cached_training_s"]) / 60
    untimed = int(used.get("untimed") or 0)
    return (f"From an empty cache it would take about **{total:.0f} minutes** at the "
            f"`{profile}` profile: this execution's {wall / 60:.1f} min plus {train:.1f} min, "
            f"the training time that the {cached} of its {n} training runs it read from the "
            "cache recorded when they were trained (on the hardware of that time"
            + (f"; {untimed} of them record none" if untimed else "") + ").")


def rerun_markdown(meta: Mapping[str, Any], stem: str,
                   declared: Mapping[str, Mapping[str, Any]], changed: bool = False,
                   cost: Mapping[str, Any] | None = None) -> str:
    """The rerun box of one chapter (see the module docstring); ``changed``: the source notebook
    changed since this execution (:func:`source_changed`), which a warning above the box says;
    ``cost``: its :func:`empty_cache_cost`, said in the box."""
    m = CHAPTER_STEM.match(stem)
    name = m.group(2) if m else stem
    used = dict(meta.get("parameters") or {})
    prov = meta.get("provenance") or {}
    source = f"notebooks/{meta.get('source') or stem + '.ipynb'}"
    profile = used.get("profile", prov.get("profile", "cpu"))
    values = {k: used[k] if k in used else _default_value(str(p.get("default")))
              for k, p in declared.items()}
    extra = [f" -p {k} {shlex.quote(_cli_text(v))}" for k, v in used.items()
             if k not in RUN_PARAMETERS]
    # with -p, `bus-paper run` writes to runs/ unless told to replace the book's chapter
    run_cmd = f"bus-paper run --only {name} --profile {profile}" + "".join(extra) + (
        " --update-book" if extra else "")
    pm_lines = [f"papermill {source} {stem}.out.ipynb"]
    pm_lines += [f"  -p {k} {shlex.quote(_cli_text(v))}" for k, v in values.items()
                 if k != "results_dir"]
    rows_ = [(f"`{k}`", f"`{_cli_text(v)}`", (declared[k].get("help") or "").strip())
             for k, v in values.items()]
    when = str(prov.get("timestamp") or "")[:16].replace("T", " ")
    wall = prov.get("wall_s")
    ran = (f"at the `{profile}` profile, commit {short_commit(prov.get('git'))}, finished {when} "
           f"UTC after {wall / 60:.1f} min" if isinstance(wall, (int, float)) else
           f"at the `{profile}` profile")
    stale = [
        ":::{admonition} Executed from an earlier version of this chapter",
        ":class: warning",
        "",
        (f"This page was executed at commit {short_commit(prov.get('git'))} ({when} UTC). "
         f"Its notebook (`{source}`) has changed since, so the words, tables and figures below come "
         f"from the earlier version; `bus-paper run --only {name} --profile {profile}` brings "
         "them up to date (it needs the chapter's training runs, or the time to redo them)."),
        ":::",
        "",
    ] if changed else []
    return "\n".join([
        *stale,
        ":::{admonition} Download or re-run this chapter",
        ":class: dropdown tip",
        "",
        (f"This page is `{source}` executed by `bus-paper run` {ran}. "
         f"Download it: {{download}}`{stem}.ipynb <{stem}.ipynb>` (outputs included), or use "
         "the download button at the top of the page."),
        "",
        *([(f"From an empty cache it took **{cost['minutes']:.1f} minutes** at the "
             f"`{cost['profile']}` profile, of the whole book's {cost['book_minutes']:.1f} "
             f"(`bus-paper run --from-empty-cache`, {cost['started']}, commit {cost['commit']}; "
             "runs it shares with earlier chapters were trained by then)."), ""]
          if cost else [estimate, ""] if (estimate := _estimate(meta, profile)) else []),
        ("Re-run it with the book's pipeline (skipped when nothing it depends on changed; "
         f"results go to `book/results/{name}/`):"),
        "",
        "```bash",
        run_cmd,
        "```",
        "",
        ("or with papermill, from the repository root (results go to "
         f"`runs/notebook-results/{name}/` unless `results_dir` is given):"),
        "",
        "```bash",
        " \\\n".join(pm_lines),
        "```",
        "",
        md_table(["parameter", "value in this run", "meaning"], rows_),
        ":::",
    ])


def declared_parameters(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """The notebook's parameters cell, as papermill reads it: name -> default, help."""
    import papermill as pm
    return dict(pm.inspect_notebook(str(path)))


def add_rerun_cell(nb: nbformat.NotebookNode, stem: str,
                   declared: Mapping[str, Mapping[str, Any]], root: Path | None = None,
                   results: Path | None = None, changed: bool | None = None) -> None:
    """Put (or replace) the rerun box under the chapter's title cell, with the warning when the
    source notebook under ``root`` (default: the project's) has changed since, and the chapter's
    cost from an empty cache when ``results`` (the book's results folder) records one. Outputs,
    the content hash (of the *source* notebook) and the provenance are untouched. ``changed``:
    whether the source's code differs, when the caller has already compared
    (:func:`source_changed` otherwise)."""
    meta = nb.metadata.get("bus_paper")
    if not meta:
        return
    if changed is None:
        changed = source_changed(meta, root, nb)
    cells = [c for c in nb.cells if c.get("id") != RERUN_ID
             and RERUN_ID not in c.get("metadata", {}).get("tags", [])]
    cell = nbformat.v4.new_markdown_cell(rerun_markdown(meta, stem, declared, changed,
                                                        empty_cache_cost(results, stem)),
                                         metadata={"tags": [RERUN_ID]})
    if nb.get("nbformat_minor", 0) >= 5:
        cell["id"] = RERUN_ID
    else:
        cell.pop("id", None)
    first = cells[0] if cells else None
    at = 1 if first is not None and first.cell_type == "markdown" \
        and first.source.lstrip().startswith("# ") else 0
    cells.insert(at, cell)
    nb.cells = cells


def hide_code(nb: nbformat.NotebookNode) -> None:
    """Readers see a chapter's tables, figures and prose; its code is one click away. Tagged in
    the executed copy only, so the source notebook (and its content hash) stays as it is."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            tags = cell.setdefault("metadata", {}).setdefault("tags", [])
            if HIDE_INPUT not in tags:
                tags.append(HIDE_INPUT)


def refresh_chapter(path: Path, check: bool = False, root: Path | None = None) -> bool:
    """Refresh one executed chapter in place: its prose from the source notebook under ``root``
    when only prose changed (:func:`sync_prose`), its rerun box, its code cells hidden; True if
    it changed."""
    text = path.read_text()
    nb = nbformat.reads(text, as_version=4)
    meta = nb.metadata.get("bus_paper")
    if not meta:
        return False
    source = _source_of(meta, root)
    src = None if source is None else nbformat.read(source, as_version=4)   # read once
    changed = src is not None and source_changed(meta, root, nb, src)      # compared once
    if src is not None and not changed:
        _carry_prose(nb, src)
    add_rerun_cell(nb, path.stem, declared_parameters(path), root,
                   results=path.parent.parent / "results", changed=changed)
    hide_code(nb)
    new = nbformat.writes(nb) + "\n"
    if new == text:
        return False
    if not check:
        atomic_write_text(path, new)
    return True
