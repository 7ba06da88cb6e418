"""Print a seeded random sample of mutmut's mutant names, N per module, for `make mutation MUTATION_SAMPLE=N`.

All mutants of the six modules number about 16 000; on a shared two-core machine a full run takes
days, so the score is estimated on a uniform random sample per module (drawn with a seeded
numpy Generator, so the sample repeats). Reads the ``*.py.meta`` files that mutmut writes when
it generates the mutants (``mutants/src/chemomech/``, run from the staging folder).

    python benchmarks/mutation_sample.py N [SEED] [MODULE ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

MODULES = ("elasticity", "_diskfind", "learning", "strain", "xanes", "registration")


def all_names(module: str, root: Path = Path("mutants/src/chemomech")) -> list[str]:
    """Every mutant of one module, sorted (mutmut's names, from its .meta file)."""
    meta = root / f"{module}.py.meta"
    if not meta.exists():
        raise SystemExit(f"{meta} missing: run `mutmut run` once so that the mutants exist")
    return sorted(json.loads(meta.read_text())["exit_code_by_key"])


def sample(n: int, seed: int = 19, modules=MODULES, root: Path = Path("mutants/src/chemomech")) -> list[str]:
    rng = np.random.default_rng(seed)
    names = []
    for module in modules:
        keys = all_names(module, root)
        take = min(n, len(keys))
        names += [keys[i] for i in sorted(rng.choice(len(keys), size=take, replace=False))]
    return names


if __name__ == "__main__":
    args = sys.argv[1:]
    if not args:
        raise SystemExit(__doc__)
    n = int(args[0])
    seed = int(args[1]) if len(args) > 1 else 19
    modules = tuple(args[2:]) or MODULES
    print("\n".join(sample(n, seed, modules)))
