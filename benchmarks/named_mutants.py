"""Apply the hand-written mutants named in issue 19 to a copy of the package and run the fast tests.

Each mutant is one textual substitution in one module (the original text must occur exactly once).
The package is copied to a temporary folder, mutated there, and put first on PYTHONPATH, so the
checkout is never modified. A mutant is *killed* when the fast tests listed for it fail (pytest exit
code 1), *survives* when they pass; any other exit code is reported as an error.

    .venv/bin/python benchmarks/named_mutants.py            # all mutants
    .venv/bin/python benchmarks/named_mutants.py od_factor  # one of them

Prints one line per mutant and, for a killed one, the tests that failed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAST = ["-m", "not slow and not browser"]

# name: (module, original text, mutated text, tests to run)
MUTANTS = {
    "reversed_rotation": (
        "elasticity.py",
        "ts, te = _rotation_voigt(float(angle_rad))",
        "ts, te = _rotation_voigt(-float(angle_rad))",
        ["tests/test_elasticity.py"],
    ),
    "shear_factor_2": (
        "elasticity.py",
        "2 * (e[2] - e0[2][:, 0])",
        "(e[2] - e0[2][:, 0])",
        ["tests/test_elasticity.py"],
    ),
    "ac_stiffness_swap": (
        "elasticity.py",
        "idx = (0, 2)  # a, c",
        "idx = (2, 0)  # a, c",
        ["tests/test_elasticity.py", "tests/test_learning_stiffness.py"],
    ),
    "od_factor": (
        "xanes.py",
        "out = -2.0 * np.log(np.where(amp > 0, amp, np.nan))",
        "out = -np.log(np.where(amp > 0, amp, np.nan))",
        ["tests/test_xanes.py"],
    ),
    "exy_sign": (
        "strain.py",
        '"exy": 0.5 * (h[:, 0, 1] + h[:, 1, 0])',
        '"exy": -0.5 * (h[:, 0, 1] + h[:, 1, 0])',
        ["tests/test_strain.py"],
    ),
}


def run(name: str) -> tuple[str, list[str]]:
    module, old, new, tests = MUTANTS[name]
    with tempfile.TemporaryDirectory(prefix=f"mutant-{name}-") as tmp:
        pkg = Path(tmp) / "chemomech"
        shutil.copytree(ROOT / "lib" / "chemomech", pkg, ignore=shutil.ignore_patterns("__pycache__"))
        src = (pkg / module).read_text()
        if src.count(old) != 1:
            raise SystemExit(f"{name}: expected the original text once in {module}, found {src.count(old)}")
        (pkg / module).write_text(src.replace(old, new))
        env = dict(os.environ, PYTHONPATH=tmp, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
        check = subprocess.run([sys.executable, "-c", "import chemomech, sys; print(chemomech.__file__)"],
                               env=env, capture_output=True, text=True, cwd=ROOT)
        if not check.stdout.startswith(tmp):
            raise SystemExit(f"{name}: the mutated copy is not the one imported ({check.stdout.strip()})")
        p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rf", *FAST, *tests],
                           env=env, capture_output=True, text=True, cwd=ROOT)
    failed = [ln.split(" ", 2)[1] for ln in p.stdout.splitlines() if ln.startswith("FAILED ")]
    status = {0: "SURVIVED", 1: "killed"}.get(p.returncode, f"error (pytest exit {p.returncode})")
    if p.returncode not in (0, 1):
        print(p.stdout[-3000:], p.stderr[-3000:])
    return status, failed


def main(names: list[str]) -> int:
    survived = 0
    for name in names or list(MUTANTS):
        status, failed = run(name)
        survived += status != "killed"
        print(f"{name:20s} {status:10s} {len(failed)} failing: {', '.join(failed)}", flush=True)
    return int(survived > 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
