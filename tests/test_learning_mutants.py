"""Learning tests added after mutation testing (benchmarks/mutation_triage.md)."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from chemomech import learning, twin


def test_summary_without_bootstrap_has_nan_errors_and_the_slopes():
    # a model with no bootstrap replicates reports its slopes, and NaN (not missing) errors and intervals
    model = learning.EigenstrainModel.from_law(twin.vegard_law(), 1)
    s = model.summary()
    assert np.isfinite(s.slope.values).all()
    for k in ("coef_se", "slope_se", "slope_low", "slope_high"):
        assert s[k].shape == (2,) + s[k].shape[1:] and np.isnan(s[k].values).all()


def test_monotone_refit_gives_a_one_signed_slope():
    # the constrained re-solve: a free solution whose d eps0/dX changes sign on [0, 1] is replaced by the closest
    # (in the G metric) law whose slope keeps one sign, per component
    degree = 3
    xg = np.linspace(0.0, 1.0, 41)
    b1 = learning.legendre_basis(xg, degree, derivative=1)
    b0 = np.array([0.02, 0.0, 0.03, -0.01, 0.0, 0.0])   # component aa: slope changes sign; cc: negative throughout
    assert (b1 @ b0[:3]).min() < 0 < (b1 @ b0[:3]).max() and (b1 @ b0[3:]).max() < 0
    g = np.eye(6)
    b = learning._monotone(g, g @ b0, b0, degree, np.ones(6))
    slope_aa, slope_cc = b1 @ b[:3], b1 @ b[3:]
    assert slope_aa.min() > -1e-8 or slope_aa.max() < 1e-8
    assert slope_cc.max() < 1e-8
    assert not np.allclose(b, b0)


def test_leave_one_particle_out_cv_is_symmetric_for_copies():
    # three copies of one particle, two with a constant strain offset (a nuisance the offsets absorb): holding out
    # any copy leaves the same training law, so every fold must score the same error, at every degree
    p = twin.make_particle("coarse", batch="biphasic", seed=5, mesh_nrefs=4)
    ds = p.render(pixel_size_nm=12.0)
    strain = ds[["exx", "eyy", "exy"]]
    copies = [strain]
    for d in (-0.002, 0.001):
        c = strain.copy()
        c["eyy"] = c["eyy"] + d
        copies.append(c)
    model = learning.fit_eigenstrain(copies, [ds.X] * 3, max_degree=2, n_boot=0, rng=0)
    assert model.cv.attrs["folds"] == "leave-one-particle-out"
    mse = model.cv.mse.values
    assert mse.shape == (2, 3) and np.all(np.isfinite(mse))
    np.testing.assert_allclose(mse, mse[:, :1] * np.ones((1, 3)), rtol=1e-6)
    # resampling whole particles draws some copies twice and others not at all: every replicate still sees the
    # same law, so the bootstrap spread of the coefficients is nil
    boot = learning.fit_eigenstrain(copies, [ds.X] * 3, degree=1, n_boot=12, bootstrap="particles", rng=0)
    np.testing.assert_allclose(boot.coef_boot, np.broadcast_to(boot.coef, boot.coef_boot.shape), rtol=1e-6,
                               atol=1e-12)


def test_smoothness_penalty_is_the_integral_of_the_squared_second_derivative():
    # _penalty is smoothness * n_rows * int_0^1 phi_i'' phi_j'' dX (its docstring); against the exact integral
    # (Gauss-Legendre, exact for these polynomials) a 101-point rule may be off by at most the trapezoid
    # rule's leading Euler-Maclaurin term h^2/12 [f'(1) - f'(0)] (f = phi_i'' phi_j''), plus 10 %
    h = 0.01
    for degree, smooth in ((3, 2.0), (4, 0.5), (5, 2.0)):  # any positive smoothness scales the penalty
        got = learning._penalty(degree, smooth, 3.0)
        xg, wg = np.polynomial.legendre.leggauss(40)
        xg, wg = (xg + 1) / 2, wg / 2
        b2 = learning.legendre_basis(xg, degree, derivative=2)
        exact = (b2 * wg[:, None]).T @ b2
        ends = np.array([0.0, 1.0])
        e2, e3 = (learning.legendre_basis(ends, degree, derivative=k) for k in (2, 3))
        fprime = e3[:, :, None] * e2[:, None, :] + e2[:, :, None] * e3[:, None, :]
        bound = 1.1 * h**2 / 12 * np.abs(fprime[1] - fprime[0]) + 1e-12 * np.abs(exact).max()
        one = got[:degree, :degree] / (smooth * 3.0)
        assert np.all(np.abs(one - exact) <= bound)
        np.testing.assert_array_equal(got[degree:, degree:], got[:degree, :degree])  # same for both components
        assert not got[:degree, degree:].any()


def test_simex_with_one_simulation_per_lambda():
    # n_sim is the number of noisy copies per lambda: one copy is a valid (noisier) SIMEX. On a noise-free
    # strain-vs-X line with sigma_X = 0.2 (naive slope ratio 0.676, test_learning) the corrected ratio over
    # seeds 0-4 spread 0.95-1.16 with one copy (sd ~0.08; 0.98-1.00 with 50): atol 0.25 is ~3 sd and
    # still excludes the uncorrected slope
    g = np.random.default_rng(0)
    xt = g.uniform(0, 1, (60, 70))
    s = xr.Dataset({v: (("y", "x"), k * xt) for v, k in (("exx", 0.05), ("eyy", -0.02), ("exy", 0 * xt))})
    xn = xr.DataArray(xt + g.normal(0, 0.2, xt.shape), dims=("y", "x"))
    corr = learning.simex(s, xn, sigma_X=0.2, n_sim=1, rng=1)
    np.testing.assert_allclose(corr.slope / [0.05, -0.02], 1.0, atol=0.25)
    with pytest.raises(ValueError, match="n_sim"):
        learning.simex(s, xn, sigma_X=0.2, n_sim=0)


def test_learn_stacks_names_a_bad_n_perturb():
    # checked before any work: the message names the argument
    with pytest.raises(ValueError, match="n_perturb must be an int >= 2"):
        learning.learn_stacks([], n_perturb=1)


def test_slope_results_carry_units_and_names():
    # API contract (shared/api.md): result variables carry attrs["units"]; strain and X are both
    # dimensionless, so the slope, the intercept and their standard error are in units of "1"
    g = np.random.default_rng(2)
    xt = g.uniform(0, 1, (20, 30))
    s = xr.Dataset({v: (("y", "x"), k * xt) for v, k in (("exx", 0.05), ("eyy", -0.02), ("exy", 0 * xt))})
    x = xr.DataArray(xt + g.normal(0, 0.05, xt.shape), dims=("y", "x"))
    for ds in (learning.naive_regression(s, x), learning.simex(s, x, sigma_X=0.05, n_sim=2, rng=0)):
        for v in ("slope", "intercept", "slope_se"):
            assert ds[v].attrs["units"] == "1" and ds[v].attrs["long_name"], v
            assert ds[v].dims == ("component",)
        assert ds.component.values.tolist() == ["aa", "cc"]
        assert ds.slope.sel(component="aa").item() == ds.slope.values[0]  # an indexed coordinate
        assert ds.attrs["method"] and ds.attrs["n_pixels"] == 600


def test_predict_strain_warning_names_the_particle_of_the_strain():
    # the particle name for messages comes from the strain Dataset (or X): a measured strain with a hole
    # inside the mask warns with that particle's name even when X carries none
    model = learning.EigenstrainModel.from_law(twin.vegard_law(), 1)
    yy, xx = np.mgrid[:16, :16]
    mask = np.hypot(yy - 7.5, xx - 7.5) < 6.5
    X = xr.DataArray(np.where(mask, 0.5, np.nan), dims=("y", "x"))
    ex = np.where(mask, 0.0, np.nan)
    ex[7, 7] = np.nan
    s = xr.Dataset({v: (("y", "x"), ex) for v in ("exx", "eyy", "exy")}, attrs={"particle": "P7"})
    with pytest.warns(learning.DataWarning, match=r"mask \(P7\): 1 of"):
        pred = model.predict_strain(X, mask, strain=s)
    assert np.isnan(pred.exx.values[7, 7]) and np.isfinite(pred.exx.values[mask & (yy != 7)]).all()
    # the prediction sits on the map's own (physical) grid
    Xc = X.assign_coords(y=np.arange(16) * 2.5, x=np.arange(16) * 2.5 + 10.0)
    pred = model.predict_strain(Xc, mask)
    np.testing.assert_array_equal(pred.x.values, Xc.x.values)
    np.testing.assert_array_equal(pred.y.values, Xc.y.values)


def test_law_evaluation_refuses_a_non_finite_composition_by_name():
    model = learning.EigenstrainModel.from_law(twin.vegard_law(), 1)
    for evaluate in (model.eigenstrain, model.derivative):
        with pytest.raises(ValueError, match=r"^X\b"):
            evaluate([0.2, np.nan])
        with pytest.raises(ValueError, match=r"X must lie in \[0, 1\]"):
            evaluate([0.2, 1.2])


def test_naive_regression_names_a_bad_x():
    s = xr.Dataset({v: (("y", "x"), np.zeros((4, 5))) for v in ("exx", "eyy", "exy")})
    with pytest.raises(ValueError, match=r"^X\b"):
        learning.naive_regression(s, xr.DataArray(np.full((4, 5), np.nan), dims=("y", "x")))


def test_residual_rms_by_hand_inside_and_outside_a_disk():
    # RMS over exx, eyy, exy of the masked pixels; a disk of radius 6 nm around (0, 0) holds the three pixels
    # at distance 0 and 5 nm: inside, exx = 3e-3 on two of them, the rest 0 -> sqrt(2 * 9e-6 / 9)
    ex = np.zeros((2, 3))
    ex[0, 0] = ex[0, 1] = 3e-3  # inside the disk
    ex[1, 2] = 4e-3  # outside (at 11.2 nm), masked out below
    r = xr.Dataset({v: (("y", "x"), ex if v == "exx" else np.zeros((2, 3))) for v in ("exx", "eyy", "exy")},
                   coords={"y": [0.0, 5.0], "x": [0.0, 5.0, 10.0]})
    m = np.ones((2, 3), bool)
    m[1, 2] = False
    r["mask"] = (("y", "x"), m)
    inside = learning.residual_rms(r, center_nm=(0.0, 0.0), radius_nm=6.0, inside=True)
    assert inside == pytest.approx(np.sqrt(2 * 9e-6 / 9), rel=1e-12)
    outside = learning.residual_rms(r, center_nm=(0.0, 0.0), radius_nm=6.0)
    assert outside == pytest.approx(0.0, abs=1e-15)  # the 4e-3 pixel is outside the mask
    assert learning.residual_rms(r) == pytest.approx(np.sqrt(2 * 9e-6 / 15), rel=1e-12)


def test_fit_refuses_a_strain_grid_turned_from_the_crystal_and_names_which():
    # the model needs the grid's x axis along a: a strain map still at its image angle is refused, naming the
    # map (by index when there are several) and the fix
    s = xr.Dataset({v: (("y", "x"), np.zeros((6, 6))) for v in ("exx", "eyy", "exy")})
    turned = s.assign_attrs(crystal_angle_rad=0.3)
    X = xr.DataArray(np.full((6, 6), 0.5), dims=("y", "x"))
    with pytest.raises(ValueError, match=r"^strain lies on a grid turned by crystal_angle_rad = 0\.3 rad.*to_crystal"):
        learning.fit_eigenstrain(turned, X)
    with pytest.raises(ValueError, match=r"^strain\[1\] lies on a grid turned"):
        learning.fit_eigenstrain([s, turned], [X, X])


def test_pixel_grid_checks_cover_both_axes():
    # strain is scale-free but not aspect-free: X (and the strain) must sit on a regular grid of square pixels;
    # an uneven or stretched x axis must be refused as well as a y axis
    yy, xx = np.arange(6) * 5.0, np.arange(7) * 5.0
    good = xr.DataArray(np.zeros((6, 7)), coords={"y": yy, "x": xx}, dims=("y", "x"))
    learning._pixel_aspect_ok(good, "X")
    uneven = good.assign_coords(x=xx + np.r_[0, 0, 0, 1.0, 0, 0, 0])
    with pytest.raises(ValueError, match="'x' is not evenly spaced"):
        learning._pixel_aspect_ok(uneven, "X")
    with pytest.raises(ValueError, match="square pixels"):
        learning._pixel_aspect_ok(good.assign_coords(x=xx * 1.2), "X")
    with pytest.raises(ValueError, match="'y' is not evenly spaced"):
        learning._pixel_aspect_ok(good.assign_coords(y=yy ** 1.1), "X")
