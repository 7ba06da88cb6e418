"""Benchmark: time to learn eps0(X) from one 128 x 128-pixel particle on one core.

Issue 7 asks for a fit of one 128 x 128 particle in <= 30 s on one core. The
full fit (degree by spatially blocked cross-validation over degrees 1-5, SIMEX
for the noise in X, 100 bootstrap replicates) is timed side by side with a
baseline in the same process: the minimal fit (degree 1, no CV, no SIMEX, no
bootstrap), whose cost is one mesh, one factorisation and two solves. Ratios
are machine-independent; absolute times are printed for the report.

Run with one thread:
    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/learning_speed.py
"""

from __future__ import annotations

import time

import numpy as np

from chemomech import learning, materials, twin

SHAPE = (128, 128)           # pixels
PIXEL_NM = 5.0               # nm
SIGMA_STRAIN, SIGMA_X = 5e-4, 0.03
REPEATS = 3


def _best_of(fn, repeats=REPEATS):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> None:
    p = twin.make_particle("bench", batch="biphasic", seed=7, semi_axes_nm=(270.0, 290.0), mesh_nrefs=5)
    ds = p.render(pixel_size_nm=PIXEL_NM, shape=SHAPE)
    strain, X = twin.noise.twin_measurement(ds, sigma_strain=SIGMA_STRAIN, sigma_X=SIGMA_X, rng=0)
    n_pix = int(ds.mask.sum())
    t_base, _ = _best_of(lambda: learning.fit_eigenstrain(strain, X, degree=1, n_boot=0))
    t_cv, m_cv = _best_of(lambda: learning.fit_eigenstrain(strain, X, n_boot=100, rng=0))
    t_full, m_full = _best_of(lambda: learning.fit_eigenstrain(strain, X, sigma_X=SIGMA_X, n_boot=100, rng=0), 1)
    t_dir, _ = _best_of(lambda: learning.fit_eigenstrain(strain, X, boundary="dirichlet", sigma_X=SIGMA_X,
                                                         n_boot=100, rng=0), 1)
    slope = m_full.derivative([0.5])[0] / [materials.VEGARD_AA, materials.VEGARD_CC] - 1
    print(f"particle: {SHAPE[0]}x{SHAPE[1]} px, {n_pix} pixels in the mask")
    print(f"baseline (degree 1, no CV/SIMEX/bootstrap): {t_base:7.2f} s")
    print(f"CV degree + 100 bootstrap:                  {t_cv:7.2f} s  ({t_cv / t_base:5.1f} x baseline)")
    print(f"CV degree + SIMEX + 100 bootstrap (free):   {t_full:7.2f} s  ({t_full / t_base:5.1f} x baseline)")
    print(f"same, boundary='dirichlet':                 {t_dir:7.2f} s  ({t_dir / t_base:5.1f} x baseline)")
    print(f"selected degree {m_full.degree}; slope error at X = 0.5 (a, c): {np.round(100 * slope, 2)} %")
    print(f"issue 7 target <= 30 s for the full fit: {'met' if t_full <= 30 else 'NOT met'}")


if __name__ == "__main__":
    main()
