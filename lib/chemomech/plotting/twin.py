"""Figures of the digital-twin chapter."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from ._common import STRAIN_CMAP, X_CMAP, image_panel, new_figure

__all__ = ["particle_maps", "particle_gallery", "mesh_figure", "convergence_figure", "coherency_figure"]


def particle_maps(ds: xr.Dataset, *, variables: Sequence[str] = ("X", "thickness", "exx", "eyy", "exy", "theta"),
                  ncols: int = 3) -> Figure:
    """Maps of a rendered particle: X (viridis), thickness, strain and rotation (diverging, in %).

    Parameters
    ----------
    ds : xarray.Dataset
        A rendered particle (:meth:`chemomech.specimen.Particle.render`) or any
        Dataset with these variables on ``("y", "x")``.
    variables : sequence of str
        Which variables to show, in order.
    ncols : int
        Panels per row.
    """
    nrows = int(np.ceil(len(variables) / ncols))
    fig, axes = new_figure(nrows, ncols)
    for ax, name in zip(axes.flat, variables):
        da = ds[name].where(ds["mask"]) if "mask" in ds else ds[name]
        if name == "X":
            image_panel(ax, da, title="Li fraction X", cmap=X_CMAP, vmin=0, vmax=1, units="X")
        elif name == "thickness":
            image_panel(ax, da, title="thickness", cmap="cividis", units="nm")
        elif name == "theta":
            image_panel(ax, da, title="rotation θ", cmap=STRAIN_CMAP, symmetric=True, scale=1e3,
                        units="mrad")
        else:
            image_panel(ax, da, title=da.attrs.get("long_name", name), cmap=STRAIN_CMAP,
                        symmetric=True, scale=100, units="%")
    for ax in list(axes.flat)[len(variables):]:
        ax.set_visible(False)
    return fig


def particle_gallery(datasets: Mapping[str, xr.Dataset], *, variable: str = "X") -> Figure:
    """One panel per particle, on a common colour scale, titled with name and batch."""
    n = len(datasets)
    fig, axes = new_figure(1, n, width=2.6, height=2.4)
    for ax, (name, ds) in zip(axes.flat, datasets.items()):
        da = ds[variable].where(ds["mask"])
        if variable == "X":
            image_panel(ax, da, title=f"{name} ({ds.attrs.get('batch', '')})", vmin=0, vmax=1,
                        units="X", colorbar=ax is axes.flat[-1])
        else:
            image_panel(ax, da, title=name, cmap=STRAIN_CMAP, symmetric=True, scale=100, units="%",
                        colorbar=ax is axes.flat[-1])
    return fig


def mesh_figure(mesh, *, outline: np.ndarray | None = None, pixel_size_nm: float | None = None) -> Figure:
    """The FEM triangulation (x, y in nm), optionally with the smooth outline and a pixel scale."""
    fig, axes = new_figure(1, 1, width=4.2, height=4.0)
    ax = axes[0, 0]
    ax.triplot(mesh.p[0], mesh.p[1], mesh.t.T, lw=0.2, color="0.4")
    if outline is not None:
        ax.plot(outline[:, 1], outline[:, 0], color="C3", lw=1.0, label="smooth outline")
        ax.legend(fontsize=7, loc="upper right")
    if pixel_size_nm is not None:
        x0, y0 = mesh.p[0].min(), mesh.p[1].max()
        ax.plot([x0, x0 + pixel_size_nm], [y0, y0], color="k", lw=3)
        ax.text(x0, y0, f"  one pixel ({pixel_size_nm:g} nm)", fontsize=7, va="bottom")
    ax.set_aspect("equal")
    ax.invert_yaxis()
    ax.set_xlabel("x (nm)", fontsize=8)
    ax.set_ylabel("y (nm)", fontsize=8)
    ax.set_title(f"{mesh.t.shape[1]} quadratic triangles", fontsize=9)
    return fig


def convergence_figure(h: Sequence[float], error: Sequence[float], *, rate: float | None = None,
                       ylabel: str = "relative error") -> Figure:
    """Log–log plot of an error against mesh size, with the fitted rate."""
    fig, axes = new_figure(1, 1, width=4.0, height=3.0)
    ax = axes[0, 0]
    ax.loglog(h, error, "o-", label="measured")
    if rate is not None:
        h = np.asarray(h, float)
        ref = np.asarray(error, float)[0] * (h / h[0]) ** rate
        ax.loglog(h, ref, "k--", lw=0.8, label=f"slope {rate:.2f}")
    ax.set_xlabel("element size h (nm)", fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.legend(fontsize=7)
    ax.grid(True, which="both", lw=0.3)
    return fig


def coherency_figure(ds: xr.Dataset, law, *, max_points: int = 4000, rng: int = 0) -> Figure:
    """Total strain against X for every pixel, with the stress-free law on top.

    Left: ``exx`` (∥ a); right: ``eyy`` (∥ c). Pixels scatter around the law
    because each one is held by its neighbours (coherency strain); the
    composition–eigenstrain law is the stress-free relation.

    Parameters
    ----------
    ds : xarray.Dataset
        A rendered particle with ``X``, ``exx``, ``eyy``, ``mask`` (crystal frame: a ∥ x).
    law : callable
        ``law(X) -> (..., 2)``, eigenstrain along a and c.
    max_points : int
        At most this many pixels are drawn (a seeded random subset).
    rng : int
        Seed of that subset.
    """
    m = ds["mask"].values
    x = ds["X"].values[m]
    idx = np.random.default_rng(rng).permutation(x.size)[:max_points]
    grid = np.linspace(0, 1, 101)
    e0 = np.asarray(law(grid))
    fig, axes = new_figure(1, 2, width=3.6, height=3.0)
    for ax, comp, k, name in zip(axes.flat, ("exx", "eyy"), (0, 1), ("a (x)", "c (y)")):
        ax.plot(x[idx], 100 * ds[comp].values[m][idx], ".", ms=2, alpha=0.4, color="C0", label="pixels (total strain)")
        ax.plot(grid, 100 * e0[:, k], "k-", lw=1.5, label="stress-free law ε⁰(X)")
        ax.set_xlabel("Li fraction X", fontsize=8)
        ax.set_ylabel(f"strain along {name} (%)", fontsize=8)
        ax.legend(fontsize=7)
        ax.grid(lw=0.3)
    return fig
