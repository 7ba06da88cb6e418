"""Li fraction from Fe L-edge energy stacks (X-ray spectro-ptychography and STXM).

The pipeline of :func:`map_lithium`, each step also available on its own:

1. :func:`estimate_drift` — frame-to-frame drift, by sub-pixel phase correlation of
   gradient-magnitude images (robust to the LFP/FP contrast flip between 708 and
   710 eV), against a running reference; shifts smoothed across energy.
2. :func:`optical_density` — shift every frame back onto the first frame's grid
   (spline interpolation, edges never wrapped: pixels that moved in become NaN),
   incident intensity per energy from particle-free pixels, OD = −ln(I/I0) or, for a
   complex ptychographic object, OD = −2 ln(|O|/|O_bg|).
3. :func:`fit_spectra` — per-pixel non-negative least squares OD(E) = a·μ_LFP(E) +
   b·μ_FP(E) + c, vectorised over pixels (exact active-set enumeration), X = a/(a+b),
   thickness = a + b, σ_X by propagating the residual-scaled covariance.
4. :func:`principal_components` — how many spectral components the data hold.

The built-in references (:func:`reference_spectra`) are a documented *model* of the
Fe L3/L2 spectra of LiFePO4 (Fe²⁺) and FePO4 (Fe³⁺), not measured data; pass your
own measured references with ``references=``.
"""

from __future__ import annotations

import warnings

import numpy as np
import xarray as xr
from scipy import ndimage
from scipy.special import voigt_profile

from . import _validate
from .materials import FE_L_EDGE_MODEL, OD_SATURATION

__all__ = [
    "estimate_drift",
    "fit_spectra",
    "map_lithium",
    "optical_density",
    "calibration_curve",
    "predict_od",
    "principal_components",
    "reference_spectra",
]

_REFERENCE_GRID_EV = (690.0, 740.0, 0.05)  # start, stop, step of the tabulated references
_PHASES = ("LFP", "FP")


def _quiet(func, *args, **kwargs):
    """Call a NaN-aware reduction without the all-NaN-slice warning (border pixels after alignment)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return func(*args, **kwargs)


def _model_spectrum(energy: np.ndarray, phase: str) -> np.ndarray:
    """Evaluate the Fe L-edge model of `phase` at `energy` (eV), OD per nm (exact Voigt peaks)."""
    spec = FE_L_EDGE_MODEL[phase]
    out = spec["pre"] * (energy / 700.0) ** -FE_L_EDGE_MODEL["pre_exponent"]
    for c, h, gf, lf in spec["peaks"]:
        s, g = gf / (2.0 * np.sqrt(2.0 * np.log(2.0))), lf / 2.0
        out = out + h * voigt_profile(energy - c, s, g) / voigt_profile(0.0, s, g)
    for c, h, w in spec["steps"]:
        out = out + h * (0.5 + np.arctan((energy - c) / (w / 2.0)) / np.pi)
    return out


def reference_spectra(energy=None) -> xr.Dataset:
    """Built-in Fe L-edge reference spectra of LiFePO4 and FePO4, OD per nm.

    Parameters
    ----------
    energy : array_like, optional
        Energies (eV, increasing) at which to tabulate the model; default a 0.05 eV
        grid from 690 to 740 eV.

    Returns
    -------
    xarray.Dataset
        Variables ``LFP`` and ``FP`` on ``energy`` (eV), absorption per unit thickness
        (``units = "1/nm"``, optical density per nm), with the provenance in
        ``attrs["source"]``.

    Notes
    -----
    A model, not a measurement: Voigt peaks at literature positions plus arctan
    L3/L2 edge steps and a smooth non-resonant background (:data:`chemomech.materials.FE_L_EDGE_MODEL`),
    scaled so that 100 nm of LiFePO4 has OD ≈ 1 at 708 eV (:data:`chemomech.materials.OD_PER_NM_LFP_708`).
    :func:`map_lithium` interpolates these tabulated values linearly onto the stack
    energies; the simulator :mod:`chemomech.twin.ptycho` evaluates the same peak table
    with its own code, convolved with the beamline bandwidth, so fit and simulation
    do not share a discretisation.

    Examples
    --------
    >>> refs = reference_spectra()
    >>> lfp, fp = (refs[k].interp(energy=[708.0, 710.0]).values for k in ("LFP", "FP"))
    >>> round(float(lfp[1] / lfp[0]), 2), round(float(fp[1] / fp[0]), 2)
    (0.5, 2.12)
    """
    if energy is None:
        start, stop, step = _REFERENCE_GRID_EV
        e = np.round(np.arange(start, stop + step / 2, step), 6)
    else:
        e = _validate.array(energy, name="energy", ndim=1, dtype_kind="iuf", finite=True).astype(float)
        _validate.energies(e, name="energy")
    data = {k: ("energy", _model_spectrum(e, k), {"units": "1/nm", "long_name": f"{k} absorption per nm"})
            for k in _PHASES}
    return xr.Dataset(
        data,
        coords={"energy": ("energy", e, {"units": "eV", "long_name": "photon energy"})},
        attrs={"source": "chemomech Fe L-edge model (Voigt peaks at literature positions, "
                         "OD(710)/OD(708) = 0.50 LiFePO4, 2.12 FePO4); not measured data"},
    )


# --- validation ---------------------------------------------------------------------


def _check_references(references: object, energy: np.ndarray) -> xr.Dataset:
    if not isinstance(references, xr.Dataset):
        raise TypeError(f"references must be an xarray.Dataset with variables LFP and FP, "
                        f"got {type(references).__name__}")
    missing = [k for k in _PHASES if k not in references]
    if missing:
        raise ValueError(f"references must have variables 'LFP' and 'FP'; missing {missing}")
    for k in _PHASES:
        _validate.dims(references[k], ("energy",), name=f"references[{k!r}]")
    e = _validate.array(references["energy"], name="references energy", ndim=1, dtype_kind="iuf",
                        finite=True).astype(float)
    _validate.energies(e, name="references")
    lo, hi = energy.min(), energy.max()
    if e.max() < lo or e.min() > hi:
        raise ValueError(f"references cover {e.min():g}–{e.max():g} eV, which does not overlap the "
                         f"stack's {lo:g}–{hi:g} eV")
    if e.min() > lo or e.max() < hi:
        raise ValueError(f"references cover {e.min():g}–{e.max():g} eV but the stack spans {lo:g}–{hi:g} eV; "
                         "crop the stack with stack.sel(energy=slice(lo, hi)) to the references' range")
    for k in _PHASES:
        _validate.array(references[k], name=f"references[{k!r}]", finite=True)
    return references


# --- drift ----------------------------------------------------------------------------


def _absorbance(stack: xr.DataArray) -> np.ndarray:
    """−ln(I) for intensities, −2 ln|O| for complex objects; NaN where not positive."""
    v = np.asarray(stack.values)
    with np.errstate(divide="ignore", invalid="ignore"):
        if np.iscomplexobj(v):
            amp = np.abs(v)
            out = -2.0 * np.log(np.where(amp > 0, amp, np.nan))
        else:
            v = v.astype(float)
            out = -np.log(np.where(v > 0, v, np.nan))
    return out


def _fill_nan(frame: np.ndarray) -> np.ndarray:
    bad = ~np.isfinite(frame)
    if not bad.any():
        return frame
    out = frame.copy()
    out[bad] = _quiet(np.nanmedian, frame)
    return out


def _detrend(img: np.ndarray, border: int = 4) -> np.ndarray:
    """Subtract the plane fitted to the image border.

    Membrane ramps would otherwise create a wrap-around step in the FFT correlation,
    which pulls weak frames towards zero shift.
    """
    ny, nx = img.shape
    yy, xx = np.mgrid[:ny, :nx]
    edge = np.zeros(img.shape, bool)
    edge[:border], edge[-border:], edge[:, :border], edge[:, -border:] = True, True, True, True
    edge &= np.isfinite(img)
    A = np.column_stack([np.ones(edge.sum()), yy[edge], xx[edge]])
    coef, *_ = np.linalg.lstsq(A, img[edge], rcond=None)
    return img - (coef[0] + coef[1] * yy + coef[2] * xx)


def _edge_image(frame: np.ndarray, sigma_px: float) -> np.ndarray:
    g = ndimage.gaussian_gradient_magnitude(_fill_nan(frame), sigma_px, mode="nearest")
    return g - g.mean()


def _xcorr_shift(ref: np.ndarray, img: np.ndarray, upsample: int) -> np.ndarray:
    from skimage.registration import phase_cross_correlation

    shift, _, _ = phase_cross_correlation(ref, img, upsample_factor=upsample, normalization=None)
    return -np.asarray(shift, dtype=float)  # content of img sits at ref + d


def _shift_frames(data: np.ndarray, shifts: np.ndarray, *, order: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Move every frame by −shift (no wrapping); return frames and the all-frames coverage mask."""
    n, ny, nx = data.shape
    out = np.empty_like(data)
    yy, xx = np.arange(ny)[:, None], np.arange(nx)[None, :]
    cover = np.ones((ny, nx), bool)
    for k in range(n):
        dy, dx = shifts[k]
        frame = data[k]
        nan = ~np.isfinite(frame)
        out[k] = ndimage.shift(_fill_nan(frame), (-dy, -dx), order=order, mode="nearest")
        if nan.any():
            moved = ndimage.shift(nan.astype(float), (-dy, -dx), order=1, mode="constant", cval=1.0)
            out[k][moved > 0.01] = np.nan
        cover &= (yy + dy >= 0) & (yy + dy <= ny - 1) & (xx + dx >= 0) & (xx + dx <= nx - 1)
    return out, cover


def _coarse_drift(L: np.ndarray, sigma_px: float, upsample: int) -> np.ndarray:
    """Drift from gradient-magnitude images: neighbours first, then a common reference."""
    edges = np.stack([_edge_image(f, sigma_px) for f in L])
    n = edges.shape[0]
    d = np.zeros((n, 2))
    for k in range(1, n):  # pass 1: neighbours (similar contrast)
        d[k] = d[k - 1] + _xcorr_shift(edges[k - 1], edges[k], upsample)
    aligned, _ = _shift_frames(edges, d, order=1)
    ref = _quiet(np.nanmean, aligned, axis=0)
    ref = np.where(np.isfinite(ref), ref, 0.0)
    return np.stack([_xcorr_shift(ref, e, upsample) for e in edges])  # pass 2: common reference


def _weighted_smooth(d: np.ndarray, w: np.ndarray, sigma: float) -> np.ndarray:
    """Local-linear Gaussian smoothing across frames with per-frame weights (inverse variances).

    A local *linear* fit (not a weighted mean) keeps a steady drift unbiased where
    the weights are uneven, e.g. at the weak pre-edge frames at the start of a scan.
    """
    if sigma <= 0:
        return d
    k = np.arange(d.shape[0], dtype=float)
    dk = k[None, :] - k[:, None]  # (target, frame)
    kern = np.exp(-0.5 * (dk / sigma) ** 2) * w[None, :]
    s0, s1, s2 = kern.sum(1), (kern * dk).sum(1), (kern * dk**2).sum(1)
    t0, t1 = kern @ d, (kern * dk) @ d
    det = s0 * s2 - s1**2
    return (s2[:, None] * t0 - s1[:, None] * t1) / det[:, None]


def estimate_drift(stack: xr.DataArray, *, references: xr.Dataset | None = None, background=None,
                   refine: int = 2, sigma_px: float = 1.5, upsample_factor: int = 50,
                   smooth_frames: float = 3.0) -> xr.DataArray:
    """Frame-to-frame drift of an energy stack, in pixels, relative to the first frame.

    Parameters
    ----------
    stack : xarray.DataArray
        Dims ``("energy", "y", "x")``, complex object or real intensity.
    references : xarray.Dataset, optional
        References for the model-based refinement (default :func:`reference_spectra`).
    background : array_like of bool, optional
        Particle-free pixels for the refinement's OD (see :func:`optical_density`).
    refine : int, optional
        Rounds of model-based refinement (0 = edge images only).
    sigma_px : float, optional
        Gaussian scale of the gradient-magnitude (edge) images, px.
    upsample_factor : int, optional
        Sub-pixel precision 1/`upsample_factor` of the correlation peak.
    smooth_frames : float, optional
        Gaussian smoothing of the shifts across energy, in frames (0 = none).

    Returns
    -------
    xarray.DataArray
        ``(energy, axis)`` with ``axis = ["y", "x"]``, px: frame ``k`` shows the
        specimen displaced by ``shifts[k]`` from where it is in frame 0
        (``shifts[0] == 0``).

    Notes
    -----
    Raw frames change contrast across the edge (LFP domains are dark at 708 eV and
    bright at 710 eV relative to FP), which pulls raw cross-correlation by ~1 px.
    The coarse estimate therefore correlates gradient-magnitude images (the particle
    outline is there at every energy): each frame to its neighbour, then every frame
    to the mean of the aligned edge images. Each refinement round fits the aligned
    stack (:func:`fit_spectra`), predicts every frame from the fit — same contrast as
    the measured frame, whatever the energy — and registers the measured OD frame
    to its prediction. The shifts are smoothed across energy with weights equal to
    the Cramér–Rao precision of each frame (Σ|∇prediction|² / residual noise²) by a
    local-linear Gaussian smoother, so weak pre-edge frames borrow from their
    neighbours without biasing a steady drift (drift is slow; estimation noise is not).
    For complex objects each round also registers the phase frames — thickness
    contrast far above the noise at every energy — to their own predictions (each
    phase frame regressed on the fitted a, b maps), and the two estimates are
    combined with their weights. Finally the drift is tied to the first frame through
    the phase images of all pre-edge frames, which do not change contrast below the edge.

    Examples
    --------
    >>> yy, xx = np.mgrid[:40, :48]
    >>> frames = [np.exp(-((yy - 20 - s) ** 2 + (xx - 22) ** 2) / 60.0) for s in (0.0, 0.0, 1.5, 1.5, 3.0)]
    >>> stack = xr.DataArray(np.exp(-np.array(frames)), dims=("energy", "y", "x"),
    ...                      coords={"energy": [700.0, 705.0, 708.0, 710.0, 720.0]})
    >>> d = estimate_drift(stack, refine=0, smooth_frames=0)
    >>> np.round(d.sel(axis="y").values, 1).tolist()
    [0.0, 0.0, 1.5, 1.5, 3.0]
    """
    _validate.energy_stack(stack)
    sigma_px = _validate.positive(sigma_px, name="sigma_px")
    smooth_frames = _validate.positive(smooth_frames, name="smooth_frames", allow_zero=True)
    if not isinstance(upsample_factor, (int, np.integer)) or upsample_factor < 1:
        raise ValueError(f"upsample_factor must be a positive int, got {upsample_factor!r}")
    if not isinstance(refine, (int, np.integer)) or refine < 0:
        raise ValueError(f"refine must be an int >= 0, got {refine!r}")
    energy = stack["energy"].values.astype(float)
    refs = reference_spectra() if references is None else _check_references(references, energy)
    L = _absorbance(stack)
    d = _coarse_drift(L, sigma_px, upsample_factor)
    w = np.ones(d.shape[0])
    d = _weighted_smooth(d, w, smooth_frames)
    d = d - d[0]
    phase = _phase_images(stack) if np.iscomplexobj(stack.values) else None
    for _ in range(refine):
        od = optical_density(stack, shifts=_shifts_da(d, stack["energy"]), background=background)
        fit = fit_spectra(od, references=refs)
        pred = np.nan_to_num(predict_od(fit, energy, references=refs).values)  # same contrast as each frame
        noise2 = _quiet(np.nanmean, (od.values - pred) ** 2, axis=(1, 2))
        d_new, w = _register_to_prediction(L, pred, noise2, upsample_factor)
        if phase is not None:  # complex object: the phase frames give a second, stronger estimate
            d_ph, w_ph = _register_to_prediction(phase, _predict_phase(phase, fit, d), None, upsample_factor)
            d_new = (w[:, None] * d_new + w_ph[:, None] * d_ph) / (w + w_ph)[:, None]
            w = w + w_ph
        d = _weighted_smooth(d_new, w, smooth_frames)
        d = d - d[0]
    d = d - _anchor_offset(energy, phase, d, upsample_factor)
    d[0] = 0.0  # the first frame is the reference grid by definition
    return _shifts_da(d, stack["energy"])


def _register_to_prediction(frames: np.ndarray, pred: np.ndarray, noise2, upsample: int):
    """Shift of every raw frame against its model prediction, and its Cramér–Rao weight."""
    n = frames.shape[0]
    d = np.empty((n, 2))
    w = np.empty(n)
    if noise2 is None:  # residual of the prediction on the aligned grid is not at hand: use the raw misfit
        noise2 = np.array([np.nanvar(_detrend(_fill_nan(f)) - _detrend(p)) for f, p in zip(frames, pred)])
    for k in range(n):
        d[k] = _xcorr_shift(_detrend(pred[k]), _detrend(_fill_nan(frames[k])), upsample)
        gy, gx = np.gradient(pred[k])
        w[k] = np.sum(gy**2 + gx**2) / max(float(noise2[k]), 1e-12)
    return d, w


def _phase_images(stack: xr.DataArray) -> np.ndarray:
    """Phase of every reconstruction, its global phase (from the image border) removed.

    Assumes a weak phase object (|φ| < π, no wrapping), true for particles thinner
    than ~500 nm at the Fe L edge.
    """
    v = np.asarray(stack.values)
    ring = np.zeros(v.shape[1:], bool)
    ring[:4], ring[-4:], ring[:, :4], ring[:, -4:] = True, True, True, True
    g = np.nansum(v[:, ring], axis=1)
    return np.angle(v * np.conj(g / np.abs(g))[:, None, None])


def _predict_phase(phase: np.ndarray, fit: xr.Dataset, d: np.ndarray) -> np.ndarray:
    """Each phase frame regressed on the fitted thickness maps (a, b, 1): its model prediction.

    The phase per nm of each end member is not tabulated, so it is learned from the data,
    frame by frame: φ_k ≈ α_k·a + β_k·b + γ_k on the aligned grid.
    """
    aligned, cover = _shift_frames(phase, d)
    a, b = fit["a"].values, fit["b"].values
    ok = cover & np.isfinite(a) & np.isfinite(b) & np.isfinite(aligned).all(axis=0)
    basis = np.stack([np.where(np.isfinite(a), a, 0.0), np.where(np.isfinite(b), b, 0.0), np.ones(a.shape)])
    coef, *_ = np.linalg.lstsq(basis[:, ok].T, aligned[:, ok].T, rcond=None)  # (3, n)
    return np.einsum("in,iyx->nyx", coef, basis)


def _anchor_offset(energy: np.ndarray, phase: np.ndarray | None, d: np.ndarray, upsample: int) -> np.ndarray:
    """Offset that ties the drift to the first frame using all pre-edge frames (below 705 eV).

    The first frame of a scan is a pre-edge frame with weak absorption contrast, so its own
    position is the least certain of all. Below the edge the contrast does not change with
    energy, so every pre-edge frame can be registered directly to the first one. For a
    complex object the phase is used (thickness contrast, ~10x the pre-edge absorption
    contrast relative to the noise; `phase` from :func:`_phase_images`); intensity stacks
    (``phase=None``) are left as they are. The offset is the mean disagreement between
    these direct shifts and the smoothed drift.
    """
    pre = np.flatnonzero(energy < 705.0)[:10]
    if phase is None or pre.size < 3 or pre[0] != 0:
        return np.zeros(2)  # intensities: the pre-edge absorption alone is too weak to do better
    imgs = np.stack([_detrend(_fill_nan(f)) for f in phase[pre]])
    direct = np.stack([_xcorr_shift(imgs[0], f, upsample) for f in imgs])
    return np.mean(d[pre] - direct, axis=0)


def _shifts_da(d: np.ndarray, energy) -> xr.DataArray:
    return xr.DataArray(
        d, dims=("energy", "axis"),
        coords={"energy": energy, "axis": ("axis", ["y", "x"], {"long_name": "image axis"})},
        attrs={"units": "px", "long_name": "drift removed (specimen displacement from frame 0)"},
    )


# --- optical density ----------------------------------------------------------------


def _edge_jump(L: np.ndarray, energy: np.ndarray) -> np.ndarray:
    """Fe signal per pixel: mean absorbance across the L3 white lines minus the pre-edge mean.

    Scans without both ranges fall back to the mean absorbance over all energies
    (the particle absorbs more than the membrane at every energy).
    """
    pre = energy < 705.0
    post = (energy >= 707.0) & (energy <= 712.0)
    if not pre.any() or not post.any():
        return _quiet(np.nanmean, L, axis=0)
    return _quiet(np.nanmean, L[post], axis=0) - _quiet(np.nanmean, L[pre], axis=0)


def _otsu_particle(jump: np.ndarray) -> np.ndarray:
    from skimage.filters import threshold_otsu

    j = ndimage.gaussian_filter(np.where(np.isfinite(jump), jump, _quiet(np.nanmedian, jump)), 1.0)
    return j > threshold_otsu(j)


def optical_density(stack: xr.DataArray, *, shifts: xr.DataArray | None = None,
                    background=None) -> xr.DataArray:
    """Optical density of an energy stack on the grid of its first frame.

    Parameters
    ----------
    stack : xarray.DataArray
        Dims ``("energy", "y", "x")``: complex ptychographic object or real
        transmitted intensity (not normalised).
    shifts : xarray.DataArray, optional
        Drift ``(energy, axis)`` in px from :func:`estimate_drift`; frames are moved
        back by it (cubic spline, no wrapping; pixels that moved in are NaN).
        ``None`` = no alignment.
    background : array_like of bool, optional
        ``(y, x)`` mask of particle-free pixels (on the first frame's grid) whose
        median per energy is the incident intensity; ``None`` = detected from the
        Fe edge jump (Otsu threshold, particle dilated by 4 px).

    Returns
    -------
    xarray.DataArray
        OD ``(energy, y, x)``, ``units = "1"``, with the relative incident intensity
        (I0, or |O_bg|² for complex input) as coordinate ``incident`` on ``energy``;
        ``attrs["background"]`` holds the number of background pixels used.

    Notes
    -----
    OD = −ln(I/I0) for intensities; OD = −2 ln(|O|/|O_bg|) for a complex object,
    normalised per energy (each reconstruction has its own amplitude scale).

    Examples
    --------
    >>> i = np.full((5, 6, 8), 100.0)
    >>> i[:, 2:4, 3:5] = 50.0
    >>> stack = xr.DataArray(i, dims=("energy", "y", "x"), coords={"energy": np.arange(700.0, 705.0)})
    >>> bg = np.ones((6, 8), bool)
    >>> bg[1:5, 2:6] = False
    >>> round(float(optical_density(stack, background=bg)[0, 2, 3]), 3)
    0.693
    """
    _validate.energy_stack(stack)
    L = _absorbance(stack)
    energy = stack["energy"].values.astype(float)
    if shifts is not None:
        _validate.dims(shifts, ("energy", "axis"), name="shifts")
        d = _validate.array(shifts, name="shifts", shape=(L.shape[0], 2), finite=True).astype(float)
        L, cover = _shift_frames(L, d)
        L[:, ~cover] = np.nan
    shape = L.shape[1:]
    particle = _otsu_particle(_edge_jump(L, energy))
    if background is None:
        near = ndimage.binary_dilation(particle, iterations=4)
        bg = ~near & np.isfinite(L).all(axis=0)
        if bg.sum() < 20:
            raise ValueError(f"automatic background detection found only {int(bg.sum())} particle-free "
                             "pixels; pass background= (a boolean (y, x) mask of membrane pixels)")
    else:
        bg = _validate.mask(background, name="background", shape=shape)
        overlap = (bg & particle).sum() / bg.sum()
        if overlap > 0.1 or (~bg & particle).sum() < 0.5 * particle.sum():
            raise ValueError(f"background covers the particle ({overlap:.0%} of its pixels show the Fe edge); "
                             "pass a mask of particle-free membrane pixels only")
        bg = bg & np.isfinite(L).all(axis=0)
        if not bg.any():
            raise ValueError("background has no pixel that is finite at every energy after alignment")
    l0 = _quiet(np.nanmedian, L[:, bg], axis=1)
    od = L - l0[:, None, None]
    out = xr.DataArray(od, dims=stack.dims, coords=stack.coords,
                       attrs={"units": "1", "long_name": "optical density", "background": int(bg.sum())})
    incident = np.exp(-(l0 - l0.min()))  # I0 (or |O_bg|^2) relative to its weakest energy
    return out.assign_coords(incident=("energy", incident, {"units": "1", "long_name": "relative incident intensity"}))


# --- spectral fit ---------------------------------------------------------------------

# free-parameter subsets of (a, b, c) tried by the exact active-set enumeration
_SUBSETS = ((0, 1, 2), (0, 2), (1, 2), (2,))


def _normal_matrices(A: np.ndarray, W: np.ndarray) -> np.ndarray:
    """AᵀWA for every pixel (W: one weight per energy and pixel), as one BLAS product."""
    outer = (A[:, :, None] * A[:, None, :]).reshape(A.shape[0], -1)
    return (W.T @ outer).reshape(W.shape[1], A.shape[1], A.shape[1])


def _nnls_offset(A: np.ndarray, Y: np.ndarray, W: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Min Σ w (A p − y)² s.t. p0, p1 ≥ 0 (p2 free) for every column y of Y, vectorised.

    `W` holds one weight per energy and pixel (same shape as `Y`), or ``None`` for
    ordinary least squares. The optimum of a bound-constrained least-squares
    problem is the unconstrained solution on its free set; enumerating the four
    free sets and keeping the best feasible one is exact. Returns the parameters
    ``(3, n_pix)`` and the weighted residual sum of squares ``(n_pix,)``.
    """
    n_pix = Y.shape[1]
    Wt = np.ones_like(Y) if W is None else W
    G = _normal_matrices(A, Wt)  # (n_pix, 3, 3)
    h = (Wt * Y).T @ A  # (n_pix, 3)
    best_p = np.zeros((3, n_pix))
    best_r = np.full(n_pix, np.inf)
    for s in _SUBSETS:
        idx = np.array(s)
        p = np.linalg.solve(G[:, idx[:, None], idx[None, :]], h[:, idx, None])[..., 0].T
        r = np.sum(Wt * (Y - A[:, idx] @ p) ** 2, axis=0)
        bounded = [i for i, j in enumerate(s) if j < 2]
        feasible = np.all(p[bounded] >= 0, axis=0) if bounded else np.ones(n_pix, bool)
        take = feasible & (r < best_r)
        full = np.zeros((3, n_pix))
        full[idx] = p
        best_p[:, take] = full[:, take]
        best_r[take] = r[take]
    return best_p, best_r


def _edge_normalise(spec: np.ndarray, energy: np.ndarray) -> np.ndarray:
    pre = energy < 705.0
    post = energy > 715.0
    if not pre.any() or not post.any():
        raise ValueError("constraint='sum_to_one' needs energies below 705 eV and above 715 eV")
    p = spec[pre].mean(axis=0)
    return (spec - p) / (spec[post].mean(axis=0) - p)


def fit_spectra(od: xr.DataArray, *, references: xr.Dataset | None = None,
                constraint: str = "nonnegative", weighting: str = "shot") -> xr.Dataset:
    """Fit every pixel's OD spectrum with the two references (vectorised NNLS).

    Parameters
    ----------
    od : xarray.DataArray
        Optical density ``(energy, y, x)``; pixels with any NaN are left NaN.
    references : xarray.Dataset, optional
        ``LFP`` and ``FP`` per unit thickness on ``energy``, interpolated linearly onto
        ``od``'s energies; default :func:`reference_spectra`.
    constraint : {"nonnegative", "sum_to_one"}, optional
        ``"nonnegative"``: OD = a·μ_LFP + b·μ_FP + c with a, b ≥ 0, c free.
        ``"sum_to_one"``: the common shortcut of peer tools, shown for comparison —
        edge-step-normalised spectra fitted with fractions that sum to one, X
        clipped to [0, 1]; no thickness, no offset, no σ_X (NaN).
    weighting : {"shot", "uniform"}, optional
        ``"shot"``: weighted least squares with weights ∝ I0(E)·exp(−OD), the inverse
        variance of OD for Poisson (STXM) and for additive reconstruction noise
        (ptychography), both σ_OD ∝ exp(OD/2)/√I0; I0 is ``od.coords["incident"]``
        (set by :func:`optical_density`; 1 when absent) and OD is the model of a
        first, unweighted pass. ``"uniform"``: ordinary least squares.

    Returns
    -------
    xarray.Dataset
        ``a``, ``b`` (thickness of each phase, reference units), ``offset`` (OD),
        ``X``, ``X_sigma``, ``thickness`` (a + b), ``residual`` (RMS misfit, OD).

    Notes
    -----
    With weights W, σ² = Σ w r²/(n_E − 3) (the reduced χ² of the pixel's own
    residuals) and the covariance of (a, b, c) is σ² (AᵀWA)⁻¹; X = a/(a + b) has
    gradient (b, −a)/(a + b)², so σ_X² = g Cov_ab gᵀ. Without the weights the
    covariance of an ordinary fit underestimates σ_X, because the noise is largest
    at the white lines, where X is decided.

    Examples
    --------
    >>> refs = reference_spectra()
    >>> e = np.arange(700.0, 730.0, 0.5)
    >>> mu = refs.interp(energy=e)
    >>> spec = 60 * mu.LFP + 20 * mu.FP + 0.01
    >>> od = spec.expand_dims(y=1, x=1).transpose("energy", "y", "x")
    >>> fit = fit_spectra(od, references=refs)
    >>> round(float(fit.X[0, 0]), 3), round(float(fit.thickness[0, 0]), 1)
    (0.75, 80.0)
    """
    _validate.dims(od, ("energy", "y", "x"), name="od")
    _validate.choice(constraint, ("nonnegative", "sum_to_one"), name="constraint")
    energy = od["energy"].values.astype(float)
    _validate.energies(energy, name="od")
    refs = reference_spectra() if references is None else references
    _check_references(refs, energy)
    mu = np.stack([np.interp(energy, refs["energy"].values, refs[k].values) for k in _PHASES], axis=1)
    n_e, ny, nx = od.shape
    Y = np.asarray(od.values, dtype=float).reshape(n_e, -1)
    ok = np.isfinite(Y).all(axis=0)
    Yok = Y[:, ok]
    res = {k: np.full(ny * nx, np.nan) for k in ("a", "b", "offset", "X", "X_sigma", "thickness", "residual")}
    if constraint == "nonnegative":
        _validate.choice(weighting, ("shot", "uniform"), name="weighting")
        A = np.column_stack([mu, np.ones(n_e)])
        p, rss = _nnls_offset(A, Yok)
        W = None
        if weighting == "shot":
            inc = od.coords["incident"].values if "incident" in od.coords else np.ones(n_e)
            W = inc[:, None] * np.exp(-np.clip(A @ p, -1.0, 6.0))
            W = W / W.mean(axis=0)
            p, rss = _nnls_offset(A, Yok, W)
        a, b = p[0], p[1]
        tot = a + b
        G = _normal_matrices(A, np.ones_like(Yok) if W is None else W)
        cov = np.linalg.inv(G)[:, :2, :2]
        s2 = rss / (n_e - 3)
        with np.errstate(divide="ignore", invalid="ignore"):
            X = np.where(tot > 0, a / tot, np.nan)
            g = np.stack([b, -a]) / tot**2
            var = s2 * np.einsum("ip,pij,jp->p", g, cov, g)
        r_rms = np.sqrt(np.mean((Yok - A @ p) ** 2, axis=0))
        res.update(a=_put(a, ok), b=_put(b, ok), offset=_put(p[2], ok), X=_put(X, ok),
                   X_sigma=_put(np.sqrt(var), ok), thickness=_put(tot, ok), residual=_put(r_rms, ok))
    else:
        yn = _edge_normalise(Yok, energy)
        mn = _edge_normalise(mu, energy)
        d = mn[:, 0] - mn[:, 1]
        X = np.clip(d @ (yn - mn[:, [1]]) / (d @ d), 0.0, 1.0)
        r = yn - mn[:, [1]] - np.outer(d, X)
        res.update(X=_put(X, ok), residual=_put(np.sqrt(np.mean(r**2, axis=0)), ok))
    tu = "nm" if refs["LFP"].attrs.get("units") == "1/nm" else "reference thickness units"
    meta = {
        "a": (tu, "LiFePO4 thickness (a)"),
        "b": (tu, "FePO4 thickness (b)"),
        "offset": ("1", "flat OD offset"),
        "X": ("1", "Li fraction x in LixFePO4"),
        "X_sigma": ("1", "standard deviation of X"),
        "thickness": (tu, "thickness a + b"),
        "residual": ("1", "RMS misfit of the spectrum fit (OD)"),
    }
    coords = {k: v for k, v in od.coords.items() if set(v.dims) <= {"y", "x"}}
    return xr.Dataset(
        {k: (("y", "x"), res[k].reshape(ny, nx), {"units": u, "long_name": ln}) for k, (u, ln) in meta.items()},
        coords=coords, attrs={"constraint": constraint, "n_energies": n_e},
    )


def predict_od(fit: xr.Dataset, energy, *, references: xr.Dataset | None = None) -> xr.DataArray:
    """The fitted model OD(E) = a·μ_LFP(E) + b·μ_FP(E) + c at `energy`, for every pixel.

    Parameters
    ----------
    fit : xarray.Dataset
        Output of :func:`fit_spectra` (``a``, ``b``, ``offset`` on ``(y, x)``).
    energy : array_like
        Energies, eV.
    references : xarray.Dataset, optional
        The references used in the fit (default :func:`reference_spectra`).

    Returns
    -------
    xarray.DataArray
        ``(energy, y, x)``, OD.

    Examples
    --------
    >>> e = np.arange(700.0, 712.0)
    >>> od = xr.DataArray(40.0 * reference_spectra(e).LFP.values[:, None, None] + np.zeros((1, 2, 3)),
    ...                   dims=("energy", "y", "x"), coords={"energy": e})
    >>> pred = predict_od(fit_spectra(od), e)
    >>> bool(np.allclose(pred, od))
    True
    """
    for k in ("a", "b", "offset"):
        if not isinstance(fit, xr.Dataset) or k not in fit:
            raise ValueError(f"fit must be a Dataset from fit_spectra with variable {k!r}")
    e = _validate.array(energy, name="energy", ndim=1, dtype_kind="iuf", finite=True).astype(float)
    refs = reference_spectra() if references is None else _check_references(references, e)
    mu = np.stack([np.interp(e, refs["energy"].values, refs[k].values) for k in _PHASES], axis=1)
    p = np.stack([fit[k].values for k in ("a", "b", "offset")])
    pred = np.einsum("ei,iyx->eyx", np.column_stack([mu, np.ones(e.size)]), p)
    return xr.DataArray(pred, dims=("energy", "y", "x"),
                        coords={"energy": ("energy", e, {"units": "eV", "long_name": "photon energy"}),
                                **{k: v for k, v in fit.coords.items() if set(v.dims) <= {"y", "x"}}},
                        attrs={"units": "1", "long_name": "model optical density"})


def calibration_curve(X, X_sigma, X_true, *, k=None) -> xr.Dataset:
    """Fraction of pixels with |X − X_true| ≤ k·σ_X, against k, with the Gaussian expectation.

    Parameters
    ----------
    X, X_sigma, X_true : array_like
        Estimates, their standard deviations and the truth (same shape); pixels
        where any is NaN are ignored.
    k : array_like, optional
        Multiples of σ (default 0 to 3 in steps of 0.05).

    Returns
    -------
    xarray.Dataset
        ``observed`` and ``gaussian`` (= erf(k/√2)) on ``k``; ``attrs["n_pixels"]``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> truth = rng.uniform(0, 1, 20000)
    >>> c = calibration_curve(truth + rng.normal(0, 0.02, truth.size), np.full(truth.size, 0.02), truth)
    >>> round(float(c.observed.sel(k=1.0)), 2), round(float(c.gaussian.sel(k=1.0)), 2)
    (0.68, 0.68)
    """
    from scipy.special import erf

    x = np.asarray(X.values if isinstance(X, xr.DataArray) else X, float).ravel()
    s = np.asarray(X_sigma.values if isinstance(X_sigma, xr.DataArray) else X_sigma, float).ravel()
    t = np.asarray(X_true.values if isinstance(X_true, xr.DataArray) else X_true, float).ravel()
    if not (x.shape == s.shape == t.shape):
        raise ValueError(f"X, X_sigma and X_true must have the same shape, got {x.shape}, {s.shape}, {t.shape}")
    ok = np.isfinite(x) & np.isfinite(s) & np.isfinite(t) & (s > 0)
    if not ok.any():
        raise ValueError("X, X_sigma and X_true share no finite pixel")
    kk = np.round(np.arange(0.0, 3.0001, 0.05), 4) if k is None else np.asarray(k, float)
    z = np.abs(x[ok] - t[ok]) / s[ok]
    obs = np.mean(z[:, None] <= kk[None, :], axis=0)
    return xr.Dataset(
        {"observed": ("k", obs, {"units": "1", "long_name": "fraction within k sigma"}),
         "gaussian": ("k", erf(kk / np.sqrt(2.0)), {"units": "1", "long_name": "Gaussian expectation"})},
        coords={"k": ("k", kk, {"units": "1", "long_name": "k (multiples of sigma_X)"})},
        attrs={"n_pixels": int(ok.sum())},
    )


def _put(values: np.ndarray, ok: np.ndarray) -> np.ndarray:
    out = np.full(ok.shape, np.nan)
    out[ok] = values
    return out


_MP_MARGIN = 1.1  # significance margin above the Marchenko–Pastur noise edge


def principal_components(od: xr.DataArray, *, mask, noise=None, n_components: int = 6) -> xr.Dataset:
    """Principal components of the OD spectra inside `mask` (flat offset removed).

    Parameters
    ----------
    od : xarray.DataArray
        ``(energy, y, x)`` optical density.
    mask : array_like of bool
        ``(y, x)`` pixels to analyse (finite at every energy).
    noise : float or array_like, optional
        OD noise standard deviation: a number, one per energy ``(n_E,)``, or one per
        point ``(n_E, ny, nx)``. The spectra are divided by it (whitened), and
        components whose singular value exceeds the Marchenko–Pastur edge of pure
        unit noise, √n_pix + √n_E, by more than 10 % (finite-size fluctuations of
        the largest noise value and the error of a residual-based noise estimate)
        count as significant.
    n_components : int, optional
        How many components to report.

    Returns
    -------
    xarray.Dataset
        ``explained_variance_ratio`` and ``singular_value`` (of the whitened data) on
        ``component``; ``attrs["n_significant"]`` (−1 without `noise`).

    Examples
    --------
    >>> refs = reference_spectra(np.arange(700.0, 730.0, 0.5))
    >>> rng = np.random.default_rng(1)
    >>> a, b = rng.uniform(0, 80, (2, 300))
    >>> spec = refs.LFP.values[:, None] * a + refs.FP.values[:, None] * b
    >>> spec = spec + rng.normal(0, 0.01, spec.shape)
    >>> od = xr.DataArray(spec.reshape(-1, 15, 20), dims=("energy", "y", "x"),
    ...                   coords={"energy": refs.energy.values})
    >>> principal_components(od, mask=np.ones((15, 20), bool), noise=0.01).attrs["n_significant"]
    2
    """
    _validate.dims(od, ("energy", "y", "x"), name="od")
    m = _validate.mask(mask, name="mask", shape=od.shape[1:], min_count=2)
    Y = np.asarray(od.values, float)[:, m]
    sig = None
    if noise is not None:
        if np.ndim(noise) == 0:
            sig = np.full(Y.shape, _validate.positive(noise, name="noise"))
        else:
            arr = _validate.array(noise, name="noise", ndim=(1, 3), dtype_kind="iuf")
            if arr.shape not in ((od.shape[0],), od.shape):
                raise ValueError(f"noise must have shape ({od.shape[0]},) or {od.shape}, got {arr.shape}")
            sig = np.broadcast_to(arr[:, None], Y.shape) if arr.ndim == 1 else arr[:, m]
    keep = np.isfinite(Y).all(axis=0) & (np.ones(Y.shape[1], bool) if sig is None else
                                         (np.isfinite(sig) & (sig > 0)).all(axis=0))
    Y = Y[:, keep]
    if Y.shape[1] < 2:
        raise ValueError("mask selects fewer than 2 pixels that are finite at every energy")
    Y = Y - Y.mean(axis=0)  # a flat offset per pixel is not a spectral component
    if sig is not None:
        Y = Y / sig[:, keep]
    s = np.linalg.svd(Y, compute_uv=False)
    k = min(n_components, s.size)
    ratio = s**2 / np.sum(s**2)
    edge = _MP_MARGIN * (np.sqrt(Y.shape[0]) + np.sqrt(Y.shape[1]))
    n_sig = -1 if sig is None else int(np.sum(s > edge))
    comp = np.arange(1, k + 1)
    return xr.Dataset(
        {"explained_variance_ratio": ("component", ratio[:k], {"units": "1", "long_name": "explained variance"}),
         "singular_value": ("component", s[:k], {"units": "1", "long_name": "singular value"})},
        coords={"component": ("component", comp, {"units": "1", "long_name": "component"})},
        attrs={"n_significant": n_sig},
    )


# --- the public entry point ------------------------------------------------------------


def map_lithium(stack: xr.DataArray, *, references: xr.Dataset | None = None, align: bool = True,
                background=None, od_max: float = OD_SATURATION, max_sigma: float = 0.25) -> xr.Dataset:
    """Map the Li fraction X of Li_xFePO4 from an Fe L-edge energy stack.

    Parameters
    ----------
    stack : xarray.DataArray
        Dims ``("energy", "y", "x")`` with an increasing ``energy`` coordinate (eV).
        Complex values = ptychographic object transmission; real values =
        transmitted intensity (not normalised).
    references : xarray.Dataset, optional
        ``LFP`` and ``FP`` absorption per unit thickness (OD units) on ``energy``,
        interpolated onto the stack energies; must cover the stack's range.
        ``None`` = :func:`reference_spectra` (OD per nm, so thickness is in nm).
    align : bool, optional
        Correct frame-to-frame drift (:func:`estimate_drift`); the output grid is
        the input grid, registered to the frame at the first energy.
    background : array_like of bool, optional
        ``(y, x)`` particle-free pixels giving the incident intensity per energy;
        ``None`` = detected automatically.
    od_max : float, optional
        Pixels with OD above this at any energy are saturated and masked.
    max_sigma : float, optional
        Pixels with σ_X above this (too little Fe signal) are masked.

    Returns
    -------
    xarray.Dataset
        On ``("y", "x")``: ``X``, ``X_sigma``, ``thickness``, ``residual`` (RMS misfit,
        OD), ``mask`` (particle, not saturated, enough signal, covered by every
        aligned frame), and ``shifts`` ``("energy", "axis")`` (px, the drift removed).
        ``attrs`` give the PCA check (``pca_explained_variance_ratio``,
        ``pca_n_significant``) and the pixel counts removed by each mask.

    Notes
    -----
    The particle is where the fitted thickness exceeds 5 robust standard deviations
    of its value on the background. See :func:`fit_spectra` for the model and σ_X.

    Examples
    --------
    >>> from chemomech import twin
    >>> from chemomech.twin import ptycho
    >>> p = twin.make_particle("demo", batch="biphasic", seed=2, semi_axes_nm=(90.0, 120.0))
    >>> stack, truth = ptycho.simulate_stack(p, shape=(40, 48), pixel_size_nm=8.0, rng=0)
    >>> res = map_lithium(stack)
    >>> err = (res.X - truth.X).where(res.mask & truth.interior)
    >>> bool(float(np.sqrt((err**2).mean())) < 0.05)
    True
    """
    _validate.energy_stack(stack)
    if not isinstance(align, bool):
        raise TypeError(f"align must be a bool, got {type(align).__name__}")
    od_max = _validate.positive(od_max, name="od_max")
    max_sigma = _validate.positive(max_sigma, name="max_sigma")
    energy = stack["energy"].values.astype(float)
    refs = reference_spectra() if references is None else references
    _check_references(refs, energy)
    if align:
        shifts = estimate_drift(stack, references=refs, background=background)
    else:
        shifts = _shifts_da(np.zeros((stack.sizes["energy"], 2)), stack["energy"])
    od = optical_density(stack, shifts=shifts if align else None, background=background)
    fit = fit_spectra(od, references=refs)
    valid = np.isfinite(od.values).all(axis=0)
    n_bg = od.attrs["background"]
    t = fit["thickness"].values
    # particle: Fe thickness far above the background's scatter
    bg_guess = ~ndimage.binary_dilation(_otsu_particle(_edge_jump(od.values, energy)), iterations=4) & valid
    tb = t[bg_guess] if bg_guess.sum() >= 10 else t[valid]
    med = _quiet(np.nanmedian, tb)
    mad = 1.4826 * _quiet(np.nanmedian, np.abs(tb - med))
    particle = valid & (t > med + 5.0 * max(mad, 1e-12))
    saturated = valid & (np.nanmax(np.where(np.isfinite(od.values), od.values, -np.inf), axis=0) > od_max)
    weak = particle & ~(fit["X_sigma"].values <= max_sigma)
    mask = particle & ~saturated & ~weak & np.isfinite(fit["X"].values)
    pca_mask = mask if mask.sum() >= 2 else valid
    pca = principal_components(od, mask=pca_mask, noise=_noise_model(od, fit, pca_mask, refs))
    out = xr.Dataset(coords={k: v for k, v in stack.coords.items() if set(v.dims) <= {"y", "x"}})
    for k in ("X", "X_sigma", "thickness", "residual"):
        out[k] = fit[k].where(mask)
        out[k].attrs = dict(fit[k].attrs)
    out["mask"] = (("y", "x"), mask, {"units": "1", "long_name": "valid pixels"})
    out["shifts"] = shifts
    out.attrs = {
        "references": refs.attrs.get("source", "user-supplied references"),
        "aligned": int(align),
        "od_max": od_max,
        "n_background": n_bg,
        "n_particle": int(particle.sum()),
        "n_saturated": int((saturated & particle).sum()),
        "n_low_signal": int(weak.sum()),
        "pca_explained_variance_ratio": pca["explained_variance_ratio"].values,
        "pca_n_significant": pca.attrs["n_significant"],
    }
    return out


def _noise_model(od: xr.DataArray, fit: xr.Dataset, mask: np.ndarray, refs: xr.Dataset) -> np.ndarray:
    """Per-point OD noise σ(E, pixel) = σ_E·σ_pixel from the fit residuals (for the PCA check)."""
    n_e = od.sizes["energy"]
    r = od.values - predict_od(fit, od["energy"].values, references=refs).values
    sig_e = np.sqrt(_quiet(np.nanmean, r[:, mask] ** 2, axis=1))
    with np.errstate(invalid="ignore"):
        sig_p = np.sqrt(np.mean((r / sig_e[:, None, None]) ** 2, axis=0))
    return sig_e[:, None, None] * sig_p[None] * np.sqrt(n_e / (n_e - 3))


# --- files ----------------------------------------------------------------------------


