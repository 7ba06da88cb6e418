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


# ----------------------------------------------------------------- dynamical disks and bending


def test_bending_leaves_every_other_particle_field_unchanged():
    # values of X, thickness and exx sampled with the code before the bending field was added (main,
    # fe855a8, mesh_nrefs=3): the bending draws come from a seed stream of their own
    from chemomech.twin import particle_set

    before = {
        "P1": ([0.0426480038, 0.9513986315, 0.9544428072], [106.9663484, 97.99106673, 102.61960328],
               [0.0029822041, 0.0492217302, 0.05100926]),
        "P3": ([0.06326339, 0.9023667636, 0.9231139149], [79.30173497, 79.37082189, 82.2304205],
               [0.0116726279, 0.041029192, 0.0438142174]),
        "P5": ([0.3089323417, 0.240247552, 0.229267335], [92.62046088, 89.70422256, 95.1934789],
               [0.0155502502, 0.0125918413, 0.0123421767]),
    }
    ps = particle_set(mesh_nrefs=3)
    y, x = np.array([-40.0, 0.0, 25.0]), np.array([30.0, 0.0, -60.0])
    for name, (X, t, exx) in before.items():
        s = ps[name].sample(y, x)
        np.testing.assert_allclose(s["X"], X, atol=1e-9)
        np.testing.assert_allclose(s["thickness"], t, atol=1e-6)
        np.testing.assert_allclose(s["exx"], exx, atol=1e-9)


def test_bending_tilt_is_smooth_and_bounded():
    from chemomech.twin import make_particle, particle

    p = make_particle("bend", seed=11)
    yy, xx = np.mgrid[-150:151:5.0, -150:151:5.0]
    t = p.tilt_mrad(yy, xx)
    assert t.shape == yy.shape + (2,)
    assert np.all(np.abs(t) <= particle.TILT_LIMIT_MRAD)
    # RMS about the mean of the order of TILT_RMS_MRAD (a random field on a finite patch: within 3x)
    rms = float(np.sqrt(np.mean(np.sum((t - t.mean(axis=(0, 1))) ** 2, axis=-1) / 2)))
    assert particle.TILT_RMS_MRAD / 3 < rms < 3 * particle.TILT_RMS_MRAD
    # smooth: neighbouring samples 5 nm apart differ by far less than the range (wavelengths >= 250 nm)
    assert np.abs(np.diff(t, axis=1)).max() < 0.2 * np.ptp(t)


def test_dynamical_disk_counts_follow_the_library():
    # one tilted 30 nm LFP pattern, almost noise-free: the counts in each strong disk are the dose times the
    # library intensity averaged over the aperture (sampled here on a polar grid of directions), up to the
    # detector PSF tail (5 %) and the diffuse background (~1 %): 10 % tolerance
    from chemomech.twin import cbed

    setup = stem4d.DiffractionSetup()
    tilt = np.array([1.0, -0.6])
    sim = stem4d.simulate_fields(*(np.zeros((1, 1)),) * 4, np.full((1, 1), 30.0), setup=setup, dose=1e8,
                                 disks="dynamical", X=1.0, tilt_mrad=tilt[None, None], descan_px=0.0, rng=0)
    pat = sim.datacube.values[0, 0].astype(float)
    lib = cbed.load_library()
    rr, pp = np.meshgrid(np.sqrt((np.arange(8) + 0.5) / 8), np.linspace(0, 2 * np.pi, 24, endpoint=False))
    q = setup.convergence_mrad * np.stack([(rr * np.cos(pp)).ravel(), (rr * np.sin(pp)).ravel()], axis=1)
    mean_i = cbed.disk_intensities(lib, 1.0, 30.0, tilt, q).mean("q")
    o = np.array([sim.origin_ky.item(), sim.origin_kx.item()])
    a, _, c = setup.lattice_A
    ky, kx = np.mgrid[:128, :128]
    checked = 0
    for (h, ell) in [(0, 0), (2, 0), (-2, 0), (1, 1), (0, 2)]:
        expect = float(mean_i.sel(beam=(mean_i.h == h) & (mean_i.l == ell)).item()) * 1e8
        if expect < 1e5:
            continue
        centre = o + np.array([ell / c, h / a]) / setup.pixel_inv_A  # (ky, kx): c* along y, a* along x
        inside = np.hypot(ky - centre[0], kx - centre[1]) <= setup.disk_radius_px + 1.5
        assert pat[inside].sum() == pytest.approx(expect, rel=0.10), (h, ell)
        checked += 1
    assert checked >= 3


def test_dynamical_virtual_images_show_diffraction_contrast():
    # uniform disks: the thick interior of a particle is almost featureless in dark field; dynamical disks
    # (thickness, composition and bending) make it vary several times more (measured: 0.024 vs 0.076)
    from chemomech import strain
    from chemomech.twin import particle_set

    p = particle_set(mesh_nrefs=3)["P3"]
    cv = {}
    for disks in ("uniform", "dynamical"):
        sim = stem4d.simulate_particle(p, scan_shape=(20, 22), dose=1e6, disks=disks, rng=1)
        v = strain.virtual_images(sim.datacube, radius_px=sim.attrs["disk_radius_px"] + 2)
        m = sim.mask.values & (sim.thickness.values > 0.7 * sim.thickness.values.max())
        cv[disks] = float(v.dark_field.values[m].std() / v.dark_field.values[m].mean())
    assert cv["dynamical"] > 2 * cv["uniform"], cv


def test_disks_option_is_checked():
    z = np.zeros((1, 2))
    with pytest.raises(ValueError, match="disks"):
        stem4d.simulate_fields(z, z, z, z, z + 30, disks="kinematic", rng=0)
    with pytest.raises(ValueError, match="tilt_mrad"):
        stem4d.simulate_fields(z, z, z, z, z + 30, disks="dynamical", tilt_mrad=np.zeros((1, 2)), rng=0)
