"""XANES tests added after mutation testing (benchmarks/mutation_triage.md)."""

from __future__ import annotations

import numpy as np
from numpy.testing import assert_allclose
from scipy.special import erf

from chemomech import xanes


def test_calibration_curve_default_k_grid_and_gaussian_errors():
    # default k: 0 to 3 sigma in steps of 0.05; for truly Gaussian errors of the stated sigma the observed
    # fraction follows erf(k / sqrt 2) to within its binomial scatter (n = 40000: SD <= 0.0025)
    rng = np.random.default_rng(19)
    truth = rng.uniform(0, 1, 40000)
    sigma = rng.uniform(0.01, 0.05, truth.size)
    c = xanes.calibration_curve(truth + rng.normal(0, sigma), sigma, truth)
    assert_allclose(c.k.values, np.arange(61) * 0.05, atol=1e-12)
    assert_allclose(c.gaussian.values, erf(c.k.values / np.sqrt(2)), atol=1e-12)
    assert np.abs(c.observed.values - c.gaussian.values).max() < 4 * 0.0025


def test_map_lithium_refuses_a_stack_that_is_not_energy_y_x():
    import pytest
    import xarray as xr

    flat = xr.DataArray(np.ones((5, 8)), dims=("energy", "x"), coords={"energy": np.linspace(700, 712, 5)})
    with pytest.raises(ValueError, match="stack"):
        xanes.map_lithium(flat)


def test_maps_sit_on_the_pixel_grid_of_the_stack():
    # X and thickness are maps of the same pixels as the stack: its y/x coordinates (nm) come along
    from chemomech import twin
    from chemomech.twin import ptycho

    particle = twin.make_particle("small", batch="biphasic", seed=5, semi_axes_nm=(75.0, 105.0))
    stack, _ = ptycho.simulate_stack(particle, shape=(44, 58), pixel_size_nm=5.0, rng=11)
    res = xanes.map_lithium(stack)
    for k in ("X", "thickness"):
        assert_allclose(res[k].y.values, stack.y.values)
        assert_allclose(res[k].x.values, stack.x.values)
