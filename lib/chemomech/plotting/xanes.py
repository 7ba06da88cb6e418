"""Figures of the xanes chapter (Li fraction from Fe L-edge energy stacks)."""

from __future__ import annotations

import numpy as np
import xarray as xr
from scipy import ndimage

from ._common import STRAIN_CMAP, X_CMAP, image_panel, new_figure

__all__ = [
    "xanes_calibration",
    "xanes_clusters",
    "xanes_drift",
    "xanes_histograms",
    "xanes_maps",
    "xanes_od_frames",
    "xanes_pitfalls",
    "xanes_residual",
    "xanes_spectra",
]

_PHASE_STYLE = {"LFP": ("LiFePO$_4$ (Fe$^{2+}$)", "tab:blue"), "FP": ("FePO$_4$ (Fe$^{3+}$)", "tab:orange")}


def xanes_spectra(references: xr.Dataset, od: xr.DataArray | None = None, model: xr.DataArray | None = None,
                  *, pixels=()):
    """Reference spectra (left) and measured OD spectra of a few pixels with their fits (right).

    Parameters
    ----------
    references : xarray.Dataset
        ``LFP``, ``FP`` per unit thickness on ``energy``.
    od, model : xarray.DataArray, optional
        Measured and fitted OD ``(energy, y, x)``.
    pixels : sequence of (int, int, str)
        ``(row, col, label)`` of the pixels to show.
    """
    ncols = 1 if od is None else 2
    fig, axes = new_figure(1, ncols, width=4.2, height=3.0)
    ax = axes[0, 0]
    for k, (label, colour) in _PHASE_STYLE.items():
        ax.plot(references["energy"], references[k], color=colour, label=label)
    for e in (708.0, 710.0):
        ax.axvline(e, color="0.6", lw=0.7, ls=":")
    ax.set_xlabel("photon energy (eV)")
    ax.set_ylabel(f"absorption ({references['LFP'].attrs.get('units', 'OD per unit thickness')})")
    ax.set_title("Fe L-edge references (model)", fontsize=9)
    ax.legend(fontsize=7)
    if od is not None:
        ax = axes[0, 1]
        for i, (row, col, label) in enumerate(pixels):
            colour = f"C{i + 2}"
            ax.plot(od["energy"], od[:, row, col], ".", ms=3, color=colour, label=f"{label} (data)")
            if model is not None:
                ax.plot(model["energy"], model[:, row, col], "-", lw=1, color=colour)
        ax.set_xlabel("photon energy (eV)")
        ax.set_ylabel("optical density")
        ax.set_title("pixel spectra (dots) and fits (lines)", fontsize=9)
        ax.legend(fontsize=7)
    return fig


def xanes_drift(shifts: xr.DataArray, truth: xr.DataArray | None = None, *, od_raw=None, od_aligned=None,
                level: float = 0.15):
    """Shift of every frame (estimated and true) and the particle outline before and after alignment.

    Parameters
    ----------
    shifts : xarray.DataArray
        ``(energy, axis)`` estimated shifts (drift plus per-frame offsets), px.
    truth : xarray.DataArray, optional
        ``(energy, axis)`` true shifts, px.
    od_raw, od_aligned : xarray.DataArray, optional
        OD stacks before and after alignment; the outline (OD contour at `level`) of
        the first and last frames is drawn for each.
    """
    n_img = 0 if od_raw is None else 2
    fig, axes = new_figure(1, 2 + n_img, width=3.2, height=2.8)
    e = shifts["energy"].values
    for j, axis in enumerate(("y", "x")):
        ax = axes[0, j]
        ax.plot(e, shifts.sel(axis=axis), ".-", ms=4, lw=0.5, color="k", label="estimated")
        if truth is not None:
            ax.plot(e, truth.sel(axis=axis), "o", ms=5, mfc="none", color="tab:red", label="true")
            err = shifts.sel(axis=axis) - truth.sel(axis=axis)
            ax.plot(e, err, color="tab:green", lw=0.8, label="estimated − true")
        ax.set_xlabel("photon energy (eV)")
        ax.set_ylabel(f"shift along {axis} (px)")
        ax.set_title(f"frame shifts, {axis}", fontsize=9)
        ax.legend(fontsize=7)
    for j, (od, title) in enumerate(((od_raw, "before alignment"), (od_aligned, "after alignment"))):
        if od is None:
            continue
        ax = axes[0, 2 + j]
        first, last = od.isel(energy=0), od.isel(energy=-1)
        image_panel(ax, last, title=title, cmap="gray", units="OD", colorbar=False)
        ext = _extent_xy(od)
        for frame, colour in ((first, "white"), (last, "red")):
            # display only: a light blur keeps the contour of the weak pre-edge frame off the noise
            img = ndimage.gaussian_filter(np.nan_to_num(frame.values), 1.5)
            ax.contour(img, levels=[level * float(img.max())], colors=colour, linewidths=0.8,
                       extent=ext, origin="upper")
    return fig


def _extent_xy(da: xr.DataArray):
    x, y = da["x"].values, da["y"].values
    dx, dy = x[1] - x[0], y[1] - y[0]
    return [x[0] - dx / 2, x[-1] + dx / 2, y[-1] + dy / 2, y[0] - dy / 2]


def xanes_od_frames(od: xr.DataArray, energies=(708.0, 710.0)):
    """OD images at the given energies on a common colour scale."""
    fig, axes = new_figure(1, len(energies), width=3.4, height=2.9)
    frames = [od.sel(energy=e, method="nearest") for e in energies]
    vmax = max(float(np.nanpercentile(f.values, 99.5)) for f in frames)
    for ax, f in zip(axes[0], frames):
        image_panel(ax, f, title=f"OD at {float(f.energy):.2f} eV", cmap="magma", vmin=0.0, vmax=vmax, units="OD")
    return fig


def xanes_maps(result: xr.Dataset, truth: xr.Dataset):
    """Measured X, true X, their difference and σ_X."""
    fig, axes = new_figure(1, 4, width=3.1, height=2.7)
    image_panel(axes[0, 0], result["X"], title="X measured", cmap=X_CMAP, vmin=0, vmax=1)
    image_panel(axes[0, 1], truth["X"].where(result["mask"]), title="X true", cmap=X_CMAP, vmin=0, vmax=1)
    image_panel(axes[0, 2], result["X"] - truth["X"], title="X measured − X true", cmap=STRAIN_CMAP,
                symmetric=True, units="1")
    sig = result["X_sigma"]
    image_panel(axes[0, 3], sig, title="σ_X", cmap="cividis", vmin=0,
                vmax=float(np.nanpercentile(sig.values, 99)), units="1")
    return fig


def xanes_calibration(curves: dict):
    """Fraction of pixels within k σ_X against k, with the Gaussian curve.

    Parameters
    ----------
    curves : dict of str to xarray.Dataset
        Label → output of :func:`chemomech.xanes.calibration_curve`.
    """
    fig, axes = new_figure(1, 1, width=3.8, height=3.0)
    ax = axes[0, 0]
    first = next(iter(curves.values()))
    ax.plot(first["k"], first["gaussian"], color="0.3", lw=2.5, alpha=0.5, label="Gaussian: erf(k/√2)")
    for i, (label, c) in enumerate(curves.items()):
        ax.plot(c["k"], c["observed"], color=f"C{i}", label=f"{label} ({c.attrs['n_pixels']} px)")
    ax.axvline(1.0, color="0.7", lw=0.7, ls=":")
    ax.set_xlabel("k (multiples of σ_X)")
    ax.set_ylabel("fraction with |X − X_true| ≤ kσ_X")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7)
    return fig


def xanes_residual(result: xr.Dataset):
    """Map and histogram of the RMS misfit of the spectrum fit."""
    fig, axes = new_figure(1, 2, width=3.4, height=2.9)
    image_panel(axes[0, 0], result["residual"], title="RMS fit residual", cmap="cividis", vmin=0, units="OD")
    r = result["residual"].values
    axes[0, 1].hist(r[np.isfinite(r)], bins=50, color="0.4")
    axes[0, 1].set_xlabel("RMS fit residual (OD)")
    axes[0, 1].set_ylabel("pixels")
    return fig


def xanes_histograms(results: dict, groups: dict):
    """Histograms of X per particle, one panel per group (Li-rich, biphasic, Li-poor).

    Parameters
    ----------
    results : dict of str to xarray.Dataset
        Particle name → :func:`chemomech.xanes.map_lithium` output.
    groups : dict of str to list of str
        Panel title → particle names.
    """
    fig, axes = new_figure(1, len(groups), width=3.0, height=2.6, sharey=False)
    bins = np.linspace(0, 1, 41)
    for ax, (title, names) in zip(axes[0], groups.items()):
        for name in names:
            x = results[name]["X"].values
            ax.hist(x[np.isfinite(x)], bins=bins, histtype="step", lw=1.2, label=name, density=True)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("X in Li$_x$FePO$_4$")
        ax.set_ylabel("probability density")
        ax.legend(fontsize=7)
    return fig


def xanes_pitfalls(truth: xr.Dataset, variants: dict):
    """Error maps X − X_true of several analysis variants, on one colour scale.

    Parameters
    ----------
    truth : xarray.Dataset
        With ``X``.
    variants : dict of str to xarray.DataArray
        Label → X map.
    """
    fig, axes = new_figure(1, len(variants), width=3.1, height=2.7)
    errs = {k: v - truth["X"] for k, v in variants.items()}
    vmax = max(float(np.nanpercentile(np.abs(e.values), 99)) for e in errs.values())
    for ax, (label, err) in zip(axes[0], errs.items()):
        rms = float(np.sqrt(np.nanmean(err.values**2)))
        image_panel(ax, err, title=f"{label}\nRMS {rms:.3f}", cmap=STRAIN_CMAP, vmin=-vmax, vmax=vmax, units="1")
    return fig


def xanes_clusters(clusters: xr.Dataset, edge: xr.DataArray | None = None):
    """k-means clusters of the spectra (map and mean spectra) and, optionally, the edge-energy map.

    Parameters
    ----------
    clusters : xarray.Dataset
        Output of :func:`chemomech.xanes.cluster_spectra`.
    edge : xarray.DataArray, optional
        Output of :func:`chemomech.xanes.edge_energy` (eV).
    """
    from matplotlib.colors import ListedColormap

    n = clusters.sizes["cluster"]
    fig, axes = new_figure(1, 2 if edge is None else 3, width=3.3, height=2.9)
    colours = [f"C{i}" for i in range(n)]
    lab = clusters["labels"].where(clusters["labels"] >= 0)
    image_panel(axes[0, 0], lab, title="k-means clusters", cmap=ListedColormap(colours), vmin=-0.5,
                vmax=n - 0.5, units="cluster")
    ax = axes[0, 1]
    for i in range(n):
        ax.plot(clusters["energy"], clusters["mean_spectrum"][i], color=colours[i], label=f"cluster {i}")
    ax.set_xlabel("photon energy (eV)")
    norm = clusters.attrs.get("normalised", "None")
    ax.set_ylabel({"area": "absorption / L3 area (1/eV)", "edge": "edge-normalised absorption"}.get(
        norm, "optical density"))
    ax.set_title("mean spectra", fontsize=9)
    ax.legend(fontsize=7)
    if edge is not None:
        image_panel(axes[0, 2], edge, title="edge energy (centroid)", cmap="viridis_r", units="eV")
    return fig
