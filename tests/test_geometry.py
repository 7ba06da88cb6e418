"""Tests of chemomech.geometry: the helpers every stage shares."""

from __future__ import annotations

import numpy as np
import pytest

from chemomech import geometry, strain


def test_rotate_strain_matches_a_hand_rotation():
    # a axis at 30 degrees from image x (towards y): e_aa = a.T eps a with a = (cos, sin) in (x, y)
    phi = np.deg2rad(30.0)
    exx, eyy, exy, theta = 0.012, -0.004, 0.003, 0.002
    eps = np.array([[exx, exy], [exy, eyy]])
    a = np.array([np.cos(phi), np.sin(phi)])
    c = np.array([-np.sin(phi), np.cos(phi)])
    want = (a @ eps @ a, c @ eps @ c, a @ eps @ c)
    got = geometry.rotate_strain(exx, eyy, exy, theta, geometry.rotation_yx(phi))
    assert np.allclose(got[:3], want, atol=1e-15)
    assert got[3] == pytest.approx(theta)   # a rotation leaves the rigid rotation as it is
    # the trace is invariant and the rotation is undone by the opposite angle
    assert got[0] + got[1] == pytest.approx(exx + eyy)
    back = geometry.rotate_strain(*got, geometry.rotation_yx(-phi))
    assert np.allclose(back, (exx, eyy, exy, theta), atol=1e-15)


def test_mirror_flips_shear_and_rotation():
    got = geometry.rotate_strain(0.01, 0.02, 0.003, 0.004, np.diag([1.0, -1.0]))
    assert np.allclose(got, (0.01, 0.02, -0.003, -0.004))


def test_to_crystal_frame_uses_the_same_rotation():
    import xarray as xr

    phi = 0.3
    vals = dict(exx=0.01, eyy=-0.002, exy=0.004)
    ds = xr.Dataset({k: (("y", "x"), np.full((2, 3), v)) for k, v in vals.items()})
    c = strain.to_crystal_frame(ds, phi)
    want = geometry.rotate_strain(vals["exx"], vals["eyy"], vals["exy"], None, geometry.rotation_yx(phi))
    assert np.allclose([float(c[k][0, 0]) for k in ("exx", "eyy", "exy")], want[:3])


def test_rotate_strain_rejects_non_orthogonal():
    with pytest.raises(ValueError, match="orthogonal"):
        geometry.rotate_strain(0.0, 0.0, 0.0, 0.0, [[1.0, 0.1], [0.0, 1.0]])


def test_apply_affine_and_bad_shapes():
    m = np.array([[0.0, -1.0, 5.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    assert np.allclose(geometry.apply_affine(m, [[1.0, 2.0], [0.0, 0.0]]), [[3.0, 1.0], [5.0, 0.0]])
    with pytest.raises(ValueError, match="matrix"):
        geometry.apply_affine(np.eye(2), [[0.0, 0.0]])
    with pytest.raises(ValueError, match="points"):
        geometry.apply_affine(np.eye(3), [0.0, 0.0])


def test_largest_component_keeps_the_biggest_piece_and_copies():
    m = np.zeros((6, 8), bool)
    m[0:2, 0:2] = True      # 4 px
    m[3:6, 3:7] = True      # 12 px
    m[0, 7] = True          # 1 px (diagonal neighbours do not join pieces)
    out = geometry.largest_component(m)
    assert out.sum() == 12 and out[4, 4] and not out[0, 0]
    single = np.zeros((3, 3), bool)
    single[1, 1] = True
    copy = geometry.largest_component(single)
    copy[0, 0] = True
    assert not single[0, 0]


@pytest.mark.parametrize("shape", [(slice(10, 50), slice(20, 30)), (slice(5, 60), slice(5, 60))])
def test_random_affine_has_the_rms_displacement_asked_for(shape):
    # an elongated and a square mask, off-centre: the RMS displacement over the mask is sd_px
    m = np.zeros((80, 70), bool)
    m[shape] = True
    gen = np.random.default_rng(4)
    pts = np.argwhere(m).astype(float)
    msd = [np.mean(np.sum((geometry.apply_affine(geometry.random_affine(m, 0.8, gen), pts) - pts) ** 2, 1))
           for _ in range(2000)]
    assert np.sqrt(np.mean(msd)) == pytest.approx(0.8, rel=0.05)   # 2000 draws: ~2 % sampling error
    assert np.allclose(geometry.random_affine(m, 0.0, gen), np.eye(3))


@pytest.mark.parametrize("kw, err", [(dict(mask=np.zeros((5, 5), bool)), ValueError), (dict(sd_px=-1.0), ValueError),
                                     (dict(sd_px=np.nan), ValueError), (dict(rng=3), TypeError)])
def test_random_affine_bad_input(kw, err):
    args = dict(mask=np.ones((5, 5), bool), sd_px=0.5, rng=np.random.default_rng(0)) | kw
    with pytest.raises(err):
        geometry.random_affine(**args)
