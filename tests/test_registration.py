"""Tests of chemomech.registration (and the pair simulator it is tested with)."""


import numpy as np
import pytest
import xarray as xr
from numpy.testing import assert_allclose
from scipy import ndimage

from chemomech import evaluate, registration, twin
from chemomech.registration import Registration, RegistrationError, RegistrationWarning, register

# a non-symmetric affine (row, col) between non-square grids: a transpose or a (x, y) mix-up fails
MATRIX = np.array([[0.9, 0.15, 3.0], [-0.1, 1.2, -2.0], [0.0, 0.0, 1.0]])


@pytest.fixture(scope="module")
def particle():
    return twin.make_particle("reg", batch="biphasic", seed=42)


def test_map_points_convention_row_col():
    r = Registration.from_matrix(MATRIX, np.zeros((30, 50)), np.zeros((40, 70)))
    assert_allclose(r.map_points([[10.0, 20.0]]), [[0.9 * 10 + 0.15 * 20 + 3, -0.1 * 10 + 1.2 * 20 - 2]])


def test_warp_samples_moving_at_mapped_points():
    # a ramp that differs along rows and columns: warp(image)[p] == image(map_points(p))
    rr, cc = np.mgrid[0:40, 0:70].astype(float)
    moving = 2.0 * rr + 0.5 * cc
    r = Registration.from_matrix(MATRIX, np.zeros((30, 50)), moving)
    warped = r.warp(moving)
    q = r.map_points(np.array([[10.0, 20.0], [20.0, 10.0]]))
    assert_allclose([warped[10, 20], warped[20, 10]], 2.0 * q[:, 0] + 0.5 * q[:, 1], atol=1e-9)
    assert warped.shape == (30, 50)


def test_warp_nan_outside_bool_and_nan_propagation():
    r = Registration.from_matrix([[1, 0, 5], [0, 1, 0], [0, 0, 1]], np.zeros((10, 12)), np.zeros((10, 12)))
    img = np.ones((10, 12))
    img[3, 3] = np.nan
    w = r.warp(img)
    assert np.isnan(w[6:, :]).all() and np.isfinite(w[:5, :]).all()  # rows 5..9 map to 10..14: outside
    assert np.isnan(r.warp(np.where(np.arange(12) == 8, np.nan, 1.0) * np.ones((10, 1)))[0, 8])
    wb = r.warp(np.ones((10, 12), bool))
    assert wb.dtype == bool and int(wb.sum()) == 5 * 12


def test_map_points_physical_for_dataarrays():
    f = xr.DataArray(np.zeros((30, 50)), dims=("y", "x"),
                     coords={"y": 100 + 6.0 * np.arange(30), "x": -50 + 6.0 * np.arange(50)})
    m = xr.DataArray(np.zeros((40, 70)), dims=("y", "x"),
                     coords={"y": 7.5 * np.arange(40), "x": 3.0 + 7.5 * np.arange(70)})
    r = Registration.from_matrix(MATRIX, f, m)
    idx = np.array([[4.0, 11.0]])
    phys_f = np.array([[100 + 6.0 * 4, -50 + 6.0 * 11]])
    q = MATRIX[:2, :2] @ idx[0] + MATRIX[:2, 2]
    assert_allclose(r.map_points(phys_f), [[7.5 * q[0], 3.0 + 7.5 * q[1]]])
    w = r.warp(m)
    assert w.dims == ("y", "x") and float(w.y[0]) == 100.0
    with pytest.raises(ValueError, match="moving"):
        r.warp(f)


def test_register_pure_shift_moves_points(particle):
    ds = particle.render(pixel_size_nm=8.0, shape=(50, 64))
    fixed = ds.thickness.values
    moving = np.exp(-np.roll(fixed, (3, -5), axis=(0, 1)) / 100.0)  # inverted contrast, shifted
    r = register(fixed, moving, transform="similarity", mirror=False)
    assert_allclose(r.map_points([[25.0, 30.0]]), [[28.0, 25.0]], atol=0.3)


@pytest.mark.parametrize("mirror", [False, True])
def test_register_simulated_pair(particle, mirror):
    fixed, moving, truth = twin.pair.simulate_pair(particle, rotation_rad=0.2, scale=1.15, shear=0.04,
                                                    mirror=mirror, shift_nm=(20.0, -15.0), rng=3)
    r = register(fixed.values, moving.values)
    pts = np.argwhere(r.fixed_mask).astype(float)
    tre = truth.target_registration_error(r.map_points(pts), pts)
    assert tre.mean() < 0.5 and tre.max() < 1.5  # fixed px; acceptance numbers of the chapter
    assert r.metrics["mirrored"] is mirror
    assert r.metrics["dice"] > 0.95


def test_register_dataarrays_physical(particle):
    fixed, moving, truth = twin.pair.simulate_pair(particle, rotation_rad=-0.15, mirror=True, rng=5)
    r = register(fixed, moving)
    p_idx = np.array([[30.0, 40.0]])
    p_phys = np.array([[float(fixed.y[30]), float(fixed.x[40])]])
    q = truth.map_points(p_idx)[0]
    expected = [float(moving.y[0]) + q[0] * truth.moving_pixel_nm, float(moving.x[0]) + q[1] * truth.moving_pixel_nm]
    assert_allclose(r.map_points(p_phys)[0], expected, atol=0.8 * truth.moving_pixel_nm)


@pytest.mark.slow
def test_acceptance_ten_seeded_cases():
    """Acceptance: random geometry (rotation <= 15 deg, scale 0.8-1.25, shear, shift, mirror, BF/DF)."""
    table = evaluate.tre_trials(10)
    assert table.tre_mean_px.mean() <= 0.5, table  # measured 0.28 px
    assert table.tre_max_px.max() <= 1.5, table  # worst landmark measured 1.18 px (featureless dark-field case)
    assert table.dice.min() >= 0.95, table  # measured 0.984


@pytest.mark.slow
def test_acceptance_idealised_pairs_still_pass():
    """Issue 15: today's idealised pairs keep a mean TRE <= 0.3 px (measured 0.28 px before the change)."""
    table = evaluate.tre_trials(10)
    assert table.tre_mean_px.mean() <= 0.3, table  # measured 0.257 px (0.234 with 32 fixed bins)


@pytest.fixture(scope="module")
def realistic_table():
    """The issue's real-looking pairs: dark field from the dynamical 4D-STEM twin (~5 min: 20 simulations)."""
    return evaluate.tre_trials(20, realistic=True, dark_field="dynamical")


@pytest.fixture(scope="module")
def stand_in_table():
    """The harder stress case: the drawn stand-in dark-field texture (strong blobs, broken rim)."""
    return evaluate.tre_trials(20, realistic=True)


@pytest.mark.slow
def test_acceptance_realistic_pairs_no_raise_and_true_mask_dice(realistic_table, stand_in_table):
    """Issue 15 acceptance on 20 seeded real-looking pairs: none raises; the true particle masks overlap.

    Dice of the *true* masks under the estimate (the registration's error, not the masks').
    """
    for table in (realistic_table, stand_in_table):
        assert (table.error == "").all(), table.error
        assert table.dice_truth.min() >= 0.95, table  # measured 0.983 (dynamical), 0.972 (stand-in)


@pytest.mark.slow
def test_acceptance_realistic_pairs_tre(realistic_table):
    """Issue 15 acceptance: mean TRE <= 0.4 px, worst pair's mean TRE <= 0.8 px, Dice >= 0.95 on every pair.

    The issue's numbers, on its real-looking pairs (dynamical-twin dark field); measured 0.384 / 0.619 px and
    a minimum Dice of the estimated masks of 0.973 (histogram rule and mask change chosen on cases 20-39).
    """
    table = realistic_table
    assert table.tre_mean_px.mean() <= 0.4 and table.tre_mean_px.max() <= 0.8, table
    assert table.dice.min() >= 0.95, table


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="not reached on the stand-in texture (the stress case): mean TRE 1.14 px, "
                   "worst pair 3.59 px, min Dice of the estimated masks 0.961 on 20 pairs; see the "
                   "registration-bias branch report")
def test_stand_in_pairs_tre(stand_in_table):
    """The issue's TRE targets on the stand-in texture: strong blobs and a broken rim bias every metric."""
    table = stand_in_table
    assert table.tre_mean_px.mean() <= 0.4 and table.tre_mean_px.max() <= 0.8, table
    assert table.dice.min() >= 0.95, table


def test_mask_cuts_a_neighbour_joined_through_a_neck():
    """A neighbour a few pixels away, joined by a blurred neck at the threshold, is cut off, not merged."""
    yy, xx = np.mgrid[0:90, 0:100].astype(float)
    particle = ((yy - 50) / 28) ** 2 + ((xx - 50) / 34) ** 2 < 1
    neighbour = (yy / 10) ** 2 + ((xx - 50) / 30) ** 2 < 1  # cut by the top border, 12 px away
    neck = (np.abs(xx - 50) < 2) & (yy > 8) & (yy < 25)  # a 3 px wide bridge (e.g. film between them)
    img = ndimage.gaussian_filter((particle | neighbour | neck).astype(float), 1.0)
    m = registration.particle_mask(img, sigma_px=0)
    # the neck is 3 px wide (cut by the 3-px opening); the regrown piece keeps at most a stub of the neck
    # (~30 px, 1 % of the particle) and none of the neighbour (rows 0-9)
    assert not m[:10].any()
    # the quarter-level mask of a blurred edge lies ~0.7 px outside the half-maximum outline (~5 % of the
    # area); the merged mask would have Dice 0.89
    assert registration.dice(m, particle) > 0.95


def test_realistic_dark_field_mask_is_the_particle_not_a_blob():
    """The failure of the old two-class Otsu mask on an inverted dark-field image, and the new mask."""
    p = twin.make_particle("blobs", batch="biphasic", seed=101)
    _, moving, truth = twin.pair.simulate_realistic_pair(p, rotation_rad=0.7, rng=1)
    img = moving.values
    old = registration.particle_mask(img, method="otsu")  # the earlier two-class rule
    assert registration.dice(old, truth.moving_mask) < 0.5  # it returns the dark blobs, not the particle
    new = registration.particle_mask(img)
    # the true mask is pixel centres inside the outline; a 1-px band around ~300 rim px is ~3 % of the area
    assert registration.dice(new, truth.moving_mask) >= 0.95


def test_realistic_pair_registers_without_error():
    p = twin.make_particle("real", batch="li_poor", seed=105)
    fixed, moving, truth = twin.pair.simulate_realistic_pair(p, rotation_rad=-2.0, scale=1.1, shear=0.03,
                                                              mirror=True, rng=4)
    r = register(fixed.values, moving.values)
    assert r.metrics["mirrored"] is True
    assert registration.dice(truth.fixed_mask, r.warp(truth.moving_mask)) >= 0.95
    pts = np.argwhere(truth.fixed_mask).astype(float)
    # stand-in texture, the stress case (1.14 px mean over 20 pairs, see test_stand_in_pairs_tre): 3 px
    # rules out a wrong orientation or mirror (those give tens of px)
    assert truth.target_registration_error(r.map_points(pts), pts).mean() < 3.0


def test_particle_mask_polarity():
    img = np.zeros((30, 44))
    img[8:20, 10:30] = 1.0
    m1 = registration.particle_mask(img)
    m2 = registration.particle_mask(5.0 - 3.0 * img)
    # the true particle has 12 x 20 = 240 px; Otsu on the smoothed step lands within a pixel of the edge
    assert registration.dice(m1, m2) > 0.9
    assert 200 <= m1.sum() <= 300 and 200 <= m2.sum() <= 300
    assert not m1[0].any() and not m2[0].any()


def test_dice_and_mutual_information():
    a = np.zeros((10, 12), bool)
    a[2:6, 2:7] = True
    b = np.roll(a, 1, axis=1)
    assert registration.dice(a, b) == pytest.approx(2 * 16 / 40)
    rng = np.random.default_rng(0)
    x = rng.random((40, 50))
    assert registration.mutual_information(x, -x) == pytest.approx(registration.mutual_information(x, x))
    assert registration.mutual_information(x, rng.random((40, 50))) < 0.2 * registration.mutual_information(x, x)


def test_bad_inputs(particle):
    good = particle.render(pixel_size_nm=8.0, shape=(50, 64)).thickness.values
    with pytest.raises(ValueError, match="fixed must be 2-D"):
        register(np.zeros((5, 20, 20)), good)
    with pytest.raises(ValueError, match="moving is constant"):
        register(good, np.ones((40, 40)))
    with pytest.raises(ValueError, match="fixed_mask selects 0"):
        register(good, good, fixed_mask=np.zeros(good.shape, bool))
    with pytest.raises(TypeError, match="fixed_mask must be a boolean"):
        register(good, good, fixed_mask=np.ones(good.shape))
    with pytest.raises(ValueError, match="contains no finite"):
        register(np.full((20, 20), np.nan), good)
    with pytest.raises(ValueError, match="transform"):
        register(good, good, transform="rigid")
    with pytest.raises(TypeError, match="unknown option"):
        register(good, good, metric="mse")


def test_failure_is_reported_not_silent(particle):
    fixed, moving, _ = twin.pair.simulate_pair(particle, rotation_rad=0.1, rng=1)
    wrong = np.zeros(moving.shape, bool)
    wrong[:8, :8] = True  # a "particle mask" in the corner
    with pytest.raises(RegistrationError, match="Dice"):
        register(fixed.values, moving.values, moving_mask=wrong)
    with pytest.warns(RegistrationWarning, match="iteration cap"):
        register(fixed.values, moving.values, iterations=2, min_dice=0.0)


def test_inputs_not_mutated(particle):
    fixed, moving, _ = twin.pair.simulate_pair(particle, rng=2)
    f0, m0 = fixed.values.copy(), moving.values.copy()
    register(fixed, moving)
    assert np.array_equal(fixed.values, f0) and np.array_equal(moving.values, m0)


def test_simulator_truth_is_exact_for_noise_free_pair(particle):
    # the X-ray thickness sampled at mapped moving points: moving-grid sampling of the same particle agrees
    fixed, moving, truth = twin.pair.simulate_pair(particle, rotation_rad=0.3, scale=0.9, mirror=True,
                                                    noise=0.0, blur_px=0.0, rng=0)
    pts = np.array([[20.0, 30.0], [35.0, 50.0]])
    assert_allclose(truth.inverse_map_points(truth.map_points(pts)), pts, atol=1e-9)
    assert np.linalg.det(truth.matrix[:2, :2]) < 0
    assert_allclose(abs(np.linalg.det(truth.matrix[:2, :2])), (6.0 / (7.5 * 0.9)) ** 2, rtol=1e-9)


def test_register_image_to_itself_is_identity(particle):
    fixed, _, _ = twin.pair.simulate_pair(particle, rng=4)
    r = register(fixed.values, fixed.values)
    pts = np.argwhere(r.fixed_mask).astype(float)
    assert np.abs(r.map_indices(pts) - pts).max() < 0.15  # px; the optimiser stops at steps of ~1e-4 (scaled)
    assert r.metrics["mirrored"] is False and abs(r.metrics["rotation_deg"]) < 0.1


def test_df_image_hook_keeps_the_scene_holes_and_gradient():
    """A dark-field image given through df_image is of the particle alone; the scene's holes and
    thickness gradient must still modulate it (no material, no signal), as they do the X-ray map."""
    p = twin.make_particle("hook", batch="li_poor", seed=104)
    ys = np.arange(-800.0, 800.0, 4.0)
    flat = xr.DataArray(np.ones((ys.size, ys.size)), dims=("y", "x"), coords={"y": ys, "x": ys})
    kw = dict(noise=0.0, film=False, neighbour=False, holes=3, invert_moving=False, rng=2)
    fixed, moving, truth = twin.pair.simulate_realistic_pair(p, df_image=flat, **kw)
    warped = Registration.from_matrix(truth.matrix, fixed.values, moving.values).warp(moving.values)
    inner = ndimage.binary_erosion(truth.fixed_mask, iterations=4) & np.isfinite(warped)
    # the flat input carries no thickness information: any correlation with the X-ray thickness comes
    # from the scene's holes and gradient (the particle is thinner than the DF peak thickness, so the
    # annular signal rises with thickness); 0.5 is far above the ~0 of a DF that ignores them
    assert np.corrcoef(fixed.values[inner], warped[inner])[0, 1] > 0.5
