"""Open the built HTML book in headless Chromium and check it like a reader would.

Debian's ``chromium`` is driven with playwright (``executable_path``: the system browser, never a
download at test time). The book is served over HTTP by a throw-away local server, as a reader
would get it.

For every page of the table of contents it checks that

- the page loads (HTTP 200, a title, an ``<h1>``, no failed request for a stylesheet, script,
  font or image, no uncaught JavaScript error),
- every ``<img>`` loaded (``complete`` and ``naturalWidth > 0``: a missing figure file, a wrong
  path or a corrupt PNG all fail), lazy images included,
- every link to another page of the book resolves (the target exists, and its ``#anchor`` too),
- the sidebar links to every page of the table of contents,
- its equations were typeset (MathJax, served by the book itself).

Run it by hand on a built book::

    python tests/chromium.py book/_build/html --toc _toc.yml --screenshots test-artifacts/browser
"""

from __future__ import annotations

import contextlib
import functools
import html.parser
import http.server
import os
import shutil
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BINARIES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
VIEWPORT = (1280, 900)


def find_chromium() -> str | None:
    """The browser binary: $CHROMIUM if set, else the first of :data:`BINARIES` on PATH."""
    env = os.environ.get("CHROMIUM")
    if env:
        return env
    for name in BINARIES:
        path = shutil.which(name)
        if path:
            return path
    return None


# ----------------------------------------------------------------------------- the browser
class BrowserError(RuntimeError):
    pass


# a request the browser itself gave up (a navigation away, a cancelled image) is not the book's fault
ABORTED = "net::ERR_ABORTED"


class Chromium:
    """One headless page in the system Chromium, driven by playwright.

    What goes wrong while a page loads (a response >= 400 from the book's server, a failed
    request, an uncaught JavaScript error) is collected as it happens; :meth:`drain` hands it over.
    """

    def __init__(self, binary: str | None = None, timeout: float = 60.0):
        from playwright.sync_api import Error, sync_playwright
        self.binary = binary or find_chromium()
        if not self.binary:
            raise BrowserError(f"no Chromium found (looked for {', '.join(BINARIES)}; "
                               "set $CHROMIUM); .ci/run installs Debian's `chromium`")
        self.timeout = timeout
        self._error = Error
        self._events: list[tuple[str, str, str]] = []   # (kind, what, why)
        self._playwright = sync_playwright().start()
        self.browser = None
        try:
            self.browser = self._playwright.chromium.launch(
                executable_path=self.binary, headless=True, timeout=timeout * 1000,
                args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                      "--hide-scrollbars", "--mute-audio"])
            self.page = self.browser.new_page(viewport={"width": VIEWPORT[0],
                                                        "height": VIEWPORT[1]})
        except Error as err:
            self.close()
            raise BrowserError(f"Chromium ({self.binary}) did not start: {err}") from None
        self.page.set_default_timeout(timeout * 1000)
        self.page.on("response", lambda r: r.status >= 400 and self._events.append(
            ("response", r.url, f"HTTP {r.status}")))
        self.page.on("requestfailed", lambda r: r.failure != ABORTED and self._events.append(
            ("failed", r.url, r.failure or "failed")))
        self.page.on("pageerror", lambda e: self._events.append(
            ("javascript", str(e.stack or e.message or e), "")))

    def drain(self) -> list[tuple[str, str, str]]:
        events, self._events = self._events, []
        return events

    def evaluate(self, expression: str) -> Any:
        """The value of ``expression`` (a promise is awaited)."""
        try:
            return self.page.evaluate(expression)
        except self._error as err:
            raise BrowserError(f"script failed: {err}") from None

    def navigate(self, url: str) -> None:
        """Open ``url`` and wait for its load event."""
        self.drain()
        try:
            self.page.goto(url, wait_until="load")
        except self._error as err:
            raise BrowserError(f"{url}: {err}") from None

    def screenshot(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(path))
        return path

    def close(self) -> None:
        if self.browser is not None:
            with contextlib.suppress(Exception):
                self.browser.close()
        with contextlib.suppress(Exception):
            self._playwright.stop()

    def __enter__(self) -> Chromium:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ----------------------------------------------------------------------------- the server
class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # the browser cancelling a request (broken pipe) is not the book's fault


@contextlib.contextmanager
def serve(folder: str | os.PathLike):
    """Serve ``folder`` on 127.0.0.1 (a free port) for the duration; yields the base URL."""
    handler = functools.partial(_Quiet, directory=str(folder))
    server = _Server(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


# ----------------------------------------------------------------------------- the checks
def toc_pages(toc_file: str | os.PathLike) -> list[str]:
    """The built page of every entry of a jupyter-book ``_toc.yml``, root first
    (``book/intro`` -> ``book/intro.html``)."""
    import yaml
    toc = yaml.safe_load(Path(toc_file).read_text())
    files = [toc["root"]]

    def walk(entries: list[dict[str, Any]]) -> None:
        for e in entries or []:
            if "file" in e:
                files.append(e["file"])
            walk(e.get("sections", []))

    for part in toc.get("parts", []):
        walk(part.get("chapters", []))
    walk(toc.get("chapters", []))
    return [f"{Path(f).with_suffix('').as_posix()}.html" for f in files]


# What a page reports about itself once it has loaded (and its images have settled).
PAGE_SCRIPT = r"""
(async () => {
  const imgs = [...document.images];
  imgs.forEach(img => { img.loading = "eager"; });       // lazy images must load too
  await Promise.all(imgs.map(img => img.complete ? null : new Promise(done => {
    img.addEventListener("load", done); img.addEventListener("error", done);
    setTimeout(done, 15000);
  })));
  const nav = [...document.querySelectorAll("nav.bd-links a, .bd-sidebar-primary nav a")];
  return {
    title: document.title,
    h1: [...document.querySelectorAll("article h1, main h1")].map(h => h.textContent.trim()),
    images: imgs.map(img => ({src: img.currentSrc || img.src, complete: img.complete,
                              width: img.naturalWidth, alt: img.alt})),
    links: [...document.querySelectorAll("a[href]")].map(a => a.href),
    nav: nav.map(a => a.href),
    prevnext: [...document.querySelectorAll(".prev-next-area a")].map(a => a.href),
    // tables wider than the page column (they scroll sideways, the scrollbar at their foot)
    tables: [...document.querySelectorAll("article table")].map(t => ({
      first: ((t.querySelector("th, td") || {}).textContent || "").trim().slice(0, 40),
      rows: t.rows.length, width: t.scrollWidth, column: t.parentElement.clientWidth})),
  };
})()
"""


@dataclass
class PageReport:
    page: str
    title: str = ""
    images: int = 0
    links: int = 0
    problems: list[str] = field(default_factory=list)
    tables: list[dict[str, Any]] = field(default_factory=list)   # first cell, rows, widths

    @property
    def wide_tables(self) -> list[dict[str, Any]]:
        """Tables wider than the page column (readable only by scrolling sideways)."""
        return [t for t in self.tables if t["width"] > t["column"] + 2]


@dataclass
class Report:
    pages: list[PageReport]
    screenshots: list[Path]
    external_links: int = 0

    @property
    def problems(self) -> list[str]:
        return [f"{p.page}: {msg}" for p in self.pages for msg in p.problems]


class _Anchors(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for key, value in attrs:
            if key in ("id", "name") and value:
                self.ids.add(value)


def _refresh_target(index: Path) -> str | None:
    """The URL of a ``<meta http-equiv="refresh" content="0; url=...">`` page, if it is one."""
    import re
    if not index.is_file():
        return None
    m = re.search(r'http-equiv="refresh"\s+content="[^"]*url=([^"]+)"', index.read_text(),
                  re.IGNORECASE)
    return m.group(1).strip() if m else None


class _LinkChecker:
    """Resolves same-site links against the server: the file, then the ``#anchor`` in it."""

    def __init__(self, base: str):
        self.base = base
        self._pages: dict[str, tuple[int, set[str] | None]] = {}

    def _fetch(self, url: str) -> tuple[int, set[str] | None]:
        if url not in self._pages:
            try:
                with urllib.request.urlopen(url, timeout=30) as resp:
                    status, body = resp.status, resp.read()
                    kind = resp.headers.get_content_type()
            except urllib.error.HTTPError as err:
                status, body, kind = err.code, b"", ""
            except urllib.error.URLError:
                status, body, kind = 0, b"", ""
            ids = None
            if status == 200 and kind == "text/html":
                parser = _Anchors()
                parser.feed(body.decode(errors="replace"))
                ids = parser.ids
            self._pages[url] = (status, ids)
        return self._pages[url]

    def check(self, link: str) -> str | None:
        target, _, anchor = link.partition("#")
        status, ids = self._fetch(target)
        if status != 200:
            return f"broken link {link} (HTTP {status or 'error'})"
        anchor = urllib.parse.unquote(anchor)
        if anchor and ids is not None and anchor not in ids:
            return f"broken link {link} (no #{anchor} on that page)"
        return None


# Equations: the page's math elements, and whether MathJax typeset them (it runs asynchronously,
# so wait up to 15 s). The book serves MathJax itself; a CDN copy would fail offline.
MATH_SCRIPT = """(async () => {
  const math = document.querySelectorAll('span.math, div.math').length;
  for (let i = 0; math && i < 150; i++) {
    const done = document.querySelectorAll('.MathJax, .MathJax_Display, mjx-container').length;
    if (done) return [math, done];
    await new Promise(r => setTimeout(r, 100));
  }
  return [math, 0];
})()"""


def check_book(html_dir: str | os.PathLike, pages: list[str], *,
               screenshots: str | os.PathLike | None = None, results_page: str | None = None,
               binary: str | None = None) -> Report:
    """Load every page in ``pages`` (paths relative to ``html_dir``) in headless Chromium and
    collect what is wrong; screenshots of the landing page (the first of ``pages``) and of
    ``results_page`` (scrolled to its first figure) go to ``screenshots``."""
    html_dir = Path(html_dir)
    reports: list[PageReport] = []
    shots: list[Path] = []
    external = 0
    with serve(html_dir) as base, Chromium(binary) as browser:
        links = _LinkChecker(base)
        expected = {urllib.parse.urljoin(base, p) for p in pages}
        index = PageReport("index.html")  # a redirect to the root page: checked as a link
        reports.append(index)
        status, _ = links._fetch(urllib.parse.urljoin(base, "index.html"))
        refresh = _refresh_target(html_dir / "index.html")
        if status != 200 or refresh is None:
            index.problems.append(f"no landing redirect (HTTP {status})")
        else:
            msg = links.check(urllib.parse.urljoin(base, refresh))
            if msg:
                index.problems.append(msg)
        for page in pages:
            rep = PageReport(page)
            reports.append(rep)
            url = urllib.parse.urljoin(base, page)
            try:
                browser.navigate(url)
                info = browser.evaluate(PAGE_SCRIPT)
            except BrowserError as err:
                rep.problems.append(f"did not load: {err}")
                continue
            failed = {}
            for kind, what, why in browser.drain():
                if kind == "javascript":
                    rep.problems.append(f"JavaScript error: {what}")
                elif what.startswith(base) and not what.endswith("/favicon.ico"):  # the browser asks
                    failed[what] = why
            for what, why in failed.items():
                rep.problems.append(f"request failed: {what} ({why})")
            typeset = browser.evaluate(MATH_SCRIPT)
            if typeset[0] and not typeset[1]:
                rep.problems.append(f"{typeset[0]} equations left as raw TeX (MathJax did not run)")
            rep.title = info["title"]
            rep.images = len(info["images"])
            rep.tables = info["tables"]
            if not info["title"].strip() or not info["h1"]:
                rep.problems.append("no title or no <h1>: the page did not render")
            missing = sorted(expected - {u.partition("#")[0] for u in info["nav"]})
            if missing:
                rep.problems.append(f"the sidebar does not link to {missing}")
            if not info["prevnext"] and len(pages) > 1:
                rep.problems.append("no previous/next navigation link")
            for img in info["images"]:
                if not img["complete"] or img["width"] == 0:
                    rep.problems.append(f"broken image {img['src']} (alt {img['alt']!r})")
            internal = sorted({u for u in info["links"] if u.startswith(base)})
            external += sum(1 for u in info["links"] if u.startswith("http")
                            and not u.startswith(base))
            rep.links = len(internal)
            for link in internal:
                msg = links.check(link)
                if msg:
                    rep.problems.append(msg)
            if screenshots and (page == pages[0] or page == results_page):
                if page == results_page:
                    browser.evaluate("(() => { const f = document.querySelector('article img');"
                                     " if (f) f.scrollIntoView({block: 'center'}); })()")
                    time.sleep(0.3)
                name = "landing.png" if page == pages[0] else \
                    f"results_{Path(page).stem}.png"
                shots.append(browser.screenshot(Path(screenshots) / name))
    return Report(reports, shots, external)


def main(argv: list[str] | None = None) -> int:
    import argparse
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("html", help="the built book (book/_build/html)")
    p.add_argument("--toc", default="_toc.yml")
    p.add_argument("--screenshots", help="folder for the two screenshots")
    p.add_argument("--results-page", default="book/chapters/04_table1.html")
    args = p.parse_args(argv)
    rep = check_book(args.html, toc_pages(args.toc), screenshots=args.screenshots,
                     results_page=args.results_page)
    for page in rep.pages:
        print(f"{page.page:<40} {page.images:3d} images {page.links:4d} links  "
              f"{'ok' if not page.problems else f'{len(page.problems)} problem(s)'}")
    for msg in rep.problems:
        print("  " + msg)
    for shot in rep.screenshots:
        print(f"screenshot: {shot}")
    return 1 if rep.problems else 0


if __name__ == "__main__":
    sys.exit(main())
