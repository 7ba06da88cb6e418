"""Shared figure building blocks: colour maps, image panels, labels."""

from __future__ import annotations

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

__all__ = ["new_figure", "image_panel", "STRAIN_CMAP", "X_CMAP"]

#: Diverging map for signed quantities (strain, rotation), centred on zero.
STRAIN_CMAP = "RdBu_r"
#: Perceptually uniform map for the Li fraction.
X_CMAP = "viridis"


def new_figure(nrows: int = 1, ncols: int = 1, *, width: float = 3.2, height: float = 2.8,
               **subplot_kw) -> tuple[Figure, np.ndarray]:
    """A pyplot-free figure with a grid of axes (always a 2-D array of axes)."""
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = np.atleast_2d(fig.subplots(nrows, ncols, squeeze=False, **subplot_kw))
    return fig, axes


def _extent(da: xr.DataArray) -> tuple[list[float] | None, str, str]:
    if "x" in da.coords and "y" in da.coords and da.sizes["x"] > 1 and da.sizes["y"] > 1:
        x, y = da["x"].values, da["y"].values
        dx, dy = x[1] - x[0], y[1] - y[0]
        ext = [x[0] - dx / 2, x[-1] + dx / 2, y[-1] + dy / 2, y[0] - dy / 2]
        ux = da["x"].attrs.get("units", "px")
        uy = da["y"].attrs.get("units", "px")
        return ext, f"x ({ux})", f"y ({uy})"
    return None, "x (px)", "y (px)"


def image_panel(ax, image, *, title: str = "", cmap: str = X_CMAP, symmetric: bool = False,
                vmin: float | None = None, vmax: float | None = None, scale: float = 1.0,
                units: str | None = None, colorbar: bool = True):
    """Show a 2-D image (numpy or DataArray on (y, x)) with axes in physical units.

    Parameters
    ----------
    ax : matplotlib.axes.Axes
    image : array_like or xarray.DataArray
        2-D data; NaN pixels are left blank.
    title : str
    cmap : str
    symmetric : bool
        Centre the colour scale on zero (diverging quantities).
    vmin, vmax : float, optional
        Colour limits (after `scale`).
    scale : float
        Multiply the data for display (e.g. 100 to show strain in %).
    units : str, optional
        Colour-bar label; default the DataArray's ``units`` attribute.
    colorbar : bool
        Add a colour bar.
    """
    da = image if isinstance(image, xr.DataArray) else xr.DataArray(np.asarray(image), dims=("y", "x"))
    data = np.asarray(da.values, dtype=float) * scale
    if symmetric and vmax is None:
        finite = data[np.isfinite(data)]
        vmax = float(np.percentile(np.abs(finite), 99.5)) if finite.size else 1.0
        vmax = vmax or 1.0
        vmin = -vmax
    ext, xl, yl = _extent(da)
    im = ax.imshow(data, cmap=cmap, vmin=vmin, vmax=vmax, extent=ext, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xl, fontsize=8)
    ax.set_ylabel(yl, fontsize=8)
    ax.tick_params(labelsize=7)
    if colorbar:
        cb = ax.figure.colorbar(im, ax=ax, shrink=0.85)
        label = units if units is not None else da.attrs.get("units", "")
        cb.set_label(label, fontsize=8)
        cb.ax.tick_params(labelsize=7)
    return im


def _enable_ipython_png() -> None:
    """Let Jupyter show pyplot-free Figures as PNG.

    IPython registers its Figure formatter only when pyplot is imported (or with
    ``%matplotlib inline``); the helpers here never import pyplot, so register it
    when running inside IPython. Outside IPython this does nothing.
    """
    try:
        from IPython import get_ipython
        from IPython.core.pylabtools import select_figure_formats
    except ImportError:  # pragma: no cover - IPython is a dependency of the book only
        return
    shell = get_ipython()
    if shell is not None:
        select_figure_formats(shell, {"png"}, bbox_inches="tight", dpi=110)


_enable_ipython_png()
