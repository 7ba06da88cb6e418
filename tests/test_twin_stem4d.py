"""Tests of the 4D-STEM simulator (chemomech.twin.stem4d): crystallography, geometry, counts."""

from __future__ import annotations

import numpy as np
import pytest

from chemomech.twin import stem4d

SETUP = stem4d.DiffractionSetup()


def test_unit_cell_has_four_formula_units():
    counts = {el: len(p) for el, p in stem4d.unit_cell_atoms()}
    assert counts == {"Li": 4, "Fe": 4, "P": 4, "O": 16}


@pytest.mark.parametrize("h, l", [(1, 0), (3, 0), (5, 0), (0, 1), (0, 3)])
def test_pnma_extinctions_h00_and_00l_odd(h, l):  # noqa: E741
    # Pnma: h00 needs h = 2n (from hk0: h = 2n), 00l needs l = 2n (from 0kl: k + l = 2n)
    assert abs(stem4d.structure_factor(h, 0, l)) < 1e-9


@pytest.mark.parametrize("h, l", [(1, 1), (2, 0), (3, 1), (0, 2), (2, 1)])
def test_general_h0l_reflections_present(h, l):  # noqa: E741
    # h0l has no reflection condition in Pnma
    assert abs(stem4d.structure_factor(h, 0, l)) > 0.1


def test_0kl_condition_k_plus_l_even():
    assert abs(stem4d.structure_factor(0, 1, 0)) < 1e-9 and abs(stem4d.structure_factor(0, 1, 2)) < 1e-9
    assert abs(stem4d.structure_factor(0, 1, 1)) > 0.1


def test_structure_factor_centrosymmetric():
    f1, f2 = stem4d.structure_factor(3, 0, 1), stem4d.structure_factor(-3, 0, -1)
    assert abs(abs(f1) - abs(f2)) < 1e-9


def test_wavelength_300kV():
    assert stem4d.electron_wavelength_A(300.0) == pytest.approx(0.019687, abs=2e-6)


def test_disks_do_not_overlap():
    a, _, c = SETUP.lattice_A
    a_star_px = 1 / a / SETUP.pixel_inv_A
    assert 2 * SETUP.disk_radius_px + 2 < a_star_px  # gap of at least 2 px along a*


def _peak_position(img, guess, half=5):
    y0, x0 = int(round(guess[0])), int(round(guess[1]))
    win = img[y0 - half:y0 + half + 1, x0 - half:x0 + half + 1].astype(float)
    win = np.clip(win - np.median(img), 0, None)
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1]
    return np.array([y0 + (yy * win).sum() / win.sum(), x0 + (xx * win).sum() / win.sum()])


def test_disk_positions_follow_inverse_transpose_deformation():
    # exx = +2 %: a* shrinks by 1/1.02 along kx; a +3 % rotation moves disks by theta towards +ky
    sim = stem4d.simulate_fields(np.array([[0.0, 0.02]]), np.zeros((1, 2)), np.zeros((1, 2)),
                                 np.array([[0.0, 0.0]]), np.full((1, 2), 80.0), dose=1e7, descan_px=0.0, rng=0)
    a_star_px = 1 / SETUP.lattice_A[0] / SETUP.pixel_inv_A
    o = np.array([float(sim.origin_ky[0, 0]), float(sim.origin_kx[0, 0])])
    # the (4, 0, 0) disk: kx = o + 4 a*
    p_ref = _peak_position(sim.datacube.values[0, 0], o + [0, 4 * a_star_px])
    p_str = _peak_position(sim.datacube.values[0, 1], o + [0, 4 * a_star_px / 1.02])
    assert p_ref[1] - o[1] == pytest.approx(4 * a_star_px, abs=0.1)
    assert p_str[1] - o[1] == pytest.approx(4 * a_star_px / 1.02, abs=0.1)
    assert p_str[0] == pytest.approx(p_ref[0], abs=0.1)


def test_rotation_turns_x_towards_y_on_detector():
    th = 0.02
    sim = stem4d.simulate_fields(np.zeros((1, 1)), np.zeros((1, 1)), np.zeros((1, 1)), np.full((1, 1), th),
                                 np.full((1, 1), 80.0), dose=1e7, descan_px=0.0, rng=0)
    a_star_px = 1 / SETUP.lattice_A[0] / SETUP.pixel_inv_A
    o = np.array([float(sim.origin_ky[0, 0]), float(sim.origin_kx[0, 0])])
    p = _peak_position(sim.datacube.values[0, 0], o + [4 * a_star_px * th, 4 * a_star_px])
    # F^-T of a pure rotation is the same rotation: (4, 0) moves to +ky (downwards) for theta > 0
    assert p[0] - o[0] == pytest.approx(4 * a_star_px * np.sin(th), abs=0.1)


def test_dose_and_poisson_noise():
    z = np.zeros((3, 4))
    sim = stem4d.simulate_fields(z, z, z, z, z + 40.0, dose=2e4, rng=1)
    total = sim.datacube.sum(("ky", "kx")).values
    assert np.all(sim.datacube.values == np.round(sim.datacube.values))  # counts
    assert 0.6 * 2e4 < total.mean() < 2e4  # some disks scatter beyond the detector
    assert total.std() > 0


def test_descan_truth_and_vacuum_only_direct_beam():
    z = np.zeros((5, 7))
    t = np.zeros((5, 7))
    sim = stem4d.simulate_fields(z, z, z, z, t, dose=1e5, descan_px=4.0, rng=2)
    assert not sim.mask.any()
    span_ky = float(sim.origin_ky.max() - sim.origin_ky.min())
    assert span_ky == pytest.approx(4.0 * 1.0, abs=1e-9)  # 0.6 * 4 + 0.4 * 4 across the scan
    img = sim.datacube.values[2, 3]
    p = _peak_position(img, (float(sim.origin_ky[2, 3]), float(sim.origin_kx[2, 3])))
    assert np.allclose(p, [float(sim.origin_ky[2, 3]), float(sim.origin_kx[2, 3])], atol=0.1)
    assert img.sum() > 0.95 * 1e5  # everything in the direct beam


def test_deterministic_with_seed():
    a = stem4d.simulate_uniform(exx=0.01, scan_shape=(2, 3), reference_columns=1, rng=5, dose=1e3)
    b = stem4d.simulate_uniform(exx=0.01, scan_shape=(2, 3), reference_columns=1, rng=5, dose=1e3)
    assert np.array_equal(a.datacube.values, b.datacube.values)


def test_relative_truth_removes_reference_lattice():
    sim = stem4d.simulate_uniform(exx=0.01, eyy=-0.004, scan_shape=(2, 3), reference_columns=1, dose=1e3, rng=0)
    shifted = sim.copy()
    for k, v in dict(exx=0.02, eyy=0.01, exy=0.0, theta=0.0).items():
        shifted[k] = sim[k] + v
    rel = stem4d.relative_truth(shifted, sim.reference.values)
    # (1.03 / 1.02 - 1) exactly, not the first-order 0.01
    assert float(rel.exx[0, 2]) == pytest.approx(1.03 / 1.02 - 1, abs=1e-12)
    assert float(rel.eyy[0, 2]) == pytest.approx(1.006 / 1.01 - 1, abs=1e-12)
    assert float(rel.exx[0, 0]) == pytest.approx(0.0, abs=1e-15)


def test_bad_inputs():
    z = np.zeros((2, 2))
    with pytest.raises(ValueError, match="eyy"):
        stem4d.simulate_fields(z, np.zeros((2, 3)), z, z, z)
    with pytest.raises(ValueError, match="dose"):
        stem4d.simulate_fields(z, z, z, z, z, dose=-1.0)
    with pytest.raises(ValueError, match="reference_columns"):
        stem4d.simulate_uniform(scan_shape=(2, 3), reference_columns=3)
    with pytest.raises(TypeError, match="particle"):
        stem4d.simulate_particle("P1")
