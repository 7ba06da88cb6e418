"""measure_strain on imperfect data: lost patterns, dead column, hot and saturated pixels, dark subtraction.

Each flaw is put into a copy of one clean simulated scan (the twin's uniform-disk datacube, 1e5 e- per
pattern); the flawed result is compared with the clean one on the unaffected pixels. Tolerance: the
issue's acceptance, region medians within 10 % of the clean result's error (|median - truth|), with a
statistical floor, since the clean error itself can be ~0 by chance: twice the standard error of
the difference of two region medians (strained minus reference, 1.2533 s / sqrt(n) each, s the
clean pixel scatter). Every strain is relative to the reference median, and any change of the
patterns or disks that enter the fits (a lost reference pattern, the disks dropped next to a dead
column or a saturated pixel) re-draws part of the noise of both medians; measured, merely replacing
one detector column by its neighbour's values moves the medians by up to 4e-5 on this scan.
"""

from __future__ import annotations

import numpy as np
import pytest

from chemomech import strain
from chemomech.twin import stem4d

KEYS = ("exx", "eyy", "exy", "theta")


@pytest.fixture(scope="module")
def clean():
    sim = stem4d.simulate_uniform(exx=0.01, eyy=-0.005, exy=0.003, theta=0.01, scan_shape=(8, 12),
                                  reference_columns=4, dose=1e5, rng=7)
    res = strain.measure_strain(sim.datacube.values, reference=sim.reference.values)
    return sim, res


def _check_medians(res, clean_res, sim, use):
    """Region medians (strained region, unaffected pixels) within 10 % of the clean error (floor 2e-5)."""
    sel = use & ~sim.reference.values
    ref = sim.reference.values
    for k in KEYS:
        truth = float(sim[k].values[sel][0])
        clean_err = abs(np.nanmedian(clean_res[k].values[sel]) - truth)
        se = [1.2533 * np.nanstd(clean_res[k].values[r]) / np.sqrt(r.sum()) for r in (ref, sel)]
        floor = 2 * float(np.hypot(*se))
        diff = abs(np.nanmedian(res[k].values[sel]) - np.nanmedian(clean_res[k].values[sel]))
        assert diff <= max(0.1 * clean_err, floor), (k, diff, clean_err, floor)


@pytest.mark.parametrize("kind", ["nan", "zero"])
def test_lost_patterns_come_back_unmeasured(clean, kind):
    sim, res0 = clean
    cube = sim.datacube.values.copy()
    lost = np.zeros(cube.shape[:2], bool)
    lost[[1, 3, 6], [2, 7, 10]] = True
    lost[5, 5] = True
    cube[lost] = np.nan if kind == "nan" else 0.0
    res = strain.measure_strain(cube, reference=sim.reference.values)
    assert not res.mask.values[lost].any()
    assert np.all(np.isnan(res.exx.values[lost]))
    assert res.attrs["n_lost_patterns"] == lost.sum()
    assert res.mask.values[~lost].all()
    _check_medians(res, res0, sim, ~lost)
    d = strain.diagnostics(cube)
    np.testing.assert_array_equal(d["flaws"]["lost"], lost)


def test_dead_column_hot_and_saturated_pixels_are_found_and_excluded(clean):
    sim, res0 = clean
    cube = sim.datacube.values.copy()
    # saturation: clip at a level that the brightest pixels (central disk) reach in 70 % of the patterns
    level = np.float32(np.quantile(cube.max(axis=(2, 3)), 0.3))
    sat = (cube >= level).any(axis=(0, 1))
    sat[:, 77] = False
    cube = np.minimum(cube, level)
    cube[..., :, 77] = 0.0  # dead detector column (crosses diffracted disks)
    hot = [(20, 30), (100, 41), (70, 90)]  # in the diffuse background, below the clipping level
    rng = np.random.default_rng(3)
    for ky, kx in hot:
        cube[..., ky, kx] = rng.poisson(400.0, cube.shape[:2])
    assert level > 500
    res = strain.measure_strain(cube, reference=sim.reference.values)
    assert res.mask.values.all()
    _check_medians(res, res0, sim, np.ones(cube.shape[:2], bool))
    d = strain.diagnostics(cube)
    fl = d["flaws"]
    # the column wherever signal clearly reaches it (> 100 counts over the scan next to it; the finder
    # needs > 20 expected from the 5 x 5 neighbourhood to call a constant pixel dead)
    lit = sim.datacube.values.sum(axis=(0, 1))[:, 76] > 100
    assert fl["dead"][lit, 77].all() and lit.sum() > 30
    assert all(fl["hot"][ky, kx] for ky, kx in hot)
    assert fl["saturated"][sat].all() and fl["saturation_level"] == pytest.approx(float(level))
    assert res.attrs["n_excluded_detector_pixels"] == int(fl["bad"].sum())


def test_dark_subtracted_data_with_negative_counts_work(clean):
    sim, res0 = clean
    rng = np.random.default_rng(5)
    cube = sim.datacube.values + rng.normal(0.0, 0.5, sim.datacube.shape).astype(np.float32) - 0.2
    res = strain.measure_strain(cube, reference=sim.reference.values)
    assert (cube < 0).mean() > 0.1 and res.mask.values.all()
    _check_medians(res, res0, sim, np.ones(cube.shape[:2], bool))


def test_too_little_left_is_a_clear_error(clean):
    sim, _ = clean
    cube = np.full_like(sim.datacube.values, np.nan)
    with pytest.raises(ValueError, match="every pattern is lost"):
        strain.measure_strain(cube)
    cube = sim.datacube.values.copy()
    cube[..., :, ::2] = 0.0  # half the detector dead: our own clear error, no third-party exception
    with pytest.raises(ValueError, match="too little is left|no pattern had enough disks"):
        strain.measure_strain(cube)
