"""Tests of the energy-stack simulator chemomech.twin.ptycho (the measurement side of chapter 3)."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose

from chemomech import geometry, io, materials, twin, xanes
from chemomech.twin import ptycho


@pytest.fixture(scope="module")
def particle():
    return twin.make_particle("small", batch="biphasic", seed=7, semi_axes_nm=(70.0, 100.0))


def test_energy_grid_is_increasing_and_fine_across_the_white_lines():
    e = ptycho.energy_grid()
    assert np.all(np.diff(e) > 0)
    fine = e[(e >= 705) & (e <= 713)]
    assert np.max(np.diff(fine)) <= 0.25 + 1e-9
    assert 55 <= e.size <= 65 and e[0] == 700.0 and e[-1] < 730.0


def test_model_spectra_have_the_literature_peak_ratios_and_differ_from_the_fit_tabulation():
    s = ptycho.model_spectra([708.0, 710.0])
    assert_allclose(float(s.LFP[1] / s.LFP[0]), 0.5, atol=0.05)  # Fe2+: OD(710)/OD(708) ~ 0.5
    assert_allclose(float(s.FP[1] / s.FP[0]), 2.1, atol=0.15)  # Fe3+: ~ 2.1
    # the bandwidth makes the simulator's spectra differ from the analysis tabulation (no inverse crime)
    r = xanes.reference_spectra().interp(energy=[708.0])
    rel = float(s.LFP[0] / r.LFP[0])
    assert 0.9 < rel < 0.999
    # with no bandwidth, the independent evaluation agrees with the tabulation to < 1 %
    s0 = ptycho.model_spectra([708.0, 710.0], bandwidth_ev=0.0)
    assert_allclose(s0.FP.values, xanes.reference_spectra([708.0, 710.0]).FP.values, rtol=0.01)


def test_drift_path_starts_at_zero_and_has_the_requested_size():
    d = ptycho.drift_path(60, total_px=3.0, rng=2)
    assert d.shape == (60, 2)
    assert np.all(d[0] == 0)
    assert 2.0 < np.hypot(*d[-1]) < 4.0
    assert np.max(np.abs(np.diff(d, axis=0))) < 0.3  # slow drift, no jumps


def test_simulated_stack_shapes_truth_and_determinism(particle):
    kw = dict(shape=(36, 52), pixel_size_nm=6.0, rng=3)
    stack, truth = ptycho.simulate_stack(particle, **kw)
    assert stack.dims == ("energy", "y", "x") and stack.shape == (60, 36, 52)
    assert stack.dtype.kind == "c" and stack["energy"].attrs["units"] == "eV"
    assert truth.X.dims == ("y", "x")
    inside = truth.mask.values
    assert np.all(np.isnan(truth.X.values[~inside]))
    assert np.nanmin(truth.X.values) >= 0 and np.nanmax(truth.X.values) <= 1
    assert np.all(truth.shifts.values[0] == 0)
    assert truth.interior.sum() < truth.mask.sum()
    again, _ = ptycho.simulate_stack(particle, **kw)
    assert_allclose(again.values, stack.values)
    other, _ = ptycho.simulate_stack(particle, **{**kw, "rng": 4})
    assert not np.allclose(other.values, stack.values)


def test_noise_free_object_gives_the_expected_optical_density(particle):
    e = np.array([700.0, 708.0, 710.0, 720.0, 725.0])
    stack, truth = ptycho.simulate_stack(particle, energies=e, shape=(30, 44), pixel_size_nm=6.0,
                                         shifts=np.zeros((5, 2)), noise=0.0, stray_fraction=0.0,
                                         supersample=1, rng=0)
    amp = np.abs(stack.values)
    bg = ~truth.mask.values
    od = -2 * np.log(amp / np.median(amp[:, bg], axis=1)[:, None, None])
    s = ptycho.model_spectra(e)
    X, t = truth.X.values, truth.thickness.values
    r = materials.FE_DENSITY_RATIO_FP_LFP
    v = X * r / (X * r + 1 - X)  # molar x -> LiFePO4 volume fraction (FePO4 packs 7 % more Fe per volume)
    expect = t * (v * s.LFP.values[:, None, None] + (1 - v) * s.FP.values[:, None, None])
    m = truth.interior.values
    # membrane thickness gradient (3 % of OD 0.1 across the field) is the only difference
    assert_allclose(od[:, m], expect[:, m], atol=0.004)


def test_stxm_mode_gives_counts_and_saturates_thick_particles(particle):
    stack, truth = ptycho.simulate_stack(particle, mode="stxm", shape=(30, 44), pixel_size_nm=6.0,
                                         thickness_scale=3.0, rng=1)
    assert stack.dtype.kind == "f" and stack.attrs["units"] == "counts"
    assert np.all(stack.values >= 0)
    od = -np.log(stack.values / np.median(stack.values[:, ~truth.mask.values], axis=1)[:, None, None])
    assert np.nanmax(od) > materials.OD_SATURATION


def test_simulator_drift_follows_the_shift_convention(particle):
    # frame k shows the specimen displaced by shifts[k]: frame2[y, x] == frame1[y - 2, x + 3]
    shifts = np.zeros((5, 2))
    shifts[2] = (2.0, -3.0)
    e = np.array([700.0, 700.5, 701.0, 701.5, 702.0])  # pre-edge: nearly the same contrast
    stack, _ = ptycho.simulate_stack(particle, energies=e, shape=(40, 56), pixel_size_nm=6.0,
                                     shifts=shifts, noise=0.0, rng=0)
    od = -2 * np.log(np.abs(stack.values))
    od = od - od[:, 5:-5, 5:-5].min(axis=(1, 2))[:, None, None]
    right = np.abs(od[2][5:-5, 5:-5] - od[1][3:-7, 8:-2]).max()
    wrong = np.abs(od[2][5:-5, 5:-5] - od[1][7:-3, 2:-8]).max()
    assert right < 0.003 < 0.01 < wrong


def test_cxi_round_trip(tmp_path, particle):
    stack, _ = ptycho.simulate_stack(particle, energies=[700.0, 708.0, 710.0, 715.0, 720.0],
                                     shape=(20, 26), pixel_size_nm=8.0, rng=0)
    path = io.write_cxi(stack, tmp_path / "stack.cxi")
    back = io.read_stack(path)
    assert_allclose(back["energy"].values, stack["energy"].values, rtol=1e-9)
    assert_allclose(back.values, stack.values)
    assert_allclose(np.diff(back["x"].values[:2]), 8.0)


def test_bad_arguments_raise(particle):
    with pytest.raises(TypeError, match="particle"):
        ptycho.simulate_stack("P1")
    with pytest.raises(ValueError, match="mode"):
        ptycho.simulate_stack(particle, mode="tomo")
    with pytest.raises(ValueError, match="shifts"):
        ptycho.simulate_stack(particle, shifts=np.zeros((3, 2)))
    with pytest.raises(ValueError, match="shape"):
        ptycho.simulate_stack(particle, shape=(10,))


def test_mirrored_stack_and_its_index_map():
    # non-square grid, offset particle: pixel (0, 0) of a mirrored image shows the top-RIGHT corner
    p = twin.make_particle("m", batch="li_poor", seed=2, semi_axes_nm=(6.0, 8.0), mesh_nrefs=3)
    kw = dict(energies=np.linspace(700.0, 720.0, 5), shape=(4, 6), pixel_size_nm=2.0, offset_nm=(1.0, -3.0),
              drift_px=0.0, noise=0.0)
    plain, tp = ptycho.simulate_stack(p, rng=1, **kw)
    flip, tf = ptycho.simulate_stack(p, rng=1, mirror=True, **kw)
    a = tf["index_to_particle"].values
    y, x = geometry.apply_affine(a, np.array([[0.0, 0.0], [0.0, 5.0]])).T
    assert np.allclose(y, [-3.0 - 1.0, -3.0 - 1.0])
    assert np.allclose(x, [5.0 + 3.0, -5.0 + 3.0])
    assert np.allclose(geometry.apply_affine(tp["index_to_particle"].values, [[0.0, 0.0]]), [[-4.0, -2.0]])
    # the mirrored stack and truth are the plain ones with their columns flipped
    assert np.allclose(np.abs(flip.values), np.abs(plain.values[..., ::-1]))
    assert np.array_equal(tf["mask"].values, tp["mask"].values[:, ::-1])
    assert tf.attrs["mirrored"] == 1 and tp.attrs["mirrored"] == 0


def test_frame_offsets_are_independent_and_bounded():
    d = ptycho.frame_offsets(200, max_px=4.0, rng=3)
    assert d.shape == (200, 2) and np.all(d[0] == 0) and np.abs(d).max() <= 4.0
    # independent draws: uniform on [-4, 4] has sd 4/sqrt(3) = 2.31; consecutive frames are uncorrelated
    assert_allclose(d[1:].std(axis=0), 4.0 / np.sqrt(3.0), rtol=0.15)  # 199 draws: sd error ~5 %
    lag1 = [np.corrcoef(d[1:-1, i], d[2:, i])[0, 1] for i in range(2)]
    assert np.all(np.abs(lag1) < 0.25)  # |r| < 3.5 / sqrt(199)
    assert np.sqrt(np.mean(np.diff(d[1:], axis=0) ** 2)) > 2.5  # jumps, not a slow drift


def test_realistic_preset_has_offsets_calibration_error_broadening_and_artefacts(particle):
    e = np.array([700.0, 706.0, 708.0, 710.0, 715.0, 720.0])
    kw = dict(energies=e, shape=(40, 52), pixel_size_nm=6.0, rng=5)
    ideal, ti = ptycho.simulate_stack(particle, noise=0.0, **kw)
    real, tr = ptycho.simulate_stack(particle, preset="realistic", noise=0.0, **kw)
    assert tr.attrs["energy_offset_ev"] == 0.3 and tr.attrs["bandwidth_ev"] == 0.35 and tr.attrs["artefacts"] == 1
    assert ti.attrs["energy_offset_ev"] == 0.0 and ti.attrs["artefacts"] == 0
    _, t_drift = ptycho.simulate_stack(particle, preset="realistic", frame_offset_px=0.0, noise=0.0, **kw)
    offsets = tr.shifts.values - t_drift.shifts.values  # same seed: the same drift path
    assert np.abs(offsets).max() <= 4.0 and np.abs(np.diff(offsets, axis=0)).max() > 1.0
    # explicit options override the preset
    _, t2 = ptycho.simulate_stack(particle, preset="realistic", energy_offset_ev=0.0, frame_offset_px=0.0,
                                  artefacts=False, **kw)
    # only the 3 px drift remains: steps of 3 px / 5 frames plus its small random walk
    assert t2.attrs["energy_offset_ev"] == 0.0 and np.abs(np.diff(t2.shifts.values, axis=0)).max() < 0.8
    # the calibration error moves the spectra: the stack at nominal 708 eV shows the true 708.3 eV
    s = ptycho.model_spectra([708.3], bandwidth_ev=0.35)
    s0 = ptycho.model_spectra([708.0], bandwidth_ev=0.35)
    assert abs(float(s.LFP[0] - s0.LFP[0])) > 0.0005
    # edge ringing: the outermost pixels of a realistic frame deviate from the membrane level
    amp_r, amp_i = np.abs(real.values[0]), np.abs(ideal.values[0])
    ring = lambda a: abs(a[0, 10:-10].mean() - a[2, 10:-10].mean()) / a[1:3, 10:-10].mean()  # noqa: E731
    # ringing amplitude >= 5 % at the edge, 0.4x that (opposite sign) two pixels in: >= 6 % apart;
    # the ideal frame only has the 3 % membrane gradient across the whole field (< 0.5 % per 2 px)
    assert ring(amp_r) > 0.05 and ring(amp_i) < 0.005
    # a linear phase ramp: the phase difference between neighbours is far from zero in some frame
    ramp = [abs(np.angle(np.sum(f[:, 1:] * np.conj(f[:, :-1])))) for f in real.values]
    assert max(ramp) > 0.01
    with pytest.raises(ValueError, match="preset"):
        ptycho.simulate_stack(particle, preset="perfect", **kw)
    with pytest.raises(ValueError, match="energy_offset_ev"):
        ptycho.simulate_stack(particle, energy_offset_ev=20.0, **kw)
