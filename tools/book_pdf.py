"""Print the book to one PDF: the single-page HTML build, rendered by headless Chromium.

``make pdf`` first builds the single-page HTML (``jupyter-book build --builder singlehtml``,
which reuses the executed chapters of ``make book``), then runs this script::

    python tools/book_pdf.py _build/singlehtml _build/html/chemomech.pdf

Chromium loads the page from disk with the network blocked (the same flags as
``tools/check_html.py``), lets its scripts run (MathJax typesets the equations), and prints it.
Before printing, the rendered page is checked as ``check_html`` checks every page (no equation
left untypeset, nothing from outside the site, no missing image, no traceback in an output);
after printing, the PDF must be a PDF with at least ``--min-pages`` pages. The PDF is written
atomically: a failed run leaves no file behind.

Exit status 0 on success, 1 with one line per problem otherwise.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import check_html  # noqa: E402  (a sibling script, not a package)

#: Fewer pages than this means the print lost most of the book (it has ~100 A4 pages).
MIN_PAGES = 40
_PAGE = re.compile(rb"/Type\s*/Page(?![a-zA-Z])")


def pdf_pages(pdf: bytes) -> int:
    """Number of page objects in a PDF written by Chromium (its page objects are not compressed)."""
    if not pdf.startswith(b"%PDF-"):
        raise ValueError("not a PDF (no %PDF- header)")
    return len(_PAGE.findall(pdf))


def print_pdf(page: Path, out: Path, *, min_pages: int = MIN_PAGES) -> list[str]:
    """Check the rendered `page` and print it to `out`; the problems found (empty on success)."""
    if not page.is_file():
        return [f"{page} not found; build the single-page HTML first (make pdf does)"]
    if check_html.redirect_target(page) is not None:
        return [f"{page} only redirects; pass the page it points to"]
    browser = check_html.chromium()
    dom = check_html.render(browser, page, screenshot=None)
    problems = check_html.problems(page, dom, site_links=False)
    if problems:
        return [f"{page.name}: {p}" for p in problems]
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent)
    os.close(fd)
    try:
        with tempfile.TemporaryDirectory(prefix="book-pdf-") as profile:
            run = subprocess.run(
                [browser, *check_html.CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                 f"--virtual-time-budget={check_html.BUDGET_MS}", "--no-pdf-header-footer",
                 f"--print-to-pdf={tmp}", page.resolve().as_uri()],
                capture_output=True, text=True, timeout=600,
            )
        if run.returncode != 0:
            return [f"chromium failed to print {page}: {run.stderr.strip()[-500:]}"]
        try:
            n = pdf_pages(Path(tmp).read_bytes())
        except ValueError as err:
            return [f"{out.name}: {err}"]
        if n < min_pages:
            return [f"{out.name}: only {n} pages (expected at least {min_pages})"]
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the site serves it to everyone
        os.replace(tmp, out)
        print(f"book_pdf: {out} ({n} pages, {out.stat().st_size / 1e6:.1f} MB)")
        return []
    finally:
        Path(tmp).unlink(missing_ok=True)


def single_page(site: Path) -> Path:
    """The single page of a ``singlehtml`` build, placed where its links resolve.

    Jupyter Book's root page lives in ``book/`` (``book/intro.html``) and ``index.html`` only
    redirects to it, but the single-page builder writes every link (``_static/``, ``_images/``)
    relative to the site root. A copy of the page at the root therefore renders completely.
    """
    page = site / "index.html"
    target = check_html.redirect_target(page) if page.is_file() else None
    if target is None or target.parent == site.resolve():
        return target or page
    copy = site / "_print.html"
    copy.write_bytes(target.read_bytes())
    return copy


def main(argv: list[str] | None = None) -> int:
    """Command line; returns the exit status."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("site", type=Path, help="the single-page build, e.g. _build/singlehtml")
    ap.add_argument("out", type=Path, help="the PDF to write, e.g. _build/html/chemomech.pdf")
    ap.add_argument("--min-pages", type=int, default=MIN_PAGES)
    args = ap.parse_args(argv)
    problems = print_pdf(single_page(args.site), args.out, min_pages=args.min_pages)
    for line in problems:
        print(line, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
