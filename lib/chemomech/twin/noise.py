"""Measurement noise straight from the truth: noisy (strain, X) maps of a rendered particle.

The learning chapter and its tests need maps with a *known* noise model and no
instrument in between; this module draws them from a rendered twin particle.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from .. import _validate

__all__ = ["twin_measurement"]

_STRAIN = ("exx", "eyy", "exy")


def twin_measurement(ds: xr.Dataset, *, sigma_strain: float = 5e-4, sigma_X: float = 0.03,
                     clip: bool = True, rng: np.random.Generator | int | None = None
                     ) -> tuple[xr.Dataset, xr.DataArray]:
    """Turn a rendered twin particle into a noisy (strain, X) measurement.

    Parameters
    ----------
    ds : xarray.Dataset
        From :meth:`chemomech.twin.Particle.render` (crystal angle 0).
    sigma_strain : float
        Gaussian noise added to exx, eyy, exy (strain units).
    sigma_X : float
        Gaussian noise added to X.
    clip : bool
        Clip the noisy X into [0, 1], as a bounded spectral unmixing would.
    rng : numpy.random.Generator or int, optional

    Returns
    -------
    (xarray.Dataset, xarray.DataArray)
        Strain (``exx``, ``eyy``, ``exy``, ``mask``) and X, NaN outside the particle.

    Examples
    --------
    >>> from chemomech import twin
    >>> ds = twin.make_particle("d", seed=2, mesh_nrefs=3).render(pixel_size_nm=20.0)
    >>> s, x = twin_measurement(ds, rng=0)
    >>> bool(np.isnan(s.exx.values[0, 0]) and float(x.max()) <= 1.0)
    True
    """
    if not isinstance(ds, xr.Dataset) or not all(v in ds for v in ("X", "mask") + _STRAIN):
        raise TypeError("ds must be a rendered twin Dataset with X, mask, exx, eyy, exy")
    ss = _validate.positive(sigma_strain, name="sigma_strain", allow_zero=True)
    sx = _validate.positive(sigma_X, name="sigma_X", allow_zero=True)
    gen = _validate.rng(rng)
    m = ds["mask"].values.astype(bool)
    out = {}
    for v in _STRAIN:
        vals = np.where(m, ds[v].values + ss * gen.standard_normal(m.shape), np.nan)
        out[v] = (("y", "x"), vals, {"units": "1", "long_name": f"measured {v} (crystal frame)"})
    out["mask"] = (("y", "x"), m, {"units": "1", "long_name": "particle mask"})
    strain = xr.Dataset(out, coords={"y": ds["y"], "x": ds["x"]}, attrs={"particle": ds.attrs.get("particle", "")})
    xv = np.where(m, ds["X"].values + sx * gen.standard_normal(m.shape), np.nan)
    if clip:
        xv = np.clip(xv, 0.0, 1.0)
    X = xr.DataArray(xv, dims=("y", "x"), coords={"y": ds["y"], "x": ds["x"]},
                     attrs={"units": "1", "long_name": "measured Li fraction X"}, name="X")
    return strain, X
