"""Check the built book as a reader's browser shows it: headless Chromium, network blocked.

For every HTML page of the built book this script lets Chromium load the page from disk with
all network access blocked, waits for its scripts (MathJax included), and reads the resulting
DOM. A page fails when

- it has no ``<title>``;
- a script, stylesheet or image comes from outside the site (``http(s)://`` or ``//``);
- an image it shows is missing or empty on disk;
- a link to a file of the site (a download such as the PDF or a chapter's notebook) points to
  nothing, or a page with code cells offers no download of its notebook (``.ipynb``);
- an equation is left untypeset (a ``math`` element without MathJax output inside);
- a cell output shows a traceback or a warning.

It also keeps one screenshot per page for reviewers. Usage::

    python tools/check_html.py _build/html --screens _build/screens

Exit status 0 when every page passes, 1 otherwise (one line per problem).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import unquote, urlparse

from bs4 import BeautifulSoup

#: Chromium flags: headless, no sandbox (CI runs as root), and no network at all.
CHROMIUM_FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-default-apps", "--disable-sync", "--no-first-run",
    "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=http://127.0.0.1:9",
    "--proxy-bypass-list=<-loopback>", "--allow-file-access-from-files",
]
#: Time the page's scripts get before the DOM is read (virtual time, ms).
BUDGET_MS = 15000
#: Text in a cell output that means something went wrong while the book ran.
BAD_OUTPUT = re.compile(r"Traceback \(most recent call last\)|\b\w*(Warning|Error):|warnings\.warn")
SKIP_DIRS = {"_static", "_sources", "_images", "_sphinx_design_static"}


def chromium() -> str:
    """Path of the Chromium executable (Debian's package is ``chromium``)."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise SystemExit("check_html: Chromium not found; install Debian's package: apt-get install chromium")


def pages(root: Path) -> list[Path]:
    """Every HTML page of the site (not the assets)."""
    return sorted(p for p in root.rglob("*.html") if not SKIP_DIRS & set(p.relative_to(root).parts[:-1]))


def render(browser: str, page: Path, *, screenshot: Path | None) -> str:
    """The DOM of `page` after its scripts ran, and optionally a screenshot.

    Every Chromium run gets a fresh profile folder of its own: runs that share one can collide
    on its lock while an earlier process is still exiting.
    """
    url = page.resolve().as_uri()

    def run(extra):
        with tempfile.TemporaryDirectory(prefix="check-html-") as profile:
            base = [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={BUDGET_MS}"]
            return subprocess.run(base + extra + [url], capture_output=True, text=True, timeout=120)

    dom = run(["--dump-dom"])
    if dom.returncode != 0:
        raise RuntimeError(f"chromium failed on {page}: {dom.stderr.strip()[-500:]}")
    if screenshot is not None:
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        run(["--hide-scrollbars", "--window-size=1280,1800", f"--screenshot={screenshot}"])
    return dom.stdout


def _external(ref: str) -> bool:
    return ref.startswith(("http://", "https://", "//"))


def problems(page: Path, dom: str, *, site_links: bool = True) -> list[str]:
    """Everything wrong with one rendered page, one message each.

    `site_links`: check the links into the site (every local link resolves; a page with code
    cells links to its own notebook, ``<page>.ipynb``, the download a reader runs); off for the
    single-page build that is printed to PDF, whose links are not followed.
    """
    soup = BeautifulSoup(dom, "html.parser")
    out = []
    if soup.title is None or not soup.title.get_text(strip=True):
        out.append("no <title>")
    for tag, attr in (("script", "src"), ("img", "src")):
        for el in soup.find_all(tag):
            ref = el.get(attr)
            if ref and _external(ref):
                out.append(f"<{tag}> from outside the site: {ref}")
    for el in soup.find_all("link"):
        rels = el.get("rel") or []
        ref = el.get("href") or ""
        if ("stylesheet" in rels or "preload" in rels or "modulepreload" in rels) and _external(ref):
            out.append(f"stylesheet from outside the site: {ref}")
    for el in soup.find_all("img"):
        ref = el.get("src") or ""
        if not ref or ref.startswith("data:") or _external(ref):
            continue
        target = (page.parent / unquote(urlparse(ref).path)).resolve()
        if not target.is_file() or target.stat().st_size == 0:
            out.append(f"image missing or empty: {ref}")
    for el in soup.find_all("a") if site_links else []:
        ref = el.get("href") or ""
        parts = urlparse(ref)
        if not parts.path or parts.scheme or parts.netloc or ref.startswith("//"):
            continue   # in-page anchor, external or mailto: link
        target = (page.parent / unquote(parts.path)).resolve()
        if not target.exists():
            out.append(f"link to a missing file: {ref}")
    if site_links and soup.select("div.cell"):
        own = f"{page.stem}.ipynb"
        if not any(urlparse(el.get("href") or "").path.endswith("/" + own) for el in soup.find_all("a")):
            out.append(f"code cells but no download link to {own}")
    for el in soup.select(".math"):
        if el.find("mjx-container") is None:
            out.append(f"equation not typeset: {el.get_text()[:60]!r}")
    for el in soup.select(".cell_output"):
        if el.select(".stderr"):
            out.append(f"cell output on stderr: {el.get_text()[:80]!r}")
        match = BAD_OUTPUT.search(el.get_text())
        if match:
            out.append(f"cell output shows {match.group(0)!r}")
    return out


_REFRESH = re.compile(r"<meta[^>]+http-equiv=[\"']refresh[\"'][^>]+url=([^\"'>]+)", re.I)


def redirect_target(page: Path) -> Path | None:
    """The page a redirect-only page (``<meta http-equiv="refresh">``) points to, else None."""
    match = _REFRESH.search(page.read_text(errors="replace")[:4000])
    return None if match is None else (page.parent / unquote(match.group(1).strip())).resolve()


def check_site(root: Path, *, screens: Path | None = None, workers: int = 2) -> dict[str, list[str]]:
    """Render and check every page under `root`; ``{page: [problems]}`` for the pages that fail."""
    browser = chromium()
    found = pages(root)
    if not found:
        raise SystemExit(f"check_html: no HTML pages under {root}")

    def one(item):
        k, page = item
        rel = page.relative_to(root)
        target = redirect_target(page)
        if target is not None:   # a redirect (the site's root index): its target must exist, it is checked itself
            return str(rel), [] if target.is_file() else [f"redirects to a missing page: {target.name}"]
        shot = None if screens is None else screens / rel.with_suffix(".png")
        dom = render(browser, page, screenshot=shot)
        return str(rel), problems(page, dom)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = dict(pool.map(one, enumerate(found)))
    return {k: v for k, v in results.items() if v}


def main(argv: list[str] | None = None) -> int:
    """Command line; returns the exit status."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("site", type=Path, help="the built HTML folder, e.g. _build/html")
    ap.add_argument("--screens", type=Path, default=None, help="folder for one screenshot per page")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    args = ap.parse_args(argv)
    if not (args.site / "index.html").is_file():
        print(f"check_html: {args.site / 'index.html'} not found; build the book first (make book)", file=sys.stderr)
        return 1
    bad = check_site(args.site, screens=args.screens, workers=args.workers)
    n = len(pages(args.site))
    for page, msgs in sorted(bad.items()):
        for msg in msgs:
            print(f"{page}: {msg}")
    shots = f"; screenshots in {args.screens}" if args.screens else ""
    print(f"check_html: {n - len(bad)} of {n} pages pass{shots}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
