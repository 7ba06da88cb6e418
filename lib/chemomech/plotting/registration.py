"""Figures of the registration chapter: modalities, search, overlays, TRE."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from ._common import image_panel, new_figure

__all__ = ["modality_pair", "checkerboard", "edge_overlay", "search_polar", "metric_profiles", "tre_map",
           "registration_diagnostic", "mask_comparison"]


def _arr(image) -> np.ndarray:
    return np.asarray(image.values if isinstance(image, xr.DataArray) else image, dtype=float)


def _unit(a: np.ndarray) -> np.ndarray:
    lo, hi = np.nanpercentile(a, [1, 99])
    return np.clip((a - lo) / ((hi - lo) or 1.0), 0, 1)


def modality_pair(fixed, moving, *, titles: Sequence[str] = ("X-ray (fixed)", "4D-STEM (moving)")) -> Figure:
    """The two images side by side, each on its own grid and colour scale."""
    fig, axes = new_figure(1, 2, width=3.4)
    for ax, img, t in zip(axes.flat, (fixed, moving), titles):
        image_panel(ax, img, title=t, cmap="gray")
    return fig


def checkerboard(fixed, warped, *, tiles: int = 8, ax=None) -> Figure:
    """Checkerboard of the fixed image and the warped moving image (each rescaled to 0–1).

    With inverted contrast, the moving image is shown inverted when its
    correlation with the fixed image is negative, so that edges line up visibly.
    """
    f, w = _arr(fixed), _arr(warped)
    ok = np.isfinite(f) & np.isfinite(w)
    if ok.sum() > 2 and np.corrcoef(f[ok], w[ok])[0, 1] < 0:
        w = -w
    yy, xx = np.indices(f.shape)
    n = max(1, int(tiles))
    board = ((yy * n // f.shape[0]) + (xx * n // f.shape[1])) % 2 == 0
    img = np.where(board, _unit(f), _unit(w))
    if ax is None:
        fig, axes = new_figure(1, 1, width=3.6, height=3.2)
        ax = axes[0, 0]
    fig = ax.figure
    image_panel(ax, img, title="checkerboard: fixed | warped moving", cmap="gray", colorbar=False)
    for k in range(1, n):  # tile borders, so that the eye can follow edges across them
        ax.axhline(k * f.shape[0] / n - 0.5, color="y", lw=0.4, alpha=0.6)
        ax.axvline(k * f.shape[1] / n - 0.5, color="y", lw=0.4, alpha=0.6)
    return fig


def edge_overlay(fixed, fixed_mask, warped_mask, *, ax=None) -> Figure:
    """Fixed image with the outline of its particle mask (cyan) and of the warped moving mask (red)."""
    from matplotlib.lines import Line2D

    if ax is None:
        fig, axes = new_figure(1, 1, width=3.6, height=3.2)
        ax = axes[0, 0]
    fig = ax.figure
    image_panel(ax, _arr(fixed), title="particle outlines", cmap="gray", colorbar=False)
    for m, col in ((fixed_mask, "c"), (warped_mask, "r")):
        ax.contour(np.asarray(m, float), levels=[0.5], colors=col, linewidths=1.0)
    ax.legend([Line2D([], [], color="c"), Line2D([], [], color="r")], ["X-ray mask", "warped 4D-STEM mask"],
              fontsize=7, loc="lower right")
    return fig


def search_polar(candidates: xr.Dataset) -> Figure:
    """Mutual information of the initial guesses against the search angle, mirrored and not.

    With several initial-guess families (``family``), the family of the refined winner is shown.
    """
    fig, axes = new_figure(1, 1, width=4.4, height=3.0)
    ax = axes[0, 0]
    best = int(candidates.attrs.get("chosen", np.argmax(candidates["mattes_mi"].values)))
    fam = candidates["family"].values if "family" in candidates else np.full(candidates.sizes["candidate"], "")
    keep = fam == fam[best]
    ang = np.degrees(candidates["angle_rad"].values)
    mir = candidates["mirror"].values.astype(bool)
    mi = candidates["mattes_mi"].values
    for flag, style, label in ((False, "o-", "not mirrored"), (True, "s--", "mirrored")):
        sel = (mir == flag) & keep
        if sel.any():
            ax.plot(ang[sel], mi[sel], style, ms=3, label=label)
    ax.plot(ang[best], mi[best], "k*", ms=12, label="refined winner" + (f" ({fam[best]} guess)" if fam[best] else ""))
    ax.set_xlabel("search angle (deg)")
    ax.set_ylabel("Mattes MI (nats)")
    ax.legend(fontsize=7)
    return fig


def metric_profiles(profile: xr.Dataset) -> Figure:
    """Correlation and mutual information against a misalignment (one panel each)."""
    fig, axes = new_figure(1, 2, width=3.2, height=2.6)
    s = profile["shift"].values
    for ax, k, col in zip(axes.flat, ("correlation", "mutual_information"), ("C3", "C0")):
        v = profile[k].values
        ax.plot(s, v, "-", color=col)
        ax.axvline(0, color="k", lw=0.6, ls=":")
        best = s[np.argmax(v)]
        ax.plot(best, v.max(), "v", color=col, label=f"maximum at {best:+.1f} px")
        ax.set_xlabel(f"{profile['shift'].attrs.get('long_name', 'shift')} (px)")
        ax.set_ylabel(f"{profile[k].attrs.get('long_name', k)} ({profile[k].attrs.get('units', '')})")
        ax.legend(fontsize=7)
    return fig


def tre_map(fixed, tre: np.ndarray, points: np.ndarray, *, ax=None) -> Figure:
    """Target registration error (fixed px) at landmark points, over the fixed image."""
    if ax is None:
        fig, axes = new_figure(1, 1, width=4.0, height=3.2)
        ax = axes[0, 0]
    fig = ax.figure
    f = _arr(fixed)
    ax.imshow(f, cmap="gray", interpolation="nearest")
    sc = ax.scatter(points[:, 1], points[:, 0], c=tre, s=4, cmap="magma", vmin=0)
    cb = fig.colorbar(sc, ax=ax, shrink=0.85)
    cb.set_label("TRE (fixed px)", fontsize=8)
    ax.set_xlabel("x (px)", fontsize=8)
    ax.set_ylabel("y (px)", fontsize=8)
    ax.set_title(f"TRE: mean {np.mean(tre):.2f} px, max {np.max(tre):.2f} px", fontsize=9)
    return fig


def registration_diagnostic(fixed, warped, fixed_mask, warped_mask, profile: xr.Dataset, *,
                            title: str = "") -> Figure:
    """One figure to judge a registration: outline overlay, checkerboard and a metric profile.

    Parameters
    ----------
    fixed, warped : array_like or xarray.DataArray
        The fixed image and the moving image warped onto it (``Registration.warp``).
    fixed_mask, warped_mask : array_like of bool
        The fixed particle mask and the warped moving mask.
    profile : xarray.Dataset
        From :func:`chemomech.registration.metric_profile`: MI against a shift (px).
    title : str
        Figure title (e.g. the metrics).
    """
    fig, axes = new_figure(1, 3, width=3.3, height=3.0)
    edge_overlay(fixed, fixed_mask, warped_mask, ax=axes[0, 0])
    checkerboard(fixed, warped, ax=axes[0, 1])
    ax = axes[0, 2]
    s = profile["shift"].values
    v = profile["mutual_information"].values
    ax.plot(s, v, "-", color="C0")
    ax.axvline(0, color="k", lw=0.6, ls=":")
    ax.plot(s[np.argmax(v)], v.max(), "v", color="C0", label=f"maximum at {s[np.argmax(v)]:+.1f} px")
    ax.set_xlabel(f"{profile['shift'].attrs.get('long_name', 'shift')} (px)")
    ax.set_ylabel("mutual information (nats)")
    ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def mask_comparison(image, masks: dict, *, truth=None) -> Figure:
    """An image with the outlines of several particle masks (e.g. old rule vs new), and the truth if known.

    Parameters
    ----------
    image : array_like or xarray.DataArray
    masks : dict of str -> array_like of bool
        Label → mask; each outline gets its own colour.
    truth : array_like of bool, optional
        The true particle mask, drawn dashed.
    """
    from matplotlib.lines import Line2D

    fig, axes = new_figure(1, 1, width=4.2, height=3.6)
    ax = axes[0, 0]
    image_panel(ax, _arr(image), title="particle masks", cmap="gray", colorbar=False)
    handles, labels = [], []
    for (label, m), col in zip(masks.items(), ("r", "c", "y", "m")):
        ax.contour(np.asarray(m, float), levels=[0.5], colors=col, linewidths=1.2)
        handles.append(Line2D([], [], color=col))
        labels.append(label)
    if truth is not None:
        ax.contour(np.asarray(truth, float), levels=[0.5], colors="w", linewidths=0.8, linestyles="--")
        handles.append(Line2D([], [], color="w", ls="--"))
        labels.append("true outline")
    ax.legend(handles, labels, fontsize=7, loc="lower right")
    return fig
