"""Speed of measure_strain: the batched disk finder ("fast") against py4DSTEM disk detection, side by side.

Run single-threaded:
    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 .venv/bin/python benchmarks/strain_speed.py

Both paths analyse the same simulated datacube (32 x 32 = 1,024 patterns, 128 x 128 detector,
1e4 electrons per pattern) in one process; the script prints patterns per CPU-second of each,
their ratio (a ratio, not a pass/fail timer) and the accuracy of both against the simulator's
truth: the RMS strain error per component, and the RMS error of the disk positions predicted by the
fitted lattice against the true disk positions (px). py4DSTEM is imported before timing.

The patterns have dynamical disks (multislice contents, ``disks="dynamical"``; thickness rising from
20 nm on the left to 60 nm on the right, the left half being the reference; tilted by (1.0, -0.6)
mrad) unless ``--disks uniform`` is given (60 nm everywhere); the plain template fit
(``method="plain"``) is timed and scored alongside. ``--dose`` sets the electrons per pattern.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from chemomech import _py4dstem, strain
from chemomech.twin import stem4d

SCAN = (32, 32)      # 1,024 patterns
DOSE = 1e4           # electrons per pattern
KEYS = ("exx", "eyy", "exy", "theta")


def _run(cube, reference, method):
    t0 = time.process_time()
    res = strain.measure_strain(cube, reference=reference, method=method)
    return cube.shape[0] * cube.shape[1] / (time.process_time() - t0), res


def _lattice(exx, eyy, exy, theta):
    """(n, 2, 2) reciprocal basis in the scan frame (x, y) relative to the reference: G = F^-T."""
    f = np.stack([np.stack([1 + exx, exy - theta], -1), np.stack([exy + theta, 1 + eyy], -1)], -2)
    return np.swapaxes(np.linalg.inv(f), -1, -2)


def disk_position_rms(res, sim, reference, hk_max=4) -> float:
    """RMS error (px) of the disk positions predicted by measured vs true lattices, |h|, |k| <= hk_max."""
    g1, g2 = np.array(res.attrs["g1_xy_px"]), np.array(res.attrs["g2_xy_px"])
    g_ref = np.stack([g1, g2], axis=1)  # columns, px, scan frame (x, y)
    hk = np.stack(np.meshgrid(np.arange(-hk_max, hk_max + 1), np.arange(-hk_max, hk_max + 1)), -1).reshape(-1, 2)
    m = res.mask.values & ~reference
    meas = _lattice(*(res[k].values[m] for k in KEYS)) @ g_ref @ hk.T
    true = _lattice(*(sim[k].values[m] for k in KEYS)) @ g_ref @ hk.T
    return float(np.sqrt(np.mean(np.sum((meas - true) ** 2, axis=1))))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--disks", default="dynamical", choices=("dynamical", "uniform"))
    ap.add_argument("--dose", type=float, default=DOSE)
    args = ap.parse_args()
    _py4dstem._import()
    extra = {}
    if args.disks == "dynamical":
        # the scenario: thickness rising 20 -> 60 nm across the scan (reference = left half)
        extra = {"thickness_nm": np.linspace(20.0, 60.0, SCAN[1])[None].repeat(SCAN[0], 0),
                 "tilt_mrad": np.broadcast_to([1.0, -0.6], SCAN + (2,))}
    sim = stem4d.simulate_uniform(exx=0.01, eyy=-0.005, exy=0.003, theta=0.0175, scan_shape=SCAN,
                                  reference_columns=SCAN[1] // 2, dose=args.dose, rng=0, disks=args.disks,
                                  **extra)
    cube, ref = sim.datacube.values.astype(np.float32), sim.reference.values
    rates, results = {}, {}
    for method in ("fast", "plain", "py4dstem"):
        rates[method], results[method] = _run(cube, ref, method)
    sel = ~ref
    print(f"{cube.shape[0] * cube.shape[1]} patterns of {cube.shape[2]}x{cube.shape[3]} px, {args.disks} disks, "
          f"dose {args.dose:g} e-/pattern, one thread")
    for method, rate in rates.items():
        print(f"{method:9s}: {rate:8.1f} patterns per CPU-second")
    print(f"speed ratio fast / py4DSTEM = {rates['fast'] / rates['py4dstem']:.1f}   "
          f"plain / py4DSTEM = {rates['plain'] / rates['py4dstem']:.1f}")
    for k in KEYS:
        rms = {m: np.sqrt(np.mean((r[k].values - sim[k].values)[sel] ** 2)) for m, r in results.items()}
        print(f"RMS error {k:6s} " + "   ".join(f"{m} {v:.2e}" for m, v in rms.items()))
    pos = {m: disk_position_rms(r, sim, ref) for m, r in results.items()}
    print("disk-position RMS error (px, |h|,|k|<=4): " + "   ".join(f"{m} {v:.3f}" for m, v in pos.items()))


if __name__ == "__main__":
    main()
