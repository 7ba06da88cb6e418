"""Tests of chemomech.io (lazy datacubes on disk) and of out-of-core / distributed strain mapping."""

from __future__ import annotations

import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import xarray as xr

from chemomech import _validate, io, strain
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


# --- imperfect files: every reader x every flaw gives one error naming the file ------------------


def _energy_stack():
    g = np.random.default_rng(3)
    e = np.array([700.0, 705.0, 708.0, 712.0, 720.0])
    return xr.DataArray(np.exp(1j * g.random((5, 8, 9))), dims=("energy", "y", "x"),
                        coords={"energy": ("energy", e, {"units": "eV"})}, name="stack")


def _valid(kind: str, folder):
    """A valid file for each reader: (reader, path); the reader forces every read (lazy arrays computed)."""
    cube = np.random.default_rng(0).random((6, 5, 16, 16)).astype(np.float32)
    if kind == "open_datacube.h5":
        io.save_datacube(cube, folder / "c.h5")
        return (lambda p: io.open_datacube(p).compute()), folder / "c.h5"
    if kind == "load_datacube.h5":
        io.save_datacube(cube, folder / "c.h5")
        return io.load_datacube, folder / "c.h5"
    if kind == "load_datacube.npy":
        np.save(folder / "c.npy", cube)
        return io.load_datacube, folder / "c.npy"
    if kind == "read_stack.cxi":
        io.write_cxi(_energy_stack(), folder / "s.cxi")
        return io.read_stack, folder / "s.cxi"
    if kind == "read_stack.nc":
        io.save_netcdf(_energy_stack(), folder / "s.nc")
        return io.read_stack, folder / "s.nc"
    if kind == "read_stack.npz":
        s = _energy_stack()
        np.savez(folder / "s.npz", stack=np.abs(s.values), energy=s.energy.values)
        return io.read_stack, folder / "s.npz"
    if kind == "load_netcdf":
        io.save_netcdf(xr.Dataset({"X": (("y", "x"), np.zeros((40, 50)))}), folder / "m.nc")
        return io.load_netcdf, folder / "m.nc"
    if kind == "load_stack":
        ds = xr.Dataset({k: (("y", "x"), np.zeros((40, 50))) for k in _validate.STACK_VARIABLES[:-1]})
        ds["mask"] = (("y", "x"), np.ones((40, 50), bool))
        io.save_stack(ds, folder / "st.nc")
        return io.load_stack, folder / "st.nc"
    raise AssertionError(kind)


def _wrong_layout(kind: str, folder):
    """A valid container of the right format whose content is not what the reader expects."""
    if kind.endswith((".h5", ".cxi")):
        p = folder / f"layout{Path(kind).suffix}"
        with h5py.File(p, "w") as f:
            f["images"] = np.zeros((4, 16, 16))  # 3-D, no entry_N groups
        return p
    if kind == "load_datacube.npy":
        np.save(folder / "layout.npy", np.zeros((4, 16, 16)))
        return folder / "layout.npy"
    if kind == "read_stack.npz":
        np.savez(folder / "layout.npz", frames=np.zeros((5, 4, 4)))
        return folder / "layout.npz"
    # NetCDF readers: a valid NetCDF-4 file without what each needs
    io.save_netcdf(xr.Dataset({"other": (("a",), np.zeros(3))}), folder / "layout.nc")
    return folder / "layout.nc"


READERS = ["open_datacube.h5", "load_datacube.h5", "load_datacube.npy", "read_stack.cxi", "read_stack.nc",
           "read_stack.npz", "load_stack"]
FLAWS = ["missing", "empty", "truncated", "text", "png", "layout"]
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(64)


# load_netcdf reads any NetCDF Dataset, so it has no "wrong layout" to reject
CASES = [(k, f) for k in READERS + ["load_netcdf"] for f in FLAWS if not (k == "load_netcdf" and f == "layout")]


@pytest.mark.parametrize("kind, flaw", CASES)
def test_every_reader_names_the_file_for_every_flaw(kind, flaw, tmp_path):
    reader, good = _valid(kind, tmp_path)
    reader(good)  # the valid file reads
    suffix = good.suffix
    if flaw == "missing":
        bad = tmp_path / f"missing{suffix}"
    elif flaw == "layout":
        bad = _wrong_layout(kind, tmp_path)
    else:
        bad = tmp_path / f"{flaw}{suffix}"
        data = good.read_bytes()
        bad.write_bytes({"empty": b"", "truncated": data[:len(data) // 2], "png": PNG,
                         "text": b"energy,intensity\n700,1.0\n" * 20}[flaw])
    with pytest.raises((FileNotFoundError, ValueError)) as info:
        reader(bad)
    err = info.value
    assert str(bad) in str(err), str(err)  # names the file
    assert "expected" in str(err) or "must" in str(err), str(err)  # says what was expected
    if flaw == "missing":
        assert isinstance(err, FileNotFoundError) and isinstance(err, ValueError)  # bad input, as in the API
    else:
        assert isinstance(err, io.FileFormatError if flaw != "layout" or kind != "read_stack.nc" else ValueError)
        # no third-party exception escapes on its own: it is chained, never the error raised
        assert type(err).__module__ in ("builtins", "chemomech.io")
    expect = {"empty": "empty (0 bytes)", "truncated": "truncated", "png": "PNG image", "text": "text file"}
    if flaw in expect:
        assert expect[flaw] in str(err), str(err)


def test_truncated_messages_count_bytes(tmp_path):
    np.save(tmp_path / "c.npy", np.zeros((2, 2, 8, 8)))
    data = (tmp_path / "c.npy").read_bytes()
    (tmp_path / "t.npy").write_bytes(data[:200])
    with pytest.raises(io.FileFormatError, match=r"truncated: it has 200 bytes, expected \d+ for the \(2, 2, 8, 8\) "
                                                 r"float64 array"):
        io.load_datacube(tmp_path / "t.npy")
    io.save_datacube(np.zeros((4, 3, 16, 16), np.float32), tmp_path / "c.h5")
    data = (tmp_path / "c.h5").read_bytes()
    (tmp_path / "t.h5").write_bytes(data[:3000])
    with pytest.raises(io.FileFormatError, match=rf"truncated \(3000 of {len(data)} bytes present"):
        io.open_datacube(tmp_path / "t.h5")


def test_lazy_chunk_read_after_the_file_is_cut_names_the_file(tmp_path):
    p = tmp_path / "c.h5"
    io.save_datacube(np.ones((6, 3, 16, 16), np.float32), p, chunk_rows=1)
    lazy = io.open_datacube(p, chunk_rows=2)  # opens fine
    data = p.read_bytes()
    p.write_bytes(data[:len(data) * 2 // 3])  # the file is cut after opening (a copy still in progress)
    with pytest.raises(io.FileFormatError, match=r"c\.h5.*truncated") as info:
        lazy.compute()
    assert info.value.__cause__ is not None  # h5py's message kept as the cause


def test_zarr_flaws_name_the_store(tmp_path):
    zarr = pytest.importorskip("zarr")
    (tmp_path / "empty.zarr").mkdir()
    (tmp_path / "file.zarr").write_text("not a store")
    z = zarr.open(str(tmp_path / "flat.zarr"), mode="w", shape=(4, 16, 16), dtype="f4")
    z[:] = 0
    z = zarr.open(str(tmp_path / "cut.zarr"), mode="w", shape=(4, 3, 8, 8), chunks=(1, 3, 8, 8), dtype="f4")
    z[:] = 1
    chunk = tmp_path / "cut.zarr" / "3.0.0.0"
    chunk.write_bytes(chunk.read_bytes()[:10])  # the last chunk cut short: caught at open time
    for name, what in (("empty.zarr", "cannot read"), ("file.zarr", "not a zarr store"),
                       ("flat.zarr", "must be 4-D"), ("cut.zarr", "cannot read")):
        with pytest.raises(io.FileFormatError, match=what) as info:
            io.open_datacube(tmp_path / name)
        assert str(tmp_path / name) in str(info.value)


def test_writers_are_atomic(tmp_path, monkeypatch):
    p = tmp_path / "c.h5"
    io.save_datacube(np.zeros((2, 2, 8, 8), np.float32), p)
    before = p.read_bytes()

    class Exploding(np.ndarray):
        def __getitem__(self, key):
            raise RuntimeError("detector read failed")

    bad = np.ones((2, 2, 8, 8), np.float32).view(Exploding)
    with pytest.raises(RuntimeError, match="detector read failed"):
        io.save_datacube(bad, p)
    assert p.read_bytes() == before  # the old file is intact
    assert sorted(q.name for q in tmp_path.iterdir()) == ["c.h5"]  # no temporary left behind
    with pytest.raises(FileNotFoundError, match="does not exist"):
        io.save_datacube(np.zeros((2, 2, 8, 8)), tmp_path / "no" / "c.h5")
    assert (p.stat().st_mode & 0o777) == (0o666 & ~io._UMASK)  # not mkstemp's 0600
    monkeypatch.setattr(xr.Dataset, "to_netcdf", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        io.save_netcdf(xr.Dataset({"X": (("y", "x"), np.zeros((2, 2)))}), tmp_path / "m.nc")
    assert not (tmp_path / "m.nc").exists() and sorted(q.name for q in tmp_path.iterdir()) == ["c.h5"]


def test_netcdf3_files_are_read(tmp_path):
    ds = xr.Dataset({"X": (("y", "x"), np.arange(6.0).reshape(2, 3))})
    ds.to_netcdf(tmp_path / "classic.nc", engine="scipy")  # a NetCDF-3 file from elsewhere
    np.testing.assert_array_equal(io.load_netcdf(tmp_path / "classic.nc").X.values, ds.X.values)


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=30, deadline=None)
@given(kind=st.sampled_from(READERS), cut=st.floats(0.0, 0.999))
def test_property_a_file_cut_anywhere_gives_our_error(kind, cut, tmp_path_factory):
    folder = tmp_path_factory.mktemp("cut")
    reader, good = _valid(kind, folder)
    data = good.read_bytes()
    bad = folder / f"cut{good.suffix}"
    bad.write_bytes(data[:int(cut * len(data))])
    with pytest.raises(io.FileFormatError) as info:  # never h5py's, numpy's or zipfile's own exception
        reader(bad)
    assert str(bad) in str(info.value)
