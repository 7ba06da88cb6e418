"""Every reader and writer of the package: datacubes, energy stacks, result maps, correlated stacks.

One encoding for masks on disk: a boolean variable is stored as ``uint8``
(0 = outside, 1 = inside) with CF attributes ``flag_values = [0, 1]`` and
``flag_meanings = "outside inside"``; every reader here gives it back as
``bool``. Writers write to a temporary file next to the target and move it into
place, so an interrupted write never leaves a half-written file.

4D-STEM datacubes: :func:`open_datacube` returns a ``dask.array.Array`` of shape ``(ny, nx, ky, kx)``
chunked along the scan rows, with whole diffraction patterns in every chunk.
Nothing is read until a chunk is computed, and every chunk opens the file on
its own, so the array can be shipped to the worker processes of a
``dask.distributed`` cluster (an open ``h5py`` handle cannot). Feeding it to
:func:`chemomech.strain.measure_strain` maps strain with memory bounded by the
chunk size.

zarr stores need the optional ``zarr`` package; HDF5 needs ``h5py``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import xarray as xr

from . import _py4dstem, _validate

__all__ = [
    "open_datacube",
    "save_datacube",
    "load_datacube",
    "read_stack",
    "write_cxi",
    "save_netcdf",
    "load_netcdf",
    "save_stack",
    "load_stack",
]

CHUNK_TARGET_MIB = 32.0  # default chunk size, MiB of patterns (whole scan rows)
_HDF5_SUFFIXES = (".h5", ".hdf5", ".emd", ".hdf")
_EV_PER_JOULE = 1.0 / 1.602176634e-19
_MASK_FLAGS = {"flag_values": np.array([0, 1], dtype=np.uint8), "flag_meanings": "outside inside"}


class _HDF5Array:
    """A picklable, read-only array view of one HDF5 dataset; each read opens the file."""

    def __init__(self, path: str, dataset: str, shape: tuple, dtype: np.dtype):
        self.path, self.dataset = path, dataset
        self.shape, self.dtype, self.ndim = tuple(shape), np.dtype(dtype), len(shape)

    def __getitem__(self, key):
        import h5py

        with h5py.File(self.path, "r") as f:
            return f[self.dataset][key]


def _datasets_4d(f) -> list[tuple[str, bool]]:
    """(name, is a py4DSTEM DataCube's data) of every 4-D dataset in an open HDF5 file."""
    import h5py

    found = []

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset) and obj.ndim == 4:
            parent = obj.parent.attrs.get("python_class", b"")
            parent = parent.decode() if isinstance(parent, bytes) else str(parent)
            found.append(("/" + name, parent == "DataCube"))

    f.visititems(visit)
    return found


def _row_chunks(shape: tuple, itemsize: int, rows: int | None) -> tuple:
    ny, nx, dky, dkx = shape
    if rows is None:
        rows = int(CHUNK_TARGET_MIB * 2**20 // max(nx * dky * dkx * itemsize, 1))
    if isinstance(rows, bool) or not isinstance(rows, (int, np.integer)) or rows < 1:
        raise ValueError(f"chunk_rows must be a positive integer (scan rows per chunk), got {rows!r}")
    return (min(max(int(rows), 1), ny), nx, dky, dkx)


def open_datacube(path: str | Path, *, dataset: str | None = None, chunk_rows: int | None = None):
    """Open a 4D-STEM datacube lazily as a dask array chunked along the scan.

    Parameters
    ----------
    path : str or pathlib.Path
        A py4DSTEM/EMD or plain HDF5 file (``.h5``, ``.hdf5``, ``.emd``,
        ``.hdf``) or a zarr store (a ``.zarr`` directory; needs ``zarr``).
    dataset : str, optional
        Path of the 4-D dataset inside an HDF5 file (e.g. ``"/datacube"``) or
        the array inside a zarr group. Default: the only 4-D dataset, or the
        ``DataCube`` of a py4DSTEM file.
    chunk_rows : int, optional
        Scan rows per chunk; default: as many as fit in
        ``CHUNK_TARGET_MIB`` (32 MiB).

    Returns
    -------
    dask.array.Array
        ``(ny, nx, ky, kx)`` in the file's dtype, chunks ``(chunk_rows, nx, ky, kx)``.

    Raises
    ------
    FileNotFoundError
        `path` does not exist.
    ValueError
        Unknown file type, `dataset` missing or not 4-D, no or several 4-D datasets.

    Examples
    --------
    >>> import tempfile, os
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     p = os.path.join(folder, "cube.h5")
    ...     save_datacube(np.ones((4, 3, 16, 16), np.float32), p)
    ...     cube = open_datacube(p, chunk_rows=2)
    ...     print(cube.shape, cube.chunks[0], float(cube.sum().compute()))
    (4, 3, 16, 16) (2, 2) 3072.0
    """
    import dask.array as da

    if not isinstance(path, (str, Path)):
        raise TypeError(f"path must be a str or pathlib.Path, got {type(path).__name__}")
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"path {str(p)!r} does not exist")
    if p.is_dir() or p.suffix.lower() == ".zarr":
        try:
            import zarr
        except ImportError as err:
            raise ImportError(f"path {str(p)!r} looks like a zarr store, but zarr is not installed "
                              "(pip install zarr)") from err
        node = zarr.open(str(p), mode="r")
        if dataset is not None:
            if dataset.strip("/") not in node:
                raise ValueError(f"dataset {dataset!r} not found in zarr store {str(p)!r}")
            node = node[dataset.strip("/")]
        if not hasattr(node, "shape"):
            raise ValueError(f"path {str(p)!r} is a zarr group: pass dataset= (the 4-D array inside it)")
        if len(node.shape) != 4:
            raise ValueError(f"the zarr array in {str(p)!r} must be 4-D (ny, nx, ky, kx), got shape {node.shape}")
        chunks = _row_chunks(node.shape, node.dtype.itemsize, chunk_rows)
        return da.from_zarr(str(p), component=dataset.strip("/") if dataset else None, chunks=chunks)
    if p.suffix.lower() not in _HDF5_SUFFIXES:
        raise ValueError(f"path must be an HDF5 file ({', '.join(_HDF5_SUFFIXES)}) or a .zarr store, "
                         f"got {p.name!r}")
    import h5py

    with h5py.File(p, "r") as f:
        cubes = _datasets_4d(f)
        if dataset is not None:
            if dataset not in f:
                raise ValueError(f"dataset {dataset!r} not found in {str(p)!r}; 4-D datasets there: "
                                 f"{[c[0] for c in cubes]}")
            obj = f[dataset]
            if not isinstance(obj, h5py.Dataset) or obj.ndim != 4:
                raise ValueError(f"dataset {dataset!r} in {str(p)!r} must be a 4-D dataset (ny, nx, ky, kx), "
                                 f"got {getattr(obj, 'shape', 'a group')}")
            name = obj.name
        else:
            p4 = [c[0] for c in cubes if c[1]]
            if len(cubes) == 1 or len(p4) == 1:
                name = cubes[0][0] if len(cubes) == 1 else p4[0]
            else:
                raise ValueError(f"{str(p)!r} holds {len(cubes)} 4-D datasets "
                                 f"({[c[0] for c in cubes]}); pass dataset= to choose one" if cubes else
                                 f"{str(p)!r} holds no 4-D dataset (ny, nx, ky, kx)")
        shape, dtype = f[name].shape, f[name].dtype
    src = _HDF5Array(str(p.resolve()), name, shape, dtype)
    chunks = _row_chunks(shape, dtype.itemsize, chunk_rows)
    return da.from_array(src, chunks=chunks, name=f"open_datacube-{p.name}-{name}-{p.stat().st_mtime_ns}",
                         asarray=True, fancy=False, inline_array=True)  # no shared key: chunks spread over workers


def save_datacube(datacube, path: str | Path, *, dataset: str = "datacube", chunk_rows: int = 1) -> None:
    """Write a ``(ny, nx, ky, kx)`` numpy or dask array to a plain HDF5 dataset, chunk by chunk.

    Parameters
    ----------
    datacube : numpy.ndarray or dask.array.Array
        The data; a dask array is written one chunk at a time (bounded memory).
    path : str or pathlib.Path
        Output file (overwritten).
    dataset : str
        Dataset name.
    chunk_rows : int
        Scan rows per HDF5 storage chunk.
    """
    import h5py

    shape = tuple(datacube.shape)
    if len(shape) != 4:
        raise ValueError(f"datacube must be 4-D (ny, nx, ky, kx), got shape {shape}")
    with h5py.File(path, "w") as f:
        dset = f.create_dataset(dataset, shape=shape, dtype=datacube.dtype,
                                chunks=(min(int(chunk_rows), shape[0]),) + shape[1:])
        step = datacube.chunks[0] if hasattr(datacube, "chunks") and datacube.chunks else (shape[0],)
        start = 0
        for n in step:
            block = datacube[start:start + n]
            dset[start:start + n] = np.asarray(block.compute() if hasattr(block, "compute") else block)
            start += n


def load_datacube(path: str | Path) -> np.ndarray:
    """Read a whole ``(y, x, ky, kx)`` datacube into memory from ``.npy`` or py4DSTEM HDF5.

    For large files use :func:`open_datacube`, which reads lazily.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        if not path.is_file():
            raise ValueError(f"path {str(path)!r} does not exist")
        return _validate.array(np.load(path), name="datacube", ndim=4)
    if suffix in (".h5", ".hdf5", ".emd"):
        return _validate.array(_py4dstem.read_datacube(path), name="datacube", ndim=4)
    raise ValueError(f"path must end in .npy, .h5, .hdf5 or .emd, got {path.name!r}")


# --- NetCDF: results, strain maps, correlated stacks ------------------------------------------


def _atomic_write(path: Path, write) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside `path`, then move it into place."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent or ".")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _encode(ds: xr.Dataset | xr.DataArray) -> xr.Dataset | xr.DataArray:
    """Boolean variables as uint8 with CF flag attributes; list/dict attributes as strings."""
    if isinstance(ds, xr.DataArray):
        return ds
    out = ds.copy()
    for k, v in ds.data_vars.items():
        if v.dtype == bool:
            out[k] = v.astype(np.uint8).assign_attrs({**v.attrs, **_MASK_FLAGS})
    out.attrs = {k: (str(v) if isinstance(v, (list, dict, tuple)) and not _numeric(v) else v)
                 for k, v in ds.attrs.items()}
    return out


def _numeric(v) -> bool:
    try:
        return np.asarray(v).dtype.kind in "iufb"
    except (ValueError, TypeError):
        return False


def _decode(ds: xr.Dataset) -> xr.Dataset:
    """Variables stored with the mask flags back to bool (older files: any variable named ``mask``)."""
    for k, v in ds.data_vars.items():
        if v.attrs.get("flag_meanings") == _MASK_FLAGS["flag_meanings"] or (k == "mask" and v.dtype.kind in "iu"):
            attrs = {a: b for a, b in v.attrs.items() if a not in _MASK_FLAGS}
            ds[k] = v.astype(bool).assign_attrs(attrs)
    return ds


def save_netcdf(ds: xr.Dataset | xr.DataArray, path: str | os.PathLike) -> Path:
    """Write a Dataset (a result map, a strain map) or a DataArray (an energy stack) to NetCDF-4.

    Boolean variables follow the package's mask encoding (see the module
    docstring). Complex data (a ptychographic stack) are written with h5netcdf's
    ``invalid_netcdf=True``: readable by h5py, h5netcdf and xarray, but not
    strict NetCDF-4. The write is atomic.

    Returns
    -------
    pathlib.Path
        The path written.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> ds = xr.Dataset({"X": (("y", "x"), np.zeros((2, 3))), "mask": (("y", "x"), np.eye(2, 3, dtype=bool))})
    >>> p = save_netcdf(ds, pathlib.Path(tempfile.mkdtemp()) / "map.nc")
    >>> load_netcdf(p).mask.values.tolist()
    [[True, False, False], [False, True, False]]
    """
    if not isinstance(ds, (xr.Dataset, xr.DataArray)):
        raise TypeError(f"ds must be an xarray.Dataset or DataArray, got {type(ds).__name__}")
    path = Path(path)
    if path.suffix != ".nc":
        raise ValueError(f"path must end in .nc, got {path.suffix!r}")
    values = ds.data_vars.values() if isinstance(ds, xr.Dataset) else [ds]
    complex_ = any(np.iscomplexobj(v) for v in values)
    enc = _encode(ds)
    return _atomic_write(path, lambda tmp: enc.to_netcdf(tmp, engine="h5netcdf", invalid_netcdf=complex_))


def load_netcdf(path: str | os.PathLike) -> xr.Dataset:
    """Read a Dataset written by :func:`save_netcdf` (masks back to bool), fully into memory."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path {str(path)!r} does not exist")
    return _decode(xr.load_dataset(path, engine="h5netcdf"))


def save_stack(stack: xr.Dataset, path: str | os.PathLike) -> Path:
    """Write a correlated stack (:func:`chemomech.correlate.correlate`) to NetCDF.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> ds = xr.Dataset({k: (("y", "x"), np.zeros((2, 3))) for k in _validate.STACK_VARIABLES[:-1]})
    >>> ds["mask"] = (("y", "x"), np.ones((2, 3), bool))
    >>> p = save_stack(ds, pathlib.Path(tempfile.mkdtemp()) / "stack.nc")
    >>> load_stack(p).mask.dtype
    dtype('bool')
    """
    _validate.correlated_stack(stack, name="stack")
    return save_netcdf(stack, path)


def load_stack(path: str | os.PathLike) -> xr.Dataset:
    """Read a correlated stack written by :func:`save_stack` (mask back to bool)."""
    ds = load_netcdf(path)
    return _validate.correlated_stack(ds, name=f"file {os.fspath(path)!r}")


# --- energy stacks -----------------------------------------------------------------------------


def read_stack(path) -> xr.DataArray:
    """Read an energy stack from a CXI (HDF5) ptychography file or a NetCDF file.

    Parameters
    ----------
    path : str or pathlib.Path
        ``.cxi``/``.h5``: one ``entry_N`` per energy, object in
        ``entry_N/image_1/data`` (2-D, complex), photon energy in
        ``entry_N/instrument_1/source_1/energy`` (joules, as the CXI format
        specifies), optional pixel size ``entry_N/image_1/x_pixel_size`` and
        ``y_pixel_size`` (m); or a single entry with a 3-D ``data`` and one energy
        per frame. ``.nc``: a DataArray (or a Dataset with a ``stack`` variable) on
        ``("energy", "y", "x")``. ``.npz``: a plain stack, arrays ``stack``
        ``(energy, y, x)`` and ``energy`` (eV, increasing); coordinates are pixel indices.

    Returns
    -------
    xarray.DataArray
        ``(energy, y, x)`` sorted by energy, energy in eV, y/x in nm (or px).
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"path {str(path)!r} does not exist")
    if path.suffix in (".nc", ".netcdf"):
        ds = load_netcdf(path)
        da = ds["stack" if "stack" in ds else next(iter(ds.data_vars))]
        return _validate.energy_stack(da.sortby("energy"))
    if path.suffix == ".npz":
        with np.load(path) as z:
            if "stack" not in z or "energy" not in z:
                raise ValueError(f"{path.name} must hold arrays 'stack' (energy, y, x) and 'energy' (eV)")
            data, e = z["stack"], z["energy"].astype(float)
        if data.ndim != 3 or data.shape[0] != e.size:
            raise ValueError(f"{path.name}: stack shape {data.shape} does not match {e.size} energies")
        da = xr.DataArray(data, dims=("energy", "y", "x"), coords={
            "energy": ("energy", e, {"units": "eV", "long_name": "photon energy"})})
        return _validate.energy_stack(da)
    if path.suffix not in (".cxi", ".h5", ".hdf5"):
        raise ValueError(f"path must end in .cxi, .h5, .hdf5, .nc or .npz, got {path.suffix!r}")
    import h5py

    frames, energies, pix = [], [], None
    with h5py.File(path, "r") as f:
        entries = sorted((k for k in f if k.startswith("entry_")), key=lambda k: int(k.split("_")[1]))
        if not entries:
            raise ValueError(f"{path.name} has no entry_N groups; is it a CXI file?")
        for name in entries:
            g = f[name]
            data = g["image_1/data"][()]
            e = np.atleast_1d(g["instrument_1/source_1/energy"][()]).astype(float) * _EV_PER_JOULE
            if data.ndim == 2:
                data = data[None]
            if data.shape[0] != e.size:
                raise ValueError(f"{name}: {data.shape[0]} frames but {e.size} energies")
            frames.append(data)
            energies.append(e)
            if pix is None and "x_pixel_size" in g["image_1"]:
                pix = (float(g["image_1/y_pixel_size"][()]) * 1e9, float(g["image_1/x_pixel_size"][()]) * 1e9)
    data = np.concatenate(frames)
    e = np.concatenate(energies)
    ny, nx = data.shape[1:]
    if pix is None:
        yc, xc, unit = np.arange(ny, dtype=float), np.arange(nx, dtype=float), "px"
    else:
        yc, xc, unit = np.arange(ny) * pix[0], np.arange(nx) * pix[1], "nm"
    da = xr.DataArray(data, dims=("energy", "y", "x"), coords={
        "energy": ("energy", e, {"units": "eV", "long_name": "photon energy"}),
        "y": ("y", yc, {"units": unit, "long_name": "y (image rows)"}),
        "x": ("x", xc, {"units": unit, "long_name": "x (image columns)"})},
        attrs={"units": "1", "long_name": "object transmission", "source": path.name})
    return _validate.energy_stack(da.sortby("energy"))


def write_cxi(stack: xr.DataArray, path) -> Path:
    """Write a complex energy stack as a CXI file, one ``entry_N`` per energy.

    Layout read by :func:`read_stack`: ``entry_N/image_1/data``
    (complex object), ``entry_N/instrument_1/source_1/energy`` (J) and
    ``entry_N/image_1/x_pixel_size``/``y_pixel_size`` (m, when the coordinates are in nm).
    """
    import h5py

    _validate.dims(stack, ("energy", "y", "x"), name="stack")
    path = Path(path)
    energy = stack["energy"].values.astype(float)
    step = {a: float(np.diff(stack[a].values[:2])[0]) * 1e-9 for a in ("y", "x")
            if stack[a].attrs.get("units") == "nm" and stack.sizes[a] > 1}

    def write(tmp):
        with h5py.File(tmp, "w") as f:
            f.create_dataset("cxi_version", data=150)
            for k, ev in enumerate(energy):
                g = f.create_group(f"entry_{k + 1}")
                g.create_dataset("image_1/data", data=np.asarray(stack.values[k]))
                g.create_dataset("instrument_1/source_1/energy", data=ev / _EV_PER_JOULE)
                if len(step) == 2:
                    g.create_dataset("image_1/x_pixel_size", data=step["x"])
                    g.create_dataset("image_1/y_pixel_size", data=step["y"])

    return _atomic_write(path, write)
