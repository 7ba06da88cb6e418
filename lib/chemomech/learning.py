r"""Physics-constrained learning of the composition–eigenstrain law.

The strain measured in a Li_xFePO4 platelet is not the stress-free lattice
strain of the local composition: neighbouring domains of different X push and
pull on each other (coherency strain). This module models the measured strain
as the plane-stress elastic response of the particle to the eigenstrain field
``eps0(X(r))``,

.. math::

    \nabla\cdot\big[C : (\varepsilon(u) - \varepsilon^0(X(r)))\big] = 0,

with ``eps0`` diagonal in the crystal frame (x ∥ a, y ∥ c) and expanded in
shifted Legendre polynomials,

.. math::

    \varepsilon^0_{aa}(X) = \sum_{k=1}^{d} \beta^{a}_k\,\varphi_k(X), \qquad
    \varphi_k(X) = P_k(2X - 1) - P_k(-1),

and the same for ``cc``. The constant ``k = 0`` term is left out
(``eps0(0) = 0``): a uniform eigenstrain only expands a traction-free particle
uniformly, which a free strain offset per component (the unknown reference
lattice) absorbs, so only ``d eps0 / dX`` is identifiable. Because the strain is
linear in the coefficients, the fit is a linear least-squares problem over the
finite-element responses to each basis function, computed on a mesh with one
(or ``upsample**2``) bilinear quadrilateral(s) per pixel of the particle mask.

Two boundary treatments are offered: ``"free"`` (traction-free edges, a free
offset per strain component and particle) and ``"dirichlet"`` (the boundary
displacement is the displacement that best matches the measured strain, found
by a least-squares integration of the strain over the particle, then
prescribed, as Deng et al. [1]_ did).

Also here: leave-one-particle-out / spatially blocked cross-validation of the
polynomial degree, block and particle bootstrap, the naive per-pixel regression
that most people try first, and SIMEX [2]_ to undo the regression dilution that
noise in X causes.

Imperfect data: pixels of a particle where the strain or X is not finite (lost
frames, dead detector pixels, a failed energy) are left out of the fit with a
:class:`DataWarning` that says how many and in which particle, instead of
stopping. They keep their place in the particle's mechanics: the finite-element
body is the particle's mask (NaN pixels included; with ``mask=None``, the finite
pixels with enclosed holes filled), and X is interpolated there (biharmonic
inpainting, clipped to [0, 1]) for the forward model only, so a NaN speck is not
a traction-free hole. An error is raised only when too few pixels remain.

References
----------
.. [1] H. D. Deng et al., "Correlative image learning of chemo-mechanics in
   phase-transforming solids", Nat. Mater. 21, 547 (2022),
   https://doi.org/10.1038/s41563-021-01191-0
.. [2] J. R. Cook and L. A. Stefanski, "Simulation-extrapolation estimation in
   parametric measurement error models", J. Am. Stat. Assoc. 89, 1314 (1994),
   https://doi.org/10.1080/01621459.1994.10476871
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import xarray as xr
from numpy.polynomial import legendre as _leg
from numpy.typing import ArrayLike
from scipy import ndimage, optimize, spatial

from . import _validate, elasticity, geometry
from . import strain as strain_module

__all__ = [
    "DataWarning",
    "EigenstrainModel",
    "fit_eigenstrain",
    "legendre_basis",
    "naive_regression",
    "learn_stacks",
    "reference_strain",
    "residual_rms",
    "simex",
]

#: Highest polynomial degree tried when ``degree=None``.
MAX_DEGREE = 5
#: Pixels required per fitted parameter (law coefficients and offsets).
MIN_PIXELS_PER_PARAMETER = 10
#: Side of the square spatial blocks used for bootstrap and spatial CV, pixels.
BLOCK_PX = 8
#: How far a noisy X may leave [0, 1] inside a mask before it is refused (a noisy estimate is
#: not clipped: clipping biases X exactly where domains of X = 0 and X = 1 sit).
X_NOISE_MARGIN = 0.5
#: Default number of refits with a perturbed stiffness for the stiffness term of the intervals.
N_PERTURB = 8
#: Slopes reported by :meth:`EigenstrainModel.summary`.
SUMMARY_X = (0.25, 0.5, 0.75)
_COMPONENTS = ("aa", "cc")
_STRAIN_VARS = ("exx", "eyy", "exy")


class DataWarning(UserWarning):
    """Pixels inside a particle were left out because the strain or X there is not finite.

    The message names the particle and says how many pixels were dropped; see
    the module docstring for what happens to them.
    """


# --- basis ---------------------------------------------------------------------------


def legendre_basis(X: ArrayLike, degree: int, *, derivative: int = 0) -> np.ndarray:
    """Shifted Legendre basis without its constant: ``phi_k(X) = P_k(2X - 1) - P_k(-1)``.

    Parameters
    ----------
    X : array_like
        Li fractions.
    degree : int
        Highest order ``d``; the basis has ``d`` functions, ``k = 1 .. d``.
    derivative : {0, 1, 2}, optional
        Return the ``derivative``-th derivative with respect to X.

    Returns
    -------
    numpy.ndarray, shape X.shape + (degree,)
        ``phi_k(0) == 0`` for every k.

    Examples
    --------
    >>> np.round(legendre_basis([0.0, 0.5, 1.0], 2), 3).tolist()
    [[0.0, 0.0], [1.0, -1.5], [2.0, 0.0]]
    """
    x = np.asarray(X, dtype=float)
    t = 2.0 * x - 1.0
    out = np.empty(x.shape + (degree,))
    for k in range(1, degree + 1):
        c = np.zeros(k + 1)
        c[k] = 1.0
        if derivative == 0:
            out[..., k - 1] = _leg.legval(t, c) - _leg.legval(-1.0, c)
        else:
            out[..., k - 1] = _leg.legval(t, _leg.legder(c, derivative)) * 2.0**derivative
    return out


# --- input handling ------------------------------------------------------------------


@dataclass
class _Particle:
    """One particle's measured data and finite-element basis responses."""

    name: str
    mask: np.ndarray  # (ny, nx) bool
    rows: np.ndarray
    cols: np.ndarray
    X: np.ndarray  # (n,)
    y: np.ndarray  # (3, n) measured strain minus the boundary response (dirichlet)
    A: np.ndarray  # (3, n, 2, degree) responses to phi_k along aa and cc
    blocks: np.ndarray  # (n,) spatial block id
    fwd: object = None  # the _Forward that made A
    keep: np.ndarray | None = None  # (n_body,) which body pixels (fwd order) are fitted; None: all
    body_X: np.ndarray | None = None  # (n_body,) X on the whole body (interpolated where not finite)


def _as_list(obj, kind) -> list:
    if isinstance(obj, kind):
        return [obj]
    if isinstance(obj, Sequence) and not isinstance(obj, (str, bytes)):
        return list(obj)
    return [obj]


def _pixel_aspect_ok(da: xr.DataArray, name: str) -> None:
    """Square pixels are required (strain is scale-free, but not aspect-free)."""
    steps = []
    for d in ("y", "x"):
        if d in da.coords and da.sizes[d] > 1:
            c = np.asarray(da[d].values, dtype=float)
            s = np.diff(c)
            if not np.allclose(s, s[0], rtol=1e-6):
                raise ValueError(f"{name} must be on a regular grid; coordinate {d!r} is not evenly spaced")
            steps.append(abs(s[0]))
    if len(steps) == 2 and not np.isclose(steps[0], steps[1], rtol=1e-6):
        raise ValueError(f"{name} must have square pixels, got spacing y={steps[0]:g}, x={steps[1]:g}")


def _check_grid(strain: xr.Dataset, X: xr.DataArray, *, sname: str, xname: str) -> None:
    if not isinstance(strain, xr.Dataset):
        raise TypeError(f"{sname} must be an xarray.Dataset with exx, eyy, exy, got {type(strain).__name__}")
    missing = [v for v in _STRAIN_VARS if v not in strain]
    if missing:
        raise ValueError(f"{sname} must contain variables exx, eyy, exy; missing {missing}")
    for v in _STRAIN_VARS:
        _validate.dims(strain[v], ("y", "x"), name=f"{sname}.{v}")
    _validate.dims(X, ("y", "x"), name=xname)
    if X.shape != strain["exx"].shape:
        raise ValueError(f"{xname} has shape {X.shape} but {sname} has shape {strain['exx'].shape}; "
                         "resample both onto one grid first (e.g. with registration.warp)")
    try:
        xr.align(strain["exx"], X, join="exact")
    except ValueError as err:
        raise ValueError(f"{xname} and {sname} are on different grids (coordinates differ); "
                         "resample both onto one grid first") from err
    _pixel_aspect_ok(X, xname)


def _particle_name(*objs, default: str) -> str:
    for o in objs:
        name = str(getattr(o, "attrs", {}).get("particle", "") or "")
        if name:
            return name
    return default


def _resolve_mask(strain: xr.Dataset | None, X: xr.DataArray, mask, *, xname: str, mname: str,
                  particle: str = "") -> tuple[np.ndarray, np.ndarray]:
    """The particle's body (FEM mesh) and the pixels with finite data to fit inside it.

    With `mask` the body is the mask; without, the finite pixels with enclosed
    holes filled. Body pixels whose strain or X is not finite are left out of
    the fit with a :class:`DataWarning`.
    """
    xv = _validate.array(X, name=xname, ndim=2, dtype_kind="fiu", any_finite=True).astype(float)
    finite = np.isfinite(xv)
    if strain is not None:
        for v in _STRAIN_VARS:
            finite &= np.isfinite(np.asarray(strain[v].values, dtype=float))
    who = f" ({particle})" if particle else ""
    if mask is None:
        body = ndimage.binary_fill_holes(finite)
        _, n_pieces = ndimage.label(body)
        if n_pieces > 1:
            raise ValueError(
                f"the finite pixels of {xname}{who} form {n_pieces} pieces, but the finite-element model needs one "
                "edge-connected particle; pass mask= the particle's outline (NaN pixels inside it are then left "
                "out of the fit but kept in the mechanics), or its largest piece "
                "(chemomech.geometry.largest_component)")
    else:
        body = _validate.mask(mask, name=mname, shape=xv.shape)
    fit = body & finite
    n_body, n_fit = int(body.sum()), int(fit.sum())
    if n_body and not n_fit:
        raise ValueError(f"{mname}{who}: all {n_body} pixels have a non-finite strain or {xname} (NaN or inf); "
                         "there is nothing to fit")
    _validate.mask(body, name=mname, min_count=1)
    if n_fit < n_body:
        import warnings

        warnings.warn(f"{mname}{who}: {n_body - n_fit} of {n_body} pixels have a non-finite strain or {xname} "
                      f"(NaN or inf); they are left out of the fit ({n_fit} pixels remain) but stay part of the "
                      "particle's mechanics, with X interpolated there", DataWarning, stacklevel=3)
    vals = xv[fit]
    lo, hi = -X_NOISE_MARGIN, 1.0 + X_NOISE_MARGIN
    if np.any(vals < lo) or np.any(vals > hi):
        raise ValueError(f"{xname} must be a Li fraction: values slightly outside [0, 1] from noise are accepted, "
                         f"but inside the mask they must lie in [{lo:g}, {hi:g}]; got values in "
                         f"[{vals.min():.3g}, {vals.max():.3g}]. Is it a Li fraction?")
    return body, fit


def _filled(values: np.ndarray, body: np.ndarray, *, clip: tuple[float, float] | None = None) -> np.ndarray:
    """`values` (2-D) with its non-finite pixels inside `body` inpainted (biharmonic); a copy."""
    v = np.asarray(values, dtype=float)
    bad = body & ~np.isfinite(v)
    if not bad.any():
        return v.copy()
    from skimage.restoration import inpaint_biharmonic

    known = np.isfinite(v)
    # every non-finite pixel first takes its nearest finite value, so the inpainting sees finite surroundings
    idx = ndimage.distance_transform_edt(~known, return_distances=False, return_indices=True)
    out = inpaint_biharmonic(v[tuple(idx)], bad)
    if clip is not None:
        out = np.clip(out, *clip)
    return np.where(bad, out, v)


def _block_ids(rows: np.ndarray, cols: np.ndarray, block_px: int) -> np.ndarray:
    key = (rows // block_px) * 100003 + cols // block_px
    _, ids = np.unique(key, return_inverse=True)
    return ids


# --- forward model --------------------------------------------------------------------

_W_PROJECTION = np.diag([1.0, 1.0, 0.5])  # strain misfit metric on (exx, eyy, 2exy): tensor norm


def _upsampled_mesh(mask: np.ndarray, upsample: int):
    mu = np.repeat(np.repeat(mask, upsample, axis=0), upsample, axis=1)
    pm = elasticity.mesh_from_mask(mu)
    rows, cols = np.nonzero(mask)
    index = -np.ones(mask.shape, dtype=np.int64)
    index[rows, cols] = np.arange(rows.size)
    parent = index[pm.rows // upsample, pm.cols // upsample]  # element -> pixel
    return pm, parent, rows, cols


def _pixel_mean(values: np.ndarray, parent: np.ndarray, n: int, upsample: int) -> np.ndarray:
    """Average per-element values (..., n_el) over the sub-elements of each pixel."""
    out = np.zeros(values.shape[:-1] + (n,))
    np.add.at(out, (..., parent), values)
    return out / upsample**2


class _Forward:
    """Finite-element responses of one particle (mask) to per-pixel eigenstrains."""

    def __init__(self, mask: np.ndarray, *, stiffness: np.ndarray, boundary: str, upsample: int,
                 measured: np.ndarray | None = None):
        self.pm, self.parent, self.rows, self.cols = _upsampled_mesh(mask, upsample)
        self.n = self.rows.size
        self.upsample = upsample
        self.boundary = boundary
        self.problem = elasticity.ElasticProblem(self.pm, stiffness=stiffness, boundary=boundary)
        self._g = None
        if boundary == "dirichlet":
            if measured is None:
                raise ValueError("boundary='dirichlet' needs the measured strain to integrate a boundary "
                                 "displacement; pass strain=...")
            self._g = self._boundary_displacement(measured)

    def _boundary_displacement(self, measured: np.ndarray):
        """Least-squares displacement whose strain best matches `measured` (3, n), on the boundary."""
        proj = elasticity.ElasticProblem(self.pm, stiffness=_W_PROJECTION, boundary="free")
        u = proj.solve(measured[:, self.parent]).u
        basis = proj.basis
        tree = spatial.cKDTree(self.pm.mesh.p.T)
        ux_nodes = u[basis.nodal_dofs[0]]
        uy_nodes = u[basis.nodal_dofs[1]]

        def g(x, y):
            _, node = tree.query(np.c_[np.ravel(x), np.ravel(y)])
            return ux_nodes[node].reshape(np.shape(x)), uy_nodes[node].reshape(np.shape(x))

        return g

    def _zero_g(self, x, y):
        return np.zeros_like(x), np.zeros_like(x)

    def response(self, e0_pixels: np.ndarray, *, with_boundary: bool = False) -> np.ndarray:
        """Pixel strain (3, n) for per-pixel eigenstrain (3, n)."""
        kw = {}
        if self.boundary == "dirichlet":
            kw["boundary_displacement"] = self._g if with_boundary else self._zero_g
        sol = self.problem.solve(e0_pixels[:, self.parent], **kw)
        return _pixel_mean(sol.element_strain()[:3], self.parent, self.n, self.upsample)

    def boundary_response(self) -> np.ndarray:
        """Strain (3, n) caused by the prescribed boundary displacement alone (0 for free edges)."""
        if self.boundary == "free":
            return np.zeros((3, self.n))
        return self.response(np.zeros((3, self.n)), with_boundary=True)

    def basis_responses(self, X: np.ndarray, degree: int) -> np.ndarray:
        """Responses (3, n, 2, degree) to ``phi_k(X)`` along aa (xx) and cc (yy)."""
        phi = legendre_basis(X, degree)
        out = np.empty((3, self.n, 2, degree))
        e0 = np.zeros((3, self.n))
        for c in range(2):
            for k in range(degree):
                e0[:] = 0.0
                e0[c] = phi[:, k]
                out[:, :, c, k] = self.response(e0)
        return out


def _prepare(strains, Xs, masks, *, stiffness, boundary, upsample, degree_max, names,
             block_px: int = BLOCK_PX, progress: bool = False) -> list[_Particle]:
    out = []
    items = list(enumerate(zip(strains, Xs, masks)))
    if progress:
        from tqdm.auto import tqdm
        items = tqdm(items, desc="FEM responses per particle")
    for i, (s, x, m) in items:
        sname = "strain" if len(strains) == 1 else f"strain[{i}]"
        xname = "X" if len(strains) == 1 else f"X[{i}]"
        mname = "mask" if len(strains) == 1 else f"mask[{i}]"
        _check_grid(s, x, sname=sname, xname=xname)
        if isinstance(m, tuple):  # resolved already (body, fit) by the caller, which warned
            body, fit = m
        else:
            body, fit = _resolve_mask(s, x, m, xname=xname, mname=mname, particle=names[i])
        part = _particle_data(s, x, body, fit, stiffness=stiffness, boundary=boundary, upsample=upsample,
                              mname=mname, name=names[i])
        fwd, keep, xb, meas = part
        A = fwd.basis_responses(xb, degree_max)[:, keep]
        y = (meas - fwd.boundary_response())[:, keep]
        rows, cols = fwd.rows[keep], fwd.cols[keep]
        out.append(_Particle(names[i], body, rows, cols, xb[keep], y, A, _block_ids(rows, cols, block_px), fwd,
                             keep=keep, body_X=xb))
    return out


def _particle_data(s, x, body, fit, *, stiffness, boundary, upsample, mname, name):
    """Forward model on the body, the fitted pixels among its pixels, X and strain on the body (filled)."""
    rows, cols = np.nonzero(body)
    keep = fit[rows, cols]
    xb = _filled(x.values, body, clip=(0.0, 1.0))[rows, cols]
    if s is None:
        meas = None
    elif keep.all() or boundary != "dirichlet":
        meas = np.stack([np.asarray(s[v].values, dtype=float)[rows, cols] for v in _STRAIN_VARS])
    else:  # the boundary displacement is integrated from the strain over the whole body: fill the gaps
        meas = np.stack([_filled(s[v].values, body)[rows, cols] for v in _STRAIN_VARS])
    try:
        fwd = _Forward(body, stiffness=stiffness, boundary=boundary, upsample=upsample,
                       measured=meas if boundary == "dirichlet" else None)
    except ValueError as err:
        if "edge-connected" in str(err):
            who = f" ({name})" if name else ""
            raise ValueError(f"{mname}{who}: {err}") from err
        raise
    return fwd, keep, xb, meas


# --- least squares on block normal equations --------------------------------------------


def _columns(degree: int, degree_max: int) -> np.ndarray:
    """Indices of the law coefficients of a degree-`degree` model inside the full (2, degree_max) set."""
    return np.concatenate([np.arange(degree) + c * degree_max for c in range(2)])


def _design(p: _Particle, n_off: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows (3n, 2*dmax + n_off) and target (3n,) of one particle; offsets as the last columns."""
    n = p.X.size
    law = p.A.reshape(3 * n, -1)
    if n_off:
        off = np.kron(np.eye(3), np.ones((n, 1)))
        return np.hstack([law, off]), p.y.reshape(-1)
    return law, p.y.reshape(-1)


@dataclass
class _Normal:
    """Normal-equation pieces per block: G (nb, p, p), h (nb, p), n (nb,), ss (nb,)."""

    G: np.ndarray
    h: np.ndarray
    n: np.ndarray
    particle: np.ndarray  # (nb,) particle index of each block
    n_law: int
    n_off: int  # offsets per particle (3 or 0)
    n_particles: int


def _normal_blocks(parts: list[_Particle], *, n_off: int) -> _Normal:
    n_law = parts[0].A.shape[2] * parts[0].A.shape[3]
    P = len(parts)
    ptot = n_law + n_off * P
    Gs, hs, ns, owner = [], [], [], []
    for j, p in enumerate(parts):
        D, t = _design(p, n_off)
        full = np.zeros((D.shape[0], ptot))
        full[:, :n_law] = D[:, :n_law]
        if n_off:
            full[:, n_law + n_off * j:n_law + n_off * (j + 1)] = D[:, n_law:]
        blk = np.tile(p.blocks, 3)
        nb = int(p.blocks.max()) + 1
        for b in range(nb):
            rows = blk == b
            Db, tb = full[rows], t[rows]
            Gs.append(Db.T @ Db)
            hs.append(Db.T @ tb)
            ns.append(int(rows.sum()))
            owner.append(j)
    return _Normal(np.array(Gs), np.array(hs), np.array(ns), np.array(owner), n_law, n_off, P)


def _active(nrm: _Normal, degree: int, particles: np.ndarray) -> np.ndarray:
    dmax = nrm.n_law // 2
    cols = [_columns(degree, dmax)]
    for j in particles:
        cols.append(nrm.n_law + nrm.n_off * j + np.arange(nrm.n_off))
    return np.concatenate(cols).astype(int)


def _penalty(degree: int, smoothness: float, n_rows: float) -> np.ndarray:
    """Quadratic penalty (2d, 2d): smoothness * n_rows * int_0^1 (eps0'')^2 dX per component."""
    if smoothness <= 0 or degree < 2:
        return np.zeros((2 * degree, 2 * degree))
    xg = np.linspace(0.0, 1.0, 101)
    B2 = legendre_basis(xg, degree, derivative=2)
    w = np.full(xg.size, xg[1] - xg[0])
    w[[0, -1]] /= 2
    one = (B2 * w[:, None]).T @ B2
    return smoothness * n_rows * np.kron(np.eye(2), one)


def _solve(G: np.ndarray, h: np.ndarray, *, degree: int, smoothness: float, monotonic: bool,
           n_rows: float) -> np.ndarray:
    """Minimise b'Gb - 2h'b (+ penalty) over the active columns; law columns come first."""
    nl = 2 * degree
    G = G.copy()
    G[:nl, :nl] += _penalty(degree, smoothness, n_rows)
    scale = np.sqrt(np.maximum(np.diag(G), 1e-300))
    Gs = G / np.outer(scale, scale)
    hs = h / scale
    b = np.linalg.lstsq(Gs, hs, rcond=1e-12)[0]
    if monotonic:
        b = _monotone(Gs, hs, b, degree, scale)
    return b / scale


def _monotone(Gs, hs, b0, degree, scale):
    """Re-solve with d eps0/dX of one sign per component on [0, 1] (sign of the free fit's mean slope)."""
    xg = np.linspace(0.0, 1.0, 41)
    B1 = legendre_basis(xg, degree, derivative=1)  # (41, d)
    rows = []
    for c in range(2):
        sl = slice(c * degree, (c + 1) * degree)
        mean_slope = B1 @ (b0[sl] / scale[sl])
        sign = 1.0 if mean_slope.mean() >= 0 else -1.0
        Cc = np.zeros((xg.size, b0.size))
        Cc[:, sl] = sign * B1 / scale[sl]
        rows.append(Cc)
    C = np.vstack(rows)
    if np.all(C @ b0 >= 0):
        return b0
    res = optimize.minimize(lambda b: b @ Gs @ b - 2 * hs @ b, b0, jac=lambda b: 2 * (Gs @ b - hs),
                            constraints=[{"type": "ineq", "fun": lambda b: C @ b, "jac": lambda b: C}],
                            method="SLSQP", options={"maxiter": 500, "ftol": 1e-14})
    return res.x


def _fit_subset(nrm: _Normal, weights: np.ndarray, degree: int, *, smoothness: float,
                monotonic: bool) -> tuple[np.ndarray, np.ndarray]:
    """Fit with block weights; returns (law coefficients (2, degree), offsets (P, n_off), NaN if absent)."""
    G = np.tensordot(weights, nrm.G, axes=1)
    h = weights @ nrm.h
    present = np.unique(nrm.particle[weights > 0])
    act = _active(nrm, degree, present)
    b = _solve(G[np.ix_(act, act)], h[act], degree=degree, smoothness=smoothness, monotonic=monotonic,
               n_rows=float(weights @ nrm.n))
    coef = b[:2 * degree].reshape(2, degree)
    off = np.full((nrm.n_particles, nrm.n_off), np.nan)
    for i, j in enumerate(present):
        off[j] = b[2 * degree + nrm.n_off * i:2 * degree + nrm.n_off * (i + 1)]
    return coef, off


def _predict_law(p: _Particle, coef: np.ndarray) -> np.ndarray:
    d = coef.shape[1]
    return np.einsum("vnck,ck->vn", p.A[:, :, :, :d], coef)


# --- cross-validation -------------------------------------------------------------------


def _cross_validate(parts, nrm, degrees, *, folds, rng, smoothness, monotonic):
    """CV mean squared error per degree and fold: (n_degrees, n_folds)."""
    nb = nrm.G.shape[0]
    if folds == "particles":
        fold_of_block = nrm.particle.copy()
        n_folds = nrm.n_particles
    else:
        n_folds = min(5, nb)  # a small particle has fewer blocks than folds: one block per fold then
        if n_folds < 2:
            raise ValueError(f"cross-validation needs at least 2 spatial blocks of block_px pixels, got {nb}; "
                             "give degree= or a smaller block_px")
        perm = rng.permutation(nb)
        fold_of_block = np.empty(nb, int)
        fold_of_block[perm] = np.arange(nb) % n_folds
    # pixel-level fold labels for prediction
    starts = np.concatenate([[0], np.cumsum([int(p.blocks.max()) + 1 for p in parts])])
    err = np.zeros((len(degrees), n_folds))
    for f in range(n_folds):
        w = (fold_of_block != f).astype(float)
        for i, d in enumerate(degrees):
            coef, off = _fit_subset(nrm, w, d, smoothness=smoothness, monotonic=monotonic)
            sse, cnt = 0.0, 0
            for j, p in enumerate(parts):
                held = fold_of_block[starts[j] + p.blocks] == f
                if not held.any():
                    continue
                r = p.y[:, held] - _predict_law(p, coef)[:, held]
                if nrm.n_off:
                    o = off[j] if np.all(np.isfinite(off[j])) else r.mean(axis=1)
                    r = r - o[:, None]
                sse += float(np.sum(r**2))
                cnt += r.size
            err[i, f] = sse / cnt
    return err


def _select_degree(degrees, err) -> int:
    """Smallest degree within one standard error (of the paired fold difference) of the best."""
    mean = err.mean(axis=1)
    best = int(np.argmin(mean))
    nf = err.shape[1]
    for i in range(best + 1):
        diff = err[i] - err[best]
        se = diff.std(ddof=1) / np.sqrt(nf) if nf > 1 else 0.0
        if diff.mean() <= se:
            return int(degrees[i])
    return int(degrees[best])


# --- the model ---------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class EigenstrainModel:
    """A learned composition–eigenstrain law with its uncertainty.

    Built by :func:`fit_eigenstrain`; the law is ``eps0_aa(X) = sum_k coef[0, k-1] phi_k(X)``
    and ``eps0_cc`` alike, with :func:`legendre_basis` ``phi_k``.

    Attributes
    ----------
    degree : int
        Polynomial degree of ``eps0(X)``.
    coef : numpy.ndarray, shape (2, degree)
        Legendre coefficients of ``eps0_aa`` (row 0) and ``eps0_cc`` (row 1).
    coef_boot : numpy.ndarray, shape (n_boot, 2, degree)
        Bootstrap replicates (empty when ``n_boot=0``).
    offsets : dict of str to numpy.ndarray
        Fitted strain offsets (exx, eyy, exy) per training particle (free boundary).
    boundary : str
        ``"free"`` or ``"dirichlet"``.
    stiffness : numpy.ndarray, shape (3, 3)
        Plane-stress stiffness used, GPa.
    upsample : int
        Sub-elements per pixel side of the finite-element mesh.
    cv : xarray.Dataset or None
        Cross-validation curve (``mse`` per degree and fold) when the degree was selected.
    bootstrap : str
        What the bootstrap resampled.
    training : tuple of str
        Names of the training particles (``attrs["particle"]`` of each strain Dataset).
    reference_strain : dict of str to numpy.ndarray or None
        With ``reference="fepo4"``: strain ``(e_aa, e_cc, e_ac)`` of each training
        particle's reference lattice relative to FePO4 (:func:`reference_strain`).
    interval_terms : tuple of str
        What the replicates ``coef_boot`` (and so :meth:`interval`) include: the
        bootstrap, the SIMEX shift, and any spread added by a stiffness term
        (``fit_eigenstrain(stiffness_uncertainty=...)``) or by :meth:`add_spread`
        (e.g. the registration term of :func:`chemomech.study.run_study`).
    """

    degree: int
    coef: np.ndarray
    coef_boot: np.ndarray
    offsets: dict
    boundary: str
    stiffness: np.ndarray
    upsample: int
    cv: xr.Dataset | None = None
    bootstrap: str = "blocks"
    training: tuple = field(default_factory=tuple)
    reference_strain: dict | None = None
    interval_terms: tuple = field(default_factory=tuple)

    @classmethod
    def from_law(cls, law, degree: int, *, boundary: str = "free", stiffness: ArrayLike | None = None,
                 upsample: int = 1) -> "EigenstrainModel":
        """Express a known law (callable X -> (..., 2)) as a model, e.g. to predict with the truth.

        The law is projected onto the basis of `degree` by least squares on 201
        points in [0, 1] after subtracting its value at X = 0 (exact for polynomials
        up to `degree`).

        Examples
        --------
        >>> from chemomech import twin
        >>> m = EigenstrainModel.from_law(twin.vegard_law(), 1)
        >>> np.round(m.eigenstrain([1.0]), 3).tolist()
        [[0.052, -0.02]]
        """
        if not callable(law):
            raise TypeError(f"law must be a callable X -> (..., 2), got {type(law).__name__}")
        _validate.choice(boundary, ("free", "dirichlet"), name="boundary")
        xg = np.linspace(0.0, 1.0, 201)
        vals = np.asarray(law(xg), dtype=float) - np.asarray(law(np.zeros(1)), dtype=float)
        coef = np.linalg.lstsq(legendre_basis(xg, int(degree)), vals, rcond=None)[0].T
        q = elasticity.stiffness_ac() if stiffness is None else _validate.array(stiffness, name="stiffness",
                                                                                 shape=(3, 3), finite=True)
        _check_int(degree, name="degree", minimum=1)
        _check_int(upsample, name="upsample", minimum=1)
        return cls(int(degree), coef, np.empty((0, 2, int(degree))), {}, boundary, q, int(upsample))

    def add_spread(self, deltas: ArrayLike, *, term: str) -> "EigenstrainModel":
        """A copy whose replicates also carry another source of uncertainty.

        The deltas are centred on their mean (the term adds spread, not a
        shift) and every replicate is combined with every delta: the new
        replicates (``n_boot * n`` of them) are the exact sum of the two
        empirical distributions (independent sources). Use it for what the
        bootstrap cannot see, e.g. coefficient changes when the fit is repeated
        with perturbed registrations or stiffness.

        Parameters
        ----------
        deltas : array_like, shape (n, 2, degree)
            Coefficient changes, one per perturbed refit (perturbed minus unperturbed
            refit made the same way), n >= 2.
        term : str
            What they describe (recorded in :attr:`interval_terms`).

        Examples
        --------
        >>> m = EigenstrainModel(1, np.array([[0.05], [-0.02]]), np.zeros((4, 2, 1)), {}, "free",
        ...                      np.eye(3), 1)
        >>> w = m.add_spread([[[0.03], [0.0]], [[0.01], [0.0]]], term="demo")
        >>> w.coef_boot.shape, sorted(set(np.round(w.coef_boot[:, 0, 0], 3).tolist())), w.interval_terms
        ((8, 2, 1), [-0.01, 0.01], ('demo',))
        """
        d = _validate.array(deltas, name="deltas", finite=True).astype(float)
        if d.ndim != 3 or d.shape[1:] != self.coef.shape or d.shape[0] < 2:
            raise ValueError(f"deltas must have shape (n >= 2, 2, {self.degree}), got {d.shape}")
        if not isinstance(term, str) or not term:
            raise TypeError(f"term must be a non-empty str, got {term!r}")
        nb = self.coef_boot.shape[0]
        if nb < 2:
            raise ValueError("the model has no bootstrap replicates to widen; fit with n_boot >= 2")
        d = d - d.mean(axis=0)
        boots = (self.coef_boot[:, None] + d[None]).reshape((-1,) + self.coef.shape)
        return dataclasses.replace(self, coef_boot=boots, interval_terms=tuple(self.interval_terms) + (term,))

    # -- the law ----------------------------------------------------------------

    @staticmethod
    def _x(X) -> np.ndarray:
        x = np.atleast_1d(_validate.array(X, name="X", finite=True)).astype(float)
        if np.any((x < 0) | (x > 1)):
            raise ValueError(f"X must lie in [0, 1], got values in [{x.min():.3g}, {x.max():.3g}]")
        return x

    def eigenstrain(self, X: ArrayLike) -> np.ndarray:
        """Eigenstrain ``(len(X), 2)``: ``eps0_xx`` (a), ``eps0_yy`` (c); zero at X = 0."""
        return legendre_basis(self._x(X), self.degree) @ self.coef.T

    def derivative(self, X: ArrayLike) -> np.ndarray:
        """Slope ``d eps0 / dX``, shape ``(len(X), 2)``."""
        return legendre_basis(self._x(X), self.degree, derivative=1) @ self.coef.T

    def interval(self, X: ArrayLike, *, quantity: str = "derivative", level: float = 0.95
                 ) -> tuple[np.ndarray, np.ndarray]:
        """Percentile interval ``(low, high)`` of the replicates, each ``(len(X), 2)``.

        The replicates are the bootstrap's, shifted by the SIMEX correction and
        widened by any further terms (:attr:`interval_terms`).

        Parameters
        ----------
        X : array_like
        quantity : {"derivative", "eigenstrain"}
        level : float
            Coverage, in (0, 1).
        """
        _validate.choice(quantity, ("derivative", "eigenstrain"), name="quantity")
        if not 0 < level < 1:
            raise ValueError(f"level must be in (0, 1), got {level}")
        if self.coef_boot.shape[0] < 2:
            raise ValueError("the model has no bootstrap replicates; fit with n_boot >= 2")
        B = legendre_basis(self._x(X), self.degree, derivative=int(quantity == "derivative"))
        reps = np.einsum("nk,bck->bnc", B, self.coef_boot)
        q = 100 * (1 - level) / 2
        return np.percentile(reps, q, axis=0), np.percentile(reps, 100 - q, axis=0)

    def summary(self, *, level: float = 0.95) -> xr.Dataset:
        """Coefficients with standard errors and slopes at X = 0.25, 0.5, 0.75 with intervals.

        Returns
        -------
        xarray.Dataset
            ``coef``, ``coef_se`` on ``("component", "k")``; ``slope``, ``slope_se``,
            ``slope_low``, ``slope_high`` on ``("component", "X")``. Standard errors and
            intervals are NaN without bootstrap replicates.
        """
        xs = np.array(SUMMARY_X)
        slope = self.derivative(xs).T
        nb = self.coef_boot.shape[0]
        if nb >= 2:
            coef_se = self.coef_boot.std(axis=0, ddof=1)
            reps = np.einsum("nk,bck->bcn", legendre_basis(xs, self.degree, derivative=1), self.coef_boot)
            slope_se = reps.std(axis=0, ddof=1)
            lo, hi = self.interval(xs, level=level)
            lo, hi = lo.T, hi.T
        else:
            coef_se = np.full_like(self.coef, np.nan)
            slope_se = lo = hi = np.full_like(slope, np.nan)
        comp = ("component", list(_COMPONENTS), {"long_name": "crystal axis (aa: x, cc: y)"})
        kc = ("k", np.arange(1, self.degree + 1), {"long_name": "Legendre order", "units": "1"})
        xc = ("X", xs, {"long_name": "Li fraction", "units": "1"})
        one = {"units": "1"}
        return xr.Dataset(
            {
                "coef": (("component", "k"), self.coef, {**one, "long_name": "Legendre coefficient"}),
                "coef_se": (("component", "k"), coef_se, {**one, "long_name": "bootstrap standard error"}),
                "slope": (("component", "X"), slope, {**one, "long_name": "d eps0 / dX"}),
                "slope_se": (("component", "X"), slope_se, {**one, "long_name": "standard error of the slope"}),
                "slope_low": (("component", "X"), lo, {**one, "long_name": f"{level:.0%} interval, low"}),
                "slope_high": (("component", "X"), hi, {**one, "long_name": f"{level:.0%} interval, high"}),
            },
            coords={"component": comp, "k": kc, "X": xc},
            attrs={"degree": self.degree, "boundary": self.boundary, "n_boot": nb, "bootstrap": self.bootstrap,
                   "level": level},
        )

    # -- prediction ---------------------------------------------------------------

    def predict_strain(self, X: xr.DataArray, mask: ArrayLike | None = None, *,
                       strain: xr.Dataset | None = None) -> xr.Dataset:
        """Strain that the learned law predicts for a particle with Li map `X`.

        Parameters
        ----------
        X : xarray.DataArray
            Li fraction on ``("y", "x")`` (square pixels), in [0, 1] inside `mask`.
        mask : array_like of bool, optional
            Particle pixels (one edge-connected piece); default: finite X (and
            strain), enclosed holes filled. Pixels of the mask where X (or the
            strain) is not finite stay part of the particle, with X interpolated,
            and are reported as NaN (with a :class:`DataWarning`).
        strain : xarray.Dataset, optional
            Measured strain on the same grid; required with ``boundary="dirichlet"``
            (it gives the boundary displacement), ignored otherwise.

        Returns
        -------
        xarray.Dataset
            ``exx``, ``eyy``, ``exy`` (NaN outside `mask` and where the data are not
            finite) and ``mask`` (the pixels reported). With free edges the unknown
            reference offset is zero: compare with :meth:`residual`.
        """
        _validate.dims(X, ("y", "x"), name="X")
        if self.boundary == "dirichlet" and strain is None:
            raise ValueError("this model uses boundary='dirichlet'; pass the measured strain=... so the "
                             "boundary displacement can be integrated from it")
        if strain is not None:
            _check_grid(strain, X, sname="strain", xname="X")
        else:
            _pixel_aspect_ok(X, "X")
        name = _particle_name(strain, X, default="")
        body, fit = _resolve_mask(strain, X, mask, xname="X", mname="mask", particle=name)
        _check_pixels(int(fit.sum()), 3 if self.boundary == "free" else 0, "mask")
        fwd, keep, xb, _ = _particle_data(strain, X, body, fit, stiffness=self.stiffness, boundary=self.boundary,
                                          upsample=self.upsample, mname="mask", name=name)
        e = legendre_basis(xb, self.degree) @ self.coef.T  # measured X may leave [0, 1] by its noise
        e0 = np.zeros((3, xb.size))
        e0[0], e0[1] = e[:, 0], e[:, 1]
        pred = fwd.response(e0, with_boundary=True)
        # reported where X (and the strain) were measured; elsewhere the body's X was interpolated
        return _strain_dataset(pred[:, keep], fit, fwd.rows[keep], fwd.cols[keep], X, "predicted strain")

    def residual(self, strain: xr.Dataset, X: xr.DataArray, mask: ArrayLike | None = None) -> xr.Dataset:
        """Measured minus predicted strain, with the reference offsets fitted (free edges).

        Returns
        -------
        xarray.Dataset
            ``exx``, ``eyy``, ``exy`` residuals, ``mask``; ``attrs["offsets"]`` holds the
            fitted offsets (exx, eyy, exy) and ``attrs["rms"]`` the RMS over all three.
        """
        pred = self.predict_strain(X, mask, strain=strain)
        m = pred["mask"].values
        r = np.stack([np.asarray(strain[v].values, float)[m] - pred[v].values[m] for v in _STRAIN_VARS])
        off = r.mean(axis=1) if self.boundary == "free" else np.zeros(3)
        r = r - off[:, None]
        rows, cols = np.nonzero(m)
        ds = _strain_dataset(r, m, rows, cols, X, "residual (measured - predicted)")
        ds.attrs.update(offsets=off.tolist(), rms=float(np.sqrt(np.mean(r**2))))
        return ds

    def to_fepo4(self, strain: xr.Dataset, X: xr.DataArray, mask: ArrayLike | None = None) -> xr.Dataset:
        """Re-express a new particle's Bragg-disk strain relative to FePO4, the lattice of the law.

        The particle's own reference lattice follows from the offsets of
        :meth:`residual` (:func:`reference_strain`); the strain is then
        re-expressed with :func:`chemomech.strain.change_reference`. This is the
        held-out counterpart of ``fit_eigenstrain(..., reference="fepo4")``.

        Returns
        -------
        xarray.Dataset
            ``exx``, ``eyy``, ``exy`` relative to FePO4 (other variables kept);
            ``attrs["reference_strain"]`` holds ``(e_aa, e_cc, e_ac)``.
        """
        if self.boundary != "free":
            raise ValueError("to_fepo4 needs a model fitted with boundary='free' (it uses the fitted offsets)")
        first = self.residual(strain, X, mask)
        return strain_module.change_reference(strain, reference_strain(first.attrs["offsets"]))


def residual_rms(residual: xr.Dataset, *, center_nm: tuple[float, float] | None = None,
                 radius_nm: float = 0.0, inside: bool = False) -> float:
    """RMS of a residual map over exx, eyy, exy, optionally inside or outside a disk.

    Parameters
    ----------
    residual : xarray.Dataset
        From :meth:`EigenstrainModel.residual` (coordinates in nm).
    center_nm : (float, float), optional
        ``(y, x)`` of the disk centre; ``None``: all pixels of the mask.
    radius_nm : float
        Disk radius.
    inside : bool
        Use the pixels inside the disk (True) or outside it (False).

    Examples
    --------
    >>> r = xr.Dataset({v: (("y", "x"), np.full((2, 3), 1e-3)) for v in ("exx", "eyy", "exy")},
    ...                coords={"y": [0.0, 5.0], "x": [0.0, 5.0, 10.0]})
    >>> r["mask"] = (("y", "x"), np.ones((2, 3), bool))
    >>> residual_rms(r, center_nm=(0.0, 0.0), radius_nm=6.0, inside=True)
    0.001
    """
    for v in _STRAIN_VARS + ("mask",):
        if v not in residual:
            raise ValueError(f"residual must contain {v!r}; pass the Dataset from EigenstrainModel.residual")
    sel = residual["mask"].values.astype(bool).copy()
    if center_nm is not None:
        yy, xx = np.meshgrid(residual["y"].values, residual["x"].values, indexing="ij")
        r = np.hypot(yy - center_nm[0], xx - center_nm[1])
        sel &= (r < radius_nm) if inside else (r > radius_nm)
    _validate.mask(sel, name="selected region", min_count=1)
    vals = np.concatenate([residual[v].values[sel] for v in _STRAIN_VARS])
    return float(np.sqrt(np.mean(vals**2)))


def _strain_dataset(values: np.ndarray, m: np.ndarray, rows, cols, like: xr.DataArray, what: str) -> xr.Dataset:
    out = {}
    for i, v in enumerate(_STRAIN_VARS):
        img = np.full(m.shape, np.nan)
        img[rows, cols] = values[i]
        out[v] = (("y", "x"), img, {"units": "1", "long_name": f"{what} {v}"})
    out["mask"] = (("y", "x"), m.copy(), {"units": "1", "long_name": "pixels used"})
    coords = {d: like[d] for d in ("y", "x") if d in like.coords}
    return xr.Dataset(out, coords=coords)


def _check_int(value, *, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _check_lambdas(values, *, name: str, min_size: int) -> np.ndarray:
    lam = np.asarray(values, dtype=float)
    if lam.ndim != 1 or lam.size < min_size or np.any(lam <= 0):
        raise ValueError(f"{name} must be at least {min_size} positive numbers, got {values!r}")
    return lam


def _check_pixels(n_pixels: int, n_params: int, name: str) -> None:
    need = max(MIN_PIXELS_PER_PARAMETER * n_params, 16)
    if n_pixels < need:
        raise ValueError(f"{name} selects {n_pixels} pixels; at least {need} are needed "
                         f"({MIN_PIXELS_PER_PARAMETER} per fitted parameter, {n_params} parameters). "
                         "Use a lower degree or a larger mask")


# --- fitting ----------------------------------------------------------------------------


def fit_eigenstrain(strain, X, *, mask=None, degree: int | None = None, stiffness: ArrayLike | None = None,
                    boundary: str = "free", upsample: int = 1, max_degree: int = MAX_DEGREE,
                    smoothness: float = 0.0, monotonic: bool = False, n_boot: int = 100,
                    bootstrap: str = "auto", block_px: int = BLOCK_PX,
                    sigma_X: float | None = None, simex_lambdas: Sequence[float] = (0.5, 1.0, 1.5, 2.0),
                    simex_n_sim: int = 3, reference: str | None = None, X_noise=None,
                    stiffness_uncertainty: float = 0.0, n_perturb: int = N_PERTURB,
                    rng: np.random.Generator | int | None = None, progress: bool = False) -> EigenstrainModel:
    """Learn ``eps0(X)`` from strain and Li maps, constrained by mechanical equilibrium.

    Parameters
    ----------
    strain : xarray.Dataset or sequence of Dataset
        ``exx``, ``eyy``, ``exy`` on ``("y", "x")`` in the crystal frame (x ∥ a,
        y ∥ c), square pixels. A sequence trains jointly on several particles.
    X : xarray.DataArray or sequence of DataArray
        Li fraction on the same grid(s). A noisy estimate should not be clipped
        (clipping biases X where X = 0 and X = 1 domains sit); values within
        ``X_NOISE_MARGIN`` (0.5) of [0, 1] are accepted.
    mask : array_like of bool or sequence, optional
        Particle pixels (one edge-connected piece each); default: finite in
        both, enclosed holes filled. Pixels of a mask whose strain or X is not
        finite (lost frames, a failed X region) are left out of the fit with a
        :class:`DataWarning` giving their number and the particle, and stay in
        the finite-element body with X interpolated there; a ``ValueError`` is
        raised only when too few pixels remain.
    degree : int, optional
        Polynomial degree; ``None`` selects it in ``1 .. max_degree`` by
        cross-validation (leave-one-particle-out with ≥ 3 particles, otherwise
        5 folds of spatial blocks, one block per fold when there are fewer),
        choosing the smallest degree whose CV error is within one standard
        error (of the paired fold difference) of the best.
    stiffness : array_like (3, 3), optional
        Plane-stress stiffness in the crystal frame, GPa, Voigt (xx, yy, xy) on
        engineering shear; default :func:`chemomech.elasticity.stiffness_ac`.
    boundary : {"free", "dirichlet"}
        ``"free"``: traction-free edges plus a free strain offset per component
        and particle. ``"dirichlet"``: the boundary displacement is integrated from
        the measured strain (the displacement whose strain matches the measured
        exx, eyy, exy best in the least-squares sense over the particle) and
        prescribed. A ``theta`` map is not needed: the integration fixes the
        displacement up to a rigid motion, which strains nothing.
    upsample : int
        Bilinear sub-elements per pixel side (1: one element per pixel).
    max_degree : int
        Highest degree tried when ``degree=None``.
    smoothness : float
        Penalty ``smoothness * n_rows * ∫ (d² eps0/dX²)² dX`` added to the sum of
        squares (0: none).
    monotonic : bool
        Constrain each component's slope to one sign on [0, 1].
    n_boot : int
        Bootstrap replicates for the uncertainties (0: none).
    bootstrap : {"auto", "blocks", "particles", "both"}
        Resample spatial blocks within each particle, whole particles, or
        particles and then blocks within them; ``"auto"``: ``"both"`` with three
        or more particles, else ``"blocks"``. Block resampling sees only the
        noise; particle resampling also sees how much particles disagree.
    block_px : int
        Side of the square spatial blocks, pixels.
    sigma_X : float, optional
        Standard deviation of the noise in X, taken as white (independent
        pixels). When given, the regression dilution it causes is removed by
        SIMEX: extra noise of variance ``lambda * sigma_X**2`` is added to X, the
        FEM responses, the CV curve and the coefficients are recomputed, and both
        are extrapolated (quadratically) back to ``lambda = -1``.
    X_noise : callable or sequence of callable, optional
        The noise in X as it really is, for SIMEX in place of white noise: one
        callable per particle (or one for a single particle), ``draw(rng) ->
        ndarray`` of X's shape, returning one realisation of the noise with its
        full amplitude and spatial correlation (e.g. white X-ray noise passed
        through the resampling the map went through:
        :func:`chemomech.correlate.x_noise_sampler`). The FEM response averages
        correlated noise less than white noise, so SIMEX with white noise of the
        right variance under-corrects. Given, `sigma_X` is not needed (and is
        ignored).
    simex_lambdas : sequence of float
        Added-noise multipliers for SIMEX.
    simex_n_sim : int
        Noise realisations per multiplier.
    reference : {None, "fepo4"}
        What the strain maps are relative to. ``None``: take them as they are
        (a free offset per component absorbs any uniform reference strain).
        ``"fepo4"``: the maps are Bragg-disk strain relative to each particle's
        own reference region (:func:`chemomech.strain.measure_strain`), whose
        lattice is not FePO4; a first fit (no bootstrap, with the same SIMEX as
        the final fit) gives each particle's offsets (the mean residual of the
        particle under the corrected law, as :meth:`EigenstrainModel.to_fepo4`
        finds them for a held-out particle), :func:`reference_strain` turns them into the
        reference lattice's strain relative to FePO4, the maps are re-expressed
        relative to FePO4 (:func:`chemomech.strain.change_reference`) and the
        law is fitted again. Without this the slopes are scaled by
        ``1 / (1 + e_ref)`` (about 2–5 % for the twin's particles). Needs
        ``boundary="free"``. The model records the result in
        :attr:`EigenstrainModel.reference_strain`.
    stiffness_uncertainty : float
        Relative uncertainty of the stiffness (e.g. 0.1: real particles'
        constants may be 10 % off the model's, or depend on X). With ``> 0`` (and
        ``n_boot > 0``) the law is refitted `n_perturb` times at the selected
        degree with each of Q_aa, Q_cc, Q_ac and Q_66 scaled by an independent
        uniform factor in ``1 ± stiffness_uncertainty``, and the coefficient
        changes are added to the bootstrap replicates (:meth:`EigenstrainModel.add_spread`).
    n_perturb : int
        Refits for the stiffness term.
    rng : numpy.random.Generator or int, optional
        Seed for CV fold assignment, SIMEX and the bootstrap (an int seed is
        used as is by both passes of ``reference="fepo4"``).
    progress : bool
        Show a progress bar over particles.

    Returns
    -------
    EigenstrainModel
        Its intervals (:meth:`EigenstrainModel.interval`) include the bootstrap
        (blocks within particles and/or particles), the SIMEX shift, and the
        stiffness term when asked; not the registration (the caller's, see
        :meth:`EigenstrainModel.add_spread`). :attr:`EigenstrainModel.interval_terms` lists them.

    Notes
    -----
    For each particle the finite-element responses ``R_{c,k}`` (strain maps) to
    the eigenstrain ``phi_k(X(r)) e_c`` (c = aa, cc) are computed once; the
    measured strain is modelled as ``sum_{c,k} beta_{c,k} R_{c,k} + o`` with
    offsets ``o`` (free edges) and fitted by ordinary least squares on the three
    components with equal weights. Normal equations are accumulated per spatial
    block, so cross-validation and the bootstrap only re-sum small matrices.

    Examples
    --------
    >>> from chemomech import materials, twin
    >>> p = twin.make_particle("demo", batch="biphasic", seed=5, mesh_nrefs=4)
    >>> ds = p.render(pixel_size_nm=12.0)
    >>> model = fit_eigenstrain(ds[["exx", "eyy", "exy"]], ds.X, degree=1, n_boot=0)
    >>> np.round(model.derivative([0.5])[0] / [materials.VEGARD_AA, materials.VEGARD_CC], 1).tolist()
    [1.0, 1.0]
    """
    _validate.choice(boundary, ("free", "dirichlet"), name="boundary")
    _validate.choice(reference, (None, "fepo4"), name="reference")
    if reference is not None and boundary != "free":
        raise ValueError(f"reference={reference!r} needs boundary='free' (the reference lattice comes from the "
                         "fitted offsets, which a Dirichlet fit does not have)")
    _validate.choice(bootstrap, ("auto", "blocks", "particles", "both"), name="bootstrap")
    for nm, v, lo in (("upsample", upsample, 1), ("max_degree", max_degree, 1), ("block_px", block_px, 1),
                      ("n_boot", n_boot, 0), ("simex_n_sim", simex_n_sim, 1), ("n_perturb", n_perturb, 2)):
        _check_int(v, name=nm, minimum=lo)
    if degree is not None and (isinstance(degree, bool) or not isinstance(degree, (int, np.integer))
                               or degree < 1):
        raise ValueError(f"degree must be None or an int >= 1, got {degree!r}")
    _validate.positive(smoothness, name="smoothness", allow_zero=True)
    sig_x = None if sigma_X is None else _validate.positive(sigma_X, name="sigma_X")
    stiff_u = _validate.positive(stiffness_uncertainty, name="stiffness_uncertainty", allow_zero=True)
    if stiff_u >= 0.5:
        raise ValueError(f"stiffness_uncertainty must be < 0.5 (a relative uncertainty), got {stiff_u}")
    _check_lambdas(simex_lambdas, name="simex_lambdas", min_size=2)
    _validate.rng(rng)  # type check before any FEM work
    strains = _as_list(strain, xr.Dataset)
    Xs = _as_list(X, xr.DataArray)
    for i, s in enumerate(strains):
        angle = s.attrs.get("crystal_angle_rad")
        if angle is not None and abs(float(angle)) > 1e-9:
            raise ValueError(f"strain{'' if len(strains) == 1 else f'[{i}]'} lies on a grid turned by "
                             f"crystal_angle_rad = {float(angle):.4g} rad from the crystal; the model needs the grid's "
                             "x axis along a: resample it with chemomech.correlate.align_to_crystal first")
    if len(Xs) != len(strains):
        raise ValueError(f"X must give one map per strain Dataset: got {len(Xs)} X maps and "
                         f"{len(strains)} strain Datasets")
    if mask is None:
        masks = [None] * len(strains)
    else:
        masks = [mask] if len(strains) == 1 else list(mask)
        if len(masks) != len(strains):
            raise ValueError(f"mask must give one mask per particle: got {len(masks)} for {len(strains)}")
    q = elasticity.stiffness_ac() if stiffness is None else _validate.array(stiffness, name="stiffness",
                                                                             shape=(3, 3), finite=True)
    dmax = int(degree if degree is not None else max_degree)
    n_off = 3 if boundary == "free" else 0
    names = [_particle_name(s, x, default=f"particle {i}") for i, (s, x) in enumerate(zip(strains, Xs))]
    if len(set(names)) < len(names):
        names = [f"{n} [{i}]" for i, n in enumerate(names)]
    # cheap size check before any FEM work (and the one warning per particle about non-finite pixels)
    resolved = []
    for i, (s, x, m) in enumerate(zip(strains, Xs, masks)):
        nm = "mask" if len(strains) == 1 else f"mask[{i}]"
        _check_grid(s, x, sname="strain" if len(strains) == 1 else f"strain[{i}]",
                    xname="X" if len(strains) == 1 else f"X[{i}]")
        body, fit_px = _resolve_mask(s, x, m, xname="X" if len(strains) == 1 else f"X[{i}]", mname=nm,
                                     particle=names[i])
        _check_pixels(int(fit_px.sum()), n_off + (2 * dmax if len(strains) == 1 else 0), nm)
        resolved.append((body, fit_px))
    noise = _noise_drawers(X_noise, sig_x, Xs, resolved)
    prep = dict(boundary=boundary, upsample=int(upsample), names=names, block_px=int(block_px))
    parts = _prepare(strains, Xs, resolved, stiffness=q, degree_max=dmax, progress=progress, **prep)
    total = sum(p.X.size for p in parts)
    _check_pixels(total, 2 * dmax + n_off * len(parts), "mask (all particles)")
    fit = dict(degree=degree, degrees=np.arange(1, dmax + 1) if degree is None else np.array([int(degree)]),
               n_off=n_off, bootstrap=bootstrap, block_px=int(block_px), smoothness=smoothness,
               monotonic=monotonic, simex_lambdas=simex_lambdas, simex_n_sim=simex_n_sim, stiffness=q,
               boundary=boundary, upsample=int(upsample))
    refs, raw_parts = None, parts
    if reference == "fepo4":
        # the FEM responses depend on X and the mask only: the second pass reuses them with re-referenced strain;
        # both passes treat the X noise alike (and alike to EigenstrainModel.to_fepo4 for a held-out particle)
        first = _fit_parts(parts, n_boot=0, noise=noise, rng=rng, **fit)
        refs = {p.name: reference_strain(first.offsets[p.name]) for p in parts}
        parts = [_rereferenced(p, refs[p.name]) for p in parts]
    model = _fit_parts(parts, n_boot=int(n_boot), noise=noise, rng=rng, reference_strain=refs, **fit)
    if stiff_u > 0 and model.coef_boot.shape[0] >= 2:
        gen = np.random.default_rng(_validate.rng(rng).integers(2**63))
        opts = dict(smoothness=smoothness, monotonic=monotonic, n_off=n_off, reference=reference)
        base = _naive_coef(model.degree, raw=raw_parts, **opts)
        deltas = []
        for _ in range(int(n_perturb)):
            qp = _perturbed_stiffness(q, stiff_u, gen)
            raw = _prepare(strains, Xs, resolved, stiffness=qp, degree_max=model.degree, **prep)
            deltas.append(_naive_coef(model.degree, raw=raw, **opts) - base)
        model = model.add_spread(np.array(deltas),
                                 term=f"stiffness ±{stiff_u:.0%} per constant ({int(n_perturb)} refits)")
    return model


def _perturbed_stiffness(q: np.ndarray, u: float, gen: np.random.Generator) -> np.ndarray:
    """Q with Q_aa, Q_cc, Q_ac (symmetric) and Q_66 scaled by independent factors uniform in 1 ± u."""
    f = 1.0 + u * gen.uniform(-1.0, 1.0, 4)
    scale = np.array([[f[0], f[2], 1.0], [f[2], f[1], 1.0], [1.0, 1.0, f[3]]])
    return q * scale


def _naive_coef(degree: int, *, raw, smoothness, monotonic, n_off, reference) -> np.ndarray:
    """Coefficients of a plain fit (no SIMEX) at `degree`, with the reference pass when asked."""
    opts = dict(smoothness=smoothness, monotonic=monotonic)
    nrm = _normal_blocks(raw, n_off=n_off)
    coef, off = _fit_subset(nrm, np.ones(nrm.G.shape[0]), degree, **opts)
    if reference == "fepo4":
        rr = [_rereferenced(p, reference_strain(off[j])) for j, p in enumerate(raw)]
        nrm = _normal_blocks(rr, n_off=n_off)
        coef = _fit_subset(nrm, np.ones(nrm.G.shape[0]), degree, **opts)[0]
    return coef


def _noise_drawers(X_noise, sigma, Xs, resolved) -> list | None:
    """Per particle, a function rng -> noise at its fitted pixels (fwd order), or None without SIMEX."""
    if X_noise is None:
        if sigma is None:
            return None
        return [(lambda g, n=int(fit.sum()): sigma * g.standard_normal(n)) for _, fit in resolved]
    fns = [X_noise] if callable(X_noise) else (list(X_noise) if isinstance(X_noise, Sequence) else [X_noise])
    if len(fns) != len(Xs) or not all(callable(f) for f in fns):
        raise TypeError(f"X_noise must be a callable rng -> noise map, or a sequence of {len(Xs)} such callables "
                        "(one per particle)")
    out = []
    for i, (f, x, (body, fit)) in enumerate(zip(fns, Xs, resolved)):
        rows, cols = np.nonzero(body)
        keep = fit[rows, cols]
        r, c = rows[keep], cols[keep]

        def draw(g, f=f, r=r, c=c, shape=x.shape, i=i):
            d = np.asarray(f(g), dtype=float)
            if d.shape != shape:
                raise ValueError(f"X_noise[{i}] returned shape {d.shape}, expected the X map's {shape}")
            v = d[r, c]
            if not np.all(np.isfinite(v)):
                raise ValueError(f"X_noise[{i}] returned non-finite noise at fitted pixels")
            return v

        out.append(draw)
    return out


def _rereferenced(p: _Particle, ref: np.ndarray) -> _Particle:
    """The particle with its measured strain re-expressed relative to FePO4 (free edges: y is the strain)."""
    scale, shift = strain_module.reference_transform(ref)
    return dataclasses.replace(p, y=p.y * scale[:, None] + shift[:, None])


def reference_strain(offsets: ArrayLike) -> np.ndarray:
    """Strain of a particle's reference lattice relative to FePO4, from the offsets of a free-edge fit.

    A Bragg-disk measurement reports ``e_rel``, the strain relative to the
    reference region's lattice; the law is relative to FePO4 (``eps0(0) = 0``).
    With ``1 + e = (1 + e_rel)(1 + e_ref)`` per axis, a fit of ``e_rel``
    against the FePO4-based law returns the offset ``o = -e_ref / (1 + e_ref)``,
    so ``e_ref = -o / (1 + o)`` (the shear: ``e_ref = -o``).

    Parameters
    ----------
    offsets : array_like, shape (3,)
        Fitted offsets ``(exx, eyy, exy)`` in the crystal frame
        (:attr:`EigenstrainModel.offsets`, or ``attrs["offsets"]`` of
        :meth:`EigenstrainModel.residual`).

    Returns
    -------
    numpy.ndarray, shape (3,)
        ``(e_aa, e_cc, e_ac)`` of the reference lattice; pass it to
        :func:`chemomech.strain.change_reference`.

    Examples
    --------
    >>> np.round(reference_strain([-0.025, 0.01, 0.002]), 5).tolist()
    [0.02564, -0.0099, -0.002]
    """
    o = _validate.array(offsets, name="offsets", shape=(3,), finite=True).astype(float)
    out = o.copy()
    out[:2] = -o[:2] / (1.0 + o[:2])
    out[2] = -o[2]
    return out


def _fit_parts(parts: list[_Particle], *, degree, degrees, n_off, n_boot, bootstrap, block_px, smoothness,
               monotonic, noise, simex_lambdas, simex_n_sim, stiffness, boundary, upsample, rng,
               reference_strain=None) -> EigenstrainModel:
    """Degree selection, SIMEX, final coefficients and bootstrap on prepared particles."""
    gen = _validate.rng(rng)
    nrm = _normal_blocks(parts, n_off=n_off)
    if bootstrap == "auto":
        bootstrap = "both" if len(parts) >= 3 else "blocks"
    folds = "particles" if len(parts) >= 3 else "blocks"
    fold_seed = int(gen.integers(2**31))
    opts = dict(smoothness=smoothness, monotonic=monotonic)

    def cv_errors(prts, nm):
        if degree is not None:
            return None
        return _cross_validate(prts, nm, degrees, folds=folds, rng=np.random.default_rng(fold_seed), **opts)

    def all_coefs(nm):
        return [_fit_subset(nm, np.ones(nm.G.shape[0]), int(d), **opts)[0] for d in degrees]

    err = cv_errors(parts, nrm)
    coefs = all_coefs(nrm)
    if noise is not None:
        err, coefs, sim = _simex_fit(parts, err, coefs, noise=noise, lambdas=simex_lambdas, n_sim=simex_n_sim,
                                     rng=gen, n_off=n_off, block_px=block_px, cv_errors=cv_errors,
                                     all_coefs=all_coefs)
    cv = None
    if degree is None:
        chosen = _select_degree(degrees, err)
        cv = xr.Dataset(
            {"mse": (("degree", "fold"), err,
                     {"units": "1", "long_name": "cross-validated mean squared strain error"})},
            coords={"degree": ("degree", degrees, {"units": "1", "long_name": "polynomial degree"}),
                    "fold": ("fold", np.arange(err.shape[1]), {"units": "1", "long_name": "fold"})},
            attrs={"folds": "leave-one-particle-out" if folds == "particles" else "spatial blocks",
                   "selected": chosen, "simex": int(noise is not None)},
        )
    else:
        chosen = int(degree)
    coef = coefs[int(np.flatnonzero(degrees == chosen)[0])]
    boots = _bootstrap(nrm, chosen, n_boot=int(n_boot), how=bootstrap, rng=gen, **opts)
    terms = (f"bootstrap ({bootstrap})",) if boots.size else ()
    if noise is not None and boots.size:
        # centre the replicates on the corrected estimate (the bootstrap measures spread, SIMEX the bias)
        naive = _fit_subset(nrm, np.ones(nrm.G.shape[0]), chosen, **opts)[0]
        boots = boots + (coef - naive)[None]
        terms += ("SIMEX shift",)
    # each particle's offsets: its mean residual under the final (SIMEX-corrected) law, as
    # EigenstrainModel.residual finds them for a new particle (without SIMEX: the least-squares offsets)
    offsets = {p.name: ((p.y - _predict_law(p, coef)).mean(axis=1) if n_off else np.zeros(3)) for p in parts}
    return EigenstrainModel(chosen, coef, boots, offsets, boundary, stiffness, upsample, cv, bootstrap,
                            tuple(p.name for p in parts), reference_strain, terms)


def _simex_fit(parts, err0, coefs0, *, noise, lambdas, n_sim, rng, n_off, block_px, cv_errors, all_coefs):
    """SIMEX over the whole fit: CV errors and coefficients as functions of the added X noise."""
    lam = np.concatenate([[0.0], np.asarray(lambdas, dtype=float)])
    errs = [err0]
    coefs = [np.concatenate([c.ravel() for c in coefs0])]
    dmax = parts[0].A.shape[3]
    # independent draws per lambda: common random numbers (one draw, scaled) smooth the coefficient curve but
    # made the extrapolated CV errors pick degree 2 for a cubic law on every seed tried
    for lv in lam[1:]:
        e_acc, c_acc = 0.0, 0.0
        for _ in range(n_sim):
            sim = []
            for j, p in enumerate(parts):
                xs = p.X + np.sqrt(lv) * noise[j](rng)
                if p.keep is None or p.keep.all():
                    A = p.fwd.basis_responses(xs, dmax)
                else:  # interpolated body pixels carry no measurement noise: only the measured ones get more
                    xb = p.body_X.copy()
                    xb[p.keep] = xs
                    A = p.fwd.basis_responses(xb, dmax)[:, p.keep]
                sim.append(dataclasses.replace(p, X=xs, A=A))
            nm = _normal_blocks(sim, n_off=n_off)
            e = cv_errors(sim, nm)
            e_acc = e_acc + (0.0 if e is None else e)
            c_acc = c_acc + np.concatenate([c.ravel() for c in all_coefs(nm)])
        errs.append(e_acc / n_sim)
        coefs.append(c_acc / n_sim)
    coef_curve = np.array(coefs)
    quad = np.polynomial.polynomial.polyfit(lam, coef_curve, 2)  # (3, n_coef)
    coef_ex = quad[0] - quad[1] + quad[2]
    out_coefs, i = [], 0
    for c in coefs0:
        out_coefs.append(coef_ex[i:i + c.size].reshape(c.shape))
        i += c.size
    err_ex = None
    if err0 is not None:
        ec = np.array(errs)  # (n_lambda, n_deg, n_fold)
        qe = np.polynomial.polynomial.polyfit(lam, ec.reshape(lam.size, -1), 2)
        err_ex = np.maximum((qe[0] - qe[1] + qe[2]).reshape(err0.shape), 0.0)
    return err_ex, out_coefs, coef_curve


def _bootstrap(nrm: _Normal, degree: int, *, n_boot: int, how: str, rng: np.random.Generator,
               smoothness: float, monotonic: bool) -> np.ndarray:
    out = np.empty((n_boot, 2, degree))
    by_particle = [np.flatnonzero(nrm.particle == j) for j in range(nrm.n_particles)]
    for b in range(n_boot):
        w = np.zeros(nrm.G.shape[0])
        if how == "blocks":
            chosen_p = np.arange(nrm.n_particles)
        else:
            chosen_p = rng.integers(0, nrm.n_particles, nrm.n_particles)
        counts = np.bincount(chosen_p, minlength=nrm.n_particles)
        for j, c in enumerate(counts):
            if c == 0:
                continue
            blk = by_particle[j]
            if how == "particles":
                w[blk] += c
            else:
                for _ in range(c):
                    np.add.at(w, rng.choice(blk, blk.size), 1.0)
        out[b] = _fit_subset(nrm, w, degree, smoothness=smoothness, monotonic=monotonic)[0]
    return out


# --- the naive baseline and its errors-in-variables correction ------------------------------


def _pooled_pixels(strain, X, mask) -> tuple[np.ndarray, np.ndarray]:
    """Pixels (exx, eyy) and X pooled over particles; X is not range-checked (noisy X may leave [0, 1])."""
    strains = _as_list(strain, xr.Dataset)
    Xs = _as_list(X, xr.DataArray)
    if len(Xs) != len(strains):
        raise ValueError(f"X must give one map per strain Dataset: got {len(Xs)} and {len(strains)}")
    masks = [None] * len(strains) if mask is None else ([mask] if len(strains) == 1 else list(mask))
    es, xs = [], []
    for i, (s, x, m) in enumerate(zip(strains, Xs, masks)):
        _check_grid(s, x, sname="strain", xname="X")
        xv = _validate.array(x, name="X", ndim=2, dtype_kind="fiu", any_finite=True).astype(float)
        ok = np.isfinite(xv) & np.isfinite(s["exx"].values) & np.isfinite(s["eyy"].values)
        mname = "mask" if len(strains) == 1 else f"mask[{i}]"
        if m is not None:
            mk = _validate.mask(m, name=mname, shape=xv.shape)
            n_in, n_ok = int(mk.sum()), int((ok & mk).sum())
            who = _particle_name(s, x, default="")
            who = f" ({who})" if who else ""
            if n_in and not n_ok:
                raise ValueError(f"{mname}{who}: all {n_in} pixels have a non-finite exx, eyy or X (NaN or inf); "
                                 "there is nothing to fit")
            if n_ok < n_in:
                import warnings

                warnings.warn(f"{mname}{who}: {n_in - n_ok} of {n_in} pixels have a non-finite exx, eyy or X "
                              f"(NaN or inf) and are left out ({n_ok} pixels remain)", DataWarning, stacklevel=3)
            ok &= mk
        _validate.mask(ok, name=mname, min_count=3)
        es.append(np.stack([s["exx"].values[ok], s["eyy"].values[ok]]).astype(float))
        xs.append(xv[ok])
    return np.concatenate(es, axis=1), np.concatenate(xs)


def _ols_slopes(e: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    xc = x - x.mean()
    sxx = float(xc @ xc)
    slope = (e - e.mean(axis=1, keepdims=True)) @ xc / sxx
    intercept = e.mean(axis=1) - slope * x.mean()
    res = e - intercept[:, None] - slope[:, None] * x
    se = np.sqrt(np.sum(res**2, axis=1) / (x.size - 2) / sxx)
    return slope, intercept, se


def _slope_dataset(slope, intercept, se, attrs) -> xr.Dataset:
    comp = {"component": ("component", list(_COMPONENTS), {"long_name": "crystal axis (aa: exx, cc: eyy)"})}
    return xr.Dataset(
        {"slope": ("component", slope, {"units": "1", "long_name": "d strain / dX"}),
         "intercept": ("component", intercept, {"units": "1", "long_name": "strain at X = 0"}),
         "slope_se": ("component", se, {"units": "1", "long_name": "standard error of the slope"})},
        coords=comp, attrs=attrs)


def naive_regression(strain, X, *, mask=None) -> xr.Dataset:
    """Pixel-by-pixel straight-line fit of exx and eyy against X (the naive baseline).

    Every pixel of every particle is treated as an independent sample of
    ``strain = intercept + slope * X``: no mechanics, and X taken as exact.

    Parameters
    ----------
    strain : xarray.Dataset or sequence of Dataset
        ``exx``, ``eyy`` (and ``exy``) on ``("y", "x")``, crystal frame.
    X : xarray.DataArray or sequence
        Li fraction on the same grid(s); noisy values outside [0, 1] are allowed.
    mask : array_like of bool or sequence, optional
        Pixels to use; default: where exx, eyy and X are finite. Non-finite
        pixels inside a mask are left out with a :class:`DataWarning` (how many, which particle).

    Returns
    -------
    xarray.Dataset
        ``slope``, ``intercept``, ``slope_se`` on ``component = ["aa", "cc"]``.

    Examples
    --------
    >>> x = xr.DataArray(np.linspace(0, 1, 12).reshape(3, 4), dims=("y", "x"))
    >>> s = xr.Dataset({"exx": 0.05 * x, "eyy": -0.02 * x, "exy": 0 * x})
    >>> np.round(naive_regression(s, x).slope.values, 3).tolist()
    [0.05, -0.02]
    """
    e, x = _pooled_pixels(strain, X, mask)
    return _slope_dataset(*_ols_slopes(e, x), {"method": "naive per-pixel OLS", "n_pixels": int(x.size)})


def simex(strain, X, *, sigma_X: float, mask=None, lambdas: Sequence[float] = (0.5, 1.0, 1.5, 2.0),
          n_sim: int = 50, extrapolant: str = "rational",
          rng: np.random.Generator | int | None = None) -> xr.Dataset:
    """Correct the naive slope for noise in X by simulation–extrapolation (SIMEX).

    Extra noise of variance ``lambda * sigma_X**2`` is added to X, the naive slope
    is re-fitted (``n_sim`` times per ``lambda``, averaged), and the curve
    ``slope(lambda)`` is extrapolated back to ``lambda = -1`` (no noise) [2]_.

    Parameters
    ----------
    strain, X, mask
        As in :func:`naive_regression`.
    sigma_X : float
        Standard deviation of the noise in X (known, e.g. ``X_sigma`` from
        :func:`chemomech.xanes.map_lithium`).
    lambdas : sequence of float
        Added-noise multipliers (> 0).
    n_sim : int
        Simulations per multiplier.
    extrapolant : {"rational", "quadratic"}
        ``a + b / (c + lambda)`` (exact for a straight line with Gaussian noise)
        or ``a + b lambda + c lambda**2``.
    rng : numpy.random.Generator or int, optional

    Returns
    -------
    xarray.Dataset
        ``slope`` (corrected), ``slope_naive``, ``intercept`` (corrected) on
        ``component``; ``slope_lambda`` on ``("lambda", "component")`` (the
        simulated curve, lambda = 0 first) and ``slope_fit`` on
        ``("lambda_fit", "component")`` (the extrapolant, from lambda = -1).

    Examples
    --------
    >>> g = np.random.default_rng(0)
    >>> xt = g.uniform(0, 1, (40, 50))
    >>> s = xr.Dataset({v: (("y", "x"), k * xt) for v, k in (("exx", 0.05), ("eyy", -0.02), ("exy", 0.0))})
    >>> xn = xr.DataArray(xt + g.normal(0, 0.2, xt.shape), dims=("y", "x"))
    >>> out = simex(s, xn, sigma_X=0.2, rng=1)
    >>> bool(abs(out.slope[0] / 0.05 - 1) < 0.05 and out.slope_naive[0] < 0.042)
    True
    """
    sig = _validate.positive(sigma_X, name="sigma_X")
    _validate.choice(extrapolant, ("rational", "quadratic"), name="extrapolant")
    lam = _check_lambdas(lambdas, name="lambdas", min_size=3)
    _check_int(n_sim, name="n_sim", minimum=1)
    gen = _validate.rng(rng)
    e, x = _pooled_pixels(strain, X, mask)
    naive = _ols_slopes(e, x)
    lam_all = np.concatenate([[0.0], lam])
    curve = np.empty((lam_all.size, 2))
    icpt = np.empty((lam_all.size, 2))
    curve[0], icpt[0] = naive[0], naive[1]
    for i, lam_i in enumerate(lam, start=1):
        sims = [_ols_slopes(e, x + np.sqrt(lam_i) * sig * gen.standard_normal(x.size))[:2] for _ in range(n_sim)]
        curve[i] = np.mean([s[0] for s in sims], axis=0)
        icpt[i] = np.mean([s[1] for s in sims], axis=0)
    lam_fit = np.linspace(-1.0, lam_all.max(), 31)
    fitted = np.stack([_extrapolate(lam_all, curve[:, c], extrapolant, lam_fit) for c in range(2)], axis=1)
    corrected = fitted[0]
    icpt_corr = np.array([_extrapolate(lam_all, icpt[:, c], extrapolant, np.array([-1.0]))[0] for c in range(2)])
    ds = _slope_dataset(corrected, icpt_corr, naive[2],
                        {"method": f"SIMEX ({extrapolant} extrapolant)", "sigma_X": sig, "n_sim": int(n_sim),
                         "n_pixels": int(x.size)})
    ds["slope_naive"] = ("component", naive[0], {"units": "1", "long_name": "naive slope (lambda = 0)"})
    ds["slope_lambda"] = (("lambda", "component"), curve, {"units": "1", "long_name": "mean simulated slope"})
    lam_attrs = {"units": "1", "long_name": "added noise variance / sigma_X**2"}
    ds["slope_fit"] = (("lambda_fit", "component"), fitted, {"units": "1", "long_name": "fitted extrapolant"})
    ds = ds.assign_coords({"lambda": ("lambda", lam_all, lam_attrs), "lambda_fit": ("lambda_fit", lam_fit, lam_attrs)})
    ds["slope_se"].attrs["long_name"] = "standard error of the naive slope"
    return ds


def _extrapolate(lam: np.ndarray, y: np.ndarray, extrapolant: str, at: np.ndarray) -> np.ndarray:
    """Fit the SIMEX curve y(lambda) and evaluate the extrapolant at `at` (lambda = -1 is the estimate)."""
    quad = np.polyfit(lam, y, 2)
    if extrapolant == "quadratic":
        return np.polyval(quad, at)
    # a + b / (c + lambda): start from the exact form for linear attenuation, slope(l) = s / (1 + r (1 + l))
    try:
        r0 = max((y[0] / y[-1] - 1.0) / lam[-1], 1e-3) if y[-1] != 0 else 0.1
        c0 = 1.0 / r0 + 1.0
        p0 = (0.0, y[0] * c0, c0)
        popt, _ = optimize.curve_fit(lambda lv, a, b, c: a + b / (c + lv), lam, y, p0=p0, maxfev=20000)
        if popt[2] <= 1.0:  # pole at or beyond -1: not a valid extrapolant
            raise RuntimeError
        return popt[0] + popt[1] / (popt[2] + at)
    except (RuntimeError, optimize.OptimizeWarning):
        return np.polyval(quad, at)


# --- measurement simulator for the digital twin (not analysis code) -------------------------


#: Li fraction at which :func:`learn_stacks` reports the slope, and the range of its mean slope.
LEARN_SLOPE_X = 0.5
LEARN_MEAN_RANGE = (0.2, 0.8)


def learn_stacks(stacks, *, max_degree: int = 3, n_boot: int = 200, seed: int = 0,
                 stiffness_uncertainty: float = 0.1, registration_sd_px: float = 0.0, n_perturb: int = 6):
    """Learn the law from correlated stacks as ``python -m chemomech learn`` does.

    Each stack is turned onto a grid aligned with the crystal
    (:func:`chemomech.correlate.align_to_crystal`), the strain is re-referenced
    to FePO4 and the law fitted with a cross-validated degree, SIMEX when the
    stacks carry ``X_sigma`` (white noise: a stack read from a file does not
    say how its X was resampled), and intervals from the bootstrap widened by
    the stiffness term (``fit_eigenstrain(..., reference="fepo4",
    stiffness_uncertainty=...)``). The stacks do not record how well their two
    maps were registered; give that as `registration_sd_px` and the intervals
    also carry a registration term: the law is refitted `n_perturb` times
    with each stack's X map moved against its strain maps by a random affine
    of that RMS displacement (:func:`chemomech.geometry.random_affine`).

    Parameters
    ----------
    stacks : list of xarray.Dataset
        Correlated stacks (:func:`chemomech.io.read_stacks`), strain components in the
        crystal frame, ``attrs["crystal_angle_rad"]`` giving the grid's angle.
    max_degree, n_boot, seed
        Highest degree tried, bootstrap replicates, seed of folds and bootstrap.
    stiffness_uncertainty : float
        Relative uncertainty of each stiffness constant for the intervals (0: none).
    registration_sd_px : float
        Expected registration error of the stacks, RMS displacement in pixels of
        their grids (e.g. the target registration error measured on fiducials);
        0 (default): no registration term.
    n_perturb : int
        Refits for the registration term (>= 2).

    Returns
    -------
    model : EigenstrainModel
    aligned : list of xarray.Dataset
        The stacks on their crystal-aligned grids.
    summary : dict
        ``slopes`` (d eps0/dX at X = 0.5), ``slope_interval`` (95 %), ``mean_slope``
        (mean over X in [0.2, 0.8]), ``degree``, ``pixels``, ``sigma_X``, ``particles``,
        ``reference_strain``, ``crystal_angle_rad``, ``interval_terms`` (what the interval includes).
    """
    from . import correlate

    if not np.isfinite(registration_sd_px) or registration_sd_px < 0:
        raise ValueError(f"registration_sd_px must be a finite number >= 0, got {registration_sd_px!r}")
    _check_int(n_perturb, name="n_perturb", minimum=2)
    aligned = [correlate.align_to_crystal(s) for s in stacks]
    sig = np.concatenate([s["X_sigma"].values[s["mask"].values] for s in aligned])
    sig = float(np.nanmedian(sig)) if np.isfinite(sig).any() else None
    model = fit_eigenstrain([s[["exx", "eyy", "exy"]] for s in aligned], [s["X"] for s in aligned],
                            mask=[s["mask"].values for s in aligned], reference="fepo4", sigma_X=sig,
                            max_degree=max_degree, n_boot=n_boot, stiffness_uncertainty=stiffness_uncertainty,
                            rng=seed)
    if registration_sd_px:
        model = _stack_registration_term(model, aligned, registration_sd_px, n_perturb, seed)
    lo, hi = model.interval([LEARN_SLOPE_X])
    slope = model.derivative([LEARN_SLOPE_X])[0]
    mean = model.derivative(np.linspace(*LEARN_MEAN_RANGE, 61)).mean(axis=0)
    comps = ("aa", "cc")
    summary = {
        "slopes": {c: float(v) for c, v in zip(comps, slope)},
        "slope_interval": {c: [float(lo[0][i]), float(hi[0][i])] for i, c in enumerate(comps)},
        "mean_slope": {c: float(v) for c, v in zip(comps, mean)},
        "degree": int(model.degree), "pixels": int(sum(int(s["mask"].sum()) for s in aligned)),
        "X": LEARN_SLOPE_X, "mean_range": list(LEARN_MEAN_RANGE), "level": 0.95,
        "interval_terms": list(model.interval_terms),
        "sigma_X": sig, "particles": [s.attrs["particle"] for s in aligned],
        "reference_strain": {k: [float(x) for x in v] for k, v in model.reference_strain.items()},
        "crystal_angle_rad": {s.attrs["particle"]: float(s.attrs["image_angle_rad"]) for s in aligned},
    }
    return model, aligned, summary


def _stack_registration_term(model: EigenstrainModel, aligned: list, sd_px: float, n_perturb: int,
                             seed: int) -> EigenstrainModel:
    """`model` with the spread of refits whose X maps are moved by random affines of RMS `sd_px`.

    Each refit keeps the selected degree (no SIMEX, no bootstrap); the deltas to an
    unperturbed refit made the same way go to :meth:`EigenstrainModel.add_spread`.
    """
    gen = np.random.default_rng(np.random.SeedSequence([seed, 2]))
    strains = [s[["exx", "eyy", "exy"]] for s in aligned]
    masks = [s["mask"].values for s in aligned]

    def refit(Xs):
        return fit_eigenstrain(strains, Xs, mask=masks, reference="fepo4", degree=model.degree,
                               n_boot=0, rng=seed).coef

    def moved(X: xr.DataArray, mask: np.ndarray) -> xr.DataArray:
        A = geometry.random_affine(mask, sd_px, gen)   # X'(p) = X(A p): the X map misplaced by A
        values = ndimage.affine_transform(X.values.astype(float), A[:2, :2], offset=A[:2, 2], order=1,
                                          mode="constant", cval=np.nan)
        return X.copy(data=values)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)   # pixels moved out of the X map's field
        base = refit([s["X"] for s in aligned])
        deltas = [refit([moved(s["X"], m) for s, m in zip(aligned, masks)]) - base for _ in range(n_perturb)]
    return model.add_spread(np.array(deltas), term=f"registration ±{sd_px:g} px RMS ({n_perturb} refits)")
