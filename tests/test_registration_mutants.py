"""Registration tests added after mutation testing (benchmarks/mutation_triage.md)."""

from __future__ import annotations

import numpy as np
import pytest

from chemomech import registration


def test_map_points_needs_n_by_2_points():
    # (y, x) pairs only: three coordinates per point, or a flat list, must be refused by name, not mapped
    r = registration.Registration.from_matrix([[1, 0, 2.5], [0, -1, 9], [0, 0, 1]], np.zeros((8, 10)),
                                              np.zeros((9, 12)))
    assert r.map_points([[1.0, 2.0]]).tolist() == [[3.5, 7.0]]
    with pytest.raises(ValueError, match="points"):
        r.map_points([[1.0, 2.0, 3.0]])
    with pytest.raises(ValueError, match="points"):
        r.map_points([1.0, 2.0])


def test_mask_pairs_with_an_implausible_physical_area_ratio_are_tried_last():
    # the fixed image's best mask is 16x the moving particle's physical area (outside the plausible
    # 0.4-2.5 of _AREA_RATIO), its second one matches it: with physical grids the matching pair is tried
    # first; without physical coordinates there is nothing to compare and the ranking order stays
    def square(n, side):
        m = np.zeros((n, n), bool)
        m[:side, :side] = True
        return m

    f_masks = [("big", square(64, 40)), ("small", square(64, 10))]
    m_masks = [("moving", square(32, 5))]  # 25 px of 4 nm x 1 nm = 100 nm^2, like "small" (100 px of 1 nm^2)
    f_grid = registration._Grid((64, 64), spacing=(1.0, 1.0), physical=True)
    for spacing in ((4.0, 1.0), (2.0, 2.0)):  # non-square pixels; square ones of 2 nm (area = product)
        m_grid = registration._Grid((32, 32), spacing=spacing, physical=True)
        order = [(f[0], m[0]) for f, m in registration._mask_pairs(f_masks, m_masks, f_grid, m_grid)]
        assert order == [("small", "moving"), ("big", "moving")], spacing
    pixel = [registration._Grid((64, 64)), registration._Grid((32, 32))]
    order = [(f[0], m[0]) for f, m in registration._mask_pairs(f_masks, m_masks, *pixel)]
    assert order == [("big", "moving"), ("small", "moving")]


def test_implausible_mask_pairs_keep_their_ranking_among_themselves():
    # three candidate masks per side: pairs with a plausible area ratio first, then the implausible ones,
    # each group in the order of the summed candidate ranks (ties: the fixed image's rank first)
    def square(side):
        m = np.zeros((48, 48), bool)
        m[:side, :side] = True
        return m

    f_masks = [("F100", square(10)), ("F1600", square(40)), ("F400", square(20))]
    m_masks = [("M100", square(10)), ("M121", square(11)), ("M1600", square(40))]
    grid = registration._Grid((48, 48), spacing=(1.0, 1.0), physical=True)
    order = [(f[0], m[0]) for f, m in registration._mask_pairs(f_masks, m_masks, grid, grid)]
    ratio = {(f[0], m[0]): f[1].sum() / m[1].sum() for f in f_masks for m in m_masks}
    plausible = [p for p in order if 0.4 <= ratio[p] <= 2.5]
    assert order[:len(plausible)] == plausible == [("F100", "M100"), ("F100", "M121"), ("F1600", "M1600")]
    # implausible, by rank i + j: (1, 0) rank 1; (0, 2), (1, 1), (2, 0) rank 2; (2, 1) rank 3; (2, 2) rank 4
    assert order[len(plausible):] == [("F1600", "M100"), ("F100", "M1600"), ("F1600", "M121"), ("F400", "M100"),
                                      ("F400", "M121"), ("F400", "M1600")]


def test_particle_mask_of_a_flat_image_says_no_particle_was_found():
    # a constant-plus-noise field has no particle on either side of any threshold: refused with a hint
    img = np.random.default_rng(0).normal(10.0, 0.1, (40, 40))
    with pytest.raises(ValueError, match=r"no particle found.*pass a mask \(fixed_mask=/moving_mask=\) or a larger "
                                         r"field of view$"):
        registration.particle_mask(img)


def test_registration_image_keeps_the_long_name_of_a_dataarray():
    xr = pytest.importorskip("xarray")
    img = xr.DataArray(np.linspace(0.0, 1.0, 120).reshape(10, 12), dims=("y", "x"),
                       attrs={"units": "1", "long_name": "Li fraction"})
    inside = np.zeros((10, 12), bool)
    inside[2:8, 2:10] = True
    out, m = registration.registration_image(img, inside)
    assert out.attrs == {"units": "1", "long_name": "Li fraction"}
    # the returned mask is the given one (one solid piece here); outside it the image is set below the
    # particle's range (1st percentile - half the 1-99 % range), inside it is unchanged
    np.testing.assert_array_equal(m, inside)
    np.testing.assert_array_equal(out.values[inside], img.values[inside])
    assert np.all(out.values[~inside] < img.values[inside].min())
    out, _ = registration.registration_image(img, inside, long_name="registration view")
    assert out.attrs["long_name"] == "registration view"


def test_metric_profile_peaks_where_the_moving_image_is_realigned():
    # moving = fixed with its content moved 2 px to +x; with an identity registration, shifting the warp by
    # -2 px realigns it: both similarity measures peak there, the correlation at 1 (noise-free, no edge loss)
    yy, xx = np.mgrid[:48, :48].astype(float)
    inside = ((yy - 24) / 14) ** 2 + ((xx - 22) / 10) ** 2 < 1
    fixed = np.where(inside, 2.0 + np.sin(xx / 2.5) * np.cos(yy / 3.5), 0.0)
    moving = np.roll(fixed, 2, axis=1)
    reg = registration.Registration.from_matrix(np.eye(3), fixed, moving)
    shifts = np.arange(-5.0, 2.5, 1.0)
    prof = registration.metric_profile(fixed, moving, reg, shifts_px=shifts, axis="x")
    assert prof["shift"].values.tolist() == shifts.tolist() and prof["shift"].attrs["units"] == "px"
    assert prof["correlation"].idxmax().item() == -2.0 and prof["mutual_information"].idxmax().item() == -2.0
    assert prof["correlation"].sel(shift=-2.0).item() == pytest.approx(1.0, abs=1e-12)
    along_y = registration.metric_profile(fixed, moving, reg, shifts_px=[0.0, 1.0], axis="y")
    assert along_y["correlation"].values.max() < 0.99  # shifting along y does not undo an x shift
    with pytest.raises(ValueError, match="shifts_px"):
        registration.metric_profile(fixed, moving, reg, shifts_px=[[1.0, 2.0]])
    with pytest.raises(ValueError, match="axis"):
        registration.metric_profile(fixed, moving, reg, shifts_px=shifts, axis="z")


def test_a_dataarray_with_swapped_axes_is_refused_by_name():
    # a (x, y) map is the transpose of the particle: registering it would silently mirror the result, so a
    # 2-D DataArray must be on ("y", "x"); the message names the argument
    xr = pytest.importorskip("xarray")
    yy, xx = np.mgrid[:24, :30]
    img = np.where(((yy - 12) / 8) ** 2 + ((xx - 14) / 10) ** 2 < 1, 1.0, 0.0)
    assert registration.particle_mask(xr.DataArray(img, dims=("y", "x"))).sum() > 100
    with pytest.raises(ValueError, match=r"^image\b.*dims"):
        registration.particle_mask(xr.DataArray(img.T, dims=("x", "y")))


def test_warp_of_a_dataarray_is_on_the_fixed_grid():
    xr = pytest.importorskip("xarray")
    fixed = xr.DataArray(np.zeros((9, 10)), dims=("y", "x"), coords={"y": np.arange(9) * 2.0, "x": np.arange(10) * 2.0})
    moving = xr.DataArray(np.arange(120.0).reshape(10, 12), dims=("y", "x"))
    reg = registration.Registration.from_matrix([[1, 0, 0.5], [0, 1, 1], [0, 0, 1]], fixed, moving)
    out = reg.warp(moving)
    assert out.dims == ("y", "x") and out.shape == (9, 10)
    np.testing.assert_array_equal(out.x.values, fixed.x.values)
    assert out.values[0, 0] == pytest.approx(0.5 * 12 + 1)  # bilinear at moving (row 0.5, col 1)
    # a fixed image without physical coordinates: still a (y, x) DataArray (on pixel indices)
    reg = registration.Registration.from_matrix([[1, 0, 0.5], [0, 1, 1], [0, 0, 1]], np.zeros((9, 10)), moving)
    assert reg.warp(moving).dims == ("y", "x")


def test_a_complex_image_is_refused_not_silently_made_real():
    # a ptychographic object is complex: registering it needs a real view (amplitude, phase or OD) chosen by
    # the caller; casting would silently drop the phase
    img = np.exp(1j * np.random.default_rng(0).normal(size=(20, 20)))
    with pytest.raises(TypeError, match="image must hold numbers"):
        registration.particle_mask(img)


@pytest.mark.parametrize("smooth_px", [0.0, 1.0])
def test_given_masks_register_on_intensity_with_and_without_smoothing(smooth_px):
    # with both masks given, the metric compares the rescaled intensities (content "intensity"), pre-smoothed
    # by smooth_px (default 1 px) or not at all; on an idealised pair both must land within the chapter's
    # acceptance (mean TRE < 0.5 fixed px), from the same masks
    from chemomech import twin

    particle = twin.make_particle("reg", batch="biphasic", seed=42)
    fixed, moving, truth = twin.pair.simulate_pair(particle, rotation_rad=0.2, scale=1.15, shear=0.04,
                                                    shift_nm=(20.0, -15.0), rng=3)
    fm, mm = registration.particle_mask(fixed.values), registration.particle_mask(moving.values)
    r = registration.register(fixed.values, moving.values, fixed_mask=fm, moving_mask=mm, smooth_px=smooth_px)
    pts = np.argwhere(fm).astype(float)
    assert truth.target_registration_error(r.map_points(pts), pts).mean() < 0.5
