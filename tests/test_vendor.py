"""Microscope 4D-STEM files (MIB, DM4, MRC, Velox EMD) and STXM/NXstxm/plain-HDF5 energy stacks.

Every file is written by the test, from the formats' published layouts (the DM4, MRC and Velox
writers below are independent of the package; the MIB file comes from ``io.write_mib`` and its bytes
are checked here field by field; the DM4 file is also read by ncempy, a reader independent of
rosettasciio). Reading goes through rosettasciio (the ``vendor`` extra). None of these files comes
from a microscope: they follow the layouts as the readers document them.
"""

from __future__ import annotations

import json
import struct
import sys

import h5py
import numpy as np
import pytest
import xarray as xr

from chemomech import io, strain
from chemomech.twin import stem4d

pytest.importorskip("rsciio", reason="the 'vendor' extra (rosettasciio) is not installed")

KEYS = ("exx", "eyy", "exy", "theta")
# the twin's strain is recovered to within this: per-pixel precision at 1e5 e- is the design target 1e-3 at 1e4 e-
# (chapter 2) over sqrt(10); a median over the 12 strained patterns against the median of the 12 reference ones has
# sigma * sqrt(pi / 2 * (1 / 12 + 1 / 12)) = 1.6e-4, and the tolerance is three times that (as in test_strain.py)
TOL_MEDIAN = 3 * 1e-3 / np.sqrt(10) * np.sqrt(np.pi / 2 * (1 / 12 + 1 / 12))


@pytest.fixture(scope="module")
def sim():
    return stem4d.simulate_uniform(exx=0.01, eyy=-0.004, exy=0.002, scan_shape=(4, 6), reference_columns=3,
                                   dose=1e5, rng=31)


def _counts(sim):
    return np.clip(np.rint(sim.datacube.values), 0, 65535).astype(np.uint16)


# ----------------------------------------------------------------- writers independent of the package


def _write_mrc(cube: np.ndarray, path, *, pixel_A: float = 0.0) -> None:
    """MRC-2014: 1024-byte header (NX, NY, NZ, MODE 6 = uint16, ...; 'MAP ' at byte 208), frames in scan order."""
    ny, nx, dky, dkx = cube.shape
    head = np.zeros(256, "<i4")
    head[0:4] = (dkx, dky, ny * nx, 6)
    head[7:10] = (dkx, dky, ny * nx)  # MX, MY, MZ
    cell = np.array([dkx * pixel_A, dky * pixel_A, ny * nx], "<f4")
    head[10:13] = cell.view("<i4")
    head[13:16] = np.array([90.0, 90.0, 90.0], "<f4").view("<i4")
    head[16:19] = (1, 2, 3)  # MAPC, MAPR, MAPS
    raw = bytearray(head.tobytes())
    raw[208:212] = b"MAP "
    raw[212:216] = bytes([0x44, 0x44, 0, 0])  # little-endian machine stamp
    with open(path, "wb") as f:
        f.write(bytes(raw))
        f.write(cube.astype("<u2").reshape(ny * nx, dky, dkx).tobytes())


def _velox_metadata(scan_shape, pixel_inv_m: float) -> np.ndarray:
    meta = {"Core": {"MetadataDefinitionVersion": "7.9"},
            "Acquisition": {"AcquisitionStartDatetime": {"DateTime": "1767225600"}},
            "Optics": {"AccelerationVoltage": "300000"},
            "Scan": {"ScanSize": {"width": str(scan_shape[1]), "height": str(scan_shape[0])},
                     "FrameTime": "0.001"},
            "Detectors": {"Detector-0": {"DetectorName": "Camera", "DetectorType": "ImagingDetector",
                                         "ExposureTime": "0.001"}},
            "BinaryResult": {"AcquisitionUnit": "CameraImage", "Detector": "Camera", "DetectorIndex": "0",
                             "PixelSize": {"width": repr(pixel_inv_m), "height": repr(pixel_inv_m)},
                             "PixelUnitX": "1/m", "PixelUnitY": "1/m", "Offset": {"x": "0", "y": "0"},
                             "Encoding": "Unsigned", "BitsPerPixel": "16"},
            "Sample": {}, "Stage": {}, "Instrument": {"Manufacturer": "test", "InstrumentModel": "test",
                                                      "InstrumentId": "0"}}
    text = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    out = np.zeros((text.size + 64, 1), np.uint8)
    out[:text.size, 0] = text
    return out


def _write_velox(cube: np.ndarray, path, *, pixel_inv_A: float) -> None:
    """Velox EMD: Version JSON; Data/Image/<id>/Data (ky, kx, frames) and Metadata (JSON bytes, column 0)."""
    ny, nx, dky, dkx = cube.shape
    with h5py.File(path, "w") as f:
        f.create_dataset("Version", data=np.array([json.dumps({"version": "11", "format": "Velox"}).encode()],
                                                  dtype=object), dtype=h5py.string_dtype())
        g = f.create_group("Data/Image/0a1b2c3d4e5f")
        g.create_dataset("Data", data=np.moveaxis(cube.reshape(ny * nx, dky, dkx), 0, 2),
                         chunks=(dky, dkx, 1))
        g.create_dataset("Metadata", data=_velox_metadata((ny, nx), pixel_inv_A * 1e10))


def _dm_tag(name: str, info: list, payload: bytes) -> bytes:
    """A DM4 data tag: type 21, name, 8-byte size, '%%%%', info array (8-byte big-endian), little-endian data."""
    body = b"%%%%" + struct.pack(">q", len(info)) + b"".join(struct.pack(">q", v) for v in info) + payload
    label = name.encode()
    return struct.pack(">bH", 21, len(label)) + label + struct.pack(">q", len(body)) + body


def _dm_group(name: str, tags: list) -> bytes:
    """A DM4 tag group: type 20, name, 8-byte size, sorted, open, 8-byte number of tags, the tags."""
    body = struct.pack(">bbq", 0, 1, len(tags)) + b"".join(tags)
    label = name.encode()
    return struct.pack(">bH", 20, len(label)) + label + struct.pack(">q", len(body)) + body


def _dm_float(name: str, v: float) -> bytes:
    return _dm_tag(name, [6], struct.pack("<f", v))


def _dm_text(name: str, text: str) -> bytes:  # DM strings are arrays of uint16 characters
    return _dm_tag(name, [20, 4, len(text)], np.array([ord(c) for c in text], "<u2").tobytes())


def _write_dm4(cube: np.ndarray, path, *, scan_nm: float, detector_inv_nm: float) -> None:
    """DM4: header (version 4, size, little-endian flag), root group with ImageList / image / ImageData
    {Calibrations, Data, DataType 10 = uint16, Dimensions, PixelDepth}; DM lists the dimensions x first:
    detector x, detector y, scan x, scan y, so the C-order data are (scan y, scan x, detector y, detector x)."""
    ny, nx, dky, dkx = cube.shape
    dims = [(dkx, detector_inv_nm, "1/nm"), (dky, detector_inv_nm, "1/nm"), (nx, scan_nm, "nm"), (ny, scan_nm, "nm")]
    calib = _dm_group("Calibrations", [
        _dm_group("Brightness", [_dm_float("Origin", 0.0), _dm_float("Scale", 1.0), _dm_text("Units", "counts")]),
        _dm_group("Dimension", [_dm_group("", [_dm_float("Origin", 0.0), _dm_float("Scale", s), _dm_text("Units", u)])
                                for _, s, u in dims])])
    image_data = _dm_group("ImageData", [
        calib, _dm_tag("Data", [20, 4, cube.size], np.ascontiguousarray(cube, "<u2").tobytes()),
        _dm_tag("DataType", [3], struct.pack("<i", 10)),
        _dm_group("Dimensions", [_dm_tag("", [5], struct.pack("<I", n)) for n, _, _ in dims]),
        _dm_tag("PixelDepth", [3], struct.pack("<i", 2))])
    image = _dm_group("", [image_data, _dm_group("ImageTags", []), _dm_text("Name", "4D-STEM")])
    root = struct.pack(">bbq", 0, 1, 1) + _dm_group("ImageList", [image])
    with open(path, "wb") as f:
        f.write(struct.pack(">iqi", 4, len(root) + 8, 1) + root + b"\0" * 8)


# ----------------------------------------------------------------- MIB


def test_write_mib_bytes_follow_the_merlin_layout(tmp_path):
    cube = np.arange(2 * 3 * 16 * 20, dtype=float).reshape(2, 3, 16, 20) % 1000
    p = io.write_mib(cube, tmp_path / "a.mib")
    raw = p.read_bytes()
    frame = 384 + 2 * 16 * 20
    assert len(raw) == 6 * frame
    head = raw[:384].decode().split(",")
    assert head[0] == "MQ1" and head[1] == "000001" and head[2] == "00384"
    assert (int(head[4]), int(head[5]), head[6]) == (20, 16, "U16")  # width (kx), height (ky), 16-bit
    assert head[-3].endswith("ns")
    assert raw[5 * frame:5 * frame + 10].decode().startswith("MQ1,000006")
    last = np.frombuffer(raw[5 * frame + 384:], ">u2").reshape(16, 20)
    np.testing.assert_array_equal(last[::-1], cube[1, 2])  # rows stored bottom-up, big-endian
    hdr = p.with_suffix(".hdr").read_text()
    assert "Frames in Acquisition (Number):\t6" in hdr and "Frames per Trigger (Number):\t3" in hdr


def test_mib_reads_lazily_with_calibrations_and_maps_the_same_strain(sim, tmp_path):
    p = io.write_mib(sim.datacube.values, tmp_path / "scan.mib")
    cube = io.read_datacube(p, chunk_rows=1, scan_step_nm=2.5, detector_step=0.0085, detector_units="1/Å")
    assert cube.dims == ("y", "x", "ky", "kx") and type(cube.data).__module__.startswith("dask")
    assert cube.data.chunks[0] == (1, 1, 1, 1) and cube.data.chunks[2:] == ((128,), (128,))
    assert cube.attrs["format"] == "mib" and cube.attrs["calibration"] == "scan: argument; detector: argument"
    np.testing.assert_allclose(cube.x.values, np.arange(6) * 2.5)
    assert cube.kx.attrs["units"] == "1/Å" and np.isclose(np.diff(cube.kx.values)[0], 0.0085)
    np.testing.assert_array_equal(cube.values, _counts(sim))
    lazy = strain.measure_strain(cube, reference=sim.reference.values)
    eager = strain.measure_strain(_counts(sim), reference=sim.reference.values)
    for k in KEYS:  # the same numbers: the lazy path reads the same patterns
        np.testing.assert_allclose(lazy[k].values, eager[k].values, rtol=0, atol=1e-9)
        err = np.nanmedian(lazy[k].values[~sim.reference.values]) - float(sim[k].values[0, -1])
        assert abs(err) < TOL_MEDIAN, (k, err)
    np.testing.assert_allclose(lazy.x.values, np.arange(6) * 2.5)  # scan coordinates carried to the maps


def test_mib_without_hdr_needs_the_scan_shape(sim, tmp_path):
    p = io.write_mib(sim.datacube.values, tmp_path / "scan.mib", hdr=False)
    with pytest.raises(io.FileFormatError, match="scan_shape") as err:
        io.read_datacube(p)
    assert str(p) in str(err.value)
    cube = io.read_datacube(p, scan_shape=(4, 6))
    np.testing.assert_array_equal(cube.values, _counts(sim))
    assert io.open_datacube(p, scan_shape=(4, 6)).shape == (4, 6, 128, 128)  # the same entry point


def test_bad_mib_files_name_the_file(sim, tmp_path):
    with pytest.raises(io.MissingFileError, match="nothere.mib"):
        io.read_datacube(tmp_path / "nothere.mib")
    text = tmp_path / "notes.mib"
    text.write_text("not a detector file")
    with pytest.raises(io.FileFormatError, match="notes.mib"):
        io.read_datacube(text, scan_shape=(1, 1))
    p = io.write_mib(sim.datacube.values, tmp_path / "cut.mib")
    raw = p.read_bytes()
    p.write_bytes(raw[:len(raw) * 3 // 4])  # an interrupted acquisition: the last row is missing
    with pytest.raises(io.FileFormatError, match="cut.mib"):
        io.read_datacube(p, scan_shape=(4, 6))
    with pytest.raises(io.FileFormatError, match="cut.mib.*truncated"):
        io.read_datacube(p)  # the .hdr says 24 frames
    assert io.read_datacube(p, scan_shape=(3, 6)).shape[:2] == (3, 6)  # the complete rows, when asked for
    empty = tmp_path / "empty.mib"
    empty.write_bytes(b"")
    with pytest.raises(io.FileFormatError, match="empty"):
        io.read_datacube(empty)


def test_missing_extra_raises_import_error_naming_it(sim, tmp_path, monkeypatch):
    p = io.write_mib(sim.datacube.values[:1, :2], tmp_path / "s.mib")
    monkeypatch.setitem(sys.modules, "rsciio.quantumdetector", None)  # import of the plugin fails
    with pytest.raises(ImportError, match=r"chemomech\[vendor\]"):
        io.read_datacube(p)


# ----------------------------------------------------------------- MRC, Velox EMD, DM4


def test_mrc_frames_read_as_a_scan(sim, tmp_path):
    p = tmp_path / "scan.mrc"
    _write_mrc(_counts(sim), p)
    with pytest.raises(io.FileFormatError, match="scan_shape"):
        io.read_datacube(p)  # an MRC stack of frames does not say its scan shape
    cube = io.read_datacube(p, scan_shape=(4, 6), detector_step=0.05)
    assert cube.attrs["format"] == "mrc" and cube.kx.attrs["units"] == "mrad"
    np.testing.assert_array_equal(cube.values, _counts(sim))
    assert type(cube.data).__module__.startswith("dask")


def test_velox_emd_scan_shape_and_detector_calibration_from_the_file(sim, tmp_path):
    p = tmp_path / "scan.emd"
    _write_velox(_counts(sim), p, pixel_inv_A=0.0085)
    assert io.is_velox_emd(p)
    cube = io.read_datacube(p, chunk_rows=2)
    assert cube.attrs["format"] == "velox-emd" and cube.attrs["calibration"] == "scan: none; detector: file"
    assert cube.shape == (4, 6, 128, 128) and cube.data.chunks[0] == (2, 2)
    assert cube.kx.attrs["units"] == "1/Å"
    np.testing.assert_allclose(np.diff(cube.kx.values)[0], 0.0085, rtol=1e-6)
    np.testing.assert_array_equal(cube.values, _counts(sim))
    # a Berkeley EMD (the package's own HDF5 layout) with the same suffix still reads through open_datacube
    own = io.save_datacube(_counts(sim), tmp_path / "own.emd")
    assert not io.is_velox_emd(own) and io.read_datacube(own).attrs["format"] == "hdf5"


def test_velox_emd_with_the_wrong_frame_count_names_the_file(sim, tmp_path):
    p = tmp_path / "short.emd"
    _write_velox(_counts(sim)[:, :5], p, pixel_inv_A=0.0085)
    with h5py.File(p, "r+") as f:  # the metadata still says 4 x 6
        g = f["Data/Image/0a1b2c3d4e5f"]
        del g["Metadata"]
        g.create_dataset("Metadata", data=_velox_metadata((4, 6), 0.0085e10))
    with pytest.raises(io.FileFormatError, match="short.emd"):
        io.read_datacube(p)


def test_dm4_read_with_its_calibrations(sim, tmp_path):
    p = tmp_path / "scan.dm4"
    _write_dm4(_counts(sim), p, scan_nm=2.5, detector_inv_nm=0.085)
    # the hand-made file is what an independent DM reader (ncempy) sees too: the same data and calibrations
    ncempy_dm = pytest.importorskip("ncempy.io.dm")
    with ncempy_dm.fileDM(str(p)) as f:
        other = f.getDataset(0)
    np.testing.assert_array_equal(other["data"], _counts(sim))
    assert other["pixelUnit"] == ["nm", "nm", "1/nm", "1/nm"]
    cube = io.read_datacube(p, chunk_rows=2)
    assert cube.attrs["format"] == "dm4" and cube.attrs["calibration"] == "scan: file; detector: file"
    assert cube.data.chunks[0] == (2, 2) and cube.data.chunks[2:] == ((128,), (128,))
    np.testing.assert_allclose(np.diff(cube.x.values), 2.5)
    assert cube.kx.attrs["units"] == "1/Å"
    np.testing.assert_allclose(np.diff(cube.kx.values)[0], 0.0085, rtol=1e-6)  # float32 in the file
    np.testing.assert_array_equal(cube.values, _counts(sim))


# ----------------------------------------------------------------- energy stacks


def _write_nxstxm(path, data, energy, ys_um, xs_um, *, energy_units="eV"):
    with h5py.File(path, "w") as f:
        entry = f.create_group("entry1")
        entry.attrs["NX_class"] = "NXentry"
        entry.attrs["default"] = "counter0"
        entry.create_dataset("definition", data="NXstxm")
        entry.create_dataset("start_time", data="2026-01-01T00:00:00")
        g = entry.create_group("counter0")
        g.attrs.update({"NX_class": "NXdata", "signal": "data", "axes": ["energy", "sample_y", "sample_x"]})
        g.create_dataset("data", data=data)
        g.create_dataset("energy", data=energy).attrs["units"] = energy_units
        g.create_dataset("sample_y", data=ys_um).attrs["units"] = "um"
        g.create_dataset("sample_x", data=xs_um).attrs["units"] = "um"
        g.create_dataset("stxm_scan_type", data="sample image stack")


def test_nxstxm_stack_energies_in_ev_positions_in_nm(tmp_path):
    rng = np.random.default_rng(7)
    energy = np.array([708.0, 704.0, 710.5, 712.0, 706.0])  # not sorted, as a scan list may be
    data = rng.poisson(1000, (5, 5, 6)).astype(np.float32)
    _write_nxstxm(tmp_path / "s.nxs", data, energy / 1000, np.arange(5) * 0.04, np.arange(6) * 0.04,
                  energy_units="keV")
    stack = io.read_stack(tmp_path / "s.nxs")
    assert stack.dims == ("energy", "y", "x") and stack.energy.attrs["units"] == "eV"
    np.testing.assert_allclose(stack.energy.values, np.sort(energy))
    np.testing.assert_allclose(stack.x.values, np.arange(6) * 40.0)
    assert stack.x.attrs["units"] == "nm"
    np.testing.assert_array_equal(stack.values, data[np.argsort(energy)])


def test_plain_hdf5_stack_and_bad_stacks(tmp_path):
    data = (np.random.default_rng(8).random((5, 4, 5)) + 0.5).astype(np.float32)
    e = [704.0, 706.0, 708.0, 710.0, 712.0]
    with h5py.File(tmp_path / "p.h5", "w") as f:
        f.create_dataset("stack", data=data)
        f.create_dataset("energy", data=e)
    stack = io.read_stack(tmp_path / "p.h5")
    np.testing.assert_array_equal(stack.values, data)
    assert stack.energy.values.tolist() == e and stack.x.attrs["units"] == "px"
    with h5py.File(tmp_path / "j.h5", "w") as f:  # energies in joules, as the CXI convention has them
        f.create_dataset("data", data=data)
        f.create_dataset("energy", data=np.array(e) * 1.602176634e-19).attrs["units"] = "J"
    np.testing.assert_allclose(io.read_stack(tmp_path / "j.h5").energy.values, e)
    with h5py.File(tmp_path / "n.h5", "w") as f:
        f.create_dataset("stack", data=data)
    with pytest.raises(io.FileFormatError, match="n.h5"):
        io.read_stack(tmp_path / "n.h5")  # no energies
    with h5py.File(tmp_path / "m.h5", "w") as f:
        f.create_dataset("stack", data=data)
        f.create_dataset("energy", data=e[:4])
    with pytest.raises(io.FileFormatError, match="m.h5"):
        io.read_stack(tmp_path / "m.h5")  # one frame without an energy
    _write_nxstxm(tmp_path / "b.nxs", data, e, np.arange(4), np.arange(5), energy_units="furlong")
    with pytest.raises(io.FileFormatError, match="b.nxs"):
        io.read_stack(tmp_path / "b.nxs")


def test_nxstxm_stack_feeds_map_lithium_shape(tmp_path):
    # the reader's output is a valid stack for the next stage (layout only; accuracy is chapter 3's)
    energy = np.linspace(700, 720, 8)
    data = np.full((8, 6, 7), 1000.0)
    _write_nxstxm(tmp_path / "s.nxs", data, energy, np.arange(6) * 0.05, np.arange(7) * 0.05)
    stack = io.read_stack(tmp_path / "s.nxs")
    assert isinstance(stack, xr.DataArray) and stack.sizes == {"energy": 8, "y": 6, "x": 7}


def test_lazy_tasks_are_split_and_batched_without_changing_the_numbers(sim, monkeypatch):
    # one dask chunk holding the whole scan is split into tasks of <= TASK_MIB of float32 patterns, each
    # worked through in batches of <= BATCH_MIB; memory is bounded by these, the result is the same
    import dask.array as da

    cube = _counts(sim)
    eager = strain.measure_strain(cube, reference=sim.reference.values)
    pattern_mib = 4 * 128 * 128 / 2**20
    monkeypatch.setattr(strain._Source, "TASK_MIB", 5 * pattern_mib)   # 5 patterns per task: 24 = 5+5+5+5+4
    monkeypatch.setattr(strain._Source, "BATCH_MIB", 2 * pattern_mib)  # 2 patterns per batch
    src = strain._Source(da.from_array(cube, chunks=cube.shape), 256)
    assert src.pats.chunks[0] == (5, 5, 5, 5, 4) and src.batch == 2
    lazy = strain.measure_strain(da.from_array(cube, chunks=cube.shape), reference=sim.reference.values)
    for k in KEYS:
        np.testing.assert_allclose(lazy[k].values, eager[k].values, rtol=0, atol=1e-9)


def test_threads_can_share_a_locator():
    # the lazy path runs tasks in threads that share one disk locator: a call must keep nothing of its own on
    # it (a locator that kept its last fit SNRs once let a task of the "all disks" stage read another task's
    # "inner disks" values: a shape error, or silently wrong disks when the shapes agree)
    from concurrent.futures import ThreadPoolExecutor

    from chemomech import _diskfind

    yy, xx = np.mgrid[-6:7, -6:7]
    loc = _diskfind.Locator((np.hypot(yy, xx) <= 4).astype(float))
    gen = np.random.default_rng(5)
    pad = 12
    jobs = []
    for n in (2000, 5000):   # two call sizes, as the inner-disk and all-disk stages have; large enough that
        # numpy releases the GIL inside a call, so the threads really interleave
        centres = gen.uniform(14, 26, (n, 2))
        img = (np.hypot(*(np.mgrid[:40, :40][None] - centres[:, :, None, None]).transpose(1, 0, 2, 3)) <= 4) * 100.0
        img = gen.poisson(img + 2.0).astype(np.float32)
        jobs.append((np.pad(img, ((0, 0), (pad, pad), (pad, pad))), np.arange(n), centres.round()))

    def run(k):
        padded, idx, guess = jobs[k % 2]
        return k % 2, loc.locate(padded, idx, guess, pad, np.array([40, 40]), search=3, fit_snr=True)

    alone = [run(k)[1] for k in range(2)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)   # switch threads as often as possible: shared state shows at once
    try:
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(run, range(120)))
    finally:
        sys.setswitchinterval(interval)
    for k, out in results:
        for a, b in zip(out, alone[k]):
            np.testing.assert_array_equal(a, b)
