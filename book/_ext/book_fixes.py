"""Sphinx fixes for the built book (loaded through ``sphinx.local_extensions`` in _config.yml).

sphinx-thebe adds an inline ``<script>const THEBE_JS_URL = ...</script>`` after the HTML builder
has started; Sphinx 7 then lists it twice (once from its registry with filename ``None``, once
from the builder with filename ``""``, so Sphinx's own de-duplication misses it), and
the second copy throws ``SyntaxError: Identifier 'THEBE_JS_URL' has already been declared`` on
every page (the browser test, tests/test_browser.py, reports uncaught JavaScript errors).
Identical scripts are dropped here, keeping the first.

The book's tables are set in one type size (the claims tables' 0.85rem, with tight padding), so that
tables of eight to twelve columns fit the page column instead of scrolling sideways (the browser
test measures it); the rule is a small stylesheet written into ``_static`` at build time.

MathJax is served with the book (from the ``jupyter-server-mathjax`` package, MathJax 2.7, copied
into ``_static/mathjax``) rather than from a CDN, so equations render offline and in a browser
that cannot reach the internet (the browser test checks it).

Figures and tables are numbered per chapter and captioned. A notebook cell gets its caption as
cell metadata, ``mystnb: {figure: {caption: ..., name: fig-...}}``, which MyST-NB turns into a
figure; a cell whose output is a table also gets ``classes: output-table`` and is numbered here
as a table ("Table 2", and ``{numref}`` says "Table 2"), in one sequence with the pages' own
tables. A cell with one output per data set (a loop over a parameter) is captioned without a name:
each output is numbered, none is referenced by name.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from docutils import nodes
from sphinx.transforms import SphinxTransform
from sphinx.writers.html5 import HTML5Translator

MATHJAX_DIR = "mathjax"   # under _static
# MyST marks each page's top section "tex2jax_ignore mathjax_ignore" and the math it parsed
# "math": MathJax typesets exactly those (what myst-parser asks of MathJax 3, in 2.7's words)
MATHJAX2_CONFIG = {"tex2jax": {"processClass": "math|output_area|tex2jax_process|mathjax_process",
                               "ignoreClass": "tex2jax_ignore|mathjax_ignore"},
                   "messageStyle": "none",
                   # the package ships only the STIX-Web fonts (the way Jupyter's classic notebook
                   # configures it); MathJax's default TeX font was a 404 for fontdata.js
                   "HTML-CSS": {"availableFonts": ["STIX-Web"], "preferredFont": "STIX-Web",
                                "webFont": "STIX-Web", "imageFont": None}}


def _serve_mathjax(app: Any) -> None:
    """Point Sphinx's MathJax at a local copy (after myst-parser set its MathJax 3 options)."""
    import jupyter_server_mathjax  # a pip-installed copy of MathJax 2.7 (the Jupyter project's)
    if getattr(app.builder, "format", None) != "html":
        return
    src = Path(jupyter_server_mathjax.__file__).parent / "static"
    dst = Path(app.outdir) / "_static" / MATHJAX_DIR
    if not (dst / "MathJax.js").is_file():
        shutil.copytree(src, dst, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("*.md"))
    app.config.mathjax_path = f"{MATHJAX_DIR}/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full"
    app.config.mathjax2_config = MATHJAX2_CONFIG
    app.config.mathjax3_config = None   # a MathJax 3 "window.MathJax" object would confuse 2.7


def _drop_duplicate_scripts(app: Any, pagename: str, templatename: str, context: dict,
                            doctree: Any) -> None:
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, kept = set(), []
    for js in scripts:
        inline = getattr(js, "filename", js) or None  # an inline script: None or ""
        attributes = getattr(js, "attributes", {}) or {}
        key = (inline, tuple(sorted((k, str(v)) for k, v in attributes.items())))
        if key not in seen:
            seen.add(key)
            kept.append(js)
    scripts[:] = kept


TABLE_CLASS = "output-table"   # a captioned cell of this class holds a table, not a figure


class output_table(nodes.figure):  # noqa: N801 (docutils names node classes in lower case)
    """A table that a notebook cell printed, captioned through MyST-NB's figure options: laid out
    as a figure, numbered with the tables."""


class NumberOutputTables(SphinxTransform):
    """MyST-NB wraps every captioned cell output in a figure; those of class ``output-table`` become
    :class:`output_table`. The class is swapped in place, not the node replaced: the document's
    id and name maps keep pointing at it. Runs before the domains collect labels (850)."""
    default_priority = 800

    def apply(self, **kwargs: Any) -> None:
        for fig in list(self.document.findall(nodes.figure)):
            if type(fig) is nodes.figure and TABLE_CLASS in fig["classes"]:
                fig.__class__ = output_table
                if fig.children and isinstance(fig[0], nodes.caption):
                    # a table's caption comes first; docutils closes <figcaption> only at the
                    # figure's end, which would put the table inside the caption
                    fig.insert(1, nodes.raw("", "</figcaption>\n", format="html"))


def _depart_output_table(self: HTML5Translator, node: output_table) -> None:
    if not (len(node) > 1 and isinstance(node[1], nodes.raw)):   # no caption first: as a figure
        HTML5Translator.depart_figure(self, node)
        return
    self.body.append("</figure>\n")


TABLE_CSS = "bus-paper-tables.css"
TABLE_RULES = """/* bus-paper: every table of the book in the claims tables' type size (book/_ext/book_fixes.py) */
article table { font-size: 0.85rem; }
article table th, article table td, article table.table th, article table.table td {
  padding: 0.25em 0.45em;
}
/* a captioned table (a figure of class output-table) keeps the page column's width and alignment */
article figure.output-table { margin-left: 0; margin-right: 0; padding: 0; text-align: start; }
article figure.output-table > div.output { margin: 0; padding: 0; }
"""


def _table_css(app: Any) -> None:
    if getattr(app.builder, "format", None) != "html":
        return
    static = Path(app.outdir) / "_static"
    static.mkdir(parents=True, exist_ok=True)
    (static / TABLE_CSS).write_text(TABLE_RULES)
    app.add_css_file(TABLE_CSS)


def setup(app: Any) -> dict[str, Any]:
    app.add_enumerable_node(output_table, "table",
                            html=(HTML5Translator.visit_figure, _depart_output_table))
    app.add_transform(NumberOutputTables)
    app.connect("html-page-context", _drop_duplicate_scripts)
    app.connect("builder-inited", _table_css)
    app.connect("builder-inited", _serve_mathjax, priority=900)   # after myst-parser's (500)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
