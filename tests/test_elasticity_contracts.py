"""Contract tests of chemomech.elasticity, by category of user-visible behaviour (issue 19).

Whole error messages (``re.fullmatch``), validation bounds at and just beyond the limit, documented options and
defaults, and numerics against independent computations: a displacement field interpolated exactly by the
elements (a quadratic field on P2 triangles, a bilinear one on pixel quads) must give its known strain at every
point that ``sample`` and ``element_strain`` report.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import skfem
from numpy.testing import assert_allclose

from chemomech import elasticity as el


def raises_exactly(exc, pattern, func, *args, **kwargs):
    with pytest.raises(exc) as err:
        func(*args, **kwargs)
    assert type(err.value) is exc, type(err.value)
    assert re.fullmatch(pattern, str(err.value), flags=re.S), str(err.value)
    return err.value


@pytest.fixture(scope="module")
def pixel():
    mask = np.zeros((4, 6), bool)
    mask[1:4, 1:5] = True
    return el.mesh_from_mask(mask, pixel_size=2.0, origin=(1.0, -3.0))


@pytest.fixture(scope="module")
def star():
    return el.mesh_star_domain(lambda p: 10 + np.cos(2 * p), nrefs=2)


# --- messages and bounds -----------------------------------------------------------------------------------------


def test_stiffness_helpers_messages_and_bounds():
    raises_exactly(ValueError, r"c3d must have shape \(\.\.\., 6, 6\), got \(3, 3\)", el.plane_stress_stiffness,
                   np.eye(3))
    raises_exactly(ValueError, r"c3d must contain only finite values; found NaN or inf", el.plane_stress_stiffness,
                   np.full((6, 6), np.nan))
    raises_exactly(ValueError, r"X must lie in \[0, 1\]", el.stiffness_ac, [0.5, 1.0001])
    raises_exactly(ValueError, r"X must lie in \[0, 1\]", el.stiffness_ac, -1e-4)
    raises_exactly(ValueError, r"X must contain only finite values; found NaN or inf", el.stiffness_ac, [np.nan])
    assert el.stiffness_ac([0.0, 1.0]).shape == (2, 3, 3)        # both ends of [0, 1] are allowed
    assert el.stiffness_ac(0.5).shape == (3, 3)
    raises_exactly(ValueError, r"q must have shape \(3, 3\) or \(\.\.\., 3, 3\), got \(3,\)", el.rotate_stiffness,
                   np.ones(3), 0.1)
    raises_exactly(ValueError, r"q must have shape \(3, 3\) or \(\.\.\., 3, 3\), got \(2, 2\)", el.rotate_stiffness,
                   np.eye(2), 0.1)
    raises_exactly(ValueError, r"q must contain only finite values; found NaN or inf", el.rotate_stiffness,
                   np.full((3, 3), np.inf), 0.1)
    # a stack of stiffnesses is rotated matrix by matrix
    qs = el.stiffness_ac([0.1, 0.9])
    rs = el.rotate_stiffness(qs, 0.4)
    assert rs.shape == (2, 3, 3)
    assert_allclose(rs[1], el.rotate_stiffness(qs[1], 0.4))


def test_plane_stress_stiffness_of_a_stack_and_its_shear_entry():
    c = np.stack([el.C_FEPO4_GPA, el.C_LIFEPO4_GPA])
    q = el.plane_stress_stiffness(c)
    assert q.shape == (2, 3, 3)
    for i, ci in enumerate(c):
        want = np.array([[ci[0, 0] - ci[0, 1] ** 2 / ci[1, 1], ci[0, 2] - ci[0, 1] * ci[1, 2] / ci[1, 1], 0.0],
                         [ci[2, 0] - ci[2, 1] * ci[1, 0] / ci[1, 1], ci[2, 2] - ci[2, 1] * ci[1, 2] / ci[1, 1], 0.0],
                         [0.0, 0.0, ci[4, 4]]])
        assert_allclose(q[i], want, rtol=1e-12)
    # stiffness_ac interpolates the 3-D constants linearly in X before the reduction
    x = 0.3
    assert_allclose(el.stiffness_ac(x), el.plane_stress_stiffness(0.7 * el.C_FEPO4_GPA + 0.3 * el.C_LIFEPO4_GPA))


def test_rotation_voigt_transforms_are_inverse_pairs_and_turn_x_towards_y():
    # a uniaxial strain along the crystal a axis, with a at +phi from image x (x towards y), is in the image frame
    # e_xx = cos^2, e_yy = sin^2, e_xy (tensor) = sin cos; engineering shear twice that
    phi = 0.3
    ts, te = el._rotation_voigt(phi)
    e_img = te @ [1.0, 0.0, 0.0]
    c, s = np.cos(phi), np.sin(phi)
    assert_allclose(e_img, [c * c, s * s, 2 * s * c], rtol=1e-12)
    s_img = ts @ [1.0, 0.0, 0.0]       # uniaxial stress along a: sigma_xy = s c (no factor 2 on stress)
    assert_allclose(s_img, [c * c, s * s, s * c], rtol=1e-12)
    # rotating by phi and by -phi undoes itself; the work sigma . e is frame-independent
    ts2, te2 = el._rotation_voigt(-phi)
    assert_allclose(ts2 @ ts, np.eye(3), atol=1e-12)
    assert_allclose(te2 @ te, np.eye(3), atol=1e-12)
    sig, eps = np.array([1.0, -2.0, 0.5]), np.array([0.01, 0.003, -0.004])
    assert (ts @ sig) @ (te @ eps) == pytest.approx(sig @ eps, rel=1e-12)
    # a pure shear along the crystal axes, shear stress sxy = 1 -> image stresses
    assert_allclose(ts @ [0.0, 0.0, 1.0], [-2 * s * c, 2 * s * c, c * c - s * s], rtol=1e-12)
    assert_allclose(te @ [0.0, 0.0, 1.0], [-s * c, s * c, c * c - s * s], rtol=1e-12)


def test_star_domain_messages_and_bounds():
    raises_exactly(TypeError, r"radius must be a callable phi -> radius", el.mesh_star_domain, 5.0)
    for bad in (0, 10, 2.0):
        raises_exactly(ValueError, rf"nrefs must be an int in \[1, 9\], got {bad!r}", el.mesh_star_domain,
                       lambda p: 1 + 0 * p, nrefs=bad)
    raises_exactly(ValueError, r"radius\(phi\) must be finite and positive", el.mesh_star_domain, lambda p: 0 * p)
    raises_exactly(ValueError, r"radius\(phi\) must be finite and positive", el.mesh_star_domain,
                   lambda p: np.where(p > 0, np.nan, 1.0))
    m1 = el.mesh_star_domain(lambda p: 1e-9 + 0 * p, nrefs=1)  # any positive radius
    assert m1.p.shape[1] > 0
    # nrefs=1: 4 * 2 boundary edges; nrefs=3: 32; the boundary nodes sit on the curve around `center`
    for n in (1, 3):
        m = el.mesh_star_domain(lambda p: 2 + 0.5 * np.cos(3 * p), nrefs=n, center=(4.0, -1.0))
        assert isinstance(m, skfem.MeshTri)
        assert m.boundary_facets().size == 4 * 2**n
        b = m.p[:, m.boundary_nodes()]
        phi = np.arctan2(b[1] + 1.0, b[0] - 4.0)
        assert_allclose(np.hypot(b[0] - 4.0, b[1] + 1.0), 2 + 0.5 * np.cos(3 * phi), rtol=1e-12)


def test_mesh_from_mask_messages_and_geometry():
    raises_exactly(TypeError, r"mask must hold numbers \(dtype kind in 'b'\), got dtype int64", el.mesh_from_mask,
                   np.ones((2, 2), np.int64))
    raises_exactly(ValueError, r"mask must be 2-D, got 1-D with shape \(4,\)", el.mesh_from_mask, np.ones(4, bool))
    raises_exactly(ValueError, r"mask selects 0 pixels; at least 1 needed", el.mesh_from_mask, np.zeros((2, 2), bool))
    raises_exactly(ValueError, r"pixel_size must be > 0 and finite, got 0\.0", el.mesh_from_mask,
                   np.ones((2, 2), bool), pixel_size=0.0)
    raises_exactly(ValueError, r"mask must be one edge-connected region, got 3 pieces; keep the largest with "
                   r"scipy\.ndimage\.label first", el.mesh_from_mask, np.eye(3, dtype=bool))
    one = el.mesh_from_mask(np.array([[False, True], [False, False]]), pixel_size=3.0, origin=(2.0, 5.0))
    # a single pixel at (row 0, col 1): centre at y = 2, x = 5 + 3 = 8, corners half a pixel away
    assert one.shape == (2, 2) and one.pixel_size == 3.0 and one.origin == (2.0, 5.0)
    assert one.rows.tolist() == [0] and one.cols.tolist() == [1]
    p = one.mesh.p[:, one.mesh.t[:, 0]]
    assert_allclose(p.T, [[6.5, 0.5], [9.5, 0.5], [9.5, 3.5], [6.5, 3.5]])   # counter-clockwise in (x, y)
    l_shape = np.array([[1, 0, 0], [1, 1, 1]], bool)
    pm = el.mesh_from_mask(l_shape)
    assert pm.mesh.t.shape[1] == 4 and pm.mesh.p.shape[1] == 10
    assert pm.pixel_size == 1.0 and pm.origin == (0.0, 0.0)
    centres = pm.mesh.p[:, pm.mesh.t].mean(axis=1)
    assert_allclose(centres[0], pm.cols)
    assert_allclose(centres[1], pm.rows)


def test_problem_messages(pixel, star):
    raises_exactly(ValueError, r"boundary must be one of \('free', 'dirichlet'\), got 'clamped'", el.ElasticProblem,
                   pixel, boundary="clamped")
    raises_exactly(ValueError, r"order must be one of \(1, 2\), got 3", el.ElasticProblem, star, order=3)
    raises_exactly(TypeError, r"mesh must be a skfem\.MeshTri, skfem\.MeshQuad or PixelMesh, got str",
                   el.ElasticProblem, "mesh")
    raises_exactly(ValueError, r"stiffness must be symmetric", el.ElasticProblem, pixel,
                   stiffness=np.array([[2.0, 1.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 1.0]]))
    raises_exactly(ValueError, r"stiffness must be positive definite", el.ElasticProblem, pixel,
                   stiffness=np.diag([1.0, 1.0, 0.0]))
    raises_exactly(ValueError, r"stiffness must have shape \(3, 3\), got \(2, 2\)", el.ElasticProblem, pixel,
                   stiffness=np.eye(2))
    raises_exactly(ValueError, r"stiffness\(x, y\) must return shape \(3, 3, \.\.\.\), got \(2, 2\)",
                   el.ElasticProblem, pixel, stiffness=lambda x, y: np.eye(2))
    prob = el.ElasticProblem(pixel)
    n_el = pixel.mesh.t.shape[1]
    raises_exactly(ValueError, rf"eigenstrain must be a callable \(x, y\) -> 3 arrays or an array of shape \(3, "
                   rf"n_elements={n_el}\), got shape \(3, 5\)", prob.solve, np.zeros((3, 5)))
    raises_exactly(ValueError, r"eigenstrain must give 3 components, got 2", prob.solve, lambda x, y: (0 * x, 0 * x))
    raises_exactly(ValueError, r"eigenstrain has non-finite values on the mesh", prob.solve,
                   np.full((3, n_el), np.inf))
    raises_exactly(ValueError, r"boundary_displacement is only used with boundary='dirichlet'", prob.solve,
                   np.zeros((3, n_el)), boundary_displacement=lambda x, y: (0 * x, 0 * x))
    raises_exactly(ValueError, r"boundary='dirichlet' needs boundary_displacement=\(x, y\) -> \(ux, uy\)",
                   el.ElasticProblem(pixel, boundary="dirichlet").solve, np.zeros((3, n_el)))
    sol = prob.solve(np.zeros((3, n_el)))
    raises_exactly(TypeError, r"sample works on triangle meshes; use element_strain/to_image for pixel meshes",
                   sol.sample, [0.0], [0.0])
    tri = el.ElasticProblem(star).solve(lambda x, y: (0 * x, 0 * x, 0 * x))
    raises_exactly(TypeError, r"to_image needs a problem built on a PixelMesh; use sample\(y, x\) instead",
                   tri.to_image)
    raises_exactly(ValueError, r"y and x must have the same shape, got \(2,\) and \(3,\)", tri.sample, [0.0, 1.0],
                   [0.0, 1.0, 2.0])


def test_problem_defaults_and_options(pixel, star):
    prob = el.ElasticProblem(star)
    assert prob.boundary == "free" and prob.pixel_mesh is None and prob.skmesh is star
    assert_allclose(prob.stiffness, el.stiffness_ac())
    # P2 by default on triangles: 2 dofs per node and per edge
    assert prob.n_dofs == 2 * (star.p.shape[1] + star.facets.shape[1])
    assert isinstance(prob.n_dofs, int)
    p1 = el.ElasticProblem(star, order=1)
    assert p1.n_dofs == 2 * star.p.shape[1]
    assert el.ElasticProblem(star, order=2).n_dofs == prob.n_dofs
    quad = el.ElasticProblem(pixel)
    assert quad.pixel_mesh is pixel and quad.skmesh is pixel.mesh
    assert quad.n_dofs == 2 * pixel.mesh.p.shape[1]
    # quadrature order: default 4 for P2 and 2 otherwise; a higher order gives the same answer for these fields
    assert prob.basis.quadrature[0].shape[1] == skfem.Basis(star, skfem.ElementTriP2(), intorder=4).X.shape[1]
    assert p1.basis.quadrature[0].shape[1] == skfem.Basis(star, skfem.ElementTriP1(), intorder=2).X.shape[1]
    assert quad.basis.quadrature[0].shape[1] == skfem.Basis(pixel.mesh, skfem.ElementQuad1(), intorder=2).X.shape[1]
    hi = el.ElasticProblem(star, intorder=6)
    assert hi.basis.quadrature[0].shape[1] == skfem.Basis(star, skfem.ElementTriP2(), intorder=6).X.shape[1]
    qi = el.ElasticProblem(pixel, intorder=4)
    assert qi.basis.quadrature[0].shape[1] == skfem.Basis(pixel.mesh, skfem.ElementQuad1(), intorder=4).X.shape[1]


# --- numerics against exactly represented fields ----------------------------------------------------------------


def _quadratic(x, y):
    ux = 1e-3 * (2 * x + 0.5 * y + 0.03 * x * x - 0.02 * x * y + 0.01 * y * y)
    uy = 1e-3 * (-x + 1.5 * y + 0.015 * x * x + 0.04 * x * y - 0.025 * y * y)
    return ux, uy


def _quadratic_strain(x, y):
    dux_dx = 1e-3 * (2 + 0.06 * x - 0.02 * y)
    dux_dy = 1e-3 * (0.5 - 0.02 * x + 0.02 * y)
    duy_dx = 1e-3 * (-1 + 0.03 * x + 0.04 * y)
    duy_dy = 1e-3 * (1.5 + 0.04 * x - 0.05 * y)
    return np.stack([dux_dx, duy_dy, 0.5 * (dux_dy + duy_dx), 0.5 * (duy_dx - dux_dy)])


def _solution_of(problem, field):
    """An ElasticSolution whose displacement is `field` interpolated at the dofs (exact for P2 quadratics)."""
    locs = problem.basis.doflocs
    comp = np.zeros(problem.basis.N, int)
    comp[problem.basis.split_indices()[1]] = 1
    ux, uy = field(locs[0], locs[1])
    return el.ElasticSolution(problem, np.where(comp == 0, ux, uy), lambda x, y: (0 * x, 0 * x, 0 * x))


def test_sample_interpolates_an_exact_quadratic_field_everywhere(star):
    sol = _solution_of(el.ElasticProblem(star), _quadratic)
    g = np.random.default_rng(5)
    r = 8.5 * np.sqrt(g.uniform(0, 1, 300))
    phi = g.uniform(-np.pi, np.pi, 300)
    y, x = r * np.sin(phi), r * np.cos(phi)
    got = sol.sample(y.reshape(20, 15), x.reshape(20, 15))
    assert got.shape == (4, 20, 15)
    assert_allclose(got.reshape(4, -1), _quadratic_strain(x, y), rtol=1e-9, atol=1e-14)
    # nodes and the vertices of the mesh: still exact (points on shared edges)
    px, py = star.p
    assert_allclose(sol.sample(py, px), _quadratic_strain(px, py), rtol=1e-9, atol=1e-14)
    # element centroids: element_strain reports the same values there
    cx, cy = star.p[:, star.t].mean(axis=1)
    assert_allclose(sol.element_strain(), _quadratic_strain(cx, cy), rtol=1e-9, atol=1e-14)
    # a point slightly outside the polygon (less than an element away) is extrapolated linearly: exact here too;
    # a point far outside is NaN
    # (the boundary is at x = 11 here; elements are up to 4.8 long: 20 is twice that beyond the nearest centroid)
    out = sol.sample([0.0, 0.0, 0.0], [11.2, 20.0, 40.0])
    assert_allclose(out[:, 0], _quadratic_strain(np.array([11.2]), np.array([0.0]))[:, 0], rtol=1e-9)
    assert np.isnan(out[:, 1:]).all()
    assert sol.sample(0.0, 0.0).shape == (4,)


def test_element_stress_of_an_exact_field_with_an_eigenstrain(star):
    prob = el.ElasticProblem(star, stiffness=el.stiffness_ac(0.4))
    u = _solution_of(prob, _quadratic).u
    e0 = (0.002, -0.001, 0.0015)
    sol = el.ElasticSolution(prob, u, lambda x, y: (e0[0] + 0 * x, e0[1] + 0 * x, e0[2] + 0 * x))
    cx, cy = star.p[:, star.t].mean(axis=1)
    e = _quadratic_strain(cx, cy)
    elastic = np.stack([e[0] - e0[0], e[1] - e0[1], 2 * (e[2] - e0[2])])
    assert_allclose(sol.element_stress(), el.stiffness_ac(0.4) @ elastic, rtol=1e-9, atol=1e-12)


def test_bilinear_field_on_pixels_gives_pixel_centre_strain(pixel):
    # bilinear u is exact on quads: the pixel-centre gradient is the field's gradient at the pixel centre
    def field(x, y):
        return 1e-3 * (x + 0.2 * y + 0.05 * x * y), 1e-3 * (-0.3 * x + 2 * y - 0.04 * x * y)

    sol = _solution_of(el.ElasticProblem(pixel), field)
    img = sol.to_image()
    assert img.shape == (4, 4, 6)
    rows, cols = pixel.rows, pixel.cols
    y = pixel.origin[0] + rows * pixel.pixel_size
    x = pixel.origin[1] + cols * pixel.pixel_size
    dux_dx, dux_dy = 1e-3 * (1 + 0.05 * y), 1e-3 * (0.2 + 0.05 * x)
    duy_dx, duy_dy = 1e-3 * (-0.3 - 0.04 * y), 1e-3 * (2 - 0.04 * x)
    want = np.stack([dux_dx, duy_dy, 0.5 * (dux_dy + duy_dx), 0.5 * (duy_dx - dux_dy)])
    assert_allclose(img[:, rows, cols], want, rtol=1e-10)
    assert np.isnan(img[:, 0]).all() and np.isnan(img[:, :, 0]).all() and np.isnan(img[:, :, 5]).all()


def test_free_solution_of_a_uniform_eigenstrain_on_triangles_of_both_orders(star):
    for order in (1, 2):
        sol = el.ElasticProblem(star, order=order).solve(lambda x, y: (0.01 + 0 * x, -0.004 + 0 * x, 0.002 + 0 * x))
        e = sol.element_strain()
        assert_allclose(e, np.array([[0.01], [-0.004], [0.002], [0.0]]) * np.ones_like(e), atol=1e-12)
        # the rigid motion removed: zero mean displacement, so the displacement is exactly e0 . (r - centroid)
        prob = sol.problem
        locs = prob.basis.doflocs
        xc, yc = prob._centroid
        comp = prob._dof_component()
        want = np.where(comp == 0, 0.01 * (locs[0] - xc) + 0.002 * (locs[1] - yc),
                        0.002 * (locs[0] - xc) - 0.004 * (locs[1] - yc))
        assert_allclose(sol.u, want, atol=1e-12)


def test_dirichlet_problem_uses_the_given_boundary_and_per_element_eigenstrain(pixel):
    n = pixel.mesh.t.shape[1]
    e0 = np.zeros((3, n))
    e0[0] = 0.003
    sol = el.ElasticProblem(pixel, boundary="dirichlet").solve(
        e0, boundary_displacement=lambda x, y: (0.003 * x, 0.0 * y))
    # the boundary stretches the body by exactly its eigenstrain: strain = e0, no stress
    assert_allclose(sol.element_strain()[0], 0.003, atol=1e-12)
    assert_allclose(sol.element_stress(), 0.0, atol=1e-10)
    # scalar boundary values are broadcast
    sol0 = el.ElasticProblem(pixel, boundary="dirichlet").solve(e0, boundary_displacement=lambda x, y: (0.0, 0.0))
    assert np.abs(sol0.element_stress()).max() > 0.1


# --- analytic references and self-checks -------------------------------------------------------------------------


def test_eshelby_disk_strain_formula_and_bounds():
    for eps, nu, f in ((0.01, 0.3, 0.25), (-0.02, 0.1, 0.6), (0.01, -0.5, 0.0)):
        assert el.eshelby_disk_strain(eps, nu, f) == pytest.approx(eps * ((1 + nu) + (1 - nu) * f) / 2, rel=1e-14)
    assert isinstance(el.eshelby_disk_strain(0.01, 0.3, 0.5), float)
    for f in (0.0, 1.0):
        el.eshelby_disk_strain(0.01, 0.3, f)
    for f in (-1e-9, 1.0 + 1e-9):
        raises_exactly(ValueError, rf"area_fraction must be in \[0, 1\], got {f}", el.eshelby_disk_strain, 0.01,
                       0.3, f)
    for nu in (-1.0, 0.5):
        raises_exactly(ValueError, rf"poisson must be in \(-1, 0\.5\), got {nu}", el.eshelby_disk_strain, 0.01, nu,
                       0.5)
    el.eshelby_disk_strain(0.01, -0.999, 0.5)
    el.eshelby_disk_strain(0.01, 0.499, 0.5)


def test_isotropic_plane_stress_messages():
    raises_exactly(ValueError, r"young_gpa must be > 0 and finite, got 0", el.isotropic_plane_stress, 0, 0.3)
    raises_exactly(ValueError, r"poisson must be in \(-1, 0\.5\), got 0\.5", el.isotropic_plane_stress, 100.0, 0.5)
    raises_exactly(ValueError, r"poisson must be in \(-1, 0\.5\), got -1\.0", el.isotropic_plane_stress, 100.0, -1.0)
    assert_allclose(el.isotropic_plane_stress(100.0, 0.0), np.diag([100.0, 100.0, 50.0]))
    el.isotropic_plane_stress(100.0, 0.499)


def test_check_eshelby_reports_consistent_numbers_and_follows_its_options():
    r = el.check_eshelby(nrefs=3, n_points=50)
    assert set(r) == {"exact", "fem_mean", "rel_error_mean", "rel_error_rms", "h"}
    assert r["exact"] == pytest.approx(el.eshelby_disk_strain(0.01, 0.3, 0.25**2), rel=1e-14)
    assert r["rel_error_mean"] == pytest.approx(abs(r["fem_mean"] - r["exact"]) / r["exact"], rel=1e-12)
    assert r["rel_error_mean"] <= r["rel_error_rms"] < 0.05
    mesh = el.mesh_star_domain(lambda p: np.ones_like(p), nrefs=3)
    assert r["h"] == pytest.approx(el.mean_edge_length(mesh), rel=1e-14)
    assert all(isinstance(v, float) for v in r.values())
    # linear in the eigenstrain: the relative errors do not change, the mean strain scales
    r2 = el.check_eshelby(nrefs=3, n_points=50, eigenstrain=-0.03)
    assert r2["fem_mean"] == pytest.approx(-3 * r["fem_mean"], rel=1e-9)
    assert r2["rel_error_rms"] == pytest.approx(r["rel_error_rms"], rel=1e-9)
    assert r2["exact"] == pytest.approx(-0.03 * ((1.3) + 0.7 * 0.0625) / 2, rel=1e-12)
    # other Poisson ratio and inclusion size: the analytic value follows them and the FEM stays close
    r3 = el.check_eshelby(nrefs=3, n_points=50, poisson=0.1, radius_ratio=0.5)
    assert r3["exact"] == pytest.approx(el.eshelby_disk_strain(0.01, 0.1, 0.25), rel=1e-14)
    assert r3["rel_error_mean"] < 0.05
    # points inside half the inclusion radius: the strain there is uniform, so more points change little
    r4 = el.check_eshelby(nrefs=3, n_points=10)
    assert r4["fem_mean"] == pytest.approx(r["fem_mean"], rel=0.05) and r4["fem_mean"] != r["fem_mean"]


def test_check_eshelby_mean_is_over_both_normal_strains_at_the_documented_points():
    # recomputed from the public solver at the points the docstring names: fem_mean averages exx AND eyy
    # (the mesh is not symmetric under x <-> y, so the two means differ and neither alone reproduces it)
    r = el.check_eshelby(nrefs=3, n_points=50, radius_ratio=0.4)
    mesh = el.mesh_star_domain(lambda p: np.ones_like(p), nrefs=3)

    def e0(x, y):
        inside = (x**2 + y**2 < 0.4**2) * 0.01
        return inside, inside, 0.0 * x

    sol = el.ElasticProblem(mesh, stiffness=el.isotropic_plane_stress(100.0, 0.3)).solve(e0)
    rng = np.random.default_rng(20221)
    rad = 0.5 * 0.4 * np.sqrt(rng.uniform(0, 1, 50))
    phi = rng.uniform(0, 2 * np.pi, 50)
    exx, eyy, _, _ = sol.sample(rad * np.sin(phi), rad * np.cos(phi))
    assert r["fem_mean"] == pytest.approx((exx.mean() + eyy.mean()) / 2, rel=1e-12)
    assert abs(exx.mean() - eyy.mean()) > 1e-3 * abs(r["fem_mean"])  # measured 1.6e-3


def test_check_uniform_eigenstrain_options():
    r = el.check_uniform_eigenstrain(nrefs=2)
    assert set(r) == {"strain_error", "stress_max", "stress_relative"}
    assert r["strain_error"] < 1e-12 and r["stress_relative"] < 1e-8
    assert all(isinstance(v, float) for v in r.values())
    q = el.isotropic_plane_stress(500.0, 0.2)
    r2 = el.check_uniform_eigenstrain(nrefs=2, stiffness=q, eigenstrain=(0.02, 0.01, -0.005))
    assert r2["stress_relative"] == pytest.approx(r2["stress_max"] / 500.0 / (1 - 0.04), rel=1e-12)
    assert r2["strain_error"] < 1e-12


def test_mean_edge_length_by_hand():
    mesh = skfem.MeshTri(np.array([[0.0, 3.0, 0.0], [0.0, 0.0, 4.0]]), np.array([[0], [1], [2]]))
    assert el.mean_edge_length(mesh) == pytest.approx((3 + 4 + 5) / 3)


def test_a_constant_callable_stiffness_is_the_array_stiffness(star):
    q = el.stiffness_ac(0.6)
    e0 = lambda x, y: (0.01 * np.tanh(y / 3), 0.004 * np.sin(x / 4), 0.001 + 0 * x)   # noqa: E731
    a = el.ElasticProblem(star, stiffness=q).solve(e0)
    b = el.ElasticProblem(star, stiffness=lambda x, y: q[:, :, None, None]).solve(e0)
    assert_allclose(b.element_strain(), a.element_strain(), rtol=1e-10, atol=1e-15)
    assert_allclose(b.element_stress(), a.element_stress(), rtol=1e-10, atol=1e-12)
    assert np.abs(a.element_stress()).max() > 0.01


def test_stiffness_symmetry_and_definiteness_bounds(pixel):
    q = el.stiffness_ac()
    tiny = q.copy()
    tiny[0, 1] += 1e-12 * q[0, 1]      # rounding-level asymmetry: accepted
    el.ElasticProblem(pixel, stiffness=tiny)
    off = q.copy()
    off[0, 1] *= 1 + 1e-6              # a real asymmetry: refused
    raises_exactly(ValueError, r"stiffness must be symmetric", el.ElasticProblem, pixel, stiffness=off)
    el.ElasticProblem(pixel, stiffness=np.diag([1.0, 1.0, 1e-9]))          # small but positive: accepted
    raises_exactly(ValueError, r"stiffness must be positive definite", el.ElasticProblem, pixel,
                   stiffness=np.diag([1.0, 1.0, -1e-9]))


def test_sample_on_a_mesh_with_fewer_triangles_than_candidates():
    # two triangles (the unit square): fewer than the 12 candidate triangles tried per point
    mesh = skfem.MeshTri(np.array([[0.0, 4.0, 4.0, 0.0], [0.0, 0.0, 4.0, 4.0]]), np.array([[0, 0], [1, 2], [2, 3]]))
    sol = _solution_of(el.ElasticProblem(mesh), _quadratic)
    g = np.random.default_rng(2)
    x, y = g.uniform(0, 4, 50), g.uniform(0, 4, 50)
    assert_allclose(sol.sample(y, x), _quadratic_strain(x, y), rtol=1e-9, atol=1e-14)
    # on the shared diagonal and at the corners
    t = np.linspace(0, 4, 5)
    assert_allclose(sol.sample(t, t), _quadratic_strain(t, t), rtol=1e-9, atol=1e-14)
    # outside by less than an element (the longest edge, 4): extrapolated; further: NaN
    out = sol.sample([2.0, 2.0], [5.0, 9.0])
    assert_allclose(out[:, 0], _quadratic_strain(np.array([5.0]), np.array([2.0]))[:, 0], rtol=1e-9)
    assert np.isnan(out[:, 1]).all()


def test_check_eshelby_defaults_are_the_documented_ones():
    # defaults: 5 refinements of the unit disk, inclusion radius 0.25, nu = 0.3, eigenstrain 0.01, 400 points
    r = el.check_eshelby()
    assert r["h"] == pytest.approx(el.mean_edge_length(el.mesh_star_domain(lambda p: np.ones_like(p), nrefs=5)),
                                   rel=1e-14)
    assert r["exact"] == pytest.approx(el.eshelby_disk_strain(0.01, 0.3, 0.0625), rel=1e-14)
    same = el.check_eshelby(nrefs=5, radius_ratio=0.25, poisson=0.3, eigenstrain=0.01, n_points=400)
    assert same == r
    assert el.check_eshelby(n_points=399)["fem_mean"] != r["fem_mean"]
