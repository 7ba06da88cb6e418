"""The only module that touches py4DSTEM (imported lazily, inside functions).

It converts at the edge, once: py4DSTEM's ``(Rx, Ry, Qx, Qy)`` index order is
our ``(y, x, ky, kx)`` (py4DSTEM's "x" is the first axis, i.e. rows), and its
peak fields ``qx, qy`` are our ``ky, kx``. Inputs are checked before py4DSTEM
sees them, so users get our ``ValueError`` rather than a py4DSTEM
``AssertionError``. Plotting side effects are guarded by the Agg backend.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from . import _validate


def _import():
    # py4DSTEM plots as a side effect in places: without a backend chosen already (a notebook's
    # inline backend, a user's MPLBACKEND), make it the non-interactive one before pyplot loads
    if "matplotlib.pyplot" not in sys.modules:
        os.environ.setdefault("MPLBACKEND", "Agg")
    try:
        import py4DSTEM
    except ImportError as err:
        raise ImportError("this needs py4DSTEM (GPL-3), an optional extra of chemomech: "
                          "pip install 'chemomech[py4dstem]'; the default method='fast' does not") from err

    return py4DSTEM


def is_datacube(obj: object) -> bool:
    """True for a ``py4DSTEM.DataCube`` (checked without importing py4DSTEM)."""
    return type(obj).__module__.startswith("py4DSTEM") and type(obj).__name__ == "DataCube"


def datacube_to_array(dc: object) -> np.ndarray:
    """The ``(y, x, ky, kx)`` array of a ``py4DSTEM.DataCube`` (``Rx, Ry, Qx, Qy`` = ``y, x, ky, kx``)."""
    if not is_datacube(dc):
        raise TypeError(f"datacube must be a py4DSTEM.DataCube here, got {type(dc).__name__}")
    return np.asarray(dc.data)


def array_to_datacube(array: np.ndarray) -> object:
    """Wrap a ``(y, x, ky, kx)`` array as a ``py4DSTEM.DataCube``."""
    arr = _validate.array(array, name="array", ndim=4)
    return _import().DataCube(data=arr)


def read_datacube(path: str | Path) -> np.ndarray:
    """Read the first DataCube of a py4DSTEM/EMD HDF5 file as a ``(y, x, ky, kx)`` array."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"path {str(path)!r} does not exist or is not a file")
    obj = _import().read(str(path))
    if is_datacube(obj):
        return datacube_to_array(obj)
    for node in getattr(obj, "tree", lambda *a: {})().values() if hasattr(obj, "tree") else []:
        if is_datacube(node):
            return datacube_to_array(node)
    raise ValueError(f"path {str(path)!r} holds no py4DSTEM DataCube (found {type(obj).__name__})")


def save_datacube(array: np.ndarray, path: str | Path) -> None:
    """Write a ``(y, x, ky, kx)`` array as a py4DSTEM DataCube to an HDF5 file."""
    _import().save(str(path), array_to_datacube(array), mode="o")


def find_disks(patterns: np.ndarray, template: np.ndarray, *, min_spacing_px: float,
               edge_px: int, upsample_factor: int = 16, progress: bool = False) -> list[np.ndarray]:
    """Bragg disks of each pattern by py4DSTEM's template correlation with DFT-upsampled refinement.

    Parameters
    ----------
    patterns : numpy.ndarray
        ``(n, ky, kx)`` diffraction patterns.
    template : numpy.ndarray
        ``(ky, kx)`` probe kernel, centred on pixel (0, 0) (wrapped), same shape as a pattern.
    min_spacing_px : float
        Smallest allowed distance between two disks, px.
    edge_px : int
        Disks closer than this to the detector edge are dropped.
    upsample_factor : int
        DFT upsampling of the correlation peak (``subpixel="multicorr"``); >= 16 for strain.
    progress : bool
        tqdm progress bar over patterns.

    Returns
    -------
    list of numpy.ndarray
        One ``(m, 3)`` array per pattern: ``ky, kx`` (px) and correlation intensity.
    """
    pats = _validate.array(patterns, name="patterns", ndim=3, finite=True)
    tmpl = _validate.array(template, name="template", shape=pats.shape[1:], finite=True)
    if upsample_factor < 16:
        raise ValueError(f"upsample_factor must be >= 16 for strain mapping, got {upsample_factor}")
    _import()
    from py4DSTEM.braggvectors import find_Bragg_disks

    it = range(pats.shape[0])
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="py4DSTEM disk detection", unit="pattern")
    out = []
    for i in it:  # one pattern at a time: py4DSTEM's own DataCube loop prints a progress bar
        peaks = find_Bragg_disks(
            pats[i], tmpl, corrPower=1, sigma_dp=0, sigma_cc=0, subpixel="multicorr",
            upsample_factor=int(upsample_factor), minAbsoluteIntensity=0, minRelativeIntensity=0.002,
            relativeToPeak=0, minPeakSpacing=float(min_spacing_px), edgeBoundary=int(edge_px),
            maxNumPeaks=200,
        )
        d = peaks.data
        out.append(np.stack([d["qx"], d["qy"], d["intensity"]], axis=1).astype(float))
    return out
