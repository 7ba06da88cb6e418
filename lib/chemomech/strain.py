"""Strain maps from Bragg disks in 4D-STEM datacubes.

Pipeline of :func:`measure_strain` (each step a small private function):

1. **Template.** The vacuum `probe`, or (``probe=None``) the central disk of
   the mean pattern: the disk at the inversion centre of the pattern (the
   optical axis), not the brightest one. It is re-averaged after the descan
   is measured, so it is not smeared by the probe's motion.
2. **Origin and descan.** The direct beam is located in every pattern and a
   plane ``origin(y, x)`` is fitted robustly across the scan.
3. **Reciprocal lattice and indexing.** Disks of the descan-corrected mean
   pattern give two shortest non-collinear lattice vectors (a reduced basis);
   every disk gets integer indices ``(h, k)``.
4. **Per-pattern disk positions.** Each disk is fitted with the template,
   ``I(q) ≈ A T(q - q0) + B``, by Gauss–Newton with Fourier-shifted templates
   (``method="fast"``), or detected by py4DSTEM's cross-correlation with DFT
   upsampling (``method="py4dstem"``, ``subpixel="multicorr"``,
   ``upsample_factor=16``).
5. **Lattice fit.** A weighted least-squares fit of ``q = o + G (h, k)`` per
   pattern (origin free) with outlier rejection, in two passes (inner disks
   first, then all).
6. **Strain.** With the reciprocal basis vectors as columns of ``G`` (in the
   scan frame), ``F^-T = G G_ref^-1``, where ``G_ref`` is the element-wise
   median over `reference`; ``H = F - I`` gives ``exx = H_xx``,
   ``eyy = H_yy``, ``exy = (H_xy + H_yx) / 2``, ``theta = (H_yx - H_xy) / 2``.

References
----------
.. [1] B. H. Savitzky et al., "py4DSTEM: a software package for four-dimensional
   scanning transmission electron microscopy data analysis", Microsc. Microanal.
   27, 712 (2021), doi:10.1017/S1431927621000477.
.. [2] T. C. Pekin et al., "Optimizing disk registration algorithms for nanobeam
   electron diffraction strain mapping", Ultramicroscopy 176, 170 (2017),
   doi:10.1016/j.ultramic.2016.12.021.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.fft as sfft
import xarray as xr
from numpy.typing import ArrayLike
from scipy import ndimage

from . import _py4dstem, _validate

__all__ = ["measure_strain", "diagnostics", "virtual_images", "to_crystal_frame", "load_datacube", "save_strain",
           "load_strain"]

_OPTIONS = ("method", "min_disks", "snr_min", "chunk", "progress", "upsample_factor")
_STRAIN_META = {
    "exx": ("1", "strain exx (image frame)"),
    "eyy": ("1", "strain eyy (image frame)"),
    "exy": ("1", "tensor shear strain exy (image frame)"),
    "theta": ("rad", "rigid rotation (positive: x towards y)"),
}


# ----------------------------------------------------------------- input


def _as_array(datacube: object) -> tuple[np.ndarray, dict]:
    """(ny, nx, ky, kx) float array and the (y, x) coords to copy."""
    coords: dict = {}
    if _py4dstem.is_datacube(datacube):
        arr = _py4dstem.datacube_to_array(datacube)
    elif isinstance(datacube, xr.DataArray):
        if datacube.ndim != 4 or datacube.dims[:2] != ("y", "x"):
            raise ValueError(f"datacube must have dims ('y', 'x', 'ky', 'kx'), got {datacube.dims}")
        coords = {k: datacube[k] for k in ("y", "x") if k in datacube.coords}
        arr = np.asarray(datacube.values)
    elif isinstance(datacube, (np.ndarray, list, tuple)) or hasattr(datacube, "__array__"):
        arr = np.asarray(datacube)  # also dask arrays
    else:
        raise TypeError(f"datacube must be a numpy/dask array, an xarray.DataArray or a py4DSTEM.DataCube, "
                        f"got {type(datacube).__name__}")
    arr = _validate.array(arr, name="datacube", ndim=4, dtype_kind="biuf")
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise ValueError("datacube must contain only finite values; found NaN or inf "
                         "(replace dead pixels, e.g. by the median of their neighbours)")
    if min(arr.shape[2:]) < 16:
        raise ValueError(f"datacube patterns must be at least 16 x 16 pixels, got {arr.shape[2:]}")
    return arr.astype(np.float32, copy=False), coords


# ----------------------------------------------------------------- disk fitting


class _Fitter:
    """Gauss–Newton fit of ``A T(q - q0) + B`` to W x W patches, batched over disks."""

    def __init__(self, template: np.ndarray):
        self.w = template.shape[0]
        self.half = self.w // 2
        f = sfft.fftfreq(self.w)
        self.fy, self.fx = f[:, None], f[None, :]
        self.t_hat = sfft.fft2(template)

    def patches(self, pad_img: np.ndarray, idx: np.ndarray, centre: np.ndarray, pad: int) -> np.ndarray:
        """Patches (m, W, W) of padded images pad_img[idx] around integer centres (m, 2)."""
        win = np.arange(-self.half, self.half + 1)
        rows = centre[:, 0, None] + win + pad
        cols = centre[:, 1, None] + win + pad
        return pad_img[idx[:, None, None], rows[:, :, None], cols[:, None, :]]

    def coarse(self, p: np.ndarray) -> np.ndarray:
        """Integer offset (m, 2) of the template maximum within each patch (circular correlation)."""
        cc = sfft.ifft2(sfft.fft2(p - p.mean(axis=(1, 2), keepdims=True)) * np.conj(self.t_hat)).real
        k = cc.reshape(len(p), -1).argmax(axis=1)
        off = np.stack(np.unravel_index(k, (self.w, self.w)), axis=1)
        return np.where(off > self.half, off - self.w, off)

    def refine(self, p: np.ndarray, n_iter: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Sub-pixel offset (m, 2), amplitude, amplitude error and position error (px) per patch."""
        m, npx = len(p), self.w * self.w
        d = np.zeros((m, 2))
        y = p.reshape(m, -1)
        jac = np.empty((m, npx, 4))
        jac[:, :, 1] = 1.0
        gy, gx = 2j * np.pi * self.fy, 2j * np.pi * self.fx
        for it in range(n_iter + 1):
            ts_hat = self.t_hat[None] * np.exp(-(gy[None] * d[:, 0, None, None] + gx[None] * d[:, 1, None, None]))
            ts = sfft.ifft2(ts_hat).real.reshape(m, -1)
            # amplitude and background are linear: solve them exactly for the current shift
            a11, a12 = np.einsum("mn,mn->m", ts, ts), ts.sum(1)
            b1, b2 = np.einsum("mn,mn->m", ts, y), y.sum(1)
            det = a11 * npx - a12 * a12
            amp = (b1 * npx - a12 * b2) / det
            bg = (a11 * b2 - a12 * b1) / det
            ty = sfft.ifft2(ts_hat * gy[None]).real.reshape(m, -1)
            tx = sfft.ifft2(ts_hat * gx[None]).real.reshape(m, -1)
            jac[:, :, 0] = ts
            jac[:, :, 2] = -amp[:, None] * ty
            jac[:, :, 3] = -amp[:, None] * tx
            res = y - amp[:, None] * ts - bg[:, None]
            jtj = np.matmul(jac.transpose(0, 2, 1), jac) + 1e-9 * np.eye(4)
            if it == n_iter:
                break
            step = np.linalg.solve(jtj, np.matmul(jac.transpose(0, 2, 1), res[:, :, None]))[:, :, 0]
            d = np.clip(d + np.clip(step[:, 2:], -1.0, 1.0), -self.half + 1, self.half - 1)
        var = np.einsum("mn,mn->m", res, res) / max(npx - 4, 1)
        cov_diag = np.linalg.inv(jtj)[:, [0, 2, 3], [0, 2, 3]] * var[:, None]
        amp_err = np.sqrt(np.abs(cov_diag[:, 0]))
        pos_err = np.sqrt(np.abs(cov_diag[:, 1:]).mean(1))
        return d, amp, amp_err, pos_err

    def locate(self, pad_img: np.ndarray, idx: np.ndarray, guess: np.ndarray, pad: int,
               limit: np.ndarray) -> tuple[np.ndarray, ...]:
        """Positions (m, 2), SNR and position error of disks near `guess` (m, 2) in images pad_img[idx]."""
        c0 = np.clip(np.round(guess).astype(int), -pad + self.half + 1, limit - 1 + pad - self.half - 1)
        off = self.coarse(self.patches(pad_img, idx, c0, pad))
        c1 = np.clip(c0 + off, -pad + self.half + 1, limit - 1 + pad - self.half - 1)
        d, amp, amp_err, pos_err = self.refine(self.patches(pad_img, idx, c1, pad))
        snr = amp / np.maximum(amp_err, 1e-12)
        return c1 + d, snr, pos_err


def _template_patch(image: np.ndarray, centre: np.ndarray, half: int) -> np.ndarray:
    """W x W patch of `image` with `centre` (sub-pixel) shifted to its middle, background removed."""
    c0 = np.round(centre).astype(int)
    pad = 2 * half + 2
    img = np.pad(image, pad, mode="edge")
    win = np.arange(-half, half + 1)
    p = img[c0[0] + pad + win[:, None], c0[1] + pad + win[None, :]].astype(float)
    frac = centre - c0
    f = sfft.fftfreq(p.shape[0])
    ph = np.exp(2j * np.pi * (f[:, None] * frac[0] + f[None, :] * frac[1]))
    p = sfft.ifft2(sfft.fft2(p) * ph).real
    edge = np.concatenate([p[0], p[-1], p[:, 0], p[:, -1]])
    p = p - np.median(edge)
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1]
    taper = np.clip((half + 0.5 - np.hypot(yy, xx)) / 1.5, 0, 1)  # soft circular window
    return p * taper


def _centred(template: np.ndarray) -> np.ndarray:
    """Shift a template so that its centre of mass sits exactly on the middle pixel (Fourier shift)."""
    t = template
    half = t.shape[0] // 2
    f = sfft.fftfreq(t.shape[0])
    for _ in range(3):
        w = np.clip(t, 0, None)
        com = np.array(ndimage.center_of_mass(w)) - half
        ph = np.exp(2j * np.pi * (f[:, None] * com[0] + f[None, :] * com[1]))
        t = sfft.ifft2(sfft.fft2(t) * ph).real
    return t


def _disk_radius(patch: np.ndarray) -> float:
    """Radius (px) of the disk in a background-free patch: area above half maximum."""
    half = patch.shape[0] // 2
    lab, _ = ndimage.label(patch > 0.5 * patch[half - 1:half + 2, half - 1:half + 2].max())
    return float(np.sqrt(np.count_nonzero(lab == lab[half, half]) / np.pi)) if lab[half, half] else 1.0


def _peaks(image: np.ndarray, radius: float, n_max: int = 60) -> np.ndarray:
    """Integer positions (n, 2) of disk-like maxima, brightest first."""
    sm = ndimage.gaussian_filter(image.astype(float), max(radius / 2, 1.0))
    size = max(int(1.4 * radius), 3)
    mx = ndimage.maximum_filter(sm, size=2 * size + 1)
    bg = np.median(sm)
    cand = np.argwhere((sm == mx) & (sm > bg + 0.01 * (sm.max() - bg)))
    order = np.argsort(sm[cand[:, 0], cand[:, 1]])[::-1]
    return cand[order[:n_max]]


def _inversion_centre(peaks: np.ndarray, tol: float) -> np.ndarray:
    """The peak about which most other peaks come in centrosymmetric pairs (the optical axis)."""
    best, score = peaks[0], -1
    for c in peaks[: min(len(peaks), 25)]:
        mirrored = 2 * c - peaks
        dist = np.min(np.linalg.norm(mirrored[:, None, :] - peaks[None, :, :], axis=2), axis=1)
        s = int(np.count_nonzero(dist < tol))
        if s > score:
            best, score = c, s
    return best


def _reduced_basis(vectors: np.ndarray, min_len: float) -> np.ndarray:
    """Two shortest non-collinear, frequently occurring difference vectors; columns (ky, kx)."""
    diff = (vectors[:, None, :] - vectors[None, :, :]).reshape(-1, 2)
    diff = diff[np.linalg.norm(diff, axis=1) > min_len]
    diff = np.where((diff[:, 1] < 0)[:, None] | ((diff[:, 1] == 0) & (diff[:, 0] < 0))[:, None], -diff, diff)
    support = np.array([np.count_nonzero(np.linalg.norm(diff - d, axis=1) < 0.5 * min_len) for d in diff])
    if len(diff) < 2:
        return None
    good = diff[support >= max(3, 0.3 * support.max())]
    good = good[np.argsort(np.linalg.norm(good, axis=1))]
    if len(good) < 2:
        return None
    b1 = good[0]
    cross = np.abs(b1[0] * good[:, 1] - b1[1] * good[:, 0]) / (np.linalg.norm(good, axis=1) * np.linalg.norm(b1))
    if not np.any(cross > 0.3):
        return None
    b2 = good[np.argmax(cross > 0.3)]
    # average each basis vector over its support
    b1 = diff[np.linalg.norm(diff - b1, axis=1) < 0.5 * min_len].mean(0)
    b2 = diff[np.linalg.norm(diff - b2, axis=1) < 0.5 * min_len].mean(0)
    return np.stack([b1, b2], axis=1)


def _fit_lattice(pos: np.ndarray, hk: np.ndarray, weight: np.ndarray, min_disks: int):
    """Weighted LS of pos (n, d, 2) = o + G hk per pattern; returns o (n, 2), G (n, 2, 2), rms, count."""
    n = pos.shape[0]
    design = np.concatenate([np.ones((hk.shape[0], 1)), hk], axis=1)  # (d, 3)
    w = np.where(np.isfinite(pos).all(-1), weight, 0.0)
    p = np.where(np.isfinite(pos), pos, 0.0)
    ata = np.einsum("nd,di,dj->nij", w, design, design)
    atb = np.einsum("nd,di,ndc->nic", w, design, p)  # (n, 3, 2)
    count = np.count_nonzero(w > 0, axis=1)
    ok = count >= min_disks
    ok &= np.linalg.cond(np.where(ok[:, None, None], ata, np.eye(3))) < 1e6
    sol = np.full((n, 3, 2), np.nan)
    sol[ok] = np.linalg.solve(ata[ok], atb[ok])
    origin = sol[:, 0, :]
    g = np.swapaxes(sol[:, 1:, :], 1, 2)  # (n, 2 [ky,kx], 2 [basis])
    pred = origin[:, None, :] + np.einsum("nab,db->nda", g, hk)
    r2 = ((pos - pred) ** 2).sum(-1)
    rms = np.sqrt(np.nansum(np.where(w > 0, r2, 0.0), 1) / np.maximum(count, 1))
    return origin, g, np.where(ok, rms, np.nan), count, pred


def _detector_frame(g_det: np.ndarray, rotation: float) -> np.ndarray:
    """Reciprocal basis (n, 2, 2) from detector (ky, kx) rows to scan-frame (x, y) rows, rotation undone."""
    g_xy = g_det[:, ::-1, :]  # rows (kx, ky) -> (x, y)
    c, s = np.cos(-rotation), np.sin(-rotation)
    return np.einsum("ij,njk->nik", np.array([[c, -s], [s, c]]), g_xy)


# ----------------------------------------------------------------- main


def _prepare(pats: np.ndarray, scan_shape: tuple[int, int], probe, *, snr_min: float, chunk: int,
             progress: bool) -> dict:
    """Steps 1-3: template, direct beam and descan plane, reference lattice and the disks to fit."""
    ny, nx = scan_shape
    dky, dkx = pats.shape[1:]
    # 1. template and central disk of the mean pattern
    mean = pats.mean(axis=0, dtype=np.float64)
    if probe is not None:
        pr = _validate.array(probe, name="probe", shape=(dky, dkx), finite=True).astype(float)
        pk = _peaks(pr, 2.0, n_max=1)
        if pr.max() <= np.median(pr) or len(pk) == 0:
            raise ValueError("probe shows no disk: expected a vacuum probe image with one bright disk")
        radius = _disk_radius(pr - np.median(pr))
    else:
        radius = None
    pk = _peaks(mean, radius or 3.0)
    if len(pk) < 3:
        raise ValueError("datacube: found fewer than 3 disks in the mean diffraction pattern; "
                         "no Bragg disks to measure strain from")
    c_mean = _inversion_centre(pk, tol=max(2.0, 0.5 * (radius or 3.0))).astype(float)
    if radius is None:
        radius = _disk_radius(_template_patch(mean, c_mean, int(np.ceil(3 * 3.0 + 4))))
    half = int(np.ceil(radius + 3.0))
    fitter_src = pr if probe is not None else mean
    src_centre = (np.array(ndimage.center_of_mass(np.clip(pr - np.median(pr), 0, None)))
                  if probe is not None else c_mean)
    template = _centred(_template_patch(fitter_src, src_centre, half))
    fitter = _Fitter(template)
    pad = 3 * half + 2
    limit = np.array([dky, dkx])

    def batches():
        rng_ = range(0, ny * nx, chunk)
        if progress:
            from tqdm.auto import tqdm

            rng_ = tqdm(rng_, desc="measuring disks", unit="batch")
        for s in rng_:
            sl = slice(s, min(s + chunk, ny * nx))
            yield sl, np.pad(pats[sl].astype(float), ((0, 0), (pad, pad), (pad, pad)), mode="constant")

    # 2. direct beam in every pattern, descan plane
    origin_obs = np.full((ny * nx, 2), np.nan)
    snr0 = np.zeros(ny * nx)
    for sl, padded in batches():
        m = sl.stop - sl.start
        pos, snr, _ = fitter.locate(padded, np.arange(m), np.tile(c_mean, (m, 1)), pad, limit)
        origin_obs[sl], snr0[sl] = pos, snr
    if probe is None:  # re-average the central disk without the descan smear
        acc = np.zeros_like(template)
        good = np.flatnonzero(snr0 > snr_min)
        for i in good[:: max(1, len(good) // 400)]:
            acc += _template_patch(pats[i], origin_obs[i], half)
        if acc.max() > 0:
            template = _centred(acc / acc.max())
            fitter = _Fitter(template)
            for sl, padded in batches():
                m = sl.stop - sl.start
                origin_obs[sl], snr0[sl], _ = fitter.locate(padded, np.arange(m), origin_obs[sl], pad, limit)
    yy, xx = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    design = np.stack([np.ones(ny * nx), yy.ravel(), xx.ravel()], axis=1)
    use = snr0 > snr_min
    if use.sum() < 3:
        raise ValueError("datacube: the direct beam was found in fewer than 3 patterns; cannot fit the descan")
    for _ in range(4):  # robust plane fit
        coef, *_ = np.linalg.lstsq(design[use], origin_obs[use], rcond=None)
        dev = np.linalg.norm(origin_obs - design @ coef, axis=1)
        mad = np.median(dev[use]) + 1e-3
        use = (snr0 > snr_min) & (dev < max(5 * mad, 0.5))
    origin_fit = design @ coef

    # 3. reciprocal lattice from the descan-corrected mean pattern
    # (from the 3 x 3 block of patterns with the most diffracted signal: one local lattice)
    central = np.array([pats[i, int(o[0]) - half:int(o[0]) + half + 1, int(o[1]) - half:int(o[1]) + half + 1].sum()
                        for i, o in enumerate(np.clip(np.round(origin_fit), half, limit - half - 1).astype(int))])
    score = ndimage.uniform_filter((pats.sum(axis=(1, 2)) - central).reshape(ny, nx), 3, mode="nearest")
    by, bx = np.unravel_index(np.argmax(score), (ny, nx))
    rows_b, cols_b = range(max(by - 1, 0), min(by + 2, ny)), range(max(bx - 1, 0), min(bx + 2, nx))
    block = [iy * nx + ix for iy in rows_b for ix in cols_b]
    shifted = np.zeros((dky, dkx))
    for i in block:
        sh = c_mean - origin_fit[i]
        shifted += ndimage.shift(pats[i].astype(float), sh, order=1, mode="constant")
    pk = _peaks(shifted, radius)
    padded_mean = np.pad(shifted, pad)[None]
    pos_m, snr_m, _ = fitter.locate(padded_mean, np.zeros(len(pk), int), pk.astype(float), pad, limit)
    pos_m = pos_m[snr_m > snr_min]
    if len(pos_m) < 4:
        raise ValueError("datacube: fewer than 4 disks in the mean pattern; cannot index a lattice")
    basis = _reduced_basis(pos_m, min_len=2 * radius)  # columns (ky, kx)
    if basis is None:
        raise ValueError("datacube: the disks of the mean pattern do not form a 2-D lattice "
                         "(no two independent reciprocal vectors); no Bragg disks to measure strain from")
    frac = np.linalg.solve(basis, (pos_m - c_mean).T).T
    keep = np.all(np.abs(frac - np.round(frac)) < 0.2, axis=1)
    hk_m = np.round(frac[keep])
    if keep.sum() < 4:
        raise ValueError("datacube: fewer than 4 indexable disks in the mean pattern; cannot fit a lattice")
    o_m, g_m, *_ = _fit_lattice(pos_m[keep][None], hk_m, np.ones((1, keep.sum())), 3)
    g_ref0 = g_m[0]
    # all lattice points whose window lies on the detector
    hmax = int(np.ceil(2 * max(dky, dkx) / np.min(np.linalg.norm(g_ref0, axis=0))))
    hh, kk = np.meshgrid(np.arange(-hmax, hmax + 1), np.arange(-hmax, hmax + 1), indexing="ij")
    hk = np.stack([hh.ravel(), kk.ravel()], axis=1).astype(float)
    q = c_mean + hk @ g_ref0.T
    margin = half + 0.5 + 0.01 * np.linalg.norm(q - c_mean, axis=1)
    on = np.all((q > margin[:, None]) & (q < limit - 1 - margin[:, None]), axis=1)
    hk = hk[on]
    gl = np.linalg.norm(hk @ g_ref0.T, axis=1)
    inner = gl <= 0.5 * gl.max()

    return {"fitter": fitter, "template": template, "half": half, "pad": pad, "limit": limit,
            "g_ref0": g_ref0, "hk": hk, "inner": inner, "origin_fit": origin_fit, "origin_obs": origin_obs,
            "direct_snr": snr0, "c_mean": c_mean, "radius": radius, "batches": batches, "mean": mean,
            "lattice_peaks": pos_m[keep], "lattice_hk": hk_m, "lattice_origin": o_m[0], "block": block}


def measure_strain(datacube: object, *, reference: ArrayLike | None = None, probe: ArrayLike | None = None,
                   rotation: float = 0.0, **options) -> xr.Dataset:
    """Measure strain and rotation maps from the Bragg disks of a 4D-STEM datacube.

    Parameters
    ----------
    datacube : array_like, xarray.DataArray or py4DSTEM.DataCube
        ``(ny, nx, ky, kx)``: scan rows, scan columns, detector rows, detector
        columns (py4DSTEM's ``Rx, Ry, Qx, Qy``). A DataArray must have dims
        ``("y", "x", "ky", "kx")``; its ``y``/``x`` coordinates are copied.
    reference : array_like of bool, optional
        ``(ny, nx)`` region whose median lattice defines zero strain; default
        all measured pixels.
    probe : array_like, optional
        ``(ky, kx)`` vacuum probe image; default: the central disk of the mean
        pattern (the optical axis, found as the pattern's inversion centre).
    rotation : float
        Rotation of the diffraction pattern relative to the scan, radians
        (a scan-frame vector ``g`` appears on the detector as ``R(rotation) g``).
    **options
        ``method`` ("fast" | "py4dstem"; disk positions by batched template
        fitting, or by py4DSTEM's correlation + DFT upsampling),
        ``min_disks`` (int, default 6), ``snr_min`` (float, default 4: disk
        amplitude over its standard error), ``upsample_factor`` (py4DSTEM,
        default 16), ``chunk`` (patterns per batch, default 256),
        ``progress`` (bool, tqdm bar).

    Returns
    -------
    xarray.Dataset
        On ``("y", "x")``: ``exx, eyy, exy`` (1), ``theta`` (rad), ``mask``
        (measured pixels), ``n_disks`` (disks in the final fit),
        ``residual`` (RMS disk misfit, px), ``origin_ky, origin_kx`` (fitted
        descan, px). Attributes: ``g1``/``g2`` reference reciprocal basis (px,
        scan frame x, y) and the template radius.

    Raises
    ------
    ValueError
        Wrong dimensionality, non-finite data, an empty or mis-shaped
        `reference`, no disks in the mean pattern, or no pattern measurable.

    Examples
    --------
    >>> from chemomech import stem4d
    >>> sim = stem4d.simulate_uniform(exx=0.01, eyy=-0.005, scan_shape=(2, 4), reference_columns=2,
    ...                               dose=1e5, rng=0)
    >>> res = measure_strain(sim.datacube, reference=sim.reference.values)
    >>> round(float(res.exx[0, 3]), 3), round(float(res.eyy[0, 3]), 3)
    (0.01, -0.005)
    """
    _validate.no_unknown_options(options, _OPTIONS, func="measure_strain")
    method = _validate.choice(options.get("method", "fast"), ("fast", "py4dstem"), name="method")
    min_disks = int(options.get("min_disks", 6))
    snr_min = float(options.get("snr_min", 4.0))
    chunk = int(options.get("chunk", 256))
    progress = bool(options.get("progress", False))
    upsample = int(options.get("upsample_factor", 16))
    if isinstance(rotation, bool) or not isinstance(rotation, (int, float, np.integer, np.floating)) \
            or not np.isfinite(rotation):
        raise TypeError(f"rotation must be a finite real number (radians), got {rotation!r}")
    cube, coords = _as_array(datacube)
    ny, nx, dky, dkx = cube.shape
    ref_mask = None
    if reference is not None:
        ref_mask = _validate.mask(reference, name="reference", shape=(ny, nx))
    pats = cube.reshape(ny * nx, dky, dkx)

    prep = _prepare(pats, (ny, nx), probe, snr_min=snr_min, chunk=chunk, progress=progress)
    fitter, half, pad, limit = prep["fitter"], prep["half"], prep["pad"], prep["limit"]
    template, g_ref0, hk, inner = prep["template"], prep["g_ref0"], prep["hk"], prep["inner"]
    origin_fit, c_mean, radius = prep["origin_fit"], prep["c_mean"], prep["radius"]
    batches = prep["batches"]
    # 4.-5. per-pattern disk positions and lattice fit
    n = ny * nx
    g_all = np.full((n, 2, 2), np.nan)
    o_all = np.full((n, 2), np.nan)
    rms_all = np.full(n, np.nan)
    cnt_all = np.zeros(n, int)
    py4_peaks = None
    if method == "py4dstem":
        kernel = np.zeros((dky, dkx))
        kernel[:template.shape[0], :template.shape[1]] = template
        kernel = np.roll(kernel, (-half, -half), axis=(0, 1))
        spacing = 0.6 * float(np.min(np.linalg.norm(g_ref0, axis=0)))
        py4_peaks = _py4dstem.find_disks(pats.astype(float), kernel, min_spacing_px=spacing,
                                         edge_px=int(half), upsample_factor=upsample, progress=progress)
    capture = 0.3 * float(np.min(np.linalg.norm(g_ref0, axis=0)))  # px a disk may sit from its prediction
    for sl, padded in batches():
        m = sl.stop - sl.start
        idx = np.arange(m)
        o_guess = origin_fit[sl]
        g_guess = np.repeat(g_ref0[None], m, axis=0)
        for stage, sel in (("inner", inner), ("all", np.ones(len(hk), bool))):
            h_s = hk[sel]
            guess = o_guess[:, None, :] + np.einsum("nab,db->nda", g_guess, h_s)
            if py4_peaks is None:
                pos, snr, perr = fitter.locate(padded, np.repeat(idx, len(h_s)), guess.reshape(-1, 2), pad, limit)
                pos, snr, perr = pos.reshape(m, -1, 2), snr.reshape(m, -1), perr.reshape(m, -1)
                found = (snr > snr_min) & np.all((pos > half) & (pos < limit - 1 - half), axis=-1)
                found &= np.linalg.norm(pos - guess, axis=-1) < capture
                weight = np.where(found, 1.0 / np.maximum(perr, 0.01) ** 2, 0.0)
            else:
                pos = np.full(guess.shape, np.nan)
                weight = np.zeros(guess.shape[:2])
                tol = 0.35 * float(np.min(np.linalg.norm(g_ref0, axis=0))) if stage == "inner" else 1.5
                for j in range(m):
                    pk_j = py4_peaks[sl.start + j]
                    if len(pk_j) == 0:
                        continue
                    dist = np.linalg.norm(guess[j][:, None, :] - pk_j[None, :, :2], axis=2)
                    near = dist.argmin(axis=1)
                    hit = dist[np.arange(len(near)), near] < tol
                    pos[j, hit] = pk_j[near[hit], :2]
                    weight[j, hit] = 1.0
            pos = np.where(weight[..., None] > 0, pos, np.nan)
            for _ in range(2):  # outlier rejection
                o_fit, g_fit, rms, count, pred = _fit_lattice(pos, h_s, weight, min_disks)
                r = np.linalg.norm(pos - pred, axis=-1)
                rr = np.where(weight > 0, r, np.inf)
                k_mid = np.maximum((weight > 0).sum(1) // 2, 0)
                med = np.take_along_axis(np.sort(rr, axis=1), k_mid[:, None], axis=1)
                med = np.where(np.isfinite(med), med, 1.0)
                bad = ~(r <= np.maximum(4 * med, 0.3))
                weight = np.where(bad, 0.0, weight)
            o_fit, g_fit, rms, count, _ = _fit_lattice(pos, h_s, weight, min_disks)
            okp = np.isfinite(g_fit).all(axis=(1, 2))
            o_guess = np.where(okp[:, None], o_fit, o_guess)
            g_guess = np.where(okp[:, None, None], g_fit, g_guess)
        g_all[sl], o_all[sl], rms_all[sl], cnt_all[sl] = g_fit, o_fit, rms, count

    # 6. strain relative to the reference lattice
    g_xy = _detector_frame(g_all, float(rotation))  # (n, 2 [x, y], 2)
    measured = np.isfinite(g_xy).all(axis=(1, 2))
    if not measured.any():
        raise ValueError("datacube: no pattern had enough disks to fit a lattice "
                         f"(min_disks={min_disks}); check the data or lower snr_min")
    use_ref = measured if ref_mask is None else (measured & ref_mask.ravel())
    if not use_ref.any():
        raise ValueError("reference selects no measured pixel (all its patterns failed); choose another region")
    g_ref = np.median(g_xy[use_ref], axis=0)
    mt = np.einsum("nij,jk->nik", np.where(measured[:, None, None], g_xy, np.eye(2)), np.linalg.inv(g_ref))
    f = np.swapaxes(np.linalg.inv(mt), 1, 2)  # F = (F^-T)^-T
    h = f - np.eye(2)
    vals = {
        "exx": h[:, 0, 0], "eyy": h[:, 1, 1],
        "exy": 0.5 * (h[:, 0, 1] + h[:, 1, 0]), "theta": 0.5 * (h[:, 1, 0] - h[:, 0, 1]),
    }
    dims = ("y", "x")
    data = {k: (dims, np.where(measured, v, np.nan).reshape(ny, nx), {"units": u, "long_name": ln})
            for k, v in vals.items() for u, ln in [_STRAIN_META[k]]}
    data["mask"] = (dims, measured.reshape(ny, nx), {"units": "1", "long_name": "measured pixels"})
    data["n_disks"] = (dims, np.where(measured, cnt_all, 0).reshape(ny, nx),
                       {"units": "1", "long_name": "disks in the lattice fit"})
    data["residual"] = (dims, np.where(measured, rms_all, np.nan).reshape(ny, nx),
                        {"units": "px", "long_name": "RMS disk-position misfit"})
    data["origin_ky"] = (dims, origin_fit[:, 0].reshape(ny, nx), {"units": "px", "long_name": "descan fit ky"})
    data["origin_kx"] = (dims, origin_fit[:, 1].reshape(ny, nx), {"units": "px", "long_name": "descan fit kx"})
    if not coords:
        coords = {"y": ("y", np.arange(ny), {"units": "px", "long_name": "scan row"}),
                  "x": ("x", np.arange(nx), {"units": "px", "long_name": "scan column"})}
    g_ref_px = _detector_frame(g_ref0[None], float(rotation))[0]
    return xr.Dataset(data, coords=coords, attrs={
        "method": method, "template_radius_px": radius,
        "g1_xy_px": g_ref_px[:, 0].tolist(), "g2_xy_px": g_ref_px[:, 1].tolist(),
        "origin_mean_ky_kx_px": c_mean.tolist(),
    })


def diagnostics(datacube: object, *, probe: ArrayLike | None = None, patterns: ArrayLike = (),
                snr_min: float = 4.0) -> dict:
    """The intermediate products of :func:`measure_strain`, for teaching and checking.

    Parameters
    ----------
    datacube : array_like, xarray.DataArray or py4DSTEM.DataCube
        As in :func:`measure_strain`.
    probe : array_like, optional
        Vacuum probe image.
    patterns : sequence of (int, int)
        Scan positions ``(row, col)`` whose fitted disks are returned.
    snr_min : float
        Detection threshold (disk amplitude over its standard error).

    Returns
    -------
    dict
        ``mean`` (ky, kx) mean pattern; ``template`` (W, W); ``radius`` (px);
        ``centre`` (ky, kx) of the direct beam in the mean pattern;
        ``origin`` / ``origin_fit`` ((ny, nx, 2) measured direct beam and
        fitted descan plane, px); ``basis`` (2 x 2, columns = reciprocal
        vectors, detector (ky, kx) px); ``lattice_peaks`` ((n, 2) disks of the
        descan-corrected mean pattern) with their ``lattice_hk``; ``disks``
        (one (m, 2) array of (ky, kx) per requested pattern, detected disks only).

    Examples
    --------
    >>> from chemomech import stem4d
    >>> sim = stem4d.simulate_uniform(scan_shape=(2, 3), reference_columns=1, dose=1e5, rng=0)
    >>> d = diagnostics(sim.datacube, patterns=[(0, 0)])
    >>> sorted(np.round(np.abs(np.linalg.det(d["basis"])) / 100).astype(int).reshape(1).tolist())
    [3]
    """
    cube, _ = _as_array(datacube)
    ny, nx, dky, dkx = cube.shape
    pats = cube.reshape(ny * nx, dky, dkx)
    prep = _prepare(pats, (ny, nx), probe, snr_min=snr_min, chunk=256, progress=False)
    fitter, pad, half, limit = prep["fitter"], prep["pad"], prep["half"], prep["limit"]
    disks = []
    for iy, ix in patterns:
        i = int(iy) * nx + int(ix)
        guess = prep["origin_fit"][i] + prep["hk"] @ prep["g_ref0"].T
        img = np.pad(pats[i].astype(float), pad)[None]
        pos, snr, _ = fitter.locate(img, np.zeros(len(guess), int), guess, pad, limit)
        ok = (snr > snr_min) & np.all((pos > half) & (pos < limit - 1 - half), axis=1)
        ok &= np.linalg.norm(pos - guess, axis=1) < 0.3 * float(np.min(np.linalg.norm(prep["g_ref0"], axis=0)))
        disks.append(pos[ok])
    return {"mean": prep["mean"], "template": prep["template"], "radius": prep["radius"],
            "centre": prep["c_mean"], "origin": prep["origin_obs"].reshape(ny, nx, 2),
            "origin_fit": prep["origin_fit"].reshape(ny, nx, 2), "direct_snr": prep["direct_snr"].reshape(ny, nx),
            "basis": prep["g_ref0"], "lattice_peaks": prep["lattice_peaks"], "lattice_hk": prep["lattice_hk"],
            "disks": disks}


def virtual_images(datacube: object, *, radius_px: float, centre: ArrayLike | None = None) -> xr.Dataset:
    """Bright-field and annular dark-field virtual images.

    Parameters
    ----------
    datacube : array_like or xarray.DataArray
        ``(ny, nx, ky, kx)``.
    radius_px : float
        Bright-field detector radius, px (about the disk radius); the dark
        field sums everything outside ``radius_px + 2``.
    centre : (float, float), optional
        ``(ky, kx)`` of the direct beam; default the detector centre.

    Returns
    -------
    xarray.Dataset
        ``bright_field`` and ``dark_field`` (counts) on ``("y", "x")``.

    Examples
    --------
    >>> cube = np.zeros((2, 3, 32, 32)); cube[..., 16, 16] = 5.0; cube[0, 0, 2, 2] = 1.0
    >>> v = virtual_images(cube, radius_px=3.0)
    >>> float(v.bright_field[1, 1]), float(v.dark_field[0, 0])
    (5.0, 1.0)
    """
    cube, coords = _as_array(datacube)
    r = _validate.positive(radius_px, name="radius_px")
    dky, dkx = cube.shape[2:]
    c = np.array([dky / 2, dkx / 2]) if centre is None else _validate.array(centre, name="centre", shape=(2,))
    rho = np.hypot(np.arange(dky)[:, None] - c[0], np.arange(dkx)[None, :] - c[1])
    bf = np.tensordot(cube, (rho <= r).astype(np.float32), axes=([2, 3], [0, 1]))
    df = np.tensordot(cube, (rho > r + 2).astype(np.float32), axes=([2, 3], [0, 1]))
    ds = xr.Dataset({"bright_field": (("y", "x"), bf, {"units": "counts", "long_name": "virtual bright field"}),
                     "dark_field": (("y", "x"), df, {"units": "counts", "long_name": "virtual annular dark field"})})
    return ds.assign_coords(coords) if coords else ds


# ----------------------------------------------------------------- frames and files


def to_crystal_frame(strain: xr.Dataset, angle_a_rad: float) -> xr.Dataset:
    """Rotate image-frame strain into the crystal frame (x ∥ a, y ∥ c).

    Parameters
    ----------
    strain : xarray.Dataset
        With ``exx, eyy, exy`` (image frame, tensor shear) on ``("y", "x")``.
    angle_a_rad : float
        In-plane angle of the a axis from image x (positive turns x towards y).

    Returns
    -------
    xarray.Dataset
        Copy with ``exx`` = e_aa, ``eyy`` = e_cc, ``exy`` = e_ac; ``theta``
        and ``mask`` unchanged; ``attrs["frame"] = "crystal (x || a, y || c)"``.

    Examples
    --------
    >>> s = xr.Dataset({"exx": (("y", "x"), [[0.01]]), "eyy": (("y", "x"), [[0.0]]),
    ...                 "exy": (("y", "x"), [[0.0]])})
    >>> c = to_crystal_frame(s, np.pi / 2)
    >>> round(float(c.exx[0, 0]), 6), round(float(c.eyy[0, 0]), 6)
    (0.0, 0.01)
    """
    if not isinstance(strain, xr.Dataset) or not all(k in strain for k in ("exx", "eyy", "exy")):
        raise TypeError("strain must be an xarray.Dataset with exx, eyy and exy")
    if isinstance(angle_a_rad, bool) or not isinstance(angle_a_rad, (int, float, np.integer, np.floating)):
        raise TypeError(f"angle_a_rad must be a real number (radians), got {type(angle_a_rad).__name__}")
    c, s = np.cos(angle_a_rad), np.sin(angle_a_rad)
    exx, eyy, exy = strain.exx, strain.eyy, strain.exy
    out = strain.copy()
    out["exx"] = (c * c * exx + 2 * c * s * exy + s * s * eyy).assign_attrs(units="1", long_name="strain e_aa")
    out["eyy"] = (s * s * exx - 2 * c * s * exy + c * c * eyy).assign_attrs(units="1", long_name="strain e_cc")
    out["exy"] = (c * s * (eyy - exx) + (c * c - s * s) * exy).assign_attrs(
        units="1", long_name="tensor shear e_ac")
    out.attrs["frame"] = "crystal (x || a, y || c)"
    return out


def load_datacube(path: str | Path) -> np.ndarray:
    """Read a ``(y, x, ky, kx)`` datacube from ``.npy`` or a py4DSTEM HDF5 (``.h5``/``.hdf5``/``.emd``) file."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        if not path.is_file():
            raise ValueError(f"path {str(path)!r} does not exist")
        return _validate.array(np.load(path), name="datacube", ndim=4)
    if suffix in (".h5", ".hdf5", ".emd"):
        return _validate.array(_py4dstem.read_datacube(path), name="datacube", ndim=4)
    raise ValueError(f"path must end in .npy, .h5, .hdf5 or .emd, got {path.name!r}")


def save_strain(strain: xr.Dataset, path: str | Path) -> None:
    """Write a strain Dataset to NetCDF (h5netcdf engine); the mask is stored as uint8."""
    if not isinstance(strain, xr.Dataset):
        raise TypeError(f"strain must be an xarray.Dataset, got {type(strain).__name__}")
    ds = strain.copy()
    ds["mask"] = ds["mask"].astype("uint8")
    ds.attrs = {k: (str(v) if isinstance(v, (list, dict)) else v) for k, v in ds.attrs.items()}
    ds.to_netcdf(path, engine="h5netcdf")


def load_strain(path: str | Path) -> xr.Dataset:
    """Read a strain Dataset written by :func:`save_strain`."""
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        out = ds.load()
    out["mask"] = out["mask"].astype(bool)
    return out
