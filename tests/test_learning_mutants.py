"""Learning tests added after mutation testing (benchmarks/mutation_triage.md)."""

from __future__ import annotations

import numpy as np

from chemomech import learning, twin


def test_summary_without_bootstrap_has_nan_errors_and_the_slopes():
    # a model with no bootstrap replicates reports its slopes, and NaN (not missing) errors and intervals
    model = learning.EigenstrainModel.from_law(twin.vegard_law(), 1)
    s = model.summary()
    assert np.isfinite(s.slope.values).all()
    for k in ("coef_se", "slope_se", "slope_low", "slope_high"):
        assert s[k].shape == (2,) + s[k].shape[1:] and np.isnan(s[k].values).all()


def test_monotone_refit_gives_a_one_signed_slope():
    # the constrained re-solve: a free solution whose d eps0/dX changes sign on [0, 1] is replaced by the closest
    # (in the G metric) law whose slope keeps one sign, per component
    degree = 3
    xg = np.linspace(0.0, 1.0, 41)
    b1 = learning.legendre_basis(xg, degree, derivative=1)
    b0 = np.array([0.02, 0.0, 0.03, -0.01, 0.0, 0.0])   # component aa: slope changes sign; cc: negative throughout
    assert (b1 @ b0[:3]).min() < 0 < (b1 @ b0[:3]).max() and (b1 @ b0[3:]).max() < 0
    g = np.eye(6)
    b = learning._monotone(g, g @ b0, b0, degree, np.ones(6))
    slope_aa, slope_cc = b1 @ b[:3], b1 @ b[3:]
    assert slope_aa.min() > -1e-8 or slope_aa.max() < 1e-8
    assert slope_cc.max() < 1e-8
    assert not np.allclose(b, b0)


def test_leave_one_particle_out_cv_is_symmetric_for_copies():
    # three copies of one particle, two with a constant strain offset (a nuisance the offsets absorb): holding out
    # any copy leaves the same training law, so every fold must score the same error, at every degree
    p = twin.make_particle("coarse", batch="biphasic", seed=5, mesh_nrefs=4)
    ds = p.render(pixel_size_nm=12.0)
    strain = ds[["exx", "eyy", "exy"]]
    copies = [strain]
    for d in (-0.002, 0.001):
        c = strain.copy()
        c["eyy"] = c["eyy"] + d
        copies.append(c)
    model = learning.fit_eigenstrain(copies, [ds.X] * 3, max_degree=2, n_boot=0, rng=0)
    assert model.cv.attrs["folds"] == "leave-one-particle-out"
    mse = model.cv.mse.values
    assert mse.shape == (2, 3) and np.all(np.isfinite(mse))
    np.testing.assert_allclose(mse, mse[:, :1] * np.ones((1, 3)), rtol=1e-6)
    # resampling whole particles draws some copies twice and others not at all: every replicate still sees the
    # same law, so the bootstrap spread of the coefficients is nil
    boot = learning.fit_eigenstrain(copies, [ds.X] * 3, degree=1, n_boot=12, bootstrap="particles", rng=0)
    np.testing.assert_allclose(boot.coef_boot, np.broadcast_to(boot.coef, boot.coef_boot.shape), rtol=1e-6,
                               atol=1e-12)
