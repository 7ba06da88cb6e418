"""Accuracy of measure_strain on the dynamical twin: homogeneous strain states across a thickness wedge.

Run single-threaded:
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/strain_dynamical.py [--dose 1e5] [--disks dynamical]

A scan of 8 x 32 patterns (300 kV, 0.4 mrad unless --convergence, 128 x 128 px) whose thickness rises from 20 nm
(left) to 60 nm (right); the left 4 columns are the zero-strain reference, the next 7 blocks of 4
columns carry one homogeneous state each (exx ±1 %, eyy ±1 %, exy ±0.5 %, theta 1°: STATES).
Prints, per method, the worst region-median error and the pixel RMS error over the strained blocks.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from chemomech import strain
from chemomech.twin import stem4d

KEYS = ("exx", "eyy", "exy", "theta")
STATES = stem4d.WEDGE_STATES
BLOCK = 4


def wedge_scan(*, dose: float, disks: str, ny: int = 8, rng=0, convergence_mrad: float = 0.4):
    """Simulate the wedge scan; returns the simulation and the region label of every pixel (0 = reference)."""
    setup = stem4d.DiffractionSetup(convergence_mrad=convergence_mrad)
    return stem4d.simulate_wedge(block=BLOCK, rows=ny, setup=setup, dose=dose, disks=disks, rng=rng)


def errors(res, sim, region):
    """Worst |region median - truth| and pixel RMS error (over the strained blocks) per component."""
    truth = stem4d.relative_truth(sim, region == 0)
    out = {}
    for k in KEYS:
        err = res[k].values - truth[k].values
        med = max(abs(np.nanmedian(err[region == i])) for i in range(1, region.max() + 1))
        rms = float(np.sqrt(np.nanmean(err[region > 0] ** 2)))
        out[k] = (med, rms)
    meas = float(res.mask.values[region > 0].mean())
    return out, meas


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dose", type=float, default=1e5)
    ap.add_argument("--disks", default="dynamical")
    ap.add_argument("--convergence", type=float, default=0.4, help="probe semi-angle, mrad")
    ap.add_argument("--methods", default="fast,plain,py4dstem")
    ap.add_argument("--probe", action="store_true", help="give the vacuum probe as template")
    args = ap.parse_args()
    sim, region = wedge_scan(dose=args.dose, disks=args.disks, convergence_mrad=args.convergence)
    cube = sim.datacube.values
    print(f"{args.disks} disks, {args.convergence:g} mrad, dose {args.dose:g}, scan {cube.shape[:2]}, "
          "thickness 20-60 nm")
    for method in args.methods.split(","):
        t0 = time.process_time()
        res = strain.measure_strain(cube, reference=region == 0, method=method,
                                    probe=sim.probe.values if args.probe else None)
        dt = time.process_time() - t0
        e, meas = errors(res, sim, region)
        worst_med = max(v[0] for v in e.values())
        worst_rms = max(v[1] for v in e.values())
        print(f"{method:9s} {dt:6.1f} s  measured {meas:.3f}  worst median {worst_med:.2e}  worst RMS {worst_rms:.2e}  "
              + "  ".join(f"{k} {m:.1e}/{r:.1e}" for k, (m, r) in e.items()))


if __name__ == "__main__":
    main()
