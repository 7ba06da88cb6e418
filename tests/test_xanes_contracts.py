"""Contracts of chemomech.xanes, function by function: whole error messages, output metadata, validation
bounds, documented options and small hand-checked numerics (issue 19; benchmarks/mutation_dev/).

Every input is small (a few hundred pixels, <= 60 energies) so that the file runs in seconds.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import scipy.optimize
import xarray as xr
from numpy.testing import assert_allclose, assert_array_equal
from scipy.special import erf, wofz

from chemomech import materials, xanes

E = np.arange(700.0, 730.0, 0.5)  # 60 energies across the Fe L3/L2 edges
E5 = np.array([700.0, 705.0, 708.0, 710.0, 720.0])


def _raises(exc, message, func, *args, **kwargs):
    """Call func and check the exception type and the *whole* message (re.fullmatch)."""
    with pytest.raises(exc) as info:
        func(*args, **kwargs)
    assert re.fullmatch(message, str(info.value)), str(info.value)


def _od(a, b, c=0.0, energy=E, refs=None):
    """OD cube a*LFP + b*FP + c (a, b, c broadcast to (ny, nx)) from the tabulated references."""
    refs = xanes.reference_spectra(energy) if refs is None else refs
    a, b, c = np.broadcast_arrays(np.asarray(a, float), np.asarray(b, float), np.asarray(c, float))
    data = refs.LFP.values[:, None, None] * a + refs.FP.values[:, None, None] * b + c
    return xr.DataArray(data, dims=("energy", "y", "x"), coords={"energy": energy})


def _stack(values, energy=E5):
    return xr.DataArray(values, dims=("energy", "y", "x"), coords={"energy": energy})


# ============================================================== a small particle, built by hand
NY, NX = 22, 26


def _particle_maps():
    """A disc of thickness 60 nm, LFP on its left half, plus one isolated 1-px speck of thickness 40 nm."""
    yy, xx = np.mgrid[:NY, :NX]
    disc = (yy - 11.0) ** 2 + (xx - 13.0) ** 2 <= 6.5**2
    lfp = np.where(disc & (xx < 13), 60.0, 0.0)
    fp = np.where(disc & (xx >= 13), 60.0, 0.0)
    speck = np.zeros((NY, NX), bool)
    speck[2, 23] = True
    fp[speck] = 40.0
    return disc, speck, lfp, fp


@pytest.fixture(scope="module")
def hand_stack():
    """Transmitted intensity I0(E) exp(-OD) with 0.2 % noise, real (STXM-like), 60 energies."""
    disc, speck, lfp, fp = _particle_maps()
    od = _od(lfp, fp).values
    i0 = 1000.0 * (1.0 + 0.005 * (E - 700.0))
    rng = np.random.default_rng(121)
    inten = i0[:, None, None] * np.exp(-od) * (1.0 + rng.normal(0.0, 0.002, od.shape))
    stack = _stack(inten, E).assign_coords(y=("y", 8.0 * np.arange(NY), {"units": "nm"}),
                                           x=("x", 8.0 * np.arange(NX), {"units": "nm"}))
    return stack, disc, speck, lfp, fp


@pytest.fixture(scope="module")
def hand_map(hand_stack):
    stack = hand_stack[0]
    return xanes.map_lithium(stack, align=False, calibrate=False)


# ============================================================== reference_spectra / _model_spectrum


def _voigt_peak(x, fwhm_g, fwhm_l):
    """Voigt profile normalised to 1 at its centre, from the Faddeeva function (independent of scipy's voigt)."""
    s = fwhm_g / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    g = fwhm_l / 2.0

    def v(t):
        return np.real(wofz((t + 1j * g) / (s * np.sqrt(2.0))))

    return v(np.asarray(x, float)) / v(0.0)


def test_reference_spectra_follow_the_documented_model_term_by_term():
    model = materials.FE_L_EDGE_MODEL
    e = np.array([690.0, 700.0, 706.3, 708.0, 709.1, 710.0, 712.5, 721.0, 724.0, 739.9])
    refs = xanes.reference_spectra(e)
    for phase in ("LFP", "FP"):
        spec = model[phase]
        want = spec["pre"] * (e / 700.0) ** -model["pre_exponent"]
        for c, h, gf, lf in spec["peaks"]:
            want = want + h * _voigt_peak(e - c, gf, lf)
        for c, h, w in spec["steps"]:
            want = want + h * (0.5 + np.arctan(2.0 * (e - c) / w) / np.pi)
        assert_allclose(refs[phase].values, want, rtol=1e-9, err_msg=phase)


def test_reference_spectra_default_grid_and_metadata():
    refs = xanes.reference_spectra()
    e = refs.energy.values
    assert e.size == 1001 and e[0] == 690.0 and e[-1] == 740.0
    assert_allclose(np.diff(e), 0.05, atol=1e-9)
    assert dict(refs.energy.attrs) == {"units": "eV", "long_name": "photon energy"}
    assert list(refs.data_vars) == ["LFP", "FP"]
    for k in ("LFP", "FP"):
        assert refs[k].dims == ("energy",)
        assert dict(refs[k].attrs) == {"units": "1/nm", "long_name": f"{k} absorption per nm"}
    assert refs.attrs == {"source": "chemomech Fe L-edge model (Voigt peaks at literature positions, "
                                    "OD(710)/OD(708) = 0.50 LiFePO4, 2.12 FePO4); not measured data"}
    # user energies: exactly those, as floats (integers accepted)
    user = xanes.reference_spectra([700, 710, 720])
    assert user.energy.dtype == float and user.energy.values.tolist() == [700.0, 710.0, 720.0]
    assert_allclose(user.LFP.values, refs.LFP.sel(energy=[700.0, 710.0, 720.0]).values, rtol=1e-12)


ENERGIES_MSG = (r"energy energies must be strictly increasing \(eV\); got .*; "
                r"sort the stack with \.sortby\('energy'\) and drop duplicates")


@pytest.mark.parametrize("energy, exc, message", [
    ([710.0, 700.0], ValueError, ENERGIES_MSG),
    ([700.0, 700.0, 710.0], ValueError, ENERGIES_MSG),
    ([0.70, 0.71], ValueError, r"energy energies look like keV \(max 0\.71\); give energies in eV"),
    ("700", TypeError, r"energy must be an array of numbers, got str"),
    ([[700.0, 710.0]], ValueError, r"energy must be 1-D, got 2-D with shape \(1, 2\)"),
    ([700.0, np.nan], ValueError, r"energy must contain only finite values; found NaN or inf"),
    ([700 + 0j, 710 + 0j], TypeError, r"energy must hold numbers \(dtype kind in 'iuf'\), got dtype complex128"),
])
def test_reference_spectra_refuses_bad_energies(energy, exc, message):
    _raises(exc, message, xanes.reference_spectra, energy)


# ============================================================== references check (_check_references)


def _refs(energy=E):
    return xanes.reference_spectra(energy)


def _bad_refs():
    good = _refs()
    nan_energy = good.assign_coords(energy=np.where(np.arange(E.size) == 3, np.nan, E))
    nan_lfp = good.copy(deep=True)
    nan_lfp["LFP"][4] = np.nan
    two_d = xr.Dataset({"LFP": (("energy", "k"), np.ones((E.size, 1))), "FP": good.FP}, coords={"energy": E})
    return [
        (good.LFP, TypeError, r"references must be an xarray\.Dataset with variables LFP and FP, got DataArray"),
        (good[["FP"]], ValueError, r"references must have variables 'LFP' and 'FP'; missing \['LFP'\]"),
        (two_d, ValueError, r"references\['LFP'\] must have dims \('energy',\), got \('energy', 'k'\); "
                            r"use \.transpose\(\.\.\.\) or \.rename\(\.\.\.\) first"),
        (nan_energy, ValueError, r"references energy must contain only finite values; found NaN or inf"),
        (good.isel(energy=slice(None, None, -1)), ValueError,
         r"references energies must be strictly increasing \(eV\); got .*"),
        (good.assign_coords(energy=E + 100.0), ValueError,
         r"references cover 800–829\.5 eV, which does not overlap the stack's 700–729\.5 eV"),
        (good.assign_coords(energy=E - 29.5), ValueError,
         r"references cover 670.5–700 eV but the stack spans 700–729\.5 eV; crop the stack with "
         r"stack\.sel\(energy=slice\(lo, hi\)\) to the references' range"),
        (good.sel(energy=slice(705.0, None)), ValueError,
         r"references cover 705–729\.5 eV but the stack spans 700–729\.5 eV; crop the stack with "
         r"stack\.sel\(energy=slice\(lo, hi\)\) to the references' range"),
        (nan_lfp, ValueError, r"references\['LFP'\] must contain only finite values; found NaN or inf"),
    ]


@pytest.mark.parametrize("case", range(9))
def test_fit_spectra_refuses_bad_references_naming_them(case):
    refs, exc, message = _bad_refs()[case]
    _raises(exc, message, xanes.fit_spectra, _od(np.full((2, 3), 30.0), 10.0), references=refs)


def test_references_that_exactly_cover_the_stack_are_accepted():
    od = _od(np.full((2, 3), 30.0), 10.0)
    fit = xanes.fit_spectra(od, references=_refs(E), weighting="uniform")
    assert_allclose(fit.a.values, 30.0, rtol=1e-6)
    # one end inside the stack's range by a single point: refused (boundaries are inclusive only)
    _raises(ValueError, r"references cover 700–729 eV but the stack spans 700–729\.5 eV; .*",
            xanes.fit_spectra, od, references=_refs(E[:-1]))


# ============================================================== find_failed_frames


def test_find_failed_frames_messages_and_bounds():
    v = np.random.default_rng(122).uniform(0.5, 1.0, (6, 10, 10))
    st = _stack(v, np.arange(700.0, 706.0))
    _raises(ValueError, r"z_max must be > 0 and finite, got 0", xanes.find_failed_frames, st, z_max=0)
    _raises(TypeError, r"z_max must be a real number, got str", xanes.find_failed_frames, st, z_max="20")
    _raises(TypeError, r"stack must be an xarray\.DataArray, got ndarray", xanes.find_failed_frames, v)
    _raises(ValueError, r"stack must have dims \('energy', 'y', 'x'\), got \('y', 'x', 'energy'\); "
                        r"use \.transpose\(\.\.\.\) or \.rename\(\.\.\.\) first",
            xanes.find_failed_frames, st.transpose("y", "x", "energy"))


def test_find_failed_frames_ten_percent_of_usable_pixels_is_the_limit():
    v = np.random.default_rng(123).uniform(0.5, 1.0, (6, 10, 10))
    kept = v.copy()
    kept[2].ravel()[10:] = 0.0  # exactly 10 % usable: kept
    lost = v.copy()
    lost[2].ravel()[9:] = np.nan  # 9 %: failed
    e = np.arange(700.0, 706.0)
    assert xanes.find_failed_frames(_stack(kept, e)).tolist() == [False] * 6
    assert xanes.find_failed_frames(_stack(lost, e)).tolist() == [False, False, True, False, False, False]


def test_find_failed_frames_level_and_roughness_outliers_and_z_max():
    rng = np.random.default_rng(124)
    base = rng.uniform(0.8, 1.0, (8, 12, 12))
    e = np.arange(700.0, 708.0)
    dim = base.copy()
    dim[3] *= 1e-3  # a frame 1000x too dark: level outlier
    assert np.flatnonzero(xanes.find_failed_frames(_stack(dim, e))).tolist() == [3]
    rough = base.copy()
    rough[5] = rng.uniform(0.01, 1.0, (12, 12))  # same level range, far rougher (factor > 3)
    assert np.flatnonzero(xanes.find_failed_frames(_stack(rough, e))).tolist() == [5]
    # a frame 4x darker: beyond log(3) and, with the default z_max, beyond z_max robust SDs? no --
    # the level MAD of these frames is ~0.01, so 20 MADs is ~0.2 < log 4 = 1.39: failed at any z_max <= 100
    dark = base.copy()
    dark[6] *= 0.25
    assert np.flatnonzero(xanes.find_failed_frames(_stack(dark, e))).tolist() == [6]
    assert not xanes.find_failed_frames(_stack(dark, e), z_max=1e6).any()
    # complex objects: judged by their amplitude
    ph = np.exp(1j * rng.uniform(-3, 3, base.shape))
    assert np.flatnonzero(xanes.find_failed_frames(_stack(dim * ph, e))).tolist() == [3]
    # fewer than three good frames: only the unusable ones are failed
    two = base[:3].copy()
    two[0] = 0.0
    assert xanes.find_failed_frames(_stack(two, e[:3])).tolist() == [True, False, False]


# ============================================================== option checks of the alignment


@pytest.fixture(scope="module")
def drift_stack():
    yy, xx = np.mgrid[:32, :36]
    frames = [np.exp(-((yy - 15 - s) ** 2 + (xx - 17 + 0.5 * s) ** 2) / 40.0) for s in (0.0, -1.0, 1.5, 2.0, 0.5)]
    return _stack(np.exp(-np.array(frames)), np.array([700.0, 705.0, 708.0, 710.0, 720.0]))


@pytest.mark.parametrize("kwargs, exc, message", [
    ({"sigma_px": 0.0}, ValueError, r"sigma_px must be > 0 and finite, got 0\.0"),
    ({"smooth_frames": -1.0}, ValueError, r"smooth_frames must be >= 0 and finite, got -1\.0"),
    ({"upsample_factor": 0}, ValueError, r"upsample_factor must be a positive int, got 0"),
    ({"upsample_factor": 2.0}, ValueError, r"upsample_factor must be a positive int, got 2\.0"),
    ({"refine": -1}, ValueError, r"refine must be an int >= 0, got -1"),
    ({"refine": 1.0}, ValueError, r"refine must be an int >= 0, got 1\.0"),
    ({"border": -1}, ValueError, r"border must be an int >= 0 or None, got -1"),
    ({"border": 1.0}, ValueError, r"border must be an int >= 0 or None, got 1\.0"),
    ({"calibrate": 1}, TypeError, r"calibrate must be a bool, got int"),
    ({"references": "LFP"}, TypeError, r"references must be an xarray\.Dataset with variables LFP and FP, got str"),
])
def test_estimate_drift_names_a_bad_option(drift_stack, kwargs, exc, message):
    _raises(exc, message, xanes.estimate_drift, drift_stack, **kwargs)


def test_estimate_drift_edge_only_result_and_metadata(drift_stack):
    d = xanes.estimate_drift(drift_stack, refine=0, border=0, calibrate=False, upsample_factor=1)
    assert d.dims == ("energy", "axis") and d.axis.values.tolist() == ["y", "x"]
    assert dict(d.axis.attrs) == {"long_name": "image axis"}
    assert_array_equal(d.energy.values, drift_stack.energy.values)
    assert d.attrs["units"] == "px"
    assert d.attrs["long_name"] == "drift removed (specimen displacement from frame 0)"
    assert set(d.attrs) == {"units", "long_name", "sigma", "energy_offset_ev", "broadening_ev"}
    assert d.attrs["energy_offset_ev"] == 0.0 and d.attrs["broadening_ev"] == 0.0
    assert d.attrs["sigma"].shape == (5, 2) and np.isnan(d.attrs["sigma"]).all()  # no refinement: no sigma
    # upsample_factor=1: whole pixels (the shifts here are whole and half pixels)
    assert_allclose(d.sel(axis="y").values, [0.0, -1.0, 1.5, 2.0, 0.5], atol=0.51)
    assert_allclose(d.values, np.round(d.values))


def test_estimate_drift_with_one_refinement_on_a_particle(hand_stack):
    stack, *_ = hand_stack
    sh = np.array([[0.0, 0.0], [0.0, 0.0], [1.0, -1.0]] + [[0.0, 0.0]] * (E.size - 3))
    from scipy import ndimage

    moved = np.stack([ndimage.shift(f, s, order=1, mode="nearest") for f, s in zip(stack.values, sh)])
    d = xanes.estimate_drift(_stack(moved, E), refine=1, calibrate=False)
    # the frame moved by (1, -1) px is found; frames at the white lines carry ~0.1 px of model mismatch
    # (a half-LFP, half-FP disc: the contrast flips between its halves), the RMS over all frames is small
    assert_allclose(d.values[2], sh[2], atol=0.02)
    assert np.sqrt(np.mean((d.values - sh) ** 2)) < 0.04
    sig = d.attrs["sigma"]
    assert np.all(np.isfinite(sig[1:])) and np.all(sig[1:] > 0) and np.all(sig[1:] < 0.1)
    # references given explicitly (validated, then used): the tabulated ones on the stack's grid give the same
    d_refs = xanes.estimate_drift(_stack(moved, E), refine=1, calibrate=False, references=xanes.reference_spectra(E))
    assert_allclose(d_refs.values, d.values, atol=1e-3)


# ============================================================== calibrate_references


def test_calibrate_references_messages_and_the_five_pixel_minimum():
    od = _od(np.full((2, 3), 40.0), 20.0)
    _raises(TypeError, r"od must be an xarray\.DataArray, got ndarray", xanes.calibrate_references, od.values)
    _raises(ValueError, r"max_offset_ev must be >= 0 and finite, got -0\.1", xanes.calibrate_references, od,
            max_offset_ev=-0.1)
    _raises(ValueError, r"max_broadening_ev must be >= 0 and finite, got inf", xanes.calibrate_references, od,
            max_broadening_ev=np.inf)
    _raises(ValueError, r"mask must have shape \(2, 3\), got \(3, 2\)", xanes.calibrate_references, od,
            mask=np.ones((3, 2), bool))
    _raises(ValueError, r"od energies must be strictly increasing \(eV\); got .*", xanes.calibrate_references,
            od.isel(energy=slice(None, None, -1)))
    m = np.zeros((2, 3), bool)
    m.ravel()[:4] = True
    _raises(ValueError, r"calibrate_references needs at least 5 pixels finite at every energy, got 4",
            xanes.calibrate_references, od, mask=m)
    m.ravel()[4] = True
    out = xanes.calibrate_references(od, mask=m, max_offset_ev=0.0, max_broadening_ev=0.0)
    assert out.attrs["energy_offset_ev"] == 0.0 and out.attrs["broadening_ev"] == 0.0


def test_calibrate_references_output_is_the_references_on_the_stack_grid():
    e = np.arange(700.0, 730.0, 0.25)
    truth = xanes.reference_spectra(e - 0.3)  # nominal = true + 0.3: offset -0.3
    a, b = np.meshgrid(np.linspace(10, 80, 5), np.linspace(5, 70, 4))
    od = _od(a, b, 0.02, e, refs=truth)
    refs = xanes.reference_spectra()
    cal = xanes.calibrate_references(od, references=refs, max_broadening_ev=0.0)
    assert abs(cal.attrs["energy_offset_ev"] + 0.3) < 0.01
    assert cal.attrs["broadening_ev"] == 0.0
    assert list(cal.data_vars) == ["LFP", "FP"]
    assert dict(cal.LFP.attrs) == dict(refs.LFP.attrs) and dict(cal.FP.attrs) == dict(refs.FP.attrs)
    assert dict(cal.energy.attrs) == {"units": "eV", "long_name": "photon energy"}
    assert_array_equal(cal.energy.values, e)
    assert set(cal.attrs) == {"source", "energy_offset_ev", "broadening_ev"}
    assert cal.attrs["source"] == refs.attrs["source"]
    # the references read at energy + offset, on the stack's grid
    assert_allclose(cal.LFP.values, refs.LFP.interp(energy=e + cal.attrs["energy_offset_ev"]).values,
                    rtol=2e-3, atol=1e-6)
    # a local search from `start` finds the same offset; broadening is a Gaussian of the given FWHM
    loc = xanes.calibrate_references(od, references=refs, start=(0.0, 0.0))
    assert abs(loc.attrs["energy_offset_ev"] + 0.3) < 0.01 and loc.attrs["broadening_ev"] < 0.05
    # max_pixels: at most that many pixels; one pixel is below the five-pixel minimum only by count of idx
    few = xanes.calibrate_references(od, references=refs, max_pixels=5, max_broadening_ev=0.0)
    assert abs(few.attrs["energy_offset_ev"] + 0.3) < 0.01


def test_calibrate_references_finds_a_resolution_broadening():
    from scipy import ndimage

    e = np.arange(700.0, 730.0, 0.1)
    fine = xanes.reference_spectra(np.arange(690.0, 740.0, 0.02))
    fwhm = 0.8
    sig = fwhm / (2.0 * np.sqrt(2.0 * np.log(2.0))) / 0.02
    blurred = xr.Dataset({k: ("energy", ndimage.gaussian_filter1d(fine[k].values, sig, mode="nearest"))
                          for k in ("LFP", "FP")}, coords={"energy": fine.energy.values})
    a, b = np.meshgrid(np.linspace(10, 80, 5), np.linspace(5, 70, 4))
    od = _od(a, b, 0.0, e, refs=blurred.interp(energy=e))
    cal = xanes.calibrate_references(od, max_offset_ev=0.0)
    assert abs(cal.attrs["broadening_ev"] - fwhm) < 0.05
    # the search range is a hard bound
    capped = xanes.calibrate_references(od, max_offset_ev=0.0, max_broadening_ev=0.5)
    assert 0.4 <= capped.attrs["broadening_ev"] <= 0.5


# ============================================================== optical_density


def test_optical_density_by_hand_for_intensities_and_complex_objects():
    i0 = np.array([100.0, 120.0, 90.0, 80.0, 110.0])
    t = np.ones((5, 6, 8))
    t[:, 2:4, 3:5] = np.array([0.5, 0.4, 0.3, 0.6, 0.7])[:, None, None]
    bg = np.ones((6, 8), bool)
    bg[1:5, 2:6] = False
    od = xanes.optical_density(_stack(i0[:, None, None] * t), background=bg)
    assert_allclose(od.values, -np.log(t), atol=1e-12)
    assert od.dims == ("energy", "y", "x")
    assert dict(od.attrs) == {"units": "1", "long_name": "optical density", "background": int(bg.sum())}
    assert_allclose(od.incident.values, i0 / i0.max(), rtol=1e-12)
    assert od.incident.dims == ("energy",)
    assert dict(od.incident.attrs) == {"units": "1", "long_name": "relative incident intensity"}
    # complex object: OD = -2 ln(|O| / |O_bg|), incident = |O_bg|^2 relative to the weakest energy
    amp = np.sqrt(i0)[:, None, None] * np.sqrt(t)
    obj = amp * np.exp(1j * np.random.default_rng(125).uniform(-1, 1, amp.shape))
    odc = xanes.optical_density(_stack(obj), background=bg, border=0)
    assert_allclose(odc.values, -np.log(t), atol=1e-12)
    assert_allclose(odc.incident.values, i0 / i0.max(), rtol=1e-12)


def test_optical_density_moves_frames_back_by_the_shifts():
    yy, xx = np.mgrid[:24, :28]
    blob = np.exp(-((yy - 12.0) ** 2 + (xx - 13.0) ** 2) / 18.0)
    sh = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, -3.0], [1.0, 1.0], [0.0, 0.0]])
    frames = np.stack([np.exp(-np.roll(blob, (int(dy), int(dx)), axis=(0, 1))) for dy, dx in sh])
    shifts = xr.DataArray(sh, dims=("energy", "axis"), coords={"energy": E5, "axis": ["y", "x"]})
    bg = np.zeros((24, 28), bool)
    bg[4:6, 4:24] = True
    od = xanes.optical_density(_stack(frames), shifts=shifts, background=bg)
    cover = np.isfinite(od.values).all(axis=0)
    # pixels that some frame does not cover: NaN; the rest: the blob of frame 0 at every energy
    want = np.zeros((24, 28), bool)
    want[:22, 3:27] = True  # frame 1 (dy = 2) leaves rows 22-23, frame 2 (dx = -3) cols 0-2, frame 3 col 27
    assert_array_equal(cover, want)
    for k in range(5):
        assert_allclose(od.values[k][cover], blob[cover] - np.median(blob[bg]), atol=1e-9)


@pytest.mark.parametrize("shifts, exc, message", [
    (xr.DataArray(np.zeros((5, 2)), dims=("energy", "xy")), ValueError,
     r"shifts must have dims \('energy', 'axis'\), got \('energy', 'xy'\); use \.transpose\(\.\.\.\) or "
     r"\.rename\(\.\.\.\) first"),
    (xr.DataArray(np.zeros((4, 2)), dims=("energy", "axis")), ValueError,
     r"shifts must have shape \(5, 2\), got \(4, 2\)"),
    (xr.DataArray(np.full((5, 2), np.nan), dims=("energy", "axis")), ValueError,
     r"shifts must contain only finite values; found NaN or inf"),
    (np.zeros((5, 2)), TypeError, r"shifts must be an xarray\.DataArray, got ndarray"),
])
def test_optical_density_refuses_bad_shifts(shifts, exc, message):
    st = _stack(np.ones((5, 6, 8)))
    _raises(exc, message, xanes.optical_density, st, shifts=shifts, background=np.ones((6, 8), bool))


def test_optical_density_background_messages_and_limits(hand_stack):
    stack, disc, *_ = hand_stack
    free = ~np.pad(disc[1:-1, 1:-1] | True, 1)  # the field's one-pixel frame
    _raises(ValueError, r"background covers the particle \(\d+% of its pixels show the Fe edge\); "
                        r"pass a mask of particle-free membrane pixels only",
            xanes.optical_density, stack, background=disc)
    _raises(TypeError, r"background must be a boolean mask, got dtype int64", xanes.optical_density, stack,
            background=free.astype(np.int64))
    _raises(ValueError, r"background must have shape \(22, 26\), got \(22, 25\)", xanes.optical_density, stack,
            background=free[:, 1:])
    # the frame alone is a valid background
    od = xanes.optical_density(stack, background=free)
    assert od.attrs["background"] == int(free.sum())
    # a background no pixel of which survives the alignment: refused by name
    sh = xr.DataArray(np.tile([[0.0, 0.0], [-1.5, -1.5]], (E.size // 2, 1)), dims=("energy", "axis"))
    corner = np.zeros_like(free)
    corner[0, 0] = True
    _raises(ValueError, r"background has no pixel that is finite at every energy after alignment",
            xanes.optical_density, stack, shifts=sh, background=corner)


def test_optical_density_automatic_background_needs_twenty_pixels():
    # a 10 x 10 field with a 6 x 6 particle: the particle dilated by 4 px leaves nothing
    t = np.ones((5, 10, 10))
    t[:, 2:8, 2:8] = np.array([0.9, 0.8, 0.5, 0.4, 0.6])[:, None, None]
    _raises(ValueError, r"automatic background detection found only 0 particle-free pixels; pass background= "
                        r"\(a boolean \(y, x\) mask of membrane pixels\)",
            xanes.optical_density, _stack(t))


def test_optical_density_automatic_background_leaves_out_the_border():
    rng = np.random.default_rng(126)
    t = np.ones((5, 40, 40)) * (1 + 0.001 * rng.normal(size=(5, 40, 40)))
    t[:, 15:25, 15:25] *= np.array([0.9, 0.8, 0.5, 0.4, 0.6])[:, None, None]
    t[:, :3, :] *= 1.5  # a bright band along the edge of the field (ringing)
    plain = xanes.optical_density(_stack(t), border=0)
    kept = xanes.optical_density(_stack(t), border=3)
    # the particle (dilated by 4 px) is far from the edge: border=3 removes all 1600 - 34 * 34 edge pixels
    assert plain.attrs["background"] - kept.attrs["background"] == 1600 - 34 * 34
    assert 900 < plain.attrs["background"] < 1600 - 100
    assert abs(float(kept.values[0, 20, 20]) + np.log(0.9)) < 0.01


# ============================================================== fit_spectra / predict_od


def _lsq_offset(A, y, w=None):
    """min sum w (A p - y)^2 with p >= 0 except the last (free): scipy's bounded least squares."""
    sw = np.ones_like(y) if w is None else np.sqrt(w)
    lb = np.r_[np.zeros(A.shape[1] - 1), -np.inf]
    return scipy.optimize.lsq_linear(A * sw[:, None], y * sw, bounds=(lb, np.inf), tol=1e-12).x


@pytest.fixture(scope="module")
def noisy_od():
    rng = np.random.default_rng(127)
    a = rng.uniform(0, 80, (3, 4))
    b = rng.uniform(0, 80, (3, 4))
    a[0, 0], b[0, 1] = 0.0, 0.0
    a[1, 2], b[1, 2] = 0.0, 700.0  # OD up to ~20: beyond the weights' clip at 6
    a[2, 1], b[2, 1] = 0.0, 0.0  # membrane at OD -1.5: below the clip at -1
    c = np.full((3, 4), 0.01)
    c[2, 1] = -1.5
    od = _od(a, b, c)
    inc = 1.0 + 0.01 * (E - 700.0)
    noisy = od + rng.normal(0.0, 0.01, od.shape) / np.sqrt(inc)[:, None, None]
    return noisy.assign_coords(incident=("energy", inc))


def test_fit_spectra_uniform_weighting_is_bounded_least_squares_with_its_covariance(noisy_od):
    r = 1.07
    fit = xanes.fit_spectra(noisy_od, weighting="uniform", fe_density_ratio=r)
    refs = xanes.reference_spectra()
    mu = np.column_stack([np.interp(E, refs.energy.values, refs[k].values) for k in ("LFP", "FP")])
    A = np.column_stack([mu, np.ones(E.size)])
    for iy in range(3):
        for ix in range(4):
            y = noisy_od.values[:, iy, ix]
            p = _lsq_offset(A, y)
            assert_allclose([fit.a[iy, ix], fit.b[iy, ix], fit.offset[iy, ix]], p, atol=1e-6)
            res = y - A @ p
            assert_allclose(float(fit.residual[iy, ix]), np.sqrt(np.mean(res**2)), rtol=1e-6)
            a, b = p[0], p[1]
            assert_allclose(float(fit.thickness[iy, ix]), a + b, rtol=1e-9, atol=1e-9)
            assert_allclose(float(fit.X[iy, ix]), a / (a + r * b), rtol=1e-6, atol=1e-9)
            assert_allclose(float(fit.X_volume[iy, ix]), a / (a + b), rtol=1e-6, atol=1e-9)
            cov = np.sum(res**2) / (E.size - 3) * np.linalg.inv(A.T @ A)[:2, :2]
            g = np.array([r * b, -r * a]) / (a + r * b) ** 2
            assert_allclose(float(fit.X_sigma[iy, ix]), np.sqrt(g @ cov @ g), rtol=1e-5)


def test_fit_spectra_shot_weighting_uses_the_incident_intensity_and_the_first_pass(noisy_od):
    fit = xanes.fit_spectra(noisy_od)  # default: weighting="shot"
    refs = xanes.reference_spectra()
    mu = np.column_stack([np.interp(E, refs.energy.values, refs[k].values) for k in ("LFP", "FP")])
    A = np.column_stack([mu, np.ones(E.size)])
    inc = noisy_od.incident.values
    for iy, ix in ((0, 0), (0, 1), (2, 3), (1, 2), (2, 1)):
        y = noisy_od.values[:, iy, ix]
        p1 = _lsq_offset(A, y)
        w = inc * np.exp(-np.clip(A @ p1, -1.0, 6.0))
        w = w / w.mean()
        p = _lsq_offset(A, y, w)
        assert_allclose([fit.a[iy, ix], fit.b[iy, ix], fit.offset[iy, ix]], p, atol=1e-6)
        res = y - A @ p
        assert_allclose(float(fit.residual[iy, ix]), np.sqrt(np.mean(res**2)), rtol=1e-6)
        cov = np.sum(w * res**2) / (E.size - 3) * np.linalg.inv(A.T @ (w[:, None] * A))[:2, :2]
        a, b = p[0], p[1]
        r = materials.FE_DENSITY_RATIO_FP_LFP
        g = np.array([r * b, -r * a]) / (a + r * b) ** 2
        assert_allclose(float(fit.X_sigma[iy, ix]), np.sqrt(g @ cov @ g), rtol=1e-5)
    # without the incident coordinate the weights use I0 = 1
    plain = xanes.fit_spectra(noisy_od.drop_vars("incident"))
    assert not np.allclose(plain.a.values, fit.a.values, rtol=0, atol=1e-9)


def test_fit_spectra_metadata_and_pixels_with_nan():
    od = _od(np.full((2, 3), 30.0), 10.0)
    od = od.assign_coords(y=("y", [0.0, 5.0], {"units": "nm"}), x=("x", [0.0, 5.0, 10.0], {"units": "nm"}))
    od[4, 1, 2] = np.nan
    fit = xanes.fit_spectra(od)
    want = {
        "a": ("nm", "LiFePO4 thickness (a)"),
        "b": ("nm", "FePO4 thickness (b)"),
        "offset": ("1", "flat OD offset"),
        "X": ("1", "Li fraction x in LixFePO4"),
        "X_volume": ("1", "LiFePO4 volume fraction a/(a+b)"),
        "X_sigma": ("1", "standard deviation of X"),
        "thickness": ("nm", "thickness a + b"),
        "residual": ("1", "RMS misfit of the spectrum fit (OD)"),
    }
    assert list(fit.data_vars) == list(want)
    for k, (u, ln) in want.items():
        assert fit[k].dims == ("y", "x")
        assert dict(fit[k].attrs) == {"units": u, "long_name": ln}, k
        assert np.isnan(fit[k].values[1, 2]) and np.isfinite(fit[k].values[0, 0]), k
    assert fit.attrs == {"constraint": "nonnegative", "n_energies": E.size}
    assert fit.y.values.tolist() == [0.0, 5.0] and fit.x.attrs == {"units": "nm"}
    assert "energy" not in fit.coords
    # references in other units: thickness in "reference thickness units"
    refs = xanes.reference_spectra() * 1000.0
    for k in ("LFP", "FP"):
        refs[k].attrs["units"] = "1/um"
    other = xanes.fit_spectra(od, references=refs)
    for k in ("a", "b", "thickness"):
        assert other[k].attrs["units"] == "reference thickness units"
    assert_allclose(other.a.values[0, 0], 0.030, rtol=1e-6)


@pytest.mark.parametrize("kwargs, exc, message", [
    ({"constraint": "positive"}, ValueError,
     r"constraint must be one of \('nonnegative', 'sum_to_one'\), got 'positive'"),
    ({"weighting": "poisson"}, ValueError, r"weighting must be one of \('shot', 'uniform'\), got 'poisson'"),
    ({"fe_density_ratio": 0.0}, ValueError, r"fe_density_ratio must be > 0 and finite, got 0\.0"),
    ({"fe_density_ratio": "1"}, TypeError, r"fe_density_ratio must be a real number, got str"),
])
def test_fit_spectra_names_a_bad_option(kwargs, exc, message):
    _raises(exc, message, xanes.fit_spectra, _od(np.full((2, 2), 30.0), 10.0), **kwargs)


def test_fit_spectra_refuses_a_bad_od():
    od = _od(np.full((2, 2), 30.0), 10.0)
    _raises(TypeError, r"od must be an xarray\.DataArray, got ndarray", xanes.fit_spectra, od.values)
    _raises(ValueError, r"od energies must be strictly increasing \(eV\); got .*", xanes.fit_spectra,
            od.isel(energy=slice(None, None, -1)))
    _raises(ValueError, r"od energies look like keV \(max 0\.7295\); give energies in eV", xanes.fit_spectra,
            od.assign_coords(energy=E / 1000.0))
    _raises(ValueError, r"constraint='sum_to_one' needs energies below 705 eV and above 715 eV",
            xanes.fit_spectra, od.sel(energy=slice(705.0, None)), constraint="sum_to_one")
    _raises(ValueError, r"constraint='sum_to_one' needs energies below 705 eV and above 715 eV",
            xanes.fit_spectra, od.sel(energy=slice(None, 715.0)), constraint="sum_to_one")


def test_sum_to_one_shortcut_by_hand():
    od = _od(np.array([[30.0, 0.0, 45.0]]), np.array([[30.0, 60.0, 0.0]]), 0.0)
    fit = xanes.fit_spectra(od, constraint="sum_to_one")
    refs = xanes.reference_spectra(E)

    def norm(s):
        pre = s[E < 705.0].mean()
        return (s - pre) / (s[E > 715.0].mean() - pre)

    ln, fn = norm(refs.LFP.values), norm(refs.FP.values)
    for ix in range(3):
        y = norm(od.values[:, 0, ix])
        d = ln - fn
        x = np.clip(d @ (y - fn) / (d @ d), 0.0, 1.0)
        assert_allclose(float(fit.X[0, ix]), x, atol=1e-9)
        assert_allclose(float(fit.residual[0, ix]), np.sqrt(np.mean((y - fn - d * x) ** 2)), atol=1e-9)
    assert fit.attrs == {"constraint": "sum_to_one", "n_energies": E.size}
    for k in ("a", "b", "offset", "X_sigma", "thickness", "X_volume"):
        assert np.isnan(fit[k].values).all()


def test_predict_od_is_the_model_at_any_energy():
    a = np.array([[10.0, 0.0, 35.0]])
    b = np.array([[5.0, 50.0, 0.0]])
    c = np.array([[0.01, -0.02, 0.0]])
    fit = xr.Dataset({"a": (("y", "x"), a), "b": (("y", "x"), b), "offset": (("y", "x"), c)},
                     coords={"x": ("x", [1.0, 2.0, 3.0], {"units": "nm"})})
    e = np.array([702.0, 708.0, 710.25, 729.0])
    pred = xanes.predict_od(fit, e)
    refs = xanes.reference_spectra()
    for i, ee in enumerate(e):
        lfp, fp = (float(refs[k].interp(energy=ee)) for k in ("LFP", "FP"))
        assert_allclose(pred.values[i], a * lfp + b * fp + c, rtol=1e-12)
    assert pred.dims == ("energy", "y", "x")
    assert dict(pred.attrs) == {"units": "1", "long_name": "model optical density"}
    assert dict(pred.energy.attrs) == {"units": "eV", "long_name": "photon energy"}
    assert pred.energy.values.tolist() == e.tolist()
    assert pred.x.values.tolist() == [1.0, 2.0, 3.0] and pred.x.attrs == {"units": "nm"}
    # own references: used instead of the built-in ones
    twice = xanes.reference_spectra(np.arange(700.0, 731.0)) * 2.0
    assert_allclose(xanes.predict_od(fit, [705.0], references=twice).values[0],
                    2 * (a * float(refs.LFP.interp(energy=705.0)) + b * float(refs.FP.interp(energy=705.0))) + c,
                    rtol=1e-9)


def test_predict_od_messages():
    fit = xr.Dataset({"a": (("y", "x"), np.ones((1, 1))), "b": (("y", "x"), np.ones((1, 1)))})
    _raises(ValueError, r"fit must be a Dataset from fit_spectra with variable 'offset'", xanes.predict_od,
            fit, E)
    _raises(ValueError, r"fit must be a Dataset from fit_spectra with variable 'a'", xanes.predict_od,
            fit.a, E)
    fit["offset"] = fit.a * 0
    _raises(ValueError, r"energy must be 1-D, got 2-D with shape \(1, 60\)", xanes.predict_od, fit, E[None])
    _raises(TypeError, r"energy must be an array of numbers, got NoneType", xanes.predict_od, fit, None)


# ============================================================== calibration_curve


def test_calibration_curve_by_hand_and_messages():
    x = np.array([0.1, 0.2, 0.35, np.nan, 0.5])
    s = np.array([0.1, 0.1, 0.1, 0.1, 0.0])  # sigma 0: ignored
    t = np.array([0.1, 0.3, 0.1, 0.0, 0.5])
    c = xanes.calibration_curve(x, s, t, k=[0.0, 1.0, 2.0, 3.0])
    # |x - t| / s = 0, 1, 2.5 (pixels 0..2)
    assert_allclose(c.observed.values, [1 / 3, 2 / 3, 2 / 3, 1.0])
    assert_allclose(c.gaussian.values, erf(np.array([0.0, 1.0, 2.0, 3.0]) / np.sqrt(2)))
    assert c.attrs == {"n_pixels": 3}
    assert dict(c.observed.attrs) == {"units": "1", "long_name": "fraction within k sigma"}
    assert dict(c.gaussian.attrs) == {"units": "1", "long_name": "Gaussian expectation"}
    assert dict(c.k.attrs) == {"units": "1", "long_name": "k (multiples of sigma_X)"}
    da = xanes.calibration_curve(xr.DataArray(x), xr.DataArray(s), xr.DataArray(t), k=[1.0])
    assert_allclose(da.observed.values, [2 / 3])
    _raises(ValueError, r"X, X_sigma and X_true must have the same shape, got \(5,\), \(4,\), \(5,\)",
            xanes.calibration_curve, x, s[:4], t)
    _raises(ValueError, r"X, X_sigma and X_true share no finite pixel", xanes.calibration_curve,
            x, np.zeros(5), t)


# ============================================================== principal_components


def test_principal_components_by_hand_and_the_significance_edge():
    rng = np.random.default_rng(128)
    e = np.arange(700.0, 720.0, 1.0)
    refs = xanes.reference_spectra(e)
    a, b = rng.uniform(0, 80, (2, 6, 7))
    spec = _od(a, b, 0.3, e, refs=refs).values + rng.normal(0, 0.01, (e.size, 6, 7))
    od = _stack(spec, e)
    mask = np.ones((6, 7), bool)
    mask[0, 0] = False
    pc = xanes.principal_components(od, mask=mask, noise=0.01, n_components=4)
    Y = spec[:, mask]
    Y = (Y - Y.mean(axis=0)) / 0.01
    s = np.linalg.svd(Y, compute_uv=False)
    assert_allclose(pc.singular_value.values, s[:4], rtol=1e-9)
    assert_allclose(pc.explained_variance_ratio.values, (s**2 / np.sum(s**2))[:4], rtol=1e-9)
    edge = 1.1 * (np.sqrt(e.size) + np.sqrt(mask.sum()))
    assert pc.attrs == {"n_significant": int(np.sum(s > edge))} and pc.attrs["n_significant"] == 2
    assert pc.component.values.tolist() == [1, 2, 3, 4]
    assert dict(pc.component.attrs) == {"units": "1", "long_name": "component"}
    # without noise: no whitening, no significance test
    raw = xanes.principal_components(od, mask=mask)
    s0 = np.linalg.svd(spec[:, mask] - spec[:, mask].mean(axis=0), compute_uv=False)
    assert_allclose(raw.singular_value.values, s0[:6], rtol=1e-9)
    assert raw.attrs == {"n_significant": -1}
    # n_components larger than the data allow: capped at the number of singular values
    assert xanes.principal_components(od, mask=mask, n_components=50).sizes["component"] == e.size


@pytest.mark.parametrize("noise, exc, message", [
    (0.0, ValueError, r"noise must be > 0 and finite, got 0\.0"),
    (np.ones(7), ValueError, r"noise must have shape \(5,\) or \(5, 3, 4\), got \(7,\)"),
    (np.ones((5, 3)), ValueError, r"noise must be 1-D or 3-D, got 2-D with shape \(5, 3\)"),
    (np.array(["a"] * 5), TypeError, r"noise must hold numbers \(dtype kind in 'iuf'\), got dtype <U1"),
])
def test_principal_components_names_a_bad_noise(noise, exc, message):
    od = _stack(np.random.default_rng(129).normal(size=(5, 3, 4)))
    _raises(exc, message, xanes.principal_components, od, mask=np.ones((3, 4), bool), noise=noise)


def test_principal_components_needs_two_usable_pixels():
    v = np.random.default_rng(130).normal(size=(5, 3, 4))
    good = _stack(v.copy())
    v[2].ravel()[1:] = np.nan
    od = _stack(v)
    _raises(ValueError, r"mask selects fewer than 2 pixels that are finite at every energy",
            xanes.principal_components, od, mask=np.ones((3, 4), bool))
    # a zero noise at a point leaves that pixel out
    noise = np.ones((5, 3, 4))
    noise[0].ravel()[1:] = 0.0
    _raises(ValueError, r"mask selects fewer than 2 pixels that are finite at every energy",
            xanes.principal_components, good, mask=np.ones((3, 4), bool), noise=noise)
    noise[0, 0, 1] = 1.0
    ok = xanes.principal_components(good, mask=np.ones((3, 4), bool), noise=noise)
    assert ok.sizes["component"] == 2  # two pixels: two singular values
    _raises(ValueError, r"mask selects 1 pixels; at least 2 needed", xanes.principal_components, od,
            mask=np.eye(3, 4, dtype=bool) & (np.arange(4) == 0))


# ============================================================== map_lithium on a hand-built particle


def test_map_lithium_results_and_metadata(hand_stack, hand_map):
    stack, disc, speck, lfp, fp = hand_stack
    res = hand_map
    assert list(res.data_vars) == ["X", "X_sigma", "thickness", "residual", "mask", "shifts", "shift_sigma"]
    want = {
        "X": ("1", "Li fraction x in LixFePO4"),
        "X_sigma": ("1", "standard deviation of X"),
        "thickness": ("nm", "thickness a + b"),
        "residual": ("1", "RMS misfit of the spectrum fit (OD)"),
        "mask": ("1", "valid pixels"),
    }
    for k, (u, ln) in want.items():
        assert res[k].dims == ("y", "x") and dict(res[k].attrs) == {"units": u, "long_name": ln}, k
    assert res.mask.dtype == bool
    for k in ("y", "x"):  # the stack's pixel grid, in nm, on every map
        assert_array_equal(res[k].values, stack[k].values)
        assert res[k].attrs == {"units": "nm"}
        assert_array_equal(res.X[k].values, stack[k].values)
    assert res.shifts.dims == ("energy", "axis") and res.shifts.axis.values.tolist() == ["y", "x"]
    assert dict(res.shifts.attrs) == {"units": "px", "long_name": "drift removed (specimen displacement from "
                                                                  "frame 0)"}
    assert dict(res.shift_sigma.attrs) == {"units": "px", "long_name": "standard deviation of the shift"}
    assert np.all(res.shifts.values == 0.0) and np.isnan(res.shift_sigma.values).all()
    # the particle: the disc (its rim included, 60 nm thick everywhere), not the 1-px speck
    assert_array_equal(res.mask.values, disc)
    inside = res.mask.values
    assert_allclose(res.X.values[inside & (lfp > 0)], 1.0, atol=0.02)
    assert_allclose(res.X.values[inside & (fp > 0)], 0.0, atol=0.02)
    assert_allclose(res.thickness.values[inside], 60.0, rtol=0.02)
    assert np.isnan(res.X.values[~inside]).all() and np.isnan(res.thickness.values[~inside]).all()
    a = res.attrs
    assert set(a) == {"references", "aligned", "od_max", "energy_offset_ev", "reference_broadening_ev",
                      "fe_density_ratio", "failed_energies_ev", "n_background", "n_particle", "n_specks",
                      "n_saturated", "n_low_signal", "pca_explained_variance_ratio", "pca_n_significant"}
    assert a["references"] == xanes.reference_spectra().attrs["source"]
    assert a["aligned"] == 0 and a["od_max"] == materials.OD_SATURATION
    assert a["energy_offset_ev"] == 0.0 and a["reference_broadening_ev"] == 0.0
    assert a["fe_density_ratio"] == materials.FE_DENSITY_RATIO_FP_LFP
    assert a["failed_energies_ev"] == []
    # the speck (and a few isolated membrane pixels whose noise passes the threshold) is not particle
    assert a["n_particle"] == int(disc.sum()) and 1 <= a["n_specks"] < 30
    assert a["n_saturated"] == 0 and a["n_low_signal"] == 0
    assert a["pca_n_significant"] == 2 and len(a["pca_explained_variance_ratio"]) == 6
    assert a["pca_explained_variance_ratio"][0] > 0.5
    # background: every pixel farther than 4 px from the Otsu particle (the disc, blurred)
    assert 100 < a["n_background"] < NY * NX - disc.sum()


def test_map_lithium_documented_options(hand_stack, hand_map):
    stack, disc, speck, lfp, fp = hand_stack
    ref = hand_map
    # od_max: the disc's OD peaks at 60 nm x max(mu) ~ 0.6-0.7; a lower limit masks those pixels as saturated
    od = xanes.optical_density(stack)
    peak = np.nanmax(od.values, axis=0)
    lim = float(np.median(peak[disc]))
    res = xanes.map_lithium(stack, align=False, calibrate=False, od_max=lim)
    assert res.attrs["od_max"] == lim
    assert res.attrs["n_saturated"] == int(np.sum(disc & (peak > lim)))
    assert_array_equal(res.mask.values, disc & ~(peak > lim))
    # max_sigma: below every pixel's sigma, nothing is left and all are counted as low signal
    tight = float(np.nanmin(ref.X_sigma.values)) * 0.999
    res = xanes.map_lithium(stack, align=False, calibrate=False, max_sigma=tight)
    assert res.attrs["n_low_signal"] == int(disc.sum()) and not res.mask.values.any()
    # max_sigma exactly the largest sigma: every pixel kept (<=)
    top = float(np.nanmax(ref.X_sigma.values))
    res = xanes.map_lithium(stack, align=False, calibrate=False, max_sigma=top)
    assert res.attrs["n_low_signal"] == 0
    # fe_density_ratio: X = a / (a + r b) with the given r, reported in attrs
    res = xanes.map_lithium(stack, align=False, calibrate=False, fe_density_ratio=2.0)
    assert res.attrs["fe_density_ratio"] == 2.0
    fit = xanes.fit_spectra(od, fe_density_ratio=2.0)
    assert_allclose(res.X.values[disc], fit.X.values[disc], rtol=1e-9)
    # border: a border of 3 px leaves the field edge out of the mask (the speck sits 2 px from the edge)
    res = xanes.map_lithium(stack, align=False, calibrate=False, border=3)
    assert res.attrs["n_specks"] == 0
    assert_array_equal(res.mask.values, disc)


def test_map_lithium_calibrates_without_alignment(hand_stack):
    stack, disc, *_ = hand_stack
    res = xanes.map_lithium(stack, align=False)  # calibrate=True by default
    od = xanes.optical_density(stack)
    first = xanes.fit_spectra(od)
    t = first.thickness.values
    ok = np.isfinite(t)
    cmask = ok & (t > 0.4 * np.percentile(t[ok], 99))
    cal = xanes.calibrate_references(od, mask=cmask)
    assert res.attrs["energy_offset_ev"] == cal.attrs["energy_offset_ev"]
    assert res.attrs["reference_broadening_ev"] == cal.attrs["broadening_ev"]
    assert abs(res.attrs["energy_offset_ev"]) < 0.05  # built with the references themselves
    assert_allclose(res.X.values[disc], xanes.fit_spectra(od, references=cal).X.values[disc], rtol=1e-9)


def test_map_lithium_drops_a_failed_frame_and_says_why(hand_stack):
    stack, disc, *_ = hand_stack
    bad = stack.copy(deep=True)
    bad[7] = 0.0
    with pytest.warns(RuntimeWarning) as rec:
        res = xanes.map_lithium(bad, align=False, calibrate=False)
    msgs = [str(w.message) for w in rec if issubclass(w.category, RuntimeWarning)]
    assert any(re.fullmatch(r"map_lithium: dropped 1 failed frame\(s\) at energies \[703\.5\] eV \(all zero, "
                            r"all NaN or far outside the stack's statistics\)", m) for m in msgs), msgs
    assert res.attrs["failed_energies_ev"] == [703.5]
    assert np.isnan(res.shifts.values[7]).all() and np.all(res.shifts.values[np.arange(E.size) != 7] == 0)
    assert_array_equal(res.mask.values, disc)
    _raises(ValueError, r"stack has failed frames \(all zero, all NaN or far outside the stack's statistics\) "
                        r"at energies \[703\.5\] eV; drop them or pass drop_failed=True",
            xanes.map_lithium, bad, align=False, drop_failed=False)


@pytest.mark.parametrize("kwargs, exc, message", [
    ({"align": 1}, TypeError, r"align must be a bool, got int"),
    ({"calibrate": "yes"}, TypeError, r"calibrate must be a bool, got str"),
    ({"drop_failed": None}, TypeError, r"drop_failed must be a bool, got NoneType"),
    ({"od_max": 0.0}, ValueError, r"od_max must be > 0 and finite, got 0\.0"),
    ({"max_sigma": -1.0}, ValueError, r"max_sigma must be > 0 and finite, got -1\.0"),
    ({"fe_density_ratio": np.nan}, ValueError, r"fe_density_ratio must be > 0 and finite, got nan"),
    ({"smooth_frames": -0.5}, ValueError, r"smooth_frames must be >= 0 and finite, got -0\.5"),
    ({"smooth_frames": -0.5, "align": False}, ValueError, r"smooth_frames must be >= 0 and finite, got -0\.5"),
    ({"border": -2}, ValueError, r"border must be an int >= 0 or None, got -2"),
    ({"references": xr.Dataset({"LFP": ("energy", [1.0, 2.0])}, coords={"energy": [700.0, 730.0]})},
     ValueError, r"references must have variables 'LFP' and 'FP'; missing \['FP'\]"),
])
def test_map_lithium_names_a_bad_option(hand_stack, kwargs, exc, message):
    _raises(exc, message, xanes.map_lithium, hand_stack[0], **kwargs)


def test_map_lithium_names_a_bad_stack(hand_stack):
    stack = hand_stack[0]
    _raises(ValueError, r"stack must have an 'energy' coordinate in eV", xanes.map_lithium,
            stack.drop_vars("energy"))
    nan_e = stack.assign_coords(energy=np.where(np.arange(E.size) == 2, np.nan, E))
    _raises(ValueError, r"stack energy must contain only finite values; found NaN or inf", xanes.map_lithium,
            nan_e)
    _raises(ValueError, r"stack energies must be strictly increasing \(eV\); got .*; sort the stack with "
                        r"\.sortby\('energy'\) and drop duplicates", xanes.map_lithium,
            stack.isel(energy=slice(None, None, -1)))
    _raises(TypeError, r"stack must hold numbers \(dtype kind in 'iufc'\), got dtype bool", xanes.map_lithium,
            stack > 0)
    _raises(ValueError, r"stack has no usable frame: every frame is all zero, all NaN or far outside the "
                        r"stack's statistics", xanes.map_lithium, stack * 0.0)
    _raises(ValueError, r"stack needs at least 5 energies for a 3-parameter fit, got 4", xanes.map_lithium,
            stack.isel(energy=slice(0, 4)))
    # xarray lets an 'energy' coordinate span (energy, y): named as such, not as an unsorted energy list
    ny = stack.sizes["y"]
    e2 = stack.assign_coords(energy=(("energy", "y"), np.add.outer(stack["energy"].values, np.zeros(ny))))
    _raises(ValueError, rf"stack energy must be 1-D, got 2-D with shape \({E.size}, {ny}\)", xanes.map_lithium, e2)


# ============================================================== normalise_edge / fit_components


def test_normalise_edge_by_hand_and_metadata():
    e = np.arange(698.0, 732.0, 1.0)
    refs = xanes.reference_spectra(e)
    od = _od(np.array([[20.0, 50.0]]), np.array([[10.0, 0.0]]), 0.05, e, refs=refs)
    od.attrs["units"] = "OD"
    n = xanes.normalise_edge(od, pre=(700.0, 704.0), post=(726.0, 729.0))
    y = od.values[:, 0, 1]
    pre = y[(e >= 700) & (e <= 704)].mean()
    step = y[(e >= 726) & (e <= 729)].mean() - pre
    assert_allclose(n.values[:, 0, 1], (y - pre) / step, rtol=1e-12)
    assert_allclose(n.edge_step.values[0, 1], step, rtol=1e-12)
    assert dict(n.attrs) == {"units": "1", "long_name": "edge-normalised absorption"}
    assert n.edge_step.dims == ("y", "x")
    assert dict(n.edge_step.attrs) == {"units": "OD", "long_name": "edge step"}
    assert xanes.normalise_edge(xr.DataArray(od.values, dims=od.dims, coords=od.coords)).edge_step.attrs[
        "units"] == "1"  # no units on the input: "1"
    # pre_slope: a straight pre-edge line through (e0-relative) energies removes a linear background exactly
    lin = od + xr.DataArray(0.002 * (e - 690.0), dims="energy", coords={"energy": e})
    sl = xanes.normalise_edge(lin, pre=(698.0, 705.0), post=(726.0, 729.0), e0=705.0, pre_slope=True)
    flat = xanes.normalise_edge(od, pre=(698.0, 705.0), post=(726.0, 729.0), pre_slope=True)
    assert_allclose(sl.values, flat.values, atol=1e-9)
    # a zero step gives NaN, not inf
    zero = xanes.normalise_edge(_stack(np.ones((e.size, 1, 1)), e))
    assert np.isnan(zero.values).all()


@pytest.mark.parametrize("kwargs, message", [
    ({"pre": (700.0, 700.5)}, r"the range 700-700\.5 eV holds 1 energies; need at least 2"),
    ({"post": (740.0, 750.0)}, r"the range 740-750 eV holds 0 energies; need at least 2"),
])
def test_normalise_edge_needs_two_energies_in_each_range(kwargs, message):
    od = _od(np.full((1, 2), 30.0), 10.0, energy=np.arange(700.0, 731.0, 1.0))
    _raises(ValueError, message, xanes.normalise_edge, od, **kwargs)
    # exactly two: accepted
    ok = {"pre": (700.0, 701.0)} if "pre" in kwargs else {"post": (729.0, 730.0)}
    assert np.isfinite(xanes.normalise_edge(od, **ok).values).all()


def test_fit_components_against_bounded_least_squares_and_metadata():
    e = np.arange(700.0, 730.0, 0.5)
    refs = xanes.reference_spectra(e)
    refs["Fe3O4"] = 0.5 * (refs.LFP + refs.FP).shift(energy=6).fillna(float(refs.LFP[0]))
    rng = np.random.default_rng(131)
    amounts = rng.uniform(0, 50, (3, 2, 3))
    amounts[2, 0, 0] = 0.0
    mu = np.stack([refs[k].values for k in ("LFP", "FP", "Fe3O4")], axis=1)
    od = _stack(np.einsum("ei,iyx->eyx", mu, amounts) + 0.02 + rng.normal(0, 0.005, (e.size, 2, 3)), e)
    od = od.assign_coords(x=("x", [0.0, 8.0, 16.0], {"units": "nm"}))
    fit = xanes.fit_components(od, refs)
    A = np.column_stack([mu, np.ones(e.size)])
    for iy in range(2):
        for ix in range(3):
            p = _lsq_offset(A, od.values[:, iy, ix])
            got = [float(fit[k][iy, ix]) for k in ("LFP", "FP", "Fe3O4", "offset")]
            assert_allclose(got, p, atol=1e-6)
            assert_allclose(float(fit.total[iy, ix]), p[:3].sum(), rtol=1e-9)
            for i, k in enumerate(("LFP", "FP", "Fe3O4")):
                assert_allclose(float(fit[f"fraction_{k}"][iy, ix]), p[i] / p[:3].sum(), rtol=1e-6)
            res = od.values[:, iy, ix] - A @ p
            assert_allclose(float(fit.residual[iy, ix]), np.sqrt(np.mean(res**2)), rtol=1e-6)
    assert list(fit.data_vars) == ["LFP", "fraction_LFP", "FP", "fraction_FP", "Fe3O4", "fraction_Fe3O4",
                                   "total", "offset", "residual"]
    for k in ("LFP", "FP", "Fe3O4"):
        assert dict(fit[k].attrs) == {"units": "reference thickness units", "long_name": f"amount of {k}"}
        assert dict(fit[f"fraction_{k}"].attrs) == {"units": "1", "long_name": f"fraction of {k}"}
    assert dict(fit.total.attrs) == {"units": "reference thickness units", "long_name": "sum of amounts"}
    assert dict(fit.offset.attrs) == {"units": "1", "long_name": "flat offset"}
    assert dict(fit.residual.attrs) == {"units": "1", "long_name": "RMS misfit"}
    assert fit.attrs == {"references": ["LFP", "FP", "Fe3O4"], "normalised": 0}
    assert fit.x.attrs == {"units": "nm"} and all(fit[k].dims == ("y", "x") for k in fit.data_vars)
    # normalise=True: spectra and references edge-normalised first; amounts are fractions of the step
    nf = xanes.fit_components(od, refs[["LFP", "FP"]], normalise=True, pre=(700.0, 704.0), post=(725.0, 729.5))
    assert nf.attrs == {"references": ["LFP", "FP"], "normalised": 1}
    assert nf.LFP.attrs["units"] == "1" and nf.total.attrs["units"] == "1"
    two = _od(np.array([[30.0]]), np.array([[10.0]]), 0.0, e, refs=refs)
    n2 = xanes.fit_components(two, refs[["LFP", "FP"]], normalise=True, pre=(700.0, 704.0), post=(725.0, 729.5))
    sel_pre, sel_post = (e >= 700) & (e <= 704), (e >= 725) & (e <= 729.5)
    step = [float(refs[k].values[sel_post].mean() - refs[k].values[sel_pre].mean()) for k in ("LFP", "FP")]
    w = np.array([30.0 * step[0], 10.0 * step[1]])
    assert_allclose([float(n2.LFP[0, 0]), float(n2.FP[0, 0])], w / w.sum(), atol=1e-6)
    assert abs(float(n2.offset[0, 0])) < 1e-6


def test_fit_components_messages_and_the_eight_reference_limit():
    e = np.arange(700.0, 731.0, 1.0)
    od = _od(np.full((1, 2), 30.0), 10.0, energy=e)
    refs = xanes.reference_spectra(e)
    _raises(TypeError, r"references must be an xarray\.Dataset, got DataArray", xanes.fit_components, od,
            refs.LFP)
    many = xr.Dataset({f"r{i}": ("energy", refs.LFP.values * (1 + 0.1 * i)) for i in range(9)},
                      coords={"energy": e})
    _raises(ValueError, r"references has 9 variables; at most 8 are supported", xanes.fit_components, od, many)
    eight = many[[f"r{i}" for i in range(8)]]
    assert xanes.fit_components(od, eight).attrs["references"] == [f"r{i}" for i in range(8)]
    _raises(ValueError, r"references cover 701–730 eV but od spans 700–730 eV", xanes.fit_components, od,
            refs.isel(energy=slice(1, None)))
    _raises(ValueError, r"references cover 700–729 eV but od spans 700–730 eV", xanes.fit_components, od,
            refs.isel(energy=slice(None, -1)))
    _raises(TypeError, r"normalise must be a bool, got int", xanes.fit_components, od, refs, normalise=1)
    _raises(TypeError, r"od must be an xarray\.DataArray, got ndarray", xanes.fit_components, od.values, refs)


# ============================================================== cluster_spectra


@pytest.fixture(scope="module")
def two_phase_od():
    e = np.arange(700.0, 730.0, 0.5)
    refs = xanes.reference_spectra(e)
    a = np.zeros((8, 10))
    a[:, :5] = 60.0
    t = np.full((8, 10), 60.0)
    t[0, 9] = 1.0  # far too little iron: left out by normalise="area"
    a[0, 9] = 0.0
    rng = np.random.default_rng(132)
    od = _od(a, t - a, 0.0, e, refs=refs) + rng.normal(0, 0.002, (e.size, 8, 10))
    return od.assign_coords(y=("y", np.arange(8) * 5.0, {"units": "nm"}))


def test_cluster_spectra_by_hand_and_metadata(two_phase_od):
    od = two_phase_od
    e = od.energy.values
    mask = np.ones((8, 10), bool)
    mask[7, 0] = False
    c = xanes.cluster_spectra(od, mask=mask, n_clusters=2, n_components=2, rng=133)
    lab = c.labels.values
    assert lab[7, 0] == -1 and lab[0, 9] == -1  # outside the mask; too little iron
    want = np.where(np.arange(10) < 5, 0, 1)[None, :].repeat(8, 0)  # LFP (lower edge energy) first
    keep = mask.copy()
    keep[0, 9] = False
    assert_array_equal(lab[keep], want[keep])
    # the mean spectra: pre-edge subtracted, divided by the 705-713 eV area, averaged by hand
    Y = od.values.reshape(e.size, -1).T
    Y = Y - Y[:, e < 705.0].mean(axis=1, keepdims=True)
    win = (e >= 705.0) & (e <= 713.0)
    Y = Y / np.trapz(Y[:, win], e[win], axis=1)[:, None]
    for k in (0, 1):
        assert_allclose(c.mean_spectrum.values[k], Y[(keep & (want == k)).ravel()].mean(axis=0), rtol=1e-9)
    assert c.labels.dtype.kind == "i"
    assert dict(c.labels.attrs) == {"units": "1", "long_name": "cluster (-1 = not clustered)"}
    assert c.mean_spectrum.dims == ("cluster", "energy")
    assert dict(c.mean_spectrum.attrs) == {"units": "1", "long_name": "mean spectrum of the cluster"}
    assert dict(c.explained_variance_ratio.attrs) == {"units": "1", "long_name": "explained variance"}
    assert c.explained_variance_ratio.dims == ("component",)
    assert c.scores.dims == ("component", "y", "x")
    assert dict(c.scores.attrs) == {"units": "1", "long_name": "PCA scores"}
    assert np.isnan(c.scores.values[:, 7, 0]).all() and np.isfinite(c.scores.values[:, keep]).all()
    assert c.cluster.values.tolist() == [0, 1] and c.component.values.tolist() == [1, 2]
    assert c.y.attrs == {"units": "nm"}
    assert_array_equal(c.energy.values, e)
    assert c.attrs == {"normalised": "area"}
    # the PCA of the kept spectra: scores and explained variance as sklearn-free SVD gives them
    Z = Y[keep.ravel()] - Y[keep.ravel()].mean(axis=0)
    s = np.linalg.svd(Z, compute_uv=False)
    assert_allclose(c.explained_variance_ratio.values, (s**2 / np.sum(s**2))[:2], rtol=1e-6)
    assert_allclose(np.abs(c.scores.values[0][keep]).sum(), np.abs(Z @ np.linalg.svd(Z)[2][0]).sum(), rtol=1e-6)


def test_cluster_spectra_other_normalisations(two_phase_od):
    od = two_phase_od
    mask = np.ones((8, 10), bool)
    raw = xanes.cluster_spectra(od, mask=mask, n_clusters=2, normalise=None, rng=0)
    assert raw.attrs == {"normalised": "None"}
    assert (raw.labels.values >= 0).all()  # nothing left out without normalisation
    # normalise=None: the thin pixel differs from the rest in scale -- its own cluster with k=2? no:
    # the mean spectra are raw OD means
    labs = raw.labels.values.ravel()
    for k in (0, 1):
        assert_allclose(raw.mean_spectrum.values[k], od.values.reshape(od.sizes["energy"], -1)[:, labs == k]
                        .mean(axis=1), rtol=1e-9)
    edge = xanes.cluster_spectra(od, mask=mask, n_clusters=2, normalise="edge", rng=0)
    assert edge.attrs == {"normalised": "edge"}
    n = xanes.normalise_edge(od).values.reshape(od.sizes["energy"], -1)
    labs = edge.labels.values.ravel()
    for k in (0, 1):
        assert_allclose(edge.mean_spectrum.values[k], n[:, labs == k].mean(axis=1), rtol=1e-9)


@pytest.mark.parametrize("kwargs, exc, message", [
    ({"n_components": 0}, ValueError, r"n_components must be a positive int, got 0"),
    ({"n_clusters": 2.0}, ValueError, r"n_clusters must be a positive int, got 2\.0"),
    ({"normalise": "max"}, ValueError, r"normalise must be one of \('area', 'edge', None\), got 'max'"),
    ({"rng": "seed"}, TypeError, r"rng must be a numpy\.random\.Generator, an int seed or None, got str"),
    ({"mask": np.ones((8, 9), bool)}, ValueError, r"mask must have shape \(8, 10\), got \(8, 9\)"),
    ({"n_clusters": 80}, ValueError, r"mask selects 79 pixels with finite spectra; need at least 80"),
    ({"n_components": 79}, ValueError, r"mask selects 79 pixels with finite spectra; need at least 80"),
])
def test_cluster_spectra_names_a_bad_option(two_phase_od, kwargs, exc, message):
    args = {"mask": np.ones((8, 10), bool), **kwargs}
    _raises(exc, message, xanes.cluster_spectra, two_phase_od, **args)


def test_cluster_spectra_bounds(two_phase_od):
    mask = np.ones((8, 10), bool)
    one = xanes.cluster_spectra(two_phase_od, mask=mask, n_clusters=1, n_components=1, rng=0)
    assert set(np.unique(one.labels.values)) == {-1, 0}
    assert one.component.values.tolist() == [1]
    # exactly n_components + 1 usable pixels: accepted
    few = np.zeros((8, 10), bool)
    few[1, :3] = True
    c = xanes.cluster_spectra(two_phase_od, mask=few, n_clusters=2, n_components=2, rng=0)
    assert c.sizes["component"] == 2
    _raises(ValueError, r"normalise='area' needs energies across 705-713 eV", xanes.cluster_spectra,
            two_phase_od.sel(energy=slice(None, 704.0)), mask=mask)


# ============================================================== edge_energy


def test_edge_energy_centroid_and_crossing_by_hand():
    e = np.arange(700.0, 731.0, 1.0)
    rng = np.random.default_rng(134)
    od = _od(rng.uniform(10, 60, (2, 3)), rng.uniform(10, 60, (2, 3)), 0.0, e)
    od = od.assign_coords(x=("x", [0.0, 1.0, 2.0], {"units": "um"}))
    n = xanes.normalise_edge(od).values
    cen = xanes.edge_energy(od)
    sel = (e >= 705.0) & (e <= 713.0)
    w = np.clip(n[sel], 0, None) * np.gradient(e[sel])[:, None, None]
    assert_allclose(cen.values, (e[sel][:, None, None] * w).sum(0) / w.sum(0), rtol=1e-12)
    assert dict(cen.attrs) == {"units": "eV", "long_name": "edge energy (centroid)"}
    assert cen.dims == ("y", "x") and cen.x.attrs == {"units": "um"}
    cr = xanes.edge_energy(od, method="crossing", level=0.7)
    assert dict(cr.attrs) == {"units": "eV", "long_name": "edge energy (crossing)"}
    for iy in range(2):
        for ix in range(3):
            y = n[sel, iy, ix]
            i = int(np.argmax(y >= 0.7))
            want = e[sel][i - 1] + (0.7 - y[i - 1]) / (y[i] - y[i - 1]) * (e[sel][i] - e[sel][i - 1])
            assert_allclose(cr.values[iy, ix], want, rtol=1e-12)
    # a window of its own; a spectrum with no positive signal or no crossing: NaN
    w2 = xanes.edge_energy(od, window=(706.0, 711.0))
    sel2 = (e >= 706.0) & (e <= 711.0)
    ww = np.clip(n[sel2], 0, None) * np.gradient(e[sel2])[:, None, None]
    assert_allclose(w2.values, (e[sel2][:, None, None] * ww).sum(0) / ww.sum(0), rtol=1e-12)
    # the crossing in a window of its own, with edge normalisation options of its own (pre, post, e0 passed on)
    norm_kw = {"pre": (700.0, 704.0), "post": (722.0, 730.0), "e0": 709.0}
    n3 = xanes.normalise_edge(od, **norm_kw).values
    cr3 = xanes.edge_energy(od, method="crossing", level=0.7, window=(706.0, 712.0), **norm_kw)
    sel3 = (e >= 706.0) & (e <= 712.0)
    for iy in range(2):
        for ix in range(3):
            y = n3[sel3, iy, ix]
            i = int(np.argmax(y >= 0.7))
            if i == 0:  # already above the level at the window's first energy: no crossing inside it
                assert np.isnan(cr3.values[iy, ix])
                continue
            want = e[sel3][i - 1] + (0.7 - y[i - 1]) / (y[i] - y[i - 1]) * (e[sel3][i] - e[sel3][i - 1])
            assert_allclose(cr3.values[iy, ix], want, rtol=1e-12)
    assert np.isfinite(cr3.values).any()
    assert np.isnan(xanes.edge_energy(od, method="crossing", window=(690.0, 700.0)).values).all()  # pre-edge only
    w3 = np.clip(n3[sel], 0, None) * np.gradient(e[sel])[:, None, None]  # centroid weights, same options
    assert_allclose(xanes.edge_energy(od, **norm_kw).values, (e[sel][:, None, None] * w3).sum(0) / w3.sum(0),
                    rtol=1e-12)
    # below zero across the window, a positive step: no positive weight, no crossing
    flat = _stack(np.where((e >= 705) & (e <= 713), -1.0, np.where(e > 713, 1.0, 0.0))[:, None, None]
                  * np.ones((1, 1, 2)), e)
    assert np.isnan(xanes.edge_energy(flat).values).all()
    assert np.isnan(xanes.edge_energy(flat, method="crossing").values).all()


@pytest.mark.parametrize("kwargs, exc, message", [
    ({"method": "max"}, ValueError, r"method must be one of \('centroid', 'crossing'\), got 'max'"),
    ({"level": 0.0}, ValueError, r"level must be a fraction of the edge step in \(0, 1\.5\), got 0\.0"),
    ({"level": 1.5}, ValueError, r"level must be a fraction of the edge step in \(0, 1\.5\), got 1\.5"),
    ({"window": (706.2, 706.8)}, ValueError, r"window \(706\.2, 706\.8\) holds fewer than 2 energies"),
])
def test_edge_energy_names_a_bad_option(kwargs, exc, message):
    od = _od(np.full((1, 2), 30.0), 10.0, energy=np.arange(700.0, 731.0, 1.0))
    _raises(exc, message, xanes.edge_energy, od, **kwargs)


def test_edge_energy_level_bounds_are_open():
    od = _od(np.full((1, 2), 30.0), 10.0, energy=np.arange(700.0, 731.0, 1.0))
    for level in (1e-3, 1.49):  # accepted (the result may be NaN where the spectrum never crosses)
        got = xanes.edge_energy(od, method="crossing", level=level)
        assert got.attrs["long_name"] == "edge energy (crossing)" and got.shape == (1, 2)
    one = xanes.edge_energy(od, window=(706.0, 707.0))  # two energies: enough
    assert np.isfinite(one.values).all()


# ============================================================== drift helpers with a closed form


def test_register_frames_recovers_known_subpixel_shifts_of_both_modalities():
    from scipy import ndimage

    from chemomech.xanes import _register_frames

    yy, xx = np.mgrid[:40, :44]
    img = np.exp(-((yy - 20.0) ** 2 / 50.0 + (xx - 21.0) ** 2 / 30.0)) + 0.3 * np.exp(
        -((yy - 12.0) ** 2 + (xx - 30.0) ** 2) / 8.0)
    true = np.array([[0.0, 0.0], [0.4, -0.7], [-1.3, 0.25]])
    frames = np.stack([2.0 * ndimage.shift(img, t, order=3, mode="nearest") + 0.1 for t in true])
    pred = np.stack([img] * 3)
    d, sig = _register_frames([frames], [pred], np.zeros((3, 2)), border=0)
    assert_allclose(d, true, atol=0.02)
    assert np.all(sig > 0) and np.all(sig < 0.05)
    # two modalities (the second one's contrast inverted): the same shifts
    d2, _ = _register_frames([frames, -frames], [pred, pred], np.zeros((3, 2)), border=2)
    assert_allclose(d2, true, atol=0.02)
    # no valid prediction: the start value is kept and sigma is NaN
    d3, sig3 = _register_frames([frames], [np.full_like(pred, np.nan)], true + 0.1, border=0)
    assert_allclose(d3, true + 0.1)
    assert np.isnan(sig3).all()


def test_roll_mask_moves_by_the_nearest_whole_pixel_and_fills_with_true():
    from chemomech.xanes import _roll_mask

    m = np.zeros((5, 6), bool)
    m[1, 2] = True
    for d, at in (((0.0, 0.0), (1, 2)), ((1.4, 2.6), (2, 5)), ((-1.0, -2.0), (0, 0)), ((2.0, -1.0), (3, 1))):
        out = _roll_mask(m, d)
        iy, ix = (int(round(v)) for v in d)
        inside = np.zeros_like(m)
        inside[max(iy, 0):5 + min(iy, 0), max(ix, 0):6 + min(ix, 0)] = True
        assert out[at], d
        assert out.sum() == 1 + (~inside).sum(), d
        assert out[~inside].all()
    assert _roll_mask(m, (5.0, 0.0)).all() and _roll_mask(m, (0.0, -6.0)).all()


def test_taper_and_border_mask_by_hand():
    from chemomech.xanes import _border_mask, _taper

    b = _border_mask((6, 7), 2)
    assert b.sum() == 6 * 7 - 2 * 3 and not b[2:4, 2:5].any()
    assert not _border_mask((6, 7), 0).any()
    t = _taper((12, 9), 2)
    one = lambda n: np.where(np.minimum(np.arange(n), n - 1 - np.arange(n)) - 2 < 0, 0.0,  # noqa: E731
                             0.5 - 0.5 * np.cos(np.pi * np.clip((np.minimum(np.arange(n), n - 1 - np.arange(n))
                                                                 - 2) / 2, 0, 1)))
    assert_allclose(t, one(12)[:, None] * one(9)[None, :])
    assert t[0].max() == 0 and t[6, 4] == 1.0 and abs(t[3, 4] - 0.5) < 1e-12
    assert_allclose(_taper((4, 5), 0)[1:-1, 1:-1], 1.0)  # border 0: only the outermost pixel is 0


def test_subsets_enumerate_every_free_set_largest_first():
    from chemomech.xanes import _subsets

    assert _subsets(2) == [(0, 1, 2), (0, 2), (1, 2), (2,)]
    assert len(_subsets(3)) == 8 and _subsets(0) == [(0,)]


def test_weighted_smooth_zero_sigma_is_the_identity_and_a_constant_stays():
    from chemomech.xanes import _weighted_smooth

    d = np.random.default_rng(135).normal(size=(7, 2))
    w = np.linspace(1, 3, 7)
    assert _weighted_smooth(d, w, 0.0) is d
    const = np.tile([1.5, -0.5], (7, 1))
    assert_allclose(_weighted_smooth(const, w, 2.0), const, atol=1e-12)
    # a wide kernel with equal weights: the least-squares line through all frames
    sm = _weighted_smooth(d, np.ones(7), 1e6)
    k = np.arange(7.0)
    for j in range(2):
        coef = np.polyfit(k, d[:, j], 1)
        assert_allclose(sm[:, j], np.polyval(coef, k), atol=1e-6)


# ============================================================== paths the chapters reach, on small inputs


def _intensity(lfp, fp, energy=E, seed=136, extra_od=0.0):
    od = _od(lfp, fp, 0.0, energy).values + extra_od
    i0 = 800.0 * (1.0 + 0.004 * (energy - 700.0))
    rng = np.random.default_rng(seed)
    return _stack(i0[:, None, None] * np.exp(-od) * (1.0 + rng.normal(0.0, 0.002, od.shape)), energy)


def test_map_lithium_drops_components_smaller_than_five_pixels():
    disc, _, lfp, fp = _particle_maps()
    fp = np.where(disc, fp, 0.0)
    blob4 = np.zeros_like(disc)
    blob4[1:3, 1:3] = True  # 4 px: a speck
    plus5 = np.zeros_like(disc)
    plus5[19, 20:23] = True
    plus5[18:21, 21] = True  # 5 px (4-connected): particle
    fp = fp + 50.0 * (blob4 | plus5)
    res = xanes.map_lithium(_intensity(lfp, fp), align=False, calibrate=False)
    assert_array_equal(res.mask.values, disc | plus5)
    assert res.attrs["n_particle"] == int(disc.sum() + 5)
    assert res.attrs["n_specks"] >= 4
    assert res.attrs["references"] == xanes.reference_spectra().attrs["source"]
    # user references without a "source" say so
    refs = xanes.reference_spectra(np.arange(699.0, 731.0, 0.25))
    refs.attrs = {}
    own = xanes.map_lithium(_intensity(lfp, fp), references=refs, align=False, calibrate=False)
    assert own.attrs["references"] == "user-supplied references"


def test_automatic_background_ignores_an_absorber_without_iron():
    # a carbon-like blob absorbs the same at every energy: no Fe edge jump, so it is background, not particle
    disc, _, lfp, fp = _particle_maps()
    fp = np.where(disc, fp, 0.0)
    carbon = np.zeros_like(disc)
    carbon[15:21, 0:6] = True
    stack = _intensity(lfp, fp, extra_od=0.8 * carbon)
    with_c = xanes.optical_density(stack)
    without = xanes.optical_density(_intensity(lfp, fp))
    assert with_c.attrs["background"] == without.attrs["background"]
    # and the iron-free blob comes out of the fit thin (no Fe), not as particle
    res = xanes.map_lithium(stack, align=False, calibrate=False)
    assert not res.mask.values[carbon].any()
    assert_array_equal(res.mask.values, disc)


def test_estimate_drift_without_refinement_still_calibrates(hand_stack):
    stack = hand_stack[0]
    bg = np.zeros((NY, NX), bool)
    bg[:, :3] = True  # an explicit background (membrane columns) is the one used
    d = xanes.estimate_drift(stack, refine=0, border=0, background=bg)  # calibrate=True by default
    shifts = xr.DataArray(d.values, dims=("energy", "axis"))
    od = xanes.optical_density(stack, shifts=shifts, border=0, background=bg)
    fit = xanes.fit_spectra(od)
    t = fit.thickness.values
    ok = np.isfinite(t)
    cal = xanes.calibrate_references(od, mask=ok & (t > 0.4 * np.percentile(t[ok], 99)))
    assert d.attrs["energy_offset_ev"] == cal.attrs["energy_offset_ev"]
    assert d.attrs["broadening_ev"] == cal.attrs["broadening_ev"]
    assert abs(d.attrs["energy_offset_ev"]) < 0.05


# ============================================================== every function names a bad od / stack


def _od_small():
    return _od(np.full((3, 4), 30.0), 10.0)


@pytest.mark.parametrize("func, name, kwargs", [
    (xanes.fit_spectra, "od", {}),
    (xanes.principal_components, "od", {"mask": np.ones((3, 4), bool)}),
    (xanes.calibrate_references, "od", {}),
    (xanes.normalise_edge, "od", {}),
    (xanes.fit_components, "od", {"references": xanes.reference_spectra()}),
    (xanes.cluster_spectra, "od", {"mask": np.ones((3, 4), bool)}),
    (xanes.edge_energy, "od", {}),
    (xanes.optical_density, "stack", {}),
    (xanes.estimate_drift, "stack", {}),
    (xanes.find_failed_frames, "stack", {}),
    (xanes.map_lithium, "stack", {}),
])
def test_every_function_names_its_stack_argument(func, name, kwargs):
    od = _od_small()
    _raises(TypeError, rf"{name} must be an xarray\.DataArray, got ndarray", func, od.values, **kwargs)
    _raises(ValueError, rf"{name} must have dims \('energy', 'y', 'x'\), got \('y', 'energy', 'x'\); "
                        r"use \.transpose\(\.\.\.\) or \.rename\(\.\.\.\) first",
            func, od.transpose("y", "energy", "x"), **kwargs)


@pytest.mark.parametrize("func, kwargs", [
    (xanes.normalise_edge, {}),
    (xanes.cluster_spectra, {"mask": np.ones((3, 4), bool)}),
    (xanes.edge_energy, {}),
    (xanes.fit_components, {"references": xanes.reference_spectra()}),
])
def test_od_energy_checks_name_od(func, kwargs):
    od = _od_small()
    _raises(ValueError, r"od energies must be strictly increasing \(eV\); got .*", func,
            od.isel(energy=slice(None, None, -1)), **kwargs)


def test_undefined_pixels_are_nan_without_runtime_warnings():
    # a membrane pixel with no signal at all (OD 0 at every energy) and a NaN pixel: NaN results, no warnings
    od = _od(np.array([[30.0, 0.0, 20.0]]), np.array([[10.0, 0.0, 0.0]]), 0.0)
    od[:, 0, 2] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit = xanes.fit_spectra(od)
        comp = xanes.fit_components(od, xanes.reference_spectra())
        norm = xanes.normalise_edge(od)
        edge = xanes.edge_energy(od)
        cross = xanes.edge_energy(od, method="crossing")
        uni = xanes.fit_spectra(od, weighting="uniform")
    for r in (fit, uni):
        assert np.isfinite(r.X.values[0, 0]) and np.isnan(r.X.values[0, 1]) and np.isnan(r.X.values[0, 2])
        assert r.thickness.values[0, 1] == 0.0 and np.isnan(r.X_volume.values[0, 1])
    assert np.isnan(comp.fraction_LFP.values[0, 1]) and comp.total.values[0, 1] == 0.0
    assert np.isnan(norm.values[:, 0, 1]).all() and norm.edge_step.values[0, 1] == 0.0
    assert np.isnan(edge.values[0, 1:]).all() and np.isfinite(edge.values[0, 0])
    assert np.isnan(cross.values[0, 1:]).all()


def test_map_lithium_leaves_a_nan_region_out_without_warnings(hand_stack):
    stack, disc, *_ = hand_stack
    holed = stack.copy(deep=True)
    holed[:, 18:, :4] = np.nan  # outside the reconstructed field at every energy
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = xanes.map_lithium(holed, align=False, calibrate=False)
    assert_array_equal(res.mask.values, disc)
    assert np.isnan(res.X.values[18:, :4]).all()


def test_map_lithium_pca_check_whitens_with_the_residual_noise_model(hand_stack, hand_map):
    # documented: sigma(E, pixel) = sigma_E * sigma_pixel from the fit residuals, times sqrt(n_E / (n_E - 3))
    stack = hand_stack[0]
    od = xanes.optical_density(stack)
    fit = xanes.fit_spectra(od)
    mask = hand_map.mask.values
    r = od.values - xanes.predict_od(fit, E).values
    sig_e = np.sqrt(np.mean(r[:, mask] ** 2, axis=1))
    sig_p = np.sqrt(np.mean((r / sig_e[:, None, None]) ** 2, axis=0))
    noise = sig_e[:, None, None] * sig_p[None] * np.sqrt(E.size / (E.size - 3))
    pc = xanes.principal_components(od, mask=mask, noise=noise)
    assert_allclose(hand_map.attrs["pca_explained_variance_ratio"], pc.explained_variance_ratio.values,
                    rtol=1e-9)
    assert hand_map.attrs["pca_n_significant"] == pc.attrs["n_significant"] == 2


def test_automatic_border_of_complex_stacks_is_min_6_and_a_sixteenth_of_the_field():
    rng = np.random.default_rng(137)
    e = np.array([700.0, 704.0, 708.0, 710.0, 725.0])
    for ny, nx, want in ((40, 48, 2), (120, 112, 6)):
        yy, xx = np.mgrid[:ny, :nx]
        part = ((yy - ny / 2) ** 2 + (xx - nx / 2) ** 2) < (ny / 6) ** 2
        od = np.where(part, 1.0, 0.0) * np.array([0.2, 0.25, 1.0, 0.6, 0.5])[:, None, None]
        amp = np.exp(-od / 2) * (1 + 0.001 * rng.normal(size=od.shape))
        obj = _stack(amp * np.exp(0.3j * od), e)
        counts = {b: xanes.optical_density(obj, border=b).attrs["background"] for b in (want - 1, want, want + 1)}
        assert xanes.optical_density(obj).attrs["background"] == counts[want], (ny, nx)
        assert len(set(counts.values())) == 3
        # intensities: no border
        inten = _stack(amp**2, e)
        assert xanes.optical_density(inten).attrs["background"] == xanes.optical_density(inten, border=0).attrs[
            "background"] != xanes.optical_density(inten, border=1).attrs["background"]


def test_estimate_drift_calibrates_in_every_round_and_map_lithium_reports_it():
    from scipy import ndimage

    disc, _, lfp, fp = _particle_maps()
    fp = np.where(disc, fp, 0.0)
    od = _od(lfp, fp, 0.0, E, refs=xanes.reference_spectra(E + 0.25)).values  # the scale is 0.25 eV off
    i0 = 900.0 * (1.0 + 0.004 * (E - 700.0))
    rng = np.random.default_rng(138)
    inten = i0[:, None, None] * np.exp(-od) * (1.0 + rng.normal(0.0, 0.002, od.shape))
    sh = np.zeros((E.size, 2))
    sh[5] = [-1.0, 2.0]
    stack = _stack(np.stack([ndimage.shift(f, s, order=1, mode="nearest") for f, s in zip(inten, sh)]), E)
    d = xanes.estimate_drift(stack, refine=2)
    assert abs(d.attrs["energy_offset_ev"] - 0.25) < 0.03
    assert 0.0 <= d.attrs["broadening_ev"] < 0.3
    assert_allclose(d.values[5], sh[5], atol=0.05)
    res = xanes.map_lithium(stack)  # align=True, calibrate=True
    assert abs(res.attrs["energy_offset_ev"] - 0.25) < 0.03 and res.attrs["aligned"] == 1
    assert res.attrs["reference_broadening_ev"] < 0.3
    assert_allclose(res.shifts.values[5], sh[5], atol=0.05)
    assert np.isfinite(res.shift_sigma.values).all() and (res.shift_sigma.values < 0.1).all()
    inside = res.mask.values
    rim = ndimage.binary_dilation(disc)  # a rim pixel interpolated back from the moved frame may count
    assert inside[disc].mean() > 0.9 and not inside[~rim].any()
    assert_allclose(res.X.values[inside & (lfp > 0)], 1.0, atol=0.05)
    assert_allclose(res.X.values[inside & (fp > 0)], 0.0, atol=0.05)


def test_weighted_smooth_is_a_local_weighted_line_at_every_frame():
    from chemomech.xanes import _weighted_smooth

    rng = np.random.default_rng(139)
    d = rng.normal(size=(9, 2))
    w = rng.uniform(0.2, 3.0, 9)
    k = np.arange(9.0)
    for sigma in (0.8, 2.5):
        sm = _weighted_smooth(d, w, sigma)
        for t in range(9):
            kern = np.exp(-0.5 * ((k - t) / sigma) ** 2) * w
            for j in range(2):
                coef = np.polyfit(k - t, d[:, j], 1, w=np.sqrt(kern))
                assert_allclose(sm[t, j], coef[1], rtol=1e-9, atol=1e-12)


def test_phase_images_are_invariant_to_a_linear_phase_ramp_and_a_global_phase():
    from chemomech.xanes import _phase_images

    rng = np.random.default_rng(131)
    yy, xx = np.mgrid[:30, :34]
    part = ((yy - 15.0) ** 2 + (xx - 16.0) ** 2) < 49.0
    phi = np.stack([s * part * (1.0 + 0.1 * rng.normal(size=part.shape)) for s in (0.3, 0.5, 0.8)])
    amp = np.exp(-0.2 * part) * np.ones((3, 1, 1))
    obj = amp * np.exp(1j * phi)
    ramp = np.exp(1j * (0.21 * yy - 0.13 * xx + 1.0))[None] * np.exp(1j * np.array([0.0, 0.5, -2.0]))[:, None, None]
    st0, st1 = _stack(obj, E5[:3]), _stack(obj * ramp, E5[:3])
    for border in (0, 3):
        p0, p1 = _phase_images(st0, border), _phase_images(st1, border)
        assert_allclose(p1, p0, atol=1e-9)
        # the particle's own phase, relative to its amplitude-weighted mean inside the field (within the
        # ~5e-5 rad/px ramp that the particle's own phase gradients add to the neighbour-difference estimate)
        inner = np.ones(part.shape, bool) if border == 0 else ~xanes._border_mask(part.shape, border)
        for k in range(3):
            ref = np.angle(np.sum(np.where(inner, obj[k], 0.0)))
            assert_allclose(p0[k], np.angle(obj[k] * np.exp(-1j * ref)), atol=5e-3)
    # NaN where the object is not finite
    holed = obj.copy()
    holed[1, :3, :3] = np.nan
    out = _phase_images(_stack(holed, E5[:3]), 0)
    assert np.isnan(out[1, :3, :3]).all() and np.isfinite(out[1, 3:, 3:]).all()


def test_predict_phase_regresses_each_frame_on_the_thickness_maps_and_a_plane():
    from chemomech.xanes import _predict_phase

    rng = np.random.default_rng(132)
    ny, nx = 20, 24
    a, b = rng.uniform(0, 50, (2, ny, nx))
    a[0, 0] = np.nan  # not fitted there: NaN in the prediction
    yy, xx = np.mgrid[:ny, :nx] / max(ny, nx)
    coefs = rng.normal(size=(4, 5))
    phase = np.stack([c[0] * np.nan_to_num(a) + c[1] * b + c[2] + c[3] * yy + c[4] * xx for c in coefs])
    pred = _predict_phase(phase, a, b, np.zeros((4, 2)))
    ok = np.isfinite(a)
    assert_allclose(pred[:, ok], phase[:, ok], atol=1e-9)
    assert np.isnan(pred[:, ~ok]).all()
    # a frame with fewer than 10 usable pixels is not predicted
    few = phase.copy()
    few[2].ravel()[9:] = np.nan
    p2 = _predict_phase(few, a, b, np.zeros((4, 2)))
    assert np.isnan(p2[2]).all()
    assert_allclose(p2[[0, 1, 3]][:, ok], phase[[0, 1, 3]][:, ok], atol=1e-9)


def test_calibration_curve_takes_any_mix_of_arrays_and_dataarrays():
    x = np.array([0.1, 0.2, 0.35, 0.5])
    s = np.array([0.1, 0.1, 0.1, 0.2])
    t = np.array([0.1, 0.3, 0.1, 0.5])
    want = [0.5, 0.75, 0.75, 1.0]  # |x - t| / s = 0, 1, 2.5, 0
    for i in range(3):
        args = [x, s, t]
        args[i] = xr.DataArray(args[i], dims="pixel")
        c = xanes.calibration_curve(*args, k=[0.0, 1.0, 2.0, 3.0])
        assert_allclose(c.observed.values, want)


def test_register_frames_sigma_matches_the_scatter_of_repeated_noisy_frames():
    from scipy import ndimage

    from chemomech.xanes import _register_frames

    yy, xx = np.mgrid[:32, :36]
    img = np.exp(-((yy - 16.0) ** 2 / 40.0 + (xx - 17.0) ** 2 / 25.0))
    true = np.array([0.3, -0.4])
    clean = 1.5 * ndimage.shift(img, true, order=3, mode="nearest") + 0.2
    rng = np.random.default_rng(133)
    d, s = [], []
    for _ in range(60):
        frames = np.stack([img, clean + rng.normal(0, 0.02, img.shape)])
        dk, sk = _register_frames([frames], [np.stack([img, img])], np.zeros((2, 2)), border=0)
        d.append(dk[1])
        s.append(sk[1])
    d, s = np.array(d), np.array(s)
    assert_allclose(d.mean(axis=0), true, atol=0.01)
    ratio = d.std(axis=0) / np.sqrt(np.mean(s**2, axis=0))
    assert np.all((ratio > 0.7) & (ratio < 1.4)), ratio


def test_explicit_background_may_hold_at_most_half_of_a_small_particle():
    from chemomech.xanes import _absorbance, _edge_jump, _otsu_particle

    e = np.array([700.0, 703.0, 708.0, 710.0, 711.0])
    rng = np.random.default_rng(134)
    t = np.ones((5, 40, 40)) * (1.0 + 0.001 * rng.normal(size=(5, 40, 40)))
    t[:, 18:24, 18:24] *= np.array([0.95, 0.95, 0.5, 0.6, 0.6])[:, None, None]
    st = _stack(t, e)
    particle = _otsu_particle(_edge_jump(_absorbance(st), e))
    idx = np.flatnonzero(particle.ravel())
    n = idx.size
    assert 16 <= n <= 60  # a small particle in a large field: its pixels are < 10 % of any background
    for left_out, ok in ((n // 2 + n % 2, True), (n // 2 - 1 + n % 2, False)):
        bg = np.ones(particle.shape, bool)
        bg.ravel()[idx[:left_out]] = False
        if ok:
            assert xanes.optical_density(st, background=bg).attrs["background"] == bg.sum()
        else:
            _raises(ValueError, r"background covers the particle \(\d+% of its pixels show the Fe edge\); "
                                r"pass a mask of particle-free membrane pixels only",
                    xanes.optical_density, st, background=bg)


def test_centroid_and_crossing_helpers_by_hand():
    from chemomech.xanes import _centroid, _edge_crossing

    e = np.arange(700.0, 716.0, 1.0)
    spec = np.stack([np.exp(-0.5 * ((e - c) / 1.5) ** 2) for c in (708.0, 710.0)], axis=1) - 0.05
    sel = (e >= 705.0) & (e <= 713.0)
    w = np.clip(spec[sel], 0.0, None) + 1e-12
    assert_allclose(_centroid(spec, e), (e[sel][:, None] * w).sum(0) / w.sum(0), rtol=1e-12)
    sel2 = (e >= 707.0) & (e <= 709.0)
    w2 = np.clip(spec[sel2], 0.0, None) + 1e-12
    assert_allclose(_centroid(spec, e, (707.0, 709.0)), (e[sel2][:, None] * w2).sum(0) / w2.sum(0), rtol=1e-12)
    # crossing: linear interpolation on the rising flank; NaN if already above at the window's first energy
    ramp = np.clip((e - 704.0) / 8.0, 0.0, 1.0)[:, None] * np.ones((1, 2))  # reaches 0.5 at 708 eV
    assert_allclose(_edge_crossing(ramp, e), [708.0, 708.0])
    assert_allclose(_edge_crossing(ramp, e, level=0.3), [706.4, 706.4])
    assert np.isnan(_edge_crossing(ramp, e, window=(709.0, 713.0))).all()
    assert np.isnan(_edge_crossing(ramp, e, level=1.2)).all()


def test_coarse_drift_is_subpixel_with_the_default_upsampling_and_ignores_a_nan_corner(drift_stack):
    truth = np.array([0.0, -1.0, 1.5, 2.0, 0.5])
    d = xanes.estimate_drift(drift_stack, refine=0, border=0, calibrate=False)
    assert_allclose(d.sel(axis="y").values, truth, atol=0.1)
    assert_allclose(d.sel(axis="x").values, -0.5 * truth, atol=0.1)
    holed = drift_stack.copy(deep=True)
    holed[3, :6, :6] = np.nan
    d2 = xanes.estimate_drift(holed, refine=0, border=0, calibrate=False)
    assert_allclose(d2.values, d.values, atol=0.1)


# ============================================================== two bugs these contracts found (fixed in xanes.py)


@pytest.mark.parametrize("refs", [
    xr.Dataset({"LFP": ("k", [1.0, 2.0])}),
    xr.Dataset({"LFP": ("k", [1.0, 2.0])}, coords={"energy": [700.0, 730.0]}),
])
def test_references_without_a_variable_on_energy_are_named(refs):
    # was a KeyError ('energy') or numpy's "need at least one array to stack"
    od = _od(np.full((2, 3), 30.0), 10.0)
    _raises(ValueError, r"references has no variable on 'energy'", xanes.calibrate_references, od, references=refs)
    _raises(ValueError, r"references has no variable on 'energy'", xanes.fit_components, od, refs)


def test_calibrate_references_refines_the_offset_with_the_broadening_held_at_zero():
    # with max_broadening_ev=0 the Nelder-Mead simplex had a vertex at broadening -0.1 eV (cost inf): the offset
    # stayed on its 0.1 eV grid (-0.25 for a true -0.27) or, with `start`, where it started
    e = np.arange(700.0, 730.0, 0.25)
    a, b = np.meshgrid(np.linspace(10, 80, 5), np.linspace(5, 70, 4))
    od = _od(a, b, 0.02, e, refs=xanes.reference_spectra(e - 0.27))
    for kwargs in ({}, {"start": (0.0, 0.0)}, {"start": (0.4, 0.0)}):
        cal = xanes.calibrate_references(od, max_broadening_ev=0.0, **kwargs)
        assert abs(cal.attrs["energy_offset_ev"] + 0.27) < 0.005, kwargs
        assert cal.attrs["broadening_ev"] == 0.0
    # a search range smaller than the simplex steps: the search stays inside it
    small = xanes.calibrate_references(od, max_offset_ev=0.03, max_broadening_ev=0.05)
    assert abs(small.attrs["energy_offset_ev"]) <= 0.03 and 0.0 <= small.attrs["broadening_ev"] <= 0.05
    assert small.attrs["energy_offset_ev"] < -0.02  # pushed to the end of its range, towards -0.27


# ============================================================== exact dims and coordinates of every result


def test_every_result_has_exactly_its_documented_dims_and_coordinates(hand_stack, hand_map, two_phase_od):
    stack = hand_stack[0]
    od = xanes.optical_density(stack)
    assert dict(od.sizes) == {"energy": E.size, "y": NY, "x": NX}
    assert set(od.coords) == {"energy", "y", "x", "incident"}
    fit = xanes.fit_spectra(od)
    assert dict(fit.sizes) == {"y": NY, "x": NX} and set(fit.coords) == {"y", "x"}
    assert dict(hand_map.sizes) == {"y": NY, "x": NX, "energy": E.size, "axis": 2}
    assert set(hand_map.coords) == {"y", "x", "energy", "axis"}
    pred = xanes.predict_od(fit, E[:3])
    assert dict(pred.sizes) == {"energy": 3, "y": NY, "x": NX} and set(pred.coords) == {"energy", "y", "x"}
    refs = xanes.reference_spectra(E)
    assert dict(refs.sizes) == {"energy": E.size} and set(refs.coords) == {"energy"}
    cal = xanes.calibrate_references(od, max_offset_ev=0.0, max_broadening_ev=0.0)
    assert dict(cal.sizes) == {"energy": E.size} and set(cal.coords) == {"energy"}
    pc = xanes.principal_components(od, mask=hand_map.mask.values, n_components=3)
    assert dict(pc.sizes) == {"component": 3} and set(pc.coords) == {"component"}
    cc = xanes.calibration_curve([0.1, 0.2], [0.1, 0.1], [0.1, 0.1], k=[1.0, 2.0])
    assert dict(cc.sizes) == {"k": 2} and set(cc.coords) == {"k"}
    norm = xanes.normalise_edge(od)
    assert set(norm.coords) == {"energy", "y", "x", "incident", "edge_step"}
    ee = xanes.edge_energy(norm.assign_coords(edge_step=norm.edge_step))
    assert ee.dims == ("y", "x") and set(ee.coords) == {"y", "x"}
    comp = xanes.fit_components(norm, refs, normalise=False)
    assert dict(comp.sizes) == {"y": NY, "x": NX} and set(comp.coords) == {"y", "x"}
    c = xanes.cluster_spectra(two_phase_od, mask=np.ones((8, 10), bool), n_clusters=2, n_components=2, rng=0)
    assert dict(c.sizes) == {"y": 8, "x": 10, "cluster": 2, "energy": two_phase_od.sizes["energy"],
                             "component": 2}
    assert set(c.coords) == {"energy", "cluster", "component", "y"}
    c2 = xanes.cluster_spectra(xanes.normalise_edge(two_phase_od), mask=np.ones((8, 10), bool), n_clusters=2,
                               normalise=None, rng=0)
    assert "edge_step" not in c2.coords
    d = xanes.estimate_drift(stack, refine=0, calibrate=False)
    assert dict(d.sizes) == {"energy": E.size, "axis": 2} and set(d.coords) == {"energy", "axis"}


def test_particle_is_thicker_than_five_robust_sds_of_the_background():
    # documented rule: thickness > median + 5 * 1.4826 * MAD of the background's thickness, without components
    # of fewer than 5 px; a thin wedge (0-3 nm) puts pixels on both sides of that level
    from scipy import ndimage

    from chemomech.xanes import _edge_jump, _otsu_particle

    ny, nx = 30, 36
    yy, xx = np.mgrid[:ny, :nx]
    disc = (yy - 10.0) ** 2 + (xx - 10.0) ** 2 <= 36.0
    lfp = np.where(disc, 60.0, 0.0)
    fp = np.zeros((ny, nx))
    wedge = (yy >= 22) & (yy < 26) & (xx >= 4) & (xx < 34)
    fp[wedge] = (3.0 * (xx - 4) / 29.0)[wedge]
    od = _od(lfp, fp, 0.0, E).values
    rng = np.random.default_rng(135)
    stack = _stack(1000.0 * np.exp(-od) * (1.0 + rng.normal(0.0, 0.002, od.shape)), E)
    res = xanes.map_lithium(stack, align=False, calibrate=False)
    o = xanes.optical_density(stack)
    t = xanes.fit_spectra(o).thickness.values
    bg = ~ndimage.binary_dilation(_otsu_particle(_edge_jump(o.values, E)), iterations=4)
    med = np.median(t[bg])
    mad = 1.4826 * np.median(np.abs(t[bg] - med))

    def count(n_sd):
        part = t > med + n_sd * mad
        lab, n = ndimage.label(part)
        sizes = np.bincount(lab.ravel(), minlength=n + 1)
        return int((part & (sizes[lab] >= 5)).sum())

    assert res.attrs["n_particle"] == count(5.0)
    assert count(4.0) > count(5.0) > count(6.0) > disc.sum()  # the wedge straddles the level
