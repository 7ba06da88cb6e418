r"""Plane-stress anisotropic elasticity with eigenstrain, on scikit-fem.

The strain measured in a thin Li_xFePO4 platelet is the elastic response of the
particle to a composition-dependent stress-free (eigen)strain. This module holds
the material constants, the reduction of the 3-D stiffness to plane stress in
the (a, c) plane, and a finite-element solver for

.. math::

    \nabla\cdot\sigma = 0, \qquad \sigma = C : (\varepsilon(u) - \varepsilon^0),

with traction-free edges (rigid-body modes removed) or a prescribed boundary
displacement. Coordinates are ``(x, y)`` with ``x`` along image columns and
``y`` along image rows (downwards); strains follow the conventions of
``shared/api.md`` (tensor shear ``exy``; Voigt vectors carry engineering shear
``2 exy``).

References
----------
.. [1] T. Maxisch and G. Ceder, "Elastic properties of olivine Li_xFePO4 from
   first principles", Phys. Rev. B 73, 174112 (2006),
   https://doi.org/10.1103/PhysRevB.73.174112
.. [2] T. Gustafsson and G. D. McBain, "scikit-fem: A Python package for finite
   element assembly", JOSS 5, 2369 (2020), https://doi.org/10.21105/joss.02369
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import scipy.sparse.linalg as spla
import skfem
from numpy.typing import ArrayLike
from scipy import ndimage

from . import _validate
from .materials import C_FEPO4_GPA, C_LIFEPO4_GPA

__all__ = [
    "ElasticProblem",
    "ElasticSolution",
    "PixelMesh",
    "mesh_from_mask",
    "mesh_star_domain",
    "plane_stress_stiffness",
    "rotate_stiffness",
    "stiffness_ac",
    "eshelby_disk_strain",
    "isotropic_plane_stress",
    "check_uniform_eigenstrain",
    "check_eshelby",
    "mean_edge_length",
]

# --- material constants -------------------------------------------------------

def plane_stress_stiffness(c3d: ArrayLike) -> np.ndarray:
    r"""Reduce a 3-D orthorhombic stiffness to plane stress in the (a, c) plane.

    Parameters
    ----------
    c3d : array_like, shape (..., 6, 6)
        Stiffness in Voigt notation, order (aa, bb, cc, bc, ac, ab), GPa; the
        platelet normal is b.

    Returns
    -------
    numpy.ndarray, shape (..., 3, 3)
        Plane-stress stiffness ``Q`` in Voigt order (aa, cc, ac) acting on
        engineering shear, GPa.

    Notes
    -----
    With :math:`\sigma_{bb} = 0` the out-of-plane strain is
    :math:`\varepsilon_{bb} = -(C_{12}\varepsilon_{aa} + C_{23}\varepsilon_{cc})/C_{22}`,
    which gives :math:`Q_{ij} = C_{ij} - C_{i2}C_{2j}/C_{22}` for
    :math:`i, j \in \{1, 3\}`; the in-plane shear modulus is :math:`C_{55}`
    (the ac shear, unaffected by :math:`\sigma_{bb}` in an orthorhombic crystal).

    Examples
    --------
    >>> q = plane_stress_stiffness(0.5 * (C_FEPO4_GPA + C_LIFEPO4_GPA))
    >>> np.round(q, 1).tolist()
    [[142.5, 43.7, 0.0], [43.7, 147.9, 0.0], [0.0, 0.0, 49.0]]
    """
    c = _validate.array(c3d, name="c3d", finite=True)
    if c.shape[-2:] != (6, 6):
        raise ValueError(f"c3d must have shape (..., 6, 6), got {c.shape}")
    idx = (0, 2)  # a, c
    q = np.zeros(c.shape[:-2] + (3, 3))
    c22 = c[..., 1, 1]
    for qi, i in enumerate(idx):
        for qj, j in enumerate(idx):
            q[..., qi, qj] = c[..., i, j] - c[..., i, 1] * c[..., 1, j] / c22
    q[..., 2, 2] = c[..., 4, 4]
    return q


def stiffness_ac(X: ArrayLike | None = None) -> np.ndarray:
    """Plane-stress (a, c) stiffness of Li_xFePO4, GPa, Voigt order (aa, cc, ac).

    Parameters
    ----------
    X : array_like, optional
        Lithium fraction(s) in [0, 1]. ``None`` (default) gives the phase
        average, i.e. the reduction of the mean of the FePO4 and LiFePO4 3-D
        constants. Otherwise the 3-D constants are interpolated linearly in `X`
        before the plane-stress reduction.

    Returns
    -------
    numpy.ndarray, shape (3, 3) or X.shape + (3, 3)

    Examples
    --------
    >>> float(np.round(stiffness_ac()[0, 0], 1))
    142.5
    """
    if X is None:
        return plane_stress_stiffness(0.5 * (C_FEPO4_GPA + C_LIFEPO4_GPA))
    x = _validate.array(X, name="X", finite=True)
    if np.any((x < 0) | (x > 1)):
        raise ValueError("X must lie in [0, 1]")
    c3d = (1 - x)[..., None, None] * C_FEPO4_GPA + x[..., None, None] * C_LIFEPO4_GPA
    return plane_stress_stiffness(c3d)


def _rotation_voigt(angle_rad: float) -> tuple[np.ndarray, np.ndarray]:
    """Voigt transforms for an in-plane rotation by `angle_rad` (x towards y)."""
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    # stress transform crystal -> image: sigma_img = Ts sigma_cry
    ts = np.array([[c * c, s * s, -2 * s * c], [s * s, c * c, 2 * s * c], [s * c, -s * c, c * c - s * s]])
    # engineering-strain transform crystal -> image
    te = np.array([[c * c, s * s, -s * c], [s * s, c * c, s * c], [2 * s * c, -2 * s * c, c * c - s * s]])
    return ts, te


def rotate_stiffness(q: ArrayLike, angle_rad: float) -> np.ndarray:
    """Express a crystal-frame plane stiffness in the image frame.

    Parameters
    ----------
    q : array_like, shape (3, 3) or (..., 3, 3)
        Stiffness in the crystal frame (x ∥ a, y ∥ c), Voigt order (xx, yy, xy),
        engineering shear; a stack of stiffnesses is rotated matrix by matrix.
    angle_rad : float
        Angle of the crystal a axis from image x, radians; positive turns x
        towards y (clockwise as displayed, y pointing down).

    Returns
    -------
    numpy.ndarray, same shape as `q`
        ``Q_img = T_s Q T_e^{-1}``.

    Examples
    --------
    >>> q = stiffness_ac()
    >>> r = rotate_stiffness(q, np.pi / 2)
    >>> bool(np.allclose(r[0, 0], q[1, 1]) and np.allclose(r[1, 1], q[0, 0]))
    True
    """
    q = _validate.array(q, name="q", finite=True)
    if q.ndim < 2 or q.shape[-2:] != (3, 3):
        raise ValueError(f"q must have shape (3, 3) or (..., 3, 3), got {q.shape}")
    ts, te = _rotation_voigt(float(angle_rad))
    return ts @ q @ np.linalg.inv(te)


# --- meshes ---------------------------------------------------------------------


def mesh_star_domain(radius: Callable[[np.ndarray], np.ndarray], *, nrefs: int = 5,
                     center: tuple[float, float] = (0.0, 0.0)) -> skfem.MeshTri:
    """Triangulate a star-shaped domain ``rho < radius(phi)`` around `center`.

    A smoothed triangulation of the unit disk (scikit-fem ``init_circle``) is
    stretched radially, node by node, so that its boundary lies on the curve.

    Parameters
    ----------
    radius : callable
        ``radius(phi)`` in the mesh's length unit, for polar angles ``phi``
        measured from +x towards +y; must be positive and smooth.
    nrefs : int, optional
        Refinements of the disk; the boundary has ``4 * 2**nrefs`` edges.
    center : (float, float), optional
        ``(x, y)`` of the pole.

    Returns
    -------
    skfem.MeshTri
        Coordinates ``p[0] = x``, ``p[1] = y``.
    """
    if not callable(radius):
        raise TypeError("radius must be a callable phi -> radius")
    if not isinstance(nrefs, (int, np.integer)) or not 1 <= nrefs <= 9:
        raise ValueError(f"nrefs must be an int in [1, 9], got {nrefs!r}")
    disk = skfem.MeshTri.init_circle(int(nrefs), smoothed=True)
    p = disk.p
    phi = np.arctan2(p[1], p[0])
    r = np.asarray(radius(phi), dtype=float)
    if np.any(~np.isfinite(r)) or np.any(r <= 0):
        raise ValueError("radius(phi) must be finite and positive")
    q = p * r[None, :] + np.asarray(center, dtype=float)[:, None]
    return skfem.MeshTri(q, disk.t)


@dataclass(frozen=True)
class PixelMesh:
    """A quadrilateral mesh with one element per pixel of a mask.

    Attributes
    ----------
    mesh : skfem.MeshQuad
        Nodes at pixel corners, coordinates in physical units.
    rows, cols : numpy.ndarray
        Pixel indices of each element.
    shape : tuple of int
        Shape of the image the mask came from.
    pixel_size : float
        Pixel size (mesh length unit per pixel).
    origin : (float, float)
        ``(y0, x0)``: physical coordinates of the centre of pixel (0, 0).
    """

    mesh: skfem.MeshQuad
    rows: np.ndarray
    cols: np.ndarray
    shape: tuple[int, int]
    pixel_size: float = 1.0
    origin: tuple[float, float] = (0.0, 0.0)

    def to_image(self, values: ArrayLike) -> np.ndarray:
        """Scatter per-element values ``(..., n_elements)`` onto the image, NaN outside."""
        v = np.asarray(values, dtype=float)
        out = np.full(v.shape[:-1] + tuple(self.shape), np.nan)
        out[..., self.rows, self.cols] = v
        return out


def mesh_from_mask(mask: ArrayLike, *, pixel_size: float = 1.0,
                   origin: tuple[float, float] = (0.0, 0.0)) -> PixelMesh:
    """Build a bilinear quadrilateral mesh with one element per masked pixel.

    Parameters
    ----------
    mask : array_like of bool, shape (ny, nx)
        Pixels that belong to the body; must form one edge-connected piece.
    pixel_size : float, optional
        Physical size of a pixel (length unit of the mesh).
    origin : (float, float), optional
        ``(y0, x0)``, physical coordinates of the centre of pixel ``(0, 0)``.

    Returns
    -------
    PixelMesh

    Examples
    --------
    >>> pm = mesh_from_mask(np.ones((2, 3), bool))
    >>> pm.mesh.t.shape[1], pm.mesh.p.shape[1]
    (6, 12)
    """
    m = _validate.array(mask, name="mask", ndim=2, dtype_kind="b")
    _validate.mask(m, name="mask", min_count=1)
    pixel_size = _validate.positive(pixel_size, name="pixel_size")
    _, n_pieces = ndimage.label(m)  # 4-connectivity
    if n_pieces != 1:
        raise ValueError(
            f"mask must be one edge-connected region, got {n_pieces} pieces; "
            "keep the largest with scipy.ndimage.label first"
        )
    ny, nx = m.shape
    rows, cols = np.nonzero(m)
    # node index for every pixel corner (ny+1, nx+1) that is used
    corner = np.zeros((ny + 1, nx + 1), bool)
    for dy in (0, 1):
        for dx in (0, 1):
            corner[rows + dy, cols + dx] = True
    node_id = -np.ones(corner.shape, dtype=np.int64)
    node_id[corner] = np.arange(int(corner.sum()))
    cy, cx = np.nonzero(corner)
    y0, x0 = origin
    p = np.vstack([x0 + (cx - 0.5) * pixel_size, y0 + (cy - 0.5) * pixel_size])
    # counter-clockwise in (x, y): (r,c), (r,c+1), (r+1,c+1), (r+1,c)
    t = np.vstack([
        node_id[rows, cols], node_id[rows, cols + 1],
        node_id[rows + 1, cols + 1], node_id[rows + 1, cols],
    ])
    return PixelMesh(skfem.MeshQuad(p, t), rows, cols, (ny, nx), pixel_size, (float(y0), float(x0)))


# --- the solver -------------------------------------------------------------------


def _voigt(w_grad) -> list:
    """Engineering strain (exx, eyy, 2exy) of a vector field's gradient."""
    g = w_grad
    return [g[0][0], g[1][1], g[0][1] + g[1][0]]


@skfem.BilinearForm
def _stiffness_form(u, v, w):
    eu, ev = _voigt(u.grad), _voigt(v.grad)
    return sum(ev[i] * w[f"c{i}{j}"] * eu[j] for i in range(3) for j in range(3))


@skfem.LinearForm
def _eigen_load(v, w):
    ev = _voigt(v.grad)
    e0 = (w["e0xx"], w["e0yy"], 2.0 * w["e0xy"])
    return sum(ev[i] * w[f"c{i}{j}"] * e0[j] for i in range(3) for j in range(3))


@skfem.LinearForm
def _rigid_constraints(v, w):
    # zero mean ux, zero mean uy, zero mean rotation (duy/dx - dux/dy)/2
    return w["k0"] * v[0] + w["k1"] * v[1] + w["k2"] * 0.5 * (v.grad[1][0] - v.grad[0][1])


Field = Callable[[np.ndarray, np.ndarray], object]


def _field_values(fun_or_array, basis: skfem.CellBasis, n: int, name: str) -> list[np.ndarray]:
    """Evaluate a field on the quadrature points: callable(x, y) or per-element constants."""
    x, y = np.asarray(basis.global_coordinates())  # (nelems, nqp)
    if callable(fun_or_array):
        vals = fun_or_array(x, y)
        vals = [np.broadcast_to(np.asarray(v, dtype=float), x.shape) for v in vals]
    else:
        arr = np.asarray(fun_or_array, dtype=float)
        if arr.shape != (n, basis.mesh.t.shape[1]):
            raise ValueError(
                f"{name} must be a callable (x, y) -> {n} arrays or an array of shape "
                f"({n}, n_elements={basis.mesh.t.shape[1]}), got shape {arr.shape}"
            )
        vals = [np.broadcast_to(a[:, None], x.shape) for a in arr]
    if len(vals) != n:
        raise ValueError(f"{name} must give {n} components, got {len(vals)}")
    for v in vals:
        if not np.all(np.isfinite(v)):
            raise ValueError(f"{name} has non-finite values on the mesh")
    return vals


@dataclass
class ElasticProblem:
    """Plane-stress elasticity on a mesh, factorised once for many eigenstrains.

    Parameters
    ----------
    mesh : skfem.MeshTri, skfem.MeshQuad or PixelMesh
        The body; coordinates ``(x, y)``.
    stiffness : array_like (3, 3) or callable, optional
        Image-frame stiffness, GPa, Voigt (xx, yy, xy) on engineering shear; a
        callable ``(x, y) -> (3, 3, ...)`` gives a spatially varying one.
        Default: :func:`stiffness_ac` (phase average, a ∥ x).
    boundary : {"free", "dirichlet"}
        ``"free"``: traction-free edges; the three rigid-body modes are removed
        by requiring zero mean displacement and zero mean rotation.
        ``"dirichlet"``: displacement prescribed on the whole boundary.
    order : {1, 2}, optional
        Polynomial order of triangle elements (quadrilaterals are bilinear).
        Default 2 on triangles.
    intorder : int, optional
        Quadrature order (default: 4 for P2, 2 otherwise).

    Examples
    --------
    A uniform eigenstrain in a free body is matched by the total strain:

    >>> pm = mesh_from_mask(np.ones((4, 5), bool))
    >>> sol = ElasticProblem(pm).solve((lambda x, y: (0.01, -0.02, 0.0)))
    >>> e = sol.element_strain()
    >>> bool(np.allclose(e[0], 0.01) and np.allclose(e[1], -0.02))
    True
    """

    mesh: object
    stiffness: object = None
    boundary: str = "free"
    order: int | None = None
    intorder: int | None = None
    _cache: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self):
        _validate.choice(self.boundary, ("free", "dirichlet"), name="boundary")
        self.pixel_mesh = self.mesh if isinstance(self.mesh, PixelMesh) else None
        m = self.mesh.mesh if self.pixel_mesh is not None else self.mesh
        if isinstance(m, skfem.MeshTri):
            order = 2 if self.order is None else self.order
            _validate.choice(order, (1, 2), name="order")
            scalar = skfem.ElementTriP2() if order == 2 else skfem.ElementTriP1()
            intorder = self.intorder or (4 if order == 2 else 2)
        elif isinstance(m, skfem.MeshQuad):
            scalar = skfem.ElementQuad1()
            intorder = self.intorder or 2
        else:
            raise TypeError(f"mesh must be a skfem.MeshTri, skfem.MeshQuad or PixelMesh, got {type(m).__name__}")
        self.skmesh = m
        self.basis = skfem.Basis(m, skfem.ElementVector(scalar), intorder=intorder)
        if self.stiffness is None:
            self.stiffness = stiffness_ac()
        cq = self._stiffness_at_quadrature()
        self._C = cq
        K = skfem.asm(_stiffness_form, self.basis, **cq).tocsc()
        self._K = K
        if self.boundary == "free":
            # Rigid-body modes: pin three dofs (exact for the self-equilibrated
            # eigenstrain load), then remove the rigid motion that makes the mean
            # displacement and the mean rotation zero (see `_remove_rigid`).
            x, y = np.asarray(self.basis.global_coordinates())
            ones = np.ones_like(x)
            zero = np.zeros_like(x)
            self._R = np.vstack([skfem.asm(_rigid_constraints, self.basis, k0=k0, k1=k1, k2=k2)
                                 for k0, k1, k2 in ((ones, zero, zero), (zero, ones, zero), (zero, zero, ones))])
            self._area = float(np.sum(self.basis.dx))
            self._centroid = (float(np.sum(x * self.basis.dx)) / self._area,
                              float(np.sum(y * self.basis.dx)) / self._area)
            nodes = self.skmesh.p
            d = np.hypot(nodes[0] - self._centroid[0], nodes[1] - self._centroid[1])
            n0 = int(np.argmin(d))
            n1 = int(np.argmax(np.abs(nodes[0] - nodes[0, n0]) - np.abs(nodes[1] - nodes[1, n0])))
            fixed = np.array([self.basis.nodal_dofs[0, n0], self.basis.nodal_dofs[1, n0],
                              self.basis.nodal_dofs[1, n1]])
            self._bdofs = fixed
        else:
            self._bdofs = self.basis.get_dofs().all()
        self._idofs = np.setdiff1d(np.arange(self.basis.N), self._bdofs)
        self._lu = spla.splu(K[self._idofs][:, self._idofs].tocsc(), permc_spec="MMD_AT_PLUS_A",
                             options={"SymmetricMode": True})

    def _remove_rigid(self, u: np.ndarray) -> np.ndarray:
        """Subtract the rigid motion so that mean ux, mean uy and mean rotation vanish."""
        mx, my, rot = (self._R @ u) / self._area
        xc, yc = self._centroid
        locs = self.basis.doflocs
        comp = self._dof_component()
        rigid = np.where(comp == 0, mx - rot * (locs[1] - yc), my + rot * (locs[0] - xc))
        return u - rigid

    def _stiffness_at_quadrature(self) -> dict:
        x, y = np.asarray(self.basis.global_coordinates())
        if callable(self.stiffness):
            c = np.asarray(self.stiffness(x, y), dtype=float)
            if c.shape[:2] != (3, 3):
                raise ValueError(f"stiffness(x, y) must return shape (3, 3, ...), got {c.shape}")
            c = np.broadcast_to(c, (3, 3) + x.shape)
        else:
            c0 = _validate.array(self.stiffness, name="stiffness", shape=(3, 3), finite=True)
            if not np.allclose(c0, c0.T, rtol=1e-10, atol=1e-12 * np.abs(c0).max()):
                raise ValueError("stiffness must be symmetric")
            if np.any(np.linalg.eigvalsh(c0) <= 0):
                raise ValueError("stiffness must be positive definite")
            c = c0[:, :, None, None] * np.ones((1, 1) + x.shape)
        return {f"c{i}{j}": np.ascontiguousarray(c[i, j]) for i in range(3) for j in range(3)}

    @property
    def n_dofs(self) -> int:
        """Number of displacement degrees of freedom."""
        return int(self.basis.N)

    def solve(self, eigenstrain, *, boundary_displacement: Field | None = None) -> "ElasticSolution":
        """Solve for the displacement caused by an eigenstrain field.

        Parameters
        ----------
        eigenstrain : callable or array_like
            ``eigenstrain(x, y) -> (e0xx, e0yy, e0xy)`` evaluated at quadrature
            points (tensor shear), or per-element constants of shape
            ``(3, n_elements)``.
        boundary_displacement : callable, optional
            ``(x, y) -> (ux, uy)`` on the boundary; required for
            ``boundary="dirichlet"``, rejected for ``"free"``.

        Returns
        -------
        ElasticSolution
        """
        e0 = _field_values(eigenstrain, self.basis, 3, "eigenstrain")
        f = skfem.asm(_eigen_load, self.basis, **self._C, e0xx=e0[0], e0yy=e0[1], e0xy=e0[2])
        g = np.zeros(self.basis.N)
        if self.boundary == "free":
            if boundary_displacement is not None:
                raise ValueError("boundary_displacement is only used with boundary='dirichlet'")
        else:
            if boundary_displacement is None:
                raise ValueError("boundary='dirichlet' needs boundary_displacement=(x, y) -> (ux, uy)")
            locs = self.basis.doflocs[:, self._bdofs]
            comp = self._dof_component()[self._bdofs]
            ux, uy = boundary_displacement(locs[0], locs[1])
            ux = np.broadcast_to(np.asarray(ux, float), locs[0].shape)
            uy = np.broadcast_to(np.asarray(uy, float), locs[0].shape)
            g[self._bdofs] = np.where(comp == 0, ux, uy)
        rhs = f - self._K @ g
        u = g.copy()
        u[self._idofs] = self._lu.solve(rhs[self._idofs])
        if self.boundary == "free":
            u = self._remove_rigid(u)
        return ElasticSolution(self, u, eigenstrain)

    def _dof_component(self) -> np.ndarray:
        """0 for x-displacement dofs, 1 for y."""
        if "comp" not in self._cache:
            comp = np.zeros(self.basis.N, dtype=int)
            comp[self.basis.split_indices()[1]] = 1
            self._cache["comp"] = comp
        return self._cache["comp"]


@dataclass
class ElasticSolution:
    """Displacement field of an :class:`ElasticProblem`, with strain sampling.

    Attributes
    ----------
    problem : ElasticProblem
    u : numpy.ndarray
        Displacement degrees of freedom.
    eigenstrain : callable or array
        The eigenstrain that was imposed (for stress evaluation).
    """

    problem: ElasticProblem
    u: np.ndarray
    eigenstrain: object

    @cached_property
    def _vertex_grad(self) -> np.ndarray:
        """Displacement gradient at the three vertices of every triangle, (2, 2, nelems, 3)."""
        return self._grad_at(np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]))[0]

    def _grad_at(self, ref_points: np.ndarray) -> tuple[np.ndarray, skfem.CellBasis]:
        basis = self.problem.basis
        qb = skfem.Basis(basis.mesh, basis.elem, quadrature=(ref_points, np.ones(ref_points.shape[1])))
        return qb.interpolate(self.u).grad, qb  # (2, 2, nelems, npts)

    def element_strain(self) -> np.ndarray:
        """Strain and rotation at element centroids.

        Returns
        -------
        numpy.ndarray, shape (4, n_elements)
            ``exx, eyy, exy, theta``; for a :class:`PixelMesh` these are the
            pixel-centre values.
        """
        m = self.problem.skmesh
        c = np.array([[1 / 3], [1 / 3]]) if isinstance(m, skfem.MeshTri) else np.array([[0.5], [0.5]])
        g, _ = self._grad_at(c)
        return _strain_from_grad(g[..., 0])

    def element_stress(self) -> np.ndarray:
        """Stress ``(sxx, syy, sxy)`` in GPa at element centroids, shape (3, n_elements)."""
        m = self.problem.skmesh
        c = np.array([[1 / 3], [1 / 3]]) if isinstance(m, skfem.MeshTri) else np.array([[0.5], [0.5]])
        g, qb = self._grad_at(c)
        e = _strain_from_grad(g[..., 0])
        x, y = np.asarray(qb.global_coordinates())
        e0 = _field_values(self.eigenstrain, qb, 3, "eigenstrain")
        cq = self.problem.stiffness
        if callable(cq):
            cmat = np.broadcast_to(np.asarray(cq(x, y), float), (3, 3) + x.shape)[..., 0]
        else:
            cmat = np.asarray(cq, float)[:, :, None] * np.ones((1, 1, x.shape[0]))
        el = np.stack([e[0] - e0[0][:, 0], e[1] - e0[1][:, 0], 2 * (e[2] - e0[2][:, 0])])
        return np.einsum("ijn,jn->in", cmat, el)

    def to_image(self) -> np.ndarray:
        """Pixel maps ``(4, ny, nx)`` of exx, eyy, exy, theta (PixelMesh only; NaN outside)."""
        pm = self.problem.pixel_mesh
        if pm is None:
            raise TypeError("to_image needs a problem built on a PixelMesh; use sample(y, x) instead")
        return pm.to_image(self.element_strain())

    def sample(self, y: ArrayLike, x: ArrayLike) -> np.ndarray:
        """Strain and rotation at arbitrary points of a triangle mesh.

        The displacement gradient of a P1/P2 triangle is linear in each
        element, so it is evaluated exactly at the vertices and interpolated
        barycentrically. Points up to half an element outside the mesh (the
        polygonal boundary lies inside a curved outline) are extrapolated from
        the nearest element; points further out give NaN.

        Parameters
        ----------
        y, x : array_like
            Coordinates, same shape, in the mesh's unit.

        Returns
        -------
        numpy.ndarray, shape (4,) + y.shape
            ``exx, eyy, exy, theta``.
        """
        m = self.problem.skmesh
        if not isinstance(m, skfem.MeshTri):
            raise TypeError("sample works on triangle meshes; use element_strain/to_image for pixel meshes")
        yy = np.asarray(y, dtype=float)
        xx = np.asarray(x, dtype=float)
        if yy.shape != xx.shape:
            raise ValueError(f"y and x must have the same shape, got {yy.shape} and {xx.shape}")
        cells, bary, ok = _locate(m, xx.ravel(), yy.ravel(), self.problem._cache)
        gv = np.einsum("ijnk,nk->ijn", self._vertex_grad[:, :, cells, :], bary)
        out = _strain_from_grad(gv)
        out[:, ~ok] = np.nan
        return out.reshape((4,) + yy.shape)


def _strain_from_grad(g: np.ndarray) -> np.ndarray:
    exx = g[0, 0]
    eyy = g[1, 1]
    exy = 0.5 * (g[0, 1] + g[1, 0])
    theta = 0.5 * (g[1, 0] - g[0, 1])
    return np.stack([exx, eyy, exy, theta])


def _barycentric(m: skfem.MeshTri, cells: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``(N, 3)`` barycentric coordinates of points ``(x, y)`` in triangles `cells`."""
    p0 = m.p[:, m.t[0, cells]]
    p1 = m.p[:, m.t[1, cells]]
    p2 = m.p[:, m.t[2, cells]]
    v0, v1 = p1 - p0, p2 - p0
    det = v0[0] * v1[1] - v0[1] * v1[0]
    dx, dy = x - p0[0], y - p0[1]
    l1 = (dx * v1[1] - dy * v1[0]) / det
    l2 = (v0[0] * dy - v0[1] * dx) / det
    return np.stack([1 - l1 - l2, l1, l2], axis=-1)


#: Candidate triangles (nearest centroids) tried per point when locating it.
_LOCATE_CANDIDATES = 12


def _locate(m: skfem.MeshTri, x: np.ndarray, y: np.ndarray, cache: dict):
    """Find the triangle of each point and its barycentric coordinates.

    The nearest triangle centroids (a k-d tree) are the candidates; the first
    whose barycentric coordinates are all >= 0 (within rounding) holds the
    point. A point in none of them (outside the mesh) takes the nearest
    triangle and counts as found only if it lies within one element size.
    """
    from scipy.spatial import cKDTree

    if "centroids" not in cache:
        cache["centroids"] = cKDTree(m.p[:, m.t].mean(axis=1).T)
        h = np.linalg.norm(m.p[:, m.t[0]] - m.p[:, m.t[1]], axis=0)
        cache["h"] = float(np.max(h))
    k = min(_LOCATE_CANDIDATES, m.t.shape[1])
    d, cand = cache["centroids"].query(np.c_[x, y], k=k)
    cand, d = cand.reshape(x.size, k), d.reshape(x.size, k)
    bary = _barycentric(m, cand, x[:, None], y[:, None])  # (N, k, 3)
    inside = np.all(bary >= -1e-10, axis=-1)
    ok = inside.any(axis=1)
    pick = np.where(ok, np.argmax(inside, axis=1), 0)
    rows = np.arange(x.size)
    cells = cand[rows, pick].astype(np.int64)
    ok |= d[:, 0] < cache["h"]
    return cells, bary[rows, pick], ok


# --- analytic reference -------------------------------------------------------------


def eshelby_disk_strain(eigenstrain: float, poisson: float, area_fraction: float) -> float:
    """Interior strain of a circular inclusion in a traction-free concentric disk.

    Plane stress, isotropic, same material inside and out; the inclusion carries
    a uniform dilatational eigenstrain ``eigenstrain`` (both in-plane components).

    Parameters
    ----------
    eigenstrain : float
        In-plane dilatational eigenstrain of the inclusion.
    poisson : float
        Poisson ratio ν (plane stress).
    area_fraction : float
        ``(a / R)**2``: inclusion radius over disk radius, squared.

    Returns
    -------
    float
        The uniform interior strain ``exx = eyy``.

    Notes
    -----
    In an infinite plane the interior strain of a circular inclusion is
    ``(1 + ν)/2 · ε*`` (Eshelby); the traction-free outer edge of radius R adds
    a uniform expansion ``(1 − ν)/2 · (a/R)² · ε*`` everywhere, so that
    ``ε_in = ε* [(1 + ν) + (1 − ν)(a/R)²] / 2``. For ``a = R`` this is ``ε*``
    (free expansion).

    Examples
    --------
    >>> eshelby_disk_strain(0.01, 0.3, 1.0)
    0.01
    """
    if not 0 <= area_fraction <= 1:
        raise ValueError(f"area_fraction must be in [0, 1], got {area_fraction}")
    if not -1 < poisson < 0.5:
        raise ValueError(f"poisson must be in (-1, 0.5), got {poisson}")
    return float(eigenstrain * ((1 + poisson) + (1 - poisson) * area_fraction) / 2)


def isotropic_plane_stress(young_gpa: float, poisson: float) -> np.ndarray:
    """Isotropic plane-stress stiffness (3×3, GPa, Voigt xx, yy, xy on engineering shear).

    Examples
    --------
    >>> float(isotropic_plane_stress(100.0, 0.25)[2, 2])
    40.0
    """
    e = _validate.positive(young_gpa, name="young_gpa")
    if not -1 < poisson < 0.5:
        raise ValueError(f"poisson must be in (-1, 0.5), got {poisson}")
    return e / (1 - poisson**2) * np.array([[1, poisson, 0], [poisson, 1, 0], [0, 0, (1 - poisson) / 2]])


def check_uniform_eigenstrain(*, nrefs: int = 4, eigenstrain: tuple[float, float, float] = (0.012, -0.007, 0.004),
                              stiffness: ArrayLike | None = None) -> dict[str, float]:
    """Validation: a uniform eigenstrain in a free body must be matched exactly.

    A traction-free body with a uniform eigenstrain expands freely: the total
    strain equals the eigenstrain and the stress vanishes. The body here is an
    irregular star-shaped platelet (not a symmetric disk).

    Returns
    -------
    dict
        ``strain_error`` (max |ε − ε⁰|), ``stress_max`` (max |σ|, GPa) and
        ``stress_relative`` (``stress_max`` over the largest stiffness entry).

    Examples
    --------
    >>> r = check_uniform_eigenstrain(nrefs=3)
    >>> r["strain_error"] < 1e-12 and r["stress_relative"] < 1e-8
    True
    """
    q = stiffness_ac() if stiffness is None else np.asarray(stiffness, float)
    mesh = mesh_star_domain(lambda phi: 100.0 * (1 + 0.15 * np.cos(3 * phi) + 0.1 * np.sin(2 * phi)), nrefs=nrefs)
    e0 = tuple(float(v) for v in eigenstrain)
    sol = ElasticProblem(mesh, stiffness=q).solve(lambda x, y: e0)
    e = sol.element_strain()
    err = float(np.max(np.abs(e[:3] - np.asarray(e0)[:, None])))
    smax = float(np.max(np.abs(sol.element_stress())))
    return {"strain_error": err, "stress_max": smax, "stress_relative": smax / float(np.abs(q).max())}


def check_eshelby(*, nrefs: int = 5, radius_ratio: float = 0.25, poisson: float = 0.3,
                  eigenstrain: float = 0.01, n_points: int = 400) -> dict[str, float]:
    """Validation: circular inclusion in a free disk against the analytic solution.

    A dilatational eigenstrain in a concentric circular inclusion (radius
    ``radius_ratio`` of the disk) of an isotropic plane-stress disk; the FEM
    strain at `n_points` random points inside half the inclusion radius (radius
    ``0.5 a sqrt(u)``, then angle, both uniform from
    ``numpy.random.default_rng(20221)``; ``(y, x) = (r sin phi, r cos phi)``)
    is compared with :func:`eshelby_disk_strain`. The mesh does not follow the
    inclusion boundary, so this also tests how the solver handles an
    eigenstrain that jumps inside elements.

    Returns
    -------
    dict
        ``exact``, ``fem_mean`` (mean of exx and eyy at the points),
        ``rel_error_mean`` (relative error of the mean), ``rel_error_rms``
        (RMS over the points of the relative error), ``h`` (mean element edge
        over disk radius).
    """
    q = isotropic_plane_stress(100.0, poisson)
    a = float(radius_ratio)
    mesh = mesh_star_domain(lambda phi: np.ones_like(phi), nrefs=nrefs)

    def e0(x, y):
        inside = (x**2 + y**2 < a**2) * float(eigenstrain)
        return inside, inside, 0.0 * x

    sol = ElasticProblem(mesh, stiffness=q).solve(e0)
    rng = np.random.default_rng(20221)
    r = 0.5 * a * np.sqrt(rng.uniform(0, 1, n_points))
    phi = rng.uniform(0, 2 * np.pi, n_points)
    s = sol.sample(r * np.sin(phi), r * np.cos(phi))
    exact = eshelby_disk_strain(eigenstrain, poisson, a**2)
    vals = np.concatenate([s[0], s[1]])
    return {
        "exact": exact,
        "fem_mean": float(vals.mean()),
        "rel_error_mean": float(abs(vals.mean() - exact) / abs(exact)),
        "rel_error_rms": float(np.sqrt(np.mean((vals - exact) ** 2)) / abs(exact)),
        "h": mean_edge_length(mesh),
    }


def mean_edge_length(mesh: skfem.Mesh) -> float:
    """Mean length of the mesh's edges (facets), in the mesh's unit."""
    f = mesh.facets
    return float(np.mean(np.linalg.norm(mesh.p[:, f[0]] - mesh.p[:, f[1]], axis=0)))
