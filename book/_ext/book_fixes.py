"""Sphinx fixes for the built book (loaded through ``sphinx.local_extensions`` in _config.yml).

sphinx-thebe adds an inline ``<script>const THEBE_JS_URL = ...</script>`` after the HTML builder
has started; Sphinx 7 then lists it twice (once from its registry with filename ``None``, once
from the builder with filename ``""``, so Sphinx's own de-duplication misses it), and
the second copy throws ``SyntaxError: Identifier 'THEBE_JS_URL' has already been declared`` on
every page (the browser test, tests/test_browser.py, reports uncaught JavaScript errors).
Identical scripts are dropped here, keeping the first.
"""

from __future__ import annotations

from typing import Any


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


def setup(app: Any) -> dict[str, Any]:
    app.connect("html-page-context", _drop_duplicate_scripts)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
