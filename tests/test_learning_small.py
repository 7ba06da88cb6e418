"""A particle with fewer spatial blocks than cross-validation folds (bug found while writing the contract tests).

Kept out of ``[tool.mutmut]``'s selection until the mutants are regenerated from a library with the fix: the staged
mutants of main 3961f03 still divide by zero here, which would fail the harness's clean pass.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import xarray as xr

from chemomech.learning import fit_eigenstrain


def _small(ny, nx, r):
    yy, xx = np.mgrid[:ny, :nx]
    mask = np.hypot(yy - (ny - 1) / 2, xx - (nx - 1) / 2) < r
    X = np.where(mask, 0.5 + 0.8 * (xx - (nx - 1) / 2) / (nx - 1), np.nan)
    s = xr.Dataset({v: (("y", "x"), k * X) for v, k in (("exx", 0.05), ("eyy", -0.02), ("exy", 0.0))})
    return s, xr.DataArray(X, dims=("y", "x"))


def test_degree_selection_on_a_particle_with_fewer_blocks_than_folds():
    # 96 pixels in 4 blocks of 8 x 8 px: 4 folds of one block each (it used to divide by zero: empty folds)
    s, X = _small(12, 14, 5.6)
    m = fit_eigenstrain(s, X, max_degree=2, n_boot=0, rng=0)
    assert m.cv.sizes["fold"] == 4 and np.isfinite(m.cv.mse.values).all()
    assert m.degree == 1
    np.testing.assert_allclose(m.derivative([0.5])[0], [0.05, -0.02], rtol=0.02)


def test_a_single_block_cannot_be_cross_validated():
    s, X = _small(12, 14, 5.6)
    with pytest.raises(ValueError) as err:
        fit_eigenstrain(s, X, max_degree=2, n_boot=0, block_px=16)
    assert re.fullmatch(r"cross-validation needs at least 2 spatial blocks of block_px pixels, got 1; give degree= "
                        r"or a smaller block_px", str(err.value))
    fit_eigenstrain(s, X, degree=2, n_boot=0, block_px=16)   # a given degree needs no CV
