"""Elasticity tests added after mutation testing (benchmarks/mutation_triage.md): properties the earlier tests
left open, each stated physically."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose

from chemomech import elasticity as el


def _eigen(x, y):
    # an incompatible, non-uniform eigenstrain: every element is stressed, and differently
    return (0.01 * np.tanh(y / 4.0), 0.004 * np.sin(x / 5.0), 0.002 * np.cos((x + y) / 7.0))


def _stiffness(x, y):
    # composition varying along x and y, so that the stiffness is evaluated at the right (x, y)
    return np.moveaxis(el.stiffness_ac(np.clip(0.5 + x / 40.0 - y / 50.0, 0.0, 1.0)), (-2, -1), (0, 1))


def _centroids(mesh):
    return mesh.p[:, mesh.t].mean(axis=1)  # (2, n_elements): x, y


@pytest.mark.parametrize("kind", ["star", "pixel"])
def test_element_stress_is_hookes_law_at_the_element_centroid(kind):
    # sigma = Q(x) (eps(x) - eps0(x)) with engineering shear must hold at the very points where the stress is
    # reported (the centroids, where element_strain is reported too), with the stiffness and the eigenstrain taken
    # there: a non-uniform field, so evaluating any of the three elsewhere in the element shows.
    if kind == "star":
        mesh = el.mesh_star_domain(lambda p: 12 + 2 * np.cos(3 * p), nrefs=3)
        sk = mesh
    else:
        mask = np.zeros((9, 11), bool)
        mask[1:8, 1:10] = True
        pm = el.mesh_from_mask(mask, pixel_size=2.0, origin=(-8.0, -10.0))
        mesh, sk = pm, pm.mesh
    sol = el.ElasticProblem(mesh, stiffness=_stiffness).solve(_eigen)
    x, y = _centroids(sk)
    e = sol.element_strain()
    e0 = np.array(_eigen(x, y))
    q = np.moveaxis(_stiffness(x, y), (0, 1), (-2, -1))             # (n, 3, 3)
    elastic = np.stack([e[0] - e0[0], e[1] - e0[1], 2 * (e[2] - e0[2])], axis=-1)
    want = np.einsum("nij,nj->in", q, elastic)
    stress = sol.element_stress()
    assert np.abs(stress).max() > 0.05                               # GPa: really stressed
    assert_allclose(stress, want, rtol=1e-9, atol=1e-9)


def test_pixel_mesh_scatters_a_single_field_and_a_stack():
    # one value per element (a scalar field such as X) and a stack of fields both land on their pixels
    mask = np.zeros((4, 5), bool)
    mask[1:3, 1:4] = True
    mask[0, 1] = True
    pm = el.mesh_from_mask(mask)
    n = int(mask.sum())
    one = pm.to_image(np.arange(n))
    assert one.shape == mask.shape and np.all(np.isnan(one[~mask]))
    assert_allclose(np.sort(one[mask]), np.arange(n))
    stack = pm.to_image(np.stack([np.arange(n), -np.arange(n)]))
    assert stack.shape == (2,) + mask.shape
    assert_allclose(stack[1][mask], -stack[0][mask])


def test_uniform_eigenstrain_check_reports_its_documented_numbers():
    # the self-check returns strain error, largest stress (GPa) and that stress relative to the stiffness
    r = el.check_uniform_eigenstrain(nrefs=3)
    assert set(r) == {"strain_error", "stress_max", "stress_relative"}
    assert r["stress_relative"] == pytest.approx(r["stress_max"] / np.abs(el.stiffness_ac()).max(), rel=1e-12)


def test_isotropic_plane_stress_by_hand():
    # plane stress: Q11 = E/(1 - nu^2), Q12 = nu E/(1 - nu^2), shear modulus G = E / (2 (1 + nu))
    e, nu = 200.0, 0.3
    q = el.isotropic_plane_stress(e, nu)
    assert_allclose(q, [[e / (1 - nu**2), nu * e / (1 - nu**2), 0.0],
                        [nu * e / (1 - nu**2), e / (1 - nu**2), 0.0],
                        [0.0, 0.0, e / (2 * (1 + nu))]], rtol=1e-12)
    # the bounds of an isotropic solid, -1 < nu < 1/2, are open: at -1 the shear modulus is infinite (and
    # 1 - nu^2 = 0), at 1/2 the solid is incompressible
    for bad in (-1.0, 0.5):
        with pytest.raises(ValueError, match="poisson"):
            el.isotropic_plane_stress(e, bad)
    assert np.isfinite(el.isotropic_plane_stress(e, -0.99)).all()


def test_mean_edge_length_of_a_pixel_mesh_is_the_pixel_size():
    pm = el.mesh_from_mask(np.ones((3, 4), bool), pixel_size=2.5)
    assert el.mean_edge_length(pm.mesh) == pytest.approx(2.5, rel=1e-12)


def test_eshelby_check_reports_its_documented_numbers():
    r = el.check_eshelby(nrefs=3)
    assert {"exact", "fem_mean", "rel_error_mean", "rel_error_rms"} <= set(r)
    # a disk inclusion strains less than its free eigenstrain, more than nothing (Eshelby, plane stress)
    assert 0 < r["exact"] < 0.01


def test_a_stiffness_that_is_not_positive_definite_is_refused():
    # a symmetric stiffness with a negative eigenvalue has no stable elastic energy: refuse it by name
    mesh = el.mesh_star_domain(lambda p: 10 + 0 * p, nrefs=2)
    bad = np.diag([100.0, -50.0, 30.0])
    with pytest.raises(ValueError, match="stiffness"):
        el.ElasticProblem(mesh, stiffness=bad)


def test_mesh_from_mask_says_how_to_fix_a_split_mask():
    # two pieces touching only at a corner are two regions (4-connectivity); the message names the count and the fix
    m = np.zeros((4, 4), bool)
    m[:2, :2] = m[2:, 2:] = True
    with pytest.raises(ValueError, match="got 2 pieces; keep the largest with scipy.ndimage.label first"):
        el.mesh_from_mask(m)


def test_non_finite_eigenstrain_is_refused_by_name():
    # a NaN in the load would spread through the whole solution: refused, naming the field
    prob = el.ElasticProblem(el.mesh_from_mask(np.ones((4, 5), bool)))
    with pytest.raises(ValueError, match="eigenstrain has non-finite values on the mesh"):
        prob.solve(lambda x, y: (np.nan * x, 0 * x, 0 * x))


def test_to_image_on_a_triangle_mesh_says_what_to_use_instead():
    mesh = el.mesh_star_domain(lambda phi: np.ones_like(phi), nrefs=1)
    sol = el.ElasticProblem(mesh).solve(lambda x, y: (0.01 + 0 * x, 0 * x, 0 * x))
    with pytest.raises(TypeError, match=r"to_image needs a problem built on a PixelMesh; use sample\(y, x\)"):
        sol.to_image()


def test_free_solution_has_zero_mean_displacement_and_rotation():
    # the free-edge solution is defined up to a rigid motion, which the solver removes so that the mean
    # displacement and the mean rotation (curl u / 2) over the body vanish; checked by quadrature on the
    # solution's own basis for an off-centre, non-symmetric body and an eigenstrain gradient (which makes the
    # pinned solution rotate before the removal)
    mask = np.zeros((14, 22), bool)
    mask[2:12, 3:20] = True
    mask[2:6, 14:20] = False  # an L-shape: centroid away from the bounding box centre
    pm = el.mesh_from_mask(mask, pixel_size=5.0)
    sol = el.ElasticProblem(pm).solve(lambda x, y: (0.01 + 2e-4 * y, -0.005 + 1e-4 * x, 3e-4 * (x - y) / 50))
    basis = sol.problem.basis
    w = basis.interpolate(sol.u)
    dx = basis.dx
    area = float(np.sum(dx))
    mean_u = [float(np.sum(w.value[i] * dx)) / area for i in (0, 1)]
    rot = float(np.sum(0.5 * (w.grad[1][0] - w.grad[0][1]) * dx)) / area
    scale = float(np.max(np.abs(sol.u)))
    assert scale > 1e-3  # the body does deform (displacements in nm)
    assert abs(mean_u[0]) < 1e-9 * scale and abs(mean_u[1]) < 1e-9 * scale and abs(rot) < 1e-9
