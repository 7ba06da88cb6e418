"""Truth-comparison helpers of chemomech.evaluate that the acceptance tests and benchmarks rely on."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from chemomech import evaluate


def _maps(**fields):
    return xr.Dataset({k: (("y", "x"), np.asarray(v, dtype=float)) for k, v in fields.items()})


def test_region_errors_by_hand():
    # two regions (1: columns 2-3, 2: columns 4-5) besides the reference (columns 0-1); one unmeasured pixel
    region = np.array([[0, 0, 1, 1, 2, 2]] * 2)
    truth = _maps(exx=np.zeros((2, 6)), eyy=np.full((2, 6), 0.01))
    exx = np.array([[9.0, 9.0, 1e-4, 3e-4, -5e-4, np.nan], [9.0, 9.0, 2e-4, 2e-4, -5e-4, -7e-4]])
    eyy = 0.01 + np.array([[0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 4e-4]])
    med, rms = evaluate.region_errors(_maps(exx=exx, eyy=eyy), truth, region, ("exx", "eyy"))
    # region medians of exx: 2e-4 and -5e-4 (the NaN left out); the reference's 9.0 must not count
    assert med == pytest.approx(5e-4)
    expect_rms = np.sqrt(np.mean(np.array([1e-4, 3e-4, -5e-4, 2e-4, 2e-4, -5e-4, -7e-4]) ** 2))
    assert rms == pytest.approx(expect_rms)


def test_region_errors_refuses_bad_labels():
    m = _maps(exx=np.zeros((2, 3)))
    with pytest.raises(ValueError, match="region"):
        evaluate.region_errors(m, m, np.zeros((2, 3), int), ("exx",))
    with pytest.raises(ValueError, match="shape"):
        evaluate.region_errors(m, m, np.ones((3, 3), int), ("exx",))
    with pytest.raises(ValueError, match="integer"):
        evaluate.region_errors(m, m, np.ones((2, 3)), ("exx",))
