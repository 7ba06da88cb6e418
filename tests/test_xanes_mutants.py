"""XANES tests added after mutation testing (benchmarks/mutation_triage.md)."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
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


def test_calibrate_references_with_zero_ranges_holds_the_scale_fixed():
    # max_offset_ev=0 / max_broadening_ev=0 switch that part of the calibration off (documented as a search
    # range of +-0 eV): a stack that is truly 0.2 eV off is then read at offset 0, while the other part is fitted
    e = np.arange(700.0, 730.0, 0.25)
    true = xanes.reference_spectra(e + 0.2)
    a, b = np.meshgrid(np.linspace(10, 80, 6), np.linspace(5, 70, 5))
    od = xr.DataArray(true.LFP.values[:, None, None] * a + true.FP.values[:, None, None] * b,
                      dims=("energy", "y", "x"), coords={"energy": e})
    held = xanes.calibrate_references(od, max_offset_ev=0.0)
    assert held.attrs["energy_offset_ev"] == 0.0
    free = xanes.calibrate_references(od, max_broadening_ev=0.0)
    assert free.attrs["broadening_ev"] == 0.0
    assert abs(free.attrs["energy_offset_ev"] - 0.2) < 0.02  # noise-free: the offset grid + Nelder-Mead, xatol 2 meV


def test_cluster_spectra_needs_more_pixels_than_components():
    # PCA with k components needs at least k + 1 spectra (k differences from their mean); fewer is refused,
    # naming how many pixels the mask gave and how many are needed, even when there are enough for the clusters
    e = np.arange(700.0, 730.0, 0.5)
    refs = xanes.reference_spectra(e)
    od = xr.DataArray(np.broadcast_to((refs.LFP.values + refs.FP.values)[:, None, None] * 50.0, (e.size, 4, 4)),
                      dims=("energy", "y", "x"), coords={"energy": e})
    mask = np.zeros((4, 4), bool)
    mask[0, :3] = True  # 3 pixels: enough for 2 clusters, not for 3 components
    with pytest.raises(ValueError, match="3 pixels with finite spectra; need at least 4"):
        xanes.cluster_spectra(od, mask=mask, n_components=3, n_clusters=2, rng=0)


def test_calibrate_references_names_the_wrong_reference_type():
    e = np.arange(700.0, 730.0, 0.25)
    od = xr.DataArray(np.ones((e.size, 3, 3)), dims=("energy", "y", "x"), coords={"energy": e})
    with pytest.raises(TypeError, match="references must be an xarray.Dataset, got DataArray"):
        xanes.calibrate_references(od, references=xanes.reference_spectra().LFP)


def test_normalise_edge_with_a_sloped_pre_edge_line():
    # an edge step of 2 (times a thickness per pixel) on a linear background: with pre_slope=True the fitted
    # pre-edge line is subtracted and the step divided out, so the result is 0 before the edge and 1 after
    # it, exactly (the erf edge at 712 eV is < 1e-15 of its step in the 700-705 eV pre-edge range)
    e = np.arange(695.0, 735.0, 0.5)
    edge = 0.5 * (1 + erf((e - 712.0) / 1.0))
    t = np.array([1.0, 2.5, 4.0])
    od = (2.0 * edge[:, None] + 0.3 + 0.01 * (e - 700.0)[:, None]) * t
    od = xr.DataArray(od.reshape(e.size, 1, 3), dims=("energy", "y", "x"), coords={"energy": e})
    n = xanes.normalise_edge(od, pre_slope=True).values[:, 0, :]
    pre, post = (e >= 700) & (e <= 705), (e >= 726) & (e <= 730)
    assert_allclose(n[pre], 0.0, atol=1e-9)
    assert_allclose(n[post], 1.0, atol=1e-9)
    assert_allclose(n, np.broadcast_to(edge[:, None], n.shape), atol=1e-9)  # linear background removed everywhere


def test_principal_components_results_carry_units():
    # API contract (shared/api.md): result variables carry attrs units and long_name
    e = np.arange(700.0, 730.0, 0.5)
    od = xr.DataArray(np.random.default_rng(0).normal(size=(e.size, 5, 5)), dims=("energy", "y", "x"),
                      coords={"energy": e})
    pca = xanes.principal_components(od, mask=np.ones((5, 5), bool), n_components=3)
    for name, var in pca.data_vars.items():
        assert "units" in var.attrs and var.attrs.get("long_name"), name
    assert set(pca.data_vars) == {"explained_variance_ratio", "singular_value"}  # the documented names
    sv = pca["singular_value"].values
    assert sv.shape == (3,) and np.all(np.diff(sv) <= 0) and sv[-1] > 0


def test_principal_components_names_a_bad_mask():
    e = np.arange(700.0, 730.0, 0.5)
    od = xr.DataArray(np.random.default_rng(0).normal(size=(e.size, 4, 4)), dims=("energy", "y", "x"),
                      coords={"energy": e})
    with pytest.raises(ValueError, match=r"^mask\b"):
        xanes.principal_components(od, mask=np.zeros((4, 4), bool))  # no pixel: needs at least 2


def test_cluster_spectra_results_carry_units_and_names():
    # API contract (shared/api.md): every result variable has attrs units and long_name (the input's energy
    # coordinate is carried through as given)
    e = np.arange(700.0, 730.0, 0.5)
    refs = xanes.reference_spectra(e)
    x = np.random.default_rng(1).uniform(0, 1, (6, 6))
    od = xr.DataArray(refs.LFP.values[:, None, None] * x * 50 + refs.FP.values[:, None, None] * (1 - x) * 50,
                      dims=("energy", "y", "x"), coords={"energy": e})
    c = xanes.cluster_spectra(od, mask=np.ones((6, 6), bool), n_clusters=2, rng=0)
    for name, var in c.data_vars.items():
        assert "units" in var.attrs and var.attrs.get("long_name"), name


def test_fit_components_maps_are_on_the_pixel_grid():
    e = np.arange(700.0, 730.0, 0.5)
    refs = xanes.reference_spectra()
    mu = refs.interp(energy=e)
    a = np.linspace(10.0, 70.0, 12).reshape(3, 4)
    od = xr.DataArray(mu.LFP.values[:, None, None] * a + mu.FP.values[:, None, None] * (80.0 - a),
                      dims=("energy", "y", "x"),
                      coords={"energy": e, "y": [0.0, 5.0, 10.0], "x": [0.0, 5.0, 10.0, 15.0]})
    fit = xanes.fit_components(od, refs)
    for k in ("fraction_LFP", "fraction_FP", "total"):
        assert fit[k].dims == ("y", "x"), k
    np.testing.assert_allclose(fit["fraction_LFP"].values, a / 80.0, atol=1e-6)  # exact mixtures, noise-free


def test_reference_spectra_names_a_bad_energy_grid():
    with pytest.raises(ValueError, match=r"^energy\b"):
        xanes.reference_spectra([[700.0, 701.0]])
    with pytest.raises(ValueError, match=r"^energy\b"):
        xanes.reference_spectra([700.0, np.nan])


def test_weighted_frame_smoothing_keeps_a_linear_drift_under_uneven_weights():
    # the opt-in drift smoother (map_lithium smooth_frames=) is a local *linear* Gaussian fit: a drift that is
    # linear in the frame index must come back exactly, whatever the per-frame weights (a weighted mean would
    # be pulled towards the heavy frames at the ends). Exact up to rounding.
    k = np.arange(30, dtype=float)
    drift = np.stack([0.05 * k - 1.0, -0.02 * k + 0.3], axis=1)
    w = np.random.default_rng(3).uniform(0.1, 5.0, size=30)
    assert_allclose(xanes._weighted_smooth(drift, w, 4.0), drift, atol=1e-9)
    assert xanes._weighted_smooth(drift, w, 0.0) is drift  # sigma 0: no smoothing


def test_calibrate_false_leaves_the_references_alone():
    # calibrate=False means the references are used as given: no energy offset or broadening may be fitted,
    # whatever the alignment rounds do (the simulated beamline resolution is coarser than the references', so a
    # calibration finds a broadening: 0.11 eV on the same stack with calibrate=True)
    from chemomech import twin
    from chemomech.twin import ptycho

    particle = twin.make_particle("small", batch="biphasic", seed=5, semi_axes_nm=(75.0, 105.0))
    stack, _ = ptycho.simulate_stack(particle, shape=(44, 58), pixel_size_nm=5.0, rng=11)
    raw = xanes.map_lithium(stack, calibrate=False)
    assert raw.attrs["energy_offset_ev"] == 0.0 and raw.attrs["reference_broadening_ev"] == 0.0
    assert xanes.map_lithium(stack).attrs["reference_broadening_ev"] > 0.05


def test_principal_components_noise_per_energy_equals_the_same_noise_per_point():
    # noise given once per energy (n_E,) means that value at every pixel: whitening must give exactly what the
    # full (n_E, ny, nx) array of the same values gives, and an energy-dependent noise must change the result
    refs = xanes.reference_spectra(np.arange(700.0, 730.0, 0.5))
    rng = np.random.default_rng(2)
    a, b = rng.uniform(0, 80, (2, 300))
    spec = refs.LFP.values[:, None] * a + refs.FP.values[:, None] * b
    sigma_e = np.linspace(0.005, 0.02, refs.sizes["energy"])
    spec = spec + rng.normal(0, 1, spec.shape) * sigma_e[:, None]
    od = xr.DataArray(spec.reshape(-1, 15, 20), dims=("energy", "y", "x"), coords={"energy": refs.energy.values})
    m = np.ones((15, 20), bool)
    per_e = xanes.principal_components(od, mask=m, noise=sigma_e)
    full = xanes.principal_components(od, mask=m, noise=np.broadcast_to(sigma_e[:, None, None], od.shape))
    assert_allclose(per_e.singular_value.values, full.singular_value.values, rtol=1e-12)
    assert per_e.attrs["n_significant"] == full.attrs["n_significant"] == 2
    flat = xanes.principal_components(od, mask=m, noise=float(sigma_e.mean()))
    assert not np.allclose(flat.singular_value.values, per_e.singular_value.values, rtol=1e-3)
