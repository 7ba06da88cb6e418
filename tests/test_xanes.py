"""Tests of chemomech.xanes: references, vectorised NNLS, σ_X calibration, drift, map_lithium."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.optimize
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose
from scipy import ndimage

from chemomech import io, materials, twin, xanes
from chemomech.twin import ptycho
from chemomech.xanes import _nnls_offset

ENERGY = ptycho.energy_grid()


def _od_from_params(a, b, c, energy=ENERGY, refs=None):
    """OD cube (energy, y, x) of the model a*LFP + b*FP + c (a, b, c of shape (ny, nx))."""
    refs = xanes.reference_spectra() if refs is None else refs
    mu = refs.interp(energy=energy)
    od = (mu.LFP.values[:, None, None] * a + mu.FP.values[:, None, None] * b + c)
    return xr.DataArray(od, dims=("energy", "y", "x"), coords={"energy": energy})


@pytest.fixture(scope="module")
def small_particle():
    return twin.make_particle("small", batch="biphasic", seed=5, semi_axes_nm=(75.0, 105.0))


@pytest.fixture(scope="module")
def small_stack(small_particle):
    return ptycho.simulate_stack(small_particle, shape=(44, 58), pixel_size_nm=5.0, rng=11)


# --- references -----------------------------------------------------------------------


def test_reference_spectra_have_literature_peaks_ratios_and_scale():
    refs = xanes.reference_spectra()
    assert refs.LFP.attrs["units"] == "1/nm" and refs.energy.attrs["units"] == "eV"
    e = refs.energy.values
    lfp, fp = refs.LFP.values, refs.FP.values
    assert abs(e[np.argmax(lfp)] - 708.0) < 0.2  # Fe2+ main L3 peak
    assert abs(e[np.argmax(fp)] - 710.0) < 0.2  # Fe3+ main L3 peak
    at = refs.interp(energy=[708.0, 710.0])
    assert_allclose(float(at.LFP[1] / at.LFP[0]), 0.5, atol=0.02)
    assert_allclose(float(at.FP[1] / at.FP[0]), 2.1, atol=0.05)
    assert_allclose(100 * float(at.LFP[0]), 1.0, atol=0.01)  # 100 nm LiFePO4 -> OD 1 at 708 eV
    assert np.all(lfp > 0) and np.all(fp > 0)
    assert "not measured" in refs.attrs["source"]


def test_reference_background_and_edge_steps_are_the_tabulated_ones():
    # away from the white lines the model must give the tabulated (Chantler) absorption, so that
    # thicknesses are right in nm; the tails of the white lines add < 3 % at 700 eV
    tab = materials.TABULATED_ABSORPTION_PER_NM
    refs = xanes.reference_spectra()
    for k in ("LFP", "FP"):
        assert_allclose(float(refs[k].interp(energy=700.0)), tab[k]["pre_700"], rtol=0.03)
        # net step at 740 eV over the extrapolated pre-edge: L3 + L2 (the arctan steps are at 99 % there
        # and the model's own background is 1.4 % below the table: -3 %), plus what remains of the
        # white-line tails 17 eV past the L2 lines (< 10 % of the step)
        pre_740 = tab[k]["pre_700"] * (740.0 / 700.0) ** -tab["pre_exponent"]
        step = float(refs[k].interp(energy=740.0)) - pre_740
        assert 0.95 <= step / (tab[k]["L3_step"] + tab[k]["L2_step"]) <= 1.1
    # phase per nm from tabulated delta vs amplitude attenuation below the edge: ~3x, not ~10x
    assert 2.5 < materials.PHASE_PER_NM / (tab["LFP"]["pre_700"] / 2) < 4.0
    # Fe densities from the lattice parameters: FePO4 holds ~7 % more Fe per volume
    assert_allclose(materials.FE_DENSITY_RATIO_FP_LFP, 1.0697, atol=1e-4)


def test_reference_spectra_on_user_energies_and_bad_energies():
    refs = xanes.reference_spectra([700.0, 708.0, 712.0])
    assert refs.LFP.shape == (3,)
    with pytest.raises(ValueError, match="increasing"):
        xanes.reference_spectra([708.0, 700.0])
    with pytest.raises(ValueError, match="keV"):
        xanes.reference_spectra([0.700, 0.708])


# --- the vectorised NNLS ---------------------------------------------------------------


def test_vectorised_nnls_matches_scipy_on_random_pixels():
    rng = np.random.default_rng(0)
    mu = xanes.reference_spectra(ENERGY)
    A = np.column_stack([mu.LFP.values, mu.FP.values, np.ones(ENERGY.size)])
    # mixtures with negative "thickness" components and offsets of both signs: all active sets occur
    p_true = rng.normal(0, 40, (3, 400))
    p_true[2] = rng.normal(0, 0.2, 400)
    Y = A @ p_true + rng.normal(0, 0.05, (ENERGY.size, 400))
    W = rng.uniform(0.5, 2.0, Y.shape)
    for weights in (None, W):
        p, rss = _nnls_offset(A, Y, weights)
        n_active = 0
        for j in range(0, 400, 7):
            w = np.ones(ENERGY.size) if weights is None else weights[:, j]
            sw = np.sqrt(w)
            # c free = c_plus - c_minus, both >= 0
            Aj = np.column_stack([A[:, :2], A[:, 2], -A[:, 2]]) * sw[:, None]
            q, _ = scipy.optimize.nnls(Aj, Y[:, j] * sw)
            ref = np.array([q[0], q[1], q[2] - q[3]])
            assert_allclose(p[:, j], ref, atol=1e-6 * max(1.0, np.abs(ref).max()))
            assert_allclose(rss[j], np.sum(w * (A @ ref - Y[:, j]) ** 2), rtol=1e-8)
            n_active += int(np.any(ref[:2] == 0))
        assert n_active > 10  # the constraints were really exercised


@settings(max_examples=25, deadline=None)
@given(a=st.floats(0.0, 120.0), b=st.floats(0.0, 120.0), c=st.floats(-0.1, 0.1))
def test_fit_recovers_noise_free_mixtures_and_x_stays_in_unit_interval(a, b, c):
    od = _od_from_params(np.full((2, 3), a), np.full((2, 3), b), np.full((2, 3), c))
    fit = xanes.fit_spectra(od)
    r = materials.FE_DENSITY_RATIO_FP_LFP
    if a + b > 1.0:
        assert_allclose(fit.X_volume.values, a / (a + b), atol=1e-6)
        assert_allclose(fit.X.values, a / (a + r * b), atol=1e-6)  # molar fraction
        assert_allclose(fit.thickness.values, a + b, rtol=1e-6)
        assert_allclose(fit.offset.values, c, atol=1e-6)
    x = fit.X.values[np.isfinite(fit.X.values)]
    assert np.all((x >= 0) & (x <= 1))


def test_fit_maps_are_not_transposed():
    yy, xx = np.mgrid[:4, :7]
    a = 10.0 * xx  # varies along x only
    b = 5.0 + 3.0 * yy  # varies along y only
    fit = xanes.fit_spectra(_od_from_params(a, b, 0.0 * a))
    assert fit.X.dims == ("y", "x") and fit.X.shape == (4, 7)
    assert_allclose(fit.thickness.values, a + b, rtol=1e-6)
    assert_allclose(fit.X_volume.values, a / (a + b), atol=1e-6)


def test_sigma_x_is_calibrated_on_gaussian_noise():
    # known a, b, c with heteroscedastic (shot-like) noise; the fraction within k sigma is Gaussian
    rng = np.random.default_rng(3)
    ny, nx = 60, 70
    a = rng.uniform(10, 90, (ny, nx))
    b = rng.uniform(10, 90, (ny, nx))
    clean = _od_from_params(a, b, np.zeros((ny, nx)))
    sigma = 0.01 * np.exp(clean.values / 2)  # sigma_OD ~ exp(OD/2), as for shot or reconstruction noise
    od = clean + rng.normal(size=clean.shape) * sigma
    fit = xanes.fit_spectra(od)
    x_true = a / (a + materials.FE_DENSITY_RATIO_FP_LFP * b)  # molar
    z = (fit.X.values - x_true) / fit.X_sigma.values
    for k, expected in ((1, 0.683), (2, 0.954)):
        assert_allclose(np.mean(np.abs(z) <= k), expected, atol=0.02)  # 4200 px: binomial sd 0.007
    # an ordinary (unweighted) fit under-reports sigma_X on this noise
    z_u = (xanes.fit_spectra(od, weighting="uniform").X - x_true) / xanes.fit_spectra(
        od, weighting="uniform").X_sigma
    assert np.mean(np.abs(z_u.values) <= 1) < np.mean(np.abs(z) <= 1)


def test_sum_to_one_shortcut_clips_and_has_no_uncertainty():
    rng = np.random.default_rng(4)
    a = np.full((5, 6), 80.0)
    b = np.full((5, 6), 0.5)
    od = _od_from_params(a, b, 0 * a) + rng.normal(0, 0.02, (ENERGY.size, 5, 6))
    fit = xanes.fit_spectra(od, constraint="sum_to_one")
    assert np.all((fit.X.values >= 0) & (fit.X.values <= 1))
    assert np.mean(fit.X.values == 1.0) > 0.2  # pile-up at the bound
    assert np.all(np.isnan(fit.X_sigma.values))


def test_principal_components_count_the_spectral_components():
    rng = np.random.default_rng(5)
    a = rng.uniform(0, 80, (20, 25))
    b = rng.uniform(0, 80, (20, 25))
    od = _od_from_params(a, b, rng.normal(0, 0.05, (20, 25)))
    noisy = od + rng.normal(0, 0.01, od.shape)
    mask = np.ones((20, 25), bool)
    assert xanes.principal_components(noisy, mask=mask, noise=0.01).attrs["n_significant"] == 2
    # a third species (a Gaussian line at 715 eV) is detected
    third = np.exp(-0.5 * ((ENERGY - 715.0) / 1.0) ** 2)[:, None, None] * rng.uniform(0, 0.3, (20, 25))
    assert xanes.principal_components(noisy + third, mask=mask, noise=0.01).attrs["n_significant"] == 3


# --- drift -------------------------------------------------------------------------------


def test_estimate_drift_recovers_independent_frame_offsets_with_sign_and_axes(small_particle):
    e = ENERGY
    n = e.size
    rng = np.random.default_rng(21)
    shifts = np.zeros((n, 2))
    shifts[:, 0] = np.linspace(0, 2.5, n)  # y: +2.5 px over the scan
    shifts[:, 1] = -np.linspace(0, 1.2, n) ** 2  # x: curved, negative
    shifts[1:] += rng.uniform(-3.0, 3.0, (n - 1, 2))  # every frame its own reconstruction: jumps
    stack, truth = ptycho.simulate_stack(small_particle, shape=(44, 58), pixel_size_nm=5.0,
                                         shifts=shifts, rng=2)
    d = xanes.estimate_drift(stack)
    assert d.dims == ("energy", "axis") and list(d.axis.values) == ["y", "x"]
    assert d.attrs["units"] == "px"
    assert_allclose(d.values[0], 0.0)
    err = d.values - shifts
    assert np.sqrt(np.mean(err**2)) < 0.15  # acceptance: shift error <= 0.15 px RMS
    # the reported per-frame sigma is the statistical part only (residual noise through the
    # Gauss-Newton covariance): positive, and no larger than the actual error, which also holds
    # model mismatch (on this small 5 nm-pixel particle ~4x the statistical part)
    sig = d.attrs["sigma"][1:]
    assert np.all(sig > 0) and np.sqrt(np.mean(sig**2)) <= np.sqrt(np.mean(err[1:] ** 2))
    # the contrast flip fools raw-frame correlation; and smoothing across energy (the STXM option)
    # cannot follow independent jumps
    from chemomech.xanes import _absorbance, _xcorr_shift

    L = _absorbance(stack)
    raw = np.stack([_xcorr_shift(L[0], f, 50) for f in L])
    assert np.sqrt(np.mean((raw - shifts) ** 2)) > 2 * np.sqrt(np.mean(err**2))
    smooth = xanes.estimate_drift(stack, smooth_frames=3.0, refine=1)
    assert np.sqrt(np.mean((smooth.values - shifts) ** 2)) > 5 * np.sqrt(np.mean(err**2))


# --- map_lithium -------------------------------------------------------------------------


def test_map_lithium_small_stack(small_stack):
    stack, truth = small_stack
    before = stack.copy(deep=True)
    res = xanes.map_lithium(stack)
    assert_allclose(stack.values, before.values)  # input not modified
    assert set(res.data_vars) == {"X", "X_sigma", "thickness", "residual", "mask", "shifts", "shift_sigma"}
    for k in ("X", "X_sigma", "thickness", "residual"):
        assert res[k].dims == ("y", "x") and "units" in res[k].attrs and "long_name" in res[k].attrs
        assert np.all(np.isnan(res[k].values[~res.mask.values]))
        assert np.all(np.isfinite(res[k].values[res.mask.values]))
    assert res.thickness.attrs["units"] == "nm"
    assert res.shifts.dims == ("energy", "axis")
    m = truth.interior.values
    assert np.mean(res.mask.values[m]) >= 0.98
    err = (res.X - truth.X).values[m & res.mask.values]
    assert np.sqrt(np.mean(err**2)) < 0.04  # 5 nm pixels, smaller particle: a bit noisier than 0.03
    t_err = (res.thickness - truth.thickness).values[m & res.mask.values]
    assert abs(np.median(t_err)) < 3.0  # nm; the bandwidth lowers the white lines by ~1 %
    assert res.attrs["pca_n_significant"] == 2
    rim = ndimage.binary_dilation(truth.mask.values, iterations=1)
    assert not np.any(res.mask.values & ~rim)  # valid pixels outside the particle: partial rim pixels only


def test_map_lithium_without_alignment_is_worse_and_reports_zero_shifts(small_stack):
    stack, truth = small_stack
    res = xanes.map_lithium(stack, align=False)
    assert np.all(res.shifts.values == 0)
    aligned = xanes.map_lithium(stack)
    m = truth.interior.values
    rms = [np.sqrt(np.nanmean(((r.X - truth.X).values[m]) ** 2)) for r in (res, aligned)]
    assert rms[0] > 1.5 * rms[1]


def test_map_lithium_stxm_intensity_and_user_references(small_particle):
    stack, truth = ptycho.simulate_stack(small_particle, mode="stxm", shape=(44, 58), pixel_size_nm=5.0,
                                         rng=12)
    refs = xanes.reference_spectra(np.arange(695.0, 735.0, 0.1)) * 1000.0  # OD per um
    refs.attrs["source"] = "test"
    for k in ("LFP", "FP"):
        refs[k].attrs["units"] = "1/um"
    res = xanes.map_lithium(stack, references=refs)
    m = truth.interior.values & res.mask.values
    assert np.sqrt(np.mean(((res.X - truth.X).values[m]) ** 2)) < 0.02
    assert_allclose(np.nanmedian((res.thickness.values * 1000.0)[m] / truth.thickness.values[m]), 1.0, atol=0.03)
    assert res.attrs["references"] == "test"


def test_saturated_pixels_are_masked(small_particle):
    stack, truth = ptycho.simulate_stack(small_particle, shape=(44, 58), pixel_size_nm=5.0,
                                         thickness_scale=2.2, rng=13)
    res = xanes.map_lithium(stack)
    assert res.attrs["n_saturated"] > 50
    od = xanes.optical_density(stack, shifts=res.shifts)
    assert np.all(od.values[:, res.mask.values].max(axis=0) <= materials.OD_SATURATION)


def test_background_mask_is_used_and_checked(small_stack):
    stack, truth = small_stack
    bg = np.zeros(truth.mask.shape, bool)
    bg[:5, :] = True
    res = xanes.map_lithium(stack, background=bg)
    assert res.attrs["n_background"] <= bg.sum()
    with pytest.raises(ValueError, match="background"):
        xanes.map_lithium(stack, background=np.zeros_like(bg))
    with pytest.raises(ValueError, match="background covers the particle"):
        xanes.map_lithium(stack, background=truth.mask.values.copy())
    with pytest.raises(ValueError, match="background covers the particle"):
        xanes.map_lithium(stack, background=np.ones_like(bg))
    with pytest.raises(ValueError, match="background must have shape"):
        xanes.map_lithium(stack, background=bg[:, :-1])


def test_bad_stacks_raise_clear_errors(small_stack):
    stack, _ = small_stack
    with pytest.raises(ValueError, match="increasing"):
        xanes.map_lithium(stack.isel(energy=slice(None, None, -1)))
    with pytest.raises(ValueError, match="keV"):
        xanes.map_lithium(stack.assign_coords(energy=stack.energy / 1000.0))
    nan = stack.copy()
    nan[:] = np.nan
    with pytest.raises(ValueError, match="no usable frame"):
        xanes.map_lithium(nan)
    with pytest.raises(ValueError, match="dims"):
        xanes.map_lithium(stack.transpose("y", "x", "energy"))
    with pytest.raises(TypeError, match="stack"):
        xanes.map_lithium(stack.values)
    with pytest.raises(ValueError, match="energy"):
        xanes.map_lithium(stack.drop_vars("energy"))


def test_bad_references_raise_clear_errors(small_stack):
    stack, _ = small_stack
    refs = xanes.reference_spectra()
    with pytest.raises(ValueError, match="does not overlap"):
        xanes.map_lithium(stack, references=refs.assign_coords(energy=refs.energy + 100.0))
    with pytest.raises(ValueError, match="crop the stack"):
        xanes.map_lithium(stack, references=refs.sel(energy=slice(705.0, 740.0)))
    with pytest.raises(ValueError, match="LFP"):
        xanes.map_lithium(stack, references=refs[["FP"]])
    with pytest.raises(TypeError, match="references"):
        xanes.map_lithium(stack, references=refs.LFP)


def test_netcdf_round_trip(tmp_path, small_stack):
    stack, _ = small_stack
    res = xanes.map_lithium(stack, align=False)
    path = io.save_netcdf(res, tmp_path / "result.nc")
    raw = xr.open_dataset(path, engine="h5netcdf").load()   # the documented encoding on disk
    assert raw.mask.dtype == np.uint8 and raw.mask.attrs["flag_meanings"] == "outside inside"
    back = io.load_netcdf(path)
    assert back.mask.dtype == bool and np.array_equal(back.mask.values, res.mask.values)
    assert_allclose(back.X.values, res.X.values)
    assert_allclose(back.shifts.values, res.shifts.values)
    io.save_netcdf(stack.rename("stack"), tmp_path / "stack.nc")
    assert_allclose(io.read_stack(tmp_path / "stack.nc").values, stack.values)
    with pytest.raises(ValueError, match=".nc"):
        io.save_netcdf(res, tmp_path / "result.txt")


def _interior_x_acceptance(res, truth):
    """X on the particle interior: >= 98 % measured, RMS error <= 0.02, 60-80 % of pixels within 1 sigma.

    Returns the interior mask, the measured interior pixels and their X errors.
    """
    m = truth.interior.values
    assert np.mean(res.mask.values[m]) >= 0.98
    ok = m & res.mask.values
    err = (res.X - truth.X).values[ok]
    assert np.sqrt(np.mean(err**2)) <= 0.02
    assert 0.6 <= np.mean(np.abs(err) <= res.X_sigma.values[ok]) <= 0.8
    return m, ok, err


def test_acceptance_twin_particle_128px_60_energies():
    """Idealised stack (smooth drift): RMS(X - X_true) <= 0.02, 0.6-0.8 within 1 sigma, shifts <= 0.1 px."""
    p = twin.particle_set()["P3"]
    stack, truth = ptycho.simulate_stack(p, rng=1)
    assert stack.shape == (60, 128, 128)
    res = xanes.map_lithium(stack)
    _interior_x_acceptance(res, truth)
    assert np.sqrt(np.mean((res.shifts.values - truth.shifts.values) ** 2)) <= 0.1
    assert abs(res.attrs["energy_offset_ev"]) <= 0.05  # no calibration error in the idealised twin


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_acceptance_realistic_stack(seed):
    """Issue 14 acceptance on the realistic twin: independent per-frame offsets up to +-4 px, a 0.3 eV
    calibration offset, coarser resolution, flux jumps, phase ramps and edge ringing."""
    p = twin.particle_set()["P3"]
    stack, truth = ptycho.simulate_stack(p, rng=seed, preset="realistic")
    assert stack.shape == (60, 128, 128) and truth.attrs["energy_offset_ev"] == 0.3
    offsets = np.abs(np.diff(truth.shifts.values, axis=0))
    assert offsets.max() > 4.0  # real jumps between frames, not a drift
    res = xanes.map_lithium(stack)
    assert np.sqrt(np.mean((res.shifts.values - truth.shifts.values) ** 2)) <= 0.15
    assert abs(res.attrs["energy_offset_ev"] - 0.3) <= 0.05
    m, ok, err = _interior_x_acceptance(res, truth)
    rim = ndimage.binary_dilation(truth.mask.values, iterations=1)
    assert not np.any(res.mask.values & ~rim)  # no membrane specks, no ringing edge in the mask
    ratio = res.thickness.values[ok] / truth.thickness.values[ok]
    assert abs(np.median(ratio) - 1.0) <= 0.05  # thickness in nm, absolute
    # without the calibration the white lines sit 0.3 eV off: X and thickness are visibly worse
    raw = xanes.map_lithium(stack, calibrate=False)
    ok2 = m & raw.mask.values
    assert np.sqrt(np.mean(((raw.X - truth.X).values[ok2]) ** 2)) > 1.5 * np.sqrt(np.mean(err**2))


def test_calibration_curve_and_predict_od():
    rng = np.random.default_rng(8)
    truth = rng.uniform(0, 1, (40, 50))
    sigma = np.full(truth.shape, 0.05)
    c = xanes.calibration_curve(truth + rng.normal(0, 0.05, truth.shape), sigma, truth, k=[1.0, 2.0])
    assert_allclose(c.observed.values, [0.683, 0.954], atol=0.03)
    assert_allclose(c.gaussian.values, [0.6827, 0.9545], atol=1e-4)
    # sigma twice too small: the curve falls well below the Gaussian
    c2 = xanes.calibration_curve(truth + rng.normal(0, 0.1, truth.shape), sigma, truth, k=[1.0])
    assert float(c2.observed[0]) < 0.45
    with pytest.raises(ValueError, match="same shape"):
        xanes.calibration_curve(truth, sigma[:, :-1], truth)
    a = np.full((3, 4), 30.0)
    od = _od_from_params(a, 2 * a, 0.01 + 0 * a)
    pred = xanes.predict_od(xanes.fit_spectra(od), ENERGY[::2])
    assert pred.dims == ("energy", "y", "x") and pred.shape == (ENERGY[::2].size, 3, 4)
    assert_allclose(pred.values, od.values[::2], atol=1e-9)


def test_read_stack_rejects_unknown_files(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        io.read_stack(tmp_path / "missing.cxi")
    np.savez(tmp_path / "plain.npz", stack=np.ones((5, 3, 4)), energy=np.arange(700.0, 705.0))
    plain = io.read_stack(tmp_path / "plain.npz")
    assert plain.dims == ("energy", "y", "x") and plain.shape == (5, 3, 4)
    np.savez(tmp_path / "bad.npz", stack=np.ones((5, 3, 4)), energy=np.arange(705.0, 700.0, -1))
    with pytest.raises(ValueError, match="increasing"):
        io.read_stack(tmp_path / "bad.npz")
    (tmp_path / "stack.tif").write_bytes(b"0")
    with pytest.raises(ValueError, match=".cxi"):
        io.read_stack(tmp_path / "stack.tif")


# --- what users of MANTiS, Larch and TXM-Wizard expect -----------------------------------------


def _third_phase(e):
    """A third Fe species for the N-reference tests (magnetite-like: peaks between Fe2+ and Fe3+), OD/nm."""
    lor = lambda c, w: 1.0 / (1.0 + ((e - c) / (w / 2)) ** 2)  # noqa: E731
    step = 0.5 + np.arctan((e - 709.3) / 0.5) / np.pi
    return 0.0022 * (e / 700.0) ** -2.25 + 0.0045 * lor(708.4, 0.9) + 0.0065 * lor(709.6, 1.1) \
        + 0.0025 * lor(722.5, 2.0) + 0.0013 * step


def test_fit_components_recovers_three_component_mixtures():
    """Issue acceptance: a 3-reference fit recovers fractions within 0.03 RMS per component."""
    rng = np.random.default_rng(14)
    e = ENERGY
    ny, nx = 30, 40
    frac = rng.dirichlet((1.0, 1.0, 1.0), ny * nx).T.reshape(3, ny, nx)
    t = rng.uniform(60.0, 100.0, (ny, nx))
    # data: the twin's own evaluation of LFP/FP (beamline bandwidth 0.14 eV) and the third phase broadened
    # by the same bandwidth on a fine grid here; references: the analysis tabulation, unbroadened
    s = ptycho.model_spectra(e, bandwidth_ev=0.14)
    fine = np.arange(690.0, 740.0, 0.01)
    third = np.interp(e, fine, ndimage.gaussian_filter1d(_third_phase(fine), 0.14 / 2.3548 / 0.01))
    mus = np.stack([s.LFP.values, s.FP.values, third])
    od = np.einsum("ke,kyx->eyx", mus, frac * t) + 0.02 + rng.normal(0, 0.01, (e.size, ny, nx))
    od = xr.DataArray(od, dims=("energy", "y", "x"), coords={"energy": e})
    refs = xanes.reference_spectra()
    refs["Fe3O4"] = ("energy", _third_phase(refs.energy.values))
    cal = xanes.calibrate_references(od, references=refs)  # resolution of the data, no energy offset
    assert abs(cal.attrs["energy_offset_ev"]) < 0.03 and abs(cal.attrs["broadening_ev"] - 0.14) < 0.1
    fit = xanes.fit_components(od, cal)
    for i, k in enumerate(("LFP", "FP", "Fe3O4")):
        rms = np.sqrt(np.mean((fit[f"fraction_{k}"].values - frac[i]) ** 2))
        assert rms <= 0.03, (k, rms)
    assert_allclose(np.median(fit.total.values / t), 1.0, atol=0.03)  # thickness in nm
    with pytest.raises(ValueError, match="cover"):
        xanes.fit_components(od, refs.sel(energy=slice(705, 740)))
    with pytest.raises(TypeError, match="references"):
        xanes.fit_components(od, refs.LFP)


def test_normalise_edge_removes_thickness_and_mixes_linearly():
    refs = xanes.reference_spectra()
    mu = refs.interp(energy=ENERGY)
    a = np.linspace(0.0, 80.0, 9)[None, :]
    b = 80.0 - a
    od = xr.DataArray(mu.LFP.values[:, None, None] * a + mu.FP.values[:, None, None] * b,
                      dims=("energy", "y", "x"), coords={"energy": ENERGY})
    n = xanes.normalise_edge(od * 1.7)
    n1 = xanes.normalise_edge(od)
    assert_allclose(n.values, n1.values, atol=1e-9)  # thickness drops out
    # a constant pre-edge level: the tabulated E^-2.25 background and the white lines' tails leave
    # < 10 % of the step over 700-705 eV
    assert np.abs(n1.sel(energy=slice(700, 705)).values).max() < 0.1
    assert_allclose(n1.sel(energy=slice(726, 730)).mean("energy").values, 1.0, atol=1e-9)
    # normalised fractions are edge-step weighted: a s_L / (a s_L + b s_F), s = each reference's step
    fit = xanes.fit_components(od, refs, normalise=True)
    s_l, s_f = (xanes.normalise_edge(mu[k].expand_dims(y=1, x=1).transpose("energy", "y", "x"))
                .edge_step.values.item() for k in ("LFP", "FP"))
    assert_allclose(fit.fraction_LFP.values, a * s_l / (a * s_l + b * s_f), atol=1e-6)
    # the L2 white-line tails make FePO4's post-edge level ~1.16x LiFePO4's, not the 1.07 of the Fe
    # densities: normalised L-edge fits are not molar fractions
    assert s_f / s_l - materials.FE_DENSITY_RATIO_FP_LFP > 0.05


def test_cluster_spectra_finds_the_regions_and_their_spectra():
    rng = np.random.default_rng(15)
    ny, nx = 24, 36
    region = np.zeros((ny, nx), int)
    region[:, 12:24], region[:, 24:] = 1, 2  # LFP, 50/50, FP (columns)
    xv = np.choose(region, [1.0, 0.5, 0.0])
    t = rng.uniform(50.0, 110.0, (ny, nx))  # thickness varies: clusters must follow shape, not thickness
    s = ptycho.model_spectra(ENERGY)
    od = (s.LFP.values[:, None, None] * xv * t + s.FP.values[:, None, None] * (1 - xv) * t
          + rng.normal(0, 0.01, (ENERGY.size, ny, nx)))
    od = xr.DataArray(od, dims=("energy", "y", "x"), coords={"energy": ENERGY})
    c = xanes.cluster_spectra(od, mask=np.ones((ny, nx), bool), n_clusters=3, rng=0)
    # numbered by increasing edge energy: LiFePO4 (Fe2+) first, FePO4 last
    assert np.mean(c.labels.values == region) >= 0.98
    assert c.explained_variance_ratio.values[0] > 0.9
    pure = xanes.cluster_spectra(od, mask=region == 0, n_clusters=1, rng=0).mean_spectrum.values[0]
    assert_allclose(c.mean_spectrum.values[0], pure, atol=0.02 * pure.max())
    again = xanes.cluster_spectra(od, mask=np.ones((ny, nx), bool), n_clusters=3, rng=7)
    assert np.array_equal(again.labels.values, c.labels.values)  # numbering independent of the seed


def test_edge_energy_falls_with_lithium_fraction():
    s = ptycho.model_spectra(ENERGY)
    x = np.linspace(0.0, 1.0, 11)[None, :]
    od = xr.DataArray(60.0 * (s.LFP.values[:, None, None] * x + s.FP.values[:, None, None] * (1 - x)),
                      dims=("energy", "y", "x"), coords={"energy": ENERGY})
    ee = xanes.edge_energy(od).values[0]
    assert np.all(np.diff(ee) < 0)  # monotonic: Fe2+ lies lower
    assert 0.7 < ee[0] - ee[-1] < 2.0  # centroids of the L3 lines 708 / 710 eV, with the step
    cr = xanes.edge_energy(od, method="crossing").values[0]
    assert cr[0] > cr[-1]
    with pytest.raises(ValueError, match="method"):
        xanes.edge_energy(od, method="peak")
