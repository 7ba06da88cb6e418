"""measure_strain on imperfect data: lost patterns, dead column, hot and saturated pixels, dark subtraction.

Each flaw is put into a copy of a clean simulated scan (the twin's uniform-disk datacube, 1e5 e- per
pattern). Two readings of issue 18's acceptance ("the result on the unaffected pixels is within 10 % of
the clean result's error"):

- as worded, error vs truth of the flawed run <= 1.1 x error vs truth of the clean run, on the unaffected
  pixels: pixel RMS per component and region medians, pooled over ten scans
  (:func:`test_flawed_error_within_10_percent_of_clean_error`);
- the change of the region medians vs the clean run, on one scan (the first tests): within 10 % of the
  clean error or, since the clean error itself can be ~0 by chance, a statistical floor of twice the
  standard error of the difference of two region medians (strained minus reference, 1.2533 s / sqrt(n)
  each, s the clean pixel scatter). Every strain is relative to the reference median, and any change of
  the patterns or pixels that enter the fits (a lost reference pattern, the pixels of a dead column left
  out of the disks it crosses, the disks left out of the content-prior estimate) re-draws part of the noise
  of both medians; measured over ten scans the change is 0.11-0.39 x the clean error (lost patterns 0.27,
  saturated 0.11, dead column 0.39, hot pixels 0.16, dark subtracted 0.34), so 10 % of the clean error
  alone is below what the lost information allows.
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


# ------------------------------------------------------------------ the masked disk fit, on analytic disks


def _disk(shape, centre, radius=2.4, edge=0.3, amp=100.0, bg=5.0, ss=5):
    """Soft-edged disk integrated over pixels by ss x ss supersampling (independent of the locator)."""
    from scipy.special import erfc

    sub = (np.arange(ss) + 0.5) / ss - 0.5
    y = (np.arange(shape[0])[:, None] + sub[None, :]).ravel()
    x = (np.arange(shape[1])[:, None] + sub[None, :]).ravel()
    rho = np.hypot(y[:, None] - centre[0], x[None, :] - centre[1])
    val = 0.5 * erfc((rho - radius) / (np.sqrt(2) * edge))
    return amp * val.reshape(shape[0], ss, shape[1], ss).mean(axis=(1, 3)) + bg


def _fits(imgs, centres_guess, excluded, locator):
    """(locate on the images as given, masked refit) positions and errors for one disk per image."""
    n, h, w = imgs.shape
    pad, search = locator.half + 2 + 4, 2
    padded = np.pad(imgs.astype(np.float32), ((0, 0), (pad, pad), (pad, pad)))
    cc = np.pad(locator.correlate(imgs.astype(np.float32)), ((0, 0), (pad, pad), (pad, pad)), mode="wrap")
    idx, limit = np.arange(n), np.array([h, w])
    pos, _, perr = locator.locate(padded, idx, centres_guess, pad, limit, search=search, cc=cc)
    pos_m, perr_m, _ = locator.locate_masked(padded, idx, centres_guess, pad, limit, excluded, search=search, cc=cc)
    return pos, perr, pos_m, perr_m


@pytest.mark.parametrize("content", [False, True])
def test_masked_refit_without_exclusions_is_the_locator(content):
    """Nothing excluded: the masked least squares is the locator's own fit (float32 tables: 1e-4 px)."""
    from chemomech import _diskfind

    template = _disk((13, 13), (6.0, 6.0), amp=1.0, bg=0.0)
    loc = (_diskfind.Locator(template, content_order=2, background_order=1, support_radius=5.0, slope_prior=0.05,
                             radius=2.4) if content else _diskfind.Locator(template))
    rng = np.random.default_rng(0)
    centres = rng.uniform(-0.5, 0.5, size=(50, 2)) + [16.0, 18.0]
    imgs = np.stack([rng.poisson(_disk((32, 36), c, amp=60.0, bg=1.0)) for c in centres]).astype(np.float32)
    pos, perr, pos_m, perr_m = _fits(imgs, np.tile([16.0, 18.0], (50, 1)), np.zeros((32, 36), bool), loc)
    np.testing.assert_allclose(pos_m, pos, atol=1e-4)
    np.testing.assert_allclose(perr_m, perr, rtol=1e-3)


def test_masked_refit_through_a_dead_column_is_unbiased():
    """A dead column along a disk edge: zeroed and fitted, the disk moves; left out, it does not.

    300 disks with ~60 counts/px: the shot-noise scatter per disk is ~0.03 px, so the mean error is known to
    ~0.002 px; the bound 0.01 px is the noise-free interpolation error of the tables (tests/test_diskfind.py).
    The zeroed column must move the disks by more than that (the effect the exclusion removes).
    """
    from chemomech import _diskfind

    loc = _diskfind.Locator(_disk((13, 13), (6.0, 6.0), amp=1.0, bg=0.0))
    rng = np.random.default_rng(1)
    centres = rng.uniform(-0.5, 0.5, size=(300, 2)) + [16.0, 18.0]
    imgs = np.stack([rng.poisson(_disk((32, 36), c, amp=60.0, bg=1.0)) for c in centres]).astype(np.float32)
    dead = np.zeros((32, 36), bool)
    dead[:, 20] = True  # ~2 px right of the centres: through the right-hand edge of every disk
    imgs[:, dead] = 0.0
    pos, perr, pos_m, perr_m = _fits(imgs, np.tile([16.0, 18.0], (300, 1)), dead, loc)
    bias_zeroed, bias_masked = np.mean(pos - centres, axis=0), np.mean(pos_m - centres, axis=0)
    assert np.all(np.abs(bias_masked) < 0.01), bias_masked
    assert abs(bias_zeroed[1]) > 0.05, bias_zeroed


# ------------------------------------------------------------------ the acceptance over seeds

#: the first ten seeds measured (none dropped): one scan is too few to tell 10 % of the clean error from the
#: noise of a region median (~4e-5), so errors are pooled over scans
SEEDS = (7, 11, 13, 17, 19, 23, 29, 31, 37, 41)
FLAW_CLASSES = ("lost_patterns", "saturated", "dead_column", "hot_pixels", "dark_subtracted")


def _with_flaw(sim, kind):
    """The scan with one flaw class (as in the tests above), and the scan positions it leaves unaffected."""
    cube = sim.datacube.values.copy()
    use = np.ones(cube.shape[:2], bool)
    if kind == "lost_patterns":
        use[[1, 3, 6, 5], [2, 7, 10, 5]] = False
        cube[~use] = np.nan
    elif kind == "saturated":
        cube = np.minimum(cube, np.float32(np.quantile(cube.max(axis=(2, 3)), 0.3)))
    elif kind == "dead_column":
        cube[..., :, 77] = 0.0
    elif kind == "hot_pixels":
        rng = np.random.default_rng(3)
        for ky, kx in [(20, 30), (100, 41), (70, 90)]:
            cube[..., ky, kx] = rng.poisson(400.0, cube.shape[:2])
    else:
        cube = cube + np.random.default_rng(5).normal(0.0, 0.5, cube.shape).astype(np.float32) - 0.2
    return cube, use


@pytest.fixture(scope="module")
def errors_over_seeds():
    """Per flaw class: (seed, key) errors vs truth of the clean and the flawed run on the unaffected pixels.

    ``median``: region median of the strained region minus truth; ``rms``: pixel RMS over all regions.
    """
    out = {kind: {"median": [], "rms": []} for kind in FLAW_CLASSES}
    for seed in SEEDS:
        sim = stem4d.simulate_uniform(exx=0.01, eyy=-0.005, exy=0.003, theta=0.01, scan_shape=(8, 12),
                                      reference_columns=4, dose=1e5, rng=seed)
        ref = sim.reference.values
        res0 = strain.measure_strain(sim.datacube.values, reference=ref)
        for kind in FLAW_CLASSES:
            cube, use = _with_flaw(sim, kind)
            res = strain.measure_strain(cube, reference=ref)
            sel = use & ~ref
            for k in KEYS:
                truth = sim[k].values
                out[kind]["median"].append([np.nanmedian(r[k].values[sel]) - truth[sel][0] for r in (res0, res)])
                out[kind]["rms"].append([np.sqrt(np.nanmean((r[k].values[use] - truth[use]) ** 2))
                                         for r in (res0, res)])
    return {kind: {m: np.array(v) for m, v in d.items()} for kind, d in out.items()}


@pytest.mark.slow
@pytest.mark.parametrize("kind", FLAW_CLASSES)
def test_flawed_error_within_10_percent_of_clean_error(errors_over_seeds, kind):
    """Issue 18's acceptance as worded: error vs truth on the unaffected pixels <= 1.1 x the clean error.

    Pixel RMS per strain component (mean over the ten scans), and region-median errors as one RMS over
    scans and components (the clean error of one median, 0.5-1e-4, is itself mostly noise). 1.1: the
    issue's 10 %; no statistical allowance is added. Measured (ten scans): pixel RMS ratios <= 1.025,
    median ratios 1.06 (lost), 1.03 (saturated), 1.09 (dead column), 1.05 (hot), 1.02 (dark subtracted)
    (with the lattice fit's outlier rejection in px: 1.05, 0.98, 1.03, 1.02, 1.02).
    """
    e = errors_over_seeds[kind]
    rms = e["rms"].reshape(len(SEEDS), len(KEYS), 2).mean(axis=0)  # (key, clean/flawed)
    assert np.all(rms[:, 1] <= 1.1 * rms[:, 0]), (kind, rms)
    med = np.sqrt(np.mean(e["median"] ** 2, axis=0))
    assert med[1] <= 1.1 * med[0], (kind, med)


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="issue 18 acceptance read as a change vs the clean run not reached: the change "
                   "of the region medians is 0.20-0.66 x the clean error (ten scans), above 0.1; leaving the one lost "
                   "reference pattern out of the clean result's own reference median moves the strained-region "
                   "medians by ~0.4 x the clean error (first order), whatever the method")
@pytest.mark.parametrize("kind", FLAW_CLASSES)
def test_flawed_medians_change_by_at_most_10_percent_of_clean_error(errors_over_seeds, kind):
    """The stricter reading: |flawed - clean| region medians (RMS over scans and components) <= 0.1 x clean error."""
    med = errors_over_seeds[kind]["median"]
    change = np.sqrt(np.mean((med[:, 1] - med[:, 0]) ** 2))
    assert change <= 0.1 * np.sqrt(np.mean(med[:, 0] ** 2)), (kind, change)
