"""Property tests (hypothesis) of the digital twin and the stiffness algebra."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose

from chemomech import elasticity, twin

PARTICLE = twin.make_particle("props", batch="biphasic", seed=11, mesh_nrefs=3)
coords = st.lists(st.tuples(st.floats(-400, 400), st.floats(-400, 400)), min_size=1, max_size=30)


@settings(max_examples=25, deadline=None)
@given(coords)
def test_fields_are_physical_everywhere(pts):
    y, x = np.array(pts).T
    y0, x0 = y.copy(), x.copy()
    X = PARTICLE.lithium(y, x)
    t = PARTICLE.thickness(y, x)
    assert np.all((X >= 0) & (X <= 1))
    assert np.all(t >= 0)
    inside = PARTICLE.contains(y, x)
    assert np.all(t[~inside] == 0)
    assert np.array_equal(y, y0) and np.array_equal(x, x0)  # inputs unmutated


@settings(max_examples=25, deadline=None)
@given(coords)
def test_sample_nan_outside_finite_inside(pts):
    y, x = np.array(pts).T
    f = PARTICLE.sample(y, x)
    m = f["mask"]
    for k in ("exx", "eyy", "exy", "theta", "X"):
        assert np.all(np.isnan(f[k][~m])) and np.all(np.isfinite(f[k][m]))


@settings(max_examples=25, deadline=None)
@given(st.floats(-np.pi, np.pi), st.floats(0, 1))
def test_rotated_stiffness_stays_symmetric_positive(angle, x):
    q = elasticity.rotate_stiffness(elasticity.stiffness_ac(np.array(x)), angle)
    assert_allclose(q, q.T, atol=1e-9)
    assert np.all(np.linalg.eigvalsh(q) > 0)
    assert_allclose(elasticity.rotate_stiffness(q, -angle), elasticity.stiffness_ac(np.array(x)), atol=1e-9)
