"""Tests of chemomech.io (lazy datacubes on disk) and of out-of-core / distributed strain mapping."""

from __future__ import annotations

import warnings

import h5py
import numpy as np
import pytest

from chemomech import io, strain
from chemomech.twin import stem4d

KEYS = ("exx", "eyy", "exy", "theta")


@pytest.fixture(scope="module")
def sim():
    return stem4d.simulate_uniform(exx=0.01, eyy=-0.004, exy=0.002, scan_shape=(5, 7), reference_columns=3,
                                   dose=1e5, rng=21)


def test_plain_hdf5_roundtrip_is_lazy_and_chunked(tmp_path):
    cube = np.random.default_rng(0).random((5, 3, 16, 20)).astype(np.float32)  # non-square everything
    io.save_datacube(cube, tmp_path / "c.h5", dataset="scan/cube")
    lazy = io.open_datacube(tmp_path / "c.h5", chunk_rows=2)
    assert lazy.chunks[0] == (2, 2, 1) and lazy.chunks[1:] == ((3,), (16,), (20,))
    np.testing.assert_array_equal(lazy.compute(), cube)
    np.testing.assert_array_equal(io.open_datacube(tmp_path / "c.h5", dataset="/scan/cube")[3, 1].compute(),
                                  cube[3, 1])


def test_py4dstem_file_found_without_dataset_name(tmp_path):
    from chemomech import _py4dstem, io

    cube = np.arange(2 * 3 * 16 * 16, dtype=np.float32).reshape(2, 3, 16, 16)
    _py4dstem.save_datacube(cube, tmp_path / "p4.h5")
    np.testing.assert_array_equal(io.open_datacube(tmp_path / "p4.h5").compute(), cube)


def test_bad_paths_and_datasets_raise(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        io.open_datacube(tmp_path / "missing.h5")
    (tmp_path / "x.tif").write_bytes(b"")
    with pytest.raises(ValueError, match="HDF5"):
        io.open_datacube(tmp_path / "x.tif")
    with h5py.File(tmp_path / "two.h5", "w") as f:
        f["a"] = np.zeros((2, 2, 16, 16))
        f["b"] = np.zeros((2, 2, 16, 16))
        f["flat"] = np.zeros((4, 16, 16))
    with pytest.raises(ValueError, match="pass dataset="):
        io.open_datacube(tmp_path / "two.h5")
    with pytest.raises(ValueError, match="'/nope' not found"):
        io.open_datacube(tmp_path / "two.h5", dataset="/nope")
    with pytest.raises(ValueError, match="must be a 4-D dataset"):
        io.open_datacube(tmp_path / "two.h5", dataset="flat")
    with pytest.raises(ValueError, match="chunk_rows"):
        io.open_datacube(tmp_path / "two.h5", dataset="a", chunk_rows=0)
    assert io.open_datacube(tmp_path / "two.h5", dataset="b").shape == (2, 2, 16, 16)


def test_zarr_store_if_available(tmp_path):
    zarr = pytest.importorskip("zarr")
    cube = np.random.default_rng(2).random((4, 3, 16, 16)).astype(np.float32)
    z = zarr.open(str(tmp_path / "c.zarr"), mode="w", shape=cube.shape, dtype=cube.dtype)
    z[:] = cube
    lazy = io.open_datacube(tmp_path / "c.zarr", chunk_rows=3)
    assert lazy.chunks[0] == (3, 1)
    np.testing.assert_array_equal(lazy.compute(), cube)


def test_dask_input_wrong_ndim_raises():
    import dask.array as da

    with pytest.raises(ValueError, match="datacube must be 4-D"):
        strain.measure_strain(da.zeros((4, 32, 32), chunks=2))


def test_chunked_file_equals_in_memory(sim, tmp_path):
    ref = sim.reference.values
    base = strain.measure_strain(sim.datacube.values, reference=ref)
    io.save_datacube(sim.datacube.values.astype(np.float32), tmp_path / "cube.h5")
    lazy = io.open_datacube(tmp_path / "cube.h5", chunk_rows=2)  # chunks of 2, 2 and 1 scan rows
    res = strain.measure_strain(lazy, reference=ref)
    for k in KEYS:
        np.testing.assert_allclose(res[k].values, base[k].values, rtol=0, atol=1e-9)  # float rounding only
    assert res.attrs["origin_mean_ky_kx_px"] == pytest.approx(base.attrs["origin_mean_ky_kx_px"], abs=1e-9)
    np.testing.assert_array_equal(res.mask.values, base.mask.values)
    small_batches = strain.measure_strain(sim.datacube.values, reference=ref, chunk=4)  # numpy, 9 batches
    np.testing.assert_allclose(small_batches.exx.values, base.exx.values, rtol=0, atol=1e-9)


def test_progress_bar_over_chunks(sim, tmp_path, capsys):
    io.save_datacube(sim.datacube.values.astype(np.float32), tmp_path / "cube.h5")
    strain.measure_strain(io.open_datacube(tmp_path / "cube.h5", chunk_rows=3), progress=True)
    err = capsys.readouterr().err
    # 5 scan rows in chunks of 3 -> 2 chunks per pass
    assert "disks and lattices" in err and "2/2" in err and "3/2" not in err


@pytest.mark.slow
def test_distributed_two_workers_equal_in_memory(sim, tmp_path):
    from distributed import Client, LocalCluster

    ref = sim.reference.values
    base = strain.measure_strain(sim.datacube.values, reference=ref)
    io.save_datacube(sim.datacube.values.astype(np.float32), tmp_path / "cube.h5")
    lazy = io.open_datacube(tmp_path / "cube.h5", chunk_rows=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cluster start-up chatter
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
                Client(cluster) as client:
            res = strain.measure_strain(lazy, reference=ref)
            assert len(client.scheduler_info()["workers"]) == 2
    for k in KEYS:
        np.testing.assert_allclose(res[k].values, base[k].values, rtol=0, atol=1e-9)
