"""The rendered-page checker (tools/check_html.py) on small pages with known faults.

Needs Debian's Chromium; ``make check-html`` installs it and runs these tests (marker ``browser``)
before it checks the built book; ``make test`` leaves them out.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.browser

spec = importlib.util.spec_from_file_location("check_html", ROOT / "tools" / "check_html.py")
check_html = importlib.util.module_from_spec(spec)
sys.modules["check_html"] = check_html
spec.loader.exec_module(check_html)
sys.path.insert(0, str(ROOT / "tools"))
import book_pdf  # noqa: E402  (a script next to check_html)

# a 1x1 PNG
PNG = bytes.fromhex("89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000000d49444154789c6360f8cfc0"
                    "f01f0005000201e5270de00000000049454e44ae426082")


def _page(title: str, body: str, head: str = "") -> str:
    t = f"<title>{title}</title>" if title else ""
    return f"<!DOCTYPE html><html><head><meta charset='utf-8'>{t}{head}</head><body>{body}</body></html>"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("site") / "html"
    mathjax = Path(importlib.util.find_spec("sphinx-mathjax-offline").submodule_search_locations[0])
    shutil.copytree(mathjax / "static" / "mathjax", root / "_static" / "mathjax")
    (root / "_static" / "dot.png").write_bytes(PNG)
    mj = "<script defer src='_static/mathjax/tex-chtml.js'></script>"
    pages = {
        "index.html": _page("Good page", "<p>An equation <span class='math'>\\(e^{i\\pi} = -1\\)</span> and "
                            "a figure <img src='_static/dot.png'>; links that resolve: <a href='_static/dot.png'>a "
                            "download</a>, <a href='#top'>an anchor</a>, <a href='https://example.org/x.pdf'>"
                            "elsewhere</a>, <a href='mailto:a@b.c'>mail</a></p>", mj),
        "no_title.html": _page("", "<p>text</p>"),
        "missing_image.html": _page("Missing image", "<img src='_static/nothing.png'>"),
        "external_script.html": _page("External script", "<p>x</p>",
                                      "<script src='https://cdn.example.org/lib.js'></script>"),
        "external_css.html": _page("External CSS", "<p>x</p>",
                                   "<link rel='stylesheet' href='https://cdn.example.org/a.css'>"),
        "raw_tex.html": _page("Raw TeX", "<span class='math'>\\(x^2\\)</span>"),
        "traceback.html": _page("Traceback", "<div class='cell_output'><pre>Traceback (most recent call last):\n"
                                "ValueError: boom</pre></div>"),
        "warning.html": _page("Warning", "<div class='cell_output'><pre>RuntimeWarning: invalid value</pre></div>"),
        "chapter.html": _page("Chapter", "<div class='cell'><pre>x = 1</pre></div>"
                              "<a href='_sources/chapter.ipynb'>.ipynb</a>"),
        "no_notebook.html": _page("No notebook", "<div class='cell'><pre>x = 1</pre></div>"),
        "dead_link.html": _page("Dead link", "<p><a href='chemomech.pdf'>the PDF</a></p>"),
        "redirect.html": _page("Redirect", "", "<meta http-equiv='refresh' content='0; url=index.html'>"),
        "dead_redirect.html": _page("Redirect", "", "<meta http-equiv='refresh' content='0; url=gone.html'>"),
    }
    (root / "_sources").mkdir()
    (root / "_sources" / "chapter.ipynb").write_text("{}")
    for name, html in pages.items():
        (root / name).write_text(html)
    return root


@pytest.fixture(scope="module")
def found(site):
    return check_html.check_site(site, screens=site.parent / "screens")


def test_good_page_passes_and_is_typeset(found):
    assert "index.html" not in found and "redirect.html" not in found and "chapter.html" not in found


@pytest.mark.parametrize("page, expected", [
    ("no_title.html", "no <title>"),
    ("missing_image.html", "image missing or empty"),
    ("external_script.html", "<script> from outside the site"),
    ("external_css.html", "stylesheet from outside the site"),
    ("raw_tex.html", "equation not typeset"),
    ("traceback.html", "Traceback"),
    ("warning.html", "RuntimeWarning:"),
    ("dead_redirect.html", "redirects to a missing page"),
    ("dead_link.html", "link to a missing file: chemomech.pdf"),
    ("no_notebook.html", "no download link to no_notebook.ipynb"),
])
def test_each_fault_is_reported(found, page, expected):
    assert any(expected in msg for msg in found.get(page, [])), found.get(page)


def test_a_screenshot_per_page(site, found):
    shots = sorted(p.name for p in (site.parent / "screens").glob("*.png"))
    redirects = sum(check_html.redirect_target(p) is not None for p in check_html.pages(site))
    assert len(shots) == len(check_html.pages(site)) - redirects and "index.png" in shots


def test_pdf_of_a_typeset_page(site, tmp_path):
    out = tmp_path / "book.pdf"
    assert book_pdf.print_pdf(site / "index.html", out, min_pages=1) == []
    assert book_pdf.pdf_pages(out.read_bytes()) == 1
    assert out.stat().st_mode & 0o444 == 0o444      # readable by all: the site serves it


@pytest.mark.parametrize("page, min_pages, expected", [
    ("raw_tex.html", 1, "equation not typeset"),       # checked before printing
    ("index.html", 5, "only 1 pages"),                  # a print that lost most of the book
])
def test_pdf_refused_and_nothing_written(site, tmp_path, page, min_pages, expected):
    out = tmp_path / "book.pdf"
    found = book_pdf.print_pdf(site / page, out, min_pages=min_pages)
    assert any(expected in msg for msg in found), found
    assert not out.exists() and not list(tmp_path.glob("*.part"))


def test_pdf_page_count_needs_a_pdf():
    with pytest.raises(ValueError, match="not a PDF"):
        book_pdf.pdf_pages(b"<html>")
