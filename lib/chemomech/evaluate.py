"""Comparisons with ground truth: error tables, registration error trials, held-out tests.

The chapters and the study use these instead of re-typing "RMS error against
truth" in every cell. This is the one analysis-side module (besides
:mod:`chemomech.study`) that may import the digital twin (:mod:`chemomech.twin`),
because its job is to confront measurements with the truth that the twin knows.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import pandas as pd
import xarray as xr
from numpy.typing import ArrayLike

from . import _validate, geometry, registration, twin
from .learning import EigenstrainModel, residual_rms
from .twin import pair

__all__ = ["dynamical_dark_field", "error_table", "heldout_test", "region_errors", "registration_tre", "rms_error",
           "slope_table", "tre_trials"]


def _values(a) -> np.ndarray:
    return np.asarray(a.values if isinstance(a, (xr.DataArray, xr.Variable)) else a, dtype=float)


def rms_error(measured: ArrayLike, truth: ArrayLike, *, mask: ArrayLike | None = None) -> float:
    """Root-mean-square of ``measured - truth`` over `mask` and the pixels finite in both.

    Parameters
    ----------
    measured, truth : array_like or xarray.DataArray
        Same shape.
    mask : array_like of bool, optional
        Pixels to include (default: all).

    Returns
    -------
    float
        NaN when no pixel qualifies.

    Examples
    --------
    >>> rms_error([1.0, 2.0, np.nan], [1.0, 4.0, 0.0])
    1.4142135623730951
    """
    d = _difference(measured, truth, mask)
    return float(np.sqrt(np.mean(d**2))) if d.size else float("nan")


def _difference(measured, truth, mask) -> np.ndarray:
    m, t = _values(measured), _values(truth)
    if m.shape != t.shape:
        raise ValueError(f"measured and truth must have the same shape, got {m.shape} and {t.shape}")
    ok = np.isfinite(m) & np.isfinite(t)
    if mask is not None:
        ok &= _validate.mask(np.asarray(_values(mask), bool), name="mask", shape=m.shape, min_count=0)
    return (m - t)[ok]


def error_table(measured: xr.Dataset, truth: xr.Dataset, variables: tuple[str, ...], *,
                mask: ArrayLike | None = None) -> pd.DataFrame:
    """Measured-vs-truth statistics per variable: RMS, median and largest absolute error.

    Parameters
    ----------
    measured, truth : xarray.Dataset
        On the same grid, each holding `variables`.
    variables : tuple of str
        Variables to compare (e.g. ``("exx", "eyy", "exy", "theta")``).
    mask : array_like of bool, optional
        Pixels to include (always also finite in both).

    Returns
    -------
    pandas.DataFrame
        Indexed by variable: ``rms``, ``median``, ``max_abs``, ``pixels``.

    Examples
    --------
    >>> a = xr.Dataset({"exx": ("y", [0.0, 0.01]), "eyy": ("y", [0.0, 0.0])})
    >>> b = xr.Dataset({"exx": ("y", [0.0, 0.0]), "eyy": ("y", [0.0, 0.0])})
    >>> error_table(a, b, ("exx", "eyy"))["max_abs"].tolist()
    [0.01, 0.0]
    """
    for name, ds in (("measured", measured), ("truth", truth)):
        if not isinstance(ds, xr.Dataset):
            raise TypeError(f"{name} must be an xarray.Dataset, got {type(ds).__name__}")
        missing = [v for v in variables if v not in ds]
        if missing:
            raise ValueError(f"{name} lacks variables {missing}")
    rows = {}
    for v in variables:
        d = _difference(measured[v], truth[v], mask)
        rows[v] = {"rms": float(np.sqrt(np.mean(d**2))) if d.size else np.nan,
                   "median": float(np.median(d)) if d.size else np.nan,
                   "max_abs": float(np.abs(d).max()) if d.size else np.nan, "pixels": int(d.size)}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("variable")


def region_errors(measured: xr.Dataset, truth: xr.Dataset, region: ArrayLike,
                  variables: tuple[str, ...] = ("exx", "eyy", "exy", "theta")) -> tuple[float, float]:
    """Worst region-median error and worst pixel RMS error over labelled regions of a strain map.

    For a scan cut into homogeneous regions (labels ``1..n``; 0 is the reference and is left out), the
    error ``measured - truth`` of each variable is summarised by its median in each region and by its
    RMS over all labelled pixels (NaN pixels, i.e. unmeasured ones, are ignored). Returns the largest
    ``|median|`` over regions and variables and the largest RMS over variables: the two numbers the
    strain acceptance tests state (bias per region; precision per pixel).

    Parameters
    ----------
    measured, truth : xarray.Dataset
        Strain maps on the same scan grid holding `variables`.
    region : array_like of int, shape (ny, nx)
        Region labels; 0 = reference (not scored).
    variables : tuple of str
        Variables to score.

    Returns
    -------
    (float, float)
        Worst ``|region median|`` and worst pixel RMS.

    Examples
    --------
    >>> t = xr.Dataset({"exx": (("y", "x"), np.zeros((2, 4)))})
    >>> m = t + xr.Dataset({"exx": (("y", "x"), [[0, 0, 1e-4, 3e-4], [0, 0, 1e-4, 3e-4]])})
    >>> region_errors(m, t, [[0, 0, 1, 2], [0, 0, 1, 2]], variables=("exx",))
    (0.0003, 0.0002236...)
    """
    lab = np.asarray(region)
    if lab.shape != measured[variables[0]].shape or not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"region: need integer labels of shape {measured[variables[0]].shape}, "
                         f"got {lab.dtype} {lab.shape}")
    if lab.max() < 1:
        raise ValueError("region: no labelled region (labels >= 1) to score")
    med, rms = 0.0, 0.0
    for k in variables:
        err = _values(measured[k]) - _values(truth[k])
        med = max(med, max(abs(float(np.nanmedian(err[lab == i]))) for i in range(1, lab.max() + 1)
                           if (lab == i).any()))
        rms = max(rms, float(np.sqrt(np.nanmean(err[lab > 0] ** 2))))
    return med, rms


def registration_tre(estimate: registration.Registration, truth: registration.Registration,
                     points: ArrayLike) -> np.ndarray:
    """Target registration error at fixed-image points, in fixed-image pixels.

    Each point is mapped into the moving image by `estimate` and back by the
    inverse of `truth`; the distance to where it started is the error.

    Parameters
    ----------
    estimate, truth : chemomech.registration.Registration
        Fixed → moving maps on the same grids.
    points : array_like, shape (N, 2)
        ``(row, col)`` pixel positions in the fixed image.

    Returns
    -------
    numpy.ndarray, shape (N,)
    """
    pts = np.asarray(points, dtype=float)
    back = geometry.apply_affine(np.linalg.inv(truth.matrix), estimate.map_indices(pts))
    return np.hypot(*(back - pts).T)


def _trial_particle(k: int):
    """The twin particle of trial case ``k`` (seed ``100 + k``, batches in turn)."""
    return twin.make_particle(f"case{k}", batch=("biphasic", "li_rich", "li_poor")[k % 3], seed=100 + k)


def dynamical_dark_field(k: int, *, scan_shape: tuple[int, int] = (64, 64)) -> xr.DataArray:
    """Annular virtual dark field of trial case ``k``'s particle from the dynamical 4D-STEM twin.

    The particle of case ``k`` of :func:`tre_trials` is scanned by
    :func:`chemomech.twin.stem4d.simulate_particle` with ``disks="dynamical"``
    (bend contours and thickness fringes from the multislice disk library) and
    the annular virtual detector of :func:`chemomech.strain.virtual_images` is
    applied; the result is on particle-frame ``("y", "x")`` coordinates (nm),
    ready for ``df_image=`` of :func:`chemomech.twin.pair.simulate_realistic_pair`.
    Takes ~5-25 s per particle on one core (64 x 64 scan).

    Parameters
    ----------
    k : int
        Trial case (particle seed ``100 + k``, noise seed ``k``).
    scan_shape : (int, int)
        4D-STEM scan positions.

    Returns
    -------
    xarray.DataArray
    """
    from .strain import virtual_images
    from .twin import stem4d

    ds = stem4d.simulate_particle(_trial_particle(int(k)), scan_shape=scan_shape, disks="dynamical", rng=int(k))
    v = virtual_images(ds.datacube, radius_px=float(ds.attrs["disk_radius_px"]))
    return v.dark_field.assign_coords(y=ds.y, x=ds.x).load()


def tre_trials(n_cases: int = 10, *, seed: int = 1000, realistic: bool = False, dark_field: str = "stand-in",
               df_images=None, first_case: int = 0, progress: bool = False, **register_options) -> pd.DataFrame:
    """Register ``n_cases`` random simulated pairs and tabulate the target registration error.

    Registers pairs from :func:`chemomech.twin.pair.simulate_pair` (idealised) or
    :func:`chemomech.twin.pair.simulate_realistic_pair` (``realistic=True``: dark-field
    diffraction texture, holes, film, neighbour, X-ray blur; any scan rotation) with
    :func:`chemomech.registration.register` (the registration code never sees
    the simulator). Case ``k`` uses a twin particle of seed ``100 + k`` (batches in
    turn), the geometry :func:`chemomech.twin.pair.random_pair_parameters` ``(seed + k)`` and noise
    seed ``k``. The TRE is evaluated at every pixel of the fixed particle mask
    (for realistic pairs the *true* mask, so that a wrong mask cannot hide errors).
    The acceptance cases are ``0 .. n_cases - 1``; ``first_case`` runs others
    (e.g. 20-39, to choose settings on seeds disjoint from the acceptance ones).

    Parameters
    ----------
    n_cases : int
        Number of seeded cases.
    seed : int
        Seed of the first case's geometry.
    realistic : bool
        Real-looking pairs instead of idealised ones.
    dark_field : {"stand-in", "dynamical"}
        Realistic pairs only: the particle's dark-field signal is the drawn stand-in
        texture of :func:`chemomech.twin.pair.simulate_realistic_pair` (a harder
        stress case: strong blobs and a broken rim), or the annular virtual dark
        field of the dynamical 4D-STEM twin (:func:`dynamical_dark_field`, ~5-25 s
        per case).
    df_images : sequence of xarray.DataArray, optional
        Realistic pairs only, with ``dark_field="stand-in"``: ``df_images[i]`` replaces the
        stand-in texture of the ``i``-th case run (``df_image=`` of
        :func:`chemomech.twin.pair.simulate_realistic_pair`), e.g. precomputed
        :func:`dynamical_dark_field` images.
    first_case : int
        Index of the first case.
    progress : bool
        Show a progress bar.
    **register_options
        Passed to :func:`chemomech.registration.register`.

    Returns
    -------
    pandas.DataFrame
        One row per case: ``contrast, mirror, rotation_deg, scale, shear,
        tre_mean_px, tre_max_px, dice, seconds, cpu_seconds`` (wall and CPU time of
        ``register``); realistic pairs add
        ``dice_truth`` (Dice of the true masks under the estimate) and ``error``
        (the message of a :class:`~chemomech.registration.RegistrationError`, else "").
        ``attrs["dark_field"]`` says which dark field realistic pairs used.

    Examples
    --------
    >>> t = tre_trials(1)
    >>> bool(t.tre_mean_px.iloc[0] < 1.0)
    True
    """
    from tqdm.auto import tqdm

    _validate.choice(dark_field, ("stand-in", "dynamical"), name="dark_field")
    if df_images is not None and (not realistic or len(df_images) < n_cases or dark_field != "stand-in"):
        raise ValueError("df_images needs realistic=True, dark_field='stand-in' and one image per case "
                         f"(got {len(df_images)} for {n_cases} cases)")
    if dark_field == "dynamical" and not realistic:
        raise ValueError("dark_field='dynamical' needs realistic=True")
    cases = range(int(first_case), int(first_case) + int(n_cases))
    rows = []
    for i, k in enumerate(tqdm(cases, desc="registration trials", disable=not progress)):
        p = _trial_particle(k)
        if realistic:
            par = pair.random_pair_parameters(seed + k, max_rotation_rad=np.pi)
            par["contrast"] = "dark_field_inverted"
            df_image = (dynamical_dark_field(k) if dark_field == "dynamical"
                        else None if df_images is None else df_images[i])
            fixed, moving, truth = pair.simulate_realistic_pair(
                p, **{k_: v for k_, v in par.items() if k_ != "contrast"}, rng=k, df_image=df_image)
        else:
            par = pair.random_pair_parameters(seed + k)
            fixed, moving, truth = pair.simulate_pair(p, **par, rng=k)
        row = {"contrast": par["contrast"], "mirror": par["mirror"], "rotation_deg": np.degrees(par["rotation_rad"]),
               "scale": par["scale"], "shear": par["shear"]}
        t0, c0 = time.perf_counter(), time.process_time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", registration.RegistrationWarning)
            try:
                reg = registration.register(fixed.values, moving.values, **register_options)
            except registration.RegistrationError as err:
                if not realistic:
                    raise
                rows.append({**row, "tre_mean_px": np.nan, "tre_max_px": np.nan, "dice": np.nan,
                             "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0,
                             "dice_truth": np.nan, "error": str(err)})
                continue
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        pts = np.argwhere(truth.fixed_mask if realistic else reg.fixed_mask).astype(float)
        tre = truth.target_registration_error(reg.map_points(pts), pts)
        row.update({"tre_mean_px": float(tre.mean()), "tre_max_px": float(tre.max()), "dice": reg.metrics["dice"],
                    "seconds": dt, "cpu_seconds": cpu})
        if realistic:
            row.update({"dice_truth": registration.dice(truth.fixed_mask, reg.warp(truth.moving_mask)), "error": ""})
        rows.append(row)
    table = pd.DataFrame(rows, index=pd.Index(list(cases), name="case"))
    table.attrs["dark_field"] = ("given images" if df_images is not None else dark_field) if realistic else "none"
    return table


def slope_table(model, law, *, at_X: float = 0.5) -> xr.Dataset:
    """Learned slope ``d eps0/dX`` at one X against the injected law and Vegard's law.

    Parameters
    ----------
    model : chemomech.learning.EigenstrainModel
    law : callable with ``.derivative(X)``
        The truth (e.g. :class:`chemomech.twin.EigenstrainLaw`).
    at_X : float
        Li fraction at which the slopes are compared.

    Returns
    -------
    xarray.Dataset
        On dim ``component`` (``aa``, ``cc``): ``learned``, ``low``/``high`` (95 %
        interval), ``truth``, ``literature`` (Vegard) and
        ``rel_error`` = learned / truth − 1; ``attrs`` X, degree and
        ``interval_terms`` (what the interval includes:
        :attr:`chemomech.learning.EigenstrainModel.interval_terms`).
    """
    xs = [float(at_X)]
    learned = model.derivative(xs)[0]
    lo, hi = model.interval(xs)
    truth = np.asarray(law.derivative(at_X), float)
    lit = np.asarray(twin.vegard_law().derivative(at_X), float)
    comp = ("component", ["aa", "cc"], {"long_name": "crystal axis"})
    one = {"units": "1"}
    return xr.Dataset(
        {"learned": ("component", learned, {**one, "long_name": "learned d eps0/dX"}),
         "low": ("component", lo[0], {**one, "long_name": "95 % interval, low"}),
         "high": ("component", hi[0], {**one, "long_name": "95 % interval, high"}),
         "truth": ("component", truth, {**one, "long_name": "injected law (truth)"}),
         "literature": ("component", lit, {**one, "long_name": "Vegard's law (lattice parameters)"}),
         "rel_error": ("component", learned / truth - 1.0, {**one, "long_name": "learned / truth - 1"})},
        coords={"component": comp},
        attrs={"X": float(at_X), "degree": model.degree,
               "interval_terms": "; ".join(getattr(model, "interval_terms", ()) or ("bootstrap",))})


def heldout_test(model, strain: xr.Dataset, X: xr.DataArray, mask: ArrayLike, law, *,
                 defect_center_nm: tuple[float, float] | None = None, defect_radius_nm: float | None = None,
                 exclusion_radius_nm: float | None = None) -> dict:
    """Test a learned law on a particle it was not trained on.

    The particle's Bragg-disk strain is re-expressed relative to FePO4
    (:meth:`chemomech.learning.EigenstrainModel.to_fepo4`), the law predicts
    its strain from its X map, and the residual is compared with the residual
    of the *true* law on the same data — the floor that noise in the maps sets.

    Parameters
    ----------
    model : chemomech.learning.EigenstrainModel
    strain : xarray.Dataset
        Crystal-frame ``exx, eyy, exy`` of the held-out particle.
    X : xarray.DataArray
        Its Li map on the same grid.
    mask : array_like of bool
        Its pixels.
    law : callable
        The true law (``X -> (..., 2)``).
    defect_center_nm, defect_radius_nm : optional
        A known defect: the RMS values away from it exclude a disk of
        `exclusion_radius_nm` around the centre, and ``defect_rms`` is taken
        within `defect_radius_nm`.
    exclusion_radius_nm : float, optional
        Radius excluded around the defect (default: 6 × `defect_radius_nm`).

    Returns
    -------
    dict
        ``measured`` (strain relative to FePO4), ``predicted``, ``residual``,
        ``oracle`` (residual of the true law) Datasets, ``reference_strain``,
        ``strain_rms`` and ``noise_rms`` (away from a defect) and, with a
        defect, ``defect_rms`` and ``defect_center_nm``.
    """
    measured = model.to_fepo4(strain, X, mask)
    residual = model.residual(measured, X, mask)
    oracle = EigenstrainModel.from_law(law, 1).residual(measured, X, mask)
    out = {"predicted": model.predict_strain(X, mask), "residual": residual, "oracle": oracle,
           "measured": measured, "reference_strain": np.asarray(measured.attrs["reference_strain"], float)}
    if defect_center_nm is not None:
        centre = (float(defect_center_nm[0]), float(defect_center_nm[1]))
        radius = _validate.positive(defect_radius_nm, name="defect_radius_nm")
        far = {"center_nm": centre, "radius_nm": exclusion_radius_nm or 6.0 * radius}
        out["defect_center_nm"] = centre
        out["strain_rms"] = residual_rms(residual, **far)
        out["noise_rms"] = residual_rms(oracle, **far)
        out["defect_rms"] = residual_rms(residual, center_nm=centre, radius_nm=radius, inside=True)
    else:
        out["strain_rms"] = residual_rms(residual)
        out["noise_rms"] = residual_rms(oracle)
    return out
