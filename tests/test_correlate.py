"""Tests of chemomech.correlate: the correlated stack on the X-ray grid."""

import numpy as np
import pytest
from numpy.testing import assert_allclose

from chemomech import correlate, geometry, io, strain, twin
from chemomech.registration import Registration


@pytest.fixture(scope="module")
def pair():
    p = twin.make_particle("corr", batch="biphasic", seed=11, mesh_nrefs=5)
    fixed, moving, truth = twin.pair.simulate_pair(p, rotation_rad=0.4, scale=1.1, shear=0.03, mirror=True,
                                                    shift_nm=(10.0, -20.0), rng=0)
    strain, xanes = twin.pair.simulate_stack_inputs(p, truth, fixed, moving, strain_noise=0.0, x_noise=0.0, rng=0)
    return p, fixed, moving, truth, strain, xanes


def test_rotate_strain_90_degrees_and_mirror():
    q90 = np.array([[0.0, 1.0], [-1.0, 0.0]])
    assert_allclose(geometry.rotate_strain(0.01, -0.002, 0.003, 0.001, q90), [-0.002, 0.01, -0.003, 0.001],
                    atol=1e-15)
    mirror_rows = np.diag([-1.0, 1.0])  # y -> -y: shear and rotation change sign
    assert_allclose(geometry.rotate_strain(0.01, -0.002, 0.003, 0.001, mirror_rows), [0.01, -0.002, -0.003, -0.001])
    with pytest.raises(ValueError, match="orthogonal"):
        geometry.rotate_strain(0.0, 0.0, 0.0, 0.0, np.eye(2) * 2)


def test_correlated_stack_matches_twin_truth(pair):
    p, fixed, moving, truth, strain, xanes = pair
    reg = Registration.from_matrix(truth.matrix, fixed, moving)
    stack = correlate.correlate(strain, xanes, reg)
    assert set(correlate.STACK_VARIABLES) <= set(stack.data_vars) and "virtual" in stack
    yy, xx = np.meshgrid(fixed.y.values, fixed.x.values, indexing="ij")
    t = p.sample(yy, xx)
    m = stack.mask.values
    assert m.sum() > 0.8 * t["mask"].sum()
    # bilinear resampling of smooth truth fields from a 7.5-8 nm grid: errors << the 0.5-2 % strain signal
    for k in ("exx", "eyy", "exy", "theta"):
        err = np.abs(stack[k].values[m] - t[k][m])
        assert np.median(err) < 2e-4, (k, np.median(err))
    # without the tensor rotation (rotation 23 deg + mirror) exy would be badly off
    naive = reg.warp(strain.exy.values)
    ok = m & np.isfinite(naive)   # the stack reaches one scan pixel further (extend_edges)
    assert np.median(np.abs(naive[ok] - t["exy"][ok])) > 10 * np.median(np.abs(stack.exy.values[ok] - t["exy"][ok]))
    assert np.isnan(stack.exx.values[~m]).all() and np.isfinite(stack.X.values[m]).all()
    assert stack.attrs["frame_mirrored"] == 1
    # fixed -> moving directions (y, x): the inverse of the scan's rotation R(0.4) followed by the row flip
    c, si = np.cos(0.4), np.sin(0.4)
    assert_allclose(reg.frame_rotation(), np.diag([-1.0, 1.0]) @ np.array([[c, si], [-si, c]]).T, atol=1e-9)


def test_save_load_roundtrip(pair, tmp_path):
    _, fixed, moving, truth, strain, xanes = pair
    stack = correlate.correlate(strain, xanes, Registration.from_matrix(truth.matrix, fixed, moving))
    path = tmp_path / "stack.nc"
    io.save_stack(stack, path)
    back = io.load_stack(path)
    assert back.mask.dtype == bool and np.array_equal(back.mask.values, stack.mask.values)
    assert_allclose(back.exx.values, stack.exx.values, equal_nan=True)
    assert back.exx.attrs["units"] == "1"


def test_bad_inputs(pair):
    _, fixed, moving, truth, strain, xanes = pair
    reg = Registration.from_matrix(truth.matrix, fixed, moving)
    # extra variables on other dims (the drift shifts of map_lithium) are ignored, not an error
    extra = xanes.assign(shifts=(("energy", "axis"), np.zeros((3, 2))))
    assert "shifts" not in correlate.correlate(strain, extra, reg)
    with pytest.raises(ValueError, match="strain.exx must have dims"):
        correlate.correlate(strain.assign(exx=strain.exx.T), xanes, reg)
    with pytest.raises(ValueError, match="strain is missing"):
        correlate.correlate(strain.drop_vars("exy"), xanes, reg)
    with pytest.raises(ValueError, match="moving grid"):
        correlate.correlate(strain.isel(y=slice(1, None)), xanes, reg)
    with pytest.raises(ValueError, match="fixed grid"):
        correlate.correlate(strain, xanes.assign_coords(x=xanes.x + 3.0), reg)
    with pytest.raises(TypeError, match="Registration"):
        correlate.correlate(strain, xanes, truth.matrix)
    for option in ("extend_edges", "match_resolution", "strain_kernel"):
        with pytest.raises(TypeError, match=f"^{option} must be a bool, got int$"):
            correlate.correlate(strain, xanes, reg, **{option: 0})
    with pytest.raises(ValueError, match="not a correlated stack"):
        io.save_stack(xanes, "unused.nc")


def test_frame_angle_matches_simulated_scan_rotation(pair):
    _, fixed, moving, truth, _, _ = pair
    reg = Registration.from_matrix(truth.matrix, fixed, moving)
    assert_allclose(reg.frame_angle_deg(), np.degrees(0.4), atol=1e-6)
    p = twin.make_particle("angle", seed=3)
    f2, m2, t2 = twin.pair.simulate_pair(p, rotation_rad=-0.25, scale=0.9, shear=0.05, rng=0)
    assert_allclose(Registration.from_matrix(t2.matrix, f2, m2).frame_angle_deg(), np.degrees(-0.25), atol=1e-6)


def test_assembly_steps(pair):
    _, fixed, moving, truth, strain_ds, xanes = pair
    reg = Registration.from_matrix(truth.matrix, fixed, moving)
    plain = correlate.correlate(strain_ds, xanes, reg, extend_edges=False, match_resolution=False)
    full = correlate.correlate(strain_ds, xanes, reg)
    # one more scan pixel of strain: the stack reaches further towards the particle edge
    assert full.mask.sum() > plain.mask.sum() >= 0.8 * full.mask.sum()
    # X at the strain's resolution; the X-ray-resolution map kept; interpolating coarser samples averages noise
    assert "X_xray" in full and "X_xray" not in plain
    assert 0.3 < full.attrs["X_noise_gain"] < 1.0
    assert_allclose(full.X_sigma.values[full.mask.values],
                    full.attrs["X_noise_gain"] * xanes.X_sigma.values[full.mask.values])
    # the crystal frame is the X-ray frame turned by the crystal angle
    turned = correlate.correlate(strain_ds, xanes, reg, crystal_angle_rad=0.3)
    want = strain.to_crystal_frame(full, 0.3)
    for k in ("exx", "eyy", "exy"):
        assert_allclose(turned[k].values, want[k].values, atol=1e-15, equal_nan=True)
    with pytest.raises(ValueError, match="crystal_angle_rad"):
        correlate.correlate(strain_ds, xanes, reg, crystal_angle_rad=[0.1, 0.2])


def test_x_is_not_clipped_but_x_xray_is(pair):
    # a noisy X may leave [0, 1]; clipping it would bias it where X = 0 and X = 1 domains sit
    _, fixed, moving, truth, strain_ds, xanes = pair
    reg = Registration.from_matrix(truth.matrix, fixed, moving)
    shifted = xanes.assign(X=xanes.X + 0.5)
    full = correlate.correlate(strain_ds, shifted, reg)
    m = full.mask.values
    assert full.X.values[m].max() > 1.2        # the biphasic particle's X = 1 domains, moved to 1.5
    assert full.X_xray.values[m].max() <= 1.0   # kept clipped, for display


def _lag1(img, m):
    v = np.where(m, img - np.nanmean(img[m]), np.nan)
    return np.nanmean(v[:, :-1] * v[:, 1:]) / np.nanvar(v[m])


def test_x_noise_sampler_has_the_gain_and_correlation_of_the_resampling(pair):
    _, fixed, moving, truth, strain_ds, xanes = pair
    reg = Registration.from_matrix(truth.matrix, fixed, moving)
    m = correlate.correlate(strain_ds, xanes, reg).mask.values
    sig = np.full(fixed.shape, 0.1)
    draw = correlate.x_noise_sampler(reg, sig)
    g = np.random.default_rng(0)
    draws = [draw(g) for _ in range(20)]
    std = np.sqrt(np.mean([np.var(d[m]) for d in draws]))
    # what correlate does to white X-ray noise of std 0.1 (5 stacks of ~10^3 correlated pixels: ~5 %)
    seen = []
    for _ in range(5):
        noisy = xanes.assign(X=xanes.X.copy(data=0.5 + 0.1 * g.standard_normal(fixed.shape)))
        st = correlate.correlate(strain_ds, noisy, reg)
        seen.append(np.var(st.X.values[m] - 0.5))
    assert_allclose(std, np.sqrt(np.mean(seen)), rtol=0.1)
    # neighbouring pixels share scan samples: correlated (white X-ray noise: uncorrelated, |r| < 0.1 from
    # 20 draws of ~10^3 pixels)
    assert np.mean([_lag1(d, m) for d in draws]) > 0.3
    white = correlate.x_noise_sampler(reg, sig, match_resolution=False)
    assert abs(np.mean([_lag1(white(g), m) for _ in range(20)])) < 0.1
    with pytest.raises(TypeError, match="registration"):
        correlate.x_noise_sampler("reg", sig)
    with pytest.raises(ValueError, match="X_sigma"):
        correlate.x_noise_sampler(reg, np.ones((3, 3)))


def _pixel_integrated_pair(k: float):
    """A pair whose X-ray X integrates X over each pixel and whose 'strain' is k * X at each scan point.

    Built here from the particle's analytic X (8 x 8 sub-samples per X-ray pixel, point samples at the scan
    positions), so that the stack's strain and X differ only by the operators each went through.
    """
    p = twin.make_particle("blur", batch="biphasic", seed=11, mesh_nrefs=3)
    fixed, moving, truth = twin.pair.simulate_pair(p, rotation_rad=0.4, scale=1.0, mirror=True, fixed_pixel_nm=7.0,
                                                    moving_pixel_nm=16.0, rng=0)
    strain_ds, xanes = twin.pair.simulate_stack_inputs(p, truth, fixed, moving, strain_noise=0.0, x_noise=0.0,
                                                       rng=0)
    fy, fx = fixed.y.values, fixed.x.values
    d = float(fy[1] - fy[0])
    sub = (np.arange(8) + 0.5) / 8 - 0.5
    yy, xx = np.broadcast_arrays(fy[:, None, None, None] + d * sub[None, None, :, None],
                                 fx[None, :, None, None] + d * sub[None, None, None, :])
    inside = p.contains(yy, xx)
    full = inside.sum(axis=(2, 3)) == 64
    x_pix = np.where(full, np.where(inside, p.lithium(yy, xx), 0.0).sum(axis=(2, 3)) / 64, np.nan)
    xanes = xanes.assign(X=xanes.X.copy(data=x_pix), mask=xanes["mask"].copy(data=full))
    ny, nx = moving.shape
    inv = np.linalg.inv(truth.matrix)
    rr, cc = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    fp = np.stack([rr.ravel(), cc.ravel()], 1) @ inv[:2, :2].T + inv[:2, 2]
    x_scan = p.lithium(fy[0] + d * fp[:, 0].reshape(ny, nx), fx[0] + d * fp[:, 1].reshape(ny, nx))
    for name in ("exx", "eyy"):
        strain_ds[name] = strain_ds[name].copy(data=np.where(strain_ds["mask"].values, k * x_scan, np.nan))
    strain_ds["exy"] = strain_ds["exy"] * 0.0   # isotropic: the same in every frame
    return strain_ds, xanes, Registration.from_matrix(truth.matrix, fixed, moving)


def test_resolution_matching_removes_the_smoothing_bias():
    """Strain = k X point by point: regressing the stack's strain on its X must give k.

    X-ray pixels integrate X (a one-pixel box) and the matching samples them linearly at the scan positions
    (a one-pixel triangle); the strain is a point sample. Without giving the strain that resolution, X is the
    smoother map and the regression slope comes out too large (+0.7 % here, the same sign and size as the
    bias the twin study showed); with it, the slope is k to 0.03 %.
    """
    from scipy import ndimage

    k = 0.05
    strain_ds, xanes, reg = _pixel_integrated_pair(k)

    def slope(stack):
        m = ndimage.binary_erosion(stack.mask.values, iterations=3)   # the edges have their own tests
        return np.polyfit(stack.X.values[m], stack.exx.values[m], 1)[0] / k - 1

    matched = correlate.correlate(strain_ds, xanes, reg, extend_edges=False)
    assert_allclose(matched.attrs["strain_kernel"], [0.125, 0.75, 0.125])
    # 0.15 %: five times the 0.03 % measured, well inside the 0.7 % the test must tell apart
    assert abs(slope(matched)) < 1.5e-3, slope(matched)
    plain = correlate.correlate(strain_ds, xanes, reg, extend_edges=False, strain_kernel=False)
    assert slope(plain) > 4e-3, slope(plain)     # measured +0.71 %: the bias the kernel removes
    assert_allclose(plain.attrs["strain_kernel"], [0.0, 1.0, 0.0])
    # only the strain changes: X, its sigma and the mask are those of the full matching
    for k in ("X", "X_sigma", "X_xray", "mask"):
        assert_allclose(plain[k].values, matched[k].values, equal_nan=True, atol=0)
    m = plain.mask.values
    assert not np.allclose(plain.exx.values[m], matched.exx.values[m])


def test_pixel_kernel_is_box_times_triangle():
    """The kernel is a one-pixel box convolved with a one-pixel triangle, sampled at integer offsets."""
    t = np.linspace(-1.5, 1.5, 30001)
    box = (np.abs(t) < 0.5).astype(float)
    tri = np.clip(1 - np.abs(t), 0, None)
    b2 = np.convolve(box, tri, mode="same") * (t[1] - t[0])
    assert_allclose([b2[np.argmin(np.abs(t - o))] for o in (-1, 0, 1)], correlate.XRAY_PIXEL_KERNEL, atol=1e-3)
    # variance 1/12 (box) + 1/6 (triangle) = 1/4 px^2, and it keeps a constant map constant
    assert_allclose(np.sum(correlate.XRAY_PIXEL_KERNEL * np.array([-1, 0, 1]) ** 2), 0.25)
    assert_allclose(correlate.XRAY_PIXEL_KERNEL.sum(), 1.0)
