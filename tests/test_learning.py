"""Tests of chemomech.learning: physics-constrained learning of eps0(X).

Fast tests use one coarse twin particle (12 nm pixels, coarse truth mesh); the
acceptance tests (marked slow) use the named set P1–P5 at 5 nm pixels with the
noise of the issue (sigma_strain = 5e-4, sigma_X = 0.03).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import xarray as xr

from chemomech import learning, materials, strain, twin
from chemomech.learning import EigenstrainModel, fit_eigenstrain, legendre_basis, naive_regression, simex

SLOPE_TRUTH = np.array([materials.VEGARD_AA, materials.VEGARD_CC])
X_EVAL = np.linspace(0.2, 0.8, 13)  # acceptance range of the slope
SIGMA_STRAIN = 5e-4
SIGMA_X = 0.03


@pytest.fixture(scope="module")
def coarse():
    """One biphasic particle, noise-free, 12 nm pixels (non-square image)."""
    p = twin.make_particle("coarse", batch="biphasic", seed=5, mesh_nrefs=4)
    ds = p.render(pixel_size_nm=12.0)
    assert ds.sizes["y"] != ds.sizes["x"]
    return ds


def _strain(ds):
    return ds[["exx", "eyy", "exy"]]


# --- basis and model ------------------------------------------------------------------------


def test_basis_vanishes_at_zero_and_derivative_matches_finite_difference():
    x = np.array([0.0, 0.3, 0.7])
    b = legendre_basis(x, 4)
    assert np.all(b[0] == 0)
    h = 1e-6
    fd = (legendre_basis(x + h, 4) - legendre_basis(x - h, 4)) / (2 * h)
    np.testing.assert_allclose(legendre_basis(x, 4, derivative=1), fd, rtol=1e-6, atol=1e-6)


def test_noise_free_fit_recovers_vegard_with_right_axes(coarse):
    model = fit_eigenstrain(_strain(coarse), coarse.X, degree=1, n_boot=0)
    # 12 nm pixels against a coarse truth mesh (nrefs=4): 2.1 % mismatch along c measured;
    # at 5 nm and the default truth mesh it is 0.2 % (see the slow tests)
    np.testing.assert_allclose(model.derivative(X_EVAL), np.tile(SLOPE_TRUTH, (13, 1)), rtol=0.03)
    e = model.eigenstrain([0.0, 1.0])
    assert e.shape == (2, 2) and np.all(e[0] == 0)
    assert e[1, 0] > 0 > e[1, 1]  # a expands, c contracts: a transpose would fail


def test_offsets_are_nuisance_parameters(coarse):
    base = fit_eigenstrain(_strain(coarse), coarse.X, degree=2, n_boot=0)
    shifted = _strain(coarse).copy()
    shifted["exx"] = shifted["exx"] + 0.003
    shifted["exy"] = shifted["exy"] - 0.001
    moved = fit_eigenstrain(shifted, coarse.X, degree=2, n_boot=0)
    np.testing.assert_allclose(moved.coef, base.coef, atol=1e-10)
    name = list(moved.offsets)[0]
    np.testing.assert_allclose(moved.offsets[name] - base.offsets[name], [0.003, 0.0, -0.001], atol=1e-9)


def test_dirichlet_noise_free(coarse):
    model = fit_eigenstrain(_strain(coarse), coarse.X, degree=1, boundary="dirichlet", n_boot=0)
    np.testing.assert_allclose(model.derivative([0.5])[0], SLOPE_TRUTH, rtol=0.03)
    with pytest.raises(ValueError, match="strain"):
        model.predict_strain(coarse.X)


def test_predict_strain_matches_truth_and_residual_removes_offset(coarse):
    truth = EigenstrainModel.from_law(twin.vegard_law(), 1)
    pred = truth.predict_strain(coarse.X)
    m = pred.mask.values
    for v in ("exx", "eyy", "exy"):
        # interior pixels: the pixel mesh reproduces the fine-mesh truth to ~1e-4
        err = np.abs(pred[v].values[m] - coarse[v].values[m])
        assert np.median(err) < 2e-4, v
    shifted = _strain(coarse).copy()
    shifted["eyy"] = shifted["eyy"] + 0.002
    res = truth.residual(shifted, coarse.X)
    np.testing.assert_allclose(res.attrs["offsets"][1] - truth.residual(_strain(coarse), coarse.X).attrs["offsets"][1],
                               0.002, atol=1e-9)
    assert np.isnan(res.exx.values[~m]).all()


def test_summary_and_bootstrap(coarse):
    g = np.random.default_rng(3)
    noisy = _strain(coarse).copy()
    for v in ("exx", "eyy", "exy"):
        noisy[v] = noisy[v] + SIGMA_STRAIN * g.standard_normal(noisy[v].shape)
    model = fit_eigenstrain(noisy, coarse.X, degree=2, n_boot=30, rng=1)
    s = model.summary()
    assert s.coef.shape == (2, 2) and s.slope.shape == (2, 3)
    assert np.all(np.isfinite(s.coef_se)) and np.all(s.slope_se > 0)
    assert np.all(s.slope_low <= s.slope) and np.all(s.slope <= s.slope_high)
    # slope SE with ~300 pixels and 5e-4 noise: of order 1e-3, far below the slope itself
    assert float(s.slope_se.max()) < 0.01
    lo, hi = model.interval([0.5], quantity="eigenstrain")
    assert lo.shape == (1, 2) and np.all(lo < hi)


def test_degree_selection_by_spatial_cv_is_reported(coarse):
    model = fit_eigenstrain(_strain(coarse), coarse.X, max_degree=3, n_boot=0, rng=0)
    assert model.cv is not None and model.cv.attrs["folds"] == "spatial blocks"
    assert model.cv.mse.shape == (3, 5)
    assert model.degree == model.cv.attrs["selected"]


def test_monotonic_and_smoothness_keep_the_slope(coarse):
    model = fit_eigenstrain(_strain(coarse), coarse.X, degree=3, monotonic=True, smoothness=1e-3, n_boot=0)
    d = model.derivative(np.linspace(0, 1, 21))
    assert np.all(d[:, 0] >= -1e-9) and np.all(d[:, 1] <= 1e-9)


def test_inputs_are_not_modified(coarse):
    s = _strain(coarse).copy(deep=True)
    x = coarse.X.copy(deep=True)
    fit_eigenstrain(s, x, degree=1, n_boot=0)
    xr.testing.assert_identical(s, _strain(coarse))
    xr.testing.assert_identical(x, coarse.X)


# --- bad input --------------------------------------------------------------------------------


def test_mismatched_grids_raise(coarse):
    with pytest.raises(ValueError, match="X"):
        fit_eigenstrain(_strain(coarse), coarse.X[:-1], degree=1)
    shifted = coarse.X.assign_coords(x=coarse.x + 1.0)
    with pytest.raises(ValueError, match="different grids"):
        fit_eigenstrain(_strain(coarse), shifted, degree=1)


def test_too_few_pixels_for_degree(coarse):
    m = np.zeros(coarse.X.shape, bool)
    cy, cx = np.array(m.shape) // 2
    m[cy - 2:cy + 3, cx - 2:cx + 3] = True  # 25 pixels
    with pytest.raises(ValueError, match="mask selects 25 pixels"):
        fit_eigenstrain(_strain(coarse), coarse.X, mask=m, degree=3)


def test_x_outside_unit_interval_raises(coarse):
    # noise may take an unclipped X a little outside [0, 1]: accepted; far outside it is not a Li fraction
    fit_eigenstrain(_strain(coarse), coarse.X + 0.2, degree=1, n_boot=0)
    with pytest.raises(ValueError, match=r"X must be a Li fraction.*\[-0.5, 1.5\]"):
        fit_eigenstrain(_strain(coarse), coarse.X + 0.7, degree=1)
    model = EigenstrainModel.from_law(twin.vegard_law(), 1)
    with pytest.raises(ValueError, match="X must lie"):
        model.derivative([1.5])


def test_mask_in_two_pieces_names_the_particle(coarse):
    m = coarse.mask.values.copy()
    m[:, m.shape[1] // 2] = False  # cut the particle in two
    with pytest.raises(ValueError, match=r"mask\[1\].*edge-connected"):
        fit_eigenstrain([_strain(coarse), _strain(coarse)], [coarse.X, coarse.X],
                        mask=[coarse.mask.values, m], degree=1)


def test_two_copies_get_separate_offsets(coarse):
    shifted = _strain(coarse).copy()
    shifted["eyy"] = shifted["eyy"] - 0.002
    model = fit_eigenstrain([_strain(coarse), shifted], [coarse.X, coarse.X], degree=1, n_boot=0)
    assert len(model.offsets) == 2
    a, b = model.offsets.values()
    np.testing.assert_allclose(b - a, [0.0, -0.002, 0.0], atol=1e-9)


def test_other_bad_options(coarse):
    with pytest.raises(ValueError, match="boundary"):
        fit_eigenstrain(_strain(coarse), coarse.X, boundary="clamped")
    with pytest.raises(TypeError, match="strain"):
        fit_eigenstrain(coarse.exx, coarse.X)
    with pytest.raises(ValueError, match="missing"):
        fit_eigenstrain(coarse[["exx", "eyy"]], coarse.X)
    with pytest.raises(ValueError, match="one map per strain"):
        fit_eigenstrain([_strain(coarse), _strain(coarse)], [coarse.X])
    with pytest.raises(ValueError, match="degree"):
        fit_eigenstrain(_strain(coarse), coarse.X, degree=0)
    with pytest.raises(TypeError, match="mask"):
        fit_eigenstrain(_strain(coarse), coarse.X, mask=coarse.X.values)


# --- naive regression and SIMEX -------------------------------------------------------------------


def test_naive_regression_and_simex_on_a_known_line():
    g = np.random.default_rng(0)
    xt = g.uniform(0, 1, (60, 70))
    s = xr.Dataset({v: (("y", "x"), k * xt) for v, k in (("exx", 0.05), ("eyy", -0.02), ("exy", 0 * xt))})
    exact = naive_regression(s, xr.DataArray(xt, dims=("y", "x")))
    np.testing.assert_allclose(exact.slope, [0.05, -0.02], rtol=1e-12)
    xn = xr.DataArray(xt + g.normal(0, 0.2, xt.shape), dims=("y", "x"))
    naive = naive_regression(s, xn)
    # reliability ratio var(X) / (var(X) + 0.04) = (1/12) / (1/12 + 0.04) = 0.676
    np.testing.assert_allclose(naive.slope / [0.05, -0.02], 0.676, atol=0.02)
    corr = simex(s, xn, sigma_X=0.2, rng=1)
    np.testing.assert_allclose(corr.slope / [0.05, -0.02], 1.0, atol=0.03)
    with pytest.raises(ValueError, match="sigma_X"):
        simex(s, xn, sigma_X=-1.0)


# --- acceptance on the named twin set (slow) -------------------------------------------------------


def _measure(particles, names, seed):
    out = [twin.noise.twin_measurement(particles[k].render(pixel_size_nm=5.0), sigma_strain=SIGMA_STRAIN,
                                     sigma_X=SIGMA_X, rng=seed + i) for i, k in enumerate(names)]
    return [o[0] for o in out], [o[1] for o in out]


@pytest.fixture(scope="module")
def vegard_set():
    return twin.particle_set()


@pytest.mark.slow
@pytest.mark.parametrize("law_name", ["vegard", "nonlinear"])
def test_acceptance_slopes_with_cv_degree(law_name, vegard_set):
    law = twin.vegard_law() if law_name == "vegard" else twin.nonlinear_law()
    parts = vegard_set if law_name == "vegard" else twin.particle_set(law=law)
    S, X = _measure(parts, ["P2", "P3", "P4", "P5"], seed=10)
    model = fit_eigenstrain(S, X, sigma_X=SIGMA_X, n_boot=0, rng=0)
    assert model.degree == (1 if law_name == "vegard" else 3)
    rel = model.derivative(X_EVAL) / law.derivative(X_EVAL) - 1
    # issue 7: within 5 % (aim 2 %) over X in [0.2, 0.8]; measured 0.3-0.4 % (Vegard) and 1.5-2.3 %
    # (non-linear) for three noise seeds
    assert np.abs(rel).max() < 0.05


@pytest.mark.slow
def test_acceptance_held_out_p1_residual(vegard_set):
    S, X = _measure(vegard_set, ["P2", "P3", "P4", "P5"], seed=10)
    model = fit_eigenstrain(S, X, sigma_X=SIGMA_X, n_boot=0, rng=0)
    (s1,), (x1,) = _measure(vegard_set, ["P1"], seed=99)
    res = model.residual(s1, x1)
    oracle = EigenstrainModel.from_law(twin.vegard_law(), 1).residual(s1, x1)
    d = vegard_set["P1"].defect
    far = {"center_nm": d.center_nm, "radius_nm": 6 * d.sigma_nm}
    rms_far = learning.residual_rms(res, **far)
    # noise level = what the true law leaves with this noise (strain noise + X noise propagated)
    assert rms_far <= 1.5 * learning.residual_rms(oracle, **far)
    assert rms_far < 2.0 * SIGMA_STRAIN
    near = learning.residual_rms(res, center_nm=d.center_nm, radius_nm=d.sigma_nm, inside=True)
    assert near > 3 * rms_far  # the defect stands out (measured 3.6-4.5x)


@pytest.mark.slow
def test_acceptance_regression_dilution(vegard_set):
    names = ["P2", "P3", "P4", "P5"]
    out = [twin.noise.twin_measurement(vegard_set[k].render(pixel_size_nm=5.0), sigma_X=0.2, clip=False, rng=i)
           for i, k in enumerate(names)]
    S, X = [o[0] for o in out], [o[1] for o in out]
    naive = naive_regression(S, X).slope.values / SLOPE_TRUTH
    corr = simex(S, X, sigma_X=0.2, rng=0).slope.values / SLOPE_TRUTH
    assert np.all(naive < 0.8)  # visibly biased: measured 0.73
    np.testing.assert_allclose(corr, 1.0, atol=0.10)  # measured 0.95, 0.96


# --- properties ----------------------------------------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_coefs = st.lists(st.floats(-0.1, 0.1, allow_nan=False), min_size=1, max_size=4)


@settings(max_examples=25, deadline=None)
@given(aa=_coefs, cc=_coefs)
def test_property_eigenstrain_vanishes_at_zero_and_derivative_is_consistent(aa, cc):
    law = twin.EigenstrainLaw("random", tuple(aa), tuple(cc))
    model = EigenstrainModel.from_law(law, max(len(aa), len(cc)))
    assert np.all(model.eigenstrain([0.0]) == 0)
    x = np.linspace(0, 1, 7)
    np.testing.assert_allclose(model.eigenstrain(x), law(x), atol=1e-12)
    np.testing.assert_allclose(model.derivative(x), law.derivative(x), atol=1e-11)


@settings(max_examples=25, deadline=None)
@given(shift=st.floats(-0.01, 0.01), scale=st.floats(0.5, 2.0))
def test_property_naive_slope_is_affine_equivariant(shift, scale):
    g = np.random.default_rng(1)
    xt = g.uniform(0, 1, (9, 11))
    s = xr.Dataset({v: (("y", "x"), k * xt + g.normal(0, 1e-3, xt.shape))
                    for v, k in (("exx", 0.05), ("eyy", -0.02), ("exy", 0.0))})
    x = xr.DataArray(xt, dims=("y", "x"))
    base = naive_regression(s, x).slope.values
    moved = s.copy()
    for v in ("exx", "eyy"):
        moved[v] = scale * s[v] + shift
    np.testing.assert_allclose(naive_regression(moved, x).slope.values, scale * base, rtol=1e-9, atol=1e-12)


def test_reference_strain_roundtrip():
    # strain relative to FePO4 e; reference lattice e_ref; measured e_rel = (1 + e) / (1 + e_ref) - 1
    e = np.array([0.03, -0.012])
    e_ref = np.array([0.025, -0.008])
    e_rel = (1 + e) / (1 + e_ref) - 1
    off = -e_ref / (1 + e_ref)
    ref = learning.reference_strain([off[0], off[1], 0.0])
    assert np.allclose(ref[:2], e_ref)
    ds = xr.Dataset({k: (("y", "x"), np.full((2, 3), v)) for k, v in zip(("exx", "eyy", "exy"), (*e_rel, 0.0))})
    out = strain.change_reference(ds, ref)
    assert np.allclose([float(out.exx[0, 0]), float(out.eyy[0, 0])], e, atol=1e-12)


def test_fit_with_fepo4_reference_recovers_law_from_bragg_strain():
    # the twin's strain is relative to FePO4; a Bragg-disk measurement is relative to the particle's
    # own (Li-rich, expanded along a) lattice: fitting it as is scales the slopes by 1 / (1 + e_ref)
    p = twin.make_particle("ref", batch="li_rich", seed=21, mesh_nrefs=4)
    ds = p.render(pixel_size_nm=12.0)
    m = ds["mask"].values
    e_ref = np.array([float(np.nanmedian(ds[v].values[m])) for v in ("exx", "eyy")])
    rel = ds[["exx", "eyy", "exy"]].copy()
    for k, v in zip(("exx", "eyy"), e_ref):
        rel[k] = (1 + ds[k]) / (1 + v) - 1
    direct = fit_eigenstrain(ds[["exx", "eyy", "exy"]], ds.X, degree=1, n_boot=0).derivative([0.5])[0]
    plain = fit_eigenstrain(rel, ds.X, degree=1, n_boot=0).derivative([0.5])[0] / direct - 1
    fixed = fit_eigenstrain(rel, ds.X, degree=1, n_boot=0, reference="fepo4")
    # taken as it is, the Bragg strain scales each strain component by 1 / (1 + e_ref) (-4 % on a, +1.6 % on c
    # here); the elastic coupling of the components mixes the two factors a little in the learned slopes
    assert np.allclose(plain, -e_ref / (1 + e_ref), atol=5e-3) and plain[0] < -0.03
    # re-referenced, it gives the slopes of the FePO4-relative strain to 0.1 %
    assert np.allclose(fixed.derivative([0.5])[0] / direct - 1, 0.0, atol=1e-3)
    assert np.allclose(fixed.reference_strain["ref"][:2], e_ref, atol=5e-4)
    with pytest.raises(ValueError, match="boundary"):
        fit_eigenstrain(rel, ds.X, degree=1, n_boot=0, reference="fepo4", boundary="dirichlet")
    with pytest.raises(ValueError, match="reference"):
        fit_eigenstrain(rel, ds.X, degree=1, n_boot=0, reference="lfp")


# --- imperfect data: NaN pixels inside a user's mask -------------------------------------------

from chemomech.learning import DataWarning  # noqa: E402
from flaws import Flaw, flaw_plans, inject  # noqa: E402  (tests/flaws.py: seeded flaw injection)

X_ERR = np.linspace(0.2, 0.8, 13)


def _slope_error(model):
    """RMS relative error of d eps0/dX over X in [0.2, 0.8], both axes."""
    return float(np.sqrt(np.mean((model.derivative(X_ERR) / SLOPE_TRUTH - 1) ** 2)))


def _flawed(s, x, m, seed):
    """Lost frames (5 % of the particle: NaN strain at isolated pixels) and a 6 x 6 px region of failed X."""
    s2 = s.copy(deep=True)
    _, specks = inject(s.exx.values, Flaw("specks", count=int(0.05 * m.sum()), seed=100 + seed), within=m)
    for v in ("exx", "eyy", "exy"):
        s2[v].values[specks] = np.nan
    xv, region = inject(x.values, Flaw("region", size=6, seed=200 + seed), within=m)
    return s2, x.copy(data=xv), specks, region & m


def test_nan_pixels_in_mask_warn_and_keep_the_slopes(coarse):
    m = coarse.mask.values.astype(bool)
    clean, flawed, counts = [], [], []
    for seed in range(6):
        s, x = twin.noise.twin_measurement(coarse, sigma_strain=SIGMA_STRAIN, sigma_X=SIGMA_X, rng=seed)
        s2, x2, specks, region = _flawed(s, x, m, seed)
        n_bad = int((specks | region).sum())
        with pytest.warns(DataWarning, match=rf"mask \(coarse\): {n_bad} of {int(m.sum())} pixels") as rec:
            model = fit_eigenstrain(s2, x2, mask=m, degree=1, n_boot=0)
        assert len(rec) == 1  # one warning per particle, not one per internal pass
        clean.append(_slope_error(fit_eigenstrain(s, x, mask=m, degree=1, n_boot=0)))
        flawed.append(_slope_error(model))
        counts.append(n_bad)
    # acceptance (issue 18): the flawed fit's slope error within 10 % of the clean fit's, averaged over six
    # noise draws (one draw alone moves by the noise of the ~9 % pixels dropped). Measured: clean 0.0145,
    # flawed 0.0146 (ratio 1.01; 53-68 pixels of 648 dropped); cutting the same pixels out of the mask
    # instead (holes in the FEM body, largest piece kept) gives 0.0202 (ratio 1.40).
    assert np.mean(flawed) <= 1.10 * np.mean(clean), (np.mean(flawed), np.mean(clean), counts)


def test_prediction_and_residual_with_nan_pixels(coarse):
    m = coarse.mask.values.astype(bool)
    truth = EigenstrainModel.from_law(twin.vegard_law(), 1)
    ratios = []
    for seed in range(8):
        s, x = twin.noise.twin_measurement(coarse, sigma_strain=SIGMA_STRAIN, sigma_X=SIGMA_X, rng=seed)
        s2, x2, specks, region = _flawed(s, x, m, seed)
        bad = specks | region
        if seed == 0:
            with pytest.warns(DataWarning, match=rf"{int(region.sum())} of {int(m.sum())} pixels"):
                pred = truth.predict_strain(x2, m)
            assert np.array_equal(pred.mask.values, m & ~region)  # reported where X was measured
            assert np.isnan(pred.exx.values[region]).all()
            with pytest.warns(DataWarning):
                fe = truth.to_fepo4(s2, x2, m)
            assert np.isfinite(fe.exx.values[m & ~specks]).all()
        base = truth.residual(s, x, m)
        with pytest.warns(DataWarning, match=rf"{int(bad.sum())} of {int(m.sum())} pixels"):
            res = truth.residual(s2, x2, m)
        assert np.array_equal(res.mask.values, m & ~bad)
        clean_same = np.sqrt(np.mean(np.concatenate([base[v].values[m & ~bad] for v in ("exx", "eyy", "exy")])**2))
        ratios.append(res.attrs["rms"] / clean_same)
    # residual RMS of the true law on the unaffected pixels, flawed vs clean input: the X interpolated in the
    # 6 x 6 px gap (biharmonic) moves the prediction next to it. Measured mean ratio 1.07 over these eight
    # draws (single draws 1.00-1.18; nearest-neighbour filling gave 1.13 on the X gap alone); acceptance: within 10 %.
    assert np.mean(ratios) <= 1.10, ratios


def test_naive_and_simex_drop_nan_pixels_with_count(coarse):
    m = coarse.mask.values.astype(bool)
    s, x = twin.noise.twin_measurement(coarse, sigma_strain=SIGMA_STRAIN, sigma_X=SIGMA_X, rng=4)
    s2, x2, specks, region = _flawed(s, x, m, 4)
    bad = specks | region
    with pytest.warns(DataWarning, match=rf"{int(bad.sum())} of {int(m.sum())} pixels"):
        got = naive_regression(s2, x2, mask=m).slope.values
    # exactly the fit on the remaining pixels
    np.testing.assert_allclose(got, naive_regression(s, x, mask=m & ~bad).slope.values, rtol=1e-12)
    with pytest.warns(DataWarning, match=rf"{int(bad.sum())} of"):
        simex(s2, x2, sigma_X=SIGMA_X, mask=m, n_sim=2, rng=0)


def test_all_nan_or_too_few_left_raises_clearly(coarse):
    m = coarse.mask.values.astype(bool)
    s, x = _strain(coarse).copy(deep=True), coarse.X
    for v in ("exx", "eyy", "exy"):
        s[v].values[m] = np.nan
    with pytest.raises(ValueError, match=rf"all {int(m.sum())} pixels have a non-finite strain or X"):
        fit_eigenstrain(s, x, mask=m, degree=1)
    with pytest.raises(ValueError, match="nothing to fit"):
        naive_regression(s, x, mask=m)
    with pytest.raises(ValueError, match="X"):
        fit_eigenstrain(_strain(coarse), x * np.nan, mask=m, degree=1)
    few = _strain(coarse).copy(deep=True)
    keep = np.zeros(m.shape, bool)
    keep[np.nonzero(m)[0][:10], np.nonzero(m)[1][:10]] = True
    for v in ("exx", "eyy", "exy"):
        few[v].values[m & ~keep] = np.nan
    with pytest.warns(DataWarning), pytest.raises(ValueError, match="mask selects 10 pixels; at least"):
        fit_eigenstrain(few, x, mask=m, degree=1)


def test_default_mask_keeps_enclosed_nan_in_the_body_and_rejects_a_cut(coarse):
    m = coarse.mask.values.astype(bool)
    s = _strain(coarse).copy(deep=True)
    rows, cols = np.nonzero(m)
    cy, cx = int(np.median(rows)), int(np.median(cols))
    s["exx"].values[cy, cx] = np.nan  # one lost frame inside the particle
    with pytest.warns(DataWarning, match=rf"1 of {int(m.sum())} pixels"):
        model = fit_eigenstrain(s, coarse.X, degree=1, n_boot=0)
    np.testing.assert_allclose(model.derivative([0.5])[0], SLOPE_TRUTH, rtol=0.03)  # as the clean fit above
    cut = _strain(coarse).copy(deep=True)
    cut["eyy"].values[:, cx] = np.nan  # a lost scan column crosses the particle
    with pytest.raises(ValueError, match=r"form 2 pieces.*edge-connected.*pass mask=.*largest_component"):
        fit_eigenstrain(cut, coarse.X, degree=1, n_boot=0)
    with pytest.warns(DataWarning):  # with the particle's outline it is fine
        fit_eigenstrain(cut, coarse.X, mask=m, degree=1, n_boot=0)


def test_dirichlet_fit_with_nan_strain(coarse):
    m = coarse.mask.values.astype(bool)
    s2, _, specks, _ = _flawed(_strain(coarse), coarse.X, m, 5)
    with pytest.warns(DataWarning, match=rf"{int(specks.sum())} of"):
        model = fit_eigenstrain(s2, coarse.X, mask=m, degree=1, boundary="dirichlet", n_boot=0)
    np.testing.assert_allclose(model.derivative([0.5])[0], SLOPE_TRUTH, rtol=0.03)  # as the clean Dirichlet test


@settings(max_examples=8, deadline=None)
@given(plan=flaw_plans(("specks", "region", "lost_frames"), max_count=40, max_size=12))
def test_property_flawed_maps_give_a_fit_or_our_error(coarse, plan):
    m = coarse.mask.values.astype(bool)
    xv, hit = inject(coarse.X.values, plan, within=m)
    n_bad = int((hit & m).sum())
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        try:
            fit_eigenstrain(_strain(coarse), coarse.X.copy(data=xv), mask=m, degree=1, n_boot=0)
        except ValueError as err:  # only ours: too few pixels left, or none (a region flaw covering all of X)
            assert type(err) is ValueError and ("mask" in str(err) or "X contains no finite" in str(err)), err
    msgs = [str(w.message) for w in rec if issubclass(w.category, DataWarning)]
    assert msgs == [f"mask (coarse): {n_bad} of {int(m.sum())} pixels" + msgs[0].split("pixels", 1)[1]] \
        if n_bad else msgs == []


# --- the error model: correlated X noise, consistent re-referencing, wider intervals ---------------


def _smooth_noise(shape, sigma, g, width=1.5):
    """Spatially correlated noise of standard deviation `sigma` (white noise through a Gaussian filter)."""
    from scipy import ndimage

    w = ndimage.gaussian_filter(g.standard_normal(shape), width, mode="wrap")
    return sigma * w / (1.0 / (2.0 * np.sqrt(np.pi) * width))


def test_simex_with_correlated_noise_undoes_the_dilution_white_simex_leaves():
    # X carries smooth noise (std 0.15, Gaussian-filtered over 1.5 px): the FEM response does not average it
    # away as it does white noise, so SIMEX with white noise of the same std under-corrects and SIMEX drawing
    # the real (correlated) noise corrects. Eight noise draws on one particle (6 nm pixels), same draw for all
    # three fits; tolerances from the spread over the draws.
    p = twin.make_particle("coarse", batch="biphasic", seed=5, mesh_nrefs=4)
    ds = p.render(pixel_size_nm=6.0)
    m, shape = ds.mask.values, ds.X.shape
    truth = np.asarray(twin.vegard_law().derivative(0.5))
    sig = 0.15
    kw = dict(mask=m, degree=1, n_boot=0, simex_n_sim=6, rng=0)
    res = []
    for seed in range(8):
        noisy = ds.X + _smooth_noise(shape, sig, np.random.default_rng(seed))
        fits = [fit_eigenstrain(_strain(ds), noisy, **kw),
                fit_eigenstrain(_strain(ds), noisy, sigma_X=sig, **kw),
                fit_eigenstrain(_strain(ds), noisy, X_noise=lambda r: _smooth_noise(shape, sig, r), **kw)]
        res.append([f.derivative([0.5])[0] / truth - 1 for f in fits])
    naive, white, corr = np.mean(res, axis=0)  # measured (aa, cc): -7.6/-7.0 %, -3.0/-5.5 %, +0.8/+0.7 %
    assert np.all(naive < -0.04)
    assert np.all(np.abs(corr) < 0.03)   # standard error of the mean over the draws: 1.1 % (aa), 1.5 % (cc)
    assert np.all(np.abs(corr) < np.abs(white))


def test_x_noise_argument_is_checked(coarse):
    with pytest.raises(TypeError, match="X_noise"):
        fit_eigenstrain(_strain(coarse), coarse.X, degree=1, n_boot=0, X_noise=0.1)
    with pytest.raises(TypeError, match="X_noise"):
        fit_eigenstrain(_strain(coarse), coarse.X, degree=1, n_boot=0, X_noise=[lambda r: 0, lambda r: 0])
    with pytest.raises(ValueError, match=r"X_noise\[0\] returned shape"):
        fit_eigenstrain(_strain(coarse), coarse.X, degree=1, n_boot=0, X_noise=lambda r: np.zeros((3, 3)))
    with pytest.raises(ValueError, match="stiffness_uncertainty"):
        fit_eigenstrain(_strain(coarse), coarse.X, degree=1, stiffness_uncertainty=0.7)


def test_training_offsets_are_found_as_for_a_held_out_particle(coarse):
    # with SIMEX, each training particle's offsets are its mean residual under the corrected law: exactly
    # what EigenstrainModel.residual (and to_fepo4) finds for a held-out particle
    g = np.random.default_rng(1)
    m = coarse.mask.values
    s = _strain(coarse) + 0.004  # a reference lattice that is not FePO4
    s.attrs["particle"] = "p"
    noisy = coarse.X + g.normal(0, 0.05, coarse.X.shape)
    model = fit_eigenstrain(s, noisy, mask=m, degree=1, n_boot=0, sigma_X=0.05, reference="fepo4", rng=0)
    rr = strain.change_reference(s, model.reference_strain["p"])
    off = model.residual(rr, noisy, m).attrs["offsets"]
    np.testing.assert_allclose(off, model.offsets["p"], atol=1e-12)  # float round-off of one FEM solve


def test_stiffness_term_widens_the_interval_and_is_recorded(coarse):
    g = np.random.default_rng(2)
    s = _strain(coarse) + xr.Dataset({v: (("y", "x"), g.normal(0, SIGMA_STRAIN, coarse.X.shape))
                                      for v in ("exx", "eyy", "exy")}, coords=coarse.X.coords)
    kw = dict(mask=coarse.mask.values, degree=1, n_boot=40, rng=0)
    plain = fit_eigenstrain(s, coarse.X, **kw)
    wide = fit_eigenstrain(s, coarse.X, stiffness_uncertainty=0.1, n_perturb=4, **kw)
    np.testing.assert_array_equal(plain.coef, wide.coef)  # the estimate is the same, only the interval grows
    lo0, hi0 = plain.interval([0.5])
    lo1, hi1 = wide.interval([0.5])
    assert np.all(hi1 - lo1 > hi0 - lo0)
    assert plain.interval_terms == ("bootstrap (blocks)",)
    assert wide.interval_terms[-1].startswith("stiffness ±10%")
    with pytest.raises(ValueError, match="deltas"):
        plain.add_spread(np.zeros((1, 2, 1)), term="x")
