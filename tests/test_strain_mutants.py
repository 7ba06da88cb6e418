"""Strain tests added after mutation testing (benchmarks/mutation_triage.md)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from chemomech import strain
from chemomech.twin import stem4d
from test_diskfind import _disk


def test_numpy_scan_gets_pixel_index_coordinates_on_its_own_dims():
    # a bare (ny, nx, ky, kx) array has no coordinates: the maps get 0..n-1 pixel indices on the scan dims
    # themselves (indexable, no extra dimension)
    sim = stem4d.simulate_uniform(exx=0.01, scan_shape=(3, 5), reference_columns=2, dose=1e5, rng=4)
    res = strain.measure_strain(sim.datacube.values, reference=sim.reference.values)
    assert dict(res.sizes) == {"y": 3, "x": 5}
    assert set(res.indexes) == {"y", "x"} and res.x.dims == ("x",) and res.y.dims == ("y",)
    assert res.y.values.tolist() == [0, 1, 2] and res.x.values.tolist() == [0, 1, 2, 3, 4]
    assert res.y.attrs["units"] == res.x.attrs["units"] == "px"


def test_a_wholly_lost_chunk_changes_nothing_chunking_saturation_included():
    # the chunk size is a memory knob: the result must not depend on it, also when every pattern of one
    # chunk is lost (all NaN) and the detector is clipped (saturation is judged from the per-chunk maxima)
    sim = stem4d.simulate_uniform(exx=0.01, scan_shape=(4, 6), reference_columns=2, dose=1e5, rng=5)
    cube = sim.datacube.values.copy()
    level = np.float32(np.quantile(cube.max(axis=(2, 3)), 0.3))  # the central disk's peak clips in 70 %
    cube = np.minimum(cube, level)
    cube[0, :4] = np.nan  # the first chunk of 4 patterns
    one = strain.measure_strain(cube, reference=sim.reference.values, chunk=24)
    four = strain.measure_strain(cube, reference=sim.reference.values, chunk=4)
    assert one.attrs["n_excluded_detector_pixels"] > 0  # the clipped pixels
    assert four.attrs["n_excluded_detector_pixels"] == one.attrs["n_excluded_detector_pixels"]
    assert four.attrs["n_lost_patterns"] == one.attrs["n_lost_patterns"] == 4
    for k in ("exx", "eyy", "exy", "theta"):
        np.testing.assert_allclose(four[k].values, one[k].values, atol=1e-12, equal_nan=True)


def test_residual_map_is_the_small_rms_misfit_of_the_lattice_fit():
    # 'residual' is the RMS disk-position misfit of each pattern's lattice fit (px): finite wherever the strain
    # is measured, and on clean simulated data well below half a pixel (a disk assigned to the wrong lattice
    # point or a failed fit would give >= 1 px); measured 0.06-0.09 px at this dose
    sim = stem4d.simulate_uniform(exx=0.01, scan_shape=(3, 5), reference_columns=2, dose=1e5, rng=4)
    res = strain.measure_strain(sim.datacube.values, reference=sim.reference.values)
    r = res.residual.values
    assert r.dtype.kind == "f" and res.residual.attrs["units"] == "px"
    assert np.all(np.isfinite(r[res.mask.values])) and np.all((r > 0) & (r < 0.5))


def test_centred_template_has_its_centre_of_mass_on_the_middle_pixel():
    # the disk template is Fourier-shifted so that its centre of mass sits on the middle pixel (the origin of
    # every fitted position); three shift iterations converge to ~3e-5 px (measured; ringing below zero is
    # clipped from the centre of mass), so 1e-4 px
    for off in ((0.3, -0.2), (-0.45, 0.4), (1.2, -0.7)):
        t = _disk((15, 15), (7 + off[0], 7 + off[1]), amp=1.0, bg=0.0)
        c = strain._centred(t)
        np.testing.assert_allclose(np.array(ndimage.center_of_mass(np.clip(c, 0, None))), [7.0, 7.0], atol=1e-4)
        assert c.sum() == pytest.approx(t.sum(), rel=1e-9)  # a shift keeps the integral


def test_a_large_dask_chunk_split_into_batches_gives_the_numpy_result():
    # a dask chunk holding more patterns than `chunk` is fitted in batches; each batch must use its own scan
    # positions for the descan (origin) guess: with a strong descan (12 px across the scan) the result must
    # equal the numpy path's, pattern by pattern
    import dask.array as da

    sim = stem4d.simulate_uniform(exx=0.01, scan_shape=(4, 6), reference_columns=2, dose=1e5, rng=8,
                                  descan_px=12.0)
    cube = sim.datacube.values
    ref = sim.reference.values
    plain = strain.measure_strain(cube, reference=ref, chunk=4)
    lazy = strain.measure_strain(da.from_array(cube, chunks=(4, 6, -1, -1)), reference=ref, chunk=4)
    for k in ("exx", "eyy", "exy", "theta", "origin_ky", "origin_kx"):
        np.testing.assert_allclose(lazy[k].values, plain[k].values, atol=1e-9, equal_nan=True)


def test_virtual_images_and_diagnostics_contract():
    # the default virtual detector sits on the detector centre (documented); the results carry units and names;
    # diagnostics returns the documented products (template: a W x W patch centred like the disks)
    sim = stem4d.simulate_uniform(exx=0.01, scan_shape=(3, 4), reference_columns=2, dose=1e5, rng=2)
    cube = sim.datacube.values
    dky, dkx = cube.shape[2:]
    v = strain.virtual_images(cube, radius_px=6.0)
    w = strain.virtual_images(cube, radius_px=6.0, centre=(dky / 2, dkx / 2))
    np.testing.assert_array_equal(v.bright_field.values, w.bright_field.values)
    assert np.all(v.bright_field.values > 0)
    for name, var in v.data_vars.items():
        assert var.attrs["units"] == "counts" and var.attrs["long_name"], name
    d = strain.diagnostics(cube)
    assert {"mean", "template", "radius", "centre", "origin", "origin_fit", "basis", "flaws"} <= set(d)
    t = d["template"]
    assert t.ndim == 2 and t.shape[0] == t.shape[1] and t.shape[0] % 2 == 1
