"""Shared input checks.

Every public function of :mod:`chemomech` validates its arguments here first, so
that users see a ``TypeError`` or ``ValueError`` that names the argument, what
was expected and what was received, instead of an error from deep inside numpy,
scikit-fem or py4DSTEM.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import xarray as xr


def dims(da: object, expected: Sequence[str], *, name: str) -> xr.DataArray:
    """Check that `da` is a DataArray with exactly the dims `expected`."""
    if not isinstance(da, xr.DataArray):
        raise TypeError(f"{name} must be an xarray.DataArray, got {type(da).__name__}")
    if da.dims != tuple(expected):
        raise ValueError(
            f"{name} must have dims {tuple(expected)}, got {da.dims}; "
            "use .transpose(...) or .rename(...) first"
        )
    return da


def array(
    a: object,
    *,
    name: str,
    ndim: int | Iterable[int] | None = None,
    shape: tuple[int | None, ...] | None = None,
    dtype_kind: str = "biufc",
    finite: bool = False,
    any_finite: bool = False,
) -> np.ndarray:
    """Convert `a` to a numpy array and check its dimensionality and values.

    Parameters
    ----------
    a : array_like
        The value to check.
    name : str
        Argument name used in error messages.
    ndim : int or iterable of int, optional
        Allowed numbers of dimensions.
    shape : tuple, optional
        Expected shape; ``None`` entries match any length.
    dtype_kind : str, optional
        Allowed ``numpy.dtype.kind`` characters (default: numbers and bools).
    finite : bool, optional
        Require every value to be finite.
    any_finite : bool, optional
        Require at least one finite value (NaN-only data are rejected).
    """
    if isinstance(a, (str, bytes)) or a is None:
        raise TypeError(f"{name} must be an array of numbers, got {type(a).__name__}")
    arr = np.asarray(a.values if isinstance(a, xr.DataArray) else a)
    if arr.dtype.kind not in dtype_kind:
        raise TypeError(f"{name} must hold numbers (dtype kind in {dtype_kind!r}), got dtype {arr.dtype}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if arr.ndim not in allowed:
            raise ValueError(
                f"{name} must be {' or '.join(f'{n}-D' for n in allowed)}, "
                f"got {arr.ndim}-D with shape {arr.shape}"
            )
    if shape is not None:
        ok = arr.ndim == len(shape) and all(s is None or s == n for s, n in zip(shape, arr.shape))
        if not ok:
            want = tuple("any" if s is None else s for s in shape)
            raise ValueError(f"{name} must have shape {want}, got {arr.shape}")
    if arr.dtype.kind in "fc":
        if finite and not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} must contain only finite values; found NaN or inf")
        if any_finite and arr.size and not np.any(np.isfinite(arr)):
            raise ValueError(f"{name} contains no finite values (all NaN or inf)")
    return arr


def mask(m: object, *, name: str, shape: tuple[int, ...] | None = None, min_count: int = 1) -> np.ndarray:
    """Check a boolean mask: right shape, bool dtype and at least `min_count` pixels set."""
    arr = np.asarray(m.values if isinstance(m, xr.DataArray) else m)
    if arr.dtype != bool:
        raise TypeError(f"{name} must be a boolean mask, got dtype {arr.dtype}")
    if shape is not None and arr.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {arr.shape}")
    count = int(arr.sum())
    if count < min_count:
        raise ValueError(f"{name} selects {count} pixels; at least {min_count} needed")
    return arr


def choice(value: object, allowed: Iterable[object], *, name: str) -> object:
    """Check that `value` is one of `allowed`."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


def positive(value: object, *, name: str, allow_zero: bool = False) -> float:
    """Check that `value` is a finite real number > 0 (or >= 0)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    v = float(value)
    if not np.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'} and finite, got {value!r}")
    return v


def no_unknown_options(options: dict, allowed: Iterable[str], *, func: str) -> None:
    """Raise if `options` has keys outside `allowed`."""
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(f"{func}() got unknown option(s) {unknown}; allowed: {sorted(allowed)}")


def rng(seed: object) -> np.random.Generator:
    """Return a ``numpy.random.Generator`` from a Generator, an int seed or None."""
    if seed is not None and not isinstance(seed, (int, np.integer, np.random.Generator)):
        raise TypeError(f"rng must be a numpy.random.Generator, an int seed or None, got {type(seed).__name__}")
    return np.random.default_rng(seed)


def energies(e: np.ndarray, *, name: str) -> None:
    """Check that photon energies are strictly increasing and given in eV."""
    if e.size < 2 or np.any(np.diff(e) <= 0):
        raise ValueError(f"{name} energies must be strictly increasing (eV); got {e[:6]}...; "
                         "sort the stack with .sortby('energy') and drop duplicates")
    if e.max() < 100.0:
        raise ValueError(f"{name} energies look like keV (max {e.max():g}); give energies in eV")


def energy_stack(stack: object, *, name: str = "stack") -> xr.DataArray:
    """Check an ``("energy", "y", "x")`` stack: eV coordinate, >= 5 frames, each with finite values."""
    dims(stack, ("energy", "y", "x"), name=name)
    if "energy" not in stack.coords:
        raise ValueError(f"{name} must have an 'energy' coordinate in eV")
    e = array(stack["energy"], name=f"{name} energy", ndim=1, dtype_kind="iuf", finite=True)
    energies(e.astype(float), name=name)
    if stack.sizes["energy"] < 5:
        raise ValueError(f"{name} needs at least 5 energies for a 3-parameter fit, got {stack.sizes['energy']}")
    arr = array(stack, name=name, ndim=3, dtype_kind="iufc")
    finite = np.isfinite(arr).reshape(arr.shape[0], -1).any(axis=1)
    if not finite.all():
        bad = e[~finite]
        raise ValueError(f"{name} has frames with no finite values (all NaN) at energies {bad.tolist()} eV; "
                         "drop them with stack.drop_sel(energy=...)")
    return stack


#: Variables every correlated stack holds (plus any virtual images); see chemomech.correlate.
STACK_VARIABLES = ("X", "X_sigma", "thickness", "exx", "eyy", "exy", "theta", "mask")


def correlated_stack(ds: object, *, name: str) -> xr.Dataset:
    """Check that `ds` is a Dataset with every variable of :data:`STACK_VARIABLES`."""
    if not isinstance(ds, xr.Dataset):
        raise TypeError(f"{name} must be an xarray.Dataset, got {type(ds).__name__}")
    missing = [k for k in STACK_VARIABLES if k not in ds]
    if missing:
        raise ValueError(f"{name} is not a correlated stack: missing {missing}")
    return ds
