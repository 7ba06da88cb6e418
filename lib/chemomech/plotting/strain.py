"""Figures of the strain chapter (4D-STEM Bragg-disk strain mapping)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import xarray as xr
from matplotlib.figure import Figure
from matplotlib.patches import Circle

from ._common import STRAIN_CMAP, image_panel, new_figure

__all__ = ["pattern_overview", "template_figure", "disk_overlay", "descan_figure", "lattice_figure",
           "strain_comparison", "dose_figure", "detection_figure", "benchmark_figure", "disk_contents_figure",
           "thickness_bias_figure"]


def _pattern_panel(ax, img: np.ndarray, title: str) -> None:
    ax.imshow(np.log1p(np.clip(img, 0, None)), cmap="magma", interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("kx (px)", fontsize=8)
    ax.set_ylabel("ky (px)", fontsize=8)
    ax.tick_params(labelsize=7)


def pattern_overview(mean: np.ndarray, virtual: xr.Dataset) -> Figure:
    """Mean diffraction pattern (log scale) and the bright-/dark-field virtual images."""
    fig, axes = new_figure(1, 3, width=3.1, height=2.9)
    _pattern_panel(axes[0, 0], mean, "mean pattern (log)")
    image_panel(axes[0, 1], virtual.bright_field, title="virtual bright field", cmap="gray", units="counts")
    image_panel(axes[0, 2], virtual.dark_field, title="virtual dark field", cmap="gray", units="counts")
    return fig


def template_figure(probe: np.ndarray, template: np.ndarray, *, radius_px: float) -> Figure:
    """The vacuum probe and the template derived from the central disk of the mean pattern."""
    fig, axes = new_figure(1, 2, width=3.0, height=2.8)
    c = np.array(probe.shape) // 2
    h = template.shape[0] // 2
    crop = probe[c[0] - h:c[0] + h + 1, c[1] - h:c[1] + h + 1]
    for ax, img, title in ((axes[0, 0], crop, "vacuum probe (crop)"),
                           (axes[0, 1], template, f"template, r = {radius_px:.2f} px")):
        im = ax.imshow(img, cmap="viridis", interpolation="nearest")
        ax.add_patch(Circle((h, h), radius_px, fill=False, color="w", lw=0.8, ls="--"))
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("kx (px)", fontsize=8)
        ax.set_ylabel("ky (px)", fontsize=8)
        fig.colorbar(im, ax=ax, shrink=0.85)
    return fig


def disk_overlay(patterns: Sequence[np.ndarray], disks: Sequence[np.ndarray], *, radius_px: float,
                 titles: Sequence[str]) -> Figure:
    """A few diffraction patterns with the fitted disk positions circled."""
    n = len(patterns)
    fig, axes = new_figure(1, n, width=3.0, height=2.9)
    for ax, img, pos, title in zip(axes.flat, patterns, disks, titles):
        _pattern_panel(ax, img, f"{title}: {len(pos)} disks")
        for ky, kx in pos:
            ax.add_patch(Circle((kx, ky), radius_px + 1.5, fill=False, color="c", lw=0.7))
    return fig


def descan_figure(origin: np.ndarray, origin_fit: np.ndarray) -> Figure:
    """Measured direct-beam position (ky, kx) across the scan and its misfit to the descan plane."""
    fig, axes = new_figure(1, 3, width=3.0, height=2.7)
    image_panel(axes[0, 0], origin[..., 0], title="direct beam ky", cmap="viridis", units="px")
    image_panel(axes[0, 1], origin[..., 1], title="direct beam kx", cmap="viridis", units="px")
    res = np.linalg.norm(origin - origin_fit, axis=-1)
    image_panel(axes[0, 2], res, title="|measured − plane fit|", cmap="magma", units="px",
                vmax=float(np.nanpercentile(res, 99)))
    return fig


def lattice_figure(mean: np.ndarray, peaks: np.ndarray, hk: np.ndarray, basis: np.ndarray,
                   origin: np.ndarray) -> Figure:
    """Descan-corrected mean pattern with indexed disks and the two reciprocal basis vectors."""
    fig, axes = new_figure(1, 1, width=4.4, height=4.2)
    ax = axes[0, 0]
    _pattern_panel(ax, mean, "indexed reciprocal lattice")
    for (ky, kx), (h, k) in zip(peaks, hk):
        ax.text(kx, ky - 3.5, f"{int(h)},{int(k)}", color="w", fontsize=5.5, ha="center", va="bottom")
        ax.plot(kx, ky, "+", color="c", ms=4, mew=0.7)
    for col, colour, name in ((0, "C0", "g1"), (1, "C2", "g2")):
        ax.annotate("", xy=(origin[1] + basis[1, col], origin[0] + basis[0, col]), xytext=(origin[1], origin[0]),
                    arrowprops=dict(arrowstyle="->", color=colour, lw=1.5))
        ax.text(origin[1] + basis[1, col] * 1.15, origin[0] + basis[0, col] * 1.15, name, color=colour,
                fontsize=8, ha="center", va="center")
    return fig


def strain_comparison(measured: xr.Dataset, truth: xr.Dataset, *,
                      variables: Sequence[str] = ("exx", "eyy", "exy", "theta")) -> Figure:
    """Rows: strain components; columns: measured, truth, error (strain in %, rotation in mrad)."""
    fig, axes = new_figure(len(variables), 3, width=2.9, height=2.4)
    mask = measured["mask"]
    for row, name in zip(axes, variables):
        scale, unit = (1e3, "mrad") if name == "theta" else (100.0, "%")
        m = measured[name].where(mask)
        t = truth[name].where(mask)
        lim = float(np.nanpercentile(np.abs(t.values), 99.5)) * scale or 1.0
        image_panel(row[0], m, title=f"{name} measured", cmap=STRAIN_CMAP, vmin=-lim, vmax=lim,
                    scale=scale, units=unit)
        image_panel(row[1], t, title=f"{name} truth", cmap=STRAIN_CMAP, vmin=-lim, vmax=lim,
                    scale=scale, units=unit)
        image_panel(row[2], m - t, title=f"{name} error", cmap=STRAIN_CMAP, symmetric=True, scale=scale,
                    units=unit)
    return fig


def dose_figure(doses: Sequence[float], precision: Mapping[str, Sequence[float]]) -> Figure:
    """Strain precision (per-pixel standard deviation) against dose, with the 1/sqrt(dose) law."""
    fig, axes = new_figure(1, 1, width=4.4, height=3.3)
    ax = axes[0, 0]
    d = np.asarray(doses, float)
    for name, values in precision.items():
        ax.loglog(d, np.asarray(values, float), "o-", label=name + (" (rad)" if name == "theta" else ""), ms=4)
    allv = np.array([np.asarray(v, float) for v in precision.values()])
    c = np.exp(np.mean(np.log(allv * np.sqrt(d)[None])))
    ax.loglog(d, c / np.sqrt(d), "k--", lw=0.8, label=r"$\propto 1/\sqrt{\mathrm{dose}}$")
    ax.set_xlabel("dose (electrons per pattern)", fontsize=8)
    ax.set_ylabel("precision (per-pixel std)", fontsize=8)
    ax.grid(True, which="both", lw=0.3)
    ax.legend(fontsize=7)
    return fig


def detection_figure(diag: Mapping) -> Figure:
    """The automatically chosen disk-detection parameters, from :func:`chemomech.strain.diagnostics`.

    Left: descan-corrected mean pattern with the predicted disks and their capture circles
    (``capture_px``); middle: the template with its radius and fitting window; right: histogram of
    the SNR of every predicted disk of the requested patterns, with the ``snr_min`` threshold.
    """
    par = diag["parameters"]
    fig, axes = new_figure(1, 3, width=3.1, height=2.9)
    ax = axes[0, 0]
    _pattern_panel(ax, diag["mean"], "mean pattern, capture circles")
    q = diag["centre"] + np.asarray(diag["predicted_hk"]) @ np.asarray(diag["basis"]).T
    for ky, kx in q:
        ax.add_patch(Circle((kx, ky), par["capture_px"], fill=False, color="c", lw=0.6))
    ax = axes[0, 1]
    t = diag["template"]
    h = t.shape[0] // 2
    im = ax.imshow(t, cmap="viridis", interpolation="nearest")
    ax.add_patch(Circle((h, h), par["template_radius_px"], fill=False, color="w", lw=0.8, ls="--"))
    ax.set_title(f"template: r = {par['template_radius_px']:.2f} px, window {par['window_px']} px", fontsize=9)
    ax.set_xlabel("kx (px)", fontsize=8)
    ax.set_ylabel("ky (px)", fontsize=8)
    fig.colorbar(im, ax=ax, shrink=0.85)
    ax = axes[0, 2]
    snr = np.concatenate([np.asarray(v, float) for v in diag["disk_snr"]]) if diag["disk_snr"] else np.zeros(0)
    snr = snr[np.isfinite(snr)]
    bins = np.logspace(-1, np.log10(max(float(snr.max()) if snr.size else 10.0, 10.0)) + 0.1, 40)
    ax.hist(np.clip(snr, bins[0], None), bins=bins, color="0.4")
    ax.axvline(par["snr_min"], color="C3", lw=1.2, label=f"threshold snr_min = {par['snr_min']:g}")
    ax.set_xscale("log")
    ax.set_xlabel("disk SNR (amplitude / its standard error)", fontsize=8)
    ax.set_ylabel("predicted disks", fontsize=8)
    ax.legend(fontsize=7)
    return fig


def benchmark_figure(rates: Mapping[str, float], memory_mib: Mapping[str, float],
                     workers: Mapping[int, float]) -> Figure:
    """Three bar charts: patterns per second per core by method, peak memory by scan, throughput by workers."""
    fig, axes = new_figure(1, 3, width=2.9, height=2.6)
    for ax, data, ylabel, title in (
            (axes[0, 0], rates, "patterns per CPU-second", "speed, one core"),
            (axes[0, 1], memory_mib, "peak resident memory (MiB)", "memory, data on disk"),
            (axes[0, 2], {str(k): v for k, v in workers.items()}, "patterns per second", "dask workers")):
        names = list(data)
        vals = [float(data[n]) for n in names]
        bars = ax.bar(names, vals, color=[f"C{i}" for i in range(len(names))])
        ax.bar_label(bars, labels=[f"{v:.0f}" for v in vals], fontsize=7)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=7)
    axes[0, 2].set_xlabel("workers (1 thread each)", fontsize=8)
    return fig


def disk_contents_figure(patterns: Mapping[str, np.ndarray], *, crop: int = 40) -> Figure:
    """The same diffraction pattern drawn with different disk models, side by side (square-root scale).

    Parameters
    ----------
    patterns : mapping of str to (ky, kx) array
        Title -> pattern.
    crop : int
        Half-width (px) of the central region shown.
    """
    fig, axes = new_figure(1, len(patterns), width=3.2, height=3.0)
    for ax, (title, pat) in zip(axes[0], patterns.items()):
        cy, cx = np.array(pat.shape) // 2
        sub = np.clip(pat[cy - crop:cy + crop, cx - crop:cx + crop], 0, None)
        im = ax.imshow(np.sqrt(sub), cmap="magma", interpolation="nearest",
                       extent=(cx - crop - 0.5, cx + crop - 0.5, cy + crop - 0.5, cy - crop - 0.5))
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("kx (px)", fontsize=8)
        ax.set_ylabel("ky (px)", fontsize=8)
        ax.tick_params(labelsize=7)
        cb = fig.colorbar(im, ax=ax, shrink=0.8)
        cb.set_label("sqrt(counts)", fontsize=7)
        cb.ax.tick_params(labelsize=6)
    return fig


def thickness_bias_figure(thickness_diff_nm: np.ndarray, bias: Mapping[str, Mapping[str, np.ndarray]]) -> Figure:
    """Strain bias against the thickness difference from the reference, one panel per component.

    Parameters
    ----------
    thickness_diff_nm : (n,) array
        Thickness minus the reference region's thickness, nm.
    bias : mapping
        Method -> {component -> (n,) median error}; strain components dimensionless, theta in rad.
    """
    comps = list(next(iter(bias.values())).keys())
    fig, axes = new_figure(1, len(comps), width=2.6, height=2.6)
    for ax, k in zip(axes[0], comps):
        for method, errs in bias.items():
            ax.plot(thickness_diff_nm, 1e4 * np.asarray(errs[k]), "o-", ms=3, lw=0.8, label=method)
        ax.axhline(0, color="k", lw=0.5)
        ax.axhspan(-2, 2, color="0.9", zorder=0)
        ax.set_title(k, fontsize=9)
        ax.set_xlabel("thickness - reference (nm)", fontsize=8)
        ax.set_ylabel(("error (1e-4 rad)" if k == "theta" else "error (1e-4)"), fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0, 0].legend(fontsize=7)
    return fig
