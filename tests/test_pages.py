"""The generated parts of the book (bus_paper.book.pages): rerun boxes, model card, reproducibility page."""

import json
import shutil
from pathlib import Path

import nbformat
import pytest

from bus_paper.book import pages
from bus_paper.book import runner as pipeline

ROOT = pipeline.project_root()
BOOK = ROOT / "book"

PARAMS = ('profile = "cpu"                 # smoke | cpu | gpu\n'
          'data_root = None                # None: the default root\n'
          'results_dir = None              # None: runs/notebook-results/table1\n'
          'seeds = None                    # fine-tuning seeds\n'
          'datasets = ["udiat", "busi"]    # the order of the paper\n')


def executed_chapter(path: Path, params: str = PARAMS, **meta) -> Path:
    """What `bus-paper run` writes: title cell, parameters, injected parameters, outputs, and
    the bus_paper metadata."""
    nb = nbformat.v4.new_notebook()
    p = nbformat.v4.new_code_cell(params, metadata={"tags": ["parameters"]})
    inj = nbformat.v4.new_code_cell('profile = "cpu"\n', metadata={"tags": ["injected-parameters"]})
    out = nbformat.v4.new_code_cell("print(1)", outputs=[
        nbformat.v4.new_output("stream", name="stdout", text="1\n")])
    nb.cells = [nbformat.v4.new_markdown_cell("# Table 1\n\nIntro."), p, inj, out]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.metadata["bus_paper"] = {
        "hash": "h", "source": path.name,
        "parameters": {"profile": "cpu", "data_root": "../shared/data",
                       "results_dir": "book/results/table1", **meta.pop("extra", {})},
        **({"runs_used": meta.pop("runs_used")} if "runs_used" in meta else {}),
        "provenance": {"profile": "cpu", "seed": None, "wall_s": 150.0,
                       "timestamp": "2026-01-01T10:00:00+00:00",
                       "git": {"commit": "abcdef1234567890", "dirty": False}, **meta}}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


# ----------------------------------------------------------------------------- rerun boxes
def test_rerun_box_has_the_notebooks_parameters_and_commands(tmp_path):
    path = executed_chapter(tmp_path / "04_table1.ipynb", extra={"seeds": "[3, 4]"})
    before = nbformat.read(path, as_version=4)
    assert pages.refresh_chapter(path) is True
    nb = nbformat.read(path, as_version=4)
    box = nb.cells[1]
    assert box.cell_type == "markdown" and box.id == pages.RERUN_ID
    text = box.source
    assert "bus-paper run --only table1 --profile cpu -p seeds '[3, 4]' --update-book" in text
    assert "papermill notebooks/04_table1.ipynb 04_table1.out.ipynb" in text
    # every declared parameter, with the value this run used (else the notebook's default)
    assert "-p profile cpu" in text and "-p data_root ../shared/data" in text
    assert "-p datasets '[\"udiat\", \"busi\"]'" in text and "-p seeds '[3, 4]'" in text
    assert "-p results_dir" not in text  # a manual run must not overwrite the book's results
    assert "| `datasets` | `[\"udiat\", \"busi\"]` | the order of the paper |" in text
    assert "{download}`04_table1.ipynb <04_table1.ipynb>`" in text
    assert "`abcdef123456`" in text and "2.5 min" in text
    # nothing else moved: the title stays first, outputs and metadata are as they were
    assert nb.cells[0].source.startswith("# Table 1")
    assert [c.source for c in nb.cells[2:]] == [c.source for c in before.cells[1:]]
    assert nb.cells[-1].outputs == before.cells[-1].outputs
    assert nb.metadata == before.metadata
    # readers see outputs; every code cell sits behind a toggle (in the executed copy only)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(pages.HIDE_INPUT in c.metadata["tags"] for c in code)
    # idempotent, and refreshed in place rather than added twice
    assert pages.refresh_chapter(path) is False
    nb.metadata["bus_paper"]["provenance"]["git"]["commit"] = "0123456789abcdef"
    nbformat.write(nb, path)
    assert pages.refresh_chapter(path, check=True) is True
    assert "`0123456789ab`" not in nbformat.read(path, as_version=4).cells[1].source  # check
    assert pages.refresh_chapter(path) is True
    cells = nbformat.read(path, as_version=4).cells
    assert sum(c.get("id") == pages.RERUN_ID for c in cells) == 1
    assert "`0123456789ab`" in cells[1].source


def test_rerun_box_skips_notebooks_that_the_pipeline_did_not_write(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# stub")]
    nbformat.write(nb, tmp_path / "01_stub.ipynb")
    assert pages.refresh_chapter(tmp_path / "01_stub.ipynb") is False


def test_rerun_box_on_a_committed_chapter_leaves_its_hash_and_outputs(tmp_path):
    src = BOOK / "chapters" / "09_claims.ipynb"
    if not src.exists():
        pytest.skip("no executed chapters in this checkout")
    path = shutil.copy(src, tmp_path / src.name)
    before = nbformat.read(path, as_version=4)
    pages.refresh_chapter(Path(path))
    nb = nbformat.read(path, as_version=4)
    box = next(c for c in nb.cells if c.get("id") == pages.RERUN_ID)
    declared = pages.declared_parameters(ROOT / "notebooks" / "09_claims.ipynb")
    for name in declared:
        assert f"`{name}`" in box.source
    assert "bus-paper run --only claims --profile cpu" in box.source
    assert nb.metadata["bus_paper"] == before.metadata["bus_paper"]
    assert pipeline.executed_meta(Path(path))["hash"] == before.metadata["bus_paper"]["hash"]
    rest = [c for c in nb.cells if c.get("id") != pages.RERUN_ID]
    old = [c for c in before.cells if c.get("id") != pages.RERUN_ID]
    assert [(c.source, c.get("outputs")) for c in rest] == [(c.source, c.get("outputs"))
                                                            for c in old]


def test_executed_chapters_get_the_box_at_write_time(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "code_digest", lambda **_: "code v1")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# Tiny"),
                nbformat.v4.new_code_cell('profile = "cpu"  # the profile\ndata_root = None\n'
                                          "results_dir = None\nseed = 0  # a seed\n",
                                          metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("print(seed)")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    (tmp_path / "nb").mkdir()
    nbformat.write(nb, tmp_path / "nb" / "01_tiny.ipynb")
    kw = {"notebooks_dir": tmp_path / "nb", "out": tmp_path / "book" / "chapters"}
    (tmp_path / "book").mkdir()
    (tmp_path / "book" / "reproducibility.md").write_text(
        "# R\n\n<!-- bus-paper:begin runs -->\n<!-- bus-paper:end runs -->\n")
    from bus_paper.cli import main
    assert main(["run", "--profile", "smoke", "--notebooks", str(kw["notebooks_dir"]),
                 "--out", str(kw["out"])]) == 0
    # after executing, `bus-paper run` refreshed the pages beside the chapters
    text = (tmp_path / "book" / "reproducibility.md").read_text()
    assert "| 01_tiny | `" in text and "1 chapters, all at profile `smoke`" in text
    assert "| 01_tiny | smoke |" in (tmp_path / "book" / "chapter_times.md").read_text()
    chapter = tmp_path / "book" / "chapters" / "01_tiny.ipynb"
    cells = nbformat.read(chapter, as_version=4).cells
    assert cells[1].get("id") == pages.RERUN_ID
    assert "bus-paper run --only tiny --profile smoke" in cells[1].source
    assert "-p seed 0" in cells[1].source and "| `seed` | `0` | a seed |" in cells[1].source
    assert all(pages.HIDE_INPUT in c.metadata["tags"] for c in cells if c.cell_type == "code")
    assert pages.refresh_chapter(chapter) is False  # what run wrote is what refresh writes
    # the box is not part of the content hash: the chapter stays up to date
    assert [o.status for o in pipeline.run("smoke", **kw)] == ["up to date"]


# ----------------------------------------------------------------------------- blocks
def test_fill_blocks_rewrites_only_the_generated_parts():
    text = ("# Page\n\nProse.\n\n<!-- bus-paper:begin a -->\nold\n<!-- bus-paper:end a -->\n\n"
            "More prose.\n<!-- bus-paper:begin b -->\n<!-- bus-paper:end b -->\n")
    new = pages.fill_blocks(text, {"a": "| x |\n| --- |\n| 1 |\n", "b": "B", "unused": "-"})
    assert new == ("# Page\n\nProse.\n\n<!-- bus-paper:begin a -->\n| x |\n| --- |\n| 1 |\n"
                   "<!-- bus-paper:end a -->\n\nMore prose.\n<!-- bus-paper:begin b -->\nB\n"
                   "<!-- bus-paper:end b -->\n")
    assert pages.fill_blocks(new, {"a": "| x |\n| --- |\n| 1 |\n", "b": "B"}) == new
    with pytest.raises(ValueError, match="no generator for block"):
        pages.fill_blocks(text, {"a": ""})


def _results_copy(tmp_path: Path) -> Path:
    if not (BOOK / "results" / "finetuning" / "metrics.json").exists():
        pytest.skip("no committed results in this checkout")
    book = tmp_path / "book"
    shutil.copytree(BOOK / "results", book / "results")
    return book


def test_model_card_numbers_are_the_result_files(tmp_path):
    book = _results_copy(tmp_path)
    blocks = pages.model_card_blocks(book, BOOK / "chapters")
    metrics = pages.table(book / "results", "finetuning", "metrics")
    auc = next(r for r in metrics if r["dataset"] == "busi" and r["metric"] == "auc")
    assert pages.ci(auc["measured"], auc["ci_low"], auc["ci_high"]) in blocks["within_site"]
    for r in pages.table(book / "results", "table1", "metrics"):
        assert f"| {r['label']} |" in blocks["within_site"]
    counts = pages.table(book / "results", "data", "counts")
    assert all(f"| {c['dataset']} |" in blocks["data"] for c in counts)
    assert "CC BY 4.0" in blocks["data"] and "Known problems" in blocks["data"]
    assert "malignant test images called benign" in blocks["failure_modes"]
    assert "empty heatmap" in blocks["failure_modes"]
    if (book / "results" / "generalisation" / "cross_site.json").exists():
        for r in pages.table(book / "results", "generalisation", "cross_site"):
            assert pages.ci(r["auc"], r["auc_lo"], r["auc_hi"]) in blocks["cross_site"]
        for r in pages.table(book / "results", "generalisation", "calibration_summary"):
            assert f"| {r['row']} | {r['where']} | {pages.num(r['ece_before'])} |" \
                in blocks["calibration"]
    shutil.rmtree(book / "results" / "generalisation", ignore_errors=True)
    gone = pages.model_card_blocks(book, BOOK / "chapters")
    assert "Not yet measured" in gone["cross_site"]
    assert "Not yet measured" in gone["calibration"]
    assert "bus-paper run --profile cpu --only data pretraining finetuning table1 heatmaps" \
        in blocks["reproduce"]
    assert "{doc}`reproducibility`" in blocks["reproduce"]

    # a chapter that has not run: that block says so, the others are unaffected
    shutil.rmtree(book / "results" / "heatmaps")
    again = pages.model_card_blocks(book, BOOK / "chapters")
    assert again["within_site"] == blocks["within_site"]
    assert "called benign" in again["failure_modes"]
    assert "Where the heatmaps point" not in again["failure_modes"]
    assert "`heatmaps`: not run yet" in again["sources"]


def test_model_card_shows_generalisation_results_once_they_exist(tmp_path):
    book = _results_copy(tmp_path)
    gen = book / "results" / "generalisation"
    shutil.rmtree(gen, ignore_errors=True)      # the committed chapter's files: replaced below
    gen.mkdir()
    prov = {"profile": "cpu", "git": {"commit": "feedbeef00000000", "dirty": False},
            "timestamp": "2026-02-01T00:00:00+00:00"}
    (gen / "cross_site.json").write_text(json.dumps({
        "columns": ["row", "train", "test", "auc", "auc_lo", "auc_hi"],
        "rows": [["proposed", "busi", "busi", 81.0, 74.0, 88.0],
                 ["proposed", "busi", "udiat", 61.25, 50.0, 72.5]], "provenance": prov}))
    (gen / "pooled_view.json").write_text(json.dumps({
        "columns": ["tested on", "own site", "other single sites (mean)", "pooled others",
                    "pooled − own site", "95% CI low", "95% CI high"],
        "rows": [["udiat", 80.0, 60.0, 70.0, -10.0, -20.0, 0.5]], "provenance": prov}))
    (gen / "calibration_summary.json").write_text(json.dumps({
        "columns": ["row", "where", "ece_before", "ece_after", "temperature"],
        "rows": [["proposed", "across sites", 12.5, 4.12, 1.7]], "provenance": prov}))
    (gen / "verdict.json").write_text(json.dumps({
        "lines": ["- transfers poorly", "- Calibration, proposed: ECE 3 %"], "provenance": prov}))
    (gen / "provenance.json").write_text(json.dumps({"chapter": "generalisation",
                                                    "provenance": prov}))
    blocks = pages.model_card_blocks(book, BOOK / "chapters")
    cross = blocks["cross_site"]
    assert "| fine-tuned on | busi | udiat |" in cross
    assert "| busi | 81.0 (74.0–88.0) | 61.2 (50.0–72.5) |" in cross
    assert "| udiat | 80.0 | 60.0 | 70.0 | -10.0 (-20.0–0.5) |" in cross
    assert "- transfers poorly" in cross and "ECE 3 %" not in cross
    cal = blocks["calibration"]
    assert "| proposed | across sites | 12.5 | 4.1 | 1.7 |" in cal and "ECE 3 %" in cal
    assert "Not yet measured" not in cal and "transfers poorly" not in cal
    assert "`book/results/generalisation/`" in blocks["sources"]
    assert "generalisation" in blocks["reproduce"]


def test_reproducibility_page_names_each_distinct_machine_and_data_state(tmp_path):
    chapters = tmp_path / "book" / "chapters"
    hw = {"cpu": "AMD EPYC", "cores": 2, "cores_usable": 2, "cuda": None, "torch": "2.5"}
    gpu = {**hw, "cuda": {"device": "NVIDIA H100", "count": 1, "version": "12.4"}}
    executed_chapter(chapters / "01_data.ipynb", hardware=hw, data_checksums={"busi": "a" * 64},
                     packages={"torch": "2.5"})
    executed_chapter(chapters / "02_table1.ipynb", hardware=gpu,
                     data_checksums={"busi": "a" * 64}, packages={"torch": "2.5"})
    executed_chapter(chapters / "03_claims.ipynb", hardware=hw, data_checksums={"busi": "b" * 64},
                     packages={"torch": "2.6"})
    results = tmp_path / "book" / "results" / "table1"
    results.mkdir(parents=True)
    (results / "provenance.json").write_text(json.dumps({"seeds": [0, 1, 2],
                                                         "provenance": {"seed": 0}}))
    b = pages.reproducibility_blocks(tmp_path / "book", chapters)
    # one profile: said once under the table (a column fewer, so the table fits the page)
    assert "| 01_data | `abcdef123456` | – | D1 | H1 | P1 | 2.5 | – | 2026-01-01 10:00 | 0 |" in b["runs"]
    assert "| 02_table1 | `abcdef123456` | 0, 1, 2 | D1 | H2 | P1 |" in b["runs"]
    assert "| 03_claims | `abcdef123456` | – | D2 | H1 | P2 |" in b["runs"]
    assert "3 chapters, all at profile `cpu`" in b["runs"]
    assert f"| busi | `{'a' * 64}` | `{'b' * 64}` |" in b["data_checksums"]
    assert "| GPU | none | 1 x NVIDIA H100 (CUDA 12.4) |" in b["hardware"]
    assert "| torch | 2.5 | 2.6 |" in b["packages"]
    assert "7.5 minutes" in b["runs"]
    # chapters run at different profiles: each row names its own
    executed_chapter(chapters / "04_smoke.ipynb", profile="smoke")
    mixed = pages.reproducibility_blocks(tmp_path / "book", chapters)["runs"]
    assert "| 01_data | cpu | `abcdef123456` |" in mixed and "| 04_smoke | smoke |" in mixed
    assert "all at profile" not in mixed


def test_the_empty_cache_cost_is_estimated_from_the_runs_each_chapter_used(tmp_path):
    """Each chapter: its wall time plus what the runs it read from the cache took to train; the
    book: every run counted once, and not at all where a chapter's own wall time holds it."""
    chapters = tmp_path / "book" / "chapters"
    enc, ft = "pretrain/enc", "finetune/ft"
    # chapter 01 trains the encoder (its 2.5 min hold it); 02 and 03 read it, and 03 reads the
    # fine-tuning that took 10 min, cached from a session before
    executed_chapter(chapters / "01_pretraining.ipynb", runs_used={
        "runs": 1, "cached_runs": 0, "cached_training_s": 0.0, "untimed": 0, "cached": {},
        "trained": [enc]})
    executed_chapter(chapters / "02_finetuning.ipynb", runs_used={
        "runs": 1, "cached_runs": 1, "cached_training_s": 1200.0, "untimed": 0,
        "cached": {enc: 1200.0}, "trained": []})
    executed_chapter(chapters / "03_table1.ipynb", runs_used={
        "runs": 2, "cached_runs": 2, "cached_training_s": 1800.0, "untimed": 0,
        "cached": {enc: 1200.0, ft: 600.0}, "trained": []})
    recs = pages.chapter_records(chapters)
    assert [pages.chapter_estimate(r) for r in recs] == [2.5, 22.5, 32.5]
    est = pages.book_estimate(recs)
    assert est["minutes"] == pytest.approx(3 * 2.5 + 10.0) and est["runs"] == 2
    runs = pages.reproducibility_blocks(tmp_path / "book", chapters)["runs"]
    assert "| 03_table1 | `abcdef123456` | – | D1 | H1 | P1 | 2.5 | 32 |" in runs
    assert "about **18 minutes**" in runs and "each of the 2 training runs counted once" in runs
    # a chapter executed before the ledger: no book estimate, and it is named
    executed_chapter(chapters / "04_claims.ipynb")
    recs = pages.chapter_records(chapters)
    assert pages.book_estimate(recs)["minutes"] is None
    runs = pages.reproducibility_blocks(tmp_path / "book", chapters)["runs"]
    assert "1 of 4 have not (04_claims)" in runs and "| 04_claims | `abcdef123456` |" in runs


def test_the_cost_here_counts_only_the_runs_no_longer_cached(tmp_path):
    """`bus-paper run --plan`'s minutes: the last wall time, less the training of runs trained
    then and still cached, plus the recorded training of cached runs that are gone."""
    from bus_paper.book.boxes import estimate_here
    root = tmp_path / "runs"
    for d, seconds in [("finetune/a", None), ("finetune/c", 30.0)]:
        (root / d).mkdir(parents=True)
        if seconds is None:
            (root / d / "done.json").write_text("{}")
        else:
            (root / d / "result.json").write_text(json.dumps({"seconds": seconds}))
    rec = {"provenance": {"wall_s": 120.0},
           "runs_used": {"cached": {"finetune/a": 60.0, "finetune/b": 240.0}, "trained": ["finetune/c"]}}
    # b is gone (4 min to train again); c, trained in the 2 min of wall time, is still there
    assert estimate_here(rec, root) == {"runs": 3, "missing": 1, "minutes": pytest.approx(1.5 + 4)}
    shutil.rmtree(root / "finetune" / "c")      # gone too: the wall time holds its training
    assert estimate_here(rec, root)["minutes"] == pytest.approx(2 + 4)
    rec["runs_used"]["cached"]["finetune/b"] = None  # a missing run with no recorded time
    assert estimate_here(rec, root)["minutes"] is None
    assert estimate_here({"provenance": {"wall_s": 1.0}}, root) is None   # before the ledger


def test_refresh_fills_pages_present_and_skips_absent_ones(tmp_path):
    book = tmp_path / "book"
    executed_chapter(book / "chapters" / "01_data.ipynb", hardware={"cpu": "x"})
    (book / "reproducibility.md").write_text(
        "# R\n\n<!-- bus-paper:begin runs -->\n<!-- bus-paper:end runs -->\n")
    changed = pages.refresh(book)
    assert sorted(p.name for p in changed) == ["01_data.ipynb", "chapter_times.md",
                                               "reproducibility.md"]
    assert "| 01_data | `abcdef123456` |" in (book / "reproducibility.md").read_text()
    assert not (book / "model_card.md").exists()
    assert pages.refresh(book) == [] and pages.refresh(book, check=True) == []


def test_committed_generated_pages_match_the_committed_results():
    """The model card and the reproducibility page (as committed) are what the generator makes
    from the committed results and chapters: run `bus-paper pages` after changing either.
    (The chapters' rerun boxes are refreshed by `bus-paper run` and at every build.)"""
    if not (BOOK / "chapters").is_dir():
        pytest.skip("no executed chapters in this checkout")
    stale = pages.refresh(BOOK, check=True, boxes=False)
    assert stale == [], f"stale generated pages {stale}: run `bus-paper pages` and commit"


def test_pages_cli_check_mode(tmp_path, capsys):
    from bus_paper.cli import main
    book = tmp_path / "book"
    executed_chapter(book / "chapters" / "01_data.ipynb", hardware={"cpu": "x"})
    assert main(["pages", "--book", str(book), "--check"]) == 1
    assert "stale" in capsys.readouterr().out
    assert main(["pages", "--book", str(book)]) == 0
    assert main(["pages", "--book", str(book), "--check"]) == 0


def test_readable_tables_have_no_row_numbers_na_or_snake_case():
    """What a chapter displays (chapter.readable): row labels, words, "–" and yes / no; the
    saved table is untouched."""
    import doctest

    import pandas as pd

    from bus_paper.book import chapter as chapter_module
    t = pd.DataFrame({"dataset": ["busi", "udiat"], "counts_match": [True, False],
                      "published_patients": pd.array([pd.NA, 38], dtype="Int64")})
    shown = chapter_module.readable(t, "dataset")
    assert list(shown.index) == ["busi", "udiat"] and shown.index.name == "dataset"
    assert list(shown.columns) == ["counts match", "published patients"]
    assert shown.loc["busi"].tolist() == ["yes", "–"] and shown.loc["udiat"].tolist() == ["no", 38]
    assert "<NA>" not in shown.to_html() and t["counts_match"].dtype == bool
    assert list(chapter_module.readable(t).index) == ["busi", "udiat"]   # numbered rows: 1st column
    assert doctest.testmod(chapter_module).failed == 0


def _executed_copy(source: nbformat.NotebookNode, path: Path, record: dict) -> nbformat.NotebookNode:
    """What the runner writes for ``source``: papermill's injected cell after the parameters cell,
    an output, the rerun box and the code cells' hide-input tags, with ``record`` as its
    ``metadata.bus_paper``."""
    from bus_paper.book import boxes
    nb = nbformat.from_dict(json.loads(json.dumps(source)))
    at = next((i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])), -1)
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell(
        "profile = 'cpu'", metadata={"tags": [boxes.INJECTED]}))
    for c in nb.cells:
        if c.cell_type == "code":
            c.outputs = [nbformat.v4.new_output("stream", name="stdout", text=c.source + "\n")]
    nb.metadata["bus_paper"] = record
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    boxes.add_rerun_cell(nb, path.stem, {}, path.parent)   # no source there: no warning
    boxes.hide_code(nb)
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return nb


def test_a_chapter_executed_from_an_older_notebook_says_so(tmp_path):
    """The warning above the rerun box: shown when the source notebook's code cells differ from
    those the chapter was executed from (compared with the executed chapter itself), not when only
    outputs, metadata or prose differ, not without a source."""
    from bus_paper.book import boxes
    source = tmp_path / "notebooks" / "04_table1.ipynb"
    source.parent.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# Table 1"),
                nbformat.v4.new_code_cell("seed = 0", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("x = 1")]
    nbformat.write(nb, source)
    chapters = tmp_path / "book" / "chapters"
    meta = {"source": source.name, "path": chapters / "04_table1.ipynb",
            "provenance": {"git": {"commit": "abcdef1234567890"}, "wall_s": 60.0,
                           "timestamp": "2026-01-01T10:00:00+00:00"}}
    _executed_copy(nb, meta["path"], {k: v for k, v in meta.items() if k != "path"})
    assert not boxes.source_changed(meta, tmp_path)
    nb.cells[2].outputs = [nbformat.v4.new_output("stream", name="stdout", text="1\n")]
    nb.metadata["anything"] = 1
    nb.cells[0].source = "# Table 1\n\nReworded."
    nb.cells[2].metadata["mystnb"] = {"figure": {"caption": "A caption."}}
    nbformat.write(nb, source)
    assert not boxes.source_changed(meta, tmp_path)   # outputs, metadata, prose do not count
    assert "earlier version" not in boxes.rerun_markdown(meta, "04_table1", {})
    nb.cells[2].source = "x = 2"
    nbformat.write(nb, source)
    assert boxes.source_changed(meta, tmp_path)
    nb.cells[2].source = "x = 1"
    nb.cells[1].metadata["tags"] = []                 # the parameters tag is part of the code
    nbformat.write(nb, source)
    assert boxes.source_changed(meta, tmp_path)
    assert boxes.source_changed(meta, source=nb)       # a source the caller has already read
    executed = nbformat.read(meta["path"], as_version=4)
    assert not boxes.source_changed(meta, nb=executed, source=executed)
    text = boxes.rerun_markdown(meta, "04_table1", {}, changed=True)
    assert text.startswith(":::{admonition} Executed from an earlier version of this chapter")
    assert "commit `abcdef123456` (2026-01-01 10:00 UTC)" in text
    assert "bus-paper run --only table1 --profile cpu" in text
    assert not boxes.source_changed({**meta, "source": "gone.ipynb"}, tmp_path)
    assert not boxes.source_changed({"source": source.name}, tmp_path)   # no executed chapter

    # the landing page and the model card list such chapters through one helper, in book order
    for stem, record in (("05_ablations", {**meta, "source": "gone.ipynb"}),
                         ("01_data", {"source": source.name})):
        executed = nbformat.v4.new_notebook(metadata={"bus_paper": {
            k: v for k, v in record.items() if k != "path"}})
        nbformat.write(executed, chapters / f"{stem}.ipynb")
    assert [r["stem"] for r in boxes.older_chapters(chapters, tmp_path)] == ["04_table1"]
    nb.cells[1].metadata["tags"] = ["parameters"]
    nbformat.write(nb, source)
    assert boxes.older_chapters(chapters, tmp_path) == []

    # the landing page's sentence, in the singular and the plural
    from bus_paper.book import pages
    for stems, start in ((["13_generalisation"], "1 chapter (13_generalisation) was executed "
                          "before its notebook"),
                         (["04_table1", "13_generalisation"], "2 chapters (04_table1, "
                          "13_generalisation) were executed before their notebooks")):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(pages, "older_chapters", lambda _c, s=stems: [{"stem": x} for x in s])
            line = pages._older_chapters(tmp_path / "book" / "results")[1]
        assert line.startswith(f"**Pages from an earlier version.** {start}"), line


def test_prose_reaches_the_executed_chapter_without_a_rerun(tmp_path):
    """A reworded paragraph, a new Markdown cell or a figure caption (cell metadata) in the source
    notebook is carried into the executed chapter by `bus-paper pages`, outputs kept; once the
    code differs, nothing is carried (the chapter needs a re-run and says so)."""
    from bus_paper.book import boxes
    source_path = tmp_path / "notebooks" / "04_table1.ipynb"
    source_path.parent.mkdir()
    src = nbformat.v4.new_notebook()
    src.cells = [nbformat.v4.new_markdown_cell("# Table 1\n\nOld words."),
                 nbformat.v4.new_code_cell("seed = 0", metadata={"tags": ["parameters"]}),
                 nbformat.v4.new_code_cell("plot()"),
                 nbformat.v4.new_markdown_cell("Old closing words.")]
    nbformat.write(src, source_path)
    chapter = tmp_path / "book" / "chapters" / "04_table1.ipynb"
    record = {"source": source_path.name, "provenance": {"git": {"commit": "abcdef1234567890"},
                                                         "wall_s": 60.0, "timestamp": "2026-01-01"}}
    _executed_copy(src, chapter, record)
    boxes.refresh_chapter(chapter, root=tmp_path)                      # the box, with parameters
    assert boxes.refresh_chapter(chapter, root=tmp_path) is False     # in step: nothing to do

    src.cells[0].source = "# Table 1\n\nNew words, see {numref}`fig-plot`."
    src.cells[2].metadata["mystnb"] = {"figure": {"caption": "The plot.", "name": "fig-plot"}}
    src.cells.insert(3, nbformat.v4.new_markdown_cell("A new paragraph."))
    del src.cells[4]
    nbformat.write(src, source_path)
    before = nbformat.read(chapter, as_version=4)
    assert boxes.refresh_chapter(chapter, check=True, root=tmp_path) is True
    assert nbformat.read(chapter, as_version=4) == before              # check writes nothing
    assert boxes.refresh_chapter(chapter, root=tmp_path) is True
    nb = nbformat.read(chapter, as_version=4)
    kinds = [(c.cell_type, c.get("id") == boxes.RERUN_ID,
              boxes.INJECTED in c.metadata.get("tags", [])) for c in nb.cells]
    assert kinds == [("markdown", False, False), ("markdown", True, False),      # title, box
                     ("code", False, False), ("code", False, True),             # parameters
                     ("code", False, False), ("markdown", False, False)]
    assert nb.cells[0].source.startswith("# Table 1\n\nNew words")
    assert nb.cells[-1].source == "A new paragraph."
    plot = nb.cells[4]
    assert plot.metadata["mystnb"]["figure"]["name"] == "fig-plot"
    assert boxes.HIDE_INPUT in plot.metadata["tags"]
    assert plot.outputs == before.cells[4].outputs and plot.outputs      # outputs kept
    assert nb.metadata == before.metadata
    assert "earlier version" not in nb.cells[1].source
    assert boxes.refresh_chapter(chapter, root=tmp_path) is False     # idempotent

    src.cells[2].source = "plot(2)"                                    # code: a re-run is due
    nbformat.write(src, source_path)
    assert boxes.refresh_chapter(chapter, root=tmp_path) is True      # the warning only
    nb2 = nbformat.read(chapter, as_version=4)
    assert "earlier version" in nb2.cells[1].source
    assert [c.source for c in nb2.cells[2:]] == [c.source for c in nb.cells[2:]]


def test_reprs_and_bare_missing_values_are_found_in_outputs():
    """What a reader must not see: a repr (a Styler's, a PosixPath, a numpy scalar) or NaN/<NA>
    in a table, printed text or Markdown; words such as 'finance' or 'NaNometre' are no match, and
    stylesheets and images are not read."""
    from bus_paper.book import boxes
    nb = nbformat.v4.new_notebook()
    good = nbformat.v4.new_code_cell("x")
    good.outputs = [nbformat.v4.new_output("display_data", data={
        "text/html": "<style>td.nan {}</style><table><td>finance</td><td>–</td></table>",
        "text/plain": "<Styler at 0x1>"}),
        nbformat.v4.new_output("display_data", data={"image/png": "nan", "text/plain": "<Figure>"})]
    nb.cells = [good]
    assert boxes.reprs_shown(nb) == []
    for shown in ("<pandas.io.formats.style.Styler at 0x7f2b9f75ac90>", "PosixPath('book/x.json')",
                  "group np.float64(1.0) spans", "<td>NaN</td>", "<td><NA></td>", "value nan"):
        bad = nbformat.v4.new_code_cell("y")
        bad.outputs = [nbformat.v4.new_output("execute_result", data={"text/plain": shown},
                                              execution_count=1)]
        nb.cells = [good, bad]
        assert len(boxes.reprs_shown(nb)) == 1, shown
        assert len(boxes.reprs_shown(nb, missing=False)) == ("at 0x" in shown or "(" in shown)
    printed = nbformat.v4.new_code_cell("print(p)")
    printed.outputs = [nbformat.v4.new_output("stream", name="stdout", text="PosixPath('a')\n")]
    nb.cells = [printed]
    assert [s.strip() for s in boxes.reprs_shown(nb)] == ["PosixPath('a')"]


def test_the_current_chapters_show_no_repr_nor_bare_missing_value():
    """Every committed chapter executed from its current notebook (the others show the earlier
    version's outputs until re-run; the landing page lists them) shows no repr and no bare NaN."""
    from bus_paper.book import boxes
    chapters = BOOK / "chapters"
    current = [r for r in boxes.chapter_records(chapters) if not boxes.source_changed(r)]
    if not current:
        pytest.skip("no executed chapters in this checkout")
    shown = {r["stem"]: boxes.reprs_shown(nbformat.read(r["path"], as_version=4)) for r in current}
    assert {k: v for k, v in shown.items() if v} == {}
