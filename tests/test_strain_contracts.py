"""Contract tests of chemomech.strain, by category of user-visible behaviour (issue 19, mutation score).

Every error message is asserted whole (``re.fullmatch``, ``.*`` only where a value is formatted), every
returned variable's name, dims, dtype and attrs exactly, every validation bound at the boundary and just
beyond, and the numbers against independent computations (hand-built detector images, tensor algebra).
Small inputs and module-scoped fixtures keep the file fast (one measurement of a 3 x 4 scan is ~0.5 s).
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import xarray as xr

from chemomech import strain
from chemomech.twin import stem4d

STRAIN_META = {  # variable: (units, long_name, dtype kind)
    "exx": ("1", "strain exx (image frame)", "f"),
    "eyy": ("1", "strain eyy (image frame)", "f"),
    "exy": ("1", "tensor shear strain exy (image frame)", "f"),
    "theta": ("rad", "rigid rotation (positive: x towards y)", "f"),
    "mask": ("1", "measured pixels", "b"),
    "n_disks": ("1", "disks in the lattice fit", "i"),
    "residual": ("px", "RMS disk-position misfit", "f"),
    "origin_ky": ("px", "descan fit ky", "f"),
    "origin_kx": ("px", "descan fit kx", "f"),
}
ATTRS = {"method", "template_radius_px", "g1_xy_px", "g2_xy_px", "origin_mean_ky_kx_px", "window_px", "capture_px",
         "min_spacing_px", "snr_min", "content_slope_prior", "content_curvature_prior", "n_lost_patterns",
         "n_excluded_detector_pixels"}
OPTIONS = "['chunk', 'method', 'min_disks', 'progress', 'snr_min', 'upsample_factor']"


def _raises(exc, pattern, func, *args, **kwargs):
    """Call func and require `exc` whose whole message matches `pattern` (a regular expression)."""
    with pytest.raises(Exception) as info:
        func(*args, **kwargs)
    assert type(info.value) is exc, (type(info.value), str(info.value))
    assert re.fullmatch(pattern, str(info.value)), str(info.value)


def _lattice_cube(centres, scan=(2, 3), det=64, radius=3.0, amp=200.0, bg=2.0, seed=0):
    """Poisson patterns of flat disks at the given detector positions (independent of the simulator)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:det, :det]
    img = np.full((det, det), bg)
    for c in centres:
        img = img + amp * np.clip(radius + 0.5 - np.hypot(yy - c[0], xx - c[1]), 0, 1)
    return rng.poisson(np.broadcast_to(img, (*scan, det, det))).astype(float)


@pytest.fixture(scope="module")
def sim():
    return stem4d.simulate_uniform(exx=0.01, eyy=-0.004, exy=0.002, scan_shape=(3, 4), reference_columns=2,
                                   dose=1e5, rng=2)


@pytest.fixture(scope="module")
def fast(sim):
    return strain.measure_strain(sim.datacube.values, reference=sim.reference.values)


@pytest.fixture(scope="module")
def diag(sim):
    return strain.diagnostics(sim.datacube.values, patterns=[(1, 2), (0, 3)])


# ------------------------------------------------------------------------------------------ error messages

def test_measure_strain_error_messages(sim):
    cube = sim.datacube.values
    ny, nx, dky, dkx = cube.shape
    rot = r"rotation must be a finite real number \(radians\), got "
    cases = [
        (ValueError, r"datacube must be 4-D, got 3-D with shape \(4, 128, 128\)", dict(datacube=cube[0])),
        (ValueError, r"datacube must have dims \('y', 'x', 'ky', 'kx'\), got \('x', 'ky', 'kx'\)",
         dict(datacube=sim.datacube[0])),
        (TypeError, r"datacube must be a numpy/dask array, an xarray\.DataArray or a py4DSTEM\.DataCube, got object",
         dict(datacube=object())),
        (TypeError, r"datacube must hold numbers \(dtype kind in 'biuf'\), got dtype complex128",
         dict(datacube=cube.astype(complex))),
        (ValueError, r"datacube patterns must be at least 16 x 16 pixels, got \(15, 128\)",
         dict(datacube=cube[:, :, :15])),
        (ValueError, r"datacube patterns must be at least 16 x 16 pixels, got \(128, 15\)",
         dict(datacube=cube[:, :, :, :15])),
        (TypeError, re.escape(f"measure_strain() got unknown option(s) ['subpixel']; allowed: {OPTIONS}"),
         dict(datacube=cube, subpixel="poly")),
        (ValueError, r"method must be one of \('fast', 'plain', 'py4dstem'\), got 'magic'",
         dict(datacube=cube, method="magic")),
        (ValueError, r"method must be one of \('fast', 'plain', 'py4dstem'\), got 'FAST'",
         dict(datacube=cube, method="FAST")),
        (TypeError, rot + r"True", dict(datacube=cube, rotation=True)),
        (TypeError, rot + r"nan", dict(datacube=cube, rotation=np.nan)),
        (TypeError, rot + r"inf", dict(datacube=cube, rotation=np.inf)),
        (TypeError, rot + r"'0'", dict(datacube=cube, rotation="0")),
        (ValueError, r"reference must have shape \(3, 4\), got \(4, 3\)",
         dict(datacube=cube, reference=np.ones((4, 3), bool))),
        (TypeError, r"reference must be a boolean mask, got dtype int64",
         dict(datacube=cube, reference=np.ones((ny, nx), np.int64))),
        (ValueError, r"reference selects 0 pixels; at least 1 needed",
         dict(datacube=cube, reference=np.zeros((ny, nx), bool))),
        (ValueError, r"probe must have shape \(128, 128\), got \(10, 10\)",
         dict(datacube=cube, probe=np.ones((10, 10)))),
        (ValueError, r"probe must contain only finite values; found NaN or inf",
         dict(datacube=cube, probe=np.full((dky, dkx), np.nan))),
        (ValueError, r"probe shows no disk: expected a vacuum probe image with one bright disk",
         dict(datacube=cube, probe=np.zeros((dky, dkx)))),
        (ValueError, r"probe shows no disk: expected a vacuum probe image with one bright disk",
         dict(datacube=cube, probe=np.ones((dky, dkx)))),
        (ValueError, r"datacube: every pattern is lost \(all NaN/inf or all zero\); nothing to measure",
         dict(datacube=np.full_like(cube, np.nan))),
        (ValueError, r"datacube: every pattern is lost \(all NaN/inf or all zero\); nothing to measure",
         dict(datacube=np.zeros_like(cube))),
        (ValueError, r"datacube: the direct beam was found in fewer than 3 patterns; cannot fit the descan",
         dict(datacube=cube, snr_min=1e9)),
        (ValueError, r"datacube: no pattern had enough disks to fit a lattice \(min_disks=1000\); "
                     r"check the data or lower snr_min", dict(datacube=cube, min_disks=1000)),
    ]
    for exc, pattern, kwargs in cases:
        _raises(exc, pattern, strain.measure_strain, kwargs.pop("datacube"), **kwargs)


def test_dask_input_error_messages(sim):
    da = pytest.importorskip("dask.array")
    cube = sim.datacube.values
    _raises(ValueError, r"datacube must be 4-D \(ny, nx, ky, kx\), got 3-D dask array with shape \(4, 128, 128\)",
            strain.measure_strain, da.from_array(cube[0]))
    _raises(TypeError, r"datacube must hold real numbers, got dtype complex128",
            strain.measure_strain, da.from_array(cube.astype(complex)))
    _raises(TypeError, r"datacube must hold real numbers, got dtype <U1",
            strain.measure_strain, da.from_array(np.full(cube.shape[:2] + (16, 16), "a")))
    # every real kind is accepted lazily: ints and bools reach the analysis (and fail there for lack of disks)
    for dtype in (np.int32, np.uint16, bool):
        _raises(ValueError, r"datacube: .*", strain.measure_strain,
                da.from_array(np.zeros(cube.shape[:2] + (16, 16), dtype)))


@pytest.mark.parametrize("centres, pattern", [
    ([(32, 32)], r"datacube: found fewer than 3 disks in the mean diffraction pattern; "
                 r"no Bragg disks to measure strain from"),
    ([(32, 32), (32, 44), (32, 20)], r"datacube: fewer than 4 disks in the mean pattern; cannot index a lattice"),
    ([(32, 32), (32, 44), (32, 20), (32, 56), (32, 8)],
     r"datacube: the disks of the mean pattern do not form a 2-D lattice \(no two independent reciprocal vectors\); "
     r"no Bragg disks to measure strain from"),
])
def test_patterns_without_a_2d_lattice_are_refused_by_name(centres, pattern):
    # one disk; a centre and one pair; a row of collinear disks: no 2-D lattice to index
    _raises(ValueError, pattern, strain.measure_strain, _lattice_cube(centres))


def test_reference_on_lost_patterns_only_is_refused(sim):
    cube = sim.datacube.values.copy()
    cube[0, 0] = np.nan
    ref = np.zeros((3, 4), bool)
    ref[0, 0] = True
    _raises(ValueError, r"reference selects no measured pixel \(all its patterns failed\); choose another region",
            strain.measure_strain, cube, reference=ref)


def test_pattern_size_bound_16_is_accepted():
    # 16 x 16 patterns pass the size check (they then fail for want of disks, with another message)
    cube = np.random.default_rng(3).poisson(2.0, size=(2, 3, 16, 16)).astype(float)
    with pytest.raises(ValueError) as info:
        strain.measure_strain(cube)
    assert "at least 16 x 16" not in str(info.value)
    assert str(info.value).startswith("datacube: ")


def test_frame_and_reference_error_messages():
    s = xr.Dataset({k: (("y", "x"), np.zeros((1, 1))) for k in ("exx", "eyy", "exy")})
    for bad in ({}, s.drop_vars("exy"), s.drop_vars("exx"), s.drop_vars("eyy"), s.exx):
        msg = r"strain must be an xarray\.Dataset with exx, eyy and exy"
        _raises(TypeError, msg, strain.to_crystal_frame, bad, 0.0)
        _raises(TypeError, msg, strain.change_reference, bad, [0, 0, 0])
    for bad, name in ((True, "bool"), ("0.1", "str"), (None, "NoneType"), ([0.1], "list")):
        _raises(TypeError, rf"angle_a_rad must be a real number \(radians\), got {name}", strain.to_crystal_frame, s,
                bad)
    for func, args in ((strain.reference_transform, ()), (strain.change_reference, (s,))):
        _raises(ValueError, r"reference_strain must have shape \(3,\), got \(2,\)", func, *args, [0.01, 0.02])
        _raises(ValueError, r"reference_strain must have shape \(3,\), got \(1, 3\)", func, *args, [[0.01, 0.02, 0]])
        _raises(ValueError, r"reference_strain must contain only finite values; found NaN or inf", func, *args,
                [0.01, np.nan, 0.0])
        _raises(TypeError, r"reference_strain must be an array of numbers, got str", func, *args, "abc")


def test_virtual_images_error_messages():
    cube = np.zeros((1, 2, 16, 16))
    _raises(ValueError, r"radius_px must be > 0 and finite, got 0", strain.virtual_images, cube, radius_px=0)
    _raises(ValueError, r"radius_px must be > 0 and finite, got -1\.0", strain.virtual_images, cube, radius_px=-1.0)
    _raises(TypeError, r"radius_px must be a real number, got bool", strain.virtual_images, cube, radius_px=True)
    _raises(ValueError, r"centre must have shape \(2,\), got \(3,\)", strain.virtual_images, cube, radius_px=3.0,
            centre=(1, 2, 3))
    _raises(ValueError, r"datacube must be 4-D, got 3-D with shape \(2, 16, 16\)", strain.virtual_images, cube[0],
            radius_px=3.0)
    _raises(ValueError, r"datacube patterns must be at least 16 x 16 pixels, got \(15, 16\)", strain.virtual_images,
            cube[:, :, 1:], radius_px=3.0)
    _raises(ValueError, r"datacube must be 4-D, got 3-D with shape \(2, 16, 16\)", strain.diagnostics, cube[0])


# ------------------------------------------------------------------------------------------ output metadata

def test_measure_strain_variables_dims_dtypes_and_attrs(sim, fast):
    assert set(fast.data_vars) == set(STRAIN_META)
    assert dict(fast.sizes) == {"y": 3, "x": 4}
    for name, (units, long_name, kind) in STRAIN_META.items():
        var = fast[name]
        assert var.dims == ("y", "x"), name
        assert var.dtype.kind == kind, name
        assert var.attrs == {"units": units, "long_name": long_name}, name
    assert fast.y.attrs == {"units": "px", "long_name": "scan row"}
    assert fast.x.attrs == {"units": "px", "long_name": "scan column"}
    assert set(fast.attrs) == ATTRS
    a = fast.attrs
    assert a["method"] == "fast" and a["snr_min"] == 4.0
    assert a["n_lost_patterns"] == 0 and a["n_excluded_detector_pixels"] == 0
    assert isinstance(a["n_lost_patterns"], int) and isinstance(a["window_px"], int)
    for k in ("g1_xy_px", "g2_xy_px", "origin_mean_ky_kx_px"):
        assert isinstance(a[k], list) and len(a[k]) == 2, k
    # a 3 x 4 scan has too few neighbour pairs for the empirical prior: its documented floor (relative change)
    assert a["content_slope_prior"] == pytest.approx(0.02) and a["content_curvature_prior"] == pytest.approx(0.02)
    assert fast.mask.values.all() and (fast.n_disks.values >= 6).all()


def test_attrs_are_the_detection_parameters_of_diagnostics(sim, fast, diag):
    a, par = fast.attrs, diag["parameters"]
    assert set(par) == {"template_radius_px", "window_px", "min_spacing_px", "capture_px", "snr_min",
                        "n_disks_predicted"}
    for k in ("template_radius_px", "window_px", "min_spacing_px", "capture_px", "snr_min"):
        assert a[k] == pytest.approx(par[k]), k
    assert a["window_px"] == 2 * int(np.ceil(a["template_radius_px"] + 3.0)) + 1
    assert diag["template"].shape == (a["window_px"], a["window_px"])
    # the reference basis in the scan frame: detector (ky, kx) rows swapped to (x, y) (rotation 0)
    basis = diag["basis"]
    np.testing.assert_allclose(a["g1_xy_px"], basis[::-1, 0], atol=1e-12)
    np.testing.assert_allclose(a["g2_xy_px"], basis[::-1, 1], atol=1e-12)
    g_min = min(np.linalg.norm(basis[:, 0]), np.linalg.norm(basis[:, 1]))
    assert a["capture_px"] == pytest.approx(0.3 * g_min, rel=1e-12)
    assert a["min_spacing_px"] == pytest.approx(0.6 * g_min, rel=1e-12)
    np.testing.assert_allclose(a["origin_mean_ky_kx_px"], diag["centre"], atol=1e-12)
    np.testing.assert_allclose(fast.origin_ky.values, diag["origin_fit"][..., 0], atol=1e-9)
    np.testing.assert_allclose(fast.origin_kx.values, diag["origin_fit"][..., 1], atol=1e-9)
    assert par["n_disks_predicted"] == len(diag["predicted_hk"])
    assert fast.n_disks.values.max() <= par["n_disks_predicted"]


@pytest.mark.parametrize("case", ["simulator", "lattice on the 1 % band"])
def test_predicted_disks_are_the_lattice_points_whose_window_stays_on_the_detector(case, sim, diag):
    """The disks fitted in every pattern: the direct beam and every reference lattice point (h, k) whose
    template window stays inside the detector with 1 % of |g| to spare (room for a 1 % tensile strain to
    move it outwards) -- recomputed here by brute force from the reported basis, centre and window. The
    hand lattice puts its h = 2 and k = 2 disks 0.1 px inside the bare window limit, within the 1 % allowance."""
    if case != "simulator":
        g = 12.2
        cube = _lattice_cube([(32 + h * g, 32 + k * g) for h in range(-2, 3) for k in range(-2, 3)])
        diag = strain.diagnostics(cube)
    dky, dkx = diag["mean"].shape
    half = (diag["parameters"]["window_px"] - 1) // 2
    hk = np.stack(np.meshgrid(np.arange(-40, 41), np.arange(-40, 41), indexing="ij"), -1).reshape(-1, 2)
    q = diag["centre"] + hk @ diag["basis"].T
    need = half + 0.5 + 0.01 * np.linalg.norm(q - diag["centre"], axis=1)[:, None]
    on = np.all((q > need) & (q < np.array([dky, dkx]) - 1 - need), axis=1)
    predicted = {tuple(v) for v in diag["predicted_hk"].astype(int)}
    assert predicted == {tuple(v) for v in hk[on]} and (0, 0) in predicted
    if case != "simulator":  # the 1 % allowance matters here: lattice points lie in the band it excludes
        inside = np.all((q > half + 0.5) & (q < np.array([dky, dkx]) - 1.5 - half), axis=1)
        assert (inside & ~on).sum() == 9 and len(predicted) == 16  # row h = 2 and column k = 2


def test_diagnostics_keys_shapes_and_flaw_summary(sim, diag):
    ny, nx, dky, dkx = sim.datacube.shape
    assert set(diag) == {"mean", "template", "radius", "centre", "origin", "origin_fit", "direct_snr", "basis",
                         "lattice_peaks", "lattice_hk", "parameters", "predicted_hk", "disks", "disk_snr", "flaws"}
    assert diag["mean"].shape == (dky, dkx)
    np.testing.assert_allclose(diag["mean"], sim.datacube.values.mean(axis=(0, 1)), rtol=1e-6)
    assert diag["origin"].shape == diag["origin_fit"].shape == (ny, nx, 2)
    assert diag["direct_snr"].shape == (ny, nx) and (diag["direct_snr"] > 4.0).all()
    assert diag["basis"].shape == (2, 2) and diag["predicted_hk"].shape[1] == 2
    assert diag["lattice_peaks"].shape == diag["lattice_hk"].shape and diag["lattice_hk"].shape[0] >= 4
    np.testing.assert_array_equal(diag["lattice_hk"], np.round(diag["lattice_hk"]))
    # the mean pattern's disks sit on the fitted lattice
    pred = diag["centre"] + diag["lattice_hk"] @ diag["basis"].T
    assert np.abs(diag["lattice_peaks"] - pred).max() < 1.0
    assert diag["radius"] == diag["parameters"]["template_radius_px"]
    assert len(diag["disks"]) == len(diag["disk_snr"]) == 2
    for disks, snr in zip(diag["disks"], diag["disk_snr"]):
        assert snr.shape == (len(diag["predicted_hk"]),)
        assert disks.shape[1] == 2 and 6 <= len(disks) <= int((snr > 4.0).sum())
    fl = diag["flaws"]
    assert set(fl) == {"lost", "dead", "hot", "saturated", "bad", "saturation_level", "excluded_pixels"}
    assert fl["lost"].shape == (ny, nx) and not fl["lost"].any()
    for k in ("dead", "hot", "saturated", "bad"):
        assert fl[k].shape == (dky, dkx) and fl[k].dtype == bool and not fl[k].any(), k
    assert fl["saturation_level"] is None
    assert set(fl["excluded_pixels"]) == {"dead", "hot", "saturated"}
    assert all(v.shape == (0, 2) for v in fl["excluded_pixels"].values())


def test_diagnostics_snr_min_option_and_no_patterns(sim, diag):
    cube = sim.datacube.values
    none = strain.diagnostics(cube)
    assert none["disks"] == [] and none["disk_snr"] == [] and none["parameters"]["snr_min"] == 4.0
    strict = strain.diagnostics(cube, patterns=[(1, 2)], snr_min=40.0)
    assert strict["parameters"]["snr_min"] == 40.0
    # the threshold picks the disks: the stricter one keeps exactly those above it of the same SNRs
    snr = diag["disk_snr"][0]
    assert len(strict["disks"][0]) < len(diag["disks"][0])
    assert len(strict["disks"][0]) <= int((snr > 40.0).sum())


def test_virtual_images_metadata_and_coordinates(sim):
    cube = sim.datacube.assign_coords(y=[0.0, 2.5, 5.0], x=[1.0, 2.0, 3.0, 4.0])
    cube["y"].attrs["units"] = "nm"
    v = strain.virtual_images(cube, radius_px=4.0)
    assert set(v.data_vars) == {"bright_field", "dark_field"}
    assert v.bright_field.attrs == {"units": "counts", "long_name": "virtual bright field"}
    assert v.dark_field.attrs == {"units": "counts", "long_name": "virtual annular dark field"}
    assert v.bright_field.dims == v.dark_field.dims == ("y", "x")
    np.testing.assert_array_equal(v.y.values, [0.0, 2.5, 5.0])
    np.testing.assert_array_equal(v.x.values, [1.0, 2.0, 3.0, 4.0])
    assert v.y.attrs["units"] == "nm"
    bare = strain.virtual_images(sim.datacube.values, radius_px=4.0)
    assert set(bare.coords) == set()
    np.testing.assert_allclose(bare.bright_field.values, v.bright_field.values)


# ------------------------------------------------------------------------------------------ numerics / options

def test_virtual_images_detector_boundaries_by_hand():
    # powers of two at known distances from the default centre (8, 8) of a 16 x 16 detector tell which pixel
    # went where: rho = 0 (16), 3 (1: on the bright-field edge, inside), 4 (2: in the gap), 5 (4: on the
    # dark-field edge r + 2, outside), 6 (8: dark field)
    cube = np.zeros((1, 3, 16, 16), np.float32)
    for col, val in ((8, 16.0), (11, 1.0), (12, 2.0), (13, 4.0), (14, 8.0)):
        cube[0, 0, 8, col] = val
    cube[0, 1] = cube[0, 0]
    cube[0, 1, 0, 0] = np.nan  # one non-finite pixel counts as 0
    cube[0, 2] = np.nan  # a lost pattern
    v = strain.virtual_images(cube, radius_px=3.0)
    np.testing.assert_array_equal(v.bright_field.values[0, :2], [17.0, 17.0])
    np.testing.assert_array_equal(v.dark_field.values[0, :2], [8.0, 8.0])
    assert np.isnan(v.bright_field.values[0, 2]) and np.isnan(v.dark_field.values[0, 2])
    # an explicit centre moves the detectors: about (8, 12) the pixel at col 12 is the bright field's centre
    w = strain.virtual_images(cube[:, :1], radius_px=1.0, centre=(8.0, 12.0))
    assert float(w.bright_field[0, 0]) == 1.0 + 2.0 + 4.0
    assert float(w.dark_field[0, 0]) == 16.0  # rho 4 > 1 + 2; cols 14 (rho 2) and 11, 13 (rho 1) excluded
    # odd detector: the default centre is (ky / 2, kx / 2) = (8.5, 8.5)
    odd = np.zeros((1, 1, 17, 17))
    odd[0, 0, 8, 8] = 1.0  # rho = 0.707
    odd[0, 0, 9, 9] = 2.0  # rho = 0.707
    odd[0, 0, 7, 7] = 4.0  # rho = 2.12
    assert float(strain.virtual_images(odd, radius_px=1.0).bright_field[0, 0]) == 3.0


def test_rotation_option_rotates_the_strain_tensor(sim, fast):
    # a quarter turn of the detector relative to the scan swaps x and y: exx <-> eyy, exy -> -exy, theta kept
    rot = strain.measure_strain(sim.datacube.values, reference=sim.reference.values, rotation=np.pi / 2)
    np.testing.assert_allclose(rot.exx.values, fast.eyy.values, atol=1e-9)
    np.testing.assert_allclose(rot.eyy.values, fast.exx.values, atol=1e-9)
    np.testing.assert_allclose(rot.exy.values, -fast.exy.values, atol=1e-9)
    np.testing.assert_allclose(rot.theta.values, fast.theta.values, atol=1e-9)
    # the basis attrs turn the same way: a scan-frame vector g appears on the detector as R(rotation) g
    c, s = np.cos(np.pi / 2), np.sin(np.pi / 2)
    r = np.array([[c, -s], [s, c]])
    np.testing.assert_allclose(r @ np.array(rot.attrs["g1_xy_px"]), fast.attrs["g1_xy_px"], atol=1e-9)
    np.testing.assert_allclose(r @ np.array(rot.attrs["g2_xy_px"]), fast.attrs["g2_xy_px"], atol=1e-9)
    # a general angle keeps the tensor invariants (trace, determinant) and theta; with a one-pixel reference
    # (the element-wise median lattice of a larger region does not commute with a general rotation)
    one = np.zeros((3, 4), bool)
    one[0, 0] = True
    fast = strain.measure_strain(sim.datacube.values, reference=one)
    ang = strain.measure_strain(sim.datacube.values, reference=one, rotation=0.3)
    np.testing.assert_allclose(ang.exx.values + ang.eyy.values, fast.exx.values + fast.eyy.values, atol=1e-9)
    det = lambda d: d.exx.values * d.eyy.values - d.exy.values ** 2  # noqa: E731
    np.testing.assert_allclose(det(ang), det(fast), atol=1e-12)
    np.testing.assert_allclose(ang.theta.values, fast.theta.values, atol=1e-9)
    e = np.stack([[fast.exx.values, fast.exy.values], [fast.exy.values, fast.eyy.values]])
    cr, sr = np.cos(-0.3), np.sin(-0.3)
    q = np.array([[cr, -sr], [sr, cr]])
    expect = np.einsum("ij,jkyx,lk->ilyx", q, e, q)
    np.testing.assert_allclose(ang.exx.values, expect[0, 0], atol=1e-9)
    np.testing.assert_allclose(ang.exy.values, expect[0, 1], atol=1e-9)


def test_reference_region_defines_zero_strain(sim, fast):
    cube = sim.datacube.values
    one = np.zeros((3, 4), bool)
    one[1, 3] = True
    res = strain.measure_strain(cube, reference=one)
    for k in ("exx", "eyy", "exy", "theta"):
        assert abs(float(res[k][1, 3])) < 1e-12, k
    # the strained block relative to its own pixel: about -(strain) at the reference columns
    assert float(np.median(res.exx.values[:, :2])) == pytest.approx(-0.01 / 1.01, abs=1e-3)
    # default: the median lattice of all measured pixels
    full = strain.measure_strain(cube, reference=np.ones((3, 4), bool))
    none = strain.measure_strain(cube)
    for k in ("exx", "eyy", "exy", "theta"):
        np.testing.assert_allclose(none[k].values, full[k].values, atol=1e-12)
    # the recovered strain of the strained block matches the simulation
    sel = ~sim.reference.values
    for k, v in (("exx", 0.01), ("eyy", -0.004), ("exy", 0.002)):
        assert float(np.median(fast[k].values[sel])) == pytest.approx(v, abs=5e-4), k


def test_plain_method_and_options_are_recorded(sim, fast):
    cube = sim.datacube.values
    plain = strain.measure_strain(cube, reference=sim.reference.values, method="plain", snr_min=5.0, min_disks=8,
                                  chunk=5)
    assert plain.attrs["method"] == "plain" and plain.attrs["snr_min"] == 5.0
    assert np.isnan(plain.attrs["content_slope_prior"]) and np.isnan(plain.attrs["content_curvature_prior"])
    assert (plain.n_disks.values >= 8).all()
    sel = ~sim.reference.values
    assert float(np.median(plain.exx.values[sel])) == pytest.approx(0.01, abs=1e-3)
    # min_disks: patterns with fewer disks come back unmeasured
    n = int(np.median(fast.n_disks.values))
    few = strain.measure_strain(cube, min_disks=n + 1)
    np.testing.assert_array_equal(few.mask.values, fast.n_disks.values >= n + 1)
    assert (few.n_disks.values[~few.mask.values] == 0).all()
    assert np.isnan(few.residual.values[~few.mask.values]).all()


def test_progress_bars_name_each_pass(sim, capsys):
    cube = sim.datacube.values[:2, :3]
    quiet = strain.measure_strain(cube, chunk=2)
    capsys.readouterr()
    loud = strain.measure_strain(cube, chunk=2, progress=True)
    err = capsys.readouterr().err
    for desc in ("mean pattern", "direct beam", "disks and lattices"):
        assert re.search(rf"(^|\r){desc}: 100%\|.*\| 3/3 ", err), desc
    assert "chunk/s" in err or "s/chunk" in err
    for k in ("exx", "eyy", "exy", "theta"):
        np.testing.assert_array_equal(loud[k].values, quiet[k].values)


def test_dask_progress_bars_count_the_chunk_tasks(sim, capsys):
    da = pytest.importorskip("dask.array")
    cube = sim.datacube.values[:2, :3]
    ref = strain.measure_strain(cube)
    capsys.readouterr()
    lazy = strain.measure_strain(da.from_array(cube, chunks=(1, 3, -1, -1)), progress=True)
    err = capsys.readouterr().err
    for desc in ("mean pattern", "direct beam", "disks and lattices"):
        assert re.search(rf"(^|\r){desc}: 100%\|.*\| 2/2 ", err), desc
    for k in ("exx", "eyy", "exy", "theta"):
        np.testing.assert_allclose(lazy[k].values, ref[k].values, atol=1e-9)


def test_dask_chunks_larger_than_a_task_are_split_without_merging(sim, monkeypatch):
    da = pytest.importorskip("dask.array")
    cube = sim.datacube.values
    per_pattern_mib = 4 * 128 * 128 / 2**20
    monkeypatch.setattr(strain._Source, "TASK_MIB", 5 * per_pattern_mib)  # at most 5 patterns per task
    src = strain._Source(da.from_array(cube, chunks=(2, 4, -1, -1)), 256)  # scan chunks of 8 and 4 patterns
    assert src.pats.chunks[0] == (5, 3, 4)
    np.testing.assert_array_equal(src.starts, [0, 5, 8])
    src = strain._Source(da.from_array(cube, chunks=(3, 4, -1, -1)), 256)
    assert src.pats.chunks[0] == (5, 5, 2)
    ref = strain.measure_strain(cube)
    lazy = strain.measure_strain(da.from_array(cube, chunks=(2, 4, -1, -1)))
    for k in ("exx", "eyy", "exy", "theta"):
        np.testing.assert_allclose(lazy[k].values, ref[k].values, atol=1e-9)


def test_source_take_returns_float32_patterns_in_the_order_asked(sim):
    da = pytest.importorskip("dask.array")
    cube = sim.datacube.values.astype(np.float64)
    flat = cube.reshape(12, 128, 128)
    for src in (strain._Source(cube, 5), strain._Source(da.from_array(cube, chunks=(1, 4, -1, -1)), 5)):
        got = src.take([7, 1, 10, 3])
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, flat[[7, 1, 10, 3]].astype(np.float32))
    np.testing.assert_array_equal(strain._Source(cube, 5).starts, [0, 5, 10])


# ------------------------------------------------------------------------------------------ flaws and bounds

def test_lost_pattern_bound_is_more_than_half_non_finite():
    block = np.ones((4, 16, 16), np.float32)
    block[0].flat[:128] = np.nan  # exactly half: kept
    block[1].flat[:129] = np.nan  # more than half: lost
    block[2] = 0.0  # all zero: lost
    block[3, 0, 0] = np.inf
    lost = strain._pass_sum(block, 0, {})[6]
    np.testing.assert_array_equal(lost, [False, True, True, False])


def test_flawed_pixels_found_filled_and_counted(sim):
    cube = sim.datacube.values.copy()
    cube[:, :, 5, 5] += 500 + np.random.default_rng(0).poisson(20, size=cube.shape[:2])  # hot (and noisy)
    ky, kx = 64, 63  # the centre of the mean pattern's direct beam
    cube[:, :, ky, kx] = 0.0  # dead
    cube[1, 1] = np.nan  # a lost pattern
    d = strain.diagnostics(cube)
    fl = d["flaws"]
    np.testing.assert_array_equal(fl["excluded_pixels"]["hot"], [[5, 5]])
    np.testing.assert_array_equal(fl["excluded_pixels"]["dead"], [[ky, kx]])
    assert fl["excluded_pixels"]["saturated"].shape == (0, 2) and fl["saturation_level"] is None
    np.testing.assert_array_equal(np.argwhere(fl["bad"]), [[5, 5], [ky, kx]])
    assert fl["lost"].sum() == 1 and fl["lost"][1, 1]
    # the dead pixel of the mean pattern is filled with the mean of its 8 neighbours
    good = np.delete(np.arange(12), 5)
    mean_good = cube.reshape(12, 128, 128)[good].mean(axis=0)
    nb = mean_good[ky - 1:ky + 2, kx - 1:kx + 2].sum() - mean_good[ky, kx]
    assert d["mean"][ky, kx] == pytest.approx(nb / 8, rel=1e-5)
    res = strain.measure_strain(cube, reference=sim.reference.values)
    assert res.attrs["n_excluded_detector_pixels"] == 2 and res.attrs["n_lost_patterns"] == 1
    assert not bool(res.mask[1, 1]) and int(res.n_disks[1, 1]) == 0
    assert int(res.mask.sum()) == 11


@pytest.mark.parametrize("hits, saturated", [(9, False), (10, True)])
def test_saturation_needs_the_maximum_at_least_ten_times(sim, hits, saturated):
    cube = sim.datacube.values.copy()
    level = float(cube.max()) + 1.0
    ky, kx = 64, 63
    flat = cube.reshape(12, 128, 128)
    flat[:hits, ky, kx] = level
    fl = strain.diagnostics(cube)["flaws"]
    if saturated:
        np.testing.assert_array_equal(fl["excluded_pixels"]["saturated"], [[ky, kx]])
        assert fl["saturation_level"] == level
    else:
        assert fl["excluded_pixels"]["saturated"].shape == (0, 2) and fl["saturation_level"] is None


def test_excluded_pixel_bound_is_a_quarter_of_the_detector(sim):
    # every other column dead (constant zero between two live columns) on a bright, noisy background:
    # 32 of 128 columns is exactly 25 % of the detector (accepted), 33 is more (refused with the count)
    cube = sim.datacube.values + np.random.default_rng(7).poisson(50, size=sim.datacube.shape)
    quarter = cube.copy()
    quarter[..., 1:64:2] = 0.0
    fl = strain.diagnostics(quarter)["flaws"]
    assert fl["bad"].sum() == fl["dead"].sum() == 128 * 32 and fl["dead"][:, 1:64:2].all()
    more = cube.copy()
    more[..., 1:66:2] = 0.0
    _raises(ValueError, r"datacube: 26 % of the detector pixels are dead, hot or saturated "
                        r"\(at most 25 % can be excluded\); too little is left", strain.diagnostics, more)


# ------------------------------------------------------------------------------------------ frames and references

def test_to_crystal_frame_values_and_attrs():
    rng = np.random.default_rng(11)
    exx, eyy, exy, theta = (rng.normal(0, 0.01, (2, 3)) for _ in range(4))
    s = xr.Dataset({"exx": (("y", "x"), exx, {"units": "1", "long_name": "x"}), "eyy": (("y", "x"), eyy),
                    "exy": (("y", "x"), exy), "theta": (("y", "x"), theta, {"units": "rad"}),
                    "mask": (("y", "x"), np.ones((2, 3), bool))}, attrs={"method": "fast"})
    before = s.copy(deep=True)
    for ang in (0.3, np.float32(0.3), -1.1):
        phi = float(ang)
        c, si = np.cos(phi), np.sin(phi)
        out = strain.to_crystal_frame(s, ang)
        # the a axis is (cos phi, sin phi) in (x, y), the c axis (-sin phi, cos phi)
        np.testing.assert_allclose(out.exx.values, exx * c * c + eyy * si * si + 2 * exy * si * c, atol=1e-7)
        np.testing.assert_allclose(out.eyy.values, exx * si * si + eyy * c * c - 2 * exy * si * c, atol=1e-7)
        np.testing.assert_allclose(out.exy.values, (eyy - exx) * si * c + exy * (c * c - si * si), atol=1e-7)
        assert out.exx.attrs == {"units": "1", "long_name": "strain e_aa"}
        assert out.eyy.attrs == {"units": "1", "long_name": "strain e_cc"}
        assert out.exy.attrs == {"units": "1", "long_name": "tensor shear e_ac"}
        assert out.attrs == {"method": "fast", "frame": "crystal (x || a, y || c)"}
        xr.testing.assert_identical(out.theta, s.theta)
        xr.testing.assert_identical(out.mask, s.mask)
        assert out.exx.dims == ("y", "x")
    xr.testing.assert_identical(s, before)  # the input is not modified
    same = strain.to_crystal_frame(s, 0)  # an int angle is accepted
    np.testing.assert_allclose(same.exx.values, exx, atol=1e-15)


def test_reference_transform_and_change_reference_values_and_attrs():
    scale, shift = strain.reference_transform((0.02, -0.01, 0.004))
    np.testing.assert_allclose(scale, [1.02, 0.99, 1.005], rtol=1e-15)
    np.testing.assert_allclose(shift, [0.02, -0.01, 0.004], rtol=1e-15)
    assert scale.dtype == shift.dtype == np.float64 and scale.shape == shift.shape == (3,)
    r = np.array([0.02, -0.01, 0.004])
    _, sh = strain.reference_transform(r)
    sh[0] = 99.0
    assert r[0] == 0.02  # the shift is a copy
    s = xr.Dataset({"exx": (("y", "x"), [[0.01, -0.02]], {"units": "1", "long_name": "strain e_aa", "note": "n"}),
                    "eyy": (("y", "x"), [[0.0, 0.03]]),
                    "exy": (("y", "x"), [[0.001, 0.0]], {"units": "bogus"}),
                    "theta": (("y", "x"), [[0.5, 0.6]])}, attrs={"frame": "crystal"})
    out = strain.change_reference(s, [0.02, -0.01, 0.004])
    # 1 + e = (1 + e_rel)(1 + e_ref) per axis, hand-computed
    np.testing.assert_allclose(out.exx.values, [[1.01 * 1.02 - 1, 0.98 * 1.02 - 1]], atol=1e-15)
    np.testing.assert_allclose(out.eyy.values, [[0.99 - 1, 1.03 * 0.99 - 1]], atol=1e-15)
    np.testing.assert_allclose(out.exy.values, [[0.001 * 1.005 + 0.004, 0.004]], atol=1e-15)
    assert out.exx.attrs == {"units": "1", "long_name": "strain e_aa (re-referenced)", "note": "n"}
    assert out.eyy.attrs == {"units": "1", "long_name": "eyy (re-referenced)"}
    assert out.exy.attrs == {"units": "1", "long_name": "exy (re-referenced)"}
    xr.testing.assert_identical(out.theta, s.theta)
    assert out.attrs == {"frame": "crystal", "reference_strain": [0.02, -0.01, 0.004]}
    assert s.attrs == {"frame": "crystal"} and s.exx.attrs["long_name"] == "strain e_aa"  # input untouched
    assert out.exx.dims == ("y", "x")


# ------------------------------------------------------------------------------------------ paths of other passes

def test_distributed_client_path_gives_the_local_result(sim, capsys):
    distributed = pytest.importorskip("distributed")
    da = pytest.importorskip("dask.array")
    cube = sim.datacube.values[:2, :3]
    ref = strain.measure_strain(cube)
    capsys.readouterr()
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None):
        quiet = strain.measure_strain(da.from_array(cube, chunks=(1, 3, -1, -1)))
        loud = strain.measure_strain(da.from_array(cube, chunks=(1, 3, -1, -1)), progress=True)
    err = capsys.readouterr().err
    for desc in ("mean pattern", "direct beam", "disks and lattices"):
        assert re.search(rf"(^|\r){desc}: 100%\|.*\| 2/2 ", err), desc
    for k in ("exx", "eyy", "exy", "theta", "n_disks"):
        np.testing.assert_allclose(quiet[k].values, ref[k].values, atol=1e-9)
        np.testing.assert_allclose(loud[k].values, ref[k].values, atol=1e-9)


# ------------------------------------------------------------------------------------------ lattice helpers by hand

G_HAND = np.array([[0.3, 11.0], [12.0, -0.4]])  # columns = reciprocal vectors (ky, kx), px


def _hand_lattice(hk, origin=(40.0, 41.0)):
    return (np.asarray(origin) + np.asarray(hk, float) @ G_HAND.T)[None]


HK8 = np.array([[1, 0], [0, 1], [-1, 0], [0, -1], [1, 1], [-1, -1], [1, -1], [2, 1]], float)


def test_fit_lattice_recovers_an_exact_lattice_and_counts_disks():
    pos = _hand_lattice(HK8)
    o, g, rms, count, pred = strain._fit_lattice(pos, HK8, np.ones((1, 8)), 6)
    np.testing.assert_allclose(o[0], [40.0, 41.0], atol=1e-10)
    np.testing.assert_allclose(g[0], G_HAND, atol=1e-10)
    assert rms[0] < 1e-10 and count.tolist() == [8]
    np.testing.assert_allclose(pred, pos, atol=1e-10)
    # zero weights and non-finite positions leave disks out; min_disks is a lower bound that is reached
    w = np.ones((1, 8))
    w[0, :2] = 0.0
    p2 = pos.copy()
    p2[0, 2] = np.nan
    o, g, rms, count, _ = strain._fit_lattice(p2, HK8, w, 5)
    assert count.tolist() == [5]
    np.testing.assert_allclose(g[0], G_HAND, atol=1e-10)
    o, g, rms, count, _ = strain._fit_lattice(p2, HK8, w, 6)
    assert count.tolist() == [5] and np.isnan(o).all() and np.isnan(g).all() and np.isnan(rms).all()
    # the RMS misfit: one disk moved by 1 px along ky among the 8 (a hand-computed least-squares residual)
    p3 = pos.copy()
    p3[0, 7, 0] += 1.0
    design = np.concatenate([np.ones((8, 1)), HK8], axis=1)
    resid = p3[0] - design @ np.linalg.lstsq(design, p3[0], rcond=None)[0]
    _, _, rms, _, _ = strain._fit_lattice(p3, HK8, np.ones((1, 8)), 6)
    assert rms[0] == pytest.approx(np.sqrt((resid ** 2).sum() / 8), rel=1e-9)


def test_fit_lattice_of_collinear_disks_is_unmeasured_not_an_error():
    hk = np.array([[h, 0] for h in range(-3, 4)], float)  # seven disks on one row: no 2-D lattice
    o, g, rms, count, _ = strain._fit_lattice(_hand_lattice(hk), hk, np.ones((1, 7)), 3)
    assert count.tolist() == [7] and np.isnan(g).all() and np.isnan(o).all() and np.isnan(rms).all()


def test_robust_lattice_rejects_an_outlier_and_keeps_the_rest():
    pos = np.concatenate([_hand_lattice(HK8), _hand_lattice(HK8)])
    pos[0, 3] += [3.0, -2.0]  # a disk assigned to the wrong place in the first pattern
    rng = np.random.default_rng(5)
    pos[1] += rng.normal(0, 0.02, pos[1].shape)  # the second pattern: small noise only, nothing rejected
    o, g, rms, count = strain._robust_lattice(pos, HK8, np.ones((2, 8)), 6)
    assert count.tolist() == [7, 8]
    np.testing.assert_allclose(g[0], G_HAND, atol=1e-9)
    np.testing.assert_allclose(o[0], [40.0, 41.0], atol=1e-9)
    assert rms[0] < 1e-9 and 0.005 < rms[1] < 0.05
    np.testing.assert_allclose(g[1], G_HAND, atol=0.05)


def test_match_peaks_assigns_within_the_tolerance():
    guess = _hand_lattice(HK8[:3])  # (1, 3, 2)
    guess = np.concatenate([guess, guess])
    peaks = [np.array([[guess[0, 0, 0] + 0.5, guess[0, 0, 1], 9.0], [guess[0, 2, 0], guess[0, 2, 1] + 2.0, 5.0]]),
             np.zeros((0, 3))]
    pos, weight = strain._match_peaks(peaks, guess, 1.0)
    np.testing.assert_array_equal(weight, [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(pos[0, 0], peaks[0][0, :2])
    assert np.isnan(pos[0, 1:]).all() and np.isnan(pos[1]).all()
    pos, weight = strain._match_peaks(peaks, guess, 2.5)
    np.testing.assert_array_equal(weight[0], [1.0, 0.0, 1.0])
    np.testing.assert_allclose(pos[0, 2], peaks[0][1, :2])


def test_reduced_basis_picks_two_short_independent_vectors():
    hk = np.array([[h, k] for h in range(-2, 3) for k in range(-2, 3)], float)
    pts = 50.0 + hk @ np.array([[0.0, 10.0], [14.0, 0.0]]).T  # columns (ky, kx): g1 = (0, 14), g2 = (10, 0)
    basis = strain._reduced_basis(pts, min_len=4.0)
    assert basis.shape == (2, 2)
    lengths = sorted(np.linalg.norm(basis, axis=0))
    np.testing.assert_allclose(lengths, [10.0, 14.0], atol=1e-9)
    assert abs(np.linalg.det(basis)) == pytest.approx(140.0)
    # collinear points, or a single one: no 2-D basis
    line = 50.0 + np.array([[0.0, 12.0 * h] for h in range(-3, 4)])
    assert strain._reduced_basis(line, min_len=4.0) is None
    assert strain._reduced_basis(line[:1], min_len=4.0) is None


def test_inversion_centre_and_peaks_by_hand():
    img = np.zeros((48, 48))
    for (y, x), a in (((24, 24), 1.0), ((24, 36), 3.0), ((24, 12), 3.0), ((10, 24), 2.0), ((38, 24), 2.0)):
        img[y - 2:y + 3, x - 2:x + 3] = a
    pk = strain._peaks(img, 2.0)
    assert len(pk) == 5
    assert sorted(map(tuple, pk[:2].tolist())) == [(24, 12), (24, 36)]  # brightest first
    assert tuple(pk[-1]) == (24, 24)
    assert len(strain._peaks(img, 2.0, n_max=3)) == 3
    assert strain._inversion_centre(pk, tol=2.0).tolist() == [24, 24]


def test_disk_radius_and_detector_frame_by_hand():
    yy, xx = np.mgrid[-10:11, -10:11]
    disk = (np.hypot(yy, xx) <= 5.0).astype(float)
    assert strain._disk_radius(disk) == pytest.approx(np.sqrt(disk.sum() / np.pi))
    ring = disk.copy()
    ring[8:13, 8:13] = 0.0  # nothing at the middle: the documented fallback of 1 px
    ring[10, 10] = 0.0
    assert strain._disk_radius(np.where(np.hypot(yy, xx) < 2, 0.0, disk)) == 1.0
    g = np.array([[[1.0, 2.0], [3.0, 4.0]]])  # rows (ky, kx)
    np.testing.assert_allclose(strain._detector_frame(g, 0.0)[0], [[3.0, 4.0], [1.0, 2.0]])
    t = 0.4
    r = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    np.testing.assert_allclose(r @ strain._detector_frame(g, t)[0], [[3.0, 4.0], [1.0, 2.0]], atol=1e-12)


def test_near_and_cleaned_by_hand():
    assert strain._near(None, 2.0) is None
    bad = np.zeros((9, 9), bool)
    bad[4, 4] = True
    near = strain._near(bad, 1.5)
    yy, xx = np.mgrid[:9, :9]
    np.testing.assert_array_equal(near, np.hypot(yy - 4, xx - 4) <= 1.5)
    block = np.arange(2 * 81, dtype=np.float64).reshape(2, 9, 9)
    block[1, 0, 0] = np.nan
    before = block.copy()
    out = strain._cleaned(block, bad)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(block, before)  # not modified in place
    assert out[1, 0, 0] == 0.0  # non-finite -> 0
    for i in range(2):
        nb = block[i, 3:6, 3:6].sum() - block[i, 4, 4]
        assert out[i, 4, 4] == pytest.approx(nb / 8)  # the mean of its 8 neighbours
    np.testing.assert_array_equal(np.delete(out.reshape(2, -1), 40, axis=1)[0],
                                  np.delete(block.reshape(2, -1), 40, axis=1)[0])
    # a 3 x 3 block of bad pixels: its centre has no good 3 x 3 neighbour and takes the 7 x 7 mean
    bad3 = np.zeros((9, 9), bool)
    bad3[3:6, 3:6] = True
    out = strain._cleaned(np.ones((1, 9, 9)) * 2.0, bad3)
    np.testing.assert_allclose(out, 2.0)
    assert strain._cleaned(block, None)[0, 4, 4] == block[0, 4, 4]
    assert strain._cleaned(block, np.zeros((9, 9), bool))[0, 4, 4] == block[0, 4, 4]


def test_template_patch_symmetrised_and_radial_profile():
    from test_diskfind import _disk

    img = _disk((41, 41), (20.3, 19.6), radius=4.0, amp=100.0, bg=7.0)
    p = strain._template_patch(img, np.array([20.3, 19.6]), 8)
    assert p.shape == (17, 17)
    from scipy import ndimage

    np.testing.assert_allclose(ndimage.center_of_mass(np.clip(p, 0, None)), [8.0, 8.0], atol=0.05)
    yy, xx = np.mgrid[-8:9, -8:9]
    rho = np.hypot(yy, xx)
    assert (p[rho > 8.5] == 0).all()  # the circular taper
    assert np.abs(p[(rho > 6.5) & (rho < 7.5)]).max() < 2.0  # background (7) removed; Fourier-shift ringing ~1.3
    assert p[rho < 2].min() > 80.0  # the disk (100 counts above it) stays
    # rotational average: equal values at equal distances, and a symmetric disk unchanged
    asym = p * (1 + 0.1 * np.arange(17)[None, :] / 17)
    s = strain._symmetrised(asym)
    assert s[8, 4] == pytest.approx(s[4, 8]) and s[8, 12] == pytest.approx(s[12, 8])
    assert s[8, 4] == pytest.approx(s[8, 12])
    sym = np.exp(-np.hypot(yy, xx) ** 2 / 8)
    np.testing.assert_allclose(strain._symmetrised(sym), sym, atol=0.02)
    # the radial profile of many sub-pixel disks: normalised to 1 at its maximum, falling to ~0 beyond the edge
    hist = np.zeros((2, int(9 / strain.PROFILE_BIN_PX) + 1))
    rng = np.random.default_rng(3)
    for _ in range(60):
        c = 20 + rng.uniform(-0.5, 0.5, 2)
        strain._profile_samples(_disk((41, 41), c, radius=4.0, amp=100.0, bg=7.0), c, 8, hist)
    r, v = strain._radial_profile(hist)
    assert v.max() == pytest.approx(1.0) and np.all(np.diff(r) >= strain.PROFILE_BIN_PX - 1e-12)
    assert v[r < 3.0].min() > 0.9 and abs(v[r > 6.0]).max() < 0.05
    assert np.interp(4.0, r, v) == pytest.approx(0.5, abs=0.1)  # half height at the disk edge
    assert strain._radial_profile(np.zeros_like(hist)) is None


def test_reduced_basis_tolerates_scattered_disk_positions():
    # measured disk positions scatter by a fraction of a pixel: difference vectors within half the minimum
    # length of each other count as the same lattice vector
    hk = np.array([[h, k] for h in range(-2, 3) for k in range(-2, 3)], float)
    pts = 50.0 + hk @ np.array([[0.0, 10.0], [14.0, 0.0]]).T
    pts = pts + np.random.default_rng(9).normal(0, 0.3, pts.shape)
    basis = strain._reduced_basis(pts, min_len=4.0)
    assert basis is not None
    np.testing.assert_allclose(sorted(np.linalg.norm(basis, axis=0)), [10.0, 14.0], atol=0.2)


def test_content_prior_is_estimated_from_dynamical_disks_in_any_intensity_unit():
    # disks with dynamical contents (non-uniform): the empirical prior rises above its floor (0.02); it is a
    # relative change, so data in other intensity units (x 1e-3, e.g. normalised counts) give the same priors
    # and the same strain (float32 data: agreement to ~1e-6 relative, measured 2e-7)
    zero = np.zeros((4, 6))
    sim = stem4d.simulate_fields(zero, zero, zero, zero, np.full((4, 6), 60.0), dose=1e5, disks="dynamical", rng=0)
    cube = sim.datacube.values
    counts = strain.measure_strain(cube)
    scaled = strain.measure_strain(cube * 1e-3)
    assert counts.attrs["content_slope_prior"] > 0.05 and counts.attrs["content_curvature_prior"] > 0.03
    for k in ("content_slope_prior", "content_curvature_prior"):
        assert scaled.attrs[k] == pytest.approx(counts.attrs[k], rel=1e-5), k
    for k in ("exx", "eyy", "exy", "theta"):
        np.testing.assert_allclose(scaled[k].values, counts[k].values, atol=1e-6)


def test_descan_plane_uses_the_re_averaged_direct_beam_template():
    # a 12-px descan smears the mean pattern's direct beam (the first template); the direct beams are located
    # again with the template re-averaged on the descan-corrected beams, so the plane is as good as without a
    # strong descan: max error 0.1 px (measured 0.033 px; with the smeared first template 0.64 px)
    sim = stem4d.simulate_uniform(exx=0.01, scan_shape=(5, 9), reference_columns=3, dose=1e4, rng=12, descan_px=12.0)
    d = strain.diagnostics(sim.datacube)
    truth = np.stack([sim.origin_ky.values, sim.origin_kx.values], axis=-1)
    assert np.abs(d["origin_fit"] - truth).max() < 0.1
