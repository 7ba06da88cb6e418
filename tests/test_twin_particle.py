"""Tests of chemomech.twin, the digital twin."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose

from chemomech import materials, twin


@pytest.fixture(scope="module")
def particles():
    return twin.particle_set()


@pytest.fixture(scope="module")
def rendered(particles):
    return {k: p.render() for k, p in particles.items()}


def test_vegard_misfits_from_lattice_constants():
    assert materials.VEGARD_AA == pytest.approx(0.0520, abs=5e-4)
    assert materials.VEGARD_CC == pytest.approx(-0.0200, abs=5e-4)


def test_laws_vanish_at_zero_and_derivatives_match_finite_differences():
    x = np.linspace(0.05, 0.95, 7)
    for law in (twin.vegard_law(), twin.nonlinear_law()):
        assert_allclose(law([0.0]), [[0.0, 0.0]])
        fd = (law(x + 1e-6) - law(x - 1e-6)) / 2e-6
        assert_allclose(law.derivative(x), fd, rtol=1e-6)
    nl = twin.nonlinear_law().derivative([0.0, 1.0])
    assert abs(nl[0, 0] - nl[1, 0]) > 0.01  # really non-linear along a


def test_named_set_is_reproducible_and_batches_differ(rendered):
    again = twin.particle_set()["P3"].render()
    assert_allclose(again.X.values, rendered["P3"].X.values, equal_nan=True)
    assert_allclose(again.exx.values, rendered["P3"].exx.values, equal_nan=True, atol=1e-12)
    mean_x = {k: float(ds.X.where(ds.mask).mean()) for k, ds in rendered.items()}
    assert mean_x["P2"] > 0.75 and mean_x["P5"] < 0.3
    for k in ("P1", "P3", "P4"):
        x = rendered[k].X.values[rendered[k].mask.values]
        assert 0.4 < np.mean(x > 0.5) < 0.6  # ~50 % biphasic
        # domains, not a gradient: most pixels near the two end members, and the
        # histogram density at X = 0.4-0.6 far below the density at the ends
        hist = np.histogram(x, bins=10, range=(0, 1))[0]
        ends = hist[:2].sum() + hist[-2:].sum()
        assert ends / hist.sum() > 0.7
        assert hist[4:6].mean() < 0.25 * ends / 4
    other = twin.particle_set()["P4"].render(shape=rendered["P3"].X.shape)
    assert np.nanmax(np.abs(other.X.values - rendered["P3"].X.values)) > 0.5


def test_render_layout_units_and_nan_outside(rendered):
    ds = rendered["P1"]
    assert ds.X.dims == ("y", "x") and ds.sizes["y"] != ds.sizes["x"]
    assert ds.x.attrs["units"] == "nm" and ds.thickness.attrs["units"] == "nm"
    for v in ("exx", "eyy", "exy", "theta", "X"):
        assert ds[v].attrs["units"] in ("1", "rad")
        assert np.all(np.isnan(ds[v].values[~ds.mask.values]))
        assert np.all(np.isfinite(ds[v].values[ds.mask.values]))
    assert np.all(ds.thickness.values[~ds.mask.values] == 0)
    assert 40 < float(ds.thickness.max()) < 130
    extent = (ds.mask.sum("y") > 0).sum() * ds.attrs["pixel_size_nm"]
    assert 250 < float(extent) < 500  # a few hundred nm


def test_mean_strain_equals_mean_eigenstrain(particles):
    # traction-free body with uniform stiffness: the mean stress vanishes, so the
    # area-averaged total strain equals the area-averaged eigenstrain
    p = particles["P3"]
    ds = p.render(pixel_size_nm=2.0)
    m = ds.mask.values
    for comp in ("xx", "yy", "xy"):
        assert_allclose(np.mean(ds["e" + comp].values[m]), np.mean(ds["eps0_" + comp].values[m]), atol=2e-4)
    # the strain differs from the stress-free lattice (coherency strain)
    assert np.sqrt(np.mean((ds.exx.values[m] - ds.eps0_xx.values[m]) ** 2)) > 2e-3


def test_eigenstrain_follows_the_injected_law_and_crystal_angle():
    law = twin.nonlinear_law()
    p = twin.make_particle("rot", batch="li_rich", seed=5, law=law, crystal_angle_rad=np.pi / 2, mesh_nrefs=3)
    y, x = np.array([0.0, 20.0]), np.array([10.0, -30.0])
    e = p.eigenstrain(y, x)
    lx = law(p.lithium(y, x))
    assert_allclose(e[0], lx[:, 1], atol=1e-15)  # a along image y: exx = eps_cc
    assert_allclose(e[1], lx[:, 0], atol=1e-15)
    assert_allclose(e[2], 0.0, atol=1e-15)


def test_defect_stands_out_in_shear(particles):
    with_d = particles["P1"].render()
    without = twin.particle_set(defect=False)["P1"].render()
    diff = np.abs(with_d.exy - without.exy).where(with_d.mask)
    d = particles["P1"].defect
    near = np.hypot(with_d.y - d.center_nm[0], with_d.x - d.center_nm[1]) < 2 * d.sigma_nm
    assert float(diff.where(near).max()) > 2e-3
    assert float(diff.where(~near).median()) < 2e-4


@pytest.mark.slow
def test_truth_mesh_converges_quadratically(particles):
    conv = twin.mesh_convergence(particles["P3"], levels=(3, 4, 5), reference=6)
    assert np.all(np.diff(conv.rel_error.values) < 0)
    assert conv.attrs["rate"] > 1.7  # P2 elements: O(h^2) in the strain at fixed points
    assert conv.rel_error.values[-1] < 3e-3


def test_bad_input():
    with pytest.raises(ValueError, match="batch"):
        twin.make_particle(batch="medium")
    with pytest.raises(TypeError, match="law"):
        twin.make_particle(law=lambda x: x)
    with pytest.raises(TypeError, match="unknown option"):
        twin.make_particle(pixel=3)
    with pytest.raises(TypeError, match="seed"):
        twin.make_particle(seed=1.5)
    p = twin.make_particle(seed=2, mesh_nrefs=3)
    with pytest.raises(ValueError, match="pixel_size_nm"):
        p.render(pixel_size_nm=-1.0)
    with pytest.raises(ValueError, match="shape"):
        p.render(shape=(10,))
    with pytest.raises(ValueError, match="same shape"):
        p.sample(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="sigma_nm"):
        twin.Defect(center_nm=(0, 0), sigma_nm=0.0)
