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

__all__ = ["apply_affine", "largest_component", "rotate_strain", "rotation_yx"]


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
