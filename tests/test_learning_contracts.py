"""Contract tests of chemomech.learning, by category of user-visible behaviour (issue 19).

Error messages are API (shared/api.md: they name the argument and what was expected), so each ``raise`` a user
can reach is triggered by a bad input a user could really give and its whole text is matched (``re.fullmatch``,
``.*`` only where a value is formatted in). Output metadata (names, dims, coords, units, long names, attrs),
validation bounds (the value at the bound and just beyond), documented options and small numerics follow.

The data are tiny analytic particles (a disk of ~100 pixels, X a linear ramp, the strain a Vegard line of X),
built here, not by the code under test; every fit takes a few hundredths of a second.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import xarray as xr
from numpy.polynomial import legendre as npleg
from numpy.testing import assert_allclose

from chemomech import learning
from chemomech.learning import DataWarning, EigenstrainModel, fit_eigenstrain

SLOPES = (0.05, -0.02)


def _disk(ny=12, nx=14, r=5.6):
    yy, xx = np.mgrid[:ny, :nx]
    return np.hypot(yy - (ny - 1) / 2, xx - (nx - 1) / 2) < r, yy, xx


def particle(ny=12, nx=14, r=5.6, *, name="", slopes=SLOPES, offset=(0.0, 0.0, 0.0), spacing=None):
    """A disk particle: X a ramp along x in [0.1, 0.9], strain = slope * X + offset (a compatible field)."""
    mask, yy, xx = _disk(ny, nx, r)
    xv = 0.5 + 0.8 * (xx - (nx - 1) / 2) / (nx - 1)
    X = np.where(mask, xv, np.nan)
    coords = {}
    if spacing is not None:
        coords = {"y": np.arange(ny) * spacing, "x": np.arange(nx) * spacing}
    attrs = {"particle": name} if name else {}
    Xd = xr.DataArray(X, dims=("y", "x"), coords=coords, attrs=attrs)
    s = xr.Dataset({"exx": (("y", "x"), slopes[0] * X + offset[0]),
                    "eyy": (("y", "x"), slopes[1] * X + offset[1]),
                    "exy": (("y", "x"), 0.0 * X + offset[2])}, coords=coords, attrs=attrs)
    return s, Xd, mask


def _msg(excinfo) -> str:
    return str(excinfo.value)


def raises_exactly(exc, pattern, func, *args, **kwargs):
    """Call func; it must raise `exc` whose whole message matches `pattern` (re.fullmatch, DOTALL)."""
    with pytest.raises(exc) as err:
        func(*args, **kwargs)
    assert type(err.value) is exc, type(err.value)
    assert re.fullmatch(pattern, _msg(err), flags=re.S), _msg(err)
    return err.value


@pytest.fixture(scope="module")
def one():
    return particle(name="P9")


@pytest.fixture(scope="module")
def model1(one):
    s, X, _ = one
    return fit_eigenstrain(s, X, degree=1, n_boot=6, rng=3)


# --- legendre basis --------------------------------------------------------------------------------------------


def test_legendre_basis_values_and_derivatives_against_numpy():
    x = np.array([0.0, 0.2, 0.5, 0.9, 1.0])
    t = 2 * x - 1
    d = 3
    b0 = learning.legendre_basis(x, d)
    b1 = learning.legendre_basis(x, d, derivative=1)
    b2 = learning.legendre_basis(x, d, derivative=2)
    assert b0.shape == b1.shape == b2.shape == (5, 3)
    for k in range(1, d + 1):
        c = np.zeros(k + 1)
        c[k] = 1
        assert_allclose(b0[:, k - 1], npleg.legval(t, c) - npleg.legval(-1.0, c), atol=1e-14)
        # chain rule: d/dX = 2 d/dt, d2/dX2 = 4 d2/dt2
        assert_allclose(b1[:, k - 1], 2 * npleg.legval(t, npleg.legder(c)), atol=1e-13)
        assert_allclose(b2[:, k - 1], 4 * npleg.legval(t, npleg.legder(c, 2)), atol=1e-12)
    # by hand: phi_1 = 2X, phi_2 = P2(2X-1) - 1 = 6X^2 - 6X, phi_3 = P3(2X-1) + 1
    assert_allclose(b0[:, 0], 2 * x, atol=1e-14)
    assert_allclose(b0[:, 1], 6 * x**2 - 6 * x, atol=1e-14)
    assert_allclose(b1[:, 1], 12 * x - 6, atol=1e-13)
    assert_allclose(b2[:, 1], 12.0, atol=1e-12)
    assert learning.legendre_basis(np.zeros((2, 3)), 2).shape == (2, 3, 2)


# --- error messages: the fit's arguments -------------------------------------------------------------------------

BAD_FIT_OPTIONS = [
    (dict(boundary="clamped"), ValueError, r"boundary must be one of \('free', 'dirichlet'\), got 'clamped'"),
    (dict(reference="lfp"), ValueError, r"reference must be one of \(None, 'fepo4'\), got 'lfp'"),
    (dict(reference="fepo4", boundary="dirichlet"), ValueError,
     r"reference='fepo4' needs boundary='free' \(the reference lattice comes from the fitted offsets, which a "
     r"Dirichlet fit does not have\)"),
    (dict(bootstrap="pixels"), ValueError,
     r"bootstrap must be one of \('auto', 'blocks', 'particles', 'both'\), got 'pixels'"),
    (dict(upsample=0), ValueError, r"upsample must be an int >= 1, got 0"),
    (dict(max_degree=0), ValueError, r"max_degree must be an int >= 1, got 0"),
    (dict(block_px=0), ValueError, r"block_px must be an int >= 1, got 0"),
    (dict(n_boot=-1), ValueError, r"n_boot must be an int >= 0, got -1"),
    (dict(simex_n_sim=0), ValueError, r"simex_n_sim must be an int >= 1, got 0"),
    (dict(n_perturb=1), ValueError, r"n_perturb must be an int >= 2, got 1"),
    (dict(upsample=True), ValueError, r"upsample must be an int >= 1, got True"),
    (dict(n_boot=2.0), ValueError, r"n_boot must be an int >= 0, got 2\.0"),
    (dict(degree=0), ValueError, r"degree must be None or an int >= 1, got 0"),
    (dict(degree=True), ValueError, r"degree must be None or an int >= 1, got True"),
    (dict(degree=1.0), ValueError, r"degree must be None or an int >= 1, got 1\.0"),
    (dict(smoothness=-0.1), ValueError, r"smoothness must be >= 0 and finite, got -0\.1"),
    (dict(sigma_X=0.0), ValueError, r"sigma_X must be > 0 and finite, got 0\.0"),
    (dict(sigma_X="0.1"), TypeError, r"sigma_X must be a real number, got str"),
    (dict(stiffness_uncertainty=-0.1), ValueError, r"stiffness_uncertainty must be >= 0 and finite, got -0\.1"),
    (dict(stiffness_uncertainty=0.5), ValueError,
     r"stiffness_uncertainty must be < 0\.5 \(a relative uncertainty\), got 0\.5"),
    (dict(simex_lambdas=(1.0,)), ValueError, r"simex_lambdas must be at least 2 positive numbers, got \(1\.0,\)"),
    (dict(simex_lambdas=(0.0, 1.0)), ValueError,
     r"simex_lambdas must be at least 2 positive numbers, got \(0\.0, 1\.0\)"),
    (dict(rng="seed"), TypeError, r"rng must be a numpy\.random\.Generator, an int seed or None, got str"),
    (dict(stiffness=np.eye(2)), ValueError, r"stiffness must have shape \(3, 3\), got \(2, 2\)"),
    (dict(stiffness=np.full((3, 3), np.nan)), ValueError,
     r"stiffness must contain only finite values; found NaN or inf"),
]


@pytest.mark.parametrize("kwargs, exc, pattern", BAD_FIT_OPTIONS, ids=[str(i) for i in range(len(BAD_FIT_OPTIONS))])
def test_fit_refuses_bad_options_with_the_whole_message(one, kwargs, exc, pattern):
    s, X, _ = one
    raises_exactly(exc, pattern, fit_eigenstrain, s, X, **kwargs)


def test_fit_option_bounds_at_the_limit_are_accepted(one):
    # the lowest allowed value of each integer option, and the largest relative stiffness uncertainty below 0.5
    s, X, _ = one
    m = fit_eigenstrain(s, X, degree=1, n_boot=0, upsample=1, block_px=1, simex_n_sim=1, n_perturb=2,
                        smoothness=0.0, stiffness_uncertainty=0.0, simex_lambdas=(0.5, 1.0), rng=0)
    assert m.coef_boot.shape == (0, 2, 1)
    m = fit_eigenstrain(s, X, degree=1, n_boot=2, stiffness_uncertainty=0.49, n_perturb=2, rng=0)
    assert m.coef_boot.shape == (2 * 2, 2, 1)
    big = particle(24, 26, 11.0)
    m = fit_eigenstrain(big[0], big[1], max_degree=1, n_boot=0, rng=0)
    assert m.degree == 1 and m.cv.sizes["degree"] == 1


def test_fit_refuses_inputs_of_the_wrong_kind_naming_them(one):
    s, X, mask = one
    grid = particle(spacing=1.0)
    raises_exactly(TypeError, r"strain must be an xarray\.Dataset with exx, eyy, exy, got DataArray",
                   fit_eigenstrain, s.exx, X)
    raises_exactly(ValueError, r"strain must contain variables exx, eyy, exy; missing \['exy'\]",
                   fit_eigenstrain, s[["exx", "eyy"]], X)
    raises_exactly(ValueError, r"strain\.eyy must have dims \('y', 'x'\), got \('x', 'y'\); "
                   r"use \.transpose\(\.\.\.\) or \.rename\(\.\.\.\) first",
                   fit_eigenstrain, s.assign(eyy=s.eyy.T), X)
    raises_exactly(ValueError, r"X must have dims \('y', 'x'\), got \('x', 'y'\); use .*", fit_eigenstrain, s, X.T)
    raises_exactly(ValueError, r"X has shape \(11, 14\) but strain has shape \(12, 14\); resample both onto one grid "
                   r"first \(e\.g\. with registration\.warp\)", fit_eigenstrain, s, X[:-1])
    raises_exactly(ValueError, r"X and strain are on different grids \(coordinates differ\); resample both onto one "
                   r"grid first", fit_eigenstrain, grid[0], grid[1].assign_coords(x=np.arange(14) + 0.5), degree=1)
    raises_exactly(ValueError, r"X must give one map per strain Dataset: got 1 X maps and 2 strain Datasets",
                   fit_eigenstrain, [s, s], [X])
    raises_exactly(ValueError, r"mask must give one mask per particle: got 1 for 2",
                   fit_eigenstrain, [s, s], [X, X], mask=[mask])
    raises_exactly(TypeError, r"mask must be a boolean mask, got dtype float64",
                   fit_eigenstrain, s, X, mask=mask.astype(float))
    raises_exactly(ValueError, r"mask must have shape \(12, 14\), got \(12, 13\)",
                   fit_eigenstrain, s, X, mask=mask[:, :-1])
    raises_exactly(ValueError, r"mask selects 0 pixels; at least 1 needed",
                   fit_eigenstrain, s, X, mask=np.zeros_like(mask))
    raises_exactly(TypeError, r"X must hold numbers \(dtype kind in 'fiu'\), got dtype bool",
                   fit_eigenstrain, s, X.copy(data=mask))


def test_square_pixel_and_grid_messages(one):
    s, X, _ = one
    sp = particle(spacing=5.0)
    s5, X5 = sp[0], sp[1]
    raises_exactly(ValueError, r"X must have square pixels, got spacing y=5, x=6",
                   fit_eigenstrain, s5.assign_coords(x=np.arange(14) * 6.0), X5.assign_coords(x=np.arange(14) * 6.0))
    xs = np.arange(14) * 5.0
    xs[-1] += 1
    raises_exactly(ValueError, r"X must be on a regular grid; coordinate 'x' is not evenly spaced",
                   fit_eigenstrain, s5.assign_coords(x=xs), X5.assign_coords(x=xs))
    ys = np.arange(12) * 5.0
    ys[0] -= 1
    raises_exactly(ValueError, r"X must be on a regular grid; coordinate 'y' is not evenly spaced",
                   fit_eigenstrain, s5.assign_coords(y=ys), X5.assign_coords(y=ys))
    # a regular grid of square pixels (5 nm) is accepted and gives the slopes of index coordinates
    m5 = fit_eigenstrain(s5, X5, degree=1, n_boot=0)
    m1 = fit_eigenstrain(s, X, degree=1, n_boot=0)
    assert_allclose(m5.coef, m1.coef, rtol=1e-9)


def test_messages_name_the_particle_by_index_when_there_are_several(one):
    s, X, mask = one
    t = s.assign_attrs(crystal_angle_rad=0.25)
    raises_exactly(ValueError, r"strain lies on a grid turned by crystal_angle_rad = 0\.25 rad from the crystal; the "
                   r"model needs the grid's x axis along a: resample it with "
                   r"chemomech\.correlate\.align_to_crystal first", fit_eigenstrain, t, X)
    raises_exactly(ValueError, r"strain\[1\] lies on a grid turned by crystal_angle_rad = -0\.25 rad from the "
                   r"crystal; .*", fit_eigenstrain, [s, s.assign_attrs(crystal_angle_rad=-0.25)], [X, X])
    # a turn below 1e-9 rad is no turn; exactly zero neither
    fit_eigenstrain(s.assign_attrs(crystal_angle_rad=1e-10), X, degree=1, n_boot=0)
    raises_exactly(ValueError, r"X\[1\] has shape \(11, 14\) but strain\[1\] has shape \(12, 14\); .*",
                   fit_eigenstrain, [s, s], [X, X[:-1]])
    raises_exactly(TypeError, r"strain\[1\] must be an xarray\.Dataset with exx, eyy, exy, got DataArray",
                   fit_eigenstrain, [s, s.exx], [X, X])
    raises_exactly(ValueError, r"mask\[1\] must have shape \(12, 14\), got \(12, 13\)",
                   fit_eigenstrain, [s, s], [X, X], mask=[mask, mask[:, 1:]])
    far = X.copy(data=X.values + 0.7)
    raises_exactly(ValueError, r"X\[1\] must be a Li fraction: values slightly outside \[0, 1\] from noise are "
                   r"accepted, but inside the mask they must lie in \[-0\.5, 1\.5\]; got values in \[0\.862, 1\.54\]\. "
                   r"Is it a Li fraction\?", fit_eigenstrain, [s, s], [X, far])


def test_x_range_bounds_are_inclusive(one):
    # X within 0.5 of [0, 1] is accepted, at the bound too; just beyond is refused (both ends)
    s, X, mask = one
    for edge in (-0.5, 1.5):
        at = X.copy(data=X.values.copy())
        at.values[5, 6] = edge
        fit_eigenstrain(s, at, degree=1, n_boot=0)
        beyond = X.copy(data=X.values.copy())
        beyond.values[5, 6] = edge + np.sign(edge - 0.5) * 1e-3
        with pytest.raises(ValueError, match=r"^X must be a Li fraction.*; got values in "
                                             r"\[(-0\.501, [0-9.]+|[0-9.]+, 1\.5)\]\. Is it"):
            fit_eigenstrain(s, beyond, degree=1, n_boot=0)


def test_too_few_pixels_message_and_bound(one):
    s, X, mask = one
    # a single particle needs 10 pixels per parameter: degree 2 free fit = 4 law + 3 offsets = 70 pixels
    sub = mask.copy()
    rows, cols = np.nonzero(mask)
    sub[rows[70:], cols[70:]] = False
    assert sub.sum() == 70
    # keep it one edge-connected piece: the first 70 pixels in row-major order are the top rows of the disk
    fit_eigenstrain(s, X, mask=sub, degree=2, n_boot=0)
    sub2 = sub.copy()
    sub2[rows[69], cols[69]] = False
    raises_exactly(ValueError, r"mask selects 69 pixels; at least 70 are needed \(10 per fitted parameter, 7 "
                   r"parameters\)\. Use a lower degree or a larger mask",
                   fit_eigenstrain, s, X, mask=sub2, degree=2, n_boot=0)
    # Dirichlet fits have no offsets: 4 parameters, and never fewer than 16 pixels
    raises_exactly(ValueError, r"mask selects 39 pixels; at least 40 are needed \(10 per fitted parameter, 4 "
                   r"parameters\)\. Use a lower degree or a larger mask",
                   fit_eigenstrain, s, X, mask=_top(mask, 39), degree=2, n_boot=0, boundary="dirichlet")


def _top(mask, n):
    rows, cols = np.nonzero(mask)
    out = np.zeros_like(mask)
    out[rows[:n], cols[:n]] = True
    return out


def test_non_finite_pixels_warn_with_the_whole_message(one):
    s, X, mask = one
    Xn = X.copy(data=X.values.copy())
    Xn.values[5, 6] = np.nan
    n = int(mask.sum())
    with pytest.warns(DataWarning) as rec:
        fit_eigenstrain(s.assign_attrs(particle="P3"), Xn, mask=mask, degree=1, n_boot=0)
    msgs = [str(w.message) for w in rec if w.category is DataWarning]
    assert len(msgs) == 1
    assert re.fullmatch(rf"mask \(P3\): 1 of {n} pixels have a non-finite strain or X \(NaN or inf\); they are left "
                        rf"out of the fit \({n - 1} pixels remain\) but stay part of the particle's mechanics, with X "
                        r"interpolated there", msgs[0]), msgs[0]
    raises_exactly(ValueError, rf"mask \(P3\): all {n} pixels have a non-finite strain or X \(NaN or inf\); there "
                   r"is nothing to fit", fit_eigenstrain, s.assign_attrs(particle="P3"),
                   X.copy(data=np.where(mask, np.nan, 0.5)), mask=mask, degree=1)


def test_two_pieces_without_a_mask_say_how_to_fix_it(one):
    s, X, mask = one
    cut = X.copy(data=X.values.copy())
    cut.values[:, 7] = np.nan
    raises_exactly(ValueError, r"the finite pixels of X \(P9\) form 2 pieces, but the finite-element model needs one "
                   r"edge-connected particle; pass mask= the particle's outline \(NaN pixels inside it are then left "
                   r"out of the fit but kept in the mechanics\), or its largest piece "
                   r"\(chemomech\.geometry\.largest_component\)", fit_eigenstrain, s, cut, degree=1)
    # with an explicit mask cut in two, the mesh refuses it and the message names the mask and the particle
    m = mask.copy()
    m[:, 7] = False
    raises_exactly(ValueError, r"mask\[1\] \(P9 \[1\]\): mask must be one edge-connected region, got 2 pieces; keep "
                   r"the largest with scipy\.ndimage\.label first", fit_eigenstrain, [s, s], [X, X],
                   mask=[mask, m], degree=1, n_boot=0)


def test_x_noise_messages(one):
    s, X, _ = one
    raises_exactly(TypeError, r"X_noise must be a callable rng -> noise map, or a sequence of 1 such callables "
                   r"\(one per particle\)", fit_eigenstrain, s, X, X_noise=[None], degree=1)
    raises_exactly(TypeError, r"X_noise must be .* a sequence of 2 such callables \(one per particle\)",
                   fit_eigenstrain, [s, s], [X, X], X_noise=lambda g: 0 * X.values, degree=1)
    raises_exactly(ValueError, r"X_noise\[0\] returned shape \(3, 3\), expected the X map's \(12, 14\)",
                   fit_eigenstrain, s, X, X_noise=lambda g: np.zeros((3, 3)), degree=1, n_boot=0)
    raises_exactly(ValueError, r"X_noise\[0\] returned non-finite noise at fitted pixels",
                   fit_eigenstrain, s, X, X_noise=lambda g: np.full((12, 14), np.nan), degree=1, n_boot=0)


# --- documented numbers and options of the fit ---------------------------------------------------------------


def test_noise_free_vegard_particle_gives_its_slopes_and_offsets(one):
    s, X, _ = one
    off = (0.01, -0.008, 0.004)
    sp = particle(name="P9", offset=off)
    m = fit_eigenstrain(sp[0], sp[1], degree=1, n_boot=0)
    # a linear eps0 of a linear X is compatible: free expansion, the strain is the eigenstrain, up to the pixel
    # discretisation of the eigenstrain (a column-wise constant eyy is not quite compatible; measured: aa 0.2 %,
    # cc 1.4 % off, offsets within 1.5e-4)
    assert_allclose(m.derivative([0.2, 0.5, 0.8]), [SLOPES] * 3, rtol=0.02)
    assert_allclose(m.eigenstrain([0.0]), [[0.0, 0.0]], atol=1e-15)
    assert_allclose(m.offsets["P9"], off, atol=3e-4)
    assert m.training == ("P9",) and m.boundary == "free" and m.upsample == 1 and m.degree == 1
    assert m.cv is None and m.reference_strain is None and m.interval_terms == ()
    assert_allclose(m.stiffness, learning.elasticity.stiffness_ac())
    assert m.bootstrap == "blocks"    # auto with fewer than 3 particles
    d = fit_eigenstrain(sp[0], sp[1], degree=1, n_boot=0, boundary="dirichlet")
    assert d.boundary == "dirichlet" and d.offsets == {"P9": pytest.approx(np.zeros(3))}
    # with the boundary displacement prescribed and X varying along x only, the eigenstrain acts through the body
    # force -d/dx (Q11 eps0_xx + Q12 eps0_yy) alone: only Q11 a + Q12 c of the slopes is identifiable
    q = learning.elasticity.stiffness_ac()
    got = d.derivative([0.5])[0]
    assert q[0, 0] * got[0] + q[0, 1] * got[1] == pytest.approx(q[0, 0] * SLOPES[0] + q[0, 1] * SLOPES[1], rel=5e-3)


def test_default_names_and_duplicates(one):
    s, X, _ = one
    plain = particle()
    m = fit_eigenstrain([plain[0], plain[0]], [plain[1], plain[1]], degree=1, n_boot=0)
    assert m.training == ("particle 0", "particle 1")
    m = fit_eigenstrain([s, s], [X, X], degree=1, n_boot=0)
    assert m.training == ("P9 [0]", "P9 [1]") and set(m.offsets) == {"P9 [0]", "P9 [1]"}
    # the name comes from the strain first, then X
    m = fit_eigenstrain(plain[0], plain[1].assign_attrs(particle="FromX"), degree=1, n_boot=0)
    assert m.training == ("FromX",)
    m = fit_eigenstrain(plain[0].assign_attrs(particle="FromS"), plain[1].assign_attrs(particle="FromX"),
                        degree=1, n_boot=0)
    assert m.training == ("FromS",)


def test_bootstrap_kinds_and_interval_terms():
    parts = [particle(name=f"Q{i}", offset=(0.001 * i, 0.0, 0.0)) for i in range(3)]
    s = [p[0] for p in parts]
    X = [p[1] for p in parts]
    for how, want in (("auto", "both"), ("blocks", "blocks"), ("particles", "particles"), ("both", "both")):
        m = fit_eigenstrain(s, X, degree=1, n_boot=4, bootstrap=how, rng=1)
        assert m.bootstrap == want
        assert m.interval_terms == (f"bootstrap ({want})",)
        assert m.coef_boot.shape == (4, 2, 1)
    # with leave-one-particle-out CV on three particles
    m = fit_eigenstrain(s, X, max_degree=2, n_boot=0, rng=1)
    assert m.cv.attrs["folds"] == "leave-one-particle-out" and m.cv.sizes["fold"] == 3
    assert m.interval_terms == ()


def test_cv_dataset_metadata(one):
    s, X, _ = one
    big = particle(24, 26, 11.0)
    m = fit_eigenstrain(big[0], big[1], max_degree=3, n_boot=0, rng=0)
    cv = m.cv
    assert list(cv.data_vars) == ["mse"] and cv.mse.dims == ("degree", "fold")
    assert cv.mse.attrs == {"units": "1", "long_name": "cross-validated mean squared strain error"}
    assert cv.degree.values.tolist() == [1, 2, 3]
    assert cv.degree.attrs == {"units": "1", "long_name": "polynomial degree"}
    assert cv.fold.values.tolist() == [0, 1, 2, 3, 4]
    assert cv.fold.attrs == {"units": "1", "long_name": "fold"}
    assert cv.attrs == {"folds": "spatial blocks", "selected": m.degree, "simex": 0}
    assert m.degree == 1     # a straight line: the smallest degree within one standard error
    assert np.all(cv.mse.values >= 0) and np.all(np.isfinite(cv.mse.values))
    ms = fit_eigenstrain(big[0], big[1], max_degree=2, n_boot=2, rng=0, sigma_X=0.02, simex_n_sim=1)
    assert ms.cv.attrs["simex"] == 1
    assert ms.interval_terms == ("bootstrap (blocks)", "SIMEX shift")


def test_stiffness_uncertainty_term_is_named_and_counted(one):
    s, X, _ = one
    m = fit_eigenstrain(s, X, degree=1, n_boot=3, stiffness_uncertainty=0.1, n_perturb=2, rng=0)
    assert m.interval_terms == ("bootstrap (blocks)", "stiffness ±10% per constant (2 refits)")
    assert m.coef_boot.shape == (6, 2, 1)
    # without bootstrap replicates there is nothing to widen: the term is skipped
    m0 = fit_eigenstrain(s, X, degree=1, n_boot=0, stiffness_uncertainty=0.1, rng=0)
    assert m0.interval_terms == () and m0.coef_boot.shape == (0, 2, 1)


def test_a_given_stiffness_is_used_and_recorded(one):
    s, X, _ = one
    q = learning.elasticity.isotropic_plane_stress(120.0, 0.25)
    m = fit_eigenstrain(s, X, degree=1, n_boot=0, stiffness=q)
    assert_allclose(m.stiffness, q)
    # a compatible eigenstrain is stress free whatever the stiffness: same slopes (to the discretisation)
    assert_allclose(m.derivative([0.5]), [SLOPES], rtol=0.02)


def test_upsample_is_recorded_and_refines_the_same_answer(one):
    s, X, _ = one
    m = fit_eigenstrain(s, X, degree=1, n_boot=0, upsample=2)
    assert m.upsample == 2
    # finer elements: closer to the continuum answer (measured cc error 1.4 % -> 1.1 %)
    one_el = fit_eigenstrain(s, X, degree=1, n_boot=0)
    err = [np.abs(mm.derivative([0.5])[0] / SLOPES - 1).max() for mm in (m, one_el)]
    assert err[0] < err[1] < 0.02


def test_fepo4_reference_records_each_particle_reference_strain(one):
    s, X, _ = one
    # offsets o mean the reference lattice is e_ref = -o / (1 + o) relative to FePO4
    sp = particle(name="R", offset=(-0.01, 0.004, 0.0))
    m = fit_eigenstrain(sp[0], sp[1], degree=1, n_boot=0, reference="fepo4")
    assert set(m.reference_strain) == {"R"}
    ref = m.reference_strain["R"]
    assert_allclose(ref, [0.01 / 0.99, -0.004 / 1.004, 0.0], atol=3e-4)
    # re-referenced to FePO4, the offsets vanish
    assert_allclose(m.offsets["R"], 0.0, atol=5e-5)


# --- the model: from_law, add_spread, interval, summary ---------------------------------------------------------


def _line(x):
    x = np.asarray(x, float)
    return np.stack([0.05 * x + 0.01, -0.02 * x + 0.003], axis=-1)


def test_from_law_projects_and_checks():
    m = EigenstrainModel.from_law(_line, 2)
    assert m.degree == 2 and m.coef.shape == (2, 2)
    assert_allclose(m.eigenstrain([0.0, 0.5, 1.0]), [[0, 0], [0.025, -0.01], [0.05, -0.02]], atol=1e-14)
    assert_allclose(m.coef[:, 1], 0.0, atol=1e-14)          # a line has no second-order term
    assert m.boundary == "free" and m.upsample == 1 and m.coef_boot.shape == (0, 2, 2) and m.offsets == {}
    assert_allclose(m.stiffness, learning.elasticity.stiffness_ac())
    q = np.diag([1.0, 2.0, 3.0])
    m = EigenstrainModel.from_law(_line, 1, boundary="dirichlet", stiffness=q, upsample=2)
    assert m.boundary == "dirichlet" and m.upsample == 2
    assert_allclose(m.stiffness, q)
    raises_exactly(TypeError, r"law must be a callable X -> \(\.\.\., 2\), got list", EigenstrainModel.from_law,
                   [0.05, -0.02], 1)
    raises_exactly(ValueError, r"boundary must be one of \('free', 'dirichlet'\), got 'fixed'",
                   EigenstrainModel.from_law, _line, 1, boundary="fixed")
    raises_exactly(ValueError, r"stiffness must have shape \(3, 3\), got \(2, 2\)", EigenstrainModel.from_law,
                   _line, 1, stiffness=np.eye(2))
    raises_exactly(ValueError, r"degree must be an int >= 1, got 0", EigenstrainModel.from_law, _line, 0)
    raises_exactly(ValueError, r"upsample must be an int >= 1, got 0", EigenstrainModel.from_law, _line, 1,
                   upsample=0)


def _boot_model(nb=5, degree=1):
    g = np.random.default_rng(7)
    coef = np.array([[0.025], [-0.01]]) if degree == 1 else g.normal(0, 0.01, (2, degree))
    boots = coef[None] + g.normal(0, 0.001, (nb, 2, degree))
    return EigenstrainModel(degree, coef, boots, {}, "free", np.eye(3), 1, bootstrap="blocks")


def test_add_spread_combines_every_replicate_with_every_centred_delta():
    m = _boot_model(3)
    d = np.array([[[0.004], [0.0]], [[0.0], [0.002]]])
    w = m.add_spread(d, term="registration")
    assert w.coef_boot.shape == (6, 2, 1)
    want = (m.coef_boot[:, None] + (d - d.mean(axis=0))[None]).reshape(6, 2, 1)
    assert_allclose(w.coef_boot, want)
    assert w.interval_terms == ("registration",)
    assert_allclose(w.coef, m.coef) and m.coef_boot.shape == (3, 2, 1)   # the original is unchanged
    w2 = w.add_spread(d, term="more")
    assert w2.interval_terms == ("registration", "more") and w2.coef_boot.shape == (12, 2, 1)
    raises_exactly(ValueError, r"deltas must have shape \(n >= 2, 2, 1\), got \(1, 2, 1\)", m.add_spread, d[:1],
                   term="x")
    raises_exactly(ValueError, r"deltas must have shape \(n >= 2, 2, 1\), got \(2, 2, 2\)", m.add_spread,
                   np.zeros((2, 2, 2)), term="x")
    raises_exactly(ValueError, r"deltas must have shape \(n >= 2, 2, 1\), got \(2, 2\)", m.add_spread,
                   np.zeros((2, 2)), term="x")
    raises_exactly(ValueError, r"deltas must contain only finite values; found NaN or inf", m.add_spread,
                   np.full((2, 2, 1), np.nan), term="x")
    raises_exactly(TypeError, r"term must be a non-empty str, got ''", m.add_spread, d, term="")
    raises_exactly(TypeError, r"term must be a non-empty str, got 3", m.add_spread, d, term=3)
    lone = _boot_model(1)
    raises_exactly(ValueError, r"the model has no bootstrap replicates to widen; fit with n_boot >= 2",
                   lone.add_spread, d, term="x")
    _boot_model(2).add_spread(d, term="two replicates are enough")


def test_interval_is_the_percentile_of_the_replicates():
    m = _boot_model(40, degree=2)
    x = np.array([0.1, 0.5, 0.9])
    lo, hi = m.interval(x)
    reps = np.einsum("nk,bck->bnc", learning.legendre_basis(x, 2, derivative=1), m.coef_boot)
    assert_allclose(lo, np.percentile(reps, 2.5, axis=0))
    assert_allclose(hi, np.percentile(reps, 97.5, axis=0))
    lo8, hi8 = m.interval(x, level=0.8)
    assert_allclose(lo8, np.percentile(reps, 10, axis=0))
    assert_allclose(hi8, np.percentile(reps, 90, axis=0))
    lo_e, hi_e = m.interval(x, quantity="eigenstrain")
    reps_e = np.einsum("nk,bck->bnc", learning.legendre_basis(x, 2), m.coef_boot)
    assert_allclose(lo_e, np.percentile(reps_e, 2.5, axis=0))
    assert_allclose(hi_e, np.percentile(reps_e, 97.5, axis=0))
    raises_exactly(ValueError, r"quantity must be one of \('derivative', 'eigenstrain'\), got 'slope'", m.interval,
                   x, quantity="slope")
    for bad in (0, 1, 1.5):
        raises_exactly(ValueError, rf"level must be in \(0, 1\), got {bad}", m.interval, x, level=bad)
    raises_exactly(ValueError, r"the model has no bootstrap replicates; fit with n_boot >= 2",
                   _boot_model(1).interval, x)
    _boot_model(2).interval(x)
    raises_exactly(ValueError, r"X must lie in \[0, 1\], got values in \[-0\.1, 0\.5\]", m.interval, [-0.1, 0.5])
    raises_exactly(ValueError, r"X must lie in \[0, 1\], got values in \[0\.5, 1\.01\]", m.derivative, [0.5, 1.01])
    raises_exactly(ValueError, r"X must lie in \[0, 1\], got values in \[-0\.01, 0\.5\]", m.eigenstrain, [-0.01, 0.5])
    assert m.eigenstrain([0.0, 1.0]).shape == (2, 2) and m.derivative(0.5).shape == (1, 2)


def test_summary_metadata_and_values():
    m = _boot_model(30, degree=2)
    s = m.summary()
    assert list(s.data_vars) == ["coef", "coef_se", "slope", "slope_se", "slope_low", "slope_high"]
    for v in ("coef", "coef_se"):
        assert s[v].dims == ("component", "k")
    for v in ("slope", "slope_se", "slope_low", "slope_high"):
        assert s[v].dims == ("component", "X")
    names = {"coef": "Legendre coefficient", "coef_se": "bootstrap standard error", "slope": "d eps0 / dX",
             "slope_se": "standard error of the slope", "slope_low": "95% interval, low",
             "slope_high": "95% interval, high"}
    for v, ln in names.items():
        assert s[v].attrs == {"units": "1", "long_name": ln}, v
    assert s.component.values.tolist() == ["aa", "cc"]
    assert s.component.attrs == {"long_name": "crystal axis (aa: x, cc: y)"}
    assert s.k.values.tolist() == [1, 2] and s.k.attrs == {"long_name": "Legendre order", "units": "1"}
    assert s.X.values.tolist() == [0.25, 0.5, 0.75] and s.X.attrs == {"long_name": "Li fraction", "units": "1"}
    assert s.attrs == {"degree": 2, "boundary": "free", "n_boot": 30, "bootstrap": "blocks", "level": 0.95}
    # values: the coefficients, their bootstrap SD, the slopes, the SD of the replicate slopes and the interval
    xs = np.array([0.25, 0.5, 0.75])
    assert_allclose(s.coef.values, m.coef)
    assert_allclose(s.coef_se.values, m.coef_boot.std(axis=0, ddof=1))
    assert_allclose(s.slope.values, m.derivative(xs).T)
    reps = np.einsum("nk,bck->bcn", learning.legendre_basis(xs, 2, derivative=1), m.coef_boot)
    assert_allclose(s.slope_se.values, reps.std(axis=0, ddof=1))
    lo, hi = m.interval(xs)
    assert_allclose(s.slope_low.values, lo.T)
    assert_allclose(s.slope_high.values, hi.T)
    s8 = m.summary(level=0.8)
    assert s8.slope_low.attrs["long_name"] == "80% interval, low" and s8.attrs["level"] == 0.8
    assert_allclose(s8.slope_high.values, m.interval(xs, level=0.8)[1].T)
    # with exactly two replicates the errors exist; with one they are NaN
    assert np.isfinite(_boot_model(2).summary().coef_se.values).all()
    one_rep = _boot_model(1).summary()
    assert np.isnan(one_rep.coef_se.values).all() and np.isnan(one_rep.slope_high.values).all()
    assert one_rep.attrs["n_boot"] == 1


# --- prediction and residuals ----------------------------------------------------------------------------------


def test_predict_strain_and_residual_metadata_and_values(one):
    s, X, mask = one
    law = EigenstrainModel.from_law(lambda x: np.stack([0.05 * np.asarray(x), -0.02 * np.asarray(x)], -1), 1)
    pred = law.predict_strain(X)
    assert list(pred.data_vars) == ["exx", "eyy", "exy", "mask"]
    for v in ("exx", "eyy", "exy"):
        assert pred[v].dims == ("y", "x")
        assert pred[v].attrs == {"units": "1", "long_name": f"predicted strain {v}"}
        assert np.isnan(pred[v].values[~mask]).all()
    assert pred["mask"].attrs == {"units": "1", "long_name": "pixels used"}
    assert pred["mask"].dtype == bool and np.array_equal(pred["mask"].values, mask)
    # compatible law: the prediction is the eigenstrain itself
    assert_allclose(pred.exx.values[mask], 0.05 * X.values[mask], atol=3e-4)
    assert_allclose(pred.eyy.values[mask], -0.02 * X.values[mask], atol=3e-4)
    assert_allclose(pred.exy.values[mask], 0.0, atol=3e-4)
    off = (0.01, -0.008, 0.004)
    sp = particle(offset=off)
    res = law.residual(sp[0], sp[1])
    for v in ("exx", "eyy", "exy"):
        assert res[v].attrs == {"units": "1", "long_name": f"residual (measured - predicted) {v}"}
    assert_allclose(res.attrs["offsets"], off, atol=3e-4)
    assert isinstance(res.attrs["offsets"], list)
    vals = np.concatenate([res[v].values[mask] for v in ("exx", "eyy", "exy")])
    assert res.attrs["rms"] == pytest.approx(np.sqrt(np.mean(vals**2)), rel=1e-12)
    assert res.attrs["rms"] < 1e-4
    assert learning.residual_rms(res) == pytest.approx(res.attrs["rms"], rel=1e-12)
    # residual with a dirichlet law: no offsets are fitted
    dl = EigenstrainModel.from_law(lambda x: np.stack([0.05 * np.asarray(x), -0.02 * np.asarray(x)], -1), 1,
                                   boundary="dirichlet")
    rd = dl.residual(sp[0], sp[1])
    assert rd.attrs["offsets"] == [0.0, 0.0, 0.0]


def test_prediction_messages(one):
    s, X, mask = one
    law = EigenstrainModel.from_law(_line, 1)
    dl = EigenstrainModel.from_law(_line, 1, boundary="dirichlet")
    raises_exactly(ValueError, r"this model uses boundary='dirichlet'; pass the measured strain=\.\.\. so the "
                   r"boundary displacement can be integrated from it", dl.predict_strain, X)
    raises_exactly(ValueError, r"to_fepo4 needs a model fitted with boundary='free' \(it uses the fitted offsets\)",
                   dl.to_fepo4, s, X)
    raises_exactly(TypeError, r"X must be an xarray\.DataArray, got ndarray", law.predict_strain, X.values)
    raises_exactly(ValueError, r"mask selects 15 pixels; at least 30 are needed \(10 per fitted parameter, 3 "
                   r"parameters\)\. Use a lower degree or a larger mask", law.residual, s, X, _top(mask, 15))
    raises_exactly(ValueError, r"mask selects 15 pixels; at least 16 are needed \(10 per fitted parameter, 0 "
                   r"parameters\)\. Use a lower degree or a larger mask", dl.predict_strain, X, _top(mask, 15),
                   strain=s)
    dl.predict_strain(X, _top(mask, 16), strain=s)
    law.predict_strain(X, _top(mask, 30))
    raises_exactly(ValueError, r"X has shape \(11, 14\) but strain has shape \(12, 14\); .*", law.predict_strain,
                   X[:-1], strain=s)
    raises_exactly(ValueError, r"X must have square pixels, got spacing y=1, x=2", law.predict_strain,
                   X.assign_coords(y=np.arange(12.0), x=np.arange(14) * 2.0))


def test_to_fepo4_rereferences_by_the_fitted_offsets(one):
    from chemomech import strain as strain_module

    law = EigenstrainModel.from_law(lambda x: np.stack([0.05 * np.asarray(x), -0.02 * np.asarray(x)], -1), 1)
    sp = particle(offset=(-0.01, 0.004, 0.001))
    out = law.to_fepo4(sp[0], sp[1])
    offs = law.residual(sp[0], sp[1]).attrs["offsets"]
    want = strain_module.change_reference(sp[0], learning.reference_strain(offs))
    for v in ("exx", "eyy", "exy"):
        assert_allclose(out[v].values, want[v].values, equal_nan=True)
    assert_allclose(out.attrs["reference_strain"], learning.reference_strain(offs))


def test_residual_rms_messages_and_disk_bounds():
    ds = xr.Dataset({v: (("y", "x"), np.full((2, 3), 2e-3)) for v in ("exx", "eyy", "exy")},
                    coords={"y": [0.0, 5.0], "x": [0.0, 5.0, 10.0]})
    raises_exactly(ValueError, r"residual must contain 'mask'; pass the Dataset from EigenstrainModel\.residual",
                   learning.residual_rms, ds)
    raises_exactly(ValueError, r"residual must contain 'exy'; pass the Dataset from EigenstrainModel\.residual",
                   learning.residual_rms, ds.drop_vars("exy").assign(mask=(("y", "x"), np.ones((2, 3), bool))))
    ds["mask"] = (("y", "x"), np.ones((2, 3), bool))
    # a pixel exactly on the circle is neither inside nor outside
    raises_exactly(ValueError, r"selected region selects 0 pixels; at least 1 needed", learning.residual_rms, ds,
                   center_nm=(0.0, 0.0), radius_nm=0.0, inside=True)
    ds["exx"].values[0, 1] = 5e-3    # at 5 nm from (0, 0)
    inside = learning.residual_rms(ds, center_nm=(0.0, 0.0), radius_nm=5.0, inside=True)
    assert inside == pytest.approx(2e-3)   # only (0, 0): the 5 nm pixel is on the circle, not inside
    outside = learning.residual_rms(ds, center_nm=(0.0, 0.0), radius_nm=5.0)
    assert outside == pytest.approx(2e-3)  # (0, 10), (5, 5), (5, 0)... all 2e-3 except the one on the circle
    both = learning.residual_rms(ds, center_nm=(0.0, 0.0), radius_nm=5.0001, inside=True)
    assert both == pytest.approx(np.sqrt((8 * 4e-6 + 25e-6) / 9))    # (0, 0), (0, 5) and (5, 0)
    # centre given as (y, x): around (5, 10) only that pixel lies within 1 nm
    ds["eyy"].values[1, 2] = 8e-3
    assert learning.residual_rms(ds, center_nm=(5.0, 10.0), radius_nm=1.0, inside=True) == pytest.approx(
        np.sqrt((4e-6 + 64e-6 + 4e-6) / 3))


def test_reference_strain_by_hand_and_message():
    assert_allclose(learning.reference_strain([0.02, -0.01, 0.003]), [-0.02 / 1.02, 0.01 / 0.99, -0.003])
    raises_exactly(ValueError, r"offsets must have shape \(3,\), got \(2,\)", learning.reference_strain, [0.1, 0.2])
    raises_exactly(ValueError, r"offsets must contain only finite values; found NaN or inf",
                   learning.reference_strain, [0.1, np.nan, 0.0])


# --- naive regression and SIMEX -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def noisy():
    g = np.random.default_rng(11)
    xt = g.uniform(0, 1, (30, 40))
    s = xr.Dataset({v: (("y", "x"), k * xt + c) for v, k, c in (("exx", 0.05, 0.01), ("eyy", -0.02, -0.003),
                                                                   ("exy", 0.0, 0.0))})
    xn = xr.DataArray(xt + g.normal(0, 0.15, xt.shape), dims=("y", "x"))
    return s, xn, xt


def test_naive_regression_is_ordinary_least_squares(noisy):
    s, xn, _ = noisy
    out = learning.naive_regression(s, xn)
    x = xn.values.ravel()
    for i, v in enumerate(("exx", "eyy")):
        fit = np.polyfit(x, s[v].values.ravel(), 1)
        assert out.slope.values[i] == pytest.approx(fit[0], rel=1e-10)
        assert out.intercept.values[i] == pytest.approx(fit[1], rel=1e-10)
        res = s[v].values.ravel() - np.polyval(fit, x)
        se = np.sqrt(res @ res / (x.size - 2) / np.sum((x - x.mean()) ** 2))
        assert out.slope_se.values[i] == pytest.approx(se, rel=1e-8)
    assert out.attrs == {"method": "naive per-pixel OLS", "n_pixels": 1200}
    assert out.slope.attrs == {"units": "1", "long_name": "d strain / dX"}
    assert out.intercept.attrs == {"units": "1", "long_name": "strain at X = 0"}
    assert out.slope_se.attrs == {"units": "1", "long_name": "standard error of the slope"}
    assert out.component.attrs == {"long_name": "crystal axis (aa: exx, cc: eyy)"}
    assert list(out.data_vars) == ["slope", "intercept", "slope_se"]
    # the mask selects pixels; two particles pool their pixels
    m = np.zeros(xn.shape, bool)
    m[:10] = True
    part = learning.naive_regression(s, xn, mask=m)
    assert part.attrs["n_pixels"] == 400
    assert part.slope.values[0] == pytest.approx(np.polyfit(xn.values[:10].ravel(), s.exx.values[:10].ravel(), 1)[0])
    both = learning.naive_regression([s, s], [xn, xn], mask=[m, ~m])
    assert both.attrs["n_pixels"] == 1200
    assert_allclose(both.slope.values, out.slope.values, rtol=1e-12)
    no_mask = learning.naive_regression([s, s], [xn, xn])
    assert no_mask.attrs["n_pixels"] == 2400


def test_naive_regression_messages(noisy):
    s, xn, _ = noisy
    raises_exactly(ValueError, r"X must give one map per strain Dataset: got 1 and 2", learning.naive_regression,
                   [s, s], [xn])
    m = np.zeros(xn.shape, bool)
    m[0, :2] = True
    raises_exactly(ValueError, r"mask selects 2 pixels; at least 3 needed", learning.naive_regression, s, xn, mask=m)
    m[0, 2] = True
    learning.naive_regression(s, xn, mask=m)
    raises_exactly(ValueError, r"mask\[1\] selects 2 pixels; at least 3 needed", learning.naive_regression,
                   [s, s], [xn, xn], mask=[m, m & (np.arange(40) < 2)])
    bad = xn.copy(data=np.where(m, np.nan, xn.values))
    raises_exactly(ValueError, r"mask \(P1\): all 3 pixels have a non-finite exx, eyy or X \(NaN or inf\); there is "
                   r"nothing to fit", learning.naive_regression, s.assign_attrs(particle="P1"), bad, mask=m)
    big = np.zeros(xn.shape, bool)
    big[:2] = True
    part = xn.copy(data=xn.values.copy())
    part.values[0, 0] = np.nan
    with pytest.warns(DataWarning) as rec:
        out = learning.naive_regression(s, part.assign_attrs(particle="P2"), mask=big)
    msgs = [str(w.message) for w in rec if w.category is DataWarning]
    assert msgs == ["mask (P2): 1 of 80 pixels have a non-finite exx, eyy or X (NaN or inf) and are left out "
                    "(79 pixels remain)"]
    assert out.attrs["n_pixels"] == 79
    with pytest.warns(DataWarning, match=r"^mask\[0\]: 1 of 80 pixels"):
        learning.naive_regression([s, s], [part, xn], mask=[big, big])


def test_simex_outputs_metadata_and_options(noisy):
    s, xn, xt = noisy
    out = learning.simex(s, xn, sigma_X=0.15, n_sim=4, rng=2)
    assert list(out.data_vars) == ["slope", "intercept", "slope_se", "slope_naive", "slope_lambda", "slope_fit"]
    assert out.attrs == {"method": "SIMEX (rational extrapolant)", "sigma_X": 0.15, "n_sim": 4, "n_pixels": 1200}
    assert out.slope_naive.attrs == {"units": "1", "long_name": "naive slope (lambda = 0)"}
    assert out.slope_lambda.attrs == {"units": "1", "long_name": "mean simulated slope"}
    assert out.slope_fit.attrs == {"units": "1", "long_name": "fitted extrapolant"}
    assert out.slope_se.attrs == {"units": "1", "long_name": "standard error of the naive slope"}
    lam_attrs = {"units": "1", "long_name": "added noise variance / sigma_X**2"}
    assert out["lambda"].attrs == lam_attrs and out["lambda_fit"].attrs == lam_attrs
    assert out["lambda"].values.tolist() == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert out.slope_lambda.dims == ("lambda", "component") and out.slope_fit.dims == ("lambda_fit", "component")
    assert out["lambda_fit"].values[0] == -1.0 and out["lambda_fit"].values[-1] == 2.0
    assert out.sizes["lambda_fit"] == 31
    naive = learning.naive_regression(s, xn)
    assert_allclose(out.slope_naive.values, naive.slope.values)
    assert_allclose(out.slope_lambda.values[0], naive.slope.values)
    assert_allclose(out.slope_se.values, naive.slope_se.values)
    # the corrected slope is the fitted curve at lambda = -1 and undoes the dilution (truth 0.05, -0.02)
    assert_allclose(out.slope.values, out.slope_fit.values[0])
    assert abs(naive.slope.values[0] / 0.05 - 1) > 0.15
    assert_allclose(out.slope.values, SLOPES, rtol=0.06)
    # and the intercept goes back to the truth's too (0.01, -0.003)
    assert_allclose(out.intercept.values, [0.01, -0.003], atol=2e-3)
    # added noise flattens the simulated slope curve monotonically
    assert np.all(np.diff(np.abs(out.slope_lambda.values), axis=0) < 0)
    q = learning.simex(s, xn, sigma_X=0.15, n_sim=4, rng=2, extrapolant="quadratic", lambdas=(1.0, 2.0, 3.0))
    assert q.attrs["method"] == "SIMEX (quadratic extrapolant)"
    assert q["lambda"].values.tolist() == [0.0, 1.0, 2.0, 3.0]
    coef = np.polyfit(q["lambda"].values, q.slope_lambda.values[:, 0], 2)
    assert q.slope.values[0] == pytest.approx(np.polyval(coef, -1.0), rel=1e-9)
    assert_allclose(q.slope_fit.values[:, 0], np.polyval(coef, q["lambda_fit"].values), rtol=1e-9)


def test_simex_messages(noisy):
    s, xn, _ = noisy
    raises_exactly(ValueError, r"sigma_X must be > 0 and finite, got 0", learning.simex, s, xn, sigma_X=0)
    raises_exactly(ValueError, r"extrapolant must be one of \('rational', 'quadratic'\), got 'linear'",
                   learning.simex, s, xn, sigma_X=0.1, extrapolant="linear")
    raises_exactly(ValueError, r"lambdas must be at least 3 positive numbers, got \(1\.0, 2\.0\)", learning.simex,
                   s, xn, sigma_X=0.1, lambdas=(1.0, 2.0))
    raises_exactly(ValueError, r"lambdas must be at least 3 positive numbers, got \[\[1, 2, 3\]\]", learning.simex,
                   s, xn, sigma_X=0.1, lambdas=[[1, 2, 3]])
    raises_exactly(ValueError, r"n_sim must be an int >= 1, got 0", learning.simex, s, xn, sigma_X=0.1, n_sim=0)
    learning.simex(s, xn, sigma_X=0.1, n_sim=1, lambdas=(1.0, 2.0, 3.0), rng=0)


def test_simex_rational_extrapolant_is_exact_for_attenuation():
    # slope(l) = s / (1 + r (1 + l)): the rational form a + b / (c + l) holds exactly, the estimate at -1 is s
    lam = np.array([0.0, 0.5, 1.0, 1.5, 2.0])
    y = 0.05 / (1 + 0.3 * (1 + lam))
    at = np.array([-1.0, 0.0])
    assert_allclose(learning._extrapolate(lam, y, "rational", at), [0.05, y[0]], rtol=1e-6)
    assert learning._extrapolate(lam, y, "quadratic", at)[0] == pytest.approx(np.polyval(np.polyfit(lam, y, 2), -1))
    # a curve that is flat (no attenuation) extrapolates to itself
    assert_allclose(learning._extrapolate(lam, np.full(5, 0.02), "rational", at), 0.02, rtol=1e-6)


# --- learn_stacks -------------------------------------------------------------------------------------------------


def test_learn_stacks_checks_its_registration_error():
    for bad in (-0.5, np.inf, np.nan):
        raises_exactly(ValueError, rf"registration_sd_px must be a finite number >= 0, got {bad!r}",
                       learning.learn_stacks, [], registration_sd_px=bad)
    raises_exactly(ValueError, r"n_perturb must be an int >= 2, got 1", learning.learn_stacks, [], n_perturb=1)


def _stack(name, seed, *, sigma=0.02, offset=(0.0, 0.0, 0.0)):
    s, X, mask = particle(24, 26, 11.0, name=name, offset=offset, spacing=4.0)
    g = np.random.default_rng(seed)
    ds = s.copy()
    ds["X"] = X + g.normal(0, sigma, X.shape) * mask if sigma else X
    ds["X_sigma"] = X.copy(data=np.where(mask, sigma if sigma else np.nan, np.nan))
    ds["thickness"] = X.copy(data=np.where(mask, 1.0, np.nan))
    ds["theta"] = X.copy(data=np.where(mask, 0.0, np.nan))
    ds["mask"] = (("y", "x"), mask)
    ds.attrs.update(particle=name, crystal_angle_rad=0.0)
    return ds


@pytest.fixture(scope="module")
def stacks():
    return [_stack(f"S{i}", i, offset=(0.002 * i, -0.001 * i, 0.0)) for i in range(3)]


def test_learn_stacks_summary_holds_its_documented_entries(stacks):
    model, aligned, summary = learning.learn_stacks(stacks, max_degree=1, n_boot=6, seed=4, stiffness_uncertainty=0.0)
    assert len(aligned) == 3 and all(a.attrs["crystal_angle_rad"] == 0.0 for a in aligned)
    assert set(summary) == {"slopes", "slope_interval", "mean_slope", "degree", "pixels", "X", "mean_range", "level",
                            "interval_terms", "sigma_X", "particles", "reference_strain", "crystal_angle_rad"}
    slope = model.derivative([0.5])[0]
    lo, hi = model.interval([0.5])
    assert summary["slopes"] == {"aa": pytest.approx(slope[0]), "cc": pytest.approx(slope[1])}
    assert summary["slope_interval"] == {"aa": [pytest.approx(lo[0, 0]), pytest.approx(hi[0, 0])],
                                         "cc": [pytest.approx(lo[0, 1]), pytest.approx(hi[0, 1])]}
    mean = model.derivative(np.linspace(0.2, 0.8, 61)).mean(axis=0)
    assert summary["mean_slope"] == {"aa": pytest.approx(mean[0]), "cc": pytest.approx(mean[1])}
    assert summary["degree"] == model.degree == 1 and isinstance(summary["degree"], int)
    assert summary["pixels"] == sum(int(a["mask"].sum()) for a in aligned)
    assert summary["X"] == 0.5 and summary["mean_range"] == [0.2, 0.8] and summary["level"] == 0.95
    assert summary["interval_terms"] == list(model.interval_terms) == ["bootstrap (both)", "SIMEX shift"]
    assert summary["sigma_X"] == pytest.approx(0.02)
    assert summary["particles"] == ["S0", "S1", "S2"]
    assert set(summary["reference_strain"]) == {"S0", "S1", "S2"}
    assert all(len(v) == 3 and all(isinstance(x, float) for x in v) for v in summary["reference_strain"].values())
    assert summary["crystal_angle_rad"] == {"S0": 0.0, "S1": 0.0, "S2": 0.0}
    # the law of the stacks (slopes 0.05, -0.02), SIMEX-corrected for the X noise
    assert_allclose(slope, SLOPES, rtol=0.05)
    # the offsets of the stacks are the reference lattices relative to FePO4: e_ref = -o / (1 + o)
    ref = np.array(summary["reference_strain"]["S2"])
    assert_allclose(ref[:2], [-0.004 / 1.004, 0.002 / 0.998], atol=5e-4)


def test_learn_stacks_without_x_sigma_and_with_a_registration_term(stacks):
    exact = [_stack(f"E{i}", i, sigma=0.0) for i in range(3)]
    model, _, summary = learning.learn_stacks(exact, max_degree=1, n_boot=4, seed=1, stiffness_uncertainty=0.1,
                                              n_perturb=2)
    assert summary["sigma_X"] is None
    # n_perturb counts the registration refits; the stiffness term keeps fit_eigenstrain's default (8)
    assert summary["interval_terms"] == ["bootstrap (both)", "stiffness ±10% per constant (8 refits)"]
    assert_allclose(model.derivative([0.5])[0], SLOPES, rtol=0.03)
    reg_model, _, reg = learning.learn_stacks(exact, max_degree=1, n_boot=4, seed=1, stiffness_uncertainty=0.0,
                                              registration_sd_px=0.5, n_perturb=3)
    assert reg["interval_terms"] == ["bootstrap (both)", "registration ±0.5 px RMS (3 refits)"]
    # every bootstrap replicate combined with every (centred) registration refit
    assert reg_model.coef_boot.shape == (4 * 3, 2, 1)
    spread = reg_model.coef_boot.reshape(4, 3, 2, 1) - reg_model.coef_boot.reshape(4, 3, 2, 1)[:, :1]
    assert_allclose(spread[0], spread[3], atol=1e-15)        # the same deltas for each replicate
    assert np.abs(spread).max() > 0                          # misplaced X maps change the law
    # a spread term, not a shift: the slopes are those of the plain fit
    _, _, plain = learning.learn_stacks(exact, max_degree=1, n_boot=4, seed=1, stiffness_uncertainty=0.0)
    assert reg["slopes"] == plain["slopes"]


# --- cross-validation, SIMEX and bootstrap against independent refits ----------------------------------------------


@pytest.fixture(scope="module")
def trio():
    g = np.random.default_rng(3)
    out = []
    for i in range(3):
        s, X, m = particle(16, 18, 7.5, name=f"C{i}", offset=(0.001 * i, 0.0, 0.0))
        s = s.copy()
        for v in ("exx", "eyy", "exy"):
            s[v] = s[v] + g.normal(0, 5e-4, s[v].shape)
        out.append((s, X, m))
    return out


def test_leave_one_particle_out_error_is_the_held_out_residual(trio):
    # the CV error of fold f is the mean squared residual of particle f under the law fitted on the others, its
    # offsets being its mean residual: exactly what EigenstrainModel.residual reports (attrs["rms"] squared)
    m = fit_eigenstrain([p[0] for p in trio], [p[1] for p in trio], max_degree=2, n_boot=0, rng=0)
    assert m.cv.mse.shape == (2, 3)
    for f in range(3):
        train = [p for j, p in enumerate(trio) if j != f]
        for d in (1, 2):
            mm = fit_eigenstrain([p[0] for p in train], [p[1] for p in train], degree=d, n_boot=0)
            rms = mm.residual(trio[f][0], trio[f][1]).attrs["rms"]
            assert m.cv.mse.values[d - 1, f] == pytest.approx(rms**2, rel=1e-9)


def test_degree_selection_takes_the_smallest_within_one_standard_error():
    degrees = np.array([1, 2, 3])
    # fold errors: degree 3 is best; degree 2 is worse by a paired difference whose mean is within one SE
    err = np.array([[5.0, 6.0, 7.0, 8.0], [1.3, 0.7, 1.1, 1.1], [1.0, 1.0, 1.0, 1.0]])   # mean 0.05, SE 0.126
    assert learning._select_degree(degrees, err) == 2
    # degree 2 consistently worse (mean difference 0.2, SE 0): not within, the best is taken
    err2 = np.array([[5.0, 6.0, 7.0, 8.0], [1.2, 1.2, 1.2, 1.2], [1.0, 1.0, 1.0, 1.0]])
    assert learning._select_degree(degrees, err2) == 3
    # exactly equal errors: the smallest degree
    assert learning._select_degree(degrees, np.ones((3, 4))) == 1
    # a single fold has no standard error: only ties count
    assert learning._select_degree(degrees, np.array([[2.0], [1.0], [1.0]])) == 2
    # the mean difference equals one SE: still within (<=)
    d = np.array([0.0, 2.0])   # mean 1, sd 1.414..., se = 1
    err3 = np.array([[1.0 + d[0], 1.0 + d[1]], [1.0, 1.0], [3.0, 3.0]])
    assert learning._select_degree(degrees, err3) == 1


def test_simex_fit_is_the_quadratic_extrapolation_of_refits_with_added_noise(trio):
    # with a noise "draw" that is always the same map, the SIMEX curve is deterministic: the coefficients and the CV
    # errors at lambda = 0, 0.5, 1, 1.5, 2 are those of plain fits with X + sqrt(lambda) * d, and the corrected
    # values are their quadratic fits evaluated at lambda = -1 (errors floored at 0)
    g = np.random.default_rng(8)
    ds = [0.03 * g.standard_normal(p[1].shape) for p in trio]
    S, Xs = [p[0] for p in trio], [p[1] for p in trio]
    sim = fit_eigenstrain(S, Xs, max_degree=2, n_boot=0, rng=5, X_noise=[lambda _g, d=d: d for d in ds],
                          simex_n_sim=2)
    lam = np.array([0.0, 0.5, 1.0, 1.5, 2.0])
    coefs, errs = [], []
    for lv in lam:
        Xl = [x.copy(data=x.values + np.sqrt(lv) * d) for x, d in zip(Xs, ds)]
        coefs.append(fit_eigenstrain(S, Xl, degree=sim.degree, n_boot=0).coef.ravel())
        errs.append(fit_eigenstrain(S, Xl, max_degree=2, n_boot=0, rng=5).cv.mse.values.ravel())
    quad = np.polynomial.polynomial.polyfit(lam, np.array(coefs), 2)
    assert_allclose(sim.coef.ravel(), quad[0] - quad[1] + quad[2], rtol=1e-7, atol=1e-12)
    qe = np.polynomial.polynomial.polyfit(lam, np.array(errs), 2)
    assert_allclose(sim.cv.mse.values.ravel(), np.maximum(qe[0] - qe[1] + qe[2], 0.0), rtol=1e-7, atol=1e-16)
    assert sim.cv.attrs["simex"] == 1
    # the same with white noise of the given sigma_X is a different (random) correction, but recorded alike
    white = fit_eigenstrain(S, Xs, degree=1, n_boot=3, rng=5, sigma_X=0.03, simex_n_sim=1)
    assert white.interval_terms == ("bootstrap (both)", "SIMEX shift")


def test_simex_shift_moves_the_replicates_onto_the_corrected_estimate(trio):
    S, Xs = [p[0] for p in trio], [p[1] for p in trio]
    g = np.random.default_rng(9)
    ds = [0.03 * g.standard_normal(p[1].shape) for p in trio]
    plain = fit_eigenstrain(S, Xs, degree=1, n_boot=8, rng=2)
    sim = fit_eigenstrain(S, Xs, degree=1, n_boot=8, rng=2, X_noise=[lambda _g, d=d: d for d in ds], simex_n_sim=1)
    # the bootstrap draws the same blocks (the same generator state after a deterministic SIMEX), shifted by the
    # SIMEX correction of the estimate
    assert_allclose(sim.coef_boot - sim.coef, plain.coef_boot - plain.coef, atol=1e-12)
    assert not np.allclose(sim.coef, plain.coef)


def test_block_bootstrap_spread_matches_the_least_squares_error():
    # white strain noise: the block bootstrap SD of the slope is close to the spread of refits on new noise
    s, X, mask = particle(32, 34, 15.5)
    g = np.random.default_rng(4)

    def noisy():
        out = s.copy()
        for v in ("exx", "eyy", "exy"):
            out[v] = out[v] + g.normal(0, 1e-3, s[v].shape)
        return out

    m = fit_eigenstrain(noisy(), X, degree=1, n_boot=150, block_px=4, rng=1)
    boot_sd = m.coef_boot.std(axis=0, ddof=1)
    refits = np.array([fit_eigenstrain(noisy(), X, degree=1, n_boot=0).coef for _ in range(30)])
    true_sd = refits.std(axis=0, ddof=1)
    assert_allclose(boot_sd, true_sd, rtol=0.5)
    # all replicates differ (resampling is random) and centre on the estimate
    assert np.unique(m.coef_boot[:, 0, 0]).size == 150
    assert_allclose(m.coef_boot.mean(axis=0), m.coef, atol=3 * boot_sd.max() / np.sqrt(150) + 1e-12)


def test_prediction_names_a_split_mask_and_a_split_map():
    s, X, mask = particle()
    law = EigenstrainModel.from_law(_line, 1)
    cut = mask.copy()
    cut[:, 7] = False
    raises_exactly(ValueError, r"mask: mask must be one edge-connected region, got 2 pieces; keep the largest with "
                   r"scipy\.ndimage\.label first", law.predict_strain, X, cut)
    raises_exactly(ValueError, r"mask \(P9\): mask must be one edge-connected region, got 2 pieces; .*",
                   law.predict_strain, X.assign_attrs(particle="P9"), cut)
    # the fit names the mask the same way (one particle: "mask"; its default name "particle 0")
    raises_exactly(ValueError, r"mask \(particle 0\): mask must be one edge-connected region, got 2 pieces; keep the "
                   r"largest with scipy\.ndimage\.label first", fit_eigenstrain, s, X, mask=cut, degree=1)
    Xc = X.copy(data=np.where(cut, X.values, np.nan))
    raises_exactly(ValueError, r"the finite pixels of X form 2 pieces, but the finite-element model needs one "
                   r"edge-connected particle; .*", law.predict_strain, Xc)
    # a default mask of finite pixels with an enclosed hole: the hole belongs to the body, reported as NaN
    hole = X.copy(data=X.values.copy())
    hole.values[5, 6] = np.nan
    with pytest.warns(DataWarning, match=r"^mask: 1 of 96 pixels have a non-finite strain or X"):
        pred = law.predict_strain(hole)
    assert np.isnan(pred.exx.values[5, 6]) and pred["mask"].values.sum() == 95


def test_progress_bar_only_when_asked(one, capsys):
    s, X, _ = one
    fit_eigenstrain(s, X, degree=1, n_boot=0)
    assert "FEM responses per particle" not in capsys.readouterr().err
    fit_eigenstrain(s, X, degree=1, n_boot=0, progress=True)
    assert "FEM responses per particle" in capsys.readouterr().err


def test_simex_extrapolant_falls_back_to_the_quadratic_for_a_pole_beyond_minus_one():
    lam = np.array([0.0, 0.5, 1.0, 1.5, 2.0])
    at = np.array([-1.0, 0.5])
    # an exact rational curve with its pole at lambda = -0.8 (c = 0.8 <= 1): not a valid extrapolant to -1
    y = 0.01 + 0.02 / (0.8 + lam)
    quad = np.polyval(np.polyfit(lam, y, 2), at)
    assert_allclose(learning._extrapolate(lam, y, "rational", at), quad, rtol=1e-9)
    # a curve ending at exactly zero still gets the rational fit (started from a default attenuation)
    y0 = 0.05 / (1 + 0.3 * (1 + lam))
    y0 = y0 - y0[-1]
    assert_allclose(learning._extrapolate(lam, y0, "rational", np.array([-1.0])), 0.05 - 0.05 / 1.9, rtol=1e-5)


def _curved(name, seed):
    # aa linear; cc with a minimum inside [0, 1]: d eps0_cc/dX = -0.02 + 0.1 (X - 0.5) changes sign at X = 0.7
    s, X, mask = particle(24, 26, 11.0, name=name)
    xv = X.values
    s = s.copy()
    s["eyy"] = (("y", "x"), -0.02 * xv + 0.05 * (xv - 0.5) ** 2 - 0.0125)
    return s, X


def test_monotonic_option_gives_one_signed_slopes_and_changes_nothing_when_already_monotone():
    s, X = _curved("M", 0)
    free = fit_eigenstrain(s, X, degree=2, n_boot=0)
    xg = np.linspace(0, 1, 41)
    assert free.derivative(xg)[:, 1].max() > 1e-3 > -1e-3 > free.derivative(xg)[:, 1].min()
    mono = fit_eigenstrain(s, X, degree=2, n_boot=0, monotonic=True)
    slope = mono.derivative(xg)
    assert slope[:, 1].max() < 1e-6          # cc: negative mean slope, kept non-positive
    assert slope[:, 0].min() > 0             # aa: already monotone
    assert not np.allclose(mono.coef, free.coef)
    line = particle(24, 26, 11.0)
    a = fit_eigenstrain(line[0], line[1], degree=2, n_boot=0)
    b = fit_eigenstrain(line[0], line[1], degree=2, n_boot=0, monotonic=True)
    assert_allclose(b.coef, a.coef, rtol=1e-12)


def test_smoothness_penalises_curvature():
    s, X = _curved("K", 0)
    free = fit_eigenstrain(s, X, degree=3, n_boot=0)
    zero = fit_eigenstrain(s, X, degree=3, n_boot=0, smoothness=0.0)
    assert_allclose(zero.coef, free.coef, rtol=1e-12)
    xg = np.linspace(0, 1, 201)

    def curvature(m):
        b2 = learning.legendre_basis(xg, 3, derivative=2) @ m.coef.T
        return np.mean(b2**2, axis=0)   # uniform grid on [0, 1]: the mean is the integral (to O(h))

    c = [curvature(fit_eigenstrain(s, X, degree=3, n_boot=0, smoothness=w)) for w in (0.0, 1e-3, 1e-1)]
    assert c[2][1] < c[1][1] < c[0][1]
    # a straight line has no curvature to penalise: degree 1 ignores the smoothness
    one = fit_eigenstrain(s, X, degree=1, n_boot=0, smoothness=10.0)
    assert_allclose(one.coef, fit_eigenstrain(s, X, degree=1, n_boot=0).coef, rtol=1e-12)


def test_prediction_refuses_a_map_that_is_not_a_li_fraction():
    s, X, mask = particle()
    law = EigenstrainModel.from_law(_line, 1)
    raises_exactly(ValueError, r"X must be a Li fraction: values slightly outside \[0, 1\] from noise are accepted, "
                   r"but inside the mask they must lie in \[-0\.5, 1\.5\]; got values in \[2\.16, 2\.84\]\. Is it a Li "
                   r"fraction\?", law.predict_strain, X + 2.0)
    raises_exactly(ValueError, r"X must have dims \('y', 'x'\), got \('x', 'y'\); use \.transpose\(\.\.\.\) or "
                   r"\.rename\(\.\.\.\) first", law.predict_strain, X.T)
    # noisy X a little outside [0, 1] is predicted with the law extended (not clipped)
    pred = law.predict_strain(X + 0.3)
    assert np.isfinite(pred.exx.values[mask]).all() and np.nanmax(pred.exx.values) > 0.05


def test_a_nan_hole_is_filled_by_interpolation_clipped_to_a_li_fraction():
    # biharmonic inpainting reproduces a linear ramp exactly, so a hole in a ramp predicts as the full map does at
    # every other pixel; where the ramp exceeds 1, the filled value is clipped to 1 (module docstring)
    s, X, mask = particle()
    law = EigenstrainModel.from_law(_line, 1)
    full = law.predict_strain(X)
    hole = X.copy(data=X.values.copy())
    hole.values[5, 6] = np.nan
    with pytest.warns(DataWarning):
        got = law.predict_strain(hole, mask)
    other = mask.copy()
    other[5, 6] = False
    for v in ("exx", "eyy", "exy"):
        assert_allclose(got[v].values[other], full[v].values[other], rtol=1e-7, atol=1e-12)
    high = X + 0.45                                 # values up to 1.3 at the right edge (still a noisy Li map)
    r, c = 6, 11
    assert mask[r, c] and high.values[r, c] > 1.05
    holed = high.copy(data=high.values.copy())
    holed.values[r, c] = np.nan
    clipped = high.copy(data=high.values.copy())
    clipped.values[r, c] = 1.0
    other = mask.copy()
    other[r, c] = False
    with pytest.warns(DataWarning):
        a = law.predict_strain(holed, mask)
    b = law.predict_strain(clipped, mask)
    assert_allclose(a.exx.values[other], b.exx.values[other], rtol=1e-7, atol=1e-12)
    assert not np.allclose(a.exx.values[other], law.predict_strain(high, mask).exx.values[other], rtol=1e-9)


def test_from_law_is_a_least_squares_projection_on_201_points():
    def law(x):
        x = np.asarray(x, float)
        return np.stack([np.sin(3 * x) + 0.2, x**3], axis=-1)

    m = EigenstrainModel.from_law(law, 2)
    xg = np.linspace(0, 1, 201)
    want = np.linalg.lstsq(learning.legendre_basis(xg, 2), law(xg) - law(np.zeros(1)), rcond=None)[0].T
    assert_allclose(m.coef, want, rtol=1e-12)


def test_learn_stacks_defaults_are_the_documented_ones(stacks):
    # defaults: max_degree 3, n_boot 200, seed 0, stiffness_uncertainty 0.1 (fit_eigenstrain's 8 refits), no
    # registration term
    model, _, summary = learning.learn_stacks(stacks)
    assert model.cv.degree.values.tolist() == [1, 2, 3]
    assert model.coef_boot.shape[0] == 200 * 8
    assert summary["interval_terms"] == ["bootstrap (both)", "SIMEX shift", "stiffness ±10% per constant (8 refits)"]
    # the point estimate depends on the seed (CV folds, SIMEX draws), not on the interval options: seed 0 by default
    _, _, cheap = learning.learn_stacks(stacks, seed=0, n_boot=2, stiffness_uncertainty=0.0)
    assert cheap["slopes"] == summary["slopes"] and cheap["degree"] == summary["degree"]


def test_all_nan_maps_without_a_mask_are_refused_by_name():
    s, X, mask = particle()
    raises_exactly(ValueError, r"X contains no finite values \(all NaN or inf\)", fit_eigenstrain, s,
                   X.copy(data=np.full(X.shape, np.nan)), degree=1)
    nan_strain = s.assign(exx=s.exx * np.nan)
    raises_exactly(ValueError, r"mask selects 0 pixels; at least 1 needed", fit_eigenstrain, nan_strain, X, degree=1)
    raises_exactly(ValueError, r"X contains no finite values \(all NaN or inf\)", learning.naive_regression,
                   s, X.copy(data=np.full(X.shape, np.nan)))


def test_rational_extrapolant_accepts_a_pole_just_beyond_minus_one():
    # c = 1.5: the pole at lambda = -1.5 lies beyond -1, a valid extrapolant, so the rational fit is used (exact)
    lam = np.array([0.0, 0.5, 1.0, 1.5, 2.0])
    y = 0.01 + 0.02 / (1.5 + lam)
    assert learning._extrapolate(lam, y, "rational", np.array([-1.0]))[0] == pytest.approx(0.05, rel=1e-5)


def test_stiffness_perturbations_scale_four_constants_independently():
    # Q_aa, Q_cc, Q_ac (kept symmetric) and Q_66 each by its own factor, uniform in 1 +- u; the rest unchanged
    q = learning.elasticity.stiffness_ac() + np.array([[0, 0, 1.0], [0, 0, 2.0], [1.0, 2.0, 0]])
    gen = np.random.default_rng(12)
    u = 0.2
    f = []
    for _ in range(300):
        p = learning._perturbed_stiffness(q, u, gen)
        assert_allclose(p, p.T)
        assert_allclose(p[[0, 1, 2, 2], [2, 2, 0, 1]], q[[0, 1, 2, 2], [2, 2, 0, 1]])
        f.append([p[0, 0] / q[0, 0], p[1, 1] / q[1, 1], p[0, 1] / q[0, 1], p[2, 2] / q[2, 2]])
    f = np.array(f)
    assert f.min() >= 1 - u and f.max() <= 1 + u
    assert (f.min(axis=0) < 1 - 0.9 * u).all() and (f.max(axis=0) > 1 + 0.9 * u).all()
    c = np.corrcoef(f.T)
    assert np.abs(c[np.triu_indices(4, 1)]).max() < 0.25      # independent factors


def test_pixel_grid_check_uses_only_the_coordinates_given():
    # a map with physical x coordinates and plain row indices (no y coordinate) is not refused for its pixels
    X = xr.DataArray(np.zeros((6, 7)), dims=("y", "x"), coords={"x": np.arange(7) * 5.0})
    learning._pixel_aspect_ok(X, "X")
    one_row = xr.DataArray(np.zeros((1, 7)), dims=("y", "x"), coords={"y": [3.0], "x": np.arange(7) * 5.0})
    learning._pixel_aspect_ok(one_row, "X")
