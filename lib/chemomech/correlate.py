"""Assemble the correlated stack: strain and Li fraction of one particle on one grid.

The strain maps come on the 4D-STEM scan grid (the *moving* grid of
:func:`chemomech.registration.register`), the Li-fraction maps on the X-ray
grid (the *fixed* grid). :func:`correlate` brings the strain onto the X-ray
grid with the registration and returns one :class:`xarray.Dataset` — the input
of the learning chapter — that :func:`chemomech.io.save_stack` writes to NetCDF.

Three assembly steps make the stack fit for learning (each an option of
:func:`correlate`, on by default; the end-to-end chapter measures what each is
worth):

- ``extend_edges``: the strain maps are extended by one scan pixel beyond
  their mask before resampling, so the stack reaches the particle edge on the
  finer X-ray grid (otherwise the learning puts a traction-free edge inside
  the particle, which biases the learned slopes by about 2 %);
- ``match_resolution``: each map is given the other's resolution, so that both
  end with the same operator. X is brought to the resolution of the strain —
  sampled at the scan positions and interpolated back, the operator the strain
  went through — and its standard deviation is scaled by the factor that
  operator applies to white noise. The strain is given the X-ray pixel's own
  resolution (:data:`XRAY_PIXEL_KERNEL`): an X-ray pixel integrates X over its
  area (a one-pixel box) and the sampling at the scan positions interpolates
  it linearly (a one-pixel triangle), which the strain, a point sample at each
  scan position, never went through. Without it X is smoother than the strain
  it is regressed against, and the learned slopes come out too large (about
  +0.5 % on the twin study; a Berkson-like error: the smoothed regressor has
  less variance than the response it explains). X is not clipped to [0, 1]
  (clipping would bias it where X = 0 and X = 1 domains sit); the noise it
  keeps is spatially correlated by the operator, which :func:`x_noise_sampler`
  reproduces for the learning's SIMEX;
- ``crystal_angle_rad``: the strain is turned into the crystal frame (x ∥ a,
  y ∥ c), the frame in which the eigenstrain is diagonal.

Scalars (virtual images) are simply resampled. The strain is a tensor: the
two frames differ by a rotation and possibly a mirror, so its components are
transformed with the orthogonal part ``Q`` of the registration (pixel-size and
shear distortions of the scan are not rotations of the crystal):
``eps_fixed = Q^T eps_moving Q`` and ``theta_fixed = det(Q) theta_moving``.
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from scipy import ndimage

from . import _validate, geometry
from . import strain as strain_module
from .registration import Registration

__all__ = ["STACK_VARIABLES", "XRAY_PIXEL_KERNEL", "align_to_crystal", "correlate", "noise_gain",
           "x_noise_sampler"]

#: Variables every correlated stack holds (plus any virtual images).
STACK_VARIABLES = _validate.STACK_VARIABLES
_STRAIN = ("exx", "eyy", "exy", "theta")
_XANES = ("X", "X_sigma", "thickness")
#: The X-ray pixel's resolution along each axis, on the X-ray grid: a one-pixel box (the pixel integrates X)
#: convolved with a one-pixel triangle (linear interpolation at the scan positions) is the quadratic B-spline,
#: whose values at the integer offsets -1, 0, 1 are 1/8, 3/4, 1/8 (variance 1/12 + 1/6 = 1/4 px^2).
XRAY_PIXEL_KERNEL = np.array([0.125, 0.75, 0.125])
_IDENTITY = np.array([0.0, 1.0, 0.0])


def correlate(strain: xr.Dataset, xanes: xr.Dataset, registration: Registration, *,
              crystal_angle_rad: float | None = None, extend_edges: bool = True,
              match_resolution: bool = True, strain_kernel: bool = True) -> xr.Dataset:
    """The correlated stack: strain, Li fraction and virtual images on the X-ray grid.

    Parameters
    ----------
    strain : xarray.Dataset
        On the 4D-STEM scan grid ``("y", "x")`` (the moving grid of
        `registration`): ``exx, eyy, exy, theta``, optionally ``mask`` and any
        other numeric variables on ``("y", "x")`` (virtual images), which are
        resampled as scalars; variables on other dims are ignored.
    xanes : xarray.Dataset
        On the X-ray grid (the fixed grid of `registration`): ``X, X_sigma,
        thickness`` and optionally ``mask`` (other variables, e.g. ``residual``
        or the ``shifts`` of :func:`chemomech.xanes.map_lithium`, are ignored).
    registration : chemomech.registration.Registration
        Mapping X-ray (fixed) positions to 4D-STEM (moving) positions.
    crystal_angle_rad : float, optional
        Angle of the crystal a axis from the X-ray image x axis (radians,
        positive turns x towards y). Given: the strain is returned in the
        crystal frame (``exx`` = e_aa, ``eyy`` = e_cc, ``exy`` = e_ac;
        :func:`chemomech.strain.to_crystal_frame`). ``None``: the X-ray frame.
    extend_edges : bool
        Extend the strain maps by one scan pixel beyond their mask (nearest
        valid value) before resampling.
    match_resolution : bool
        Bring X to the 4D-STEM resolution (``X``; the X-ray-resolution map is
        kept as ``X_xray``, clipped to [0, 1] for display), scale ``X_sigma``
        by the noise gain of that operator, give the strain components the
        X-ray pixel's resolution (:data:`XRAY_PIXEL_KERNEL`, normalised within
        the mask), and keep only the largest connected piece of the joint mask. ``X`` itself is not clipped: noise
        may take it slightly outside [0, 1], which the learning accepts.
    strain_kernel : bool
        With `match_resolution`: apply the X-ray pixel kernel to the strain
        (default). ``False`` leaves that one step out, to measure what it is
        worth (:func:`chemomech.study.assembly_ablation`); the stack's
        ``strain_kernel`` attribute is then the identity ``[0, 1, 0]``.

    Returns
    -------
    xarray.Dataset
        On the X-ray grid: ``X, X_sigma, thickness, exx, eyy, exy, theta`` (NaN
        outside the joint mask), ``X_xray`` with `match_resolution`, the virtual
        images (NaN outside the scan field only), and ``mask`` = X-ray mask &
        strain mask & all finite (its largest piece with `match_resolution`).

    Examples
    --------
    >>> yx = {"y": np.arange(4.0), "x": np.arange(5.0)}
    >>> s = xr.Dataset({k: (("y", "x"), np.full((4, 5), v)) for k, v in
    ...                 dict(exx=0.01, eyy=0.0, exy=0.0, theta=0.0).items()}, coords=yx)
    >>> x = xr.Dataset({k: (("y", "x"), np.full((4, 5), 0.5)) for k in ("X", "X_sigma", "thickness")}, coords=yx)
    >>> reg = Registration.from_matrix(np.eye(3), x.X, s.exx)
    >>> stack = correlate(s, x, reg)
    >>> float(stack.exx[1, 1]), int(stack.mask.sum())
    (0.01, 20)
    """
    if not isinstance(strain, xr.Dataset) or not isinstance(xanes, xr.Dataset):
        raise TypeError("strain and xanes must be xarray.Datasets, got "
                        f"{type(strain).__name__} and {type(xanes).__name__}")
    if not isinstance(registration, Registration):
        raise TypeError(f"registration must be a Registration, got {type(registration).__name__}")
    for name, ds, need in (("strain", strain, _STRAIN), ("xanes", xanes, _XANES)):
        missing = [k for k in need if k not in ds]
        if missing:
            raise ValueError(f"{name} is missing variables {missing}; it needs {list(need)}")
        for k in need + (("mask",) if "mask" in ds else ()):
            _validate.dims(ds[k], ("y", "x"), name=f"{name}.{k}")
    if not registration.moving_grid.matches(strain["exx"]):
        raise ValueError(f"strain must be on the registration's moving grid {registration.moving_grid.shape} "
                         f"(same shape and coordinates), got shape {strain['exx'].shape}")
    if not registration.fixed_grid.matches(xanes["X"]):
        raise ValueError(f"xanes must be on the registration's fixed grid {registration.fixed_grid.shape} "
                         f"(same shape and coordinates), got shape {xanes['X'].shape}")

    for name, val in (("extend_edges", extend_edges), ("match_resolution", match_resolution),
                      ("strain_kernel", strain_kernel)):
        if not isinstance(val, (bool, np.bool_)):
            raise TypeError(f"{name} must be a bool, got {type(val).__name__}")
    if crystal_angle_rad is not None:
        _validate.array(crystal_angle_rad, name="crystal_angle_rad", ndim=0, finite=True)
    if extend_edges and "mask" in strain:
        strain = _extend_edges(strain)
    out = _resample(strain, xanes, registration)
    if crystal_angle_rad is not None:
        out = strain_module.to_crystal_frame(out, float(crystal_angle_rad))
        out.attrs["crystal_angle_rad"] = float(crystal_angle_rad)
    if match_resolution:
        out = _match_resolution(out, xanes["X"], registration, XRAY_PIXEL_KERNEL if strain_kernel else _IDENTITY)
    return out


def _resample(strain: xr.Dataset, xanes: xr.Dataset, registration: Registration) -> xr.Dataset:
    """Strain (rotated into the X-ray frame) and virtual images on the X-ray grid; the joint mask."""
    s_mask = np.asarray(strain["mask"].values, bool) if "mask" in strain else np.ones(strain["exx"].shape, bool)
    comps = [np.where(s_mask, strain[k].values.astype(float), np.nan) for k in _STRAIN]
    rotated = geometry.rotate_strain(*comps, registration.frame_rotation())
    out = xr.Dataset(coords={c: xanes[c] for c in ("y", "x") if c in xanes.coords})
    warped = {k: registration.warp(v) for k, v in zip(_STRAIN, rotated)}
    x_mask = np.asarray(xanes["mask"].values, bool) if "mask" in xanes else np.ones(xanes["X"].shape, bool)
    joint = x_mask.copy()
    for v in list(warped.values()) + [xanes[k].values for k in _XANES]:
        joint &= np.isfinite(v)
    for k in _XANES:
        out[k] = (("y", "x"), np.where(joint, xanes[k].values.astype(float), np.nan), dict(xanes[k].attrs))
    labels = {"exx": "strain exx (X-ray frame)", "eyy": "strain eyy (X-ray frame)",
              "exy": "strain exy (X-ray frame)", "theta": "rigid rotation (X-ray frame)"}
    for k in _STRAIN:
        attrs = {"units": strain[k].attrs.get("units", "rad" if k == "theta" else "1"), "long_name": labels[k]}
        out[k] = (("y", "x"), np.where(joint, warped[k], np.nan), attrs)
    for k in strain.data_vars:
        if k in _STRAIN or k == "mask" or strain[k].dims != ("y", "x"):
            continue
        img = strain[k].values
        if img.dtype == bool:
            continue
        out[k] = (("y", "x"), registration.warp(img.astype(float)),
                  {"units": strain[k].attrs.get("units", "1"),
                   "long_name": strain[k].attrs.get("long_name", k) + " (resampled)"})
    out["mask"] = (("y", "x"), joint, {"units": "1", "long_name": "joint mask (X-ray & strain)"})
    m = registration.metrics
    out.attrs.update({
        "frame_rotation_deg": registration.frame_angle_deg(),
        "frame_mirrored": int(np.linalg.det(registration.frame_rotation()) < 0),
        "registration_matrix": registration.matrix.ravel(),
        "registration_dice": float(m.get("dice", np.nan)),
        "registration_mutual_information": float(m.get("mutual_information", np.nan)),
    })
    return out


def _nearest_fill(values: np.ndarray) -> np.ndarray:
    """NaN pixels take the value of the nearest finite pixel (so interpolation does not erode a mask)."""
    bad = ~np.isfinite(values)
    if not bad.any():
        return values.astype(float)
    idx = ndimage.distance_transform_edt(bad, return_distances=False, return_indices=True)
    return values[tuple(idx)].astype(float)


def _extend_edges(ds: xr.Dataset) -> xr.Dataset:
    """The strain maps extended by one scan pixel beyond their mask (nearest valid value)."""
    mask = np.asarray(ds["mask"].values, bool)
    ring = ndimage.binary_dilation(mask, iterations=1)
    out = ds.copy()
    for k in _STRAIN:
        filled = _nearest_fill(np.where(mask, ds[k].values, np.nan))
        out[k] = ds[k].copy(data=np.where(ring, filled, np.nan))
    out["mask"] = ds["mask"].copy(data=ring)
    return out


def _sample_on_moving(image: np.ndarray, reg: Registration) -> np.ndarray:
    """Bilinear samples of a fixed-grid image at the moving grid's pixel centres (NaN outside)."""
    ny, nx = reg.moving_grid.shape
    rr, cc = np.meshgrid(np.arange(ny, dtype=float), np.arange(nx, dtype=float), indexing="ij")
    pts = geometry.apply_affine(np.linalg.inv(reg.matrix), np.stack([rr.ravel(), cc.ravel()], axis=1))
    out = ndimage.map_coordinates(image, pts.T, order=1, mode="constant", cval=np.nan)
    return out.reshape(ny, nx)


def noise_gain(registration: Registration, mask: np.ndarray) -> float:
    """Factor by which sampling at the scan positions and interpolating back scales white noise.

    The operator is linear, so its effect on unit white noise is deterministic
    in distribution; eight realisations from a fixed seed estimate its median
    over `mask` (fixed-grid pixels) to a few per cent.

    Parameters
    ----------
    registration : chemomech.registration.Registration
    mask : numpy.ndarray of bool
        Fixed-grid pixels where the gain is wanted.

    Returns
    -------
    float
        Median gain (1.0 when no pixel of `mask` is covered).
    """
    shape = registration.fixed_grid.shape
    m = _validate.mask(mask, name="mask", shape=shape, min_count=0)
    gen = np.random.default_rng(0)
    sq = np.zeros(shape)
    for _ in range(8):
        sq += registration.warp(_sample_on_moving(gen.standard_normal(shape), registration)) ** 2
    vals = np.sqrt(sq / 8)[m]
    vals = vals[np.isfinite(vals)]
    return float(np.median(vals)) if vals.size else 1.0


def x_noise_sampler(registration: Registration, X_sigma, *, match_resolution: bool = True):
    """A function drawing the noise of the stack's X, with the spatial correlation resampling gives it.

    The X map's noise is taken as independent between X-ray pixels, with standard
    deviation `X_sigma` (X-ray resolution, before any noise gain). With
    `match_resolution` (as :func:`correlate` does by default) each draw is passed
    through the same operator as X: sampled at the scan positions and
    interpolated back. Pass the result to ``fit_eigenstrain(X_noise=...)``
    for SIMEX with the noise the stack's X really carries.

    Parameters
    ----------
    registration : chemomech.registration.Registration
        The registration the stack was assembled with.
    X_sigma : array_like or xarray.DataArray
        Standard deviation of X on the X-ray (fixed) grid, e.g. ``xanes["X_sigma"]``
        (NaN pixels take the nearest finite value).
    match_resolution : bool
        Whether the stack's X went through the resolution matching.

    Returns
    -------
    callable
        ``draw(rng) -> numpy.ndarray`` of the fixed grid's shape (NaN where the
        scan does not cover it).

    Examples
    --------
    >>> reg = Registration.from_matrix(np.diag([0.5, 0.5, 1.0]), np.zeros((40, 40)), np.zeros((20, 20)))
    >>> draw = x_noise_sampler(reg, np.full((40, 40), 0.1))
    >>> d = draw(np.random.default_rng(0))[4:36, 4:36]
    >>> bool(0.03 < d.std() < 0.1)   # averaged: less than the X-ray noise, and correlated
    True
    """
    if not isinstance(registration, Registration):
        raise TypeError(f"registration must be a Registration, got {type(registration).__name__}")
    shape = registration.fixed_grid.shape
    sig = _validate.array(X_sigma, name="X_sigma", shape=shape, any_finite=True).astype(float)
    sig = _nearest_fill(sig)
    if np.any(sig < 0):
        raise ValueError("X_sigma must be >= 0")

    def draw(rng: np.random.Generator) -> np.ndarray:
        white = sig * _validate.rng(rng).standard_normal(shape)
        if not match_resolution:
            return white
        return registration.warp(_sample_on_moving(white, registration))

    return draw


def _match_resolution(out: xr.Dataset, X: xr.DataArray, reg: Registration, kernel: np.ndarray) -> xr.Dataset:
    """X at the strain's resolution (sigma scaled by the noise gain), one mask, the strain filtered with `kernel`."""
    keep = geometry.largest_component(out["mask"].values)
    x_full = _nearest_fill(np.asarray(X.values, dtype=float))
    matched = reg.warp(_sample_on_moving(x_full, reg))
    gain = noise_gain(reg, keep)
    out["X_xray"] = out["X"].clip(0.0, 1.0).where(keep).assign_attrs(
        units="1", long_name="Li fraction X at the X-ray resolution")
    out["X"] = out["X"].copy(data=np.where(keep, matched, np.nan)).assign_attrs(
        units="1", long_name="Li fraction X at the 4D-STEM resolution")
    out["X_sigma"] = (out["X_sigma"] * gain).assign_attrs(units="1", long_name="standard deviation of X")
    keep &= np.isfinite(out["X"].values)
    for k in _STRAIN:
        out[k] = out[k].copy(data=_pixel_resolution(out[k].values, keep, kernel))
    for k in ("X", "X_xray", "X_sigma", "thickness") + _STRAIN:
        out[k] = out[k].where(keep)
    out["mask"] = out["mask"].copy(data=keep)
    out.attrs["X_noise_gain"] = gain
    out.attrs["strain_kernel"] = kernel
    return out


def _pixel_resolution(values: np.ndarray, mask: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """`values` filtered with `kernel` (three taps) along both axes, normalised within `mask`."""
    m = mask & np.isfinite(values)
    num = np.where(m, values, 0.0).astype(float)
    den = m.astype(float)
    for axis in (0, 1):
        num = ndimage.correlate1d(num, kernel, axis=axis, mode="constant")
        den = ndimage.correlate1d(den, kernel, axis=axis, mode="constant")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(m, num / den, np.nan)


def align_to_crystal(stack: xr.Dataset, crystal_angle_rad: float | None = None) -> xr.Dataset:
    """Resample a stack onto a grid whose x axis runs along the crystal a axis.

    The learning step (:func:`chemomech.learning.fit_eigenstrain`) solves
    mechanical equilibrium on the pixel grid with the eigenstrain diagonal
    along the grid axes, so the grid itself must be aligned with the crystal,
    not only the strain components. This turns the image by the crystal angle
    (bilinear for the maps, nearest neighbour for the mask) onto a grid of the
    same pixel size that covers the particle. Strain components are left as
    they are: they must already be crystal-frame components
    (``correlate(..., crystal_angle_rad=...)`` or a file that stores them so).

    Parameters
    ----------
    stack : xarray.Dataset
        Maps on ``("y", "x")`` with a ``mask``; square pixels.
    crystal_angle_rad : float, optional
        Angle of the crystal a axis from the image x axis (positive turns x
        towards y). Default: ``stack.attrs["crystal_angle_rad"]``.

    Returns
    -------
    xarray.Dataset
        The same variables on the aligned grid (coordinates in the stack's
        units, centred on the particle); NaN and ``mask == False`` outside;
        ``attrs["crystal_angle_rad"] = 0.0`` and ``attrs["image_angle_rad"]``
        the angle that was removed.

    Examples
    --------
    >>> yx = {"y": np.arange(20.0), "x": np.arange(30.0)}
    >>> m = np.zeros((20, 30), bool); m[5:15, 8:22] = True          # 10 x 14 px, long along x
    >>> ds = xr.Dataset({"X": (("y", "x"), np.where(m, 0.5, np.nan)), "mask": (("y", "x"), m)}, coords=yx)
    >>> turned = align_to_crystal(ds, np.pi / 2)                     # a along image y: the particle is now long in y
    >>> rows, cols = np.nonzero(turned.mask.values)
    >>> int(np.ptp(rows)) + 1, int(np.ptp(cols)) + 1
    (14, 10)
    """
    if not isinstance(stack, xr.Dataset) or "mask" not in stack:
        raise TypeError("stack must be an xarray.Dataset with a mask variable")
    angle = stack.attrs.get("crystal_angle_rad") if crystal_angle_rad is None else crystal_angle_rad
    if angle is None:
        raise ValueError("crystal_angle_rad not given and stack.attrs has no 'crystal_angle_rad'")
    angle = float(_validate.array(angle, name="crystal_angle_rad", ndim=0, finite=True))
    mask = _validate.mask(stack["mask"], name="stack.mask", min_count=1)
    y, x = (np.asarray(stack[c].values, dtype=float) for c in ("y", "x"))
    dy, dx = float(y[1] - y[0]), float(x[1] - x[0])
    if not np.isclose(abs(dy), abs(dx), rtol=1e-6):
        raise ValueError(f"stack must have square pixels to be turned, got {dy} x {dx}")
    step = abs(dx)
    # crystal-grid coordinates (u along a, v along c) of the particle pixels, in physical units
    rows, cols = np.nonzero(mask)
    py, px = y[rows], x[cols]
    cy, cx = py.mean(), px.mean()
    rot = geometry.rotation_yx(angle)   # columns: the crystal (c, a) axes in image (y, x) components
    uv = (np.stack([py - cy, px - cx], axis=1)) @ rot       # (v, u): coordinates along c and a
    lo = np.floor(uv.min(axis=0) / step) - 2
    hi = np.ceil(uv.max(axis=0) / step) + 2
    v_ax = np.arange(lo[0], hi[0] + 1) * step
    u_ax = np.arange(lo[1], hi[1] + 1) * step
    vv, uu = np.meshgrid(v_ax, u_ax, indexing="ij")
    img = np.stack([vv.ravel(), uu.ravel()], axis=1) @ rot.T + [cy, cx]   # back to image (y, x)
    idx = np.stack([(img[:, 0] - y[0]) / dy, (img[:, 1] - x[0]) / dx])
    shape = vv.shape

    def sample(values, order):
        out = ndimage.map_coordinates(np.asarray(values, dtype=float), idx, order=order, mode="constant",
                                      cval=np.nan)
        return out.reshape(shape)

    inside = sample(mask.astype(float), 0) > 0.5
    out = xr.Dataset(coords={"y": ("y", v_ax, {**stack["y"].attrs, "long_name": "along c (crystal grid)"}),
                             "x": ("x", u_ax, {**stack["x"].attrs, "long_name": "along a (crystal grid)"})},
                     attrs=dict(stack.attrs))
    for k, v in stack.data_vars.items():
        if k == "mask" or v.dims != ("y", "x") or v.dtype.kind not in "iuf":
            continue
        filled = np.where(mask, v.values, np.nan) if k in STACK_VARIABLES else v.values
        out[k] = (("y", "x"), sample(_nearest_fill(filled) if k in STACK_VARIABLES else filled, 1), dict(v.attrs))
    keep = inside & np.all([np.isfinite(out[k].values) for k in STACK_VARIABLES if k in out and k != "X_sigma"],
                           axis=0)
    keep = geometry.largest_component(keep)
    for k in STACK_VARIABLES:
        if k in out:
            out[k] = out[k].where(keep)
    out["mask"] = (("y", "x"), keep, {**stack["mask"].attrs, "units": "1"})
    out.attrs.update(crystal_angle_rad=0.0, image_angle_rad=angle)
    return out
