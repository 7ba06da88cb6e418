"""Disk-locator tests added after mutation testing (benchmarks/mutation_triage.md)."""

from __future__ import annotations

import numpy as np
import pytest

from chemomech import _diskfind
from test_diskfind import RADIUS_PX, _disk, _template


def test_shot_noise_error_model_matches_the_scatter_of_repeated_disks():
    # details=True propagates Poisson noise (pixel variance = gain x fitted mean, one gain from the residuals)
    # through the estimator rows. On 400 Poisson draws of one disk at a dose where shot noise dominates the
    # model's interpolation error (amp 40 counts/px), the predicted variance of the amplitude and background
    # coefficients must equal their scatter over the draws. A variance from 400 draws has a 7 % standard
    # error; the band 0.75-1.33 is ~4 of them (measured ratios 0.88-1.03 for seeds 1-3).
    rng = np.random.default_rng(1)
    loc = _diskfind.Locator(_template())
    mean = _disk((32, 36), (16.2, 17.7), amp=40.0, bg=2.0)
    n, pad = 400, 16
    imgs = rng.poisson(mean, size=(n, 32, 36)).astype(np.float32)
    padded = np.pad(imgs, ((0, 0), (pad, pad), (pad, pad)))
    *_, det = loc.locate(padded, np.arange(n), np.tile([16.0, 18.0], (n, 1)), pad, np.array([32, 36]),
                         search=2, details=True)
    ratio = np.median(det["coef_var"][:, :2], axis=0) / det["p"][:, :2].var(axis=0)
    assert np.all((ratio > 0.75) & (ratio < 1.33)), ratio


def test_coarse_step_gives_the_nearest_pixel_and_a_parabolic_subpixel_offset():
    # the coarse step's integer maximum plus its parabola offset must already be near the true centre (the fine
    # fit starts there): a parabola through three samples of the ~5 px wide correlation peak is biased by at
    # most 0.03 px at these offsets (noise-free, measured); the tolerance is twice that
    loc = _diskfind.Locator(_template())
    pad = 16
    for offset in ((0.3, -0.2), (-0.35, 0.4), (0.0, 0.25)):
        centre = np.array([16.0, 18.0]) + offset
        img = np.pad(_disk((32, 36), centre)[None].astype(np.float32), ((0, 0), (pad, pad), (pad, pad)))
        for cc in (None, loc.correlate(img)):
            c, frac = loc.coarse(img, np.array([0]), np.array([[16 + pad + 1, 18 + pad - 1]]), 3, cc)
            np.testing.assert_array_equal(c[0] - pad, [16, 18])
            np.testing.assert_allclose(c[0] - pad + frac[0], centre, atol=0.06)


@pytest.mark.parametrize("content", ["uniform disk", "content prior"])
def test_fits_do_not_depend_on_the_intensity_units(content):
    # detector gain / units (counts or normalised intensities, here x 1e-4: residual sums far below 1) change
    # nothing: the position error (px) is the residual variance over the squared amplitude, the SNR a ratio,
    # and the content prior's ridge level noise variance over (prior x amplitude^2) -- all scale-free
    rng = np.random.default_rng(4)
    kw = {} if content == "uniform disk" else dict(content_order=1, slope_prior=0.05, radius=RADIUS_PX)
    loc = _diskfind.Locator(_template(), **kw)
    centres = rng.uniform(-0.5, 0.5, size=(20, 2)) + [16.0, 18.0]
    imgs = np.stack([rng.poisson(_disk((32, 36), c, amp=400.0, bg=2.0)) for c in centres]).astype(np.float32)
    pad = 16
    out = []
    for scale in (1.0, 1e-4):
        padded = np.pad(imgs * np.float32(scale), ((0, 0), (pad, pad), (pad, pad)))
        out.append(loc.locate(padded, np.arange(20), np.tile([16.0, 18.0], (20, 1)), pad, np.array([32, 36]),
                              search=2))
    np.testing.assert_allclose(out[1][0], out[0][0], atol=1e-4)  # float32 data: ~1e-6 px in practice
    np.testing.assert_allclose(out[1][1], out[0][1], rtol=1e-4)  # SNR
    np.testing.assert_allclose(out[1][2], out[0][2], rtol=1e-3)  # position error, px


def test_linear_content_terms_remove_the_bias_of_a_disk_with_an_intensity_gradient():
    # a disk whose intensity varies linearly across it (thickness / excitation gradient): the plain
    # uniform-disk fit is pulled towards the bright side by 0.17/0.25 px (measured), the fit with linear
    # content terms (content_order=1) must stay within 0.1 px (measured 0.05 px; 2x margin)
    yy, xx = np.mgrid[:32, :36]
    c = np.array([16.3, 17.8])
    img = _disk((32, 36), c, amp=100.0, bg=0.0) * (1 + 0.4 * (xx - c[1]) / RADIUS_PX + 0.3 * (yy - c[0]) / RADIUS_PX)
    pad = 16
    padded = np.pad(img[None].astype(np.float32), ((0, 0), (pad, pad), (pad, pad)))
    err = {}
    for order in (0, 1):
        loc = _diskfind.Locator(_template(), content_order=order)
        pos, _, _ = loc.locate(padded, np.array([0]), np.array([[16.0, 18.0]]), pad, np.array([32, 36]), search=2)
        err[order] = float(np.abs(pos[0] - c).max())
    assert err[0] > 0.15  # the case is sensitive to the content model
    assert err[1] < 0.1
