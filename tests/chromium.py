"""Open the built HTML book in headless Chromium and check it like a reader would.

Debian's ``chromium`` is driven through the Chrome DevTools Protocol over a pipe
(``--remote-debugging-pipe``: JSON messages separated by NUL bytes on file descriptors 3 and 4),
so nothing but the browser itself is needed: no webdriver, no websocket library, no download at
test time. The book is served over HTTP by a throw-away local server, as a reader would get it.

For every page of the table of contents it checks that

- the page loads (HTTP 200, a title, an ``<h1>``, no failed request for a stylesheet, script,
  font or image, no uncaught JavaScript error),
- every ``<img>`` loaded (``complete`` and ``naturalWidth > 0``: a missing figure file, a wrong
  path or a corrupt PNG all fail), lazy images included,
- every link to another page of the book resolves (the target exists, and its ``#anchor`` too),
- the sidebar links to every page of the table of contents.

Run it by hand on a built book::

    python tests/chromium.py book/_build/html --toc _toc.yml --screenshots test-artifacts/browser
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import functools
import html.parser
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
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


class Chromium:
    """A headless Chromium driven over ``--remote-debugging-pipe`` (one page target).

    ``call`` sends a DevTools command and returns its result; events that arrive meanwhile are
    queued for ``wait_event``/``drain``.
    """

    def __init__(self, binary: str | None = None, timeout: float = 60.0):
        self.binary = binary or find_chromium()
        if not self.binary:
            raise BrowserError(f"no Chromium found (looked for {', '.join(BINARIES)}; "
                               "set $CHROMIUM); .ci/run installs Debian's `chromium`")
        self.timeout = timeout
        self._profile = tempfile.TemporaryDirectory(prefix="bus-paper-chromium-")
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        # Chromium reads commands on fd 3 and writes replies on fd 4. Move the pipe ends above
        # fd 10 first, so the dup2s in the child cannot overwrite one another.
        hi_r = fcntl.fcntl(to_child_r, fcntl.F_DUPFD_CLOEXEC, 10)
        hi_w = fcntl.fcntl(from_child_w, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(to_child_r)
        os.close(from_child_w)

        def child_fds() -> None:  # runs in the child between fork and exec
            os.dup2(hi_r, 3)
            os.dup2(hi_w, 4)

        args = [self.binary, "--headless", "--remote-debugging-pipe", "--no-sandbox",
                "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--no-default-browser-check", "--disable-extensions", "--mute-audio",
                "--hide-scrollbars", f"--user-data-dir={self._profile.name}",
                f"--window-size={VIEWPORT[0]},{VIEWPORT[1]}", "about:blank"]
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 -- closed in close()
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=self.stderr, close_fds=False,
                                     preexec_fn=child_fds)  # noqa: PLW1509 -- single-threaded
        os.close(hi_r)
        os.close(hi_w)
        self._buffer = b""
        self._next_id = 0
        self._events: list[dict[str, Any]] = []
        self.session: str | None = None
        try:
            target = self.call("Target.createTarget", {"url": "about:blank"}, session=False)
            attached = self.call("Target.attachToTarget",
                                 {"targetId": target["targetId"], "flatten": True}, session=False)
            self.session = attached["sessionId"]
            for domain in ("Page", "Runtime", "Network"):
                self.call(f"{domain}.enable")
            self.call("Page.setLifecycleEventsEnabled", {"enabled": True})
            self.call("Emulation.setDeviceMetricsOverride",
                      {"width": VIEWPORT[0], "height": VIEWPORT[1], "deviceScaleFactor": 1,
                       "mobile": False})
        except BaseException:
            self.close()
            raise

    # -- protocol
    def _send(self, message: dict[str, Any]) -> None:
        data = json.dumps(message).encode() + b"\0"
        while data:
            data = data[os.write(self._to_child, data):]

    def _receive(self, deadline: float) -> dict[str, Any]:
        import select
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError("Chromium did not answer in time")
            ready, _, _ = select.select([self._from_child], [], [], left)
            if not ready:
                continue
            chunk = os.read(self._from_child, 1 << 20)
            if not chunk:
                raise BrowserError(f"Chromium exited (status {self.proc.poll()}): "
                                   f"{self._stderr_tail()}")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, params: dict[str, Any] | None = None, *, session: bool = True,
             timeout: float | None = None) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self.session
        self._send(message)
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            reply = self._receive(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error'].get('message')}")
                return reply.get("result", {})
            if "method" in reply:
                self._events.append(reply)

    def wait_event(self, method: str, timeout: float | None = None) -> dict[str, Any]:
        """The next event ``method`` (earlier events of other kinds stay queued for drain)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        seen = 0
        while True:
            for i in range(seen, len(self._events)):
                if self._events[i]["method"] == method:
                    return self._events.pop(i)
            seen = len(self._events)
            reply = self._receive(deadline)
            if "method" in reply:
                self._events.append(reply)

    def drain(self) -> list[dict[str, Any]]:
        events, self._events = self._events, []
        return events

    def evaluate(self, expression: str, timeout: float | None = None) -> Any:
        result = self.call("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                                "returnByValue": True}, timeout=timeout)
        if "exceptionDetails" in result:
            raise BrowserError(f"script failed: {result['exceptionDetails'].get('text')} "
                               f"{result['exceptionDetails'].get('exception', {})}")
        return result["result"].get("value")

    def navigate(self, url: str) -> None:
        """Open ``url`` and wait for *its* load event (matched by loader id, so a late event of
        the previous page cannot be mistaken for it)."""
        self.drain()
        reply = self.call("Page.navigate", {"url": url})
        if reply.get("errorText"):
            raise BrowserError(f"{url}: {reply['errorText']}")
        loader = reply.get("loaderId")
        deadline = time.monotonic() + self.timeout
        while True:
            event = self.wait_event("Page.lifecycleEvent", timeout=deadline - time.monotonic())
            p = event["params"]
            if p.get("name") == "load" and (loader is None or p.get("loaderId") == loader):
                return

    def screenshot(self, path: str | os.PathLike) -> Path:
        data = self.call("Page.captureScreenshot", {"format": "png"})["data"]
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    # -- lifetime
    def _stderr_tail(self) -> str:
        with contextlib.suppress(OSError, ValueError):
            self.stderr.seek(0)
            return self.stderr.read().decode(errors="replace")[-2000:]
        return ""

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self.call("Browser.close", session=False, timeout=5)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for fd in (self._to_child, self._from_child):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.stderr.close()
        self._profile.cleanup()

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
                info = browser.evaluate(PAGE_SCRIPT, timeout=60)
            except BrowserError as err:
                rep.problems.append(f"did not load: {err}")
                continue
            events = browser.drain()
            failed = {}
            for ev in events:
                p = ev.get("params", {})
                if ev["method"] == "Network.responseReceived":
                    r = p["response"]
                    if r.get("status", 200) >= 400 and r["url"].startswith(base) \
                            and not r["url"].endswith("/favicon.ico"):  # asked by the browser
                        failed[r["url"]] = f"HTTP {r['status']}"
                elif ev["method"] == "Network.loadingFailed" and not p.get("canceled"):
                    failed[p.get("requestId")] = p.get("errorText", "failed")
                elif ev["method"] == "Runtime.exceptionThrown":
                    d = p.get("exceptionDetails", {})
                    rep.problems.append("JavaScript error: " + str(
                        d.get("exception", {}).get("description") or d.get("text")))
            for what, why in failed.items():
                if what.startswith("http"):
                    rep.problems.append(f"request failed: {what} ({why})")
            typeset = browser.evaluate(MATH_SCRIPT, timeout=30)
            if typeset[0] and not typeset[1]:
                rep.problems.append(f"{typeset[0]} equations left as raw TeX (MathJax did not run)")
            rep.title = info["title"]
            rep.images = len(info["images"])
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
