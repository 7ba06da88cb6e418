"""Lazy, chunked access to 4D-STEM datacubes on disk (py4DSTEM HDF5, plain HDF5, zarr).

:func:`open_datacube` returns a ``dask.array.Array`` of shape ``(ny, nx, ky, kx)``
chunked along the scan rows, with whole diffraction patterns in every chunk.
Nothing is read until a chunk is computed, and every chunk opens the file on
its own, so the array can be shipped to the worker processes of a
``dask.distributed`` cluster (an open ``h5py`` handle cannot). Feeding it to
:func:`chemomech.strain.measure_strain` maps strain with memory bounded by the
chunk size.

zarr stores need the optional ``zarr`` package; HDF5 needs ``h5py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["open_datacube", "save_datacube"]

CHUNK_TARGET_MIB = 32.0  # default chunk size, MiB of patterns (whole scan rows)
_HDF5_SUFFIXES = (".h5", ".hdf5", ".emd", ".hdf")


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
