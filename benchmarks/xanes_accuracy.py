"""Accuracy of chemomech.xanes.map_lithium on the idealised and the realistic twin stacks (issue 14 and 18).

Run with one thread, e.g.::

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/xanes_accuracy.py

For particle P3 on a 128 x 128 x 60 stack, two seeds each, prints: the RMS error of the
per-frame shifts (px), the fitted energy offset and reference broadening (eV, truth
0.3 / 0.35 on the realistic stack, 0 / 0.14 on the idealised one), RMS(X - X_true) and
the fraction within 1 sigma_X on the interior, and the median thickness ratio; then, on
the realistic stack, the same with the shifts smoothed across energy and without the
energy calibration, and with the flaws of issue 18 (an all-zero frame, the last six
columns NaN). Figures to report, not pass/fail tests (the tests assert the acceptance).
"""

from __future__ import annotations

import warnings

import numpy as np

from chemomech import twin, xanes
from chemomech.twin import ptycho


def _score(res, truth) -> str:
    m = truth.interior.values & res.mask.values
    err = (res.X - truth.X).values[m]
    sh = res.shifts.values - truth.shifts.values
    sh = sh[np.isfinite(sh).all(axis=1)]
    return (f"shift {np.sqrt(np.mean(sh**2)):.3f} px | E offset {res.attrs['energy_offset_ev']:+.3f} eV, "
            f"broadening {res.attrs['reference_broadening_ev']:.2f} eV | X RMS {np.sqrt(np.mean(err**2)):.4f}, "
            f"within 1 sigma {np.mean(np.abs(err) <= res.X_sigma.values[m]):.3f} | thickness ratio "
            f"{np.median(res.thickness.values[m] / truth.thickness.values[m]):.4f} | {m.sum()} px")


def main() -> None:
    p = twin.particle_set()["P3"]
    for preset in ("ideal", "realistic"):
        for seed in (1, 2):
            stack, truth = ptycho.simulate_stack(p, rng=seed, preset=preset)
            print(f"{preset:9s} seed {seed}: {_score(xanes.map_lithium(stack), truth)}")
    stack, truth = ptycho.simulate_stack(p, rng=1, preset="realistic")
    print(f"realistic, smooth_frames=3: {_score(xanes.map_lithium(stack, smooth_frames=3.0), truth)}")
    print(f"realistic, calibrate=False: {_score(xanes.map_lithium(stack, calibrate=False), truth)}")
    broken = stack.copy()
    broken[7] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        print(f"realistic, frame 7 all zero: {_score(xanes.map_lithium(broken), truth)}")
    cols = stack.copy()
    cols[:, :, -6:] = np.nan
    print(f"realistic, last 6 columns NaN: {_score(xanes.map_lithium(cols), truth)}")


if __name__ == "__main__":
    main()
