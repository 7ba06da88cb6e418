"""Property tests of chemomech.registration (hypothesis, small shapes)."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose

from chemomech import twin
from chemomech.registration import Registration, register

_PARTICLE = twin.make_particle("props", batch="li_rich", seed=9)
_FIXED = _PARTICLE.render(pixel_size_nm=8.0, shape=(52, 64)).thickness.values


@settings(max_examples=25, deadline=None)
@given(a=st.floats(0.7, 1.3), b=st.floats(-0.3, 0.3), c=st.floats(-0.3, 0.3), d=st.floats(0.7, 1.3),
       ty=st.floats(-3, 3), tx=st.floats(-3, 3))
def test_warp_equals_sampling_at_mapped_points(a, b, c, d, ty, tx):
    # on a bilinear ramp, bilinear warping is exact: warp(img)[p] == img(map_indices(p)) wherever defined
    rr, cc = np.mgrid[0:30, 0:45].astype(float)
    img = 1.5 * rr - 0.7 * cc + 0.01 * rr * cc
    r = Registration.from_matrix([[a, b, ty], [c, d, tx], [0, 0, 1]], np.zeros((25, 35)), img)
    w = r.warp(img)
    pts = np.argwhere(np.isfinite(w)).astype(float)
    q = r.map_indices(pts)
    assert_allclose(w[np.isfinite(w)], 1.5 * q[:, 0] - 0.7 * q[:, 1] + 0.01 * q[:, 0] * q[:, 1], atol=1e-8)
    assert np.all((q >= -1e-9) & (q <= np.array(img.shape) - 1 + 1e-9))


@settings(max_examples=5, deadline=None)
@given(dy=st.integers(-4, 4), dx=st.integers(-4, 4))
def test_shifting_moving_shifts_map_points(dy, dx):
    moving = np.exp(-np.roll(_FIXED, (dy, dx), axis=(0, 1)) / 120.0)  # inverted contrast
    r = register(_FIXED, moving, transform="similarity", mirror=False)
    assert_allclose(r.map_indices([[26.0, 32.0]]), [[26.0 + dy, 32.0 + dx]], atol=0.3)
