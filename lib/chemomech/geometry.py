"""Geometry that every stage shares: affine maps, rotations, strain-tensor rotation, masks.

Conventions (``shared/api.md``): points are ``(row, col)`` = ``(y, x)`` pairs,
``y`` pointing down; a positive angle turns ``x`` towards ``y`` (clockwise as
displayed). Strain is the tensor ``[[exx, exy], [exy, eyy]]`` (tensor shear)
and ``theta`` the rigid rotation with the same sense as the angles.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage

from . import _validate

__all__ = ["apply_affine", "largest_component", "random_affine", "rotate_strain", "rotation_yx"]


def apply_affine(matrix: ArrayLike, points: ArrayLike) -> np.ndarray:
    """Map ``(N, 2)`` points through a ``(3, 3)`` homogeneous affine matrix.

    Parameters
    ----------
    matrix : array_like, shape (3, 3)
        Affine map acting on column vectors ``(y, x, 1)``.
    points : array_like, shape (N, 2)
        ``(y, x)`` positions.

    Returns
    -------
    numpy.ndarray, shape (N, 2)
        ``matrix[:2, :2] @ p + matrix[:2, 2]`` for every point.

    Examples
    --------
    >>> m = np.array([[2.0, 0.0, 1.0], [0.0, 1.0, -3.0], [0.0, 0.0, 1.0]])
    >>> apply_affine(m, [[1.0, 1.0]]).tolist()
    [[3.0, -2.0]]
    """
    m = np.asarray(matrix, dtype=float)
    if m.shape != (3, 3):
        raise ValueError(f"matrix must have shape (3, 3), got {m.shape}")
    p = np.asarray(points, dtype=float)
    if p.ndim != 2 or p.shape[1] != 2:
        raise ValueError(f"points must have shape (N, 2), got {p.shape}")
    return p @ m[:2, :2].T + m[:2, 2]


def rotation_yx(angle_rad: float) -> np.ndarray:
    """``(2, 2)`` rotation acting on ``(y, x)`` column vectors; positive turns x towards y.

    Examples
    --------
    >>> np.round(rotation_yx(np.pi / 2) @ [0.0, 1.0], 12).tolist()   # x axis -> y axis
    [1.0, 0.0]
    """
    c, s = np.cos(float(angle_rad)), np.sin(float(angle_rad))
    return np.array([[c, s], [-s, c]])


def rotate_strain(exx: ArrayLike, eyy: ArrayLike, exy: ArrayLike, theta: ArrayLike | None,
                  q_yx: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Express a strain tensor (and rigid rotation) given in one frame in another.

    Parameters
    ----------
    exx, eyy, exy : array_like
        Tensor components in the *old* frame (any matching shapes).
    theta : array_like or None
        Rigid rotation in the old frame, radians (``None`` to skip).
    q_yx : array_like, shape (2, 2)
        Orthogonal matrix in ``(y, x)`` order whose columns are the *new*
        frame's axes ``(y', x')`` written in old-frame components. A rotation
        by ``phi`` (new x axis at ``phi`` from old x) is ``rotation_yx(phi)``;
        a determinant of −1 is a mirror.

    Returns
    -------
    exx, eyy, exy, theta : numpy.ndarray
        In the new frame: ``eps' = Q^T eps Q`` (``Q`` in ``(x, y)`` order) and
        ``theta' = det(Q) theta`` (a mirror reverses the sense of rotation).

    Examples
    --------
    >>> q = rotation_yx(np.pi / 2)   # the new x axis is the old y axis
    >>> [round(float(v), 12) for v in rotate_strain(0.01, -0.002, 0.003, 0.001, q)]
    [-0.002, 0.01, -0.003, 0.001]
    >>> [round(float(v), 12) for v in rotate_strain(0.0, 0.0, 0.003, 0.001, np.diag([1.0, -1.0]))]
    [0.0, 0.0, -0.003, -0.001]
    """
    q_yx = _validate.array(q_yx, name="q_yx", shape=(2, 2), finite=True).astype(float)
    if not np.allclose(q_yx @ q_yx.T, np.eye(2), atol=1e-8):
        raise ValueError("q_yx must be orthogonal (a rotation, or a rotation with a mirror)")
    q = q_yx[::-1, ::-1]  # (y, x) -> (x, y) order
    exx, eyy, exy = (np.asarray(v, dtype=float) for v in (exx, eyy, exy))
    eps = np.array([[exx, exy], [exy, eyy]])
    e = np.einsum("ai,ab...,bj->ij...", q, eps, q)
    th = None if theta is None else np.linalg.det(q) * np.asarray(theta, dtype=float)
    return e[0, 0], e[1, 1], e[0, 1], th


def largest_component(mask: ArrayLike) -> np.ndarray:
    """The largest edge-connected (4-neighbour) piece of a boolean mask (a copy).

    Examples
    --------
    >>> largest_component([[1, 1, 0, 1], [1, 0, 0, 0]]).astype(int).tolist()
    [[1, 1, 0, 0], [1, 0, 0, 0]]
    """
    m = np.asarray(mask, dtype=bool)
    lab, n = ndimage.label(m)
    if n <= 1:
        return m.copy()
    sizes = ndimage.sum(m, lab, index=np.arange(1, n + 1))
    return lab == (1 + int(np.argmax(sizes)))


def random_affine(mask: ArrayLike, sd_px: float, rng: np.random.Generator) -> np.ndarray:
    """A random small affine map whose RMS displacement over `mask` is about `sd_px`.

    A model of registration error: translation ~ N(0, sd/2) per axis and
    linear-part entries ~ N(0, sd / (2 R)) about the mask's centroid, R the
    RMS radius of the mask. Translation and the linear part then contribute
    sd²/2 each to the expected mean squared displacement of the mask's pixels,
    sd² in all.

    Parameters
    ----------
    mask : array_like of bool, shape (ny, nx)
        Pixels whose displacement sets the scale (at least one True).
    sd_px : float
        RMS displacement, pixels (>= 0).
    rng : numpy.random.Generator
        Source of the random draws.

    Returns
    -------
    numpy.ndarray, shape (3, 3)
        Homogeneous affine acting on ``(y, x, 1)`` column vectors.

    Examples
    --------
    >>> m = np.zeros((64, 64), bool); m[16:48, 16:48] = True
    >>> gen = np.random.default_rng(0)
    >>> pts = np.argwhere(m).astype(float)
    >>> d = [np.sqrt(np.mean(np.sum((apply_affine(random_affine(m, 0.5, gen), pts) - pts) ** 2, 1)))
    ...      for _ in range(400)]
    >>> round(float(np.sqrt(np.mean(np.square(d)))), 1)
    0.5
    """
    m = _validate.array(mask, name="mask", ndim=2).astype(bool)
    if not m.any():
        raise ValueError("mask must contain at least one True pixel")
    if not np.isfinite(sd_px) or sd_px < 0:
        raise ValueError(f"sd_px must be a finite number >= 0, got {sd_px!r}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    rows, cols = np.nonzero(m)
    c = np.array([rows.mean(), cols.mean()])
    radius = float(np.sqrt(np.mean((rows - c[0]) ** 2 + (cols - c[1]) ** 2)))
    t = rng.normal(0.0, sd_px / 2.0, 2)
    lin = rng.normal(0.0, sd_px / (2.0 * max(radius, 1.0)), (2, 2))
    out = np.eye(3)
    out[:2, :2] += lin
    out[:2, 2] = t - lin @ c
    return out
