"""What publishing the book needs: licence, citation metadata, a valid deploy workflow, offline maths,
and a package that works without its GPL-3 optional dependency (py4DSTEM)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHECK = [sys.executable, "-m", "check_jsonschema"]


def _check_schema(builtin: str, path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(CHECK + ["--builtin-schema", builtin, str(path)], capture_output=True, text=True)


def test_licence_file_and_metadata_agree():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["license"] == "BSD-3-Clause" and meta["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("BSD 3-Clause License") and "CC BY 4.0" in text
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["license"] == meta["license"] and cff["version"] == meta["version"]


def test_citation_file_is_valid_cff():
    result = _check_schema("vendor.citation-file-format", ROOT / "CITATION.cff")
    assert result.returncode == 0, result.stdout + result.stderr
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0"
    assert cff["preferred-citation"]["doi"] == "10.1038/s41563-021-01191-0"


def test_citation_check_catches_a_broken_file(tmp_path):
    # the check must be able to fail: an author without a name and a missing title are not valid CFF
    bad = tmp_path / "CITATION.cff"
    bad.write_text("cff-version: 1.2.0\nmessage: cite it\nauthors:\n  - affiliation: nowhere\n")
    assert _check_schema("vendor.citation-file-format", bad).returncode != 0


def test_deploy_workflow_is_valid_and_runs_ci():
    wf = ROOT / ".github" / "workflows" / "book.yml"
    result = _check_schema("vendor.github-workflows", wf)
    assert result.returncode == 0, result.stdout + result.stderr
    jobs = yaml.safe_load(wf.read_text())["jobs"]
    assert any("bash .ci/run" in str(step.get("run", "")) for step in jobs["build"]["steps"])
    assert any("deploy-pages" in str(step.get("uses", "")) for step in jobs["deploy"]["steps"])
    broken = wf.read_text().replace("runs-on: ubuntu-24.04", "runs-on: [ubuntu-24.04", 1)
    (bad := wf.parent.parent.parent / "_build" / "bad-workflow.yml").parent.mkdir(exist_ok=True)
    bad.write_text(broken + "\n  oops: {")
    assert _check_schema("vendor.github-workflows", bad).returncode != 0
    bad.unlink()


def test_book_serves_mathjax_itself():
    cfg = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert "sphinx-mathjax-offline" in cfg["sphinx"]["extra_extensions"]
    import importlib.util

    spec = importlib.util.find_spec("sphinx-mathjax-offline")
    assert spec is not None
    bundled = Path(spec.submodule_search_locations[0]) / "static" / "mathjax" / "tex-chtml.js"
    assert bundled.stat().st_size > 100_000


PY4DSTEM_BLOCKED = """
import sys
sys.modules["py4DSTEM"] = None            # any `import py4DSTEM` now raises ImportError
import numpy as np
import chemomech
from chemomech import measure_strain
from chemomech.twin import stem4d
sim = stem4d.simulate_uniform(exx=0.01, scan_shape=(2, 3), reference_columns=1, dose=1e6, rng=0)
ref = np.zeros((2, 3), bool)
ref[:, 0] = True                          # the unstrained reference column
res = measure_strain(sim.datacube, reference=ref)
print(float(np.nanmedian(res.exx.values[:, 1:])))
try:
    measure_strain(sim.datacube, method="py4dstem")
except ImportError as err:
    print("ImportError:", err)
"""


def test_package_works_without_py4dstem():
    out = subprocess.run([sys.executable, "-c", PY4DSTEM_BLOCKED], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert abs(float(lines[0]) - 0.01) < 1e-3     # the default finder measured the imposed 1 % strain
    assert "chemomech[py4dstem]" in lines[1]


@pytest.mark.parametrize("name", ["LICENSE", "CITATION.cff", "environment.yml"])
def test_publishing_files_exist(name):
    assert (ROOT / name).is_file()
