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

Microscope files: :func:`read_datacube` opens Merlin ``.mib``, DigitalMicrograph ``.dm3``/``.dm4``,
``.mrc`` and Velox ``.emd`` 4D-STEM files through rosettasciio (the optional ``vendor`` extra,
imported only there) as a dask-backed ``("y", "x", "ky", "kx")`` DataArray with the scan step (nm)
and detector pixel (mrad or 1/Å) that the file carries, or that the caller gives;
:func:`open_datacube` returns the same data as a plain dask array. Energy stacks
(:func:`read_stack`) come from CXI ptychography files, NeXus NXstxm files, plain HDF5, NetCDF and
``.npz``.

Files that cannot be read: every reader raises :class:`MissingFileError` (a
``FileNotFoundError`` that is also a ``ValueError``, as bad input is in this
package) for a missing file and :class:`FileFormatError` (a ``ValueError``) for one that is
empty, truncated, of another format (a text file or an image renamed ``.h5``)
or laid out differently than the reader expects (no 4-D dataset, no
``entry_N/image_1/data``, a missing variable). The message names the file and
says what was expected; the underlying library's exception is chained as
``__cause__``. Chunks of a lazy datacube that fail to read later (a file cut
short after it was opened) raise the same error, naming the file.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import xarray as xr

from . import _validate

__all__ = [
    "FileFormatError",
    "MissingFileError",
    "open_datacube",
    "read_datacube",
    "is_velox_emd",
    "write_mib",
    "save_datacube",
    "load_datacube",
    "read_stack",
    "write_cxi",
    "save_netcdf",
    "load_netcdf",
    "save_stack",
    "load_stack",
    "read_published_stack",
    "read_stacks",
]

CHUNK_TARGET_MIB = 32.0  # default chunk size, MiB of patterns (whole scan rows)
_HDF5_SUFFIXES = (".h5", ".hdf5", ".emd", ".hdf")
_EV_PER_JOULE = 1.0 / 1.602176634e-19
_MASK_FLAGS = {"flag_values": np.array([0, 1], dtype=np.uint8), "flag_meanings": "outside inside"}
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once: files written atomically get the permissions a plain open() would give


class FileFormatError(ValueError):
    """A file exists but cannot be read as what the reader expects.

    Raised for empty, truncated, wrong-format and wrong-layout files; the
    message names the file and says what was expected, and the underlying
    library error (h5py, netCDF, numpy, zarr), if any, is chained as
    ``__cause__``. A subclass of ``ValueError``.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "notes.h5"
    >>> _ = p.write_text("not a datacube")
    >>> try:
    ...     open_datacube(p)
    ... except FileFormatError as err:
    ...     print(str(p) in str(err), "not an HDF5 file" in str(err), "looks like a text file" in str(err))
    True True True
    """


class MissingFileError(FileNotFoundError, ValueError):
    """A file to read does not exist.

    Both a ``FileNotFoundError`` and, as any bad input to this package, a
    ``ValueError``; the message names the file and says what was expected there.
    """


def _looks_like(head: bytes) -> str:
    """A guess at what a file is from its first bytes, for error messages."""
    known = ((_HDF5_SIGNATURE, "an HDF5 file"), (b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"),
             (b"II*\x00", "a TIFF image"), (b"MM\x00*", "a TIFF image"), (b"\x93NUMPY", "a numpy .npy file"),
             (b"PK\x03\x04", "a zip archive (.npz?)"), (b"PK\x05\x06", "an empty zip archive"),
             (b"CDF\x01", "a NetCDF-3 file"), (b"CDF\x02", "a NetCDF-3 file"), (b"MATLAB", "a MATLAB file"))
    for sig, what in known:
        if head.startswith(sig):
            return what
    try:
        head.decode("utf-8")
        return "a text file"
    except UnicodeDecodeError:
        return f"unknown binary data (first bytes {head[:8].hex(' ')})"


def _hdf5_signature(p: Path, size: int) -> bool:
    """True if the HDF5 signature sits at byte 0, 512, 1024, ... (after an optional user block)."""
    with open(p, "rb") as f:
        offset = 0
        while offset + 8 <= size:
            f.seek(offset)
            if f.read(8) == _HDF5_SIGNATURE:
                return True
            offset = 512 if offset == 0 else offset * 2
    return False


def _check_file(path: Path, *, expected: str, signature: str | None = None) -> Path:
    """Raise MissingFileError (missing) or FileFormatError (a folder, empty, no signature of the format).

    `signature` is one of ``"hdf5"``, ``"npy"``, ``"npz"``, ``"netcdf"`` or None (no check).
    """
    p = Path(path)
    if not p.exists():
        raise MissingFileError(f"file {str(p)!r} does not exist (expected {expected})")
    if not p.is_file():
        raise FileFormatError(f"{str(p)!r} is a folder, not a file; expected {expected}")
    size = p.stat().st_size
    if size == 0:
        raise FileFormatError(f"file {str(p)!r} is empty (0 bytes); expected {expected}")
    with open(p, "rb") as f:
        head = f.read(64)
    ok = {"hdf5": lambda: _hdf5_signature(p, size), "npy": lambda: head.startswith(b"\x93NUMPY"),
          "npz": lambda: head[:4] in (b"PK\x03\x04", b"PK\x05\x06"),
          "netcdf": lambda: head.startswith(b"CDF") or _hdf5_signature(p, size)}
    if signature is not None and not ok[signature]():
        kind = {"hdf5": "an HDF5 file", "npy": "a numpy .npy file", "npz": "a numpy .npz (zip) file",
                "netcdf": "a NetCDF file"}[signature]
        raise FileFormatError(f"file {str(p)!r} is not {kind}: it looks like {_looks_like(head)}; "
                              f"expected {expected}")
    return p


def _reason(err: BaseException) -> str:
    """The library's message, made readable for the two common HDF5 failures."""
    msg = str(err) or type(err).__name__
    if "truncated file" in msg:
        import re

        m = re.search(r"eof = (\d+).*stored_eof = (\d+)", msg)
        if m:
            return (f"the file is truncated ({int(m.group(1))} of {int(m.group(2))} bytes present; "
                    "an interrupted copy or download?)")
        return "the file is truncated (an interrupted copy or download?)"
    if type(err).__name__ == "BadZipFile":
        return f"the zip archive is truncated or damaged ({msg})"
    return f"{type(err).__name__}: {msg}"


@contextmanager
def _reading(path, expected: str):
    """Turn any error raised while reading `path` into one FileFormatError naming the file."""
    try:
        yield
    except (FileFormatError, MissingFileError, ImportError, MemoryError):
        raise
    except Exception as err:
        raise FileFormatError(f"cannot read {str(path)!r}: {_reason(err)}; expected {expected}") from err


_PUBLISHED = ("a MATLAB file (v5 or v7.3) in the layout Deng et al. (2022) published: 2-D exx, eyy, exy, theta "
              "(crystal-frame strain), mask, LFP and FP (fitted thicknesses) on one grid, scalar rot (angle of "
              "the a axis in the image, rad); optional HAADF, VADF, VBF, filename")
_PUBLISHED_MAPS = ("exx", "eyy", "exy", "theta", "mask", "LFP", "FP")
_PUBLISHED_IMAGES = ("HAADF", "VADF", "VBF")


def _read_mat(p: Path) -> dict:
    """Variables of a MATLAB file as numpy arrays (v7.3 = HDF5 read with h5py, transposed to row order)."""
    if _hdf5_signature(p, p.stat().st_size):
        import h5py

        out = {}
        with h5py.File(p, "r") as f:
            for k, v in f.items():
                if isinstance(v, h5py.Dataset):
                    a = np.asarray(v[()])
                    if v.attrs.get("MATLAB_class", b"") in (b"char", "char"):
                        out[k] = "".join(chr(c) for c in a.ravel())
                    else:
                        out[k] = a.T   # MATLAB stores columns first
        return out
    import scipy.io

    data = scipy.io.loadmat(p, squeeze_me=True)
    return {k: v for k, v in data.items() if not k.startswith("__")}


def read_published_stack(path: str | os.PathLike) -> xr.Dataset:
    """Read one particle's correlated stack in the layout Deng et al. (2022) published with their code.

    The MATLAB file (v5 through scipy, v7.3 through h5py) holds, on one image
    grid: ``exx``, ``eyy``, ``exy`` and ``theta`` — the strain *already in the
    crystal frame* (``exx`` = ε_aa, ``eyy`` = ε_cc, ``exy`` = ε_ac) — ``mask``,
    ``LFP`` and ``FP`` (the fitted thicknesses of the two reference spectra, so
    ``X = LFP / (LFP + FP)``), the virtual images ``HAADF``, ``VADF``, ``VBF``,
    a scalar ``rot`` (angle of the crystal a axis in the image, radians) and
    ``filename``. The authors' files carry no licence and are not part of this
    project: get them from the authors' code repository.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.mat`` file.

    Returns
    -------
    xarray.Dataset
        The form :func:`chemomech.correlate.correlate` gives, on ``("y", "x")``
        in pixels: ``X`` (volume fraction of LiFePO4 from the two thicknesses),
        ``X_sigma`` (NaN: not in the file), ``thickness`` (``LFP + FP``), ``exx``,
        ``eyy``, ``exy``, ``theta``, the virtual images present, and ``mask``
        (the file's mask and finite values). ``attrs``: ``crystal_angle_rad``
        (= ``rot``), ``source`` (``filename``, else the file name), ``path``,
        ``frame`` (strain components in the crystal frame, grid in the image
        frame: turn it with :func:`chemomech.correlate.align_to_crystal` before
        learning).

    Raises
    ------
    MissingFileError, FileFormatError
        A missing file; an empty, truncated, wrong-format or wrong-layout one
        (missing variable, maps of different shapes, no valid pixel).
    """
    p = _check_file(Path(path), expected=_PUBLISHED)
    with _reading(p, _PUBLISHED):
        raw = _read_mat(p)
    missing = [k for k in _PUBLISHED_MAPS + ("rot",) if k not in raw]
    if missing:
        raise FileFormatError(f"{str(p)!r} lacks {missing}; expected {_PUBLISHED}")
    maps = {}
    for k in _PUBLISHED_MAPS + tuple(i for i in _PUBLISHED_IMAGES if i in raw):
        a = np.asarray(raw[k])
        if a.ndim != 2 or a.dtype.kind not in "biuf":
            raise FileFormatError(f"{str(p)!r}: {k} must be a 2-D numeric map, got shape {a.shape} "
                                  f"({a.dtype}); expected {_PUBLISHED}")
        maps[k] = a.astype(float)
    shapes = {k: v.shape for k, v in maps.items()}
    if len(set(shapes.values())) != 1:
        raise FileFormatError(f"{str(p)!r}: the maps must share one grid, got shapes {shapes}")
    rot = np.asarray(raw["rot"], dtype=float).ravel()
    if rot.size != 1 or not np.isfinite(rot[0]):
        raise FileFormatError(f"{str(p)!r}: rot must be one finite angle in radians, got {raw['rot']!r}")
    total = maps["LFP"] + maps["FP"]
    with np.errstate(invalid="ignore", divide="ignore"):
        x = np.where(total > 0, maps["LFP"] / total, np.nan)
    strain = ("exx", "eyy", "exy", "theta")
    mask = (maps["mask"] > 0.5) & np.isfinite(x) & np.all([np.isfinite(maps[k]) for k in strain], axis=0)
    if not mask.any():
        raise FileFormatError(f"{str(p)!r}: no pixel of mask has finite strain and LFP + FP > 0; "
                              f"expected {_PUBLISHED}")
    ny, nx = mask.shape
    coords = {"y": ("y", np.arange(ny, dtype=float), {"units": "px", "long_name": "y (image rows)"}),
              "x": ("x", np.arange(nx, dtype=float), {"units": "px", "long_name": "x (image columns)"})}
    one = {"units": "1"}
    names = {"exx": "strain e_aa", "eyy": "strain e_cc", "exy": "tensor shear e_ac", "theta": "rigid rotation"}
    data = {"X": (("y", "x"), np.where(mask, x, np.nan), {**one, "long_name": "Li fraction X (LFP / (LFP + FP))"}),
            "X_sigma": (("y", "x"), np.full(mask.shape, np.nan),
                        {**one, "long_name": "standard deviation of X (not in the file)"}),
            "thickness": (("y", "x"), np.where(mask, total, np.nan),
                          {**one, "long_name": "LFP + FP (reference thickness units)"})}
    for k in strain:
        data[k] = (("y", "x"), np.where(mask, maps[k], np.nan),
                   {"units": "rad" if k == "theta" else "1", "long_name": names[k]})
    for k in _PUBLISHED_IMAGES:
        if k in maps:
            data[k] = (("y", "x"), maps[k], {"units": "counts", "long_name": f"virtual {k} image"})
    data["mask"] = (("y", "x"), mask, {"units": "1", "long_name": "particle mask"})
    source = raw.get("filename")
    source = str(source) if isinstance(source, str) or np.ndim(source) == 0 and source is not None else p.name
    return xr.Dataset(data, coords=coords, attrs={
        "crystal_angle_rad": float(rot[0]), "source": source, "path": str(p),
        "frame": "strain components in the crystal frame (x || a, y || c); grid in the image frame"})


def read_stacks(paths) -> list:
    """Correlated stacks from files: ``.nc`` (:func:`load_stack`) or published ``.mat`` (:func:`read_published_stack`).

    Each stack's ``attrs["particle"]`` names it (the file's particle or source name, made unique).
    """
    stacks = []
    for raw in paths:
        p = Path(raw)
        if p.suffix.lower() == ".mat":
            stack = read_published_stack(p)
        elif p.suffix.lower() == ".nc":
            stack = load_stack(p)
            if "crystal_angle_rad" not in stack.attrs:
                raise FileFormatError(f"{str(p)!r} has no crystal_angle_rad attribute; expected a stack whose "
                                         "strain is in the crystal frame (correlate(..., crystal_angle_rad=...))")
        else:
            raise FileFormatError(f"{str(p)!r}: expected a .nc (chemomech) or .mat (published layout) stack")
        name = str(stack.attrs.get("particle") or stack.attrs.get("source") or p.stem)
        stacks.append(stack.assign_attrs(particle=f"{name} [{len(stacks)}]" if any(
            s.attrs["particle"] == name for s in stacks) else name))
    return stacks


class _HDF5Array:
    """A picklable, read-only array view of one HDF5 dataset; each read opens the file."""

    def __init__(self, path: str, dataset: str, shape: tuple, dtype: np.dtype):
        self.path, self.dataset = path, dataset
        self.shape, self.dtype, self.ndim = tuple(shape), np.dtype(dtype), len(shape)

    def __getitem__(self, key):
        import h5py

        with _reading(self.path, f"an HDF5 file whose dataset {self.dataset!r} holds a {self.shape} datacube"):
            with h5py.File(self.path, "r") as f:
                return f[self.dataset][key]


class _ZarrArray(_HDF5Array):
    """A picklable, read-only view of one zarr array; each read opens the store."""

    def __getitem__(self, key):
        import zarr

        with _reading(self.path, f"a zarr store whose array {self.dataset or '(root)'!r} holds a {self.shape} "
                                 "datacube"):
            node = zarr.open(self.path, mode="r")
            return (node[self.dataset] if self.dataset else node)[key]


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


def open_datacube(path: str | Path, *, dataset: str | None = None, chunk_rows: int | None = None,
                  scan_shape: tuple[int, int] | None = None):
    """Open a 4D-STEM datacube lazily as a dask array chunked along the scan.

    Parameters
    ----------
    path : str or pathlib.Path
        A py4DSTEM/EMD or plain HDF5 file (``.h5``, ``.hdf5``, ``.emd``,
        ``.hdf``) or a zarr store (a ``.zarr`` directory; needs ``zarr``); or a
        microscope file (``.mib``, ``.dm3``, ``.dm4``, ``.mrc``, Velox
        ``.emd``; needs the ``vendor`` extra), read by :func:`read_datacube`,
        which also gives the calibrations.
    dataset : str, optional
        Path of the 4-D dataset inside an HDF5 file (e.g. ``"/datacube"``) or
        the array inside a zarr group. Default: the only 4-D dataset, or the
        ``DataCube`` of a py4DSTEM file.
    chunk_rows : int, optional
        Scan rows per chunk; default: as many as fit in
        ``CHUNK_TARGET_MIB`` (32 MiB).
    scan_shape : (int, int), optional
        Microscope files only: ``(ny, nx)`` when the file does not say it.

    Returns
    -------
    dask.array.Array
        ``(ny, nx, ky, kx)`` in the file's dtype, chunks ``(chunk_rows, nx, ky, kx)``.

    Raises
    ------
    MissingFileError
        `path` does not exist (a ``FileNotFoundError`` and a ``ValueError``).
    ValueError
        Unknown file suffix, bad `chunk_rows`.
    FileFormatError
        The file is empty, truncated (checked at open time: the first and the
        last element are read), not HDF5/zarr, `dataset` missing or not 4-D, no
        or several 4-D datasets. A chunk that fails to read later raises it too.

    Examples
    --------
    >>> import tempfile, os
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     p = os.path.join(folder, "cube.h5")
    ...     _ = save_datacube(np.ones((4, 3, 16, 16), np.float32), p)
    ...     cube = open_datacube(p, chunk_rows=2)
    ...     print(cube.shape, cube.chunks[0], float(cube.sum().compute()))
    (4, 3, 16, 16) (2, 2) 3072.0
    """
    import dask.array as da

    if not isinstance(path, (str, Path)):
        raise TypeError(f"path must be a str or pathlib.Path, got {type(path).__name__}")
    if dataset is not None and not isinstance(dataset, str):
        raise TypeError(f"dataset must be a str (path inside the file), got {type(dataset).__name__}")
    if chunk_rows is not None:
        _row_chunks((1, 1, 1, 1), 1, chunk_rows)  # argument check before touching the file
    p = Path(path)
    if p.suffix.lower() in (".mib", ".dm3", ".dm4", ".mrc") or (p.suffix.lower() == ".emd" and is_velox_emd(p)):
        return read_datacube(p, scan_shape=scan_shape, chunk_rows=chunk_rows).data
    expected = "a 4D-STEM datacube (ny, nx, ky, kx) in an HDF5 file or a zarr store"
    if not p.exists():
        raise MissingFileError(f"path {str(p)!r} does not exist (expected {expected})")
    if p.is_dir() or p.suffix.lower() == ".zarr":
        src = _open_zarr(p, dataset)
    else:
        if p.suffix.lower() not in _HDF5_SUFFIXES:
            raise ValueError(f"path must be an HDF5 file ({', '.join(_HDF5_SUFFIXES)}) or a .zarr store, "
                             f"got {p.name!r}")
        src = _open_hdf5(p, dataset)
    chunks = _row_chunks(src.shape, src.dtype.itemsize, chunk_rows)
    return da.from_array(src, chunks=chunks,
                         name=f"open_datacube-{p.name}-{src.dataset}-{p.stat().st_mtime_ns}",
                         asarray=True, fancy=False, inline_array=True)  # no shared key: chunks spread over workers


def _probe_corners(src, p: Path, what: str) -> None:
    """Read the first and the last element: a store cut short fails here, at open time, not mid-analysis."""
    if any(n == 0 for n in src.shape):
        raise FileFormatError(f"{what} in {str(p)!r} is empty (shape {src.shape}); expected a 4D-STEM datacube")
    src[0, 0, 0:1, 0:1]
    src[-1, -1, -1:, -1:]


def _open_hdf5(p: Path, dataset: str | None) -> _HDF5Array:
    import h5py

    expected = "an HDF5 file holding a 4-D dataset (ny, nx, ky, kx)"
    _check_file(p, expected=expected, signature="hdf5")
    with _reading(p, expected):
        with h5py.File(p, "r") as f:
            cubes = _datasets_4d(f)
            if dataset is not None:
                if dataset not in f:
                    raise FileFormatError(f"dataset {dataset!r} not found in {str(p)!r}; 4-D datasets there: "
                                          f"{[c[0] for c in cubes]}")
                obj = f[dataset]
                if not isinstance(obj, h5py.Dataset) or obj.ndim != 4:
                    raise FileFormatError(f"dataset {dataset!r} in {str(p)!r} must be a 4-D dataset "
                                          f"(ny, nx, ky, kx), got {getattr(obj, 'shape', 'a group')}")
                name = obj.name
            else:
                p4 = [c[0] for c in cubes if c[1]]
                if len(cubes) == 1 or len(p4) == 1:
                    name = cubes[0][0] if len(cubes) == 1 else p4[0]
                else:
                    raise FileFormatError(
                        f"{str(p)!r} holds {len(cubes)} 4-D datasets ({[c[0] for c in cubes]}); pass dataset= to "
                        "choose one" if cubes else f"{str(p)!r} holds no 4-D dataset; expected a 4D-STEM "
                        "datacube (ny, nx, ky, kx) (a py4DSTEM DataCube or a plain 4-D dataset)")
            dset = f[name]
            shape, dtype = dset.shape, dset.dtype
            if dtype.kind not in "iufc":
                raise FileFormatError(f"dataset {name!r} in {str(p)!r} holds {dtype} data; expected numbers")
            if dset.chunks is None and dset.id.get_offset() is not None:  # contiguous: its bytes must be there
                end = dset.id.get_offset() + dset.id.get_storage_size()
                if end > p.stat().st_size:
                    raise FileFormatError(f"{str(p)!r} is truncated: dataset {name!r} ends at byte {end} but the "
                                          f"file has {p.stat().st_size} bytes")
    src = _HDF5Array(str(p.resolve()), name, shape, dtype)
    _probe_corners(src, p, f"dataset {name!r}")
    return src


def _open_zarr(p: Path, dataset: str | None) -> _ZarrArray:
    try:
        import zarr
    except ImportError as err:
        raise ImportError(f"path {str(p)!r} looks like a zarr store, but zarr is not installed "
                          "(pip install zarr)") from err
    expected = "a zarr store holding a 4-D array (ny, nx, ky, kx)"
    if not p.is_dir():
        raise FileFormatError(f"{str(p)!r} is a file, not a zarr store (a folder); expected {expected}")
    key = dataset.strip("/") if dataset else ""
    with _reading(p, expected):
        node = zarr.open(str(p), mode="r")
        if key:
            if key not in node:
                raise FileFormatError(f"dataset {dataset!r} not found in zarr store {str(p)!r}")
            node = node[key]
        if not hasattr(node, "shape"):
            raise FileFormatError(f"{str(p)!r} is a zarr group: pass dataset= (the 4-D array inside it)")
        if len(node.shape) != 4:
            raise FileFormatError(f"the zarr array in {str(p)!r} must be 4-D (ny, nx, ky, kx), "
                                  f"got shape {node.shape}")
        src = _ZarrArray(str(p.resolve()), key, node.shape, node.dtype)
    _probe_corners(src, p, f"array {key or '(root)'!r}")
    return src


def save_datacube(datacube, path: str | Path, *, dataset: str = "datacube", chunk_rows: int = 1) -> Path:
    """Write a ``(ny, nx, ky, kx)`` numpy or dask array to a plain HDF5 dataset, chunk by chunk.

    The write is atomic: a temporary file beside `path` is moved into place
    only when complete, so an interrupted write leaves any old file intact.

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

    Returns
    -------
    pathlib.Path
        The path written.
    """
    import h5py

    shape = tuple(getattr(datacube, "shape", ()))
    if len(shape) != 4:
        raise ValueError(f"datacube must be 4-D (ny, nx, ky, kx), got shape {shape}")
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, (int, np.integer)) or chunk_rows < 1:
        raise ValueError(f"chunk_rows must be a positive integer (scan rows per chunk), got {chunk_rows!r}")

    def write(tmp):
        with h5py.File(tmp, "w") as f:
            dset = f.create_dataset(dataset, shape=shape, dtype=datacube.dtype,
                                    chunks=(min(int(chunk_rows), shape[0]),) + shape[1:])
            step = datacube.chunks[0] if hasattr(datacube, "chunks") and datacube.chunks else (shape[0],)
            start = 0
            for n in step:
                block = datacube[start:start + n]
                dset[start:start + n] = np.asarray(block.compute() if hasattr(block, "compute") else block)
                start += n

    return _atomic_write(Path(path), write)


def load_datacube(path: str | Path) -> np.ndarray:
    """Read a whole ``(y, x, ky, kx)`` datacube into memory from ``.npy`` or HDF5.

    HDF5 (``.h5``, ``.hdf5``, ``.emd``, ``.hdf``): a py4DSTEM/EMD file or any
    file with one 4-D dataset, read through :func:`open_datacube` (the same
    checks). For large files use :func:`open_datacube`, which reads lazily.

    Raises
    ------
    MissingFileError
        `path` does not exist (a ``FileNotFoundError`` and a ``ValueError``).
    FileFormatError
        The file is empty, truncated, of another format or holds no 4-D array.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "cube.npy"
    >>> np.save(p, np.zeros((2, 3, 4, 4)))
    >>> load_datacube(p).shape
    (2, 3, 4, 4)
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or pathlib.Path, got {type(path).__name__}")
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        expected = "a 4-D numpy array (ny, nx, ky, kx) in a .npy file"
        _check_file(path, expected=expected, signature="npy")
        with _reading(path, expected):
            with open(path, "rb") as f:
                version = np.lib.format.read_magic(f)
                header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                          else np.lib.format.read_array_header_2_0)
                shape, _, dtype = header(f)
                need = f.tell() + int(np.prod(shape)) * dtype.itemsize
            have = path.stat().st_size
            if have < need:
                raise FileFormatError(f"file {str(path)!r} is truncated: it has {have} bytes, expected {need} for "
                                      f"the {shape} {dtype} array its header announces")
            if len(shape) != 4:
                raise FileFormatError(f"file {str(path)!r} holds an array of shape {shape}; expected 4-D "
                                      "(ny, nx, ky, kx)")
            if dtype.kind not in "iufc":
                raise FileFormatError(f"file {str(path)!r} holds {dtype} data; expected a numeric datacube")
            data = np.load(path, allow_pickle=False)
        return _validate.array(data, name=f"datacube in {str(path)!r}", ndim=4)
    if suffix in _HDF5_SUFFIXES:
        cube = open_datacube(path)
        with _reading(path, "an HDF5 file holding a 4-D dataset (ny, nx, ky, kx)"):
            data = np.asarray(cube.compute())
        return _validate.array(data, name=f"datacube in {str(path)!r}", ndim=4)
    raise ValueError(f"path must end in .npy, {', '.join(_HDF5_SUFFIXES)}, got {path.name!r}")


# --- microscope (vendor) 4D-STEM files through rosettasciio -------------------------------------

_VENDOR_SUFFIXES = {".mib": "quantumdetector", ".dm3": "digitalmicrograph", ".dm4": "digitalmicrograph",
                    ".mrc": "mrc", ".emd": "emd"}
_VENDOR_NAMES = {"quantumdetector": "a Quantum Detectors Merlin .mib file",
                 "digitalmicrograph": "a Gatan DigitalMicrograph .dm3/.dm4 file",
                 "mrc": "an MRC file (frames of a 4D-STEM scan)", "emd": "a Velox .emd file"}
_LENGTH_NM = {"m": 1e9, "mm": 1e6, "µm": 1e3, "um": 1e3, "nm": 1.0, "Å": 0.1, "A": 0.1, "pm": 1e-3}
_INVERSE_PER_ANGSTROM = {"1/m": 1e-10, "1 / m": 1e-10, "1/nm": 0.1, "1 / nm": 0.1, "nm^-1": 0.1,
                         "1/Å": 1.0, "1 / Å": 1.0, "1/A": 1.0, "1 / angstrom": 1.0, "1/pm": 100.0,
                         "1 / pm": 100.0}
_ANGLE_MRAD = {"rad": 1e3, "mrad": 1.0, "µrad": 1e-3, "urad": 1e-3}
DETECTOR_UNITS = ("mrad", "1/Å", "px")


def _rsciio(plugin: str, path: Path):
    """The rosettasciio reader module of `plugin`; ImportError naming the extra when it is missing."""
    import importlib

    try:
        return importlib.import_module(f"rsciio.{plugin}")
    except ImportError as err:
        raise ImportError(f"reading {str(path)!r} ({_VENDOR_NAMES[plugin]}) needs rosettasciio, the optional "
                          "'vendor' extra: pip install \"chemomech[vendor]\"") from err


def is_velox_emd(path: str | os.PathLike) -> bool:
    """True if `path` is an HDF5 file written by Thermo Fisher Velox (a ``Version`` entry of format Velox).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "cube.emd"
    >>> _ = save_datacube(np.zeros((2, 2, 16, 16), np.uint16), p)
    >>> is_velox_emd(p)
    False
    """
    import json

    import h5py

    p = Path(path)
    try:
        if not p.is_file() or not _hdf5_signature(p, p.stat().st_size):
            return False
        with h5py.File(p, "r") as f:
            if "Version" not in f or "Data" not in f:
                return False
            raw = f["Version"][0]
            raw = raw if isinstance(raw, (bytes, str)) else bytes(raw)
            return json.loads(raw)["format"] in ("Velox", "DevelopersKit")
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return False


def _scan_coord(n: int, step_nm: float | None, name: str, what: str) -> tuple:
    if step_nm is None:
        return (name, np.arange(n, dtype=float), {"units": "px", "long_name": f"{what} (scan pixels)"})
    return (name, np.arange(n) * float(step_nm), {"units": "nm", "long_name": what})


def _detector_coord(n: int, step: float | None, units: str, name: str, what: str) -> tuple:
    if step is None or units == "px":
        return (name, np.arange(n, dtype=float) - n // 2, {"units": "px", "long_name": f"{what} (pixels)"})
    return (name, (np.arange(n) - n // 2) * float(step), {"units": units, "long_name": what})


def _file_calibration(axes: list) -> dict:
    """Scan step (nm) and detector pixel (mrad or 1/Å) from rosettasciio axes, where the file has them."""
    nav = [a for a in axes if a.get("navigate")]
    sig = [a for a in axes if not a.get("navigate")]
    out = {}
    units = {str(a.get("units") or "").strip() for a in nav}
    scales = [float(a.get("scale", 1.0)) for a in nav]
    if len(nav) == 2 and len(units) == 1 and (u := units.pop()) in _LENGTH_NM:
        out["scan_step_nm"] = (scales[0] * _LENGTH_NM[u], scales[1] * _LENGTH_NM[u])
    units = {str(a.get("units") or "").strip() for a in sig}
    scales = [float(a.get("scale", 1.0)) for a in sig]
    if len(sig) == 2 and len(units) == 1:
        u = units.pop()
        if u in _ANGLE_MRAD:
            out["detector_step"], out["detector_units"] = tuple(s * _ANGLE_MRAD[u] for s in scales), "mrad"
        elif u in _INVERSE_PER_ANGSTROM:
            out["detector_step"] = tuple(s * _INVERSE_PER_ANGSTROM[u] for s in scales)
            out["detector_units"] = "1/Å"
    return out


def _read_vendor(p: Path, plugin: str, scan_shape, chunk_rows: int | None) -> tuple:
    """(dask array (ny, nx, ky, kx) of the file's patterns, its rosettasciio axes).

    Memory-mapped formats (MIB, MRC) are mapped in chunks of whole scan rows and whole patterns from
    the start: rosettasciio's automatic chunks cut the patterns into tiles, and every task reading a
    tile of many frames would touch (and keep mapped) the pages of all of them.
    """
    mod = _rsciio(plugin, p)
    expected = _VENDOR_NAMES[plugin] + " holding a 4D-STEM scan"
    nav = None if scan_shape is None else (int(scan_shape[1]), int(scan_shape[0]))  # rosettasciio: (nx, ny)
    with _reading(p, expected):
        if plugin == "quantumdetector":
            with open(p, "rb") as f:
                head = f.read(3)
            if head != b"MQ1":
                raise FileFormatError(f"file {str(p)!r} is not a Merlin .mib file: it starts with {head!r}, not "
                                      "'MQ1'")
            d = _row_mapped(mod.file_reader, p, chunk_rows, navigation_shape=nav)
            want = d["original_metadata"].get("hdr_file", {}).get("Frames in Acquisition (Number)", "0")
            have = int(np.prod(d["data"].shape[:-2]))
            if nav is None and int(want or 0) > have:
                raise FileFormatError(f"file {str(p)!r} is truncated: it holds {have} complete scan rows' frames "
                                      f"of the {want} its .hdr announces (an interrupted acquisition?); pass "
                                      "scan_shape=(rows, nx) to read the complete rows")
        elif plugin == "mrc":
            d = _row_mapped(mod.file_reader, p, chunk_rows, navigation_shape=nav)
        elif plugin == "emd":
            found = [x for x in mod.file_reader(str(p), lazy=True, select_type="images")
                     if x["data"].ndim >= 3]
            if not found:
                raise FileFormatError(f"{str(p)!r} holds no stack of detector frames; expected {expected}")
            d = max(found, key=lambda x: x["data"].size)
            if nav is None:
                size = d["original_metadata"].get("Scan", {}).get("ScanSize", {})
                ny, nx = int(size.get("height", 0) or 0), int(size.get("width", 0) or 0)
            else:
                nx, ny = nav
            if d["data"].ndim == 3:
                if ny * nx != d["data"].shape[0]:
                    raise FileFormatError(f"{str(p)!r}: {d['data'].shape[0]} frames do not fill a scan of "
                                          f"{ny} x {nx} (Scan/ScanSize or scan_shape); pass scan_shape=(ny, nx)")
                d = {**d, "data": d["data"].reshape((ny, nx) + d["data"].shape[1:]),
                     "axes": [{"navigate": True, "units": ""}] * 2 + [a for a in d["axes"] if not a["navigate"]]}
        else:  # DigitalMicrograph: detector x, y first in DM's dimension order, then the scan
            d = _row_mapped(mod.file_reader, p, chunk_rows)
            if scan_shape is not None and d["data"].ndim == 3 and d["data"].shape[0] == scan_shape[0] * scan_shape[1]:
                d = {**d, "data": d["data"].reshape(scan_shape + d["data"].shape[1:])}
    data = d["data"]
    if data.ndim != 4:
        raise FileFormatError(f"{str(p)!r} holds data of shape {tuple(data.shape)}, not a 4D-STEM scan "
                              "(ny, nx, ky, kx); pass scan_shape=(ny, nx) when the file does not say it")
    if scan_shape is not None and tuple(data.shape[:2]) != tuple(scan_shape):
        raise FileFormatError(f"{str(p)!r}: {data.shape[0] * data.shape[1]} frames read as a "
                              f"{data.shape[:2]} scan, not the scan_shape {tuple(scan_shape)} asked for "
                              "(an interrupted acquisition keeps only its complete rows)")
    return data, d.get("axes", [])


def _row_mapped(reader, p: Path, chunk_rows: int | None, **kw) -> dict:
    """The lazy rosettasciio dictionary of a memory-mapped file, chunked by whole scan rows when it is 4-D.

    The largest data set of the file (a DigitalMicrograph file may also hold a thumbnail).
    """
    import logging

    log = logging.getLogger("rsciio")
    level = log.level
    log.setLevel(logging.ERROR)  # the missing-.hdr warning: we ask for scan_shape ourselves
    try:
        d = max(reader(str(p), lazy=True, **kw), key=lambda x: x["data"].size)
        if d["data"].ndim == 4:
            rows = _row_chunks(d["data"].shape, d["data"].dtype.itemsize, chunk_rows)[0]
            d = max(reader(str(p), lazy=True, chunks=(rows, -1, -1, -1), **kw), key=lambda x: x["data"].size)
    finally:
        log.setLevel(level)
    return d


def read_datacube(path: str | os.PathLike, *, scan_shape: tuple[int, int] | None = None,
                  chunk_rows: int | None = None, scan_step_nm: float | None = None,
                  detector_step: float | None = None, detector_units: str = "mrad") -> xr.DataArray:
    """Open a 4D-STEM file lazily as a DataArray ``("y", "x", "ky", "kx")`` with its calibrations.

    Microscope files go through rosettasciio (the optional ``vendor`` extra,
    ``pip install "chemomech[vendor]"``, imported only here): Quantum
    Detectors Merlin ``.mib`` (with its ``.hdr`` when present), Gatan
    DigitalMicrograph ``.dm3``/``.dm4``, ``.mrc`` (frames of the scan in
    order) and Thermo Fisher Velox ``.emd`` (a stack of detector frames; the
    scan shape from the file's ``Scan/ScanSize``). The package's own layouts
    (py4DSTEM or plain HDF5, ``.zarr``) are read by :func:`open_datacube` and
    need no extra. Nothing is read until a chunk is computed, so
    :func:`chemomech.strain.measure_strain` maps strain from it with memory
    bounded by the chunk size.

    Parameters
    ----------
    path : str or os.PathLike
        The file (suffix ``.mib``, ``.dm3``, ``.dm4``, ``.mrc``, ``.emd``,
        ``.h5``, ``.hdf5``, ``.hdf`` or ``.zarr``).
    scan_shape : (int, int), optional
        ``(ny, nx)`` scan rows and columns; needed when the file does not say
        it (an ``.mrc``; a ``.mib`` without its ``.hdr``).
    chunk_rows : int, optional
        Scan rows per chunk; default: as many as fit in ``CHUNK_TARGET_MIB``.
    scan_step_nm : float, optional
        Scan step (nm) when the file has none, or to override it.
    detector_step : float, optional
        Detector pixel in `detector_units` when the file has none, or to override it.
    detector_units : {"mrad", "1/Å", "px"}
        Units of `detector_step`.

    Returns
    -------
    xarray.DataArray
        dask-backed, the file's dtype, chunks of whole scan rows and whole
        patterns. Coordinates ``y``, ``x`` in nm (or scan pixels),
        ``ky``, ``kx`` centred on the detector, in mrad or 1/Å (or pixels).
        ``attrs``: ``source`` (file name), ``path``, ``format``,
        ``scan_step_nm`` and ``detector_step`` (NaN when unknown),
        ``detector_units``, and ``calibration`` (``"file"``, ``"argument"``
        or ``"none"`` for each of the scan and the detector).

    Raises
    ------
    MissingFileError, FileFormatError
        A missing file; an empty, truncated, wrong-format one, or one that
        holds no 4D-STEM scan (with the file's name).
    ImportError
        A microscope file without rosettasciio installed (names the extra).
    ValueError, TypeError
        Bad `scan_shape`, `chunk_rows`, steps or `detector_units`.

    Examples
    --------
    >>> import tempfile, os
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     p = os.path.join(folder, "cube.h5")
    ...     _ = save_datacube(np.ones((4, 3, 16, 16), np.uint16), p)
    ...     cube = read_datacube(p, scan_step_nm=2.0, detector_step=0.5)
    ...     print(cube.dims, cube.x.values.tolist(), cube.kx.attrs["units"], type(cube.data).__name__)
    ('y', 'x', 'ky', 'kx') [0.0, 2.0, 4.0] mrad Array
    """
    import dask.array as da

    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or pathlib.Path, got {type(path).__name__}")
    if scan_shape is not None:
        if (not isinstance(scan_shape, (tuple, list)) or len(scan_shape) != 2
                or any(isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1 for n in scan_shape)):
            raise ValueError(f"scan_shape must be two positive integers (ny, nx), got {scan_shape!r}")
        scan_shape = (int(scan_shape[0]), int(scan_shape[1]))
    if chunk_rows is not None:
        _row_chunks((1, 1, 1, 1), 1, chunk_rows)
    for name, v in (("scan_step_nm", scan_step_nm), ("detector_step", detector_step)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating))
                              or not np.isfinite(v) or v <= 0):
            raise ValueError(f"{name} must be a positive finite number, got {v!r}")
    detector_units = _validate.choice(detector_units, DETECTOR_UNITS, name="detector_units")
    p = Path(path)
    suffix = p.suffix.lower()
    plugin = _VENDOR_SUFFIXES.get(suffix)
    if plugin is None and suffix not in _HDF5_SUFFIXES + (".zarr",) and not p.is_dir():
        raise ValueError(f"path must end in {', '.join(sorted(set(_VENDOR_SUFFIXES) | set(_HDF5_SUFFIXES)))} "
                         f"or .zarr, got {p.name!r}")
    if plugin == "emd" and not is_velox_emd(p):
        plugin = None  # a Berkeley EMD (py4DSTEM) file: the package's own reader
    if plugin is None:
        cube = open_datacube(p, chunk_rows=chunk_rows)
        axes, fmt = [], "hdf5" if p.is_file() else "zarr"
        if scan_shape is not None and tuple(cube.shape[:2]) != scan_shape:
            raise FileFormatError(f"{str(p)!r} holds a {cube.shape[:2]} scan, not the scan_shape {scan_shape}")
    else:
        if not p.exists():
            raise MissingFileError(f"file {str(p)!r} does not exist (expected {_VENDOR_NAMES[plugin]})")
        _check_file(p, expected=_VENDOR_NAMES[plugin], signature="hdf5" if plugin == "emd" else None)
        cube, axes = _read_vendor(p, plugin, scan_shape, chunk_rows)
        fmt = {"quantumdetector": "mib", "digitalmicrograph": suffix[1:], "mrc": "mrc", "emd": "velox-emd"}[plugin]
        if cube.dtype.kind not in "iuf":
            raise FileFormatError(f"{str(p)!r} holds {cube.dtype} data; expected a real-valued datacube")
        chunks = _row_chunks(cube.shape, cube.dtype.itemsize, chunk_rows)
        cube = cube.rechunk(chunks)  # (Merlin's big-endian counts are kept: a native copy would cost memory)
    ny, nx, dky, dkx = cube.shape
    cal = _file_calibration(axes)
    scan_from = "file" if "scan_step_nm" in cal else "none"
    det_from = "file" if "detector_step" in cal else "none"
    if scan_step_nm is not None:
        cal["scan_step_nm"], scan_from = (float(scan_step_nm),) * 2, "argument"
    if detector_step is not None:
        cal["detector_step"], cal["detector_units"], det_from = (float(detector_step),) * 2, detector_units, \
            "argument"
    step = cal.get("scan_step_nm", (None, None))
    dstep, dunits = cal.get("detector_step", (None, None)), cal.get("detector_units", "px")
    coords = {"y": _scan_coord(ny, step[0], "y", "y (scan rows)"),
              "x": _scan_coord(nx, step[1], "x", "x (scan columns)"),
              "ky": _detector_coord(dky, dstep[0], dunits, "ky", "detector rows"),
              "kx": _detector_coord(dkx, dstep[1], dunits, "kx", "detector columns")}
    if not isinstance(cube, da.Array):  # pragma: no cover - every path above is lazy
        cube = da.from_array(cube, chunks=_row_chunks(cube.shape, cube.dtype.itemsize, chunk_rows))
    return xr.DataArray(cube, dims=("y", "x", "ky", "kx"), coords=coords, name="datacube", attrs={
        "units": "counts", "long_name": "4D-STEM datacube", "source": p.name, "path": str(p), "format": fmt,
        "scan_step_nm": float(step[0]) if step[0] is not None else np.nan,
        "detector_step": float(dstep[0]) if dstep[0] is not None else np.nan, "detector_units": dunits,
        "calibration": f"scan: {scan_from}; detector: {det_from}"})


def write_mib(datacube, path: str | os.PathLike, *, exposure_s: float = 1e-3, hdr: bool = True) -> Path:
    """Write a ``(ny, nx, ky, kx)`` datacube as a Quantum Detectors Merlin ``.mib`` file (and its ``.hdr``).

    A minimal writer for test and teaching files, from the published layout of
    the format: one frame per scan position, each a 384-byte text header
    (``MQ1``, frame number, header size, chips, width, height, ``U16``, ...,
    time stamp, exposure in ns) followed by the frame as big-endian
    ``uint16``, detector rows stored bottom-up (as a single-chip Merlin
    writes them, and as :func:`read_datacube` turns them back). The ``.hdr``
    file gives the frames per line (the scan width), so the scan shape
    comes back. Values are rounded and clipped to 0..65535. numpy or dask
    input; written a chunk of scan rows at a time (bounded memory), atomically.

    Returns
    -------
    pathlib.Path
        The ``.mib`` path written.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = write_mib(np.ones((2, 3, 16, 16)), pathlib.Path(tempfile.mkdtemp()) / "scan.mib")
    >>> p.stat().st_size == 6 * (384 + 2 * 16 * 16), p.with_suffix(".hdr").exists()
    (True, True)
    """
    path = Path(path)
    if path.suffix.lower() != ".mib":
        raise ValueError(f"path must end in .mib, got {path.name!r}")
    shape = tuple(getattr(datacube, "shape", np.shape(datacube)))
    if len(shape) != 4:
        raise ValueError(f"datacube must be 4-D (ny, nx, ky, kx), got shape {shape}")
    if not np.isfinite(exposure_s) or exposure_s <= 0:
        raise ValueError(f"exposure_s must be a positive number of seconds, got {exposure_s!r}")
    ny, nx, dky, dkx = shape
    frame = np.dtype([("header", "S384"), ("data", ">u2", (dky, dkx))])
    ns = int(round(exposure_s * 1e9))

    def header(i: int) -> bytes:
        stamp = f"2026-01-01T00:00:{(i * exposure_s) % 60:012.9f}Z"
        fields = ["MQ1", f"{i + 1:06d}", "00384", "01", f"{dkx:04d}", f"{dky:04d}", "U16", "   1x1", "01",
                  "2026-01-01 00:00:00.000000", f"{exposure_s:.6f}", "0", "0", "0"] + ["0.000000E+0"] * 8 + [
                  "3RX"] + ["000"] * 27 + ["MQ1A", stamp, f"{ns}ns", "12", ""]
        return ",".join(fields).encode()

    rows = max(1, int(CHUNK_TARGET_MIB * 2**20 // max(nx * frame.itemsize, 1)))

    def write(tmp):
        with open(tmp, "wb") as f:
            for r in range(0, ny, rows):
                block = datacube[r:r + rows]
                block = np.asarray(block.compute() if hasattr(block, "compute") else block, dtype=float)
                out = np.zeros(block.shape[0] * nx, frame)
                first = r * nx
                out["header"] = [header(first + i) for i in range(len(out))]
                out["data"] = np.clip(np.rint(block), 0, 65535).reshape(-1, dky, dkx)[:, ::-1]
                out.tofile(f)

    _atomic_write(path, write)
    if hdr:
        text = ("HDR,\t\nTime and Date Stamp (day, mnth, yr, hr, min, s):\t01/01/2026 00:00:00\n"
                "Chip Type (Medipix 3.0, Medipix 3.1, Medipix 3RX):\tMedipix 3RX\nAssembly Size (NX1, 2X2):\t   1x1\n"
                "Counter Depth (number):\t12\nAcquisition Type (Normal, Th_scan, Config):\tNormal\n"
                f"Frames in Acquisition (Number):\t{ny * nx}\nFrames per Trigger (Number):\t{nx}\n"
                "Trigger Start (Positive, Negative, Internal):\tRising Edge\nEnd\t")
        _atomic_write(path.with_suffix(".hdr"), lambda tmp: Path(tmp).write_text(text))
    return path


# --- NetCDF: results, strain maps, correlated stacks ------------------------------------------


def _atomic_write(path: Path, write) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside `path`, then move it into place."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise FileNotFoundError(f"cannot write {str(path)!r}: folder {str(folder)!r} does not exist")
    if path.is_dir():
        raise IsADirectoryError(f"cannot write {str(path)!r}: it is a folder")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=folder)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it 0600; give it what open() would
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
    """Read a Dataset written by :func:`save_netcdf` (masks back to bool), fully into memory.

    NetCDF-4/HDF5 files are read with h5netcdf, NetCDF-3 (classic) files with scipy.

    Raises
    ------
    MissingFileError
        `path` does not exist (a ``FileNotFoundError`` and a ``ValueError``).
    FileFormatError
        The file is empty, truncated or not NetCDF.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or pathlib.Path, got {type(path).__name__}")
    path = Path(path)
    expected = "a NetCDF file (as written by chemomech.io.save_netcdf)"
    _check_file(path, expected=expected, signature="netcdf")
    with open(path, "rb") as f:
        classic = f.read(3) == b"CDF"
    with _reading(path, expected):
        return _decode(xr.load_dataset(path, engine="scipy" if classic else "h5netcdf"))


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
    """Read a correlated stack written by :func:`save_stack` (mask back to bool).

    Raises
    ------
    MissingFileError
        `path` does not exist (a ``FileNotFoundError`` and a ``ValueError``).
    FileFormatError
        The file is empty, truncated, not NetCDF, or lacks a variable of a correlated stack.
    """
    ds = load_netcdf(path)
    missing = [k for k in _validate.STACK_VARIABLES if k not in ds]
    if missing:
        raise FileFormatError(f"{os.fspath(path)!r} is not a correlated stack: it lacks {missing}; expected a "
                              f"NetCDF file from chemomech.io.save_stack with {', '.join(_validate.STACK_VARIABLES)} "
                              "on (y, x)")
    return _validate.correlated_stack(ds, name=f"file {os.fspath(path)!r}")


# --- energy stacks -----------------------------------------------------------------------------


_CXI_LAYOUT = ("a CXI ptychography file: entry_N/image_1/data (2-D object, or 3-D with one frame per energy) "
               "and entry_N/instrument_1/source_1/energy (J)")


def read_stack(path) -> xr.DataArray:
    """Read an energy stack from a CXI ptychography file, a NeXus NXstxm file, plain HDF5, NetCDF or .npz.

    Parameters
    ----------
    path : str or pathlib.Path
        ``.cxi``/``.h5``: one ``entry_N`` per energy, object in
        ``entry_N/image_1/data`` (2-D, complex), photon energy in
        ``entry_N/instrument_1/source_1/energy`` (joules, as the CXI format
        specifies), optional pixel size ``entry_N/image_1/x_pixel_size`` and
        ``y_pixel_size`` (m); or a single entry with a 3-D ``data`` and one energy
        per frame. ``.nxs``/``.h5``/``.hdf5``: a NeXus file whose ``NXentry``
        has ``definition = "NXstxm"`` — an ``NXdata`` group with a 3-D
        ``data`` (energy, sample_y, sample_x; transmitted counts of a
        "sample image stack"), ``energy`` (eV unless its ``units`` say keV or
        J), ``sample_y``/``sample_x`` (µm unless their ``units`` say
        otherwise). Plain HDF5: one 3-D numeric dataset (``stack`` or ``data``
        when there are several) with one frame per energy and a 1-D dataset
        ``energy`` (eV, or as its ``units`` attribute says) of matching length;
        coordinates in pixels. ``.nc``: a DataArray (or a Dataset with a
        ``stack`` variable) on ``("energy", "y", "x")``. ``.npz``: a plain
        stack, arrays ``stack`` ``(energy, y, x)`` and ``energy`` (eV,
        increasing); coordinates are pixel indices.

    Returns
    -------
    xarray.DataArray
        ``(energy, y, x)`` sorted by energy, energy in eV, y/x in nm (or px).

    Raises
    ------
    MissingFileError
        `path` does not exist (a ``FileNotFoundError`` and a ``ValueError``).
    FileFormatError
        The file is empty, truncated, of another format, or not laid out as above.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or pathlib.Path, got {type(path).__name__}")
    path = Path(path)
    where = str(path)
    if path.suffix in (".nc", ".netcdf"):
        ds = load_netcdf(path)
        expected = "a NetCDF energy stack: a variable 'stack' (or a single variable) on (energy, y, x)"
        with _reading(path, expected):
            if not ds.data_vars:
                raise FileFormatError(f"{where!r} holds no variables; expected {expected}")
            da = ds["stack" if "stack" in ds else next(iter(ds.data_vars))]
            if "energy" not in da.coords:
                raise FileFormatError(f"variable {da.name!r} in {where!r} has no 'energy' coordinate "
                                      f"(dims {da.dims}); expected {expected}")
            da = da.sortby("energy")
        # content (too few energies, an all-NaN frame) is checked as for any stack, naming the file
        return _validate.energy_stack(da, name=f"stack in {where!r}")
    if path.suffix == ".npz":
        expected = "a .npz file with arrays 'stack' (energy, y, x) and 'energy' (eV)"
        _check_file(path, expected=expected, signature="npz")
        with _reading(path, expected):
            with np.load(path, allow_pickle=False) as z:
                if "stack" not in z or "energy" not in z:
                    raise FileFormatError(f"{where!r} holds arrays {sorted(z.files)}; expected {expected}")
                data, e = z["stack"], z["energy"].astype(float)
            if data.ndim != 3 or e.ndim != 1 or data.shape[0] != e.size:
                raise FileFormatError(f"{where!r}: stack shape {data.shape} does not match {e.size} energies; "
                                      f"expected {expected}")
        da = xr.DataArray(data, dims=("energy", "y", "x"), coords={
            "energy": ("energy", e, {"units": "eV", "long_name": "photon energy"})})
        return _validate.energy_stack(da, name=f"stack in {where!r}")
    if path.suffix not in (".cxi", ".h5", ".hdf5", ".nxs", ".hdf"):
        raise ValueError(f"path must end in .cxi, .h5, .hdf5, .nxs, .hdf, .nc or .npz, got {path.suffix!r}")
    import h5py

    _check_file(path, expected=_CXI_LAYOUT if path.suffix == ".cxi" else _HDF5_STACK, signature="hdf5")
    if path.suffix != ".cxi":
        with _reading(path, _HDF5_STACK), h5py.File(path, "r") as f:
            kind = ("cxi" if any(k.startswith("entry_") and k[6:].isdigit() for k in f)
                    else "nxstxm" if _nxstxm_entries(f) else "plain")
        if kind == "nxstxm":
            return _read_nxstxm(path)
        if kind == "plain":
            return _read_plain_stack(path)
    frames, energies, pix = [], [], None
    with _reading(path, _CXI_LAYOUT), h5py.File(path, "r") as f:
        entries = sorted((k for k in f if k.startswith("entry_") and k[6:].isdigit()), key=lambda k: int(k[6:]))
        if not entries:
            raise FileFormatError(f"{where!r} has no entry_N groups (top level: {sorted(f)[:8]}); "
                                  f"expected {_CXI_LAYOUT}")
        for name in entries:
            g = f[name]
            for key in ("image_1/data", "instrument_1/source_1/energy"):
                if key not in g:
                    raise FileFormatError(f"{where!r}: {name}/{key} is missing; expected {_CXI_LAYOUT}")
            data = g["image_1/data"][()]
            e = np.atleast_1d(g["instrument_1/source_1/energy"][()]).astype(float) * _EV_PER_JOULE
            if data.ndim == 2:
                data = data[None]
            if data.ndim != 3 or data.shape[0] != e.size:
                raise FileFormatError(f"{where!r}: {name}/image_1/data has shape {data.shape} for {e.size} "
                                      f"energies; expected {_CXI_LAYOUT}")
            if frames and data.shape[1:] != frames[0].shape[1:]:
                raise FileFormatError(f"{where!r}: {name}/image_1/data is {data.shape[1:]} but "
                                      f"{entries[0]}'s is {frames[0].shape[1:]}; every energy needs the same grid")
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
    return _validate.energy_stack(da.sortby("energy"), name=f"stack in {where!r}")


_HDF5_STACK = (f"{_CXI_LAYOUT}; or a NeXus NXstxm file (NXentry with definition NXstxm, an NXdata group with "
               "3-D data (energy, sample_y, sample_x) and energy in eV); or plain HDF5 with one 3-D dataset "
               "(one frame per energy) and a 1-D 'energy' dataset (eV)")
_ENERGY_TO_EV = {"ev": 1.0, "kev": 1e3, "j": _EV_PER_JOULE, "": 1.0}
_TO_NM = {"m": 1e9, "mm": 1e6, "um": 1e3, "µm": 1e3, "micron": 1e3, "microns": 1e3, "nm": 1.0, "a": 0.1,
          "å": 0.1, "angstrom": 0.1}


def _attr_str(obj, key: str, default: str = "") -> str:
    v = obj.attrs.get(key, default)
    if isinstance(v, np.ndarray):
        v = v.ravel()[0] if v.size else default
    return (v.decode() if isinstance(v, bytes) else str(v)).strip()


def _dataset_str(ds) -> str:
    v = ds[()]
    if isinstance(v, np.ndarray):
        v = v.ravel()[0] if v.size else b""
    return (v.decode() if isinstance(v, bytes) else str(v)).strip()


def _nxstxm_entries(f) -> list:
    """The NXentry groups of an open HDF5 file whose definition is NXstxm."""
    import h5py

    out = []
    for k, g in f.items():
        if isinstance(g, h5py.Group) and _attr_str(g, "NX_class") == "NXentry" and "definition" in g:
            if _dataset_str(g["definition"]) == "NXstxm":
                out.append(g)
    return out


def _energies_ev(ds, where: str) -> np.ndarray:
    units = _attr_str(ds, "units", "eV")
    if units.lower() not in _ENERGY_TO_EV:
        raise FileFormatError(f"{where}: energy units {units!r} not understood; expected eV, keV or J")
    return np.atleast_1d(np.asarray(ds[()], dtype=float)) * _ENERGY_TO_EV[units.lower()]


def _stack_array(data: np.ndarray, e: np.ndarray, yc, xc, unit: str, path: Path, what: str) -> xr.DataArray:
    da_ = xr.DataArray(data, dims=("energy", "y", "x"), coords={
        "energy": ("energy", e, {"units": "eV", "long_name": "photon energy"}),
        "y": ("y", np.asarray(yc, dtype=float), {"units": unit, "long_name": "y (image rows)"}),
        "x": ("x", np.asarray(xc, dtype=float), {"units": unit, "long_name": "x (image columns)"})},
        attrs={"units": "counts" if not np.iscomplexobj(data) else "1", "long_name": what, "source": path.name})
    return _validate.energy_stack(da_.sortby("energy"), name=f"stack in {str(path)!r}")


def _read_nxstxm(path: Path) -> xr.DataArray:
    """The first 3-D NXdata of the first NXstxm entry: (energy, sample_y, sample_x) transmitted counts."""
    import h5py

    where = str(path)
    with _reading(path, _HDF5_STACK), h5py.File(path, "r") as f:
        entry = _nxstxm_entries(f)[0]
        groups = [g for g in entry.values() if isinstance(g, h5py.Group) and _attr_str(g, "NX_class") == "NXdata"
                  and "data" in g and g["data"].ndim == 3]
        default = _attr_str(entry, "default")
        groups.sort(key=lambda g: g.name.split("/")[-1] != default)
        if not groups:
            raise FileFormatError(f"{where}: NXstxm entry {entry.name!r} has no NXdata group with a 3-D 'data' "
                                  f"(an image stack); expected {_HDF5_STACK}")
        g = groups[0]
        for key in ("energy", "sample_y", "sample_x"):
            if key not in g:
                raise FileFormatError(f"{where}: {g.name}/{key} is missing; expected {_HDF5_STACK}")
        axes = [a.decode() if isinstance(a, bytes) else str(a) for a in np.atleast_1d(g.attrs.get(
            "axes", ["energy", "sample_y", "sample_x"]))]
        if sorted(axes) != ["energy", "sample_x", "sample_y"]:
            raise FileFormatError(f"{where}: {g.name} axes {axes} are not energy, sample_y, sample_x; "
                                  f"expected {_HDF5_STACK}")
        data = np.transpose(g["data"][()], [axes.index(a) for a in ("energy", "sample_y", "sample_x")])
        e = _energies_ev(g["energy"], where)
        pos = {}
        for key in ("sample_y", "sample_x"):
            unit = _attr_str(g[key], "units", "um")
            if unit.lower() not in _TO_NM:
                raise FileFormatError(f"{where}: {g.name}/{key} units {unit!r} not understood; expected a length")
            pos[key] = np.asarray(g[key][()], dtype=float).ravel() * _TO_NM[unit.lower()]
    if data.shape != (e.size, pos["sample_y"].size, pos["sample_x"].size):
        raise FileFormatError(f"{where}: data of shape {data.shape} does not match {e.size} energies, "
                              f"{pos['sample_y'].size} sample_y and {pos['sample_x'].size} sample_x positions")
    return _stack_array(data, e, pos["sample_y"], pos["sample_x"], "nm", path, "transmitted intensity (STXM)")


def _read_plain_stack(path: Path) -> xr.DataArray:
    """One 3-D dataset (energy, y, x) and a 1-D 'energy' dataset of the same length."""
    import h5py

    where = str(path)
    with _reading(path, _HDF5_STACK), h5py.File(path, "r") as f:
        cubes, energies = [], []

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                if obj.ndim == 3 and obj.dtype.kind in "iufc":
                    cubes.append(obj.name)
                elif obj.ndim == 1 and name.split("/")[-1].lower() in ("energy", "energies"):
                    energies.append(obj.name)

        f.visititems(visit)
        if len(cubes) > 1:
            named = [c for c in cubes if c.split("/")[-1] in ("stack", "data")]
            cubes = named if len(named) == 1 else cubes
        if len(cubes) != 1 or len(energies) != 1:
            raise FileFormatError(f"{where} holds {len(cubes)} 3-D datasets {cubes[:4]} and {len(energies)} "
                                  f"'energy' datasets; expected {_HDF5_STACK}")
        data = f[cubes[0]][()]
        e = _energies_ev(f[energies[0]], where)
    if data.shape[0] != e.size:
        raise FileFormatError(f"{where}: {cubes[0]} has shape {data.shape} for {e.size} energies; expected one "
                              "frame per energy along the first axis")
    ny, nx = data.shape[1:]
    return _stack_array(data, e, np.arange(ny), np.arange(nx), "px", path,
                        "object transmission" if np.iscomplexobj(data) else "transmitted intensity")


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
