"""Dynamical (multislice) contents of nanobeam Bragg disks of Li_xFePO4 viewed down [010].

The twin's 4D-STEM simulator can fill its Bragg disks with the intensities of this module
instead of a uniform value. Every point of a non-overlapping CBED disk belongs to one incident
plane-wave direction, so a disk's content is the intensity of beam g as a function of the
incident direction. The committed library ``data/stem4d_lfp-fp_cbed-library.npz`` holds these
intensities, computed with abTEM plane-wave multislice by ``data/make_cbed_library.py`` (see
``data/README.md``), for FePO4 and LiFePO4 at 300 kV over thickness 10-80 nm and incident
tilts up to 4.8 mrad along a* and c*. This module only reads and interpolates it with numpy and
xarray; it never imports abTEM.

Conventions: the incident direction is given in mrad, x along a*, y along c* (the twin's
x along a, y along c). Beam g = (h 0 l) is seen on the detector at ``g + k_t`` with
``k_t = direction / wavelength``. The library stores tilt_x, tilt_y >= 0; other quadrants follow
from the two mirrors of Pnma down b, ``I(h, l; tx, ty) = I(-h, l; -tx, ty) = I(h, -l; tx, -ty)``
(the first one after averaging the two slab terminations half a cell apart, as the library does).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import xarray as xr
from numpy.typing import ArrayLike

from .. import _validate

__all__ = ["LIBRARY_FILE", "default_library_path", "load_library", "disk_intensities"]

#: File name of the committed library in the repository's ``data/`` folder.
LIBRARY_FILE = "stem4d_lfp-fp_cbed-library.npz"
_REGENERATE = "OMP_NUM_THREADS=1 .venv/bin/python data/make_cbed_library.py"
_CHUNK = 4096  # interpolation points per block (memory ~ CHUNK x 8 x beams x 8 bytes)


def default_library_path() -> Path:
    """Path of the committed library: ``<repository>/data/stem4d_lfp-fp_cbed-library.npz``.

    Found from this file's location (``<repository>/lib/chemomech/twin/cbed.py``), so it works
    from any working directory of an editable install.
    """
    return Path(__file__).resolve().parents[3] / "data" / LIBRARY_FILE


def load_library(path: str | Path | None = None) -> xr.Dataset:
    """Load the multislice disk-content library as an ``xarray.Dataset``.

    Parameters
    ----------
    path : str or pathlib.Path, optional
        The ``.npz`` file written by ``data/make_cbed_library.py``; default
        :func:`default_library_path`.

    Returns
    -------
    xarray.Dataset
        ``intensity`` with dims ``("phase", "thickness_nm", "tilt_x_mrad", "tilt_y_mrad", "beam")``,
        the fraction of the incident electrons in beam (h 0 l) (units ``"1"``); coords ``phase``
        (``"FP"``, ``"LFP"``), ``thickness_nm`` (nm), ``tilt_x_mrad``, ``tilt_y_mrad`` (mrad, >= 0),
        ``h``, ``l`` (beam indices) and ``gx_inv_A``, ``gy_inv_A`` (dims ``("phase", "beam")``, 1/Å);
        ``attrs`` give voltage, lattices, atom-position sources, Debye-Waller model, slicing,
        sampling, abTEM version and date.

    Raises
    ------
    FileNotFoundError
        If the file is absent; the message names the path and the command that regenerates it.

    Examples
    --------
    >>> lib = load_library()
    >>> lib.intensity.dims
    ('phase', 'thickness_nm', 'tilt_x_mrad', 'tilt_y_mrad', 'beam')
    >>> [str(p) for p in lib.phase.values]
    ['FP', 'LFP']
    """
    file = default_library_path() if path is None else Path(path)
    if not file.is_file():
        raise FileNotFoundError(
            f"CBED library not found at {file}; regenerate it from the repository root with "
            f"`{_REGENERATE}` (needs the optional extra 'twin', abTEM 1.0.9)"
        )
    with np.load(file, allow_pickle=False) as z:
        raw = {k: z[k] for k in z.files}
    attrs = json.loads(str(raw["attrs_json"]))
    attrs = {k: v if isinstance(v, (str, int, float)) else json.dumps(v) for k, v in attrs.items()}
    coords = {
        "phase": ("phase", raw["phase"].astype(str), {"long_name": "phase", "units": "1"}),
        "thickness_nm": ("thickness_nm", raw["thickness_nm"], {"long_name": "specimen thickness", "units": "nm"}),
        "tilt_x_mrad": ("tilt_x_mrad", raw["tilt_x_mrad"], {"long_name": "incident direction, a*", "units": "mrad"}),
        "tilt_y_mrad": ("tilt_y_mrad", raw["tilt_y_mrad"], {"long_name": "incident direction, c*", "units": "mrad"}),
        "h": ("beam", raw["h"].astype(int), {"long_name": "Miller index h of beam (h 0 l)", "units": "1"}),
        "l": ("beam", raw["l"].astype(int), {"long_name": "Miller index l of beam (h 0 l)", "units": "1"}),
        "gx_inv_A": (("phase", "beam"), raw["gx_inv_A"], {"long_name": "beam g along a*", "units": "1/angstrom"}),
        "gy_inv_A": (("phase", "beam"), raw["gy_inv_A"], {"long_name": "beam g along c*", "units": "1/angstrom"}),
    }
    intensity = xr.Variable(
        ("phase", "thickness_nm", "tilt_x_mrad", "tilt_y_mrad", "beam"),
        raw["intensity"],
        {"long_name": "Bragg-beam intensity (fraction of the incident beam)", "units": "1"},
    )
    return xr.Dataset({"intensity": intensity}, coords=coords, attrs=attrs)


def _axis_weights(values: np.ndarray, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lower node index and weight of the upper node for linear interpolation on `grid`."""
    i = np.clip(np.searchsorted(grid, values, side="right") - 1, 0, len(grid) - 2)
    w = (values - grid[i]) / (grid[i + 1] - grid[i])
    return i, w


def _beam_permutations(h: np.ndarray, ell: np.ndarray) -> np.ndarray:
    """Rows: identity, h -> -h, l -> -l, both; each maps a beam to its mirror partner."""
    where = {(int(a), int(b)): j for j, (a, b) in enumerate(zip(h, ell))}
    try:
        flip_h = np.array([where[(-a, b)] for a, b in zip(h, ell)])
        flip_l = np.array([where[(a, -b)] for a, b in zip(h, ell)])
    except KeyError as err:
        raise ValueError(f"library beams are not closed under the mirrors of Pnma: {err} missing") from err
    return np.stack([np.arange(len(h)), flip_h, flip_l, flip_h[flip_l]])


def disk_intensities(
    library: xr.Dataset,
    X: ArrayLike,
    thickness_nm: ArrayLike,
    tilt_mrad: ArrayLike,
    q_mrad: ArrayLike,
) -> xr.DataArray:
    """Intensity of every beam at incident directions ``tilt + q``, for many positions and q.

    Parameters
    ----------
    library : xarray.Dataset
        From :func:`load_library`; must hold phases ``"FP"`` and ``"LFP"``.
    X : array_like
        Li fraction per position, shape ``(n,)`` (or a scalar), in [0, 1].
    thickness_nm : array_like
        Specimen thickness per position, nm, shape ``(n,)`` (or a scalar), inside the
        library's thickness range.
    tilt_mrad : array_like
        Crystal orientation per position, written as the incident-beam direction relative to
        [010] in the crystal frame, mrad, shape ``(n, 2)`` (or ``(2,)``), ``(x along a*, y along c*)``.
    q_mrad : array_like
        Directions inside the probe aperture, mrad, shape ``(m, 2)`` (or ``(2,)``). The point
        ``q`` of the disk of beam g lies at ``g + (tilt + q) / wavelength`` on the detector.

    Returns
    -------
    xarray.DataArray
        Dims ``("position", "q", "beam")``, coords ``h``, ``l`` on ``beam``; units ``"1"``
        (fraction of the incident beam). Memory is ``n x m x beams x 8`` bytes: call in blocks
        of positions for large scans.

    Raises
    ------
    ValueError
        If ``X`` is outside [0, 1], a thickness outside the library's range, or a direction
        ``tilt + q`` (or ``q`` alone) outside its tilt range; the message names the argument.

    Notes
    -----
    Trilinear interpolation in (thickness, |tilt_x|, |tilt_y|) inside each phase; directions
    with negative components use the mirrors ``I(h, l; tx, ty) = I(-h, l; -tx, ty) = I(h, -l; tx, -ty)``.
    Between phases the intensity is interpolated linearly in X,
    ``I = (1 - X) I_FP + X I_LFP``: an approximation (a real solid solution or two-phase
    column has its own dynamical scattering, not an average of the end members'); at X = 0 and
    X = 1 it returns the FePO4 and LiFePO4 tables exactly.

    Examples
    --------
    >>> lib = load_library()
    >>> out = disk_intensities(lib, 1.0, 30.0, [0.0, 0.0], [[0.0, 0.0], [0.2, 0.0]])
    >>> out.dims, out.shape[:2]
    (('position', 'q', 'beam'), (1, 2))
    >>> bool(out.sel(beam=0).values[0, 0] == lib.intensity.sel(phase="LFP", thickness_nm=30.0,
    ...      tilt_x_mrad=0.0, tilt_y_mrad=0.0).values[0])
    True
    """
    if not isinstance(library, xr.Dataset) or "intensity" not in library:
        raise TypeError(f"library must be the xarray.Dataset of load_library(), got {type(library).__name__}")
    phases = [str(p) for p in library.phase.values]
    if "FP" not in phases or "LFP" not in phases:
        raise ValueError(f"library must hold phases 'FP' and 'LFP' to interpolate in X, got {phases}")
    x_frac = np.atleast_1d(_validate.array(X, name="X", ndim=(0, 1), finite=True).astype(float))
    thick = np.atleast_1d(_validate.array(thickness_nm, name="thickness_nm", ndim=(0, 1), finite=True).astype(float))
    tilt = np.atleast_2d(_validate.array(tilt_mrad, name="tilt_mrad", ndim=(1, 2), finite=True).astype(float))
    q = np.atleast_2d(_validate.array(q_mrad, name="q_mrad", ndim=(1, 2), finite=True).astype(float))
    if tilt.shape[1] != 2:
        raise ValueError(f"tilt_mrad must have shape (n, 2) (x along a*, y along c*), got {tilt.shape}")
    if q.shape[1] != 2:
        raise ValueError(f"q_mrad must have shape (m, 2) (x along a*, y along c*), got {q.shape}")
    n = max(len(x_frac), len(thick), len(tilt))
    for name, arr in (("X", x_frac), ("thickness_nm", thick), ("tilt_mrad", tilt)):
        if len(arr) not in (1, n):
            raise ValueError(f"{name} has {len(arr)} positions, expected 1 or {n} like the other per-position inputs")
    x_frac = np.broadcast_to(x_frac, (n,))
    thick = np.broadcast_to(thick, (n,))
    tilt = np.broadcast_to(tilt, (n, 2))
    if np.any((x_frac < 0) | (x_frac > 1)):
        raise ValueError(f"X must lie in [0, 1], got values from {x_frac.min():g} to {x_frac.max():g}")
    t_grid = library.thickness_nm.values.astype(float)
    if np.any((thick < t_grid[0]) | (thick > t_grid[-1])):
        raise ValueError(
            f"thickness_nm must lie in the library's range [{t_grid[0]:g}, {t_grid[-1]:g}] nm, "
            f"got values from {thick.min():g} to {thick.max():g}"
        )
    gx = library.tilt_x_mrad.values.astype(float)
    gy = library.tilt_y_mrad.values.astype(float)
    limit = np.array([gx[-1], gy[-1]])
    if np.any(np.abs(q) > limit):
        raise ValueError(f"q_mrad must lie within ±{limit[0]:g}, ±{limit[1]:g} mrad, got up to {np.abs(q).max():g}")
    direction = tilt[:, None, :] + q[None, :, :]  # (n, m, 2)
    if np.any(np.abs(direction) > limit + 1e-12):
        worst = np.abs(direction).max(axis=(0, 1))
        raise ValueError(
            f"tilt_mrad + q_mrad must lie within ±{limit[0]:g} (x), ±{limit[1]:g} (y) mrad, the library's "
            f"tilt range; got |x| up to {worst[0]:g}, |y| up to {worst[1]:g}; reduce tilt_mrad"
        )
    table = library.intensity.transpose("phase", "thickness_nm", "tilt_x_mrad", "tilt_y_mrad", "beam")
    fp = table.sel(phase="FP").values.astype(np.float64)
    lfp = table.sel(phase="LFP").values.astype(np.float64)
    perms = _beam_permutations(library.h.values, library.l.values)
    n_beams = fp.shape[-1]

    flat_dir = direction.reshape(-1, 2)
    flat_t = np.repeat(thick, len(q))
    flat_x = np.repeat(x_frac, len(q))
    out = np.empty((len(flat_dir), n_beams))
    for s in range(0, len(flat_dir), _CHUNK):
        d = flat_dir[s : s + _CHUNK]
        it, wt = _axis_weights(flat_t[s : s + _CHUNK], t_grid)
        ix, wx = _axis_weights(np.abs(d[:, 0]), gx)
        iy, wy = _axis_weights(np.abs(d[:, 1]), gy)
        xs = flat_x[s : s + _CHUNK, None]
        vals = np.zeros((len(d), n_beams))
        for dt, ft in ((0, 1 - wt), (1, wt)):
            for dx, fx in ((0, 1 - wx), (1, wx)):
                for dy, fy in ((0, 1 - wy), (1, wy)):
                    w = (ft * fx * fy)[:, None]
                    corner = (it + dt, ix + dx, iy + dy)
                    vals += w * ((1 - xs) * fp[corner] + xs * lfp[corner])
        case = (d[:, 0] < 0).astype(int) + 2 * (d[:, 1] < 0).astype(int)
        out[s : s + _CHUNK] = np.take_along_axis(vals, perms[case], axis=1)
    result = out.reshape(n, len(q), n_beams)
    return xr.DataArray(
        result,
        dims=("position", "q", "beam"),
        coords={"h": ("beam", library.h.values), "l": ("beam", library.l.values)},
        attrs={"long_name": "Bragg-beam intensity (fraction of the incident beam)", "units": "1"},
    )
