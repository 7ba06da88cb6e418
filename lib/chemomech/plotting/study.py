"""Figures of the end-to-end chapter (and of ``python -m chemomech reproduce``)."""

from __future__ import annotations

import numpy as np

from ._common import STRAIN_CMAP, X_CMAP, image_panel, new_figure
from .learning import strain_residual_maps

__all__ = ["study_gallery", "study_correlated_maps", "study_strain_vs_x", "study_heldout", "study_slope_table",
           "study_budget"]

_BATCH_ORDER = ("li_rich", "biphasic", "li_poor")
_BATCH_LABEL = {"li_rich": "Li-rich", "biphasic": "biphasic (50 %)", "li_poor": "Li-poor"}


def study_gallery(result):
    """Measured Li maps of all particles, grouped by batch (columns ordered Li-rich → Li-poor).

    Parameters
    ----------
    result : chemomech.study.StudyResult
    """
    names = sorted(result.stacks, key=lambda n: (_BATCH_ORDER.index(result.stacks[n].attrs["batch"]), n))
    fig, axes = new_figure(1, len(names), width=2.6, height=2.6)
    for ax, n in zip(axes[0], names):
        st = result.stacks[n]
        role = "held out" if n == result.config.heldout else "training"
        image_panel(ax, st["X_xray"], title=f"{n}: {_BATCH_LABEL[st.attrs['batch']]}, {role}", cmap=X_CMAP,
                    vmin=0.0, vmax=1.0, units="X", colorbar=ax is axes[0, -1])
    return fig


def study_correlated_maps(result, *, names=None):
    """The correlated stack per particle (rows): X, e_aa, e_cc, e_ac, rotation on the X-ray grid.

    Parameters
    ----------
    result : chemomech.study.StudyResult
    names : sequence of str, optional
        Particles to show (default all).
    """
    names = list(result.stacks) if names is None else list(names)
    cols = (("X", "X", X_CMAP, 1.0, "1"), ("exx", "e_aa", STRAIN_CMAP, 100.0, "%"),
            ("eyy", "e_cc", STRAIN_CMAP, 100.0, "%"), ("exy", "e_ac (shear)", STRAIN_CMAP, 100.0, "%"),
            ("theta", "rotation", STRAIN_CMAP, 1e3, "mrad"))
    fig, axes = new_figure(len(names), len(cols), width=2.3, height=2.0)
    for i, n in enumerate(names):
        st = result.stacks[n]
        for j, (var, label, cmap, scale, unit) in enumerate(cols):
            kw = {"vmin": 0.0, "vmax": 1.0} if var == "X" else {"symmetric": True}
            image_panel(axes[i, j], st[var], title=f"{n} {label}", cmap=cmap, scale=scale, units=unit, **kw)
    return fig


def study_strain_vs_x(result, *, bins: int = 60):
    """Strain against X for all training pixels (2-D histogram) with the learned law and references.

    The strain is the measured strain re-expressed relative to FePO4
    (``result.strain_fepo4``) minus the small offsets the final fit left, so all
    particles share the law's zero. The learned eigenstrain (with its 95 % bootstrap band), the truth and
    Vegard's law are drawn on top. Total strain differs from the eigenstrain by the
    coherency (elastic) strain, which is why the cloud is flatter than the law.

    Parameters
    ----------
    result : chemomech.study.StudyResult
    bins : int
        Histogram bins per axis.
    """
    from matplotlib.colors import LogNorm

    from ..materials import VEGARD_AA, VEGARD_CC

    model = result.model
    law = result.measurements[result.config.heldout].particle.law
    xs = np.linspace(0.0, 1.0, 101)
    e0 = model.eigenstrain(xs)
    band = model.interval(xs, quantity="eigenstrain") if model.coef_boot.shape[0] >= 2 else None
    fig, axes = new_figure(1, 2, width=3.6, height=3.0)
    for c, (var, axis) in enumerate((("exx", "a"), ("eyy", "c"))):
        ax = axes[0, c]
        x_all, e_all = [], []
        for n in result.config.train:
            st = result.stacks[n]
            m = st["mask"].values
            x_all.append(st["X"].values[m])
            e_all.append(result.strain_fepo4[n][var].values[m] - model.offsets[n][c])
        x_all, e_all = np.concatenate(x_all), 100 * np.concatenate(e_all)
        lo, hi = np.percentile(e_all, [0.5, 99.5])
        lo, hi = min(lo, 100 * e0[:, c].min()), max(hi, 100 * e0[:, c].max())
        h = ax.hist2d(x_all, e_all, bins=bins, range=[[0, 1], [lo, hi]], cmap="Greys", norm=LogNorm())
        fig.colorbar(h[3], ax=ax, shrink=0.85).set_label("pixels", fontsize=8)
        if band is not None:
            ax.fill_between(xs, 100 * band[0][:, c], 100 * band[1][:, c], color="C0", alpha=0.35,
                            label="95 % band")
        ax.plot(xs, 100 * e0[:, c], color="C0", label=f"learned eps0 (degree {model.degree})")
        ax.plot(xs, 100 * law(xs)[:, c], "k:", label="truth")
        ax.plot(xs, 100 * xs * (VEGARD_AA, VEGARD_CC)[c], color="C3", ls="--", lw=0.8, label="Vegard (literature)")
        ax.set_xlabel("Li fraction X", fontsize=8)
        ax.set_ylabel(f"strain along {axis} (%)", fontsize=8)
        ax.set_title(f"e_{axis}{axis}, training pixels P2-P5", fontsize=9)
        ax.tick_params(labelsize=7)
        if c == 0:
            ax.legend(fontsize=6, loc="upper left")
    return fig


def study_heldout(result):
    """Held-out particle: measured, predicted and residual strain (rows e_aa, e_cc, e_ac)."""
    h = result.heldout
    return strain_residual_maps(h["measured"], h["predicted"], h["residual"],
                                marker_nm=h.get("defect_center_nm"))


def _table(ax, rows, header, title):
    ax.axis("off")
    tab = ax.table(cellText=rows, colLabels=header, loc="center", cellLoc="center")
    tab.auto_set_font_size(False)
    tab.set_fontsize(8)
    tab.scale(1.0, 1.4)
    ax.set_title(title, fontsize=9)


def study_slope_table(result, *, budget=None):
    """Table of learned slopes (with 95 % intervals) vs truth vs literature; optional error budget below."""
    sl = result.slopes
    rows = []
    for c in ("aa", "cc"):
        s = sl.sel(component=c)
        rows.append([c, f"{100 * float(s.learned):.3f}", f"[{100 * float(s.low):.3f}, {100 * float(s.high):.3f}]",
                     f"{100 * float(s.truth):.3f}", f"{100 * float(s.literature):.3f}",
                     f"{100 * float(s.rel_error):+.1f}"])
    n = 1 if budget is None else 2
    fig, axes = new_figure(n, 1, width=7.0, height=1.6)
    _table(axes[0, 0], rows, ["axis", "learned (%)", "95 % interval (%)", "truth (%)", "Vegard (%)", "error (%)"],
           f"d eps0/dX at X = {sl.attrs['X']} (% per unit X)")
    if budget is not None:
        brow = []
        for v in budget["variant"].values:
            b = budget.sel(variant=v)
            brow.append([str(v)] + [f"{100 * float(b.rel_error.sel(component=c)):+.2f}" for c in ("aa", "cc")]
                        + [f"{100 * float(b.contribution.sel(component=c)):+.2f}" for c in ("aa", "cc")])
        _table(axes[1, 0], brow, ["variant", "error aa (%)", "error cc (%)", "caused, aa (%)", "caused, cc (%)"],
               "error budget: slope error with each stage replaced by its truth")
    return fig


def study_budget(budget):
    """Bar chart of the relative slope error per variant (measured, each stage replaced by its truth)."""
    fig, axes = new_figure(1, 1, width=4.6, height=2.8)
    ax = axes[0, 0]
    names = [str(v) for v in budget["variant"].values]
    pos = np.arange(len(names))
    for k, c in enumerate(("aa", "cc")):
        ax.bar(pos + (k - 0.5) * 0.38, 100 * budget["rel_error"].sel(component=c).values, width=0.38,
               label=f"e_{c}")
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xticks(pos)
    ax.set_xticklabels(names, fontsize=7, rotation=15)
    ax.set_ylabel("slope error, learned / truth - 1 (%)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7)
    return fig
