"""The built book, opened in headless Chromium (tests/chromium.py): every page of the table of
contents loads, every figure on it loads, every link between pages resolves; and the checker
itself fails on a missing figure file and on a broken link.

The book is built from the committed chapters and results (no notebook is executed) into a
temporary folder. Screenshots of the landing page and of a results page are saved under
``test-artifacts/browser/`` (``$BUS_PAPER_TEST_ARTIFACTS`` moves it). Without Chromium the tests
are skipped, unless ``$BUS_PAPER_REQUIRE_BROWSER`` is set (CI: ``.ci/run`` installs Debian's
``chromium`` and sets it), where they fail.
"""

import os
import re
import shutil
from pathlib import Path

import chromium
import pytest

from bus_paper.book import runner as pipeline

pytestmark = pytest.mark.slow

ROOT = pipeline.project_root()
RESULTS_PAGE = "book/chapters/04_table1.html"


def _artifacts() -> Path:
    return Path(os.environ.get("BUS_PAPER_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "browser"


@pytest.fixture(scope="module")
def browser_binary() -> str:
    binary = chromium.find_chromium()
    if binary is None:
        msg = "no Chromium on this machine (apt-get install chromium; .ci/run does)"
        if os.environ.get("BUS_PAPER_REQUIRE_BROWSER"):
            pytest.fail(msg)
        pytest.skip(msg)
    return binary


@pytest.fixture(scope="module")
def built_book(tmp_path_factory) -> Path:
    if not (ROOT / "book" / "chapters").is_dir():
        pytest.skip("no executed chapters in this checkout")
    out = tmp_path_factory.mktemp("site")
    assert pipeline.build_book(out=out) == 0, "the book does not build (warnings are errors)"
    return out / "_build" / "html"


@pytest.fixture(scope="module")
def pages() -> list[str]:
    return chromium.toc_pages(ROOT / "_toc.yml")


def test_every_page_figure_and_link_of_the_book_works(built_book, pages, browser_binary):
    shutil.rmtree(_artifacts(), ignore_errors=True)
    report = chromium.check_book(built_book, pages, screenshots=_artifacts(),
                                 results_page=RESULTS_PAGE, binary=browser_binary)
    assert report.problems == []
    checked = {p.page for p in report.pages}
    assert set(pages) <= checked and "book/model_card.html" in checked
    assert sum(p.images for p in report.pages) >= 10  # the chapters' figures were looked at
    assert all(p.links > 0 for p in report.pages if p.page != "index.html")
    shots = sorted(p.name for p in report.screenshots)
    assert shots == ["landing.png", "results_04_table1.png"]
    for shot in report.screenshots:
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


def test_every_chapter_page_offers_its_notebook_and_rerun_commands(built_book):
    for page in sorted((built_book / "book" / "chapters").glob("*.html")):
        html = page.read_text()
        assert f"_sources/book/chapters/{page.stem}.ipynb" in html, f"{page.name}: no download"
        assert (built_book / "_sources" / "book" / "chapters" / f"{page.stem}.ipynb").is_file()
        assert "Download or re-run this chapter" in html, f"{page.name}: no rerun box"
        text = re.sub(r"<[^>]+>", "", html)  # code is highlighted into spans
        assert f"papermill notebooks/{page.stem}.ipynb" in text, page.name
        assert re.search(r"bus-paper run --only \w+ --profile \w+", text), page.name
        link = re.search(rf'href="(\.\./\.\./_downloads/[^"]+/{page.stem}\.ipynb)"', html)
        assert link and (page.parent / link.group(1)).resolve().is_file(), page.name


def _copy(built_book: Path, tmp_path: Path) -> Path:
    site = tmp_path / "html"
    shutil.copytree(built_book, site)
    return site


def test_the_checker_fails_on_a_missing_figure(built_book, pages, browser_binary, tmp_path):
    site = _copy(built_book, tmp_path)
    page = site / RESULTS_PAGE
    figure = re.search(r'<img[^>]+src="\.\./\.\./(_images/[^"]+)"', page.read_text()).group(1)
    (site / figure).unlink()
    report = chromium.check_book(site, pages, binary=browser_binary)
    broken = [m for m in report.problems if "broken image" in m]
    assert broken and all(Path(figure).name in m for m in broken)
    assert any(m.startswith(RESULTS_PAGE) for m in broken)


def test_the_checker_fails_on_broken_links(built_book, pages, browser_binary, tmp_path):
    site = _copy(built_book, tmp_path)
    # a page of the table of contents is gone: it does not load, and the links to it break
    (site / "book" / "chapters" / "05_literature.html").unlink()
    # a link to a section that does not exist
    intro = site / "book" / "intro.html"
    intro.write_text(intro.read_text().replace(
        "</article>", '<a href="methods.html#no-such-section">see</a></article>', 1))
    report = chromium.check_book(site, pages, binary=browser_binary)
    problems = "\n".join(report.problems)
    assert "book/chapters/05_literature.html: request failed" in problems
    assert re.search(r"book/chapters/04_table1.html: broken link \S+05_literature.html "
                     r"\(HTTP 404\)", problems)
    assert re.search(r"book/intro.html: broken link \S+methods.html#no-such-section "
                     r"\(no #no-such-section", problems)


def test_equations_render_offline_and_the_checker_sees_raw_tex(built_book, pages, browser_binary,
                                                                 tmp_path):
    # the book serves its own MathJax (no CDN: these machines have no internet)
    methods = (built_book / "book" / "methods.html").read_text()
    assert '_static/mathjax/MathJax.js' in methods and "cdn" not in methods.lower()
    page = ["book/methods.html"]
    assert chromium.check_book(built_book, page, binary=browser_binary).problems == []
    site = _copy(built_book, tmp_path)
    (site / "_static" / "mathjax" / "MathJax.js").unlink()
    problems = "\n".join(chromium.check_book(site, page, binary=browser_binary).problems)
    assert re.search(r"book/methods.html: \d+ equations left as raw TeX", problems)


def test_the_claims_tables_fit_the_page_column(built_book, browser_binary, tmp_path):
    # the claims tables were wider than the page (the claim wrapped word by word, the last column
    # sat behind a scrollbar at the foot of a 27-row table)
    page = ["book/chapters/09_claims.html"]
    (report,) = [p for p in chromium.check_book(built_book, page, binary=browser_binary).pages
                 if p.page == page[0]]
    claims = [t for t in report.tables if t["first"] in ("claim", "paper")]
    assert len(claims) >= 4 and report.wide_tables == []
    # nor do the generated pages' and the data chapter's tables (one type size for every table,
    # book/_ext/book_fixes.py; ten-column tables transposed or trimmed)
    generated = ["book/model_card.html", "book/reproducibility.html", "book/chapters/01_data.html"]
    checked = chromium.check_book(built_book, generated, binary=browser_binary).pages
    assert {p.page: p.wide_tables for p in checked if p.page in generated} == \
        dict.fromkeys(generated, [])
    # and the checker sees a table that does not fit
    site = _copy(built_book, tmp_path)
    html = site / page[0]
    cells = "".join(f'<td style="white-space: nowrap">column number {i}</td>' for i in range(30))
    wide = f"<table><tr>{cells}"
    html.write_text(html.read_text().replace("</article>", wide + "</tr></table></article>", 1))
    (seen,) = [p.wide_tables for p in chromium.check_book(site, page, binary=browser_binary).pages
               if p.page == page[0]]
    assert [t["first"] for t in seen] == ["column number 0"]
