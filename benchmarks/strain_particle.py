"""Accuracy of measure_strain on a twin particle (uniform or dynamical disks), default template from the data.

Run single-threaded:
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/strain_particle.py [--dose 1e4] [--disks dynamical]

Simulates particle P1 of the twin on a 40 x 48 scan (128 x 128 detector, 300 kV, 0.4 mrad unless
--convergence) and prints, per method, the fraction of particle pixels measured and the pixel RMS strain
error relative to the truth, both referred to the median lattice of the whole particle.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from chemomech import strain
from chemomech.twin import particle_set, stem4d

KEYS = ("exx", "eyy", "exy", "theta")


def particle_scan(*, dose: float, disks: str, scan=(40, 48), convergence_mrad=0.4, rng=0, name="P1"):
    p = particle_set(mesh_nrefs=4)[name]
    setup = stem4d.DiffractionSetup(convergence_mrad=convergence_mrad)
    return stem4d.simulate_particle(p, scan_shape=scan, setup=setup, dose=dose, disks=disks, rng=rng)


def evaluate(res, sim):
    """Fraction of particle pixels measured and per-component pixel RMS error; reference = whole particle."""
    m = sim.mask.values
    truth = stem4d.relative_truth(sim, m & res.mask.values)
    ok = m & res.mask.values
    rms = {k: float(np.sqrt(np.mean((res[k].values - truth[k].values)[ok] ** 2))) for k in KEYS}
    return float(ok.sum() / m.sum()), rms


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dose", type=float, default=1e4)
    ap.add_argument("--disks", default="dynamical")
    ap.add_argument("--convergence", type=float, default=0.4, help="probe semi-angle, mrad")
    ap.add_argument("--methods", default="fast,plain")
    args = ap.parse_args()
    sim = particle_scan(dose=args.dose, disks=args.disks, convergence_mrad=args.convergence)
    cube = sim.datacube.values
    print(f"P1, {args.disks} disks, {args.convergence:g} mrad, dose {args.dose:g}, scan {cube.shape[:2]}, "
          f"{int(sim.mask.sum())} particle pixels")
    for method in args.methods.split(","):
        t0 = time.process_time()
        res = strain.measure_strain(cube, reference=sim.mask.values, method=method)
        dt = time.process_time() - t0
        frac, rms = evaluate(res, sim)
        print(f"{method:9s} {dt:6.1f} s  measured {frac:.3f}  worst RMS {max(rms.values()):.2e}  "
              + "  ".join(f"{k} {v:.1e}" for k, v in rms.items()))


if __name__ == "__main__":
    main()
