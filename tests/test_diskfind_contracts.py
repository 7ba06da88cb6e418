"""Contract tests of the disk locator (chemomech._diskfind), by category of behaviour (issue 19).

Whole error messages and their bounds, the precomputed tables against independent computations (finite
differences, numpy solves), the ridge-level rule, and the documented options of ``refine``/``locate``/
``locate_masked`` on analytic disks built in ``test_diskfind`` (no shared code with the locator).
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from chemomech import _diskfind
from test_diskfind import RADIUS_PX, _disk, _sampled_profile, _template

PAD = 16
SHAPE = (32, 36)
LIMIT = np.array(SHAPE)


def _raises(exc, func, *args, message, **kwargs):
    with pytest.raises(exc) as info:
        func(*args, **kwargs)
    assert re.fullmatch(message, str(info.value)), str(info.value)


# function-scoped fixtures on purpose: mutation testing runs, for a mutant of the locator's constructor, only the
# tests that construct one; a module-scoped locator would be attributed to the first test that uses it
@pytest.fixture
def plain():
    return _diskfind.Locator(_template())


@pytest.fixture
def content():
    # the edge locator's configuration (strain's): profile tables, content and background terms, a support
    return _diskfind.Locator(_template(), content_order=2, background_order=1, support_radius=RADIUS_PX + 2.5,
                             radius=RADIUS_PX, slope_prior=0.05, curvature_ratio=0.5,
                             profile=_sampled_profile(np.random.default_rng(3), n=100))


def _padded(imgs):
    return np.pad(np.asarray(imgs, np.float32), ((0, 0), (PAD, PAD), (PAD, PAD)))


def _noisy(n, seed, amp=200.0, bg=3.0):
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-0.5, 0.5, size=(n, 2)) + [16.0, 18.0]
    imgs = np.stack([rng.poisson(_disk(SHAPE, c, amp=amp, bg=bg)) for c in centres])
    return centres, _padded(imgs)


# ------------------------------------------------------------------------------------------- messages, bounds

def test_pad_bound_is_half_width_plus_search_plus_3(plain):
    img = _padded([_disk(SHAPE, (16.0, 18.0))])
    need = plain.half + 2 + 3  # 11 for the 13-px template and search 2
    for pad in (need, need + 1):
        padded = np.pad(np.asarray([_disk(SHAPE, (16.0, 18.0))], np.float32), ((0, 0), (pad, pad), (pad, pad)))
        pos, _, _ = plain.locate(padded, np.array([0]), np.array([[16.0, 18.0]]), pad, LIMIT, search=2)
        np.testing.assert_allclose(pos[0], [16.0, 18.0], atol=0.02)
    _raises(ValueError, plain.locate, img, np.array([0]), np.array([[16.0, 18.0]]), need - 1, LIMIT, search=2,
            message=r"pad 10 too small for search 2 and template half-width 6")


def test_misfit_model_messages_and_bounds(content):
    _raises(ValueError, _diskfind.Locator(_template()).with_prior, None, 1.0, misfit=(1.0, np.zeros(1)),
            message=r"misfit: a pixel-variance model needs a content model \(content_order >= 1\)")
    bad = r"misfit: need gain > 0 and a non-empty 1-D kappa >= 0"
    for gain, kappa in ((0.0, [0.0]), (-1.0, [0.0]), (np.nan, [0.0]), (1.0, []), (1.0, [[0.0]]), (1.0, [0.1, -1e-12])):
        _raises(ValueError, content.with_prior, 0.05, RADIUS_PX, misfit=(gain, kappa), message=bad)
    ok = content.with_prior(0.05, RADIUS_PX, misfit=(1e-9, [0.0]))  # any gain > 0, kappa >= 0
    assert ok.misfit[0] == 1e-9 and ok.misfit[1].tolist() == [0.0]
    assert ok.misfit[1].dtype == float
    assert content.misfit is None  # a copy: the original keeps its plain fit
    ok = content.with_prior(0.05, RADIUS_PX, misfit=(2, [0, 1]))
    assert type(ok.misfit[0]) is float and ok.misfit[1].tolist() == [0.0, 1.0]


# ------------------------------------------------------------------------------------------- tables

@pytest.mark.parametrize("kw, k", [({}, 4), ({"content_order": 1}, 6), ({"content_order": 2}, 9),
                                   ({"background_order": 1}, 6), ({"content_order": 2, "background_order": 1}, 11)])
def test_table_columns(kw, k):
    t = _template()
    loc = _diskfind.Locator(t, prior_levels=False, **kw)
    assert loc.w == 13 and loc.half == 6 and loc.step == 1 / 16 and loc.n_side == 16
    np.testing.assert_allclose(loc.grid, np.arange(-16, 17) / 16)
    assert loc.jac.shape == (33 * 33, 169, k) and loc.jac.dtype == np.float32
    mid = len(loc.grid) ** 2 // 2  # the zero shift
    jac = loc.jac.astype(float)
    np.testing.assert_allclose(jac[mid, :, 0], t.ravel(), atol=1e-6)  # T itself at s = 0
    np.testing.assert_array_equal(jac[:, :, 1], 1.0)
    # the offset columns are the derivatives of T(q - s) with respect to s: central differences of the table
    side = 33
    dy = (jac[mid + side, :, 0] - jac[mid - side, :, 0]) / (2 / 16)
    dx = (jac[mid + 1, :, 0] - jac[mid - 1, :, 0]) / (2 / 16)
    np.testing.assert_allclose(jac[mid, :, 2], dy, atol=0.02 * np.abs(dy).max())
    np.testing.assert_allclose(jac[mid, :, 3], dx, atol=0.02 * np.abs(dx).max())
    yy, xx = (a.ravel().astype(float) for a in np.mgrid[-6:7, -6:7])
    e = mid + 3 * side - 2  # s = (3/16, -2/16)
    uy, ux = yy - 3 / 16, xx + 2 / 16
    ts = jac[e, :, 0]
    extra = []
    if kw.get("content_order", 0) >= 1:
        extra += [uy * ts, ux * ts]
    if kw.get("content_order", 0) >= 2:
        extra += [uy * uy * ts, ux * ux * ts, uy * ux * ts]
    if kw.get("background_order", 0) >= 1:
        extra += [uy, ux]
    for i, col in enumerate(extra):
        np.testing.assert_allclose(jac[e, :, 4 + i], col, atol=1e-5)
    np.testing.assert_allclose(loc.jtj[e], jac[e].T @ jac[e], rtol=1e-5, atol=1e-4)
    # level 0 (no prior): the estimator rows are the least-squares pseudo-inverse
    np.testing.assert_allclose(loc.pinv[0, e].astype(float) @ jac[e], np.eye(k), atol=2e-3)
    # the detection model: the uniform disk's first four columns on the whole window
    np.testing.assert_allclose(loc.pinv4[e].astype(float) @ jac[e, :, :4], np.eye(4), atol=2e-3)
    np.testing.assert_allclose(loc.amp_var[e], np.linalg.inv(jac[e, :, :4].T @ jac[e, :, :4])[0, 0], rtol=1e-4)


def test_support_radius_keeps_the_pixels_within_it():
    loc = _diskfind.Locator(_template(), support_radius=3.0, prior_levels=False)
    yy, xx = np.mgrid[-6:7, -6:7]
    want = (np.hypot(yy, xx) <= 3.0).ravel()
    np.testing.assert_array_equal(loc.support, want)
    assert loc.jac.shape[1] == want.sum() == 29
    assert loc.pinv4.shape[2] == 169  # detection on the whole window


def test_profile_tables_evaluate_the_radial_profile_at_the_shifted_centres():
    r = np.linspace(0.0, 9.0, 91)
    v = 1.0 / (1.0 + np.exp((r - RADIUS_PX) / 0.4))
    loc = _diskfind.Locator(_template(), profile=(r, v), prior_levels=False)
    yy, xx = (a.ravel().astype(float) for a in np.mgrid[-6:7, -6:7])
    side, mid = 33, 33 * 33 // 2
    e = mid - 5 * side + 7  # s = (-5/16, 7/16)
    rr = np.hypot(yy + 5 / 16, xx - 7 / 16)
    np.testing.assert_allclose(loc.jac[e, :, 0], np.interp(rr, r, v), atol=1e-6)
    # gradient columns: derivative of the profile along the shift (analytic logistic slope)
    dv = -v * (1 - v) / 0.4
    slope = np.interp(rr, r, dv) / np.maximum(rr, 1e-9)
    np.testing.assert_allclose(loc.jac[e, :, 2], -(yy + 5 / 16) * slope, atol=5e-3)  # d T(q - s) / d s
    np.testing.assert_allclose(loc.jac[e, :, 3], -(xx - 7 / 16) * slope, atol=5e-3)


def test_prior_levels_and_penalties(content):
    c = content
    mid = len(c.jtj) // 2
    unit = np.mean([c.jtj[mid, 4, 4], c.jtj[mid, 5, 5]])
    np.testing.assert_allclose(c.levels, [0.0] + list(unit * 10.0 ** np.arange(-2, 3)), rtol=1e-12)
    assert c.prior == pytest.approx((0.05 / RADIUS_PX) ** 2)
    np.testing.assert_array_equal(c.pen[:, :4], 0.0)
    np.testing.assert_array_equal(c.pen[:, 9:], 0.0)  # background plane: free
    np.testing.assert_allclose(c.pen[:, 4], c.levels)
    np.testing.assert_allclose(c.pen[:, 5], c.levels)
    for k in (6, 7, 8):  # quadratic terms: radius^2 / curvature_ratio^2 times the linear ones' penalty
        np.testing.assert_allclose(c.pen[:, k], c.levels * RADIUS_PX**2 / 0.5**2)
    # each level's estimator rows are the ridge solution (J'J + P)^-1 J'
    e = mid + 2
    c._ensure_levels(np.array([3]))
    assert c._built[3]
    jac = c.jac[e].astype(float)
    ridge = np.linalg.solve(c.jtj[e] + np.diag(c.pen[3]), jac.T)
    np.testing.assert_allclose(c.pinv[3, e], ridge, rtol=1e-3, atol=1e-4 * np.abs(ridge).max())
    np.testing.assert_allclose(c.inv_diag[3, e], np.diag(np.linalg.inv(c.jtj[e] + np.diag(c.pen[3]))), rtol=1e-6)
    # no levels without content terms or with prior_levels=False; set_prior(None) removes the prior
    assert _diskfind.Locator(_template(), slope_prior=0.05).levels.tolist() == [0.0]
    no_levels = _diskfind.Locator(_template(), content_order=1, slope_prior=0.05, prior_levels=False)
    assert no_levels.levels.tolist() == [0.0]
    assert _diskfind.Locator(_template(), content_order=1, prior_levels=False).prior is None
    free = c.with_prior(None, RADIUS_PX)
    assert free.prior is None and c.prior is not None
    free.set_prior(0.2, 4.0)
    assert free.prior == pytest.approx(0.0025)
    free.set_prior(0.2)
    assert free.prior == pytest.approx(0.04)


def test_ridge_level_is_the_nearest_decade_of_noise_over_prior(content):
    c = content
    amp = np.full(9, 2.0)
    lam = c.levels[1] * 10.0 ** np.array([-3.0, -0.51, -0.49, 0.0, 1.0, 2.49, 2.51, 4.0, 8.0])
    var0 = lam * c.prior * amp**2
    assert c._ridge_level(var0, amp).tolist() == [0, 0, 1, 1, 2, 3, 4, 5, 5]
    # non-positive amplitudes get the strongest level; zero noise the weakest
    assert c._ridge_level(np.array([1.0, 1.0, 0.0]), np.array([0.0, -3.0, 1.0])).tolist() == [5, 5, 0]


def test_gathered_matvec_over_several_chunks():
    rng = np.random.default_rng(0)
    table = rng.normal(size=(2, 7, 3, 5))
    m = 2 * 1024 + 37
    li, ti = rng.integers(0, 2, m), rng.integers(0, 7, m)
    y = rng.normal(size=(m, 5))
    got = _diskfind._gathered_matvec(table, (li, ti), y)
    np.testing.assert_allclose(got, np.einsum("mkp,mp->mk", table[li, ti], y), rtol=1e-12)
    assert got.shape == (m, 3)


# ------------------------------------------------------------------------------------------- refine / locate

def test_refine_outputs_and_details_on_a_noise_free_disk(plain):
    centre = np.array([16.3, 17.8])
    img = _disk(SHAPE, centre, amp=100.0, bg=5.0)
    patch = img[10:23, 12:25][None]  # window centred on (16, 18)
    d, amp, amp_err, pos_err, snr, det = plain.refine(patch, np.zeros((1, 2)), details=True)
    np.testing.assert_allclose(d[0], centre - [16, 18], atol=0.02)
    assert amp[0] == pytest.approx(100.0, rel=0.01) and det["p"][0, 1] == pytest.approx(5.0, abs=0.1)
    assert set(det) == {"p", "var", "coef_var", "residual", "mean", "table"}
    assert det["p"].shape == (1, 4) and det["coef_var"].shape == (1, 4) and det["residual"].shape == (1, 169)
    np.testing.assert_allclose(det["residual"] + det["mean"], patch.reshape(1, -1), atol=1e-4)
    # noise-free: what is left is the Fourier-shift interpolation error of a sharp (0.3 px) edge, < 10 %
    assert np.abs(det["residual"]).max() < 10.0
    ti = det["table"][0]
    np.testing.assert_allclose(plain.grid[[ti // 33, ti % 33]], d[0], atol=1 / 32 + 1e-9)  # nearest entry
    # residual variance per degree of freedom (169 pixels - 4 coefficients; measured agreement 1e-6)
    assert det["var"][0] == pytest.approx(np.sum(det["residual"].astype(float) ** 2) / (169 - 4), rel=1e-4)
    # position error: residual scatter through the offset columns' variance, over the amplitude
    assert pos_err[0] == pytest.approx(np.sqrt(det["var"][0] * plain.inv_diag[0, ti, 2:4].mean()) / amp[0], rel=1e-3)
    assert snr[0] == pytest.approx(amp[0] / np.sqrt(det["var"][0] * plain.inv_diag[0, ti, 0]), rel=1e-3)
    assert amp_err[0] == pytest.approx(np.sqrt(det["var"][0] * plain.amp_var[ti]), rel=1e-3)


def test_refine_iterations_and_start_clipping(plain):
    centre = np.array([16.0 + 0.9, 18.0 - 0.85])  # far from the window centre: needs Gauss-Newton steps
    patch = _disk(SHAPE, centre)[10:23, 12:25][None]
    err = {}
    for n in (0, 1, 2):
        d = plain.refine(patch, np.zeros((1, 2)), n_iter=n)[0]
        err[n] = float(np.abs(d[0] - (centre - [16, 18])).max())
    assert err[2] < 0.03 and err[0] > 2 * err[2]
    # a start beyond the table's reach (1 px) is clipped to it, not extrapolated
    far = plain.refine(patch, np.array([[5.0, -5.0]]))[0]
    near = plain.refine(patch, np.array([[1.0, -1.0]]))[0]
    np.testing.assert_array_equal(far, near)
    # a blank patch (amplitude <= 0) keeps its start instead of dividing by the amplitude
    d, amp, *_ = plain.refine(-_disk(SHAPE, (16.0, 18.0))[10:23, 12:25][None], np.array([[0.25, -0.125]]))
    assert amp[0] < 0 and np.all(np.isfinite(d))


def test_locate_returns_snr_errors_and_optional_outputs(plain):
    centres, padded = _noisy(30, 11)
    idx, guess = np.arange(30), np.tile([16.0, 18.0], (30, 1))
    pos, snr, perr = plain.locate(padded, idx, guess, PAD, LIMIT, search=2)
    out = plain.locate(padded, idx, guess, PAD, LIMIT, search=2, fit_snr=True, details=True)
    assert len(out) == 5 and isinstance(out[4], dict)
    np.testing.assert_array_equal(out[0], pos)
    np.testing.assert_array_equal(out[1], snr)
    np.testing.assert_array_equal(out[2], perr)
    np.testing.assert_allclose(out[3], snr, rtol=1e-3)  # uniform disk, whole window: the same model
    assert np.sqrt(np.mean((pos - centres) ** 2)) < 0.05
    # a guess 3 px off is found with search >= 3, not with search 1
    off = guess + [3.0, -3.0]
    far = plain.locate(padded, idx, off, PAD, LIMIT, search=4)[0]
    assert np.abs(far - centres).max() < 0.2
    near = plain.locate(padded, idx, off, PAD, LIMIT, search=1)[0]
    assert np.abs(near - centres).max() > 1.0
    # guesses far outside the detector are clipped into the padded margin (no index error)
    pos, snr, _ = plain.locate(padded, idx[:2], np.array([[-50.0, 18.0], [16.0, 90.0]]), PAD, LIMIT, search=2)
    assert np.all(np.isfinite(pos)) and np.all(snr < 5)
    margin = PAD - plain.half - 2 - 3
    assert pos[0, 0] <= -margin + 2 + 1 and pos[1, 1] >= SHAPE[1] - 1 + margin - 2 - 1


def test_weighted_step_options(content):
    centres, padded = _noisy(40, 12, amp=100.0, bg=1.0)
    idx, guess = np.arange(40), np.tile([16.0, 18.0], (40, 1))
    weighted = content.with_prior(0.05, RADIUS_PX, 0.5, misfit=(1.0, np.array([0.0])))
    base = content.locate(padded, idx, guess, PAD, LIMIT, search=2)
    # weight_snr above every disk's SNR: every disk keeps the least-squares fit
    gated = weighted.locate(padded, idx, guess, PAD, LIMIT, search=2, weight_snr=1e9)
    np.testing.assert_array_equal(gated[0], base[0])
    np.testing.assert_array_equal(gated[2], base[2])
    w = weighted.locate(padded, idx, guess, PAD, LIMIT, search=2)
    assert not np.allclose(w[0], base[0], atol=1e-6)
    # shot-noise weights: more precise than least squares (measured 0.032 vs 0.042 px rms)
    assert np.sqrt(np.mean((w[0] - centres) ** 2)) < np.sqrt(np.mean((base[0] - centres) ** 2))
    # the same data in other units (x 7, gain x 7): the same positions and errors
    scaled = content.with_prior(0.05, RADIUS_PX, 0.5, misfit=(7.0, np.array([0.02])))
    ref = content.with_prior(0.05, RADIUS_PX, 0.5, misfit=(1.0, np.array([0.02])))
    a = ref.locate(padded, idx, guess, PAD, LIMIT, search=2)
    b = scaled.locate(padded * np.float32(7.0), idx, guess, PAD, LIMIT, search=2)
    np.testing.assert_allclose(b[0], a[0], atol=2e-4)
    np.testing.assert_allclose(b[2], a[2], rtol=2e-3)
    # bins beyond the kappa array use its last entry
    long = content.with_prior(0.05, RADIUS_PX, 0.5, misfit=(1.0, np.full(40, 0.02)))
    c = long.locate(padded, idx, guess, PAD, LIMIT, search=2)
    np.testing.assert_array_equal(c[0], a[0])
    # a misfit term changes the weights, hence the positions
    assert not np.allclose(a[0], w[0], atol=1e-6)
    assert np.all(a[2] > 0) and np.all(np.isfinite(a[2]))


def test_locate_masked_without_exclusions_is_the_locator(content):
    centres, padded = _noisy(25, 13)
    idx, guess = np.arange(25), np.tile([16.0, 18.0], (25, 1))
    none = np.zeros(SHAPE, bool)
    for loc in (content, content.with_prior(0.05, RADIUS_PX, 0.5, misfit=(1.0, np.array([0.01])))):
        pos, _, perr = loc.locate(padded, idx, guess, PAD, LIMIT, search=2)
        mpos, mperr, coef = loc.locate_masked(padded, idx, guess, PAD, LIMIT, none, search=2)
        # unit weights: the same estimator, solved in float64 instead of from float32 tables (measured
        # differences 2e-7 px and 3e-5 relative; one degree of freedom more or less would be 1.7 %)
        np.testing.assert_allclose(mpos, pos, atol=1e-5)
        np.testing.assert_allclose(mperr, perr, rtol=1e-3)
        assert coef.shape == (25, 11)
        np.testing.assert_allclose(np.median(coef[:, 0]), 200.0, rtol=0.05)  # amplitude of the disk


def test_locate_masked_drops_excluded_pixels_and_hopeless_disks(plain):
    centre = np.array([16.2, 17.7])
    img = _disk(SHAPE, centre, amp=100.0, bg=5.0)
    dead = img.copy()
    dead[:, 16] = 0.0  # a dead column through the disk's left half
    padded = _padded([img, dead])
    idx, guess = np.array([0, 1]), np.tile([16.0, 18.0], (2, 1))
    excluded = np.zeros(SHAPE, bool)
    excluded[:, 16] = True
    pos, perr, coef = plain.locate_masked(padded, idx, guess, PAD, LIMIT, excluded, search=2)
    np.testing.assert_allclose(pos, [centre, centre], atol=0.04)  # the dead column does not pull the fit
    assert np.all(np.isfinite(perr)) and coef.shape == (2, 4)
    np.testing.assert_allclose(coef[:, 0], 100.0, rtol=0.02)
    np.testing.assert_allclose(coef[:, 1], 5.0, atol=0.2)
    np.testing.assert_allclose(coef[0], coef[1], rtol=1e-6, atol=1e-6)  # the excluded values do not matter
    # the plain locator is pulled by the dead column
    assert np.abs(plain.locate(padded, idx, guess, PAD, LIMIT, search=2)[0][1] - centre).max() > 0.1
    # more than half the window excluded: no position error (NaN)
    half = np.zeros(SHAPE, bool)
    half[:, :18] = True
    _, perr, _ = plain.locate_masked(padded, idx, guess, PAD, LIMIT, half, search=2)
    assert np.isnan(perr).all()
    # the disk's whole left edge excluded: x position information lost (< MIN_KEPT_INFO), NaN
    edge = np.zeros(SHAPE, bool)
    edge[:, 13:18] = True  # 65 of the 169 window pixels: enough pixels, but not enough x information
    _, perr, _ = plain.locate_masked(padded, idx, guess, PAD, LIMIT, edge, search=2)
    assert np.isnan(perr).all()
    # a negative disk: no error either
    _, perr, _ = plain.locate_masked(_padded([-img]), np.array([0]), guess[:1], PAD, LIMIT, excluded, search=2)
    assert np.isnan(perr).all()


def test_correlate_caches_per_shape_and_matches_direct_windows(plain):
    img = _padded([_disk(SHAPE, (16.4, 17.6))])
    cc1 = plain.correlate(img)
    assert set(plain._fft_cache) >= {img.shape[1:]}
    np.testing.assert_array_equal(plain.correlate(img), cc1)
    small = plain.correlate(img[:, :40, :40])
    assert small.shape == (1, 40, 40)
    # the FFT correlation of the padded image read without wrap-around equals the direct windowed one
    for cc in (None, cc1):
        c, frac = plain.coarse(img, np.array([0]), np.array([[16 + PAD, 18 + PAD]]), 2, cc)
        np.testing.assert_array_equal(c[0] - PAD, [16, 18])
        np.testing.assert_allclose(frac[0], [0.4, -0.4], atol=0.08)


def test_locate_reads_a_correlation_of_the_padded_or_the_unpadded_images(plain):
    centres, padded = _noisy(6, 14)
    idx, guess = np.arange(6), np.tile([16.0, 18.0], (6, 1))
    direct = plain.locate(padded, idx, guess, PAD, LIMIT, search=2)
    for cc in (plain.correlate(padded), plain.correlate(padded[:, PAD:-PAD, PAD:-PAD])):
        got = plain.locate(padded, idx, guess, PAD, LIMIT, search=2, cc=cc)
        np.testing.assert_allclose(got[0], direct[0], atol=1e-4)
        np.testing.assert_allclose(got[1], direct[1], rtol=1e-4)


def test_with_prior_builds_the_ridge_levels_of_a_free_locator():
    free = _diskfind.Locator(_template(), content_order=1, prior_levels=False)
    assert free.levels.tolist() == [0.0] and free.prior is None
    lev = free.with_prior(0.1, 2.0)
    assert len(lev.levels) == 6 and lev.prior == pytest.approx(0.0025)
    assert free.levels.tolist() == [0.0]  # the original is unchanged
    np.testing.assert_allclose(lev.pen[:, 4], lev.levels)


def test_locate_masked_clips_far_guesses_like_locate(plain):
    _, padded = _noisy(2, 15)
    idx, far = np.arange(2), np.array([[-50.0, 18.0], [16.0, 90.0]])
    pos = plain.locate(padded, idx, far, PAD, LIMIT, search=2)[0]
    mpos, _, _ = plain.locate_masked(padded, idx, far, PAD, LIMIT, np.zeros(SHAPE, bool), search=2)
    # the same coarse step and window: clipped into the padded margin, pad - half - search - 3 px wide
    np.testing.assert_allclose(mpos, pos, atol=1e-4)
    margin = PAD - plain.half - 2 - 3
    assert -margin - 3 <= mpos[0, 0] <= -margin + 3
    assert SHAPE[1] - 1 + margin - 3 <= mpos[1, 1] <= SHAPE[1] - 1 + margin + 3


def test_blank_patterns_give_finite_positions_and_no_error(plain):
    # an all-zero pattern (a dead or padded detector region): amplitude exactly 0, the offset is the table
    # entry (no 0/0), the masked fit reports no position error and the detection SNR is 0
    zeros = np.zeros((1, SHAPE[0] + 2 * PAD, SHAPE[1] + 2 * PAD), np.float32)
    guess = np.array([[16.0, 18.0]])
    pos, snr, _ = plain.locate(zeros, np.array([0]), guess, PAD, LIMIT, search=2)
    assert np.all(np.isfinite(pos)) and snr[0] == 0.0
    mpos, perr, coef = plain.locate_masked(zeros, np.array([0]), guess, PAD, LIMIT, np.zeros(SHAPE, bool), search=2)
    assert np.all(np.isfinite(mpos)) and np.isnan(perr[0]) and np.all(coef == 0.0)


def test_weighted_fit_has_no_preferred_direction_on_faint_disks(content):
    # faint disks (amplitude = background = 3 counts/px) push many fitted offsets to the sub-pixel table's limits;
    # the detector flipped in both axes must give the flipped positions (any one-sided limit or bias breaks it)
    rng = np.random.default_rng(21)
    n = 200
    centres = rng.uniform(-0.5, 0.5, size=(n, 2)) + [16.0, 18.0]
    imgs = np.stack([rng.poisson(_disk(SHAPE, c, amp=3.0, bg=3.0)) for c in centres])
    weighted = content.with_prior(0.05, RADIUS_PX, 0.5, misfit=(1.0, np.array([0.0])))
    idx, guess = np.arange(n), np.tile([16.0, 18.0], (n, 1))
    far = np.array(SHAPE) - 1.0
    pos = weighted.locate(_padded(imgs), idx, guess, PAD, LIMIT, search=2, weight_snr=0.0)[0]
    flipped = weighted.locate(_padded(imgs[:, ::-1, ::-1]), idx, far - guess, PAD, LIMIT, search=2, weight_snr=0.0)[0]
    # float32 sums differ in order between the two: 2e-5 px measured
    np.testing.assert_allclose(far - flipped, pos, atol=2e-4)
