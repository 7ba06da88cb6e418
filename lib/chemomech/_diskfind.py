"""Batched Bragg-disk locator: FFT cross-correlation, windowed maxima and table-driven sub-pixel fits.

A disk near a predicted position is located in two batched steps, for all
disks of a whole chunk of patterns at once:

1. **Coarse.** The chunk is cross-correlated with the template in one batched
   real FFT (:meth:`Locator.correlate`); the integer maximum of the
   correlation in a small window around each prediction (vectorised over all
   windows) is the coarse position, and a parabola through its 3 x 3
   neighbourhood gives the starting sub-pixel offset. For a handful of disks
   per pattern (the direct beam) the windowed correlation is computed
   directly instead of by a full-size FFT.
2. **Fine.** The disk is modelled as ``I(q) = A T(q - s - d) + B`` with the
   template ``T``. Linearised about a trial shift ``s``, the model is *linear*
   in ``(A, B, A d_y, A d_x)`` with the design matrix
   ``J_s = [T_s, 1, -dT_s/dy, -dT_s/dx]``. The pseudo-inverses
   ``(J_s^T J_s)^-1 J_s^T`` are precomputed (Fourier-shifted templates) on a
   table of trial shifts with spacing ``1/16`` px, so each Gauss–Newton step
   is one gathered matrix–vector product per disk: pick the table entry
   nearest the current estimate, project the patch, update ``d``. The
   linearisation error is second order in the residual offset (below
   ``1/32`` px), far below the shot-noise precision.

The standard errors of ``A`` and ``d`` come from the same normal matrices and
the residual variance, which gives a dose-independent detection threshold
(amplitude over its standard error).

Optionally (``profile``), the shifted templates are a sampled radial disk
profile evaluated at the shifted pixel centres rather than Fourier-shifted
copies of the template, and (``misfit``, :meth:`Locator.with_prior`) the fit
ends with one *weighted* Gauss-Newton step. Least squares weighs every pixel
alike, though a bright disk interior is far noisier (shot noise) than the dark
edge toe; for 2-3 px disks its position variance was measured 1.6-1.8x the
Cramer-Rao bound. The weights are the inverse of a pixel variance
``gain * mean + kappa(r) * A**2`` (shot noise plus a model misfit per radius,
both estimated from the data).
"""

from __future__ import annotations

import copy

import numpy as np
import scipy.fft as sfft
from numpy.lib.stride_tricks import sliding_window_view

TABLE_STEP_PX = 1.0 / 16  # spacing of the precomputed trial shifts, px
TABLE_REACH_PX = 1.0  # trial shifts cover [-reach, reach] around the coarse integer position, px
#: Ridge levels of the content-slope prior, in units of the slope columns' own normal-matrix entry
#: (a decade apart: the chosen level is within a factor 3.2 of the disk's own penalty).
PRIOR_LEVELS = 10.0 ** np.arange(-2.0, 2.01, 1.0)
_PRIOR_DECADE = 1.0  # log10 spacing of PRIOR_LEVELS


#: a disk near excluded pixels is refitted without them only if it keeps this much of its position
#: information on each axis (else it is left out, as is every disk when the data are too broken to tell)
MIN_KEPT_INFO = 0.5
#: radial bin width (px) of the pixel-variance model's misfit term (see :meth:`Locator.with_prior`): half a
#: pixel resolves the disk edge (about one pixel wide) into inner rim, edge and toe
MISFIT_BIN_PX = 0.5
_CHUNK = 1024  # disks per batch in the weighted step (their gathered Jacobians, ~3 MB, stay in cache)


def _gathered_matvec(table: np.ndarray, index: tuple, y: np.ndarray) -> np.ndarray:
    """``table[index] @ y`` per row (float64 (m, K)), gathered in chunks of :data:`_CHUNK` rows.

    `table[index]` is (m, K, P) and `y` (m, P): chunks keep each gathered block in the CPU cache instead of
    one large copy of all rows.
    """
    m = len(y)
    out = np.empty((m, table.shape[-2]))
    for c in range(0, m, _CHUNK):
        sl = slice(c, c + _CHUNK)
        out[sl] = np.matmul(table[tuple(i[sl] for i in index)], y[sl, :, None])[:, :, 0]
    return out


class Locator:
    """Sub-pixel disk locator for one square template (odd width ``W``).

    Parameters
    ----------
    template : numpy.ndarray
        ``(W, W)`` disk template, centred on the middle pixel.
    content_order : {0, 1, 2}
        Degree of the polynomial that multiplies the template inside the disk
        (0: a uniform disk, the plain template fit; 1 or 2: a disk whose
        contents vary linearly / quadratically across it, so that only the
        disk edge carries the position).
    background_order : {0, 1}
        Degree of the background polynomial (constant, or a plane).
    support_radius : float, optional
        Only pixels within this distance (px) of the window centre enter the
        fine fit (keeps neighbouring disks out); default the whole window.
    slope_prior : float, optional
        With ``content_order >= 1``: the expected relative change of the disk
        contents across one disk radius (RMS, per axis). The linear content
        terms get a Gaussian prior of that width, the quadratic ones
        `curvature_ratio` times that over one radius (ridge penalty
        ``noise variance / (slope_prior * A / radius)^2``, chosen per disk from
        its fitted amplitude ``A`` and residual variance among
        :data:`PRIOR_LEVELS` precomputed tables): faint disks, whose contents
        the data cannot resolve, are fitted nearly as uniform disks (low noise),
        bright ones with free contents (low bias). None: no prior.
    radius : float
        Disk radius, px (scales `slope_prior`).
    curvature_ratio : float
        Prior width of the quadratic content terms (their change across one
        radius) relative to `slope_prior`.
    prior_levels : bool
        Precompute the ridge tables (False: free content fits only).
    profile : (numpy.ndarray, numpy.ndarray), optional
        Radial profile ``(r, value)`` (r increasing, px) of a disk as the detector samples it: the value of
        a pixel whose centre lies at distance ``r`` from the disk centre. When given, the fine fit's shifted
        templates and their gradients are this profile evaluated at ``|q - s|`` (linear interpolation)
        instead of Fourier-shifted copies of `template`; `template` still serves the coarse correlation.

    Notes
    -----
    With a pixel-variance model (:meth:`with_prior`, ``misfit``) the fine fit ends with one weighted
    Gauss-Newton step whose pixel weights are the inverse modelled variances.
    """

    def __init__(self, template: np.ndarray, *, step: float = TABLE_STEP_PX, reach: float = TABLE_REACH_PX,
                 content_order: int = 0, background_order: int = 0, support_radius: float | None = None,
                 slope_prior: float | None = None, radius: float = 1.0, curvature_ratio: float = 1.0,
                 prior_levels: bool = True, profile: tuple[np.ndarray, np.ndarray] | None = None):
        t = np.asarray(template, dtype=float)
        self.template = t
        self.w = t.shape[0]
        self.half = self.w // 2
        self.step = float(step)
        self.n_side = int(round(reach / step))
        grid = np.arange(-self.n_side, self.n_side + 1) * self.step
        self.grid = grid
        f = sfft.fftfreq(self.w)
        t_hat = sfft.fft2(t)
        sy, sx = np.meshgrid(grid, grid, indexing="ij")
        sy, sx = sy.ravel(), sx.ravel()
        ph = np.exp(-2j * np.pi * (f[None, :, None] * sy[:, None, None] + f[None, None, :] * sx[:, None, None]))
        ts_hat = t_hat[None] * ph  # T(q - s)
        ts = sfft.ifft2(ts_hat).real
        ty = sfft.ifft2(ts_hat * (2j * np.pi * f)[None, :, None]).real
        tx = sfft.ifft2(ts_hat * (2j * np.pi * f)[None, None, :]).real
        n_s, npx = len(sy), self.w * self.w
        yy, xx = np.mgrid[-self.half:self.half + 1, -self.half:self.half + 1].astype(float)
        if profile is not None:
            # the profile evaluated at the shifted pixel centres: no interpolation of a pixel-sampled image
            # (Fourier shifting a disk edge about one pixel wide rings in the tails, which weighted fits see)
            r_p, v_p = (np.asarray(a, dtype=float) for a in profile)
            dv = np.gradient(v_p, r_p)
            ry, rx = yy[None] - sy[:, None, None], xx[None] - sx[:, None, None]
            rr = np.hypot(ry, rx)
            ts = np.interp(rr, r_p, v_p)
            slope = np.interp(rr, r_p, dv, right=0.0) / np.maximum(rr, 1e-9)
            ty, tx = slope * ry, slope * rx  # gradient of T(q - s) with respect to q
        if support_radius is None:
            support = np.ones(npx, bool)
        else:
            support = (np.hypot(yy, xx) <= float(support_radius)).ravel()
        self.support = support
        # radial bin (MISFIT_BIN_PX) of each support pixel about each trial centre, for the misfit variance
        self._rbin = (np.hypot(yy.ravel()[None, support] - sy[:, None], xx.ravel()[None, support] - sx[:, None])
                      / MISFIT_BIN_PX).astype(np.int16)
        self.misfit = None
        # offsets from the trial centre s, for the content and background polynomials
        uy = yy.ravel()[None, :] - sy[:, None]
        ux = xx.ravel()[None, :] - sx[:, None]
        tsf = ts.reshape(n_s, npx)
        cols = [tsf, np.ones((n_s, npx)), -ty.reshape(n_s, npx), -tx.reshape(n_s, npx)]
        if content_order >= 1:
            cols += [uy * tsf, ux * tsf]
        if content_order >= 2:
            cols += [uy * uy * tsf, ux * ux * tsf, uy * ux * tsf]
        if background_order >= 1:
            cols += [uy, ux]
        jac = np.stack(cols, axis=2)[:, support, :]  # (S, P_support, K)
        jtj = np.matmul(jac.transpose(0, 2, 1), jac)
        self._jac_t = jac.transpose(0, 2, 1)
        self._content_order = int(content_order)
        self.jtj = jtj
        self.jac = jac.astype(np.float32)
        # detection: the uniform-disk model (first four columns) on the whole window, so that the SNR means
        # the same (disk amplitude over its standard error) whatever the content model and support
        jac4 = np.stack(cols[:4], axis=2)  # (S, P_window, 4)
        self.jtj4 = np.matmul(jac4.transpose(0, 2, 1), jac4)
        inv4 = np.linalg.inv(self.jtj4)
        self.pinv4 = np.matmul(inv4, jac4.transpose(0, 2, 1)).astype(np.float32)  # (S, 4, P_window)
        self.amp_var = inv4[:, 0, 0].copy()  # (S,)
        self._fft_cache: dict = {}
        self._set_levels(prior_levels, slope_prior, radius, curvature_ratio)

    def _set_levels(self, prior_levels: bool, slope_prior: float | None, radius: float,
                    curvature_ratio: float) -> None:
        """Ridge levels on the content terms (level 0 = none) and their (lazily computed) tables."""
        self.prior = None
        levels = [0.0]
        if self._content_order >= 1 and prior_levels:
            # in units of the linear content terms' (columns 4, 5) own normal-matrix entry
            unit = float(np.mean(self.jtj[len(self.jtj) // 2, [4, 5], [4, 5]]))
            levels += list(unit * PRIOR_LEVELS)
            self.set_prior(slope_prior, radius)
        self.levels = np.asarray(levels)
        n_s, n_k, n_p = self._jac_t.shape
        # the prior of a quadratic content coefficient is the linear one's divided by the radius, so its
        # penalty is radius^2 times larger at the same level
        pen = np.zeros((len(levels), n_k))
        if self._content_order >= 1:
            pen[:, 4] = pen[:, 5] = self.levels
        if self._content_order >= 2:
            pen[:, 6] = pen[:, 7] = pen[:, 8] = self.levels * float(radius) ** 2 / float(curvature_ratio) ** 2
        self.pen = pen  # (L, K) ridge penalty per level and coefficient
        # estimator rows (L, S, K, P_support) and covariance diagonals (L, S, K) of each ridge level; a level
        # is computed when a disk first needs it (_ensure_levels)
        self.pinv = np.zeros((len(levels), n_s, n_k, n_p), np.float32)
        self.inv_diag = np.zeros((len(levels), n_s, n_k))
        self._built = np.zeros(len(levels), bool)
        self._ensure_levels(np.array([0]))

    def with_prior(self, slope_prior: float | None, radius: float, curvature_ratio: float = 1.0,
                   misfit: tuple[float, np.ndarray] | None = None) -> "Locator":
        """A copy with the content priors (see the class parameters) that shares this one's template tables.

        `misfit` ``(gain, kappa)`` (content model only) sets the pixel-variance model of a weighted final
        step: a pixel's variance is ``gain * mu + kappa[b] * A**2``, shot noise (``gain`` detector units
        per electron, ``mu`` the fitted mean, at least the disk's background level) plus a model misfit
        that scales with the disk amplitude ``A``, ``kappa[b]`` per radial bin ``b`` of
        :data:`MISFIT_BIN_PX` about the disk centre (bins beyond the array use its last entry).
        """
        out = copy.copy(self)
        out._set_levels(True, slope_prior, radius, curvature_ratio)
        if misfit is not None:
            if self._content_order < 1:
                raise ValueError("misfit: a pixel-variance model needs a content model (content_order >= 1)")
            gain, kappa = float(misfit[0]), np.asarray(misfit[1], dtype=float)
            if not gain > 0 or kappa.ndim != 1 or len(kappa) == 0 or not np.all(kappa >= 0):
                raise ValueError("misfit: need gain > 0 and a non-empty 1-D kappa >= 0")
            out.misfit = (gain, kappa)
        return out

    def _ensure_levels(self, li: np.ndarray) -> None:
        """Compute the tables of the ridge levels in `li` that are not yet computed."""
        for lev in np.unique(li):
            if not self._built[lev]:
                inv = np.linalg.inv(self.jtj + np.diag(self.pen[lev])[None])  # (S, K, K)
                self.pinv[lev] = np.matmul(inv, self._jac_t)
                self.inv_diag[lev] = np.diagonal(inv, axis1=1, axis2=2)
                self._built[lev] = True

    def _ridge_level(self, var0: np.ndarray, amp: np.ndarray) -> np.ndarray:
        """Per-disk ridge level: noise variance `var0` over the prior variance of the content slopes.

        Disks with a non-positive amplitude get the strongest level.
        """
        lam = var0 / (self.prior * np.maximum(amp, 1e-12) ** 2)
        lev = np.log10(np.maximum(lam, 1e-30) / self.levels[1]) / _PRIOR_DECADE + 1
        li = np.clip(np.round(lev).astype(int), 0, len(self.levels) - 1)
        return np.where(amp > 0, li, len(self.levels) - 1)

    def set_prior(self, slope_prior: float | None, radius: float = 1.0) -> None:
        """Set (or, with None, remove) the content-slope prior; see the class parameters."""
        self.prior = None if slope_prior is None else (float(slope_prior) / float(radius)) ** 2

    # ------------------------------------------------------------ coarse step

    def correlate(self, images: np.ndarray) -> np.ndarray:
        """Cross-correlation (n, H, W) of a batch of images with the template, one batched real FFT."""
        shape = images.shape[1:]
        k_hat = self._fft_cache.get(shape)
        if k_hat is None:
            kern = np.zeros(shape)
            kern[:self.w, :self.w] = self.template
            kern = np.roll(kern, (-self.half, -self.half), axis=(0, 1))
            k_hat = np.conj(sfft.rfft2(kern)).astype(np.complex64)
            self._fft_cache[shape] = k_hat
        spec = sfft.rfft2(images, workers=1)
        spec *= k_hat
        return sfft.irfft2(spec, s=shape, workers=1)

    @staticmethod
    def _windows(img: np.ndarray, idx: np.ndarray, centre: np.ndarray, half: int) -> np.ndarray:
        """Square windows (m, 2 half + 1, 2 half + 1) of img[idx] centred on integer positions (m, 2)."""
        view = sliding_window_view(img, (2 * half + 1, 2 * half + 1), axis=(1, 2))
        return view[idx, centre[:, 0] - half, centre[:, 1] - half]

    def coarse(self, img: np.ndarray, idx: np.ndarray, centre: np.ndarray, search: int,
               cc: np.ndarray | None = None, cc_offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Integer position (m, 2) of the correlation maximum within +-search px and a parabolic offset (m, 2).

        `cc` (optional) is the circular correlation of the images before padding by `cc_offset` px; its
        windows are read with wrap-around (no padded copy).
        """
        if cc is None:  # direct windowed correlation: cheap for a few disks per pattern
            big = self._windows(img, idx, centre, search + self.half + 1)
            n = 2 * search + 3
            loc = np.zeros((len(big), n, n))
            for (u, v), t in np.ndenumerate(self.template):  # shift-and-add, W^2 vectorised steps
                loc += t * big[:, u:u + n, v:v + n]
        else:
            r = np.arange(-(search + 1), search + 2)
            rows = (centre[:, 0, None] - cc_offset + r) % cc.shape[1]
            cols = (centre[:, 1, None] - cc_offset + r) % cc.shape[2]
            flat = (idx[:, None, None] * cc.shape[1] + rows[:, :, None]) * cc.shape[2] + cols[:, None, :]
            loc = np.take(cc.reshape(-1), flat)  # (a flat take is faster than three index arrays)
        inner = loc[:, 1:-1, 1:-1]
        n = inner.shape[1]
        k = inner.reshape(len(inner), -1).argmax(axis=1)
        iy, ix = np.unravel_index(k, (n, n))
        m = np.arange(len(inner))
        y0, yp, ym = loc[m, iy + 1, ix + 1], loc[m, iy + 2, ix + 1], loc[m, iy, ix + 1]
        xp, xm = loc[m, iy + 1, ix + 2], loc[m, iy + 1, ix]
        with np.errstate(divide="ignore", invalid="ignore"):
            dy = 0.5 * (ym - yp) / (ym - 2 * y0 + yp)
            dx = 0.5 * (xm - xp) / (xm - 2 * y0 + xp)
        frac = np.clip(np.nan_to_num(np.stack([dy, dx], axis=1)), -0.5, 0.5)
        return centre + np.stack([iy, ix], axis=1) - search, frac

    # ------------------------------------------------------------ fine step

    def refine(self, patches: np.ndarray, start: np.ndarray, n_iter: int = 2, details: bool = False,
               weight_snr: float = 0.0):
        """Sub-pixel offsets (m, 2), amplitude, amplitude error, position error and fit SNR for patches (m, W, W).

        The amplitude and its error are those of the uniform-disk model on the same support (the detection
        SNR), whatever the content model; the position, its error and the fit SNR (amplitude over its error)
        come from the full model. Nothing of a call is kept on the locator, so threads may share one.
        With a pixel-variance model (:meth:`with_prior`), disks whose detection SNR and fit SNR both exceed
        `weight_snr` get the weighted final step; the others keep the least-squares fit.
        """
        m = len(patches)
        y_full = patches.reshape(m, -1).astype(np.float32, copy=False)
        y = y_full[:, self.support]
        d = np.clip(start, -self.grid[-1], self.grid[-1])
        side = 2 * self.n_side + 1
        yy = np.einsum("mp,mp->m", y, y, dtype=float)
        li = np.zeros(m, int)
        dof = max(y.shape[1] - self.pinv.shape[2], 1)
        last = n_iter
        for it in range(last + 1):
            ij = np.clip(np.round(d / self.step).astype(int) + self.n_side, 0, side - 1)
            ti = ij[:, 0] * side + ij[:, 1]
            p = _gathered_matvec(self.pinv, (li, ti), y)  # (m, K): A, B, A dy, A dx, ...
            amp = p[:, 0]
            if it == 0 and self.prior is not None:
                # per-disk ridge level: noise variance / prior variance of the content slopes
                var0 = np.maximum(yy - np.einsum("mi,mij,mj->m", p, self.jtj[ti], p), 0.0) / dof
                li = self._ridge_level(var0, amp)
                self._ensure_levels(li)
            if it == last:
                break
            safe = amp > 0
            s = self.grid[ij]
            d_new = s + p[:, 2:4] / np.where(safe, amp, 1.0)[:, None]
            d = np.where(safe[:, None], np.clip(d_new, -self.grid[-1], self.grid[-1]), d)
        s = self.grid[ij]
        d = s + p[:, 2:4] / np.where(amp > 0, amp, 1.0)[:, None]
        # residual of the (penalised) solution: |y - J p|^2 = yy - p'JtJ p - 2 p' Lambda p
        fit = np.einsum("mi,mij,mj->m", p, self.jtj[ti], p)
        fit = fit + 2 * np.einsum("mk,mk->m", self.pen[li], p**2)
        var = np.maximum(yy - fit, 0.0) / dof
        pos_err = np.sqrt(var * self.inv_diag[li, ti, 2:4].mean(1)) / np.maximum(np.abs(amp), 1e-12)
        # reported amplitude and its error: the uniform-disk model's on the whole window at the final shift
        # (identical to the fit above when there are no content terms and no support)
        p4 = _gathered_matvec(self.pinv4, (ti,), y_full)
        yy4 = np.einsum("mp,mp->m", y_full, y_full, dtype=float)
        var4 = np.maximum(yy4 - np.einsum("mi,mij,mj->m", p4, self.jtj4[ti], p4), 0.0) / max(y_full.shape[1] - 4, 1)
        fit_snr = amp / np.maximum(np.sqrt(var * self.inv_diag[li, ti, 0]), 1e-12)  # the full model's
        amp, amp_err = p4[:, 0], np.sqrt(var4 * self.amp_var[ti])
        if self.misfit is not None:
            # the weighted step for the disks above the detection thresholds (the others keep the plain fit)
            use = (amp > weight_snr * amp_err) & (fit_snr > weight_snr)
            d, pos_err = self._weighted_step(y, p, ti, li, var, d, pos_err, use)
        if details:
            # the fitted coefficients and their variances for shot noise: pixel variance proportional to the
            # fitted mean (Poisson, times one gain for all disks, from the residuals), propagated through
            # the estimator's rows
            mu = np.matmul(self.jac[ti], p[:, :, None].astype(np.float32))[:, :, 0]
            r2 = (y - mu) ** 2
            gain = float(np.median(r2.sum(1) / np.maximum(np.abs(mu).sum(1), 1e-12)))
            sig2 = gain * np.maximum(np.abs(mu), 1e-6 * np.abs(mu).max())
            rows = self.pinv[li, ti].astype(float)  # (m, K, P)
            coef_var = np.einsum("mkp,mp->mk", rows**2, sig2)
            return d, amp, amp_err, pos_err, fit_snr, {"p": p, "var": var, "coef_var": coef_var,
                                                         "residual": y - mu, "mean": mu, "table": ti}
        return d, amp, amp_err, pos_err, fit_snr

    def _weighted_step(self, y: np.ndarray, p: np.ndarray, ti: np.ndarray, li: np.ndarray, var: np.ndarray,
                       d: np.ndarray, pos_err: np.ndarray, use: np.ndarray,
                       keep: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """One weighted Gauss-Newton step from the least-squares fit `p` at table entries `ti`.

        The pixel weights are the inverse variances of the misfit model (:meth:`with_prior`) at the
        least-squares fit, in units of the disk's least-squares residual variance `var`; the ridge
        penalties are rescaled so that they shrink each coefficient as much as in the least-squares fit.
        Returns offsets and their standard errors (from the weighted normal matrix); disks outside `use`
        or with a non-positive amplitude keep `d` and `pos_err`. `keep` (m, P), optional: pixels that
        enter the fit (the others get zero weight, as in :meth:`locate_masked`).
        """
        gain, kappa = self.misfit
        side = 2 * self.n_side + 1
        sel = np.flatnonzero(use & (p[:, 0] > 0) & (var > 0))
        d, pos_err = d.copy(), pos_err.copy()
        if len(sel) == 0:
            return d, pos_err
        y, p, ti, li, var = y[sel].astype(np.float32), p[sel], ti[sel], li[sel], var[sel]
        if keep is None:
            keep = np.ones(y.shape, np.float32)
            info0 = np.diagonal(self.jtj, 0, 1, 2)[ti]  # unweighted information of each coefficient
        else:
            keep = keep[sel].astype(np.float32)
            info0 = np.einsum("mpk,mp->mk", self.jac[ti].astype(float) ** 2, keep)
        m, n_k = len(sel), self.jac.shape[2]
        # shot noise of the fitted mean, never below the disk's background level: far from the disk a
        # template-times-polynomial model may dip below the background, the counts do not
        centre = self.jac[len(self.jac) // 2, :, 0]
        bg_px = keep * (centre < 0.1 * centre.max())
        floor = np.maximum((y * bg_px).sum(1) / np.maximum(bg_px.sum(1), 1), 1e-6 * p[:, 0])
        # in units of the shot noise (gain): v = max(mu, floor) + (kappa / gain) A^2, w = var / (gain v)
        amp2 = (p[:, 0] ** 2).astype(np.float32)
        kappa = (kappa / gain).astype(np.float32)
        n_bin = len(kappa) - 1
        floor = floor.astype(np.float32)
        var = (var / gain).astype(np.float32)
        p32 = p.astype(np.float32)
        a = np.empty((m, n_k, n_k), np.float32)
        b = np.empty((m, n_k), np.float32)
        wyy = np.empty(m)
        for c in range(0, m, _CHUNK):  # chunks whose gathered Jacobians stay in the CPU cache
            sl = slice(c, c + _CHUNK)
            jac = self.jac[ti[sl]]  # (c, P, K)
            mu = np.matmul(jac, p32[sl, :, None])[:, :, 0]
            v = np.maximum(mu, floor[sl, None]) + amp2[sl, None] * kappa[np.minimum(self._rbin[ti[sl]], n_bin)]
            w = keep[sl] * var[sl, None] / v
            wy = w * y[sl]
            a[sl] = np.matmul(jac.transpose(0, 2, 1), jac * w[:, :, None])
            b[sl] = np.matmul(wy[:, None, :], jac)[:, 0]
            wyy[sl] = np.einsum("mp,mp->m", wy, y[sl], dtype=float)
        a = a.astype(float)
        b = b.astype(float)
        a = a.reshape(m, n_k, n_k)
        # the content priors shrink each coefficient as much as in the least-squares fit, whose ridge levels
        # the empirical-Bayes prior widths were calibrated for: penalty in proportion to the coefficient's
        # information (normal-matrix diagonal), weighted over unweighted. (Kept at the least-squares
        # penalty, the interior's lower weights let the priors shrink the disk contents more, and unmodelled
        # contents pulled region medians of dynamical wedges at 1e4 e- by ~+25 %.)
        pen = self.pen[li] * np.einsum("mkk->mk", a) / np.maximum(info0, 1e-30)
        a = a + pen[:, :, None] * np.eye(n_k)
        # a relative 1e-9 on the diagonal (far below float32 data precision) keeps degenerate systems invertible
        a += 1e-9 * np.einsum("mkk->mk", a)[:, :, None] * np.eye(n_k)
        # the solution and the offset columns of the inverse in one solve
        rhs = np.concatenate([b[:, :, None], np.broadcast_to(np.eye(n_k)[:, 2:4], (m, n_k, 2))], axis=2)
        sol = np.linalg.solve(a, rhs)
        q, inv_pos = sol[:, :, 0], sol[:, [2, 3], [1, 2]]
        ok = q[:, 0] > 0
        s = self.grid[np.stack([ti // side, ti % side], axis=1)]
        d_w = np.clip(s + q[:, 2:4] / np.where(ok, q[:, 0], 1.0)[:, None], -self.grid[-1], self.grid[-1])
        # standard error: the weighted normal matrix times the weighted residual variance (chi^2 / dof);
        # sum w r^2 = sum w y^2 - 2 q.b + q.(A - penalty) q
        pen_q = np.einsum("mk,mk->m", pen, q**2) + 1e-9 * np.einsum("mkk,mk->m", a, q**2)
        chi2 = np.maximum(wyy - 2 * np.einsum("mk,mk->m", q, b) + np.einsum("mk,mkl,ml->m", q, a, q) - pen_q, 0.0)
        chi2 /= np.maximum(keep.sum(1) - n_k, 1)
        err_var = chi2 * inv_pos.mean(1)
        ok &= err_var > 0  # (an ill-conditioned weighted system keeps the least-squares result)
        err = np.sqrt(np.where(ok, err_var, 1.0)) / np.maximum(np.abs(q[:, 0]), 1e-12)
        d[sel] = np.where(ok[:, None], d_w, d[sel])
        pos_err[sel] = np.where(ok, err, pos_err[sel])
        return d, pos_err

    def locate(self, img: np.ndarray, idx: np.ndarray, guess: np.ndarray, pad: int, limit: np.ndarray, *,
               search: int, cc: np.ndarray | None = None, details: bool = False, fit_snr: bool = False,
               weight_snr: float = 0.0) -> tuple:
        """Positions (m, 2), SNR and position error (px) of disks near `guess` in padded images ``img[idx]``.

        `img` holds images zero-padded by `pad` px on every side (``limit`` is the unpadded (ky, kx)
        size); `guess` and the returned positions are unpadded detector coordinates; `cc` is
        :meth:`correlate` of the images before padding (read with wrap-around) or of `img` itself,
        when already computed.
        """
        margin = pad - self.half - search - 3
        if margin < 0:
            raise ValueError(f"pad {pad} too small for search {search} and template half-width {self.half}")
        lo, hi = -margin, limit - 1 + margin
        c0 = np.clip(np.round(guess).astype(int), lo, hi) + pad
        # `cc` of the padded images (same shape) or, read with wrap-around, of the unpadded ones
        off = 0 if cc is None or cc.shape[1:] == img.shape[1:] else pad
        c1, frac = self.coarse(img, idx, c0, int(search), cc, cc_offset=off)
        c1 = np.clip(c1, lo + pad, hi + pad)
        out = self.refine(self._windows(img, idx, c1, self.half), frac, details=details, weight_snr=weight_snr)
        d, amp, amp_err, pos_err, full_snr = out[:5]
        snr = amp / np.maximum(amp_err, 1e-12)
        if fit_snr:  # also the amplitude SNR under the full (content) model
            return (c1 - pad + d, snr, pos_err, full_snr) + tuple(out[5:])
        return (c1 - pad + d, snr, pos_err) + tuple(out[5:])

    def locate_masked(self, padded: np.ndarray, idx: np.ndarray, guess: np.ndarray, pad: int, limit: np.ndarray,
                      excluded: np.ndarray, *, search: int, cc: np.ndarray | None = None,
                      n_iter: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`locate` for disks near excluded detector pixels, without those pixels.

        The same coarse step, window, model, tables (the locator's Jacobians at the tabulated trial
        shifts, ridge levels and support), Gauss-Newton steps and choice of ridge level as the locator,
        solved as weighted least squares per disk in which an excluded pixel has zero weight: a dead
        column or a saturated core costs only the information of those pixels, not the whole disk.
        `excluded` is the unpadded detector mask. Returns positions (m, 2) (unpadded detector
        coordinates), position errors (m,) (NaN when less than half the support is left) and the
        fitted coefficients (m, K) (amplitude, background, amplitude times offsets, content terms).
        """
        m = len(guess)
        h, step, n_side = self.half, self.step, self.n_side
        side = 2 * n_side + 1
        margin = pad - h - search - 3
        lo, hi = -margin, limit - 1 + margin
        c, frac = self.coarse(padded, idx, np.clip(np.round(guess).astype(int), lo, hi) + pad, int(search), cc,
                             cc_offset=0 if cc is None or cc.shape[1:] == padded.shape[1:] else pad)
        c = np.clip(c, lo + pad, hi + pad)
        win = np.arange(-h, h + 1)
        rows, cols = c[:, 0, None, None] + win[None, :, None], c[:, 1, None, None] + win[None, None, :]
        y = padded[idx[:, None, None], rows, cols].reshape(m, -1)[:, self.support].astype(float)
        w = (~np.pad(excluded, pad)[rows, cols]).reshape(m, -1)[:, self.support].astype(float)
        n_k = self.jac.shape[2]
        enough = w.sum(1) >= 0.5 * w.shape[1]
        w = np.where(enough[:, None], w, 1.0)  # hopeless disks: any solvable system, discarded below
        dof = np.maximum(w.sum(1) - n_k, 1)
        eye = np.eye(n_k)
        d = np.clip(frac, -self.grid[-1], self.grid[-1])
        li = np.zeros(m, int)
        for it in range(n_iter + 1):
            ij = np.clip(np.round(d / step).astype(int) + n_side, 0, side - 1)
            jac = self.jac[ij[:, 0] * side + ij[:, 1]].astype(float)  # (m, P, K)
            a = np.einsum("mpk,mp,mpl->mkl", jac, w, jac) + self.pen[li][:, :, None] * eye
            p = np.linalg.solve(a, np.einsum("mpk,mp->mk", jac, w * y)[..., None])[..., 0]
            amp = p[:, 0]
            if it == 0 and self.prior is not None:  # per-disk ridge level, as in Locator.refine
                var0 = np.einsum("mp,mp->m", w, (y - np.einsum("mpk,mk->mp", jac, p)) ** 2) / dof
                li = self._ridge_level(var0, amp)
            if it == n_iter:
                break
            safe = amp > 0
            d_new = self.grid[ij] + p[:, 2:4] / np.where(safe, amp, 1.0)[:, None]
            d = np.where(safe[:, None], np.clip(d_new, -self.grid[-1], self.grid[-1]), d)
        d = self.grid[ij] + p[:, 2:4] / np.where(amp > 0, amp, 1.0)[:, None]
        var = np.einsum("mp,mp->m", w, (y - np.einsum("mpk,mk->mp", jac, p)) ** 2) / dof
        inv_diag = np.diagonal(np.linalg.inv(a), axis1=1, axis2=2)
        perr = np.sqrt(var * inv_diag[:, 2:4].mean(1)) / np.maximum(np.abs(amp), 1e-12)
        if self.misfit is not None:  # the locator's weighted final step, excluded pixels at zero weight
            d, perr = self._weighted_step(y, p, ij[:, 0] * side + ij[:, 1], li, var, d, perr,
                                          np.ones(m, bool), keep=w)
        # position information (the offset columns' normal-matrix entries) the excluded pixels took away, per axis
        full = np.einsum("mpk,mpk->mk", jac[:, :, 2:4], jac[:, :, 2:4])
        kept = np.einsum("mpk,mp,mpk->mk", jac[:, :, 2:4], w, jac[:, :, 2:4]) / np.maximum(full, 1e-30)
        enough &= kept.min(1) >= MIN_KEPT_INFO
        return c - pad + d, np.where(enough & (amp > 0), perr, np.nan), p
