"""Li fraction from Fe L-edge energy stacks (X-ray spectro-ptychography and STXM).

The pipeline of :func:`map_lithium`, each step also available on its own:

0. :func:`find_failed_frames` — frames that are all zero, all NaN or far outside the
   stack's statistics are dropped with a warning naming their energies.
1. :func:`estimate_drift` — the shift of every frame on its own (spectro-ptychography
   reconstructs each energy separately, so offsets jump): coarse correlation of
   gradient-magnitude images (robust to the LFP/FP contrast flip between 708 and
   710 eV, blind near NaN regions and the field edge), then rounds of fitting the
   aligned stack and registering every frame, sub-pixel, to its own model prediction
   (absorbance and, for complex objects, phase). Smoothing across energy is opt-in
   (STXM). :func:`calibrate_references` fits a global energy offset and resolution
   broadening of the references in every round.
2. :func:`optical_density` — shift every frame back onto the first frame's grid
   (spline interpolation, edges never wrapped: pixels that moved in become NaN),
   incident intensity per energy from particle-free pixels, OD = −ln(I/I0) or, for a
   complex ptychographic object, OD = −2 ln(|O|/|O_bg|).
3. :func:`fit_spectra` — per-pixel non-negative least squares OD(E) = a·μ_LFP(E) +
   b·μ_FP(E) + c, vectorised over pixels (exact active-set enumeration); thickness
   = a + b, molar X = a/(a + r·b) with r the FePO4/LiFePO4 Fe density ratio, σ_X by
   propagating the residual-scaled covariance.
4. :func:`principal_components` — how many spectral components the data hold.

Tools that users of MANTiS, Larch and TXM-Wizard expect: :func:`fit_components`
(linear-combination fit with N references), :func:`normalise_edge` (pre-/post-edge
normalisation), :func:`cluster_spectra` (PCA + k-means, mean spectra) and
:func:`edge_energy` (edge-energy map).

The built-in references (:func:`reference_spectra`) are a documented *model* of the
Fe L3/L2 spectra of LiFePO4 (Fe²⁺) and FePO4 (Fe³⁺) — tabulated (Chantler) background
and edge steps, modelled white lines — not measured data; pass your own measured
references with ``references=``.
"""

from __future__ import annotations

import warnings

import numpy as np
import xarray as xr
from scipy import ndimage
from scipy.special import voigt_profile

from . import _validate
from .materials import FE_DENSITY_RATIO_FP_LFP, FE_L_EDGE_MODEL, OD_SATURATION

__all__ = [
    "calibrate_references",
    "cluster_spectra",
    "edge_energy",
    "fit_components",
    "normalise_edge",
    "estimate_drift",
    "find_failed_frames",
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
    L3/L2 edge steps and a smooth non-resonant background (:data:`chemomech.materials.FE_L_EDGE_MODEL`);
    background and edge steps are the tabulated (Chantler) values of
    :data:`chemomech.materials.TABULATED_ABSORPTION_PER_NM`, the white lines are set so that
    100 nm of LiFePO4 has OD ≈ 1 at 708 eV (:data:`chemomech.materials.OD_PER_NM_LFP_708`).
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


# --- failed frames --------------------------------------------------------------------


def find_failed_frames(stack: xr.DataArray, *, z_max: float = 20.0) -> np.ndarray:
    """Frames that carry no usable image: all zero, (nearly) all NaN, or far outside the stack's statistics.

    Parameters
    ----------
    stack : xarray.DataArray
        Dims ``("energy", "y", "x")``, complex object or real intensity.
    z_max : float, optional
        A frame whose median log-amplitude or whose pixel-to-pixel roughness sits more
        than `z_max` robust standard deviations (and a factor 3) from the stack's median
        is failed. Real spectra change both by far less across the Fe L edge.

    Returns
    -------
    numpy.ndarray of bool
        ``(n_energy,)``, True for failed frames.

    Examples
    --------
    >>> v = np.random.default_rng(0).uniform(0.5, 1.0, (8, 10, 12))
    >>> v[2] = 0.0
    >>> v[5] = np.nan
    >>> st = xr.DataArray(v, dims=("energy", "y", "x"), coords={"energy": np.arange(700.0, 708.0)})
    >>> np.flatnonzero(find_failed_frames(st)).tolist()
    [2, 5]
    """
    _validate.dims(stack, ("energy", "y", "x"), name="stack")
    z_max = _validate.positive(z_max, name="z_max")
    v = np.asarray(stack.values)
    amp = np.abs(v) if np.iscomplexobj(v) else v.astype(float)
    n = amp.shape[0]
    ok = np.isfinite(amp) & (amp > 0)
    frac = ok.reshape(n, -1).mean(axis=1)
    failed = frac < 0.1  # all zero / all NaN / almost nothing left
    with np.errstate(divide="ignore", invalid="ignore"):
        la = np.where(ok, np.log(np.where(ok, amp, 1.0)), np.nan)
    level = np.full(n, np.nan)
    rough = np.full(n, np.nan)
    for k in np.flatnonzero(~failed):
        level[k] = np.nanmedian(la[k])
        dif = np.diff(la[k], axis=1)
        rough[k] = np.nanmedian(np.abs(dif)) if np.isfinite(dif).any() else np.nan
    good = ~failed & np.isfinite(level) & np.isfinite(rough)
    if good.sum() >= 3:
        for q, floor in ((level, np.log(3.0)), (np.log(np.maximum(rough, 1e-12)), np.log(3.0))):
            med = np.median(q[good])
            mad = 1.4826 * np.median(np.abs(q[good] - med))
            dev = np.abs(q - med)
            failed |= good & (dev > max(z_max * mad, floor))
    failed |= ~np.isfinite(level)
    return failed


# --- drift ----------------------------------------------------------------------------

_BORDER_PX = 6  # default margin of the reconstructed field left out (ptychography rings at its edge)


def _resolve_border(border, stack: xr.DataArray) -> int:
    """``None`` → automatic: complex (ptychography) stacks lose min(6, min(ny, nx) // 16) px, intensities 0."""
    if border is None:
        if not np.iscomplexobj(stack.values):
            return 0
        return int(min(_BORDER_PX, min(stack.shape[1:]) // 16))
    if not isinstance(border, (int, np.integer)) or border < 0:
        raise ValueError(f"border must be an int >= 0 or None, got {border!r}")
    return int(border)
_MIN_REGION_PX = 5  # particle components smaller than this (px) are specks of membrane noise
_REFINE_ROUNDS = 2  # rounds of (calibrate, fit, predict, register) in map_lithium


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
    out[bad] = _quiet(np.nanmedian, frame) if (~bad).any() else 0.0
    return out


def _border_mask(shape: tuple[int, int], border: int) -> np.ndarray:
    """True within `border` px of the edge of the field."""
    m = np.zeros(shape, bool)
    if border > 0:
        m[:border], m[-border:], m[:, :border], m[:, -border:] = True, True, True, True
    return m


def _taper(shape: tuple[int, int], border: int) -> np.ndarray:
    """0 within `border` px of the edge, a raised cosine over the next `border` px, 1 inside."""
    def one(n):
        i = np.arange(n, dtype=float)
        d = np.minimum(i, n - 1 - i) - border
        return np.where(d < 0, 0.0, 0.5 - 0.5 * np.cos(np.pi * np.clip(d / max(border, 1), 0.0, 1.0)))
    return one(shape[0])[:, None] * one(shape[1])[None, :]


def _edge_image(frame: np.ndarray, sigma_px: float, taper: np.ndarray) -> np.ndarray:
    """Gradient magnitude, blind (zero) near NaN regions and the field edge, tapered, mean-free."""
    nan = ~np.isfinite(frame)
    g = ndimage.gaussian_gradient_magnitude(_fill_nan(frame), sigma_px, mode="nearest")
    w = taper.copy()
    if nan.any():
        w[ndimage.binary_dilation(nan, iterations=int(np.ceil(3 * sigma_px)) + 1)] = 0.0
    if w.sum() <= 0:
        return np.zeros_like(g)
    # background level (median: the particle outline covers a minority of pixels) to zero, so
    # the taper adds no step of its own that would pull towards zero shift
    return (g - np.median(g[w > 0])) * w


def _xcorr_shift(ref: np.ndarray, img: np.ndarray, upsample: int) -> np.ndarray:
    from skimage.registration import phase_cross_correlation

    if not (np.any(ref) and np.any(img)):
        return np.zeros(2)
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


def _coarse_drift(L: np.ndarray, sigma_px: float, upsample: int, border: int) -> np.ndarray:
    """Shifts from gradient-magnitude images: neighbours first, then a common reference."""
    taper = _taper(L.shape[1:], border)
    edges = np.stack([_edge_image(f, sigma_px, taper) for f in L])
    n = edges.shape[0]
    d = np.zeros((n, 2))
    for k in range(1, n):  # pass 1: neighbours (similar contrast)
        d[k] = d[k - 1] + _xcorr_shift(edges[k - 1], edges[k], upsample)
    aligned, _ = _shift_frames(edges, d, order=1)
    ref = _quiet(np.nanmean, aligned, axis=0)
    ref = np.where(np.isfinite(ref), ref, 0.0) * taper
    d = np.stack([_xcorr_shift(ref, e, upsample) for e in edges])  # pass 2: common reference
    return d - d[0]


def _weighted_smooth(d: np.ndarray, w: np.ndarray, sigma: float) -> np.ndarray:
    """Local-linear Gaussian smoothing across frames with per-frame weights (inverse variances).

    Opt-in, for scanning (STXM) stacks whose drift is slow; a local *linear* fit (not
    a weighted mean) keeps a steady drift unbiased where the weights are uneven.
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


def _phase_images(stack: xr.DataArray, border: int) -> np.ndarray:
    """Phase of every reconstruction with its linear phase ramp and global phase removed.

    The ramp (an ambiguity of every ptychographic reconstruction) is the mean phase
    difference between neighbouring pixels, taken on the complex values so that it
    never wraps; the global phase is the mean phase inside the field. Assumes a weak
    phase object (|φ| < π relative to the membrane), true for particles thinner than
    ~500 nm at the Fe L edge. NaN where the object is not finite.
    """
    v = np.asarray(stack.values)
    n, ny, nx = v.shape
    inner = ~_border_mask((ny, nx), border)
    yy, xx = np.mgrid[:ny, :nx]
    out = np.full(v.shape, np.nan)
    for k in range(n):
        f = np.where(np.isfinite(v[k]) & inner, v[k], 0.0)
        gy = np.angle(np.sum(f[1:] * np.conj(f[:-1])))
        gx = np.angle(np.sum(f[:, 1:] * np.conj(f[:, :-1])))
        g = v[k] * np.exp(-1j * (gy * yy + gx * xx))
        tot = np.nansum(np.where(inner, g, 0.0))
        out[k] = np.angle(g * np.conj(tot / max(np.abs(tot), 1e-300)))
    return out


def _predict_phase(phase: np.ndarray, a: np.ndarray, b: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Each phase frame regressed on the fitted thickness maps (a, b, 1, y, x): its model prediction.

    The phase per nm of each end member is not tabulated near the edge (anomalous
    dispersion), so it is learned from the data, frame by frame, on the aligned grid;
    the plane terms absorb what remains of the reconstruction's phase ramp.
    """
    aligned, cover = _shift_frames(phase, d)
    ny, nx = a.shape
    yy, xx = np.mgrid[:ny, :nx] / max(ny, nx)
    ok = cover & np.isfinite(a) & np.isfinite(b)
    basis = np.stack([np.where(np.isfinite(a), a, 0.0), np.where(np.isfinite(b), b, 0.0), np.ones(a.shape), yy, xx])
    pred = np.full(phase.shape, np.nan)
    Bt = basis[:, ok].T
    good = np.isfinite(aligned[:, ok])
    for k in range(phase.shape[0]):
        g = good[k]
        if g.sum() < 10:
            continue
        coef, *_ = np.linalg.lstsq(Bt[g], aligned[k][ok][g], rcond=None)
        pred[k] = np.einsum("i,iyx->yx", coef, basis)
    pred[:, ~ok] = np.nan
    return pred


def _register_frames(frames: list[np.ndarray], preds: list[np.ndarray], d0: np.ndarray, *, border: int,
                     n_iter: int = 4, pad: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Register every frame to its model prediction, frame by frame (no smoothing across energy).

    For each frame ``k`` the shift ``d_k`` minimises, jointly over all modalities m
    (absorbance, phase), Σ w (F_m(r) − α_m P_m(r − d_k) − β_m − plane_m(r))² by
    Gauss–Newton, with P shifted and differentiated in Fourier space (sub-pixel, the
    prediction padded so nothing wraps into the field). Weights are zero at NaN pixels
    of the frame and of the shifted prediction and taper to zero at the field edge;
    each modality is weighted by its own residual variance. Returns the shifts and
    their standard deviations (Gauss–Newton covariance scaled by the residuals).
    """
    n, ny, nx = frames[0].shape
    taper = _taper((ny, nx), border)
    py, px = ny + 2 * pad, nx + 2 * pad
    ky = (2 * np.pi * np.fft.fftfreq(py))[:, None]
    kx = (2 * np.pi * np.fft.rfftfreq(px))[None, :]
    yy, xx = np.mgrid[:ny, :nx] / max(ny, nx)
    inner = (slice(pad, pad + ny), slice(pad, pad + nx))
    d = d0.astype(float).copy()
    sig = np.full((n, 2), np.nan)
    for k in range(n):
        mods = []
        for F, P in zip(frames, preds):
            f, p = F[k], P[k]
            pv = np.isfinite(p)
            fv = np.isfinite(f)
            if pv.sum() < 50 or fv.sum() < 50:
                continue
            fill = np.where(pv, p, np.median(p[pv]))
            FP = np.fft.rfft2(np.pad(fill, pad, mode="edge"))
            invalid_p = ndimage.binary_dilation(~pv, iterations=2)
            mods.append((np.where(fv, f, 0.0), FP, fv, invalid_p))
        if not mods:
            continue
        s2 = [None] * len(mods)
        alpha = [1.0] * len(mods)
        cov = None
        for it in range(n_iter):
            rows_J, rows_r, rows_w = [], [], []
            ncol = 2 + 4 * len(mods)
            for m, (f, FP, fv, invalid_p) in enumerate(mods):
                ph = FP * np.exp(-1j * (ky * d[k, 0] + kx * d[k, 1]))
                ps = np.fft.irfft2(ph, s=(py, px))[inner]
                gy = np.fft.irfft2(1j * ky * ph, s=(py, px))[inner]
                gx = np.fft.irfft2(1j * kx * ph, s=(py, px))[inner]
                pinv = _roll_mask(invalid_p, d[k])
                w = taper * (fv & ~pinv)
                sel = w > 0
                J = np.zeros((int(sel.sum()), ncol))
                J[:, 0] = -alpha[m] * gy[sel]
                J[:, 1] = -alpha[m] * gx[sel]
                c = 2 + 4 * m
                J[:, c], J[:, c + 1], J[:, c + 2], J[:, c + 3] = ps[sel], 1.0, yy[sel], xx[sel]
                if s2[m] is None:  # first pass: the linear part alone gives the residual scale
                    A = J[:, c:c + 4] * np.sqrt(w[sel])[:, None]
                    lin, *_ = np.linalg.lstsq(A, f[sel] * np.sqrt(w[sel]), rcond=None)
                    alpha[m] = lin[0] if abs(lin[0]) > 1e-6 else 1.0
                    J[:, 0], J[:, 1] = -alpha[m] * gy[sel], -alpha[m] * gx[sel]
                    s2[m] = max(float(np.sum(w[sel] * (f[sel] - J[:, c:c + 4] @ lin) ** 2) / w[sel].sum()), 1e-12)
                rows_J.append(J)
                rows_r.append(f[sel])
                rows_w.append(w[sel] / s2[m])
            J = np.concatenate(rows_J)
            r = np.concatenate(rows_r)
            w = np.concatenate(rows_w)
            JW = J * w[:, None]
            G = JW.T @ J
            try:
                sol = np.linalg.solve(G, JW.T @ r)
            except np.linalg.LinAlgError:
                break
            step = np.clip(sol[:2], -2.0, 2.0)
            d[k] += step
            for m in range(len(mods)):
                alpha[m] = sol[2 + 4 * m] if abs(sol[2 + 4 * m]) > 1e-6 else alpha[m]
            res = r - J @ sol
            # residual variance per modality for the next pass
            start = 0
            for m, Jm in enumerate(rows_J):
                nm = Jm.shape[0]
                wm = rows_w[m] * s2[m]
                s2[m] = max(float(np.sum(wm * res[start:start + nm] ** 2) / wm.sum()), 1e-12)
                start += nm
            cov = np.linalg.inv(G)
            if np.max(np.abs(step)) < 1e-3:
                break
        if cov is not None:
            sig[k] = np.sqrt(np.clip(np.diag(cov)[:2], 0.0, None))
    return d, sig


def _roll_mask(mask: np.ndarray, d) -> np.ndarray:
    """`mask` moved by the nearest whole-pixel shift `d` (outside = True)."""
    iy, ix = (int(round(float(v))) for v in d)
    ny, nx = mask.shape
    out = np.ones_like(mask)
    ys, yd = (slice(0, ny - iy), slice(iy, ny)) if iy >= 0 else (slice(-iy, ny), slice(0, ny + iy))
    xs, xd = (slice(0, nx - ix), slice(ix, nx)) if ix >= 0 else (slice(-ix, nx), slice(0, nx + ix))
    if abs(iy) < ny and abs(ix) < nx:
        out[yd, xd] = mask[ys, xs]
    return out


def _shifts_da(d: np.ndarray, energy, *, long_name: str = "drift removed (specimen displacement from frame 0)"
               ) -> xr.DataArray:
    return xr.DataArray(
        d, dims=("energy", "axis"),
        coords={"energy": energy, "axis": ("axis", ["y", "x"], {"long_name": "image axis"})},
        attrs={"units": "px", "long_name": long_name},
    )


def estimate_drift(stack: xr.DataArray, *, references: xr.Dataset | None = None, background=None,
                   refine: int = 3, sigma_px: float = 1.5, upsample_factor: int = 20,
                   smooth_frames: float = 0.0, border: int | None = None, calibrate: bool = True) -> xr.DataArray:
    """Shift of every frame of an energy stack, in pixels, relative to the first frame.

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
        Precision 1/`upsample_factor` px of the coarse (correlation) step.
    smooth_frames : float, optional
        Opt-in Gaussian smoothing of the shifts across energy, in frames, for
        scanning (STXM) stacks whose drift is slow; 0 (default) = every frame on its own,
        as for spectro-ptychography, where each energy is its own reconstruction.
    border : int, optional
        Pixels along the edge of the field left out (reconstruction artefacts);
        ``None`` = min(6, min(ny, nx) // 16) for complex stacks, 0 for intensities.
    calibrate : bool, optional
        Fit the energy offset and resolution of the references in every round
        (:func:`calibrate_references`), so that the predictions match the frames.

    Returns
    -------
    xarray.DataArray
        ``(energy, axis)`` with ``axis = ["y", "x"]``, px: frame ``k`` shows the
        specimen displaced by ``shifts[k]`` from where it is in frame 0
        (``shifts[0] == 0``). ``attrs["sigma"]``: the standard deviation of every
        frame's shift ``(energy, axis)``, px, from the registration's own residuals;
        ``attrs["energy_offset_ev"]``, ``attrs["broadening_ev"]``: the calibration.

    Notes
    -----
    Raw frames change contrast across the edge (LFP domains are dark at 708 eV and
    bright at 710 eV relative to FP), which pulls raw cross-correlation by ~1 px. The
    coarse estimate therefore correlates gradient-magnitude images (the particle
    outline is there at every energy; blind near NaN regions and the field edge): each
    frame to its neighbour, then every frame to the mean of the aligned edge images.
    Each refinement round fits the aligned stack (:func:`fit_spectra`), predicts every
    frame from the fit — same contrast as the measured frame, whatever the energy —
    and registers each frame to its prediction on its own, by Gauss–Newton on the
    absorbance and (complex objects) the phase, whose thickness contrast is strong at
    every energy. No smoothness across energy is assumed unless `smooth_frames` > 0.

    Examples
    --------
    >>> yy, xx = np.mgrid[:40, :48]
    >>> frames = [np.exp(-((yy - 20 - s) ** 2 + (xx - 22) ** 2) / 60.0) for s in (0.0, -2.0, 1.5, 3.0, 0.5)]
    >>> stack = xr.DataArray(np.exp(-np.array(frames)), dims=("energy", "y", "x"),
    ...                      coords={"energy": [700.0, 705.0, 708.0, 710.0, 720.0]})
    >>> d = estimate_drift(stack, refine=0, border=0, calibrate=False)
    >>> bool(np.abs(d.sel(axis="y").values - [0.0, -2.0, 1.5, 3.0, 0.5]).max() < 0.1)
    True
    """
    _validate.energy_stack(stack)
    energy = stack["energy"].values.astype(float)
    refs = reference_spectra() if references is None else _check_references(references, energy)
    out = _align(stack, refs, background=background, refine=refine, sigma_px=sigma_px,
                 upsample_factor=upsample_factor, smooth_frames=smooth_frames,
                 border=_resolve_border(border, stack), calibrate=calibrate)
    da = _shifts_da(out["d"], stack["energy"])
    da.attrs.update(sigma=out["sigma"], energy_offset_ev=out["energy_offset_ev"],
                    broadening_ev=out["broadening_ev"])
    return da


def _check_align_options(sigma_px, upsample_factor, refine, smooth_frames, border, calibrate):
    _validate.positive(sigma_px, name="sigma_px")
    _validate.positive(smooth_frames, name="smooth_frames", allow_zero=True)
    if not isinstance(upsample_factor, (int, np.integer)) or upsample_factor < 1:
        raise ValueError(f"upsample_factor must be a positive int, got {upsample_factor!r}")
    if not isinstance(refine, (int, np.integer)) or refine < 0:
        raise ValueError(f"refine must be an int >= 0, got {refine!r}")
    if not isinstance(border, (int, np.integer)) or border < 0:
        raise ValueError(f"border must be an int >= 0, got {border!r}")
    if not isinstance(calibrate, bool):
        raise TypeError(f"calibrate must be a bool, got {type(calibrate).__name__}")


def _calibration_mask(fit: xr.Dataset) -> np.ndarray:
    """Pixels to calibrate the references on: the thicker half of the particle."""
    t = fit["thickness"].values
    ok = np.isfinite(t)
    if ok.sum() < 20:
        return ok
    hi = np.percentile(t[ok], 99)
    return ok & (t > 0.4 * hi)


def _align(stack, refs, *, background, refine, sigma_px, upsample_factor, smooth_frames, border, calibrate):
    """Coarse edge alignment, then rounds of (calibrate, fit, predict, register every frame)."""
    _check_align_options(sigma_px, upsample_factor, refine, smooth_frames, border, calibrate)
    energy = stack["energy"].values.astype(float)
    n = energy.size
    L = _absorbance(stack)
    d = _coarse_drift(L, sigma_px, upsample_factor, border)
    sig = np.full((n, 2), np.nan)
    phase = _phase_images(stack, border) if np.iscomplexobj(stack.values) else None
    refs_used, cal = refs, {"energy_offset_ev": 0.0, "broadening_ev": 0.0}
    fit = None
    for r in range(refine):
        od = optical_density(stack, shifts=_shifts_da(d, stack["energy"]), background=background, border=border)
        if calibrate:
            cmask = _calibration_mask(fit_spectra(od, references=refs_used) if fit is None else fit)
            refs_used = calibrate_references(od, references=refs, mask=cmask,
                                             start=None if r == 0 else (cal["energy_offset_ev"], cal["broadening_ev"]))
            cal = {k: refs_used.attrs[k] for k in cal}
        fit = fit_spectra(od, references=refs_used)
        pred = predict_od(fit, energy, references=refs_used).values
        frames, preds = [L], [pred]
        if phase is not None:
            frames.append(phase)
            preds.append(_predict_phase(phase, fit["a"].values, fit["b"].values, d))
        d_new, sig = _register_frames(frames, preds, d, border=border)
        if smooth_frames > 0:
            w = 1.0 / np.maximum(np.nan_to_num(np.mean(sig**2, axis=1), nan=np.inf), 1e-12)
            d_new = _weighted_smooth(d_new, w, smooth_frames)
        d = d_new - d_new[0]
    if refine == 0 and calibrate:
        od = optical_density(stack, shifts=_shifts_da(d, stack["energy"]), background=background, border=border)
        fit = fit_spectra(od, references=refs_used)
        refs_used = calibrate_references(od, references=refs, mask=_calibration_mask(fit))
        cal = {k: refs_used.attrs[k] for k in cal}
    d[0] = 0.0
    return {"d": d, "sigma": sig, "references": refs_used, **cal}


def _resolve_references(refs: xr.Dataset) -> tuple[list[str], np.ndarray, np.ndarray]:
    names = [k for k, v in refs.data_vars.items() if v.dims == ("energy",)]
    if not names:  # the callers say so by name
        return names, np.zeros(0), np.zeros((0, 0))
    return names, refs["energy"].values.astype(float), np.stack([refs[k].values.astype(float) for k in names], axis=1)


def calibrate_references(od: xr.DataArray, *, references: xr.Dataset | None = None, mask=None,
                         max_offset_ev: float = 0.75, max_broadening_ev: float = 1.5,
                         max_pixels: int = 2000, start=None) -> xr.Dataset:
    """Fit the energy offset and the extra resolution broadening of the references to a stack.

    Parameters
    ----------
    od : xarray.DataArray
        Aligned optical density ``(energy, y, x)``.
    references : xarray.Dataset, optional
        Reference spectra per unit thickness on their own ``energy`` grid (any number
        of variables on ``energy``); default :func:`reference_spectra`.
    mask : array_like of bool, optional
        ``(y, x)`` pixels to fit (default: every pixel finite at all energies).
    max_offset_ev, max_broadening_ev : float, optional
        Search range of the offset (±) and of the Gaussian broadening (FWHM), eV.
    max_pixels : int, optional
        At most this many pixels (evenly spaced among `mask`) enter the fit.
    start : (float, float), optional
        ``(offset, broadening)`` to start a local search from, instead of the grid.

    Returns
    -------
    xarray.Dataset
        The references evaluated at the stack's energies as the stack sees them:
        convolved with a Gaussian of FWHM ``attrs["broadening_ev"]`` and read at
        ``energy + attrs["energy_offset_ev"]`` (the stack's nominal energy scale is
        off by that much: true energy = nominal + offset).

    Notes
    -----
    The offset and broadening minimise the total residual of the per-pixel linear
    fit (references + flat offset) over the chosen pixels (the thick part of the
    particle, where the non-negativity bounds are not active): a grid over the search
    range, refined by Nelder–Mead; with `start` a local search from there. Peaks 2 eV apart with different shapes
    in the two phases make the offset well determined (to a few 10 meV on a twin
    particle); the broadening is less precise and mainly corrects the white-line
    heights, hence the thickness scale.

    Examples
    --------
    >>> e = np.arange(700.0, 730.0, 0.25)
    >>> refs = reference_spectra()
    >>> true = reference_spectra(e + 0.2)
    >>> a, b = np.meshgrid(np.linspace(10, 80, 6), np.linspace(5, 70, 5))
    >>> od = xr.DataArray(true.LFP.values[:, None, None] * a + true.FP.values[:, None, None] * b,
    ...                   dims=("energy", "y", "x"), coords={"energy": e})
    >>> cal = calibrate_references(od, references=refs)
    >>> round(cal.attrs["energy_offset_ev"], 2), round(cal.attrs["broadening_ev"], 1)
    (0.2, 0.0)
    """
    from scipy.optimize import minimize

    _validate.dims(od, ("energy", "y", "x"), name="od")
    energy = od["energy"].values.astype(float)
    _validate.energies(energy, name="od")
    refs = reference_spectra() if references is None else references
    if not isinstance(refs, xr.Dataset):
        raise TypeError(f"references must be an xarray.Dataset, got {type(refs).__name__}")
    names, e_ref, mu_ref = _resolve_references(refs)
    if not names:
        raise ValueError("references has no variable on 'energy'")
    max_off = _validate.positive(max_offset_ev, name="max_offset_ev", allow_zero=True)
    max_bw = _validate.positive(max_broadening_ev, name="max_broadening_ev", allow_zero=True)
    Y = np.asarray(od.values, float).reshape(energy.size, -1)
    ok = np.isfinite(Y).all(axis=0)
    if mask is not None:
        ok &= _validate.mask(mask, name="mask", shape=od.shape[1:]).ravel()
    idx = np.flatnonzero(ok)
    if idx.size < 5:
        raise ValueError(f"calibrate_references needs at least 5 pixels finite at every energy, got {idx.size}")
    idx = idx[np.linspace(0, idx.size - 1, min(idx.size, int(max_pixels))).astype(int)]
    Y = Y[:, idx]
    step = 0.02
    ef = np.arange(e_ref.min(), e_ref.max() + step / 2, step)
    muf = np.stack([np.interp(ef, e_ref, mu_ref[:, i]) for i in range(len(names))], axis=1)

    def model(de, fw):
        m = ndimage.gaussian_filter1d(muf, fw / (2.0 * np.sqrt(2.0 * np.log(2.0))) / step, axis=0,
                                      mode="nearest") if fw > 1e-3 else muf
        return np.stack([np.interp(energy + de, ef, m[:, i]) for i in range(m.shape[1])], axis=1)

    ysq = np.sum(Y**2)

    def cost(x):
        de, fw = float(x[0]), float(x[1])
        if abs(de) > max_off or fw < 0 or fw > max_bw:
            return np.inf
        q, _ = np.linalg.qr(np.column_stack([model(de, fw), np.ones(energy.size)]))
        return float(ysq - np.sum((q.T @ Y) ** 2))  # residual of the (unconstrained) least-squares fit

    grid_de = np.linspace(-max_off, max_off, int(round(2 * max_off / 0.1)) + 1) if max_off > 0 else np.zeros(1)
    grid_fw = np.linspace(0.0, max_bw, int(round(max_bw / 0.25)) + 1) if max_bw > 0 else np.zeros(1)
    if start is None:
        costs = np.array([[cost((de, fw)) for fw in grid_fw] for de in grid_de])
        i, j = np.unravel_index(np.argmin(costs), costs.shape)
        x0, c0 = np.array([grid_de[i], grid_fw[j]]), costs[i, j]
    else:
        x0 = np.clip(np.asarray(start, float), [-max_off, 0.0], [max_off, max_bw])
        c0 = cost(x0)
    if max_off > 0 or max_bw > 0:
        # Nelder-Mead over the parameters with a non-zero range only (a zero range holds that one fixed;
        # a simplex vertex outside the range would cost inf and stall the search on the grid point)
        free = [i for i, m in enumerate((max_off, max_bw)) if m > 0]
        size = (min(0.05, max_off), min(0.1, max_bw))
        move = [size[i] if x0[i] < (max_off, max_bw)[i] - size[i] else -size[i] for i in range(2)]
        simplex = [x0[free]] + [x0[free] + move[i] * np.eye(len(free))[j] for j, i in enumerate(free)]

        def sub_cost(z, x0=x0):
            x = x0.copy()
            x[free] = z
            return cost(x)

        res = minimize(sub_cost, x0[free], method="Nelder-Mead",
                       options={"xatol": 2e-3, "fatol": 1e-9 * abs(c0), "initial_simplex": simplex, "maxiter": 200})
        if np.isfinite(res.fun) and res.fun <= c0:
            x0 = x0.copy()
            x0[free] = res.x
    de, fw = float(x0[0]), max(float(x0[1]), 0.0)
    mu = model(de, fw)
    out = xr.Dataset({k: ("energy", mu[:, i], dict(refs[k].attrs)) for i, k in enumerate(names)},
                     coords={"energy": ("energy", energy, {"units": "eV", "long_name": "photon energy"})},
                     attrs={**refs.attrs, "energy_offset_ev": de, "broadening_ev": fw})
    return out


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
                    background=None, border: int | None = None) -> xr.DataArray:
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
        Fe edge jump (Otsu threshold, particle dilated by 4 px), leaving out `border`.
    border : int, optional
        Pixels along the edge of the field not used as automatic background
        (ptychographic reconstructions ring there) unless nothing else is left;
        ``None`` = as :func:`map_lithium`.

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
    border = _resolve_border(border, stack)
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
        if (bg & ~_border_mask(shape, border)).sum() >= 20:  # the field's edge only if nothing else is left
            bg &= ~_border_mask(shape, border)
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

def _subsets(n_bounded: int) -> list[tuple[int, ...]]:
    """Free-parameter sets of the exact active-set enumeration, largest first.

    Any subset of the bounded columns, plus the free last column (the flat offset).
    """
    from itertools import combinations

    out = []
    for size in range(n_bounded, -1, -1):
        out += [tuple(c) + (n_bounded,) for c in combinations(range(n_bounded), size)]
    return out


def _normal_matrices(A: np.ndarray, W: np.ndarray) -> np.ndarray:
    """AᵀWA for every pixel (W: one weight per energy and pixel), as one BLAS product."""
    outer = (A[:, :, None] * A[:, None, :]).reshape(A.shape[0], -1)
    return (W.T @ outer).reshape(W.shape[1], A.shape[1], A.shape[1])


def _nnls_offset(A: np.ndarray, Y: np.ndarray, W: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Min Σ w (A p − y)² s.t. p_i ≥ 0 for all but the last column (free) for every column y of Y.

    `W` holds one weight per energy and pixel (same shape as `Y`), or ``None`` for
    ordinary least squares. The optimum of a bound-constrained least-squares
    problem is the unconstrained solution on its free set; enumerating all free sets
    (2^N for N references) and keeping the best feasible one is exact. Returns the
    parameters ``(N + 1, n_pix)`` and the weighted residual sum of squares ``(n_pix,)``.
    """
    n_pix = Y.shape[1]
    n_par = A.shape[1]
    Wt = np.ones_like(Y) if W is None else W
    G = _normal_matrices(A, Wt)  # (n_pix, P, P)
    h = (Wt * Y).T @ A  # (n_pix, P)
    best_p = np.zeros((n_par, n_pix))
    best_r = np.full(n_pix, np.inf)
    for s in _subsets(n_par - 1):
        idx = np.array(s)
        with np.errstate(all="ignore"):
            try:
                p = np.linalg.solve(G[:, idx[:, None], idx[None, :]], h[:, idx, None])[..., 0].T
            except np.linalg.LinAlgError:
                p = np.stack([np.linalg.lstsq(g, hh, rcond=None)[0]
                              for g, hh in zip(G[:, idx[:, None], idx[None, :]], h[:, idx])], axis=1)
        r = np.sum(Wt * (Y - A[:, idx] @ p) ** 2, axis=0)
        bounded = [i for i, j in enumerate(s) if j < n_par - 1]
        feasible = np.all(p[bounded] >= 0, axis=0) if bounded else np.ones(n_pix, bool)
        take = feasible & (r < best_r)
        full = np.zeros((n_par, n_pix))
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
                constraint: str = "nonnegative", weighting: str = "shot",
                fe_density_ratio: float = FE_DENSITY_RATIO_FP_LFP) -> xr.Dataset:
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
    fe_density_ratio : float, optional
        Fe atoms per volume of FePO4 over LiFePO4 (default
        :data:`chemomech.materials.FE_DENSITY_RATIO_FP_LFP` ≈ 1.070, from the lattice
        parameters). References per unit thickness make a and b volumes, so
        a/(a + b) is the LiFePO4 *volume* fraction; the molar fraction x of
        Li_xFePO4 is X = a/(a + r·b). Pass 1.0 for references normalised per Fe atom
        (e.g. edge-step normalised).

    Returns
    -------
    xarray.Dataset
        ``a``, ``b`` (thickness of each phase, reference units), ``offset`` (OD),
        ``X`` (molar), ``X_volume`` (a/(a + b)), ``X_sigma``, ``thickness`` (a + b),
        ``residual`` (RMS misfit, OD).

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
    >>> round(float(fit.X_volume[0, 0]), 3), round(float(fit.thickness[0, 0]), 1)
    (0.75, 80.0)
    >>> round(float(fit.X[0, 0]), 3)  # molar: 60 nm LiFePO4 holds less Fe than 60 nm FePO4 would
    0.737
    """
    _validate.dims(od, ("energy", "y", "x"), name="od")
    _validate.choice(constraint, ("nonnegative", "sum_to_one"), name="constraint")
    r_fe = _validate.positive(fe_density_ratio, name="fe_density_ratio")
    energy = od["energy"].values.astype(float)
    _validate.energies(energy, name="od")
    refs = reference_spectra() if references is None else references
    _check_references(refs, energy)
    mu = np.stack([np.interp(energy, refs["energy"].values, refs[k].values) for k in _PHASES], axis=1)
    n_e, ny, nx = od.shape
    Y = np.asarray(od.values, dtype=float).reshape(n_e, -1)
    ok = np.isfinite(Y).all(axis=0)
    Yok = Y[:, ok]
    res = {k: np.full(ny * nx, np.nan)
           for k in ("a", "b", "offset", "X", "X_volume", "X_sigma", "thickness", "residual")}
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
        mol = a + r_fe * b
        with np.errstate(divide="ignore", invalid="ignore"):
            X = np.where(mol > 0, a / mol, np.nan)
            g = np.stack([r_fe * b, -r_fe * a]) / mol**2
            var = s2 * np.einsum("ip,pij,jp->p", g, cov, g)
            Xv = np.where(tot > 0, a / tot, np.nan)
        r_rms = np.sqrt(np.mean((Yok - A @ p) ** 2, axis=0))
        res.update(a=_put(a, ok), b=_put(b, ok), offset=_put(p[2], ok), X=_put(X, ok), X_volume=_put(Xv, ok),
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
        "X_volume": ("1", "LiFePO4 volume fraction a/(a+b)"),
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
                background=None, od_max: float = OD_SATURATION, max_sigma: float = 0.25,
                calibrate: bool = True, smooth_frames: float = 0.0, border: int | None = None,
                fe_density_ratio: float = FE_DENSITY_RATIO_FP_LFP, drop_failed: bool = True) -> xr.Dataset:
    """Map the Li fraction X of Li_xFePO4 from an Fe L-edge energy stack.

    Parameters
    ----------
    stack : xarray.DataArray
        Dims ``("energy", "y", "x")`` with an increasing ``energy`` coordinate (eV).
        Complex values = ptychographic object transmission; real values =
        transmitted intensity (not normalised). NaN pixels (outside the reconstructed
        field, masked areas) are left out of alignment, background and fit.
    references : xarray.Dataset, optional
        ``LFP`` and ``FP`` absorption per unit thickness (OD units) on ``energy``,
        interpolated onto the stack energies; must cover the stack's range.
        ``None`` = :func:`reference_spectra` (OD per nm, so thickness is in nm).
    align : bool, optional
        Register every frame (:func:`estimate_drift`); the output grid is the input
        grid, registered to the frame at the first energy.
    background : array_like of bool, optional
        ``(y, x)`` particle-free pixels giving the incident intensity per energy;
        ``None`` = detected automatically.
    od_max : float, optional
        Pixels with OD above this at any energy are saturated and masked.
    max_sigma : float, optional
        Pixels with σ_X above this (too little Fe signal) are masked.
    calibrate : bool, optional
        Fit a global energy offset and resolution broadening of the references
        (:func:`calibrate_references`); reported in ``attrs``.
    smooth_frames : float, optional
        Opt-in smoothing of the shifts across energy (frames), for STXM stacks.
    border : int, optional
        Pixels along the field edge left out (reconstruction ringing); ``None`` =
        min(6, min(ny, nx) // 16) for complex (ptychography) stacks, 0 for intensities.
    fe_density_ratio : float, optional
        FePO4/LiFePO4 Fe density used to turn the volume fraction into the molar
        fraction X (see :func:`fit_spectra`).
    drop_failed : bool, optional
        Drop failed frames (:func:`find_failed_frames`) with a warning naming their
        energies; ``False`` raises instead.

    Returns
    -------
    xarray.Dataset
        On ``("y", "x")``: ``X``, ``X_sigma``, ``thickness``, ``residual`` (RMS misfit,
        OD), ``mask`` (particle, not saturated, enough signal, covered by every
        aligned frame), and ``shifts`` ``("energy", "axis")`` (px, the shift removed;
        NaN for dropped frames) with ``shift_sigma`` (its standard deviation per
        frame). ``attrs`` give the calibration (``energy_offset_ev``,
        ``reference_broadening_ev``), ``failed_energies_ev``, the PCA check
        (``pca_explained_variance_ratio``, ``pca_n_significant``) and the pixel
        counts removed by each mask.

    Notes
    -----
    The particle is where the fitted thickness exceeds 5 robust standard deviations
    of its value on the background, without isolated specks (connected regions of fewer
    than 5 pixels) and the `border`. See :func:`fit_spectra` for the model and σ_X.

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
    _validate.dims(stack, ("energy", "y", "x"), name="stack")
    if "energy" not in stack.coords:
        raise ValueError("stack must have an 'energy' coordinate in eV")
    for name, val in (("align", align), ("calibrate", calibrate), ("drop_failed", drop_failed)):
        if not isinstance(val, bool):
            raise TypeError(f"{name} must be a bool, got {type(val).__name__}")
    od_max = _validate.positive(od_max, name="od_max")
    max_sigma = _validate.positive(max_sigma, name="max_sigma")
    _validate.positive(fe_density_ratio, name="fe_density_ratio")
    e_all = _validate.array(stack["energy"], name="stack energy", ndim=1, dtype_kind="iuf", finite=True)
    _validate.energies(e_all.astype(float), name="stack")
    _validate.array(stack, name="stack", ndim=3, dtype_kind="iufc")
    failed = find_failed_frames(stack)
    if failed.all():
        raise ValueError("stack has no usable frame: every frame is all zero, all NaN or far outside the "
                         "stack's statistics")
    if failed.any():
        bad = [float(x) for x in e_all[failed]]
        if not drop_failed:
            raise ValueError(f"stack has failed frames (all zero, all NaN or far outside the stack's "
                             f"statistics) at energies {bad} eV; drop them or pass drop_failed=True")
        warnings.warn(f"map_lithium: dropped {len(bad)} failed frame(s) at energies {bad} eV "
                      "(all zero, all NaN or far outside the stack's statistics)", RuntimeWarning, stacklevel=2)
    st = stack.isel(energy=np.flatnonzero(~failed))
    _validate.energy_stack(st)
    border = _resolve_border(border, st)
    energy = st["energy"].values.astype(float)
    refs = reference_spectra() if references is None else references
    _check_references(refs, energy)
    if align:
        al = _align(st, refs, background=background, refine=_REFINE_ROUNDS, sigma_px=1.5, upsample_factor=20,
                    smooth_frames=smooth_frames, border=border, calibrate=calibrate)
        d, sig, refs_used = al["d"], al["sigma"], al["references"]
        cal = (al["energy_offset_ev"], al["broadening_ev"])
    else:
        _check_align_options(1.5, 20, 0, smooth_frames, border, calibrate)
        d, sig, refs_used, cal = np.zeros((energy.size, 2)), np.full((energy.size, 2), np.nan), refs, (0.0, 0.0)
    shifts = _shifts_da(d, st["energy"])
    od = optical_density(st, shifts=shifts if align else None, background=background, border=border)
    if calibrate and not align:
        first = fit_spectra(od, references=refs)
        refs_used = calibrate_references(od, references=refs, mask=_calibration_mask(first))
        cal = (refs_used.attrs["energy_offset_ev"], refs_used.attrs["broadening_ev"])
    fit = fit_spectra(od, references=refs_used, fe_density_ratio=fe_density_ratio)
    valid = np.isfinite(od.values).all(axis=0) & ~_border_mask(od.shape[1:], border)
    n_bg = od.attrs["background"]
    t = fit["thickness"].values
    # particle: Fe thickness far above the background's scatter
    bg_guess = ~ndimage.binary_dilation(_otsu_particle(_edge_jump(od.values, energy)), iterations=4) & valid
    tb = t[bg_guess] if bg_guess.sum() >= 10 else t[valid]
    med = _quiet(np.nanmedian, tb)
    mad = 1.4826 * _quiet(np.nanmedian, np.abs(tb - med))
    particle = valid & (t > med + 5.0 * max(mad, 1e-12))
    # isolated specks (the background's thickness is skewed by the non-negativity bounds, so a few
    # membrane pixels pass any threshold) are not particle: drop components smaller than a few pixels
    lab, n_lab = ndimage.label(particle)
    sizes = np.bincount(lab.ravel(), minlength=n_lab + 1)
    specks = particle & (sizes[lab] < _MIN_REGION_PX)
    particle &= ~specks
    saturated = valid & (np.nanmax(np.where(np.isfinite(od.values), od.values, -np.inf), axis=0) > od_max)
    weak = particle & ~(fit["X_sigma"].values <= max_sigma)
    mask = particle & ~saturated & ~weak & np.isfinite(fit["X"].values)
    pca_mask = mask if mask.sum() >= 2 else valid
    pca = principal_components(od, mask=pca_mask, noise=_noise_model(od, fit, pca_mask, refs_used))
    out = xr.Dataset(coords={k: v for k, v in stack.coords.items() if set(v.dims) <= {"y", "x"}})
    for k in ("X", "X_sigma", "thickness", "residual"):
        out[k] = fit[k].where(mask)
        out[k].attrs = dict(fit[k].attrs)
    out["mask"] = (("y", "x"), mask, {"units": "1", "long_name": "valid pixels"})
    full = np.full((stack.sizes["energy"], 2), np.nan)
    full_sig = full.copy()
    full[~failed], full_sig[~failed] = d, sig
    out["shifts"] = _shifts_da(full, stack["energy"])
    out["shift_sigma"] = _shifts_da(full_sig, stack["energy"], long_name="standard deviation of the shift")
    out.attrs = {
        "references": refs.attrs.get("source", "user-supplied references"),
        "aligned": int(align),
        "od_max": od_max,
        "energy_offset_ev": float(cal[0]),
        "reference_broadening_ev": float(cal[1]),
        "fe_density_ratio": float(fe_density_ratio),
        "failed_energies_ev": [float(x) for x in e_all[failed]],
        "n_background": n_bg,
        "n_particle": int(particle.sum()),
        "n_specks": int(specks.sum()),
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


# --- what users of MANTiS, Larch and TXM-Wizard expect ----------------------------------


def _od_matrix(od, name: str = "od") -> tuple[np.ndarray, np.ndarray]:
    _validate.dims(od, ("energy", "y", "x"), name=name)
    energy = od["energy"].values.astype(float)
    _validate.energies(energy, name=name)
    return energy, np.asarray(od.values, float).reshape(energy.size, -1)


def _edge_lines(Y: np.ndarray, energy: np.ndarray, pre, post, e0: float, slope: bool = False):
    """Pre-edge level (or line) of every column of Y on `energy`, and the edge step.

    The step is the mean over the post-edge range minus the pre-edge level there (a
    flat post-edge: beyond the L2 white lines of a 3d metal there is little to fit).
    A fitted pre-edge *slope* is only safe with a long pre-edge range: over the few eV
    before the Fe L3 edge it picks up the white lines' tails, and extrapolated 20 eV it
    can swallow the whole step.
    """
    sel_pre = (energy >= pre[0]) & (energy <= pre[1])
    sel_post = (energy >= post[0]) & (energy <= post[1])
    for (lo, hi), sel in ((pre, sel_pre), (post, sel_post)):
        if sel.sum() < 2:
            raise ValueError(f"the range {lo:g}-{hi:g} eV holds {int(sel.sum())} energies; need at least 2")
    if slope:
        A = np.column_stack([np.ones(sel_pre.sum()), energy[sel_pre] - e0])
        (p0, p1), *_ = np.linalg.lstsq(A, Y[sel_pre], rcond=None)
        pre_line = p0[None, :] + p1[None, :] * (energy - e0)[:, None]
    else:
        pre_line = np.broadcast_to(Y[sel_pre].mean(axis=0), Y.shape)
    return pre_line, np.mean(Y[sel_post] - pre_line[sel_post], axis=0)


def normalise_edge(od: xr.DataArray, *, pre=(700.0, 705.0), post=(726.0, 730.0), e0: float = 710.0,
                   pre_slope: bool = False) -> xr.DataArray:
    """Pre-/post-edge normalisation of every spectrum (as Athena/Larch and MANTiS do).

    Parameters
    ----------
    od : xarray.DataArray
        ``(energy, y, x)`` optical density (or ``(energy,)`` spectra stacked as a 3-D array).
    pre, post : (float, float)
        Energy ranges (eV) of the pre-edge line and of the (flat) post-edge level,
        beyond the L2 white lines.
    e0 : float
        Reference energy (eV) of the pre-edge line's parametrisation.
    pre_slope : bool
        Fit a pre-edge line instead of a constant level (only with a pre-edge range of
        tens of eV; see Notes).

    Returns
    -------
    xarray.DataArray
        ``(energy, y, x)``: (OD − pre line) / edge step — 0 below the edge, ≈ 1 above
        it, independent of thickness; ``edge_step`` as a ``(y, x)`` coordinate.

    Notes
    -----
    Normalisation removes thickness: the amounts of a fit to normalised spectra are
    fractions of the edge step, not thicknesses. At the Fe L edge the "post-edge" level
    within a typical scan (to ~730 eV) still holds the L2 white lines' tails, which
    differ between Fe²⁺ and Fe³⁺ (FePO4's level is ~1.16× LiFePO4's in the built-in
    model, against 1.07× in Fe density), so normalised fractions are *not* molar
    fractions there; fit per-thickness references for X. Pixels with a small edge step
    (membrane) come out noisy. A pre-edge slope fitted over the ~5 eV before the edge
    picks up the white-line tails and, extrapolated to the post-edge, can swallow the
    step: the default pre-edge is a constant level.

    Examples
    --------
    >>> e = np.arange(700.0, 730.0, 0.25)
    >>> mu = reference_spectra(e).LFP.values
    >>> od = xr.DataArray(np.stack([30 * mu, 90 * mu], axis=1)[:, :, None], dims=("energy", "y", "x"),
    ...                   coords={"energy": e})
    >>> n = normalise_edge(od)
    >>> bool(np.allclose(n[:, 0, 0], n[:, 1, 0])), round(float(n.sel(energy=728.0)[0, 0]), 1)
    (True, 1.0)
    """
    energy, Y = _od_matrix(od)
    pre_line, step = _edge_lines(Y, energy, pre, post, float(e0), bool(pre_slope))
    with np.errstate(divide="ignore", invalid="ignore"):
        norm = (Y - pre_line) / np.where(np.abs(step) > 0, step, np.nan)
    shape = od.shape[1:]
    out = xr.DataArray(norm.reshape(od.shape), dims=od.dims, coords=od.coords,
                       attrs={"units": "1", "long_name": "edge-normalised absorption"})
    return out.assign_coords(edge_step=(("y", "x"), step.reshape(shape), {"units": od.attrs.get("units", "1"),
                                                                           "long_name": "edge step"}))


def fit_components(od: xr.DataArray, references: xr.Dataset, *, normalise: bool = False,
                   pre=(700.0, 705.0), post=(726.0, 730.0), e0: float = 710.0) -> xr.Dataset:
    """Linear-combination fit of every pixel with N user references (non-negative, with a flat offset).

    Parameters
    ----------
    od : xarray.DataArray
        ``(energy, y, x)`` optical density.
    references : xarray.Dataset
        One variable per reference on ``energy`` (any names, N ≥ 1; per unit
        thickness, or edge-normalised with ``normalise=True``), interpolated
        linearly onto the stack energies, which they must cover.
    normalise : bool, optional
        Normalise both the spectra and the references (:func:`normalise_edge`) before
        fitting; then the amounts are fractions of the edge step and the offset is ~0.
    pre, post, e0 :
        Passed to :func:`normalise_edge`.

    Returns
    -------
    xarray.Dataset
        On ``(y, x)``: the amount of every reference (its own name), ``fraction_<name>``
        (amount / sum of amounts), ``total``, ``offset`` and ``residual`` (RMS misfit).

    Notes
    -----
    Exact non-negative least squares for every pixel at once: all 2^N free sets are
    solved as batched normal equations and the best feasible one kept (N ≤ 8).
    Fractions of references per unit thickness are volume fractions; see
    :func:`fit_spectra` for the molar conversion of the LiFePO4/FePO4 pair.

    Examples
    --------
    >>> e = np.arange(700.0, 730.0, 0.25)
    >>> refs = reference_spectra()
    >>> refs["Fe3O4"] = 0.5 * (refs.LFP + refs.FP).shift(energy=10).fillna(0.004)
    >>> mu = refs.interp(energy=e)
    >>> od = (20 * mu.LFP + 30 * mu.FP + 50 * mu.Fe3O4).expand_dims(y=1, x=1).transpose("energy", "y", "x")
    >>> fit = fit_components(od, refs)
    >>> [round(float(fit[f"fraction_{k}"][0, 0]), 3) for k in ("LFP", "FP", "Fe3O4")]
    [0.2, 0.3, 0.5]
    """
    energy, Y = _od_matrix(od)
    if not isinstance(references, xr.Dataset):
        raise TypeError(f"references must be an xarray.Dataset, got {type(references).__name__}")
    names, e_ref, mu_ref = _resolve_references(references)
    if not names:
        raise ValueError("references has no variable on 'energy'")
    if len(names) > 8:
        raise ValueError(f"references has {len(names)} variables; at most 8 are supported")
    if e_ref.min() > energy.min() or e_ref.max() < energy.max():
        raise ValueError(f"references cover {e_ref.min():g}–{e_ref.max():g} eV but od spans "
                         f"{energy.min():g}–{energy.max():g} eV")
    if not isinstance(normalise, bool):
        raise TypeError(f"normalise must be a bool, got {type(normalise).__name__}")
    mu = np.stack([np.interp(energy, e_ref, mu_ref[:, i]) for i in range(len(names))], axis=1)
    if normalise:
        pre_line, step = _edge_lines(Y, energy, pre, post, float(e0))
        with np.errstate(divide="ignore", invalid="ignore"):
            Y = (Y - pre_line) / step
        pl, st = _edge_lines(mu, energy, pre, post, float(e0))
        mu = (mu - pl) / st
    ok = np.isfinite(Y).all(axis=0)
    A = np.column_stack([mu, np.ones(energy.size)])
    p, rss = _nnls_offset(A, Y[:, ok])
    ny, nx = od.shape[1:]
    tot = p[:-1].sum(axis=0)
    data = {}
    for i, k in enumerate(names):
        data[k] = (("y", "x"), _put(p[i], ok).reshape(ny, nx),
                   {"units": "1" if normalise else "reference thickness units", "long_name": f"amount of {k}"})
        with np.errstate(divide="ignore", invalid="ignore"):
            f = np.where(tot > 0, p[i] / tot, np.nan)
        data[f"fraction_{k}"] = (("y", "x"), _put(f, ok).reshape(ny, nx),
                                 {"units": "1", "long_name": f"fraction of {k}"})
    data["total"] = (("y", "x"), _put(tot, ok).reshape(ny, nx), {"units": data[names[0]][2]["units"],
                                                                 "long_name": "sum of amounts"})
    data["offset"] = (("y", "x"), _put(p[-1], ok).reshape(ny, nx), {"units": "1", "long_name": "flat offset"})
    data["residual"] = (("y", "x"), _put(np.sqrt(rss / energy.size), ok).reshape(ny, nx),
                        {"units": "1", "long_name": "RMS misfit"})
    coords = {k: v for k, v in od.coords.items() if set(v.dims) <= {"y", "x"} and k != "edge_step"}
    return xr.Dataset(data, coords=coords, attrs={"references": names, "normalised": int(normalise)})


def cluster_spectra(od: xr.DataArray, *, mask, n_components: int = 3, n_clusters: int = 3,
                    normalise: str | None = "area", rng=None) -> xr.Dataset:
    """PCA of the spectra inside `mask`, k-means clusters of the PCA scores, and their mean spectra.

    The MANTiS / TXM-Wizard route to "which spectrally distinct regions are there",
    without references.

    Parameters
    ----------
    od : xarray.DataArray
        ``(energy, y, x)`` optical density.
    mask : array_like of bool
        ``(y, x)`` pixels to cluster.
    n_components : int
        Principal components kept for clustering.
    n_clusters : int
        Number of k-means clusters.
    normalise : {"area", "edge", None}
        Cluster spectra of the same scale, so that shape, not thickness, decides:
        ``"area"`` (default) divides each pre-edge-subtracted spectrum by its
        integral over the L3 white lines (705–713 eV), large and well measured
        (pixels with less than 20 % of the median area are left out, label −1);
        ``"edge"`` uses :func:`normalise_edge` — at the L edge the step is ~10× smaller
        than the white lines, so thin pixels come out noisy and k-means spends clusters
        on them; ``None`` clusters the OD as it is.
    rng : numpy.random.Generator or int, optional
        Seeds k-means.

    Returns
    -------
    xarray.Dataset
        ``labels`` ``(y, x)`` (int, −1 outside `mask`), ``mean_spectrum``
        ``(cluster, energy)`` (mean spectrum of each cluster, normalised as chosen),
        ``explained_variance_ratio`` ``(component,)`` and ``scores`` ``(component, y, x)``.
        Clusters are numbered by increasing mean edge energy (:func:`edge_energy`
        of the mean spectrum), so the numbering does not depend on the seed.

    Examples
    --------
    >>> e = np.arange(700.0, 730.0, 0.25)
    >>> refs = reference_spectra(e)
    >>> a = np.zeros((10, 12)); a[:, :6] = 60.0
    >>> od = xr.DataArray(refs.LFP.values[:, None, None] * a + refs.FP.values[:, None, None] * (60.0 - a),
    ...                   dims=("energy", "y", "x"), coords={"energy": e})
    >>> c = cluster_spectra(od, mask=np.ones((10, 12), bool), n_clusters=2, rng=0)
    >>> c.labels.values[0, :6].tolist() == [0] * 6, c.labels.values[0, 6:].tolist() == [1] * 6
    (True, True)
    """
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    energy, _ = _od_matrix(od)
    m = _validate.mask(mask, name="mask", shape=od.shape[1:], min_count=2)
    for name, v in (("n_components", n_components), ("n_clusters", n_clusters)):
        if not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    gen = _validate.rng(rng)
    _validate.choice(normalise, ("area", "edge", None), name="normalise")
    if normalise == "edge":
        Y = np.asarray(normalise_edge(od).values, float)[:, m].T  # (pixels, energy)
    else:
        Y = np.asarray(od.values, float)[:, m].T
        if normalise == "area":
            pre = energy < 705.0
            Y = Y - (Y[:, pre].mean(axis=1, keepdims=True) if pre.any() else 0.0)
            win = (energy >= 705.0) & (energy <= 713.0)
            if win.sum() < 2:
                raise ValueError("normalise='area' needs energies across 705-713 eV")
            area = np.trapz(Y[:, win], energy[win], axis=1)
            # too little iron to have a shape (thin rim, holes): left out (label -1), not an outlier cluster
            weak = ~(area > 0.2 * _quiet(np.nanmedian, area))
            with np.errstate(divide="ignore", invalid="ignore"):
                Y = Y / np.where(weak, np.nan, area)[:, None]
    keep = np.isfinite(Y).all(axis=1)
    if keep.sum() < max(n_clusters, n_components + 1):
        raise ValueError(f"mask selects {int(keep.sum())} pixels with finite spectra; need at least "
                         f"{max(n_clusters, n_components + 1)}")
    k = min(n_components, Y.shape[1], int(keep.sum()) - 1)
    pca = PCA(n_components=k, svd_solver="full")
    scores = pca.fit_transform(Y[keep])
    km = KMeans(n_clusters=n_clusters, n_init=10, random_state=int(gen.integers(2**31 - 1))).fit(scores)
    means = np.stack([Y[keep][km.labels_ == c].mean(axis=0) for c in range(n_clusters)])
    order = np.argsort(_centroid(means.T, energy))
    rank = np.empty(n_clusters, int)
    rank[order] = np.arange(n_clusters)
    lab = np.full(od.shape[1:], -1)
    idx = np.flatnonzero(m.ravel())[keep]
    lab.ravel()[idx] = rank[km.labels_]
    sc = np.full((k,) + od.shape[1:], np.nan)
    for i in range(k):
        sc[i].ravel()[idx] = scores[:, i]
    comp = np.arange(1, k + 1)
    return xr.Dataset(
        {"labels": (("y", "x"), lab, {"units": "1", "long_name": "cluster (-1 = not clustered)"}),
         "mean_spectrum": (("cluster", "energy"), means[order],
                           {"units": "1", "long_name": "mean spectrum of the cluster"}),
         "explained_variance_ratio": ("component", pca.explained_variance_ratio_,
                                      {"units": "1", "long_name": "explained variance"}),
         "scores": (("component", "y", "x"), sc, {"units": "1", "long_name": "PCA scores"})},
        coords={"energy": od["energy"], "cluster": np.arange(n_clusters), "component": comp,
                **{kk: v for kk, v in od.coords.items() if set(v.dims) <= {"y", "x"} and kk != "edge_step"}},
        attrs={"normalised": str(normalise)},
    )


def _centroid(spec: np.ndarray, energy: np.ndarray, window=(705.0, 713.0)) -> np.ndarray:
    sel = (energy >= window[0]) & (energy <= window[1])
    w = np.clip(spec[sel], 0.0, None) + 1e-12
    return (energy[sel][:, None] * w).sum(axis=0) / w.sum(axis=0)


def _edge_crossing(norm: np.ndarray, energy: np.ndarray, level: float = 0.5, window=(705.0, 713.0)) -> np.ndarray:
    """First energy in `window` where each normalised spectrum (columns) rises through `level` (linear)."""
    sel = (energy >= window[0]) & (energy <= window[1])
    e = energy[sel]
    y = norm[sel]
    above = y >= level
    first = np.argmax(above, axis=0)
    ok = above.any(axis=0) & (first > 0)
    out = np.full(norm.shape[1], np.nan)
    j = np.flatnonzero(ok)
    i = first[j]
    y0, y1 = y[i - 1, j], y[i, j]
    out[j] = e[i - 1] + (level - y0) / (y1 - y0) * (e[i] - e[i - 1])
    return out


def edge_energy(od: xr.DataArray, *, method: str = "centroid", level: float = 0.5, window=(705.0, 713.0),
                pre=(700.0, 705.0), post=(726.0, 730.0), e0: float = 710.0) -> xr.DataArray:
    """Edge-energy map of every pixel, from its edge-normalised spectrum.

    Parameters
    ----------
    od : xarray.DataArray
        ``(energy, y, x)`` optical density.
    method : {"centroid", "crossing"}
        ``"centroid"``: the intensity-weighted mean energy of the normalised L3 white
        line over `window` (robust, uses every energy). ``"crossing"``: the first
        energy in `window` where the normalised spectrum reaches `level` (the K-edge
        convention of TXM-Wizard; on L edges it sits on the white line's rising flank).
    level : float
        Fraction of the edge step for ``"crossing"``.
    window : (float, float)
        Energies (eV) used.
    pre, post, e0 :
        Passed to :func:`normalise_edge`.

    Returns
    -------
    xarray.DataArray
        ``(y, x)``, eV; NaN where undefined (no positive signal, no crossing).

    Notes
    -----
    The L3 white line of Fe²⁺ (LiFePO4, 708 eV) lies ~2 eV below that of Fe³⁺
    (FePO4, 710 eV), so the edge energy falls with the Li fraction: a reference-free
    map of oxidation state. It is not linear in X and shifts with the resolution and
    the energy calibration; use it to see, and the fit to measure.

    Examples
    --------
    >>> e = np.arange(700.0, 730.0, 0.25)
    >>> refs = reference_spectra(e)
    >>> od = xr.DataArray(np.stack([50 * refs.LFP.values, 50 * refs.FP.values], axis=1)[:, None, :],
    ...                   dims=("energy", "y", "x"), coords={"energy": e})
    >>> np.round(edge_energy(od).values[0], 1).tolist()
    [709.1, 710.0]
    """
    energy, _ = _od_matrix(od)
    _validate.choice(method, ("centroid", "crossing"), name="method")
    if not 0 < float(level) < 1.5:
        raise ValueError(f"level must be a fraction of the edge step in (0, 1.5), got {level!r}")
    norm = np.asarray(normalise_edge(od, pre=pre, post=post, e0=e0).values).reshape(energy.size, -1)
    if method == "crossing":
        ee = _edge_crossing(norm, energy, float(level), window)
    else:
        sel = (energy >= window[0]) & (energy <= window[1])
        if sel.sum() < 2:
            raise ValueError(f"window {window} holds fewer than 2 energies")
        e = energy[sel]
        w = np.gradient(e)[:, None] * np.clip(norm[sel], 0.0, None)
        with np.errstate(divide="ignore", invalid="ignore"):
            ee = np.where(w.sum(axis=0) > 0, (e[:, None] * w).sum(axis=0) / w.sum(axis=0), np.nan)
    coords = {k: v for k, v in od.coords.items() if set(v.dims) <= {"y", "x"} and k != "edge_step"}
    return xr.DataArray(ee.reshape(od.shape[1:]), dims=("y", "x"), coords=coords,
                        attrs={"units": "eV", "long_name": f"edge energy ({method})"})


# --- files ----------------------------------------------------------------------------


