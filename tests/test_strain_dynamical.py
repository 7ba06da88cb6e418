"""measure_strain on the dynamical twin: disks filled with their multislice contents (issue 13).

The scans come from ``stem4d.simulate_fields(..., disks="dynamical")``, whose disk contents are the
abTEM plane-wave library of :mod:`chemomech.twin.cbed` (thickness, composition and tilt dependent);
the analysis never sees the library. Acceptance numbers are the issue's; where the method does not
reach one, the test is an ``xfail(strict=True)`` that states the measured value, so it turns red
when the number changes either way.
"""

from __future__ import annotations

import numpy as np
import pytest

from chemomech import evaluate, strain
from chemomech.twin import particle_set, stem4d

KEYS = ("exx", "eyy", "exy", "theta")
STATES = stem4d.WEDGE_STATES  # +-1 % normal, +-0.5 % shear, 1 degree rotation
BLOCK = 4  # scan columns per state


def _wedge(dose, disks, ny=8, rng=0):
    """Thickness 20 -> 60 nm from left to right; reference = the 4 leftmost columns (thinnest)."""
    return stem4d.simulate_wedge(block=BLOCK, rows=ny, dose=dose, disks=disks, rng=rng)


def _errors(res, sim, region):
    """Worst |region median - truth| and worst pixel RMS error over the strained blocks."""
    return evaluate.region_errors(res, stem4d.relative_truth(sim, region == 0), region, KEYS)


@pytest.fixture(scope="module")
def wedge_1e5():
    sim, region = _wedge(1e5, "dynamical")
    res = {m: strain.measure_strain(sim.datacube.values, reference=region == 0, method=m)
           for m in ("fast", "plain", "py4dstem")}
    return sim, region, res


def test_dynamical_wedge_pixel_rms_and_py4dstem(wedge_1e5):
    sim, region, res = wedge_1e5
    err = {m: _errors(r, sim, region) for m, r in res.items()}
    assert all(r.mask.values.all() for r in res.values())
    assert err["fast"][1] <= 5e-4, err  # issue acceptance: pixel RMS <= 5e-4 at 1e5 e-
    assert err["fast"][1] <= err["py4dstem"][1], err  # issue acceptance: default <= py4DSTEM on the same data


def test_dynamical_wedge_edge_fit_removes_most_of_the_content_bias(wedge_1e5):
    # measured: worst region-median error 1.4e-4 (fast) against 1.9e-3 (plain template fit), 2.8e-3
    # (py4DSTEM); require at least a five-fold reduction
    sim, region, res = wedge_1e5
    med = {m: _errors(r, sim, region)[0] for m, r in res.items()}
    assert med["fast"] * 5 <= min(med["plain"], med["py4dstem"]), med


def test_dynamical_wedge_region_medians_within_2e4(wedge_1e5):
    # issue acceptance: every region median within 2e-4 of truth at 1e5 e- (measured 1.4e-4 with the
    # sampled-profile, weighted edge fit and outlier rejection in units of each disk's position error;
    # 1.7e-4 with rejection in px, 2.2e-4 least-squares edge fit). Counting noise in the 32-pixel medians
    # is part of this number: on the same wedge at seeds 1-6 the worst median is 0.8-2.3e-4 (mean
    # 1.5e-4, one seed of six above 2e-4; 0.8-2.6e-4, mean 1.7e-4 with rejection in px)
    sim, region, res = wedge_1e5
    assert _errors(res["fast"], sim, region)[0] <= 2e-4


def test_uniform_disks_cost_little_precision():
    # on uniform disks the content priors estimated from the data are small (~0.08), so the robust
    # fit is about as precise as the plain template fit (measured RMS 6.6e-4 vs 7.5e-4 at 1e4 e- with
    # the weighted step; 8.0e-4 vs 7.5e-4 without it): allow 25 % (the price of the free background
    # plane and the residual content freedom)
    sim, region = _wedge(1e4, "uniform", rng=1)
    rms = {m: _errors(strain.measure_strain(sim.datacube.values, reference=region == 0, method=m), sim, region)[1]
           for m in ("fast", "plain")}
    assert rms["fast"] <= 1.25 * rms["plain"], rms


@pytest.fixture(scope="module")
def particle_1e4():
    p = particle_set(mesh_nrefs=4)["P1"]
    sim = stem4d.simulate_particle(p, scan_shape=(40, 48), dose=1e4, disks="dynamical", rng=0)
    res = strain.measure_strain(sim.datacube.values, reference=sim.mask.values)
    ok = sim.mask.values & res.mask.values
    truth = stem4d.relative_truth(sim, ok)
    rms = max(float(np.sqrt(np.mean((res[k].values - truth[k].values)[ok] ** 2))) for k in KEYS)
    return ok.sum() / sim.mask.values.sum(), rms, res, sim


def test_dynamical_particle_1e4_is_measured(particle_1e4):
    frac, rms, res, sim = particle_1e4
    assert frac >= 0.98  # issue acceptance
    assert not (res.mask.values & ~sim.mask.values).any()


def test_dynamical_particle_1e4_pixel_rms(particle_1e4):
    # issue acceptance: pixel RMS <= 1e-3 at 1e4 e- (worst component). Measured 9.8e-4 (exx), counting noise
    # dominating (bias ~2e-4 from seeds 1-2); at seeds 1-3, which chose the method: 9.1, 9.1, 8.8e-4.
    # Before the lattice fit's outlier rejection in units of each disk's position error: 1.04e-3 here
    # (seeds 1-3: 1.00, 0.99, 0.94e-3); plain template fit 1.17e-3
    assert particle_1e4[1] <= 1e-3
