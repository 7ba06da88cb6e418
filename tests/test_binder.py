"""The launch button opens each chapter as a notebook.

The book's launch button sends a reader to ``<binderhub>/v2/gh/<repo>/<branch>?urlpath=tree/./book/<chapter>.md``.
Binder builds the root ``environment.yml`` (the same pins as ``requirements.lock``, so the Notebook
server and jupytext installed here are the ones Binder installs) and opens that URL in Jupyter
Notebook. This test starts the same server from this environment and follows the same URL: the
chapter, a MyST Markdown file, must come back as a notebook (jupytext's server extension), with the
code cells that jupytext reads from the file and the ``python3`` kernel.
"""

from __future__ import annotations

import json
import os
import posixpath
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import jupytext
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "chemomech-test"


def _chapters() -> list[str]:
    """Every numbered chapter in the table of contents (book/NN_*), in order."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [entry["file"] for part in toc["parts"] for entry in part["chapters"]]
    chapters = [f for f in files if Path(f).name[:2].isdigit()]
    assert len(chapters) >= 8, f"_toc.yml lists too few chapters: {files}"
    return chapters


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # noqa: D102 - report the redirect instead of following it
        return None


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A Jupyter Notebook server on the repository, as Binder runs it; yields its base URL."""
    port = _free_port()
    runtime = tmp_path_factory.mktemp("jupyter-runtime")
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(runtime), JUPYTER_DATA_DIR=str(runtime / "data"))
    log = runtime / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "notebook", "--no-browser", "--allow-root", f"--port={port}",
             f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={ROOT}", "--ServerApp.open_browser=False"],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={TOKEN}", timeout=5)
                break
            except (urllib.error.URLError, ConnectionError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the notebook server did not start:\n{log.read_text()[-3000:]}")
                time.sleep(0.5)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_launch_button_points_at_binder_with_the_classic_tree_url():
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert config["launch_buttons"]["binderhub_url"] == "https://mybinder.org"
    # "classic" makes Jupyter Book write urlpath=tree/<path>, the URL followed below.
    assert config["launch_buttons"]["notebook_interface"] == "classic"
    assert config["repository"]["url"].startswith("https://github.com/")
    # Binder builds the root environment.yml unless a binder/ folder shadows it.
    assert (ROOT / "environment.yml").is_file()
    assert not (ROOT / "binder").exists() and not (ROOT / ".binder").exists()


@pytest.mark.parametrize("chapter", _chapters())
def test_launch_url_opens_the_chapter_as_a_notebook(server, chapter):
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        opener.open(f"{server}/tree/./{chapter}.md?token={TOKEN}", timeout=30)
        pytest.fail(f"/tree/./{chapter}.md did not redirect")
    except urllib.error.HTTPError as err:
        assert err.code == 302, err
        # A notebook opens in the notebook editor; a plain text file would go to /edit/.
        target = posixpath.normpath(urllib.parse.urlsplit(err.headers["Location"]).path)
        assert target == f"/notebooks/{chapter}.md", err.headers["Location"]

    with urllib.request.urlopen(f"{server}/api/contents/{chapter}.md?token={TOKEN}", timeout=60) as response:
        model = json.load(response)
    assert model["type"] == "notebook"
    served = model["content"]
    expected = jupytext.read(ROOT / f"{chapter}.md")
    n_code = sum(cell["cell_type"] == "code" for cell in served["cells"])
    assert n_code == sum(cell.cell_type == "code" for cell in expected.cells) > 3
    assert served["metadata"]["kernelspec"]["name"] == "python3"
