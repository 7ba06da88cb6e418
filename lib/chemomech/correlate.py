"""Assemble the correlated stack: strain and Li fraction of one particle on one grid.

The strain maps come on the 4D-STEM scan grid (the *moving* grid of
:func:`chemomech.registration.register`), the Li-fraction maps on the X-ray
grid (the *fixed* grid). :func:`correlate` brings the strain onto the X-ray
grid with the registration and returns one :class:`xarray.Dataset` — the input
of the learning chapter — that :func:`save_stack` writes to NetCDF.

Scalars (virtual images) are simply resampled. The strain is a tensor: the
two frames differ by a rotation and possibly a mirror, so its components are
transformed with the orthogonal part ``Q`` of the registration (pixel-size and
shear distortions of the scan are not rotations of the crystal):
``eps_fixed = Q^T eps_moving Q`` and ``theta_fixed = det(Q) theta_moving``.
"""

from __future__ import annotations

import os

import numpy as np
import xarray as xr

from . import _validate
from .registration import Registration

__all__ = ["STACK_VARIABLES", "correlate", "load_stack", "save_stack", "rotate_strain"]

#: Variables every correlated stack holds (plus any virtual images).
STACK_VARIABLES = ("X", "X_sigma", "thickness", "exx", "eyy", "exy", "theta", "mask")
_STRAIN = ("exx", "eyy", "exy", "theta")
_XANES = ("X", "X_sigma", "thickness")


def rotate_strain(exx: np.ndarray, eyy: np.ndarray, exy: np.ndarray, theta: np.ndarray,
                  q_yx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Express strain given in a *moving* frame in the *fixed* frame.

    Parameters
    ----------
    exx, eyy, exy, theta : numpy.ndarray
        Tensor strain components and rigid rotation in the moving frame.
    q_yx : numpy.ndarray
        ``(2, 2)`` orthogonal matrix, ``(y, x)`` order, taking fixed-frame
        directions to moving-frame directions
        (:meth:`chemomech.registration.Registration.frame_rotation`).

    Returns
    -------
    exx, eyy, exy, theta : numpy.ndarray
        In the fixed frame: ``eps_f = Q^T eps_m Q`` (``Q`` in ``(x, y)`` order),
        ``theta_f = det(Q) theta_m`` (a mirror reverses the sense of rotation).

    Examples
    --------
    >>> q = np.array([[0.0, 1.0], [-1.0, 0.0]])   # 90 degrees: x and y swap roles
    >>> [float(v) for v in rotate_strain(0.01, -0.002, 0.0, 0.001, q)]
    [-0.002, 0.01, 0.0, 0.001]
    """
    q_yx = _validate.array(q_yx, name="q_yx", shape=(2, 2), finite=True).astype(float)
    if not np.allclose(q_yx @ q_yx.T, np.eye(2), atol=1e-8):
        raise ValueError("q_yx must be orthogonal (a rotation or a rotation with a mirror)")
    q = q_yx[::-1, ::-1]  # (y, x) -> (x, y) order
    eps = np.array([[exx, exy], [exy, eyy]], dtype=float)
    e = np.einsum("ai,ab...,bj->ij...", q, eps, q)
    return e[0, 0], e[1, 1], e[0, 1], np.linalg.det(q) * np.asarray(theta, dtype=float)


def correlate(strain: xr.Dataset, xanes: xr.Dataset, registration: Registration) -> xr.Dataset:
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

    Returns
    -------
    xarray.Dataset
        On the X-ray grid: ``X, X_sigma, thickness, exx, eyy, exy, theta`` (NaN
        outside the joint mask), the virtual images (NaN outside the scan
        field only), and ``mask`` = X-ray mask & strain mask & all finite.
        Strain components are in the X-ray frame.

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

    s_mask = np.asarray(strain["mask"].values, bool) if "mask" in strain else np.ones(strain["exx"].shape, bool)
    comps = [np.where(s_mask, strain[k].values.astype(float), np.nan) for k in _STRAIN]
    rotated = rotate_strain(*comps, registration.frame_rotation())
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


def save_stack(stack: xr.Dataset, path: str | os.PathLike) -> None:
    """Write a correlated stack to NetCDF (h5netcdf engine); the mask is stored as int8.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> ds = xr.Dataset({k: (("y", "x"), np.zeros((2, 3))) for k in STACK_VARIABLES[:-1]})
    >>> ds["mask"] = (("y", "x"), np.ones((2, 3), bool))
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "stack.nc"
    >>> save_stack(ds, p); load_stack(p).mask.dtype
    dtype('bool')
    """
    _check_stack(stack, "stack")
    ds = stack.copy()
    ds["mask"] = ds["mask"].astype("int8")
    ds["mask"].attrs.update(stack["mask"].attrs, flag_meanings="outside inside")
    ds.to_netcdf(path, engine="h5netcdf")


def load_stack(path: str | os.PathLike) -> xr.Dataset:
    """Read a correlated stack written by :func:`save_stack` (mask back to bool)."""
    ds = xr.load_dataset(path, engine="h5netcdf")
    _check_stack(ds, f"file {os.fspath(path)!r}")
    ds["mask"] = ds["mask"].astype(bool).assign_attrs(ds["mask"].attrs)
    return ds


def _check_stack(ds: object, name: str) -> None:
    if not isinstance(ds, xr.Dataset):
        raise TypeError(f"{name} must be an xarray.Dataset, got {type(ds).__name__}")
    missing = [k for k in STACK_VARIABLES if k not in ds]
    if missing:
        raise ValueError(f"{name} is not a correlated stack: missing {missing}")
