"""Re-run chosen mutmut mutants against chosen tests (after `make mutation`), e.g. the survivors against a new test.

mutmut's trampolines pick the active mutant from the ``MUTANT_UNDER_TEST`` environment variable, so
any test can be run against any generated mutant without a second full mutmut run (whose clean-test
pass alone takes many minutes). Run from the staging folder ``_build/mutation``; the test files are
copied into ``mutants/tests`` first, so new tests need no new mutmut run.

    cd _build/mutation
    ../../.venv/bin/python ../../benchmarks/mutation_recheck.py NAMES_FILE TEST [TEST ...]

NAMES_FILE holds one mutant name per line. Prints ``killed`` (pytest exit 1), ``survived`` (0) or the
exit code for every mutant, and a count.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path


def main(names_file: str, tests: list[str]) -> int:
    root = Path.cwd()
    if not (root / "mutants" / "src" / "chemomech").is_dir():
        raise SystemExit("run from _build/mutation after `make mutation`")
    repo_tests = Path(__file__).resolve().parents[1] / "tests"
    shutil.copytree(repo_tests, root / "mutants" / "tests", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    names = [n.strip() for n in Path(names_file).read_text().splitlines() if n.strip()]
    counts: dict[str, int] = {}
    for name in names:
        env = dict(os.environ, MUTANT_UNDER_TEST=name, PYTHONPATH=str(root / "mutants" / "src"),
                   OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
        p = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
                            "-m", "not slow and not browser", *tests],
                           cwd=root / "mutants", env=env, capture_output=True, text=True)
        status = {0: "survived", 1: "killed"}.get(p.returncode, f"exit {p.returncode}")
        counts[status] = counts.get(status, 0) + 1
        print(f"{status:9s} {name}", flush=True)
    print(counts)
    return 0


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2:]))
