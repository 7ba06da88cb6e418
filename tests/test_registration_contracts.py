"""Contract tests of chemomech.registration, by category of user-visible behaviour (issue 19).

Whole error messages (``re.fullmatch``), exact output names / attrs / dims, validation bounds at and just
beyond the boundary, documented options and defaults, and numerics against independent computations on
small inputs. Every image here is built by hand in this file (no twin, no shared code path).
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import xarray as xr
from scipy import linalg, ndimage

from chemomech import registration as reg
from chemomech.registration import Registration


def _raises(exc, func, *args, message, **kwargs):
    """Call func and check the exception type and its *whole* message (regex, fullmatch)."""
    with pytest.raises(exc) as info:
        func(*args, **kwargs)
    assert re.fullmatch(message, str(info.value)), str(info.value)


def _blob(shape=(48, 56), centre=(22.0, 25.0), axes=(13.0, 17.0)):
    """An asymmetric particle: an ellipse with a bump and a hole (no 180-degree ambiguity of the outline)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(float)
    inside = (((yy - centre[0]) / axes[0]) ** 2 + ((xx - centre[1]) / axes[1]) ** 2 < 1)
    inside |= (yy - centre[0] + 10) ** 2 + (xx - centre[1] - 11) ** 2 < 36
    inside &= (yy - centre[0] - 3) ** 2 + (xx - centre[1] + 5) ** 2 > 9
    tex = 1.0 + 0.3 * np.sin(xx / 3.0) * np.cos(yy / 4.0) + 0.02 * (xx - centre[1])
    return inside, ndimage.gaussian_filter(np.where(inside, tex, 0.0), 0.7)


MATRIX = np.array([[1.05, 0.08, 3.0], [-0.06, 0.97, 2.0], [0.0, 0.0, 1.0]])  # fixed -> moving (row, col)


@pytest.fixture(scope="module")
def pair():
    """Fixed image and an inverted, affinely resampled moving image with moving(M p) = fixed(p)."""
    _, fixed = _blob()
    inv = np.linalg.inv(MATRIX)
    qr, qc = np.mgrid[:52, :60].astype(float)
    pr, pc = inv[0, 0] * qr + inv[0, 1] * qc + inv[0, 2], inv[1, 0] * qr + inv[1, 1] * qc + inv[1, 2]
    moving = 5.0 - 2.0 * ndimage.map_coordinates(fixed, [pr, pc], order=3, mode="constant", cval=0.0)
    return fixed, moving


@pytest.fixture
def result(pair):
    # function scope on purpose: mutation testing (mutmut) runs, for a mutant of register's code, only the
    # tests that call it; a cached module-scoped result would be attributed to the first test alone
    return reg.register(*pair, n_angles=4, transform="similarity")


# ------------------------------------------------------------------------------------------- messages

def _da(values, y=None, x=None, dims=("y", "x")):
    coords = {}
    if y is not None:
        coords["y"] = y
    if x is not None:
        coords["x"] = x
    return xr.DataArray(values, dims=dims, coords=coords)


ZEROS = np.zeros((10, 12))
MESSAGES = [
    # _image (through particle_mask's "image")
    (ValueError, lambda: reg.particle_mask(np.zeros((3, 10, 10))),
     r"image must be 2-D, got 3-D with shape \(3, 10, 10\)"),
    (ValueError, lambda: reg.particle_mask(np.ones((7, 20))),
     r"image must be at least 8 x 8 pixels, got shape \(7, 20\)"),
    (ValueError, lambda: reg.particle_mask(np.full((9, 9), 2.5)),
     r"image is constant \(all finite values equal np\.float64\(2\.5\)\); nothing to register|"
     r"image is constant \(all finite values equal 2\.5\); nothing to register"),
    (ValueError, lambda: reg.particle_mask(np.full((9, 9), np.nan)),
     r"image contains no finite values \(all NaN or inf\)"),
    (TypeError, lambda: reg.particle_mask(np.zeros((9, 9), complex)),
     r"image must hold numbers \(dtype kind in 'biuf'\), got dtype complex128"),
    (ValueError, lambda: reg.particle_mask(_da(np.zeros((9, 10)), dims=("x", "y"))),
     r"image must have dims \('y', 'x'\), got \('x', 'y'\); use \.transpose\(\.\.\.\) or \.rename\(\.\.\.\) first"),
    (ValueError, lambda: reg.particle_mask(np.eye(9), sigma_px=-1.0), r"sigma_px must be >= 0 and finite, got -1\.0"),
    (ValueError, lambda: reg.particle_mask(np.eye(9), method="li"),
     r"method must be one of \('auto', 'otsu'\), got 'li'"),
    # _grid_of (through Registration.from_matrix's "fixed" / "moving")
    (ValueError, lambda: Registration.from_matrix(np.eye(3), _da(np.zeros((1, 4)), y=[0.0], x=np.arange(4.0)), ZEROS),
     r"fixed must have at least 2 pixels along 'y' to define a pixel size"),
    (ValueError, lambda: Registration.from_matrix(np.eye(3), ZEROS, _da(np.zeros((3, 4)), y=np.arange(3.0),
                                                                          x=[0.0, 1.0, 3.0, 4.0])),
     r"moving coordinate 'x' must be uniformly spaced, got steps 1\.0\.\.2\.0"),
    (ValueError, lambda: Registration.from_matrix(np.eye(3), ZEROS, _da(np.zeros((3, 4)), y=np.zeros(3),
                                                                          x=np.arange(4.0))),
     r"moving coordinate 'y' must be uniformly spaced, got steps 0\.0\.\.0\.0"),
    # from_matrix
    (ValueError, lambda: Registration.from_matrix(np.eye(2), ZEROS, ZEROS),
     r"matrix must have shape \(3, 3\), got \(2, 2\)"),
    (ValueError, lambda: Registration.from_matrix(np.diag([1.0, np.nan, 1.0]), ZEROS, ZEROS),
     r"matrix must contain only finite values; found NaN or inf"),
    (ValueError, lambda: Registration.from_matrix(np.diag([1.0, 0.0, 1.0]), ZEROS, ZEROS),
     r"matrix must be an invertible homogeneous affine with last row \(0, 0, 1\)"),
    (ValueError, lambda: Registration.from_matrix([[1, 0, 0], [0, 1, 0], [0.5, 0, 1]], ZEROS, ZEROS),
     r"matrix must be an invertible homogeneous affine with last row \(0, 0, 1\)"),
    # map_points / map_indices / warp
    (ValueError, lambda: Registration.from_matrix(np.eye(3), ZEROS, ZEROS).map_points([[1.0, 2.0, 3.0]]),
     r"points must have shape \('any', 2\), got \(1, 3\)"),
    (ValueError, lambda: Registration.from_matrix(np.eye(3), ZEROS, ZEROS).map_indices([[1.0, 2.0, 3.0]]),
     r"points must have shape \('any', 2\), got \(1, 3\)"),
    (ValueError, lambda: Registration.from_matrix(np.eye(3), ZEROS, ZEROS).map_indices([[1.0, np.inf]]),
     r"points must contain only finite values; found NaN or inf"),
    (ValueError, lambda: Registration.from_matrix(np.eye(3), ZEROS, ZEROS).warp(np.zeros((10, 13))),
     r"image must have the moving image's shape \(10, 12\), got \(10, 13\)"),
    (TypeError, lambda: Registration.from_matrix(np.eye(3), ZEROS, ZEROS).warp(np.zeros((10, 12), complex)),
     r"image must hold numbers \(dtype kind in 'biuf'\), got dtype complex128"),
    (ValueError, lambda: Registration.from_matrix(np.eye(3), ZEROS, ZEROS).warp(_da(ZEROS, dims=("x", "y"))),
     r"image must have dims \('y', 'x'\), got \('x', 'y'\); use \.transpose\(\.\.\.\) or \.rename\(\.\.\.\) first"),
    (ValueError, lambda: Registration.from_matrix(np.eye(3), ZEROS, _da(ZEROS, y=np.arange(10.0), x=np.arange(12.0)))
     .warp(_da(ZEROS, y=np.arange(10.0), x=np.arange(12.0) + 0.5)),
     r"image must be on the moving image's grid \(same shape and y/x coordinates\), got shape \(10, 12\)"),
    # registration_image
    (ValueError, lambda: reg.registration_image(np.arange(16.0).reshape(4, 4), np.ones((4, 4), bool)),
     r"image must be at least 8 x 8 pixels, got shape \(4, 4\)"),
    (ValueError, lambda: reg.registration_image(np.eye(10), np.ones((10, 9), bool)),
     r"mask must have shape \(10, 10\), got \(10, 9\)"),
    (TypeError, lambda: reg.registration_image(np.eye(10), np.ones((10, 10))),
     r"mask must be a boolean mask, got dtype float64"),
    (ValueError, lambda: reg.registration_image(np.where(np.eye(10) > 0, np.nan, np.arange(100.0).reshape(10, 10)),
                                                np.eye(10, dtype=bool)),
     r"image has no finite values inside mask; pass the map's own mask"),
    # dice and mutual_information
    (ValueError, lambda: reg.dice(np.ones(2, bool), np.ones(3, bool)),
     r"masks must have the same shape, got \(2,\) and \(3,\)"),
    (ValueError, lambda: reg.dice(np.zeros(3, bool), np.zeros(3, bool)), r"both masks are empty; Dice is undefined"),
    (ValueError, lambda: reg.mutual_information(np.ones((2, 2)), np.ones((2, 3))),
     r"images must have the same shape, got \(2, 2\) and \(2, 3\)"),
    (ValueError, lambda: reg.mutual_information([1.0, np.nan, 3.0], [1.0, 2.0, np.nan]),
     r"fewer than 2 pixels are finite in both images \(and in mask\)"),
    (ValueError, lambda: reg.mutual_information([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], mask=[True, False, False]),
     r"fewer than 2 pixels are finite in both images \(and in mask\)"),
]


@pytest.mark.parametrize("exc, call, message", MESSAGES, ids=[m[2][:40] for m in MESSAGES])
def test_error_messages_name_the_argument_and_what_was_expected(exc, call, message):
    _raises(exc, call, message=message)


def test_particle_mask_messages_of_a_flat_field():
    img = np.random.default_rng(0).normal(10.0, 0.1, (40, 40))
    _raises(ValueError, reg.particle_mask, img,
            message=r"image: no particle found \(no threshold gives a particle covering 2-85 % of the image, "
                    r"clear of the border\); pass a mask \(fixed_mask=/moving_mask=\) or a larger field of view")
    _raises(ValueError, reg._mask_options, img, None, "moving",
            message=r"moving: no particle found automatically \(no threshold gives a solid particle covering "
                    r"2-85 % of the image, clear of the border\); pass moving_mask=")


def test_metric_profile_messages(pair, result):
    fixed, moving = pair
    _raises(ValueError, reg.metric_profile, fixed, moving, result, shifts_px=[0.0], axis="z",
            message=r"axis must be one of \('y', 'x'\), got 'z'")
    _raises(ValueError, reg.metric_profile, fixed, moving, result, shifts_px=[[0.0]],
            message=r"shifts_px must be 1-D, got 2-D with shape \(1, 1\)")
    _raises(ValueError, reg.metric_profile, fixed, moving, result, shifts_px=[np.nan],
            message=r"shifts_px must contain only finite values; found NaN or inf")
    _raises(ValueError, reg.metric_profile, fixed[:5], moving, result, shifts_px=[0.0],
            message=r"fixed must be at least 8 x 8 pixels, got shape \(5, 56\)")


# ------------------------------------------------------------------------------------------- bounds

def test_image_size_bound_is_8_pixels_on_each_axis():
    ok = np.zeros((8, 8))
    ok[2:6, 2:6] = 1.0
    assert reg.registration_image(ok, ok > 0)[1].sum() == 16  # 8 x 8 accepted
    for shape in ((7, 8), (8, 7)):
        with pytest.raises(ValueError, match=r"at least 8 x 8"):
            reg.registration_image(ok[: shape[0], : shape[1]], ok[: shape[0], : shape[1]] > 0)


def test_two_coordinates_define_a_pixel_size():
    da = _da(np.zeros((2, 2)), y=[10.0, 14.0], x=[0.0, 3.0])
    r = Registration.from_matrix(np.eye(3), da, da)
    assert r.fixed_grid.spacing == (4.0, 3.0) and r.fixed_grid.origin == (10.0, 0.0) and r.fixed_grid.physical
    np.testing.assert_allclose(r.map_points([[14.0, 3.0]]), [[14.0, 3.0]])
    # steps equal within a relative 1e-6 count as uniform (float coordinates), 1e-3 does not
    Registration.from_matrix(np.eye(3), _da(np.zeros((2, 3)), y=[0.0, 1.0], x=[0.0, 1.0, 2.0 + 1e-8]), da)
    with pytest.raises(ValueError, match="uniformly spaced"):
        Registration.from_matrix(np.eye(3), _da(np.zeros((2, 3)), y=[0.0, 1.0], x=[0.0, 1.0, 2.001]), da)


def test_mask_options_need_10_pixels_of_a_given_mask():
    arr = np.zeros((20, 20))
    m = np.zeros((20, 20), bool)
    m.flat[:10] = True
    [(how, got)] = reg._mask_options(arr, m, "fixed")
    assert how == "given" and got is not None and got.sum() == 10
    m.flat[9] = False
    _raises(ValueError, reg._mask_options, arr, m, "fixed", message=r"fixed_mask selects 9 pixels; at least 10 needed")


def test_mask_score_accepts_2_to_85_percent_of_the_field_inclusive():
    # a solid rectangle clear of the border: score = log(area fraction) (solidity 1, no border pixels)
    def rect(n):  # n pixels as full rows of a 50-wide block, inside a 50 x 50 field... border excluded below
        m = np.zeros((50, 50), bool)
        m.flat[:n] = True
        return m

    m = np.zeros((50, 50), bool)
    m[10:15, 10:20] = True  # 50 px = 2 % exactly
    assert reg._mask_score(m) == pytest.approx(np.log(0.02), abs=1e-12)
    m[10, 10] = False  # 49 px: below 2 %
    assert reg._mask_score(m) == -np.inf
    big = rect(2125)  # 85 % exactly: touches the border, 42.5 rows
    assert np.isfinite(reg._mask_score(big))
    assert reg._mask_score(rect(2126)) == -np.inf


def test_mask_score_is_log_area_plus_4_log_solidity_minus_10_border():
    m = np.zeros((40, 40), bool)
    m[5:25, 5:25] = True
    m[15:25, 15:25] = False  # an L of 300 px
    from skimage.morphology import convex_hull_image

    hull = convex_hull_image(m).sum()  # solidity: area over the convex hull's (pixel) area
    assert reg._mask_score(m) == pytest.approx(np.log(300 / 1600) + 4 * np.log(300 / hull), abs=1e-9)
    # touching the border: 10 x border-pixel fraction (of the 1-px frame) is subtracted
    t = np.zeros((40, 40), bool)
    t[0:10, 10:30] = True  # 20 of the 156 frame pixels
    assert reg._mask_score(t) == pytest.approx(np.log(200 / 1600) - 10 * 20 / 156, abs=1e-9)


def test_sturges_bins_table():
    for n, want in ((0, 8), (2, 8), (128, 8), (129, 9), (256, 9), (257, 10), (5000, 14), (10**6, 21)):
        assert reg._sturges_bins(n) == want, n


# ------------------------------------------------------------------------------------------- metadata

def test_register_metrics_and_candidates_metadata(pair, result):
    fixed, moving = pair
    r = result
    assert set(r.metrics) == {"mutual_information", "mattes_mi", "mi_margin", "dice", "bins", "iterations",
                              "stop_condition", "mirrored", "rotation_deg"}
    assert type(r.metrics["bins"]) is int and type(r.metrics["iterations"]) is int
    assert isinstance(r.metrics["stop_condition"], str) and r.metrics["stop_condition"]
    assert r.metrics["mirrored"] is False and r.metrics["rotation_deg"] == r.frame_angle_deg()
    # the metric region: the fixed particle dilated by a margin; Sturges' rule on its pixel count
    region = ndimage.binary_dilation(r.fixed_mask, iterations=8)
    assert r.metrics["bins"] == reg._sturges_bins(int(region.sum()))
    # Dice of the masks through the result, and MI of the final overlap (dilated fixed mask)
    assert r.metrics["dice"] == pytest.approx(reg.dice(r.fixed_mask, r.warp(r.moving_mask)), abs=1e-12)
    assert r.metrics["dice"] > 0.95
    # (isolated outliers -- here the sharpest texture pixels of the noise-free images -- are left out)
    roi = ndimage.binary_dilation(r.fixed_mask, iterations=4)
    f, m = reg._despeckle(fixed), reg._despeckle(moving)
    assert r.metrics["mutual_information"] == pytest.approx(
        reg.mutual_information(f, r.warp(m), mask=roi, bins=r.metrics["bins"]), rel=1e-9)
    assert r.score == r.metrics["mutual_information"]
    assert np.isfinite(r.metrics["mattes_mi"]) and r.metrics["mattes_mi"] > 0
    assert r.metrics["mi_margin"] > 0  # the outline is asymmetric: every rival scores lower
    c = r.candidates
    assert list(c.data_vars) == ["family", "angle_rad", "mirror", "mattes_mi"]
    assert dict(c.sizes) == {"candidate": 16}  # 2 families x 2 mirrors x 4 angles
    assert {k: dict(v.attrs) for k, v in c.data_vars.items()} == {
        "family": {"long_name": "initial-guess family (moments or similarity)"},
        "angle_rad": {"units": "rad", "long_name": "search angle"},
        "mirror": {"units": "1", "long_name": "mirrored"},
        "mattes_mi": {"units": "nats", "long_name": "Mattes MI of the initial guess"}}
    assert c.family.values.tolist() == ["moments"] * 8 + ["similarity"] * 8
    assert c.mirror.values.tolist() == ([False] * 4 + [True] * 4) * 2
    np.testing.assert_allclose(c.angle_rad.values, np.tile(np.arange(4) * np.pi / 2, 4), atol=1e-15)
    assert np.isfinite(c.mattes_mi.values).all()
    assert type(c.attrs["chosen"]) is int and 0 <= c.attrs["chosen"] < 16
    np.testing.assert_array_equal(r.fixed_mask, reg.particle_mask(fixed) | r.fixed_mask)


def test_register_maps_points_to_the_truth(pair, result):
    pts = np.argwhere(result.fixed_mask).astype(float)
    err = np.hypot(*(result.map_points(pts) - (pts @ MATRIX[:2, :2].T + MATRIX[:2, 2])).T)
    assert err.mean() < 0.6 and err.max() < 1.5  # fixed px (noise-free, pixel-sampled outline of ~50 px)


@pytest.mark.filterwarnings("ignore:register. the optimiser hit the iteration cap")
def test_register_options_mirror_false_and_n_angles(pair):
    r = reg.register(*pair, n_angles=2, mirror=False, n_refine=2, transform="similarity", iterations=60)
    assert r.candidates.sizes["candidate"] == 4
    assert r.candidates.mirror.values.tolist() == [False] * 4
    np.testing.assert_allclose(r.candidates.angle_rad.values, [0.0, np.pi, 0.0, np.pi])


def test_register_with_sampled_metric_is_seeded_and_accurate(pair):
    # sampling < 1: a random half of the masked fixed pixels per metric evaluation, drawn with `seed`
    a, b, c = (reg.register(*pair, n_angles=4, transform="similarity", sampling=0.5, seed=s) for s in (3, 3, 4))
    np.testing.assert_array_equal(a.matrix, b.matrix)  # same seed: the same samples, the same result
    assert not np.array_equal(a.matrix, c.matrix)  # another seed draws other samples
    pts = np.argwhere(a.fixed_mask).astype(float)
    for r in (a, c):  # as accurate as the full metric (mean 0.6 px, max 1.5 px; measured 0.23/0.57 and 0.17/0.37)
        err = np.hypot(*(r.map_points(pts) - (pts @ MATRIX[:2, :2].T + MATRIX[:2, 2])).T)
        assert err.mean() < 0.6 and err.max() < 1.5


def test_metric_profile_metadata_and_values(pair, result):
    fixed, moving = pair
    prof = reg.metric_profile(fixed, moving, result, shifts_px=[-1.0, 0.0, 2.0])
    assert list(prof.data_vars) == ["correlation", "mutual_information"]
    assert prof.correlation.dims == ("shift",) and prof.mutual_information.dims == ("shift",)
    assert dict(prof.correlation.attrs) == {"units": "1", "long_name": "Pearson correlation"}
    assert dict(prof.mutual_information.attrs) == {"units": "nats", "long_name": "mutual information"}
    assert dict(prof["shift"].attrs) == {"units": "px", "long_name": "shift along x"}
    assert prof["shift"].values.tolist() == [-1.0, 0.0, 2.0]
    # independent: scipy's shift of the warp, Pearson and MI (default 32 bins) inside the dilated mask
    roi = ndimage.binary_dilation(result.fixed_mask, iterations=4)
    warped = result.warp(moving)
    for s, c, mi in zip((-1.0, 0.0, 2.0), prof.correlation.values, prof.mutual_information.values):
        w = ndimage.shift(warped, (0.0, s), order=1, mode="constant", cval=np.nan)
        ok = roi & np.isfinite(w)
        assert c == pytest.approx(np.corrcoef(fixed[ok], w[ok])[0, 1], abs=1e-12)
        assert mi == pytest.approx(reg.mutual_information(fixed, w, mask=roi, bins=32), abs=1e-12)
    # the contrast is inverted: the correlation is strongly negative at the registered position
    assert prof.correlation.sel(shift=0.0) < -0.9
    ydir = reg.metric_profile(fixed, moving, result, shifts_px=[1.0], axis="y", bins=8)
    assert dict(ydir["shift"].attrs) == {"units": "px", "long_name": "shift along y"}
    w = ndimage.shift(warped, (1.0, 0.0), order=1, mode="constant", cval=np.nan)
    assert ydir.mutual_information.item() == pytest.approx(reg.mutual_information(fixed, w, mask=roi, bins=8))
    # without a mask on the registration, the fixed image's particle mask is used
    bare = Registration.from_matrix(result.matrix, fixed, moving)
    again = reg.metric_profile(fixed, xr.DataArray(moving, dims=("y", "x")), bare, shifts_px=[0.0])
    fm = reg.particle_mask(fixed)
    ok = ndimage.binary_dilation(fm, iterations=4) & np.isfinite(warped)
    assert again.correlation.item() == pytest.approx(np.corrcoef(fixed[ok], warped[ok])[0, 1], abs=1e-12)


def test_registration_image_outputs():
    img = np.full((12, 14), np.nan)
    img[2:10, 3:11] = np.linspace(0.0, 1.0, 8)[None, :] + np.linspace(0.0, 0.5, 8)[:, None]
    img[5, 6] = np.nan  # a gap inside
    m = np.zeros((12, 14), bool)
    m[2:10, 3:11] = True
    m[5, 5] = False  # a hole in the mask: filled
    m[0, 13] = True  # a stray pixel: dropped
    before = img.copy()
    out, mm = reg.registration_image(img, m)
    np.testing.assert_array_equal(img, before, strict=True)  # input untouched
    assert type(out) is np.ndarray and mm.dtype == bool
    want = np.zeros((12, 14), bool)
    want[2:10, 3:11] = True
    np.testing.assert_array_equal(mm, want)
    inside = img[want & np.isfinite(img)]
    lo, hi = np.percentile(inside, [1, 99])
    assert out[5, 6] == np.median(inside)  # the gap gets the particle's median
    np.testing.assert_array_equal(out[~want], lo - 0.5 * (hi - lo))  # one constant below the 1-99 % range
    np.testing.assert_array_equal(out[want & np.isfinite(img)], img[want & np.isfinite(img)])
    # DataArray: same coordinates, units and long_name defaults
    da = xr.DataArray(img, dims=("y", "x"), coords={"y": np.arange(12) * 2.0, "x": np.arange(14) * 3.0}, name="X")
    dout, _ = reg.registration_image(da, m)
    assert dict(dout.attrs) == {"units": "1", "long_name": ""} and dout.name == "X"
    np.testing.assert_array_equal(dout.x.values, da.x.values)
    np.testing.assert_array_equal(dout.values, out)
    dout, _ = reg.registration_image(da.assign_attrs(units="nm", long_name="thickness"), m)
    assert dict(dout.attrs) == {"units": "nm", "long_name": "thickness"}


def test_warp_of_a_dataarray_keeps_name_and_attrs_and_fixed_coords():
    fixed = _da(np.zeros((9, 10)), y=np.arange(9) * 2.0 + 1.0, x=np.arange(10) * 2.0)
    moving = xr.DataArray(np.arange(120.0).reshape(10, 12), dims=("y", "x"), name="vbf",
                          attrs={"units": "counts", "long_name": "virtual bright field"})
    r = Registration.from_matrix(np.eye(3), fixed, moving)
    out = r.warp(moving)
    assert out.name == "vbf" and dict(out.attrs) == {"units": "counts", "long_name": "virtual bright field"}
    assert set(out.coords) == {"y", "x"}
    np.testing.assert_array_equal(out.y.values, fixed.y.values)
    np.testing.assert_array_equal(out.values, moving.values[:9, :10])
    plain = Registration.from_matrix(np.eye(3), np.zeros((9, 10)), moving).warp(moving)
    assert plain.dims == ("y", "x") and set(plain.coords) == set()


def test_warp_is_strict_at_the_moving_edge():
    # positions within 1e-9 px of the last row/column are inside, beyond are NaN (no edge clamping)
    mov = np.arange(20.0).reshape(4, 5)
    r = Registration.from_matrix([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]], np.zeros((4, 5)), mov)
    w = r.warp(mov)
    assert np.isnan(w[3]).all() and np.isnan(w[:, 4]).all()  # rows 3.5 / cols 4.5: outside
    np.testing.assert_allclose(w[:3, :4], (mov[:3, :4] + mov[1:, :4] + mov[:3, 1:] + mov[1:, 1:]) / 4)
    r = Registration.from_matrix([[1, 0, -0.5], [0, 1, 0], [0, 0, 1]], np.zeros((4, 5)), mov)
    assert np.isnan(r.warp(mov)[0]).all() and np.isfinite(r.warp(mov)[1:]).all()
    r = Registration.from_matrix([[1, 0, 0], [0, 1, -0.5], [0, 0, 1]], np.zeros((4, 5)), mov)
    assert np.isnan(r.warp(mov)[:, 0]).all() and np.isfinite(r.warp(mov)[:, 1:]).all()
    # boolean images: interpolated value >= 0.5 is True
    b = np.zeros((4, 5), bool)
    b[:, 2:] = True
    r = Registration.from_matrix([[1, 0, 0], [0, 1, 0.5], [0, 0, 1]], np.zeros((4, 5)), b)
    assert r.warp(b)[0].tolist() == [False, True, True, True, False]


# ------------------------------------------------------------------------------------------- frames

def _rot(a):
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])  # (row, col): turns x towards y by a


def test_frame_rotation_and_angle_with_non_square_pixels():
    f = _da(np.zeros((8, 8)), y=np.arange(8) * 2.0, x=np.arange(8) * 1.0)  # 2 x 1 pixels
    m = _da(np.zeros((8, 8)), y=np.arange(8) * 1.0, x=np.arange(8) * 1.0)
    a = np.deg2rad(25.0)
    phys = _rot(a)
    # index matrix such that the physical map is the pure rotation: M = S_m^-1 R S_f
    idx = np.linalg.inv(np.diag([1.0, 1.0, 1.0])) @ phys @ np.diag([2.0, 1.0, 1.0])
    r = Registration.from_matrix(idx, f, m)
    np.testing.assert_allclose(r.physical_matrix, phys, atol=1e-12)
    np.testing.assert_allclose(r.frame_rotation(), phys[:2, :2], atol=1e-12)
    angle = r.frame_angle_deg()
    assert abs(angle) == pytest.approx(25.0)
    # the opposite rotation has the opposite angle; a flip of the moving rows keeps the angle
    assert Registration.from_matrix(np.linalg.inv(np.diag([1, 1, 1.0])) @ _rot(-a) @ np.diag([2.0, 1, 1]), f, m
                                    ).frame_angle_deg() == pytest.approx(-angle)
    flip = np.diag([-1.0, 1.0, 1.0]) @ phys @ np.diag([2.0, 1.0, 1.0])
    rf = Registration.from_matrix(flip, f, m)
    assert np.linalg.det(rf.frame_rotation()) == pytest.approx(-1.0)
    assert rf.frame_angle_deg() == pytest.approx(angle)
    # a pure scale has no rotation
    assert Registration.from_matrix(np.diag([3.0, 0.5, 1.0]), f, m).frame_angle_deg() == pytest.approx(0.0, abs=1e-12)


def test_grid_maps_and_matches():
    g = reg._grid_of(_da(np.zeros((3, 4)), y=[5.0, 7.0, 9.0], x=[-1.0, 2.0, 5.0, 8.0]), "fixed")
    np.testing.assert_allclose(g.to_physical(), [[2.0, 0, 5.0], [0, 3.0, -1.0], [0, 0, 1]])
    np.testing.assert_allclose(g.to_index() @ g.to_physical(), np.eye(3), atol=1e-15)
    assert g.matches(_da(np.ones((3, 4)), y=[5.0, 7.0, 9.0], x=[-1.0, 2.0, 5.0, 8.0]))
    assert not g.matches(_da(np.ones((3, 4)), y=[5.0, 7.0, 9.0], x=[-1.0, 2.0, 5.0, 8.1]))
    assert not g.matches(_da(np.ones((3, 4)), y=[5.0, 7.0, 9.0]))  # no x coordinate
    assert not g.matches(_da(np.ones((3, 5)), y=[5.0, 7.0, 9.0], x=np.arange(5.0)))
    plain = reg._grid_of(np.zeros((3, 4)), "fixed")
    assert plain == reg._Grid((3, 4)) and not plain.physical
    assert plain.matches(_da(np.ones((3, 4)), y=[0.0, 9.0, 99.0], x=np.arange(4.0)))
    assert not plain.matches(_da(np.ones((4, 3))))
    assert reg._grid_of(_da(np.zeros((3, 4)), y=[5.0, 7.0, 9.0]), "fixed") == reg._Grid((3, 4))  # y only: pixels
    assert Registration.from_matrix(np.eye(3), ZEROS, ZEROS).score != Registration.from_matrix(
        np.eye(3), ZEROS, ZEROS).score  # no metrics: NaN


def test_sitk_affine_round_trip_and_point_convention():
    h = np.array([[1.1, 0.2, 3.0], [-0.3, 0.9, -4.0], [0.0, 0.0, 1.0]])
    centre = np.array([7.0, 11.0])
    tx = reg._sitk_affine(h, centre)
    np.testing.assert_allclose(tx.GetCenter(), centre[::-1])
    for p in ((0.0, 0.0), (5.0, -2.0), (12.5, 30.0)):
        q = h[:2, :2] @ p + h[:2, 2]
        np.testing.assert_allclose(tx.TransformPoint(p[::-1]), q[::-1], atol=1e-12)  # SimpleITK is (x, y)
    np.testing.assert_allclose(reg._homogeneous_rc(tx), h, atol=1e-12)
    img = reg._to_sitk(np.arange(6.0).reshape(2, 3))
    assert img.GetSize() == (3, 2)


def test_rotation_helper_and_moments():
    a = 0.3
    np.testing.assert_allclose(reg._rot_rc(a, False), _rot(a)[:2, :2])
    np.testing.assert_allclose(reg._rot_rc(a, True), _rot(a)[:2, :2] @ np.diag([-1.0, 1.0]))
    m = np.zeros((30, 40), bool)
    m[3:9, 5:30] = True
    m[9:20, 5:8] = True
    c, s = reg._moments(m)
    pts = np.argwhere(m).astype(float)
    np.testing.assert_allclose(c, pts.mean(0))
    np.testing.assert_allclose(s, linalg.sqrtm(np.cov(pts.T)).real, atol=1e-10)


# ------------------------------------------------------------------------------------------- numerics

def test_dice_and_mutual_information_by_hand():
    assert reg.dice([1, 1, 0, 0], [1, 0, 1, 0]) == 0.5  # integer input counts as bool
    assert reg.dice(np.ones(4, bool), np.ones(4, bool)) == 1.0
    a = np.array([0.0, 0.0, 1.0, 1.0] * 5)
    b = np.array([0.0, 1.0, 0.0, 1.0] * 5)
    assert reg.mutual_information(a, a, bins=2) == pytest.approx(np.log(2.0), abs=1e-15)
    assert reg.mutual_information(a, 3.0 - a, bins=2) == pytest.approx(np.log(2.0), abs=1e-15)
    assert reg.mutual_information(a, b, bins=2) == pytest.approx(0.0, abs=1e-15)
    # a 3-level joint histogram: p = [[2, 1], [0, 1]] / 4
    x = np.array([0.0, 0.0, 0.0, 1.0])
    y = np.array([0.0, 0.0, 1.0, 1.0])
    p = np.array([[0.5, 0.25], [0.0, 0.25]])
    pa, pb = p.sum(1), p.sum(0)
    want = sum(p[i, j] * np.log(p[i, j] / (pa[i] * pb[j])) for i in range(2) for j in range(2) if p[i, j] > 0)
    assert reg.mutual_information(x, y, bins=2) == pytest.approx(want, abs=1e-15)
    # mask and non-finite pixels are left out
    xa, ya = np.append(x, [1.0, np.nan]), np.append(y, [0.0, 5.0])
    assert reg.mutual_information(xa, ya, mask=[True] * 4 + [False, True], bins=2) == pytest.approx(want, abs=1e-15)
    # the default is 32 bins
    rng = np.random.default_rng(5)
    u = rng.random(400)
    v = u + 0.3 * rng.random(400)
    assert reg.mutual_information(u, v) == reg.mutual_information(u, v, bins=32) != reg.mutual_information(u, v, bins=8)
    assert np.isnan(reg._overlap_mi(np.array([1.0, np.nan]), np.array([1.0, 2.0]), np.ones(2, bool), 4))
    assert reg._overlap_mi(a, a, np.ones(a.shape, bool), 2) == pytest.approx(np.log(2.0))


@pytest.mark.filterwarnings("ignore:All-NaN slice:RuntimeWarning")
def test_border_filled_and_nearest_fill():
    a = np.arange(36.0).reshape(6, 6)
    frame2 = np.pad(np.zeros((2, 2), bool), 2, constant_values=True)
    assert sorted(reg._border(a).tolist()) == sorted(a[frame2].tolist())
    frame1 = np.concatenate([a[0], a[-1], a[1:-1, 0], a[1:-1, -1]])
    assert sorted(reg._border(a, 1).tolist()) == sorted(frame1.tolist())
    b = np.full((5, 6), 3.0)
    b[0, :] = [1.0, 2.0, 9.0, 9.0, 9.0, 9.0]
    b[2, 2] = np.nan
    f = reg._filled(b)
    border = np.concatenate([b[0], b[-1], b[:, 0], b[:, -1]])
    assert f[2, 2] == np.median(border) and np.isfinite(f).all()
    # the outermost ring only: rows 0 (0) and 3 (10) and the ends of rows 1 (20) and 2 (5) give 7.5; the
    # next ring in (row 1) would give 10
    w = np.array([[0.0] * 8, [20.0] * 8, [5.0] * 8, [10.0] * 8])
    w[2, 4] = np.nan
    assert reg._filled(w)[2, 4] == 7.5
    assert reg._filled(np.ones((3, 3))) is not None
    allnan = np.full((5, 5), np.nan)
    allnan[2, 2], allnan[2, 1] = 4.0, 6.0
    np.testing.assert_array_equal(reg._filled(allnan)[np.isnan(allnan)], 5.0)  # border all NaN: the image's median
    assert reg._filled(allnan)[2, 1] == 6.0
    c = np.array([[1.0, np.nan, np.nan, 7.0]])
    np.testing.assert_array_equal(reg._fill_nearest(c), [[1.0, 1.0, 7.0, 7.0]])


def test_despeckle_removes_isolated_outliers_only():
    rng = np.random.default_rng(2)
    img = np.add.outer(np.linspace(0, 1, 20), np.linspace(0, 2, 24)) + 0.1 * rng.normal(size=(20, 24))
    img[7, 9] += 5.0  # a hot pixel (50 noise sigmas)
    img[3, 15] += 0.3  # 3 noise sigmas: an ordinary pixel
    img[12, 3] = np.nan
    out = reg._despeckle(img)
    bad = ~np.isfinite(out)
    assert bad[7, 9] and bad[12, 3] and bad.sum() == 2
    assert np.isfinite(img[7, 9])  # the input is not modified
    flat = np.ones((10, 10))
    flat[4, 4] = 3.0  # no spread of the residuals: nothing to compare with, nothing removed
    np.testing.assert_array_equal(reg._despeckle(flat), flat)


def test_normalise_maps_the_1_and_99_percentiles_to_0_and_1():
    rng = np.random.default_rng(3)
    img = rng.gamma(2.0, 3.0, (30, 30))
    out = reg._normalise(img, np.ones(img.shape, bool), 0.0)
    np.testing.assert_allclose(np.percentile(out, [1, 99]), [0.0, 1.0], atol=1e-12)
    lo, hi = np.percentile(img, [1, 99])
    np.testing.assert_allclose(out, (img - lo) / (hi - lo))
    sm = reg._normalise(img, np.ones(img.shape, bool), 1.5)
    g = ndimage.gaussian_filter(img, 1.5, mode="nearest")
    lo, hi = np.percentile(g, [1, 99])
    np.testing.assert_allclose(sm, (g - lo) / (hi - lo))
    np.testing.assert_array_equal(reg._normalise(np.full((4, 4), 2.0), np.ones((4, 4), bool), 0.0), 0.0)


def test_content_maps_background_to_0_and_particle_level_to_1():
    img = np.full((60, 60), 2.0)
    img[10:50, 10:50] = 5.0
    img[25:30, 25:30] = 9.0  # a diffraction blob: saturates at 1
    img[0:3, 0:3] = -40.0  # far below background: clipped at -0.2
    mask = np.zeros((60, 60), bool)
    mask[13:47, 13:47] = True
    out = reg._content(img, mask, 0.0, 10.0)
    assert out[5, 40] == 0.0 and out[30, 40] == 1.0 and out[27, 27] == 1.0 and out[1, 1] == pytest.approx(-0.2)
    assert out[11, 40] == 1.0  # particle outside the mask: still the particle level
    # a dark particle on a bright background maps the same way (side -1)
    dark = reg._content(10.0 - img, mask, 0.0, 10.0)
    assert dark[5, 40] == 0.0 and dark[30, 40] == 1.0 and dark[27, 27] == 1.0
    # the level is a low percentile of the particle: a ramp inside the mask
    ramp = np.full((60, 60), 0.0)
    ramp[10:50, 10:50] = np.linspace(1.0, 3.0, 40)[None, :]
    lev = reg._content(ramp, mask, 0.0, 50.0)
    inside = ndimage.gaussian_filter(ramp, 1.0, mode="nearest")[mask]
    level = np.percentile(inside, 50.0)
    np.testing.assert_allclose(lev[20, 12:48], np.clip(ramp[20, 12:48] / level, -0.2, 1.0))
    # smoothing after clipping
    sm = reg._content(img, mask, 2.0, 10.0)
    np.testing.assert_allclose(sm, ndimage.gaussian_filter(out, 2.0, mode="nearest"))
    # a mask covering everything: background = image minimum
    full = reg._content(img, np.ones(img.shape, bool), 0.0, 10.0)
    assert full[1, 1] == 0.0


def test_mask_pairs_try_the_best_three_of_each_side_in_rank_order():
    f = [(f"f{i}", np.ones((4, 4), bool)) for i in range(4)]
    m = [(f"m{i}", np.ones((4, 4), bool)) for i in range(4)]
    order = [(a[0], b[0]) for a, b in reg._mask_pairs(f, m, reg._Grid((4, 4)), reg._Grid((4, 4)))]
    assert order == [("f0", "m0"), ("f0", "m1"), ("f1", "m0"), ("f0", "m2"), ("f1", "m1"), ("f2", "m0"),
                     ("f1", "m2"), ("f2", "m1"), ("f2", "m2")]
    # area ratios at the plausible limits 0.4 and 2.5 (inclusive) keep their rank; beyond, they go last
    def sq(n):
        a = np.zeros((10, 10), bool)
        a.flat[:n] = True
        return a
    g = reg._Grid((10, 10), physical=True)
    for nf, nm, last in ((40, 100, False), (39, 100, True), (100, 40, False), (100, 39, True)):
        order = [(a[0], b[0]) for a, b in reg._mask_pairs([("x", sq(nf)), ("ok", sq(nm))], [("m", sq(nm))], g, g)]
        assert (order[0] == ("ok", "m")) is last, (nf, nm)


def test_particle_mask_options():
    inside, img = _blob()
    auto = reg.particle_mask(img)
    # holes filled; the quarter-level outline of a blurred edge lies ~0.7 px outside the half-level one
    assert not (inside & ~auto).any() and reg.dice(auto, ndimage.binary_fill_holes(inside)) > 0.9
    assert np.array_equal(auto, reg.particle_mask(img, sigma_px=1.0))
    # otsu: the two-class rule, holes filled, largest piece; the class covering the border is background
    two = np.zeros((40, 50))
    two[5:30, 5:30] = 1.0
    two[10:14, 10:14] = 0.0  # a hole
    two[33:36, 40:44] = 1.0  # a smaller second piece
    o = reg.particle_mask(two, method="otsu", sigma_px=0)
    want = np.zeros((40, 50), bool)
    want[5:30, 5:30] = True
    np.testing.assert_array_equal(o, want)
    np.testing.assert_array_equal(reg.particle_mask(3.0 - two, method="otsu", sigma_px=0), want)
    # the default smoothing (1 px) removes a 1-px line that no smoothing keeps
    two[15, 30:38] = 1.0
    assert reg.particle_mask(two, method="otsu", sigma_px=0)[15, 30:38].all()
    smooth = reg.particle_mask(two, method="otsu")
    assert not smooth[15, 32:38].any() and reg.dice(smooth, want) > 0.95


def test_mask_candidates_labels_and_order():
    inside, img = _blob()
    rng = np.random.default_rng(7)
    noisy = img + 0.01 * rng.normal(size=img.shape)
    cands = reg._mask_candidates(noisy, 1.0)
    scores = [c[0] for c in cands]
    assert scores == sorted(scores, reverse=True)
    labels = [c[2] for c in cands]
    assert "otsu, bright particle" in labels and "otsu3-low, bright particle" in labels
    assert not any("dark" in lab for lab in labels if "otsu" == lab.split(",")[0])
    assert all(re.fullmatch(r"(otsu|otsu3-low|otsu3-high), (bright|dark) particle|"
                            r"(0\.5|0\.25) of the way to the particle, pass [123] \(.*\)", lab) for lab in labels)
    best = cands[0][1]
    assert best.dtype == bool and reg.dice(best, ndimage.binary_fill_holes(inside)) > 0.9
    dark = [c[2] for c in reg._mask_candidates(5.0 - noisy, 1.0)]
    assert "otsu, dark particle" in dark and "otsu, bright particle" not in dark
    # a particle within the noise is no particle (contrast below 5 noise sigmas): every score is -inf
    faint = 0.002 * img / img.max() + 0.01 * rng.normal(size=img.shape)
    assert not any(np.isfinite(c[0]) for c in reg._mask_candidates(faint, 0.0))


def test_clean_fills_holes_mends_gaps_and_keeps_the_plausible_piece():
    m = np.zeros((50, 50), bool)
    m[10:30, 10:30] = True
    m[15:18, 15:18] = False  # hole
    m[20, 12:28] = False  # a 1-px crack inside the particle
    m[40:43, 0:50] = True  # a band touching the border (implausible)
    out = reg._clean(m)
    want = np.zeros((50, 50), bool)
    want[10:30, 10:30] = True
    np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("sigma_px, refused, found", [(0.0, 4.0, 6.0), (1.0, 1.2, 1.8)])
def test_a_particle_must_stand_5_noise_sigmas_off_the_background(sigma_px, refused, found):
    # white noise of sigma 1 (estimated from the border's pixel differences); after a Gaussian smoothing of
    # sigma_px the noise is 1 / (2 sqrt(pi) sigma_px) = 0.28: the contrast thresholds are 5 and 1.41
    yy, xx = np.mgrid[:64, :64]
    inside = ((yy - 32) / 18) ** 2 + ((xx - 30) / 22) ** 2 < 1
    for seed in (0, 1):
        noise = np.random.default_rng(seed).normal(size=(64, 64))
        with pytest.raises(ValueError, match="no particle found"):
            reg.particle_mask(noise + refused * inside, sigma_px=sigma_px)
        assert reg.dice(reg.particle_mask(noise + found * inside, sigma_px=sigma_px), inside) > 0.95


def test_despeckle_threshold_is_8_robust_sigmas_off_the_3x3_median():
    rng = np.random.default_rng(4)
    img = 0.5 * rng.normal(size=(24, 26))
    resid = img - ndimage.median_filter(img, size=3, mode="nearest")
    sigma = 1.4826 * np.median(np.abs(resid - np.median(resid)))  # robust sigma of the residuals
    base = ndimage.median_filter(img, size=3, mode="nearest")
    img[6, 7] = base[6, 7] + 6.0 * sigma  # below 8 robust sigmas: kept
    img[15, 18] = base[15, 18] + 10.0 * sigma  # above: removed
    img[19, 4] = base[19, 4] - 10.0 * sigma  # either sign
    out = reg._despeckle(img)
    assert np.argwhere(np.isnan(out)).tolist() == [[15, 18], [19, 4]]


def test_automatic_mask_options_start_with_the_default_particle_mask():
    _, img = _blob()
    opts = reg._mask_options(img, None, "fixed")
    np.testing.assert_array_equal(opts[0][1], reg.particle_mask(img))  # sigma_px=1 as particle_mask's default
    cands = [(how, m) for sc, m, how in reg._mask_candidates(img, 1.0) if np.isfinite(sc)]
    assert [h for h, _ in opts] == [h for h, _ in cands]


def test_content_level_falls_back_to_the_median_when_the_low_percentile_is_background():
    img = np.full((40, 40), 2.0)
    img[10:30, 10:30] = 5.0
    mask = np.zeros((40, 40), bool)
    mask[14:26, 14:26] = True  # 144 particle pixels
    mask[0:6, 0:8] = True  # 48 background pixels far away: 25 % of the mask, so its 10th percentile is 2
    out = reg._content(img, mask, 0.0, 10.0)
    # the level equals the background: the span is the median of the mask minus the background (5 - 2)
    assert out[20, 20] == pytest.approx(1.0) and out[35, 35] == 0.0


def test_mutual_information_accepts_a_0_1_mask_of_any_integer_type():
    # masks often come as uint8 images (e.g. read from TIFF): 0/1 selects like False/True
    rng = np.random.default_rng(8)
    a = rng.random((12, 14))
    b = a**2 + 0.1 * rng.random((12, 14))
    sel = rng.random((12, 14)) > 0.3
    want = reg.mutual_information(a, b, mask=sel, bins=6)
    for dtype in (np.uint8, np.int64, float):
        assert reg.mutual_information(a, b, mask=sel.astype(dtype), bins=6) == want


def test_half_way_passes_stop_when_the_mask_stops_changing():
    # a noise-free two-level particle: every threshold between the levels gives the same mask, so the
    # half-way and quarter-way iterations add nothing (each pass is added only when the mask changed)
    img = np.zeros((40, 48))
    img[8:30, 10:36] = 3.0
    labels = [how for _, _, how in reg._mask_candidates(img, 0.0)]
    assert labels and not any("of the way" in how for how in labels), labels
