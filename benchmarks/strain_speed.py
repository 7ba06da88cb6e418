"""Speed of measure_strain: batched template fitting ("fast") against py4DSTEM disk detection.

Run with one thread:  OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/strain_speed.py
Both methods analyse the same simulated datacube in one process; the script prints patterns per
CPU-second of each and their ratio (a ratio, not a pass/fail timer). py4DSTEM is imported before
timing so that its import cost is not counted.
"""

from __future__ import annotations

import time

import numpy as np

from chemomech import _py4dstem, stem4d, strain

SCAN = (12, 16)      # 192 patterns, 128 x 128 detector
DOSE = 1e4           # electrons per pattern


def _rate(cube, reference, method):
    t0 = time.process_time()
    res = strain.measure_strain(cube, reference=reference, method=method)
    dt = time.process_time() - t0
    return cube.shape[0] * cube.shape[1] / dt, res


def main():
    _py4dstem._import()
    sim = stem4d.simulate_uniform(exx=0.01, eyy=-0.005, exy=0.003, theta=0.0175, scan_shape=SCAN,
                                  reference_columns=SCAN[1] // 2, dose=DOSE, rng=0)
    cube, ref = sim.datacube.values, sim.reference.values
    fast, res_f = _rate(cube, ref, "fast")
    slow, res_p = _rate(cube, ref, "py4dstem")
    sel = ~ref
    print(f"{cube.shape[0] * cube.shape[1]} patterns of {cube.shape[2]}x{cube.shape[3]} px, dose {DOSE:g}")
    print(f"fast     : {fast:7.1f} patterns per CPU-second")
    print(f"py4dstem : {slow:7.1f} patterns per CPU-second")
    print(f"ratio fast / py4dstem = {fast / slow:.1f}")
    for k in ("exx", "eyy", "exy", "theta"):
        print(f"{k:6s} std fast {np.std(res_f[k].values[sel]):.1e}  py4dstem {np.std(res_p[k].values[sel]):.1e}")


if __name__ == "__main__":
    main()
