"""End to end: the smoke profile of every chapter on a phantom data root, then the HTML book.

Everything is written under tmp_path (chapters, results, caches, the built site); the repository's
book/_build is never touched.
"""

import json
import re

import nbformat
import pytest

from bus_paper.book import boxes
from bus_paper.book import runner as pipeline
from bus_paper.data.phantom import write_phantom_root

pytestmark = pytest.mark.slow


def test_smoke_pipeline_and_book(tmp_path, monkeypatch):
    monkeypatch.setenv("BUS_PAPER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("BUS_PAPER_RUNS", str(tmp_path / "runs"))
    repo_build = pipeline.project_root() / "book" / "_build"
    before = sorted(repo_build.rglob("*")) if repo_build.exists() else None
    root = write_phantom_root(tmp_path / "data")
    chapters = tmp_path / "book" / "chapters"

    # the whole smoke book from empty caches, timed as `bus-paper run --from-empty-cache` does
    outcomes = pipeline.run("smoke", out=chapters, data_root=root, from_empty_cache=True)
    assert outcomes and {o.status for o in outcomes} == {"executed"}, \
        [(o.notebook.stem, o.status, o.error) for o in outcomes]
    timed = json.loads((tmp_path / "book" / "results" / "reproducibility" /
                        "empty_cache.json").read_text())
    assert timed["complete"] and len(timed["chapters"]) == len(outcomes) == len(
        list(pipeline.discover(pipeline.project_root() / "notebooks")))
    assert timed["minutes"] >= sum(c["minutes"] for c in timed["chapters"]) > 0
    assert (tmp_path / "book" / "results" / "data" / "counts.json").exists()
    for o in outcomes:  # every sibling a chapter read is declared (its hash then covers it)
        read = nbformat.read(o.output, as_version=4).metadata["bus_paper"]["reads"]
        assert set(read) <= set(pipeline.READS.get(o.notebook.name, ())), (o.notebook.stem, read)
        assert "WARNING" not in o.note, o.note
        # every figure and table is captioned (and so numbered)
        executed = nbformat.read(o.output, as_version=4)
        assert not boxes.uncaptioned_outputs(executed), \
            (o.notebook.stem, boxes.uncaptioned_outputs(executed))
        # and no output shows a Python repr or a bare NaN (the phantoms' one-class models leave
        # metrics undefined: they must read as a dash)
        assert not boxes.reprs_shown(executed), (o.notebook.stem, boxes.reprs_shown(executed))
    assert {o.status for o in pipeline.run("smoke", out=chapters, data_root=root)} == {"up to date"}

    assert pipeline.build_book(chapters, out=tmp_path / "site") == 0
    html = tmp_path / "site" / "_build" / "html"
    assert (html / "index.html").exists() and (html / "book" / "intro.html").exists()
    for o in outcomes:
        page = (html / "book" / "chapters" / f"{o.notebook.stem}.html").read_text()
        assert "<img" in page or "<table" in page, f"{o.notebook.stem}: no figure or table"
    data_page = (html / "book" / "chapters" / "01_data.html").read_text()
    # captioned outputs are numbered per chapter: tables as tables, figures as figures
    assert '<span class="caption-number">Table 1 </span>' in data_page
    assert '<span class="caption-number">Figure 1 </span>' in data_page
    assert re.search(r"<h1>The data", data_page) and "no leak" in data_page
    assert "aldhabyani2020busi" not in data_page  # citations resolved, not left as raw keys
    assert (sorted(repo_build.rglob("*")) if repo_build.exists() else None) == before


def test_book_build_fails_on_a_broken_reference(tmp_path):
    import nbformat
    import yaml

    toc = yaml.safe_load((pipeline.project_root() / "_toc.yml").read_text())
    stems = re.findall(r"book/chapters/([\w-]+)", str(toc))
    assert stems, "the table of contents lists no chapters"

    def write_chapters(citation: str) -> None:
        for stem in stems:  # a stub for every chapter the table of contents lists
            nb = nbformat.v4.new_notebook()
            nb.cells = [nbformat.v4.new_markdown_cell(f"# {stem}\n\nAs {{cite}}`{citation}` says.")]
            nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                         "language": "python"}
            nbformat.write(nb, chapters / f"{stem}.ipynb")

    chapters = tmp_path / "chapters"
    chapters.mkdir()
    write_chapters("aldhabyani2020busi")
    assert pipeline.build_book(chapters, out=tmp_path / "good") == 0
    write_chapters("nosuchkey2099")
    assert pipeline.build_book(chapters, out=tmp_path / "bad") != 0


def test_captioned_outputs_are_numbered_tables_and_figures(tmp_path):
    """A cell's caption (``mystnb.figure`` metadata) numbers its output: an ``output-table`` as
    "Table N", anything else as "Figure N", two sequences through the book, and ``{numref}`` in
    the prose says the same; an uncaptioned table or figure is reported."""
    import yaml

    toc = yaml.safe_load((pipeline.project_root() / "_toc.yml").read_text())
    stems = re.findall(r"book/chapters/([\w-]+)", str(toc))
    chapters = tmp_path / "chapters"
    chapters.mkdir()
    png = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5Er"
           "kJggg==")
    table = "<table><tr><th>a</th></tr><tr><td>1</td></tr></table>"
    for stem in stems:
        nb = nbformat.v4.new_notebook()
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                     "language": "python"}
        nb.cells = [nbformat.v4.new_markdown_cell(
            f"# {stem}\n\nSee {{numref}}`tbl-{stem}-b`, {{numref}}`fig-{stem}` and "
            f"{{numref}}`tbl-{stem}-a`.")]
        for name, data in ((f"tbl-{stem}-a", {"text/html": table}), (f"fig-{stem}", {"image/png": png}),
                           (f"tbl-{stem}-b", {"text/html": table})):
            fig = {"caption": f"Caption of {name}.", "name": name}
            if name.startswith("tbl-"):
                fig.update(classes="output-table", caption_before=True)
            cell = nbformat.v4.new_code_cell("x", metadata={"mystnb": {"figure": fig}})
            cell.outputs = [nbformat.v4.new_output("display_data", data=data)]
            nb.cells.append(cell)
        assert boxes.uncaptioned_outputs(nb) == []
        nbformat.write(nb, chapters / f"{stem}.ipynb")
    assert pipeline.build_book(chapters, out=tmp_path / "site") == 0
    page = (tmp_path / "site" / "_build" / "html" / "book" / "chapters" / f"{stems[-1]}.html").read_text()
    # numbered through the book, in reading order (the last chapter continues the sequences)
    numbers = re.findall(r'<span class="caption-number">(Table|Figure) (\d+) </span>', page)
    (t1, n1), (f, n2), (t2, n3) = numbers
    n = len(stems)
    assert (t1, f, t2) == ("Table", "Figure", "Table"), numbers
    assert (int(n1), int(n2), int(n3)) == (2 * n - 1, n, 2 * n), numbers
    text = re.sub(r"<[^>]+>", "", page)
    assert f"See Table {2 * n}, Figure {n} and Table {2 * n - 1}." in text
    assert page.index(f"Table {2 * n - 1} </span>") < page.index("<table")   # caption above

    nb.cells[1].metadata = {}
    assert boxes.uncaptioned_outputs(nb) == ["x"]
