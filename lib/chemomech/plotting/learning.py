"""Figures of the learning chapter: learned laws, CV curve, strain maps, SIMEX."""

from __future__ import annotations

import numpy as np
import xarray as xr

from ._common import STRAIN_CMAP, image_panel, new_figure

__all__ = ["coherency_scatter", "learned_law", "cv_curve", "strain_residual_maps", "simex_curve"]

_AXES = ("a (eps0_xx)", "c (eps0_yy)")


def coherency_scatter(ds: xr.Dataset, *, max_points: int = 4000):
    """Strain against X, pixel by pixel: the total (measured) strain and the stress-free eigenstrain.

    Parameters
    ----------
    ds : xarray.Dataset
        A rendered twin particle (``X``, ``exx``, ``eyy``, ``eps0_xx``, ``eps0_yy``, ``mask``).
    max_points : int
        Pixels drawn at most (evenly strided).
    """
    m = ds["mask"].values.astype(bool)
    x = ds["X"].values[m]
    step = max(1, x.size // max_points)
    fig, axes = new_figure(1, 2, width=3.3, height=2.7)
    for c, (tot, eig) in enumerate((("exx", "eps0_xx"), ("eyy", "eps0_yy"))):
        ax = axes[0, c]
        ax.plot(x[::step], 100 * ds[tot].values[m][::step], ".", ms=2, alpha=0.5, label=f"strain {tot} (total)")
        ax.plot(x[::step], 100 * ds[eig].values[m][::step], ".", ms=2, color="k", label=f"eigenstrain {eig}")
        ax.set_xlabel("Li fraction X", fontsize=8)
        ax.set_ylabel(f"strain along {'a' if c == 0 else 'c'} (%)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, markerscale=4)
    return fig


def learned_law(model, *, truth=None, literature=None, x_range: tuple[float, float] = (0.0, 1.0),
                level: float = 0.95, label: str = "learned"):
    """Learned eps0(X) and d eps0/dX with bootstrap bands, against the truth and Vegard's law.

    Parameters
    ----------
    model : chemomech.learning.EigenstrainModel
    truth : callable, optional
        The injected law, ``X -> (..., 2)`` (e.g. a ``specimen.EigenstrainLaw``).
    literature : callable, optional
        A literature law drawn dashed (e.g. ``specimen.vegard_law()``).
    x_range : (float, float)
        X range of the plot.
    level : float
        Coverage of the bootstrap band.
    label : str
        Legend label of the learned curve.
    """
    x = np.linspace(*x_range, 101)
    fig, axes = new_figure(2, 2, width=3.4, height=2.6)
    has_band = model.coef_boot.shape[0] >= 2
    for row, quantity in enumerate(("eigenstrain", "derivative")):
        y = getattr(model, quantity)(x)
        band = model.interval(x, quantity=quantity, level=level) if has_band else None
        for c in range(2):
            ax = axes[row, c]
            if band is not None:
                ax.fill_between(x, 100 * band[0][:, c], 100 * band[1][:, c], color="C0", alpha=0.3,
                                label=f"{level:.0%} bootstrap band")
            ax.plot(x, 100 * y[:, c], color="C0", label=label)
            for law, style, name in ((truth, ("k", ":"), "truth"), (literature, ("C3", "--"), "Vegard (literature)")):
                if law is None:
                    continue
                v = law(x) if quantity == "eigenstrain" else _derivative(law, x)
                ax.plot(x, 100 * v[:, c], color=style[0], ls=style[1], label=name)
            ax.set_xlabel("Li fraction X", fontsize=8)
            what = "eps0" if quantity == "eigenstrain" else "d eps0/dX"
            ax.set_ylabel(f"{what} along {'a' if c == 0 else 'c'} (%)", fontsize=8)
            ax.tick_params(labelsize=7)
            if row == 0 and c == 0:
                ax.legend(fontsize=7)
    return fig


def _derivative(law, x):
    if hasattr(law, "derivative"):
        return np.asarray(law.derivative(x))
    h = 1e-5
    return (np.asarray(law(np.clip(x + h, 0, 1))) - np.asarray(law(np.clip(x - h, 0, 1)))) / (2 * h)


def cv_curve(cv: xr.Dataset):
    """Cross-validated strain error against the polynomial degree (mean ± standard error over folds)."""
    fig, axes = new_figure(1, 1, width=3.8, height=2.8)
    ax = axes[0, 0]
    deg = cv["degree"].values
    mse = cv["mse"].values
    mean = mse.mean(axis=1)
    se = mse.std(axis=1, ddof=1) / np.sqrt(mse.shape[1])
    rms = np.sqrt(mean)
    ax.errorbar(deg, 1e4 * rms, yerr=1e4 * se / (2 * rms), marker="o", capsize=3)
    sel = int(cv.attrs["selected"])
    ax.plot([sel], [1e4 * rms[deg == sel][0]], "r*", ms=12, label=f"selected: degree {sel}")
    ax.set_xlabel("polynomial degree of eps0(X)", fontsize=8)
    ax.set_ylabel("CV RMS strain error (1e-4)", fontsize=8)
    ax.set_title(cv.attrs.get("folds", ""), fontsize=9)
    ax.set_xticks(deg)
    ax.legend(fontsize=7)
    ax.tick_params(labelsize=7)
    return fig


def strain_residual_maps(measured: xr.Dataset, predicted: xr.Dataset, residual: xr.Dataset, *,
                         marker_nm: tuple[float, float] | None = None):
    """Measured, predicted and residual exx, eyy, exy maps (rows), in percent.

    Parameters
    ----------
    measured, predicted, residual : xarray.Dataset
        With ``exx``, ``eyy``, ``exy`` on ``("y", "x")``; ``predicted`` is shifted by the
        residual's fitted offsets so that the columns are comparable.
    marker_nm : (float, float), optional
        ``(y, x)`` of a point to circle (e.g. a known defect).
    """
    fig, axes = new_figure(3, 3, width=2.7, height=2.3)
    offs = residual.attrs.get("offsets", [0.0, 0.0, 0.0])
    for i, v in enumerate(("exx", "eyy", "exy")):
        meas = measured[v].where(residual["mask"])
        vmax = float(np.nanpercentile(np.abs(100 * meas.values), 99)) or 1.0
        image_panel(axes[i, 0], meas, title=f"measured {v}", cmap=STRAIN_CMAP, scale=100, units="%",
                    vmin=-vmax, vmax=vmax)
        image_panel(axes[i, 1], predicted[v] + offs[i], title=f"predicted {v}", cmap=STRAIN_CMAP, scale=100,
                    units="%", vmin=-vmax, vmax=vmax)
        image_panel(axes[i, 2], residual[v], title=f"residual {v}", cmap=STRAIN_CMAP, scale=100, units="%",
                    symmetric=True)
        if marker_nm is not None:
            axes[i, 2].plot(marker_nm[1], marker_nm[0], "o", mfc="none", mec="k", ms=14)
    return fig


def simex_curve(result: xr.Dataset, *, truth=None, reference=None):
    """SIMEX: mean naive slope against added noise and the extrapolant down to lambda = -1.

    Parameters
    ----------
    result : xarray.Dataset
        From :func:`chemomech.learning.simex`.
    truth : array_like (2,), optional
        True d eps0/dX (aa, cc), drawn as a dotted line.
    reference : array_like (2,), optional
        The naive slope without noise in X, drawn dashed.
    """
    fig, axes = new_figure(1, 2, width=3.3, height=2.7)
    lam = result["lambda"].values
    for c in range(2):
        ax = axes[0, c]
        y = 100 * result["slope_lambda"].values[:, c]
        ax.plot(lam, y, "o", label="naive slope with added noise")
        ax.plot(result["lambda_fit"].values, 100 * result["slope_fit"].values[:, c], color="C0", lw=0.8,
                alpha=0.6, label="extrapolant")
        ax.plot([-1], [100 * float(result["slope"].values[c])], "s", color="C2", label="SIMEX (lambda = -1)")
        if reference is not None:
            ax.axhline(100 * reference[c], color="C1", ls="--", label="naive, noise-free X")
        if truth is not None:
            ax.axhline(100 * truth[c], color="k", ls=":", label="true d eps0/dX")
        ax.axvline(0, color="0.7", lw=0.6)
        ax.set_xlabel("added noise variance / sigma_X^2 (lambda)", fontsize=8)
        ax.set_ylabel(f"slope along {'a' if c == 0 else 'c'} (% per unit X)", fontsize=8)
        ax.tick_params(labelsize=7)
        if c == 0:
            ax.legend(fontsize=6)
    return fig
