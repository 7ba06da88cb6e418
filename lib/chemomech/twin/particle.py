"""The digital twin: synthetic Li_xFePO4 platelets with known truth.

A :class:`Particle` is defined by smooth analytic fields in physical
coordinates (nanometres, ``y`` down the image rows, ``x`` along the columns,
the particle centred on the origin): an irregular star-shaped outline, a
thickness map, a lithium-fraction map ``X`` and an eigenstrain law
``eps0(X)``. Its *truth strain* is the plane-stress elastic response to that
eigenstrain, solved with quadratic triangles on a mesh much finer than any
pixel grid the measurement simulators or the analysis use (so no inverse
crime). Every field can be sampled at arbitrary points
(:meth:`Particle.sample`) or rendered on a pixel grid
(:meth:`Particle.render`), as an ``xarray.Dataset`` with units.

The named set :func:`particle_set` mirrors the particles of Deng et al. (2022):
P2–P5 for training, P1 held out, drawn from three batches (Li-rich, 50 %
biphasic, Li-poor).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import xarray as xr
from numpy.typing import ArrayLike

from .. import _validate, elasticity
from ..materials import VEGARD_AA, VEGARD_CC

__all__ = [
    "BATCHES",
    "Defect",
    "EigenstrainLaw",
    "Particle",
    "make_particle",
    "mesh_convergence",
    "nonlinear_law",
    "particle_set",
    "vegard_law",
]

#: Composition recipes per batch: Li fraction of the two domain types, area
#: fraction of the Li-poorer one, interface width (nm).
BATCHES = {
    "li_rich": {"x_hi": 0.95, "x_lo": 0.55, "frac_lo": 0.25, "width_nm": 60.0},
    "biphasic": {"x_hi": 0.95, "x_lo": 0.05, "frac_lo": 0.50, "width_nm": 10.0},
    "li_poor": {"x_hi": 0.45, "x_lo": 0.05, "frac_lo": 0.75, "width_nm": 60.0},
}


#: RMS of the bending tilt (mrad) about its mean, and the largest mean tilt (mrad) per axis.
TILT_RMS_MRAD = 1.2
TILT_OFFSET_MRAD = 0.8
#: Largest tilt component (mrad) :meth:`Particle.tilt_mrad` returns (the multislice library covers 4.8 mrad
#: of incident direction, of which the 0.8 mrad probe aperture takes 0.8).
TILT_LIMIT_MRAD = 3.8
_BENDING_STREAM = 0xB3D  # second entry of the bending field's seed sequence


# --- eigenstrain laws ---------------------------------------------------------------


@dataclass(frozen=True)
class EigenstrainLaw:
    """Stress-free strain of Li_xFePO4 along a and c as a function of X.

    Parameters
    ----------
    name : str
        Short label used in plots and dataset attributes.
    aa, cc : tuple of float
        Power-series coefficients ``(c1, c2, ...)`` of ``eps0_aa(X)`` and
        ``eps0_cc(X)``; the constant term is zero, so ``eps0(0) = 0`` (strain is
        relative to the FePO4 lattice).

    Examples
    --------
    >>> law = vegard_law()
    >>> np.round(law([0.0, 1.0]), 3).tolist()
    [[0.0, 0.0], [0.052, -0.02]]
    """

    name: str
    aa: tuple[float, ...]
    cc: tuple[float, ...]

    def __post_init__(self):
        for comp in ("aa", "cc"):
            c = getattr(self, comp)
            if len(c) < 1 or not all(np.isfinite(v) for v in c):
                raise ValueError(f"{comp} must be a non-empty tuple of finite coefficients, got {c!r}")

    def __call__(self, X: ArrayLike) -> np.ndarray:
        """Eigenstrain ``(..., 2)``: ``eps0_aa, eps0_cc`` at Li fraction(s) `X`."""
        x = np.asarray(X, dtype=float)
        return np.stack([_powerseries(self.aa, x), _powerseries(self.cc, x)], axis=-1)

    def derivative(self, X: ArrayLike) -> np.ndarray:
        """Slope ``d eps0 / dX`` ``(..., 2)`` at `X`."""
        x = np.asarray(X, dtype=float)
        return np.stack([_powerseries_deriv(self.aa, x), _powerseries_deriv(self.cc, x)], axis=-1)


def _powerseries(c: tuple[float, ...], x: np.ndarray) -> np.ndarray:
    return sum(ck * x ** (k + 1) for k, ck in enumerate(c))


def _powerseries_deriv(c: tuple[float, ...], x: np.ndarray) -> np.ndarray:
    return sum((k + 1) * ck * x**k for k, ck in enumerate(c))


def vegard_law() -> EigenstrainLaw:
    """Vegard's law: eigenstrain linear in X, +5.2 % along a and −2.0 % along c at X = 1."""
    return EigenstrainLaw("Vegard", (VEGARD_AA,), (VEGARD_CC,))


def nonlinear_law() -> EigenstrainLaw:
    """A deliberately non-Vegard law (cubic along a, quadratic along c) for tests.

    It is not a literature law: the slopes vary by a factor of two (a) and
    seven (c) across X, so a learner that can only fit straight lines fails.
    """
    return EigenstrainLaw("non-linear (synthetic)", (0.030, 0.045, -0.025), (-0.035, 0.015))


# --- defects ------------------------------------------------------------------------


@dataclass(frozen=True)
class Defect:
    """A local strain source: a Gaussian-weighted misfitting inclusion.

    Models what a dislocation loop, a precipitate or a crack tip does to the
    strain map: a localised eigenstrain that the composition law does not
    explain, so it stands out in residual maps.

    Parameters
    ----------
    center_nm : (float, float)
        ``(y, x)`` position, nm.
    sigma_nm : float
        Gaussian radius, nm.
    eigenstrain : (float, float, float)
        Peak eigenstrain ``(exx, eyy, exy)`` in the image frame (tensor shear).
    """

    center_nm: tuple[float, float]
    sigma_nm: float = 12.0
    eigenstrain: tuple[float, float, float] = (0.004, -0.004, 0.008)

    def __post_init__(self):
        _validate.positive(self.sigma_nm, name="sigma_nm")
        if len(self.center_nm) != 2 or len(self.eigenstrain) != 3:
            raise ValueError("center_nm needs 2 values (y, x) and eigenstrain 3 (exx, eyy, exy)")

    def weight(self, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Gaussian weight of the defect at points ``(y, x)``."""
        r2 = (y - self.center_nm[0]) ** 2 + (x - self.center_nm[1]) ** 2
        return np.exp(-0.5 * r2 / self.sigma_nm**2)


# --- the particle -------------------------------------------------------------------


def _random_field(rng: np.random.Generator, n_modes: int, wavelength_nm: tuple[float, float],
                  anisotropy_rad: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Wave vectors (n, 2 as ky, kx), amplitudes and phases of a smooth random field."""
    lam = rng.uniform(*wavelength_nm, n_modes)
    ang = rng.normal(0.0, anisotropy_rad, n_modes) + rng.choice([0.0, np.pi], n_modes)
    k = 2 * np.pi / lam
    kvec = np.stack([k * np.sin(ang), k * np.cos(ang)], axis=1)
    amp = rng.uniform(0.5, 1.0, n_modes)
    phase = rng.uniform(0, 2 * np.pi, n_modes)
    return kvec, amp, phase


def _eval_field(params, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    kvec, amp, phase = params
    arg = np.multiply.outer(y, kvec[:, 0]) + np.multiply.outer(x, kvec[:, 1]) + phase
    return np.sum(amp * np.cos(arg), axis=-1)


@dataclass(frozen=True, eq=False)
class Particle:
    """A synthetic Li_xFePO4 platelet with analytic fields and an FEM truth strain.

    Build with :func:`make_particle` or :func:`particle_set`.

    Parameters
    ----------
    name : str
        Label, e.g. ``"P1"``.
    batch : {"li_rich", "biphasic", "li_poor"}
        Composition recipe (:data:`BATCHES`).
    seed : int
        Seed of every random draw that shapes the particle.
    law : EigenstrainLaw
        Composition–eigenstrain law (crystal frame).
    defect : Defect or None
        Optional local strain source.
    crystal_angle_rad : float
        Angle of the crystal a axis from image x (positive turns x towards y).
    semi_axes_nm : (float, float) or None
        Semi-axes ``(along y, along x)`` of the outline; ``None`` draws them
        (160–210 nm along x, 110–160 nm along y).
    stiffness : {"average", "composition"}
        Phase-averaged stiffness, or one that follows X point by point.
    mesh_nrefs : int
        Refinement level of the truth mesh (``4 * 2**nrefs`` boundary edges).
    """

    name: str
    batch: str
    seed: int
    law: EigenstrainLaw = field(default_factory=vegard_law)
    defect: Defect | None = None
    crystal_angle_rad: float = 0.0
    semi_axes_nm: tuple[float, float] | None = None
    stiffness: str = "average"
    mesh_nrefs: int = 6

    def __post_init__(self):
        _validate.choice(self.batch, tuple(BATCHES), name="batch")
        _validate.choice(self.stiffness, ("average", "composition"), name="stiffness")
        if not isinstance(self.law, EigenstrainLaw):
            raise TypeError(f"law must be an EigenstrainLaw, got {type(self.law).__name__}")
        if self.defect is not None and not isinstance(self.defect, Defect):
            raise TypeError(f"defect must be a Defect or None, got {type(self.defect).__name__}")
        rng = _validate.rng(self.seed)
        if self.semi_axes_nm is None:
            axes = (float(rng.uniform(110, 160)), float(rng.uniform(160, 210)))
        else:
            axes = tuple(_validate.positive(a, name="semi_axes_nm") for a in self.semi_axes_nm)
            rng.uniform(size=2)  # keep the stream aligned with the drawn case
        kk = np.arange(2, 6)
        harm_amp = rng.uniform(0.3, 1.0, kk.size) * 0.06 / (kk - 1)
        harm_phase = rng.uniform(0, 2 * np.pi, kk.size)
        tilt = float(rng.uniform(-0.35, 0.35))
        comp = _random_field(rng, 10, (180.0, 420.0), 0.5)
        mod = _random_field(rng, 6, (150.0, 400.0), 1.5)
        thick = _random_field(rng, 6, (120.0, 300.0), 1.5)
        t_max = float(rng.uniform(60.0, 110.0))
        internals = dict(axes=axes, harm=(kk, harm_amp, harm_phase), tilt=tilt, comp=comp,
                         mod=mod, thick=thick, t_max=t_max, cache={})
        object.__setattr__(self, "_p", internals)
        # normalise the composition fields over the particle (deterministic grid)
        yy, xx = np.mgrid[-axes[0] * 1.3:axes[0] * 1.3:121j, -axes[1] * 1.3:axes[1] * 1.3:121j]
        inside = self.contains(yy, xx)
        for key in ("comp", "mod", "thick"):
            g = _eval_field(internals[key], yy[inside], xx[inside])
            internals[key + "_norm"] = (float(g.mean()), float(g.std()))
        g = self._field("comp", yy[inside], xx[inside])
        recipe = BATCHES[self.batch]
        internals["g0"] = float(np.quantile(g, recipe["frac_lo"]))
        kvec, amp, _ = comp
        grad_rms = np.sqrt(np.sum(amp**2 * np.sum(kvec**2, axis=1)) / 2) / internals["comp_norm"][1]
        internals["g_scale"] = float(recipe["width_nm"] * grad_rms)
        # bending (local crystal tilt) from its own seed stream, so the draws above stay unchanged
        brng = np.random.default_rng([self.seed, _BENDING_STREAM])
        bend = _random_field(brng, 6, (250.0, 600.0), 1.5)
        internals["bend"] = bend
        internals["bend_offset"] = brng.uniform(-1.0, 1.0, 2) * TILT_OFFSET_MRAD
        kvec, amp, _ = bend
        # RMS of the gradient of the raw height field over random phases: sqrt(sum a^2 |k|^2 / 2)
        internals["bend_scale"] = float(TILT_RMS_MRAD / np.sqrt(np.sum(amp**2 * np.sum(kvec**2, axis=1)) / 2))

    # -- geometry -------------------------------------------------------------------

    @property
    def semi_axes(self) -> tuple[float, float]:
        """Semi-axes ``(along y, along x)`` of the outline, nm."""
        return self._p["axes"]

    def radius(self, phi: ArrayLike) -> np.ndarray:
        """Outline radius (nm) at polar angle `phi` (from +x towards +y, radians)."""
        phi = np.asarray(phi, dtype=float)
        ay, ax = self._p["axes"]
        psi = phi - self._p["tilt"]
        r = 1.0 / np.sqrt((np.cos(psi) / ax) ** 2 + (np.sin(psi) / ay) ** 2)
        kk, amp, ph = self._p["harm"]
        pert = np.sum(amp * np.cos(np.multiply.outer(phi, kk) + ph), axis=-1)
        return r * (1.0 + pert)

    def contains(self, y: ArrayLike, x: ArrayLike) -> np.ndarray:
        """True at points ``(y, x)`` (nm) inside the outline."""
        y = np.asarray(y, dtype=float)
        x = np.asarray(x, dtype=float)
        return np.hypot(x, y) < self.radius(np.arctan2(y, x))

    def outline(self, n: int = 720) -> np.ndarray:
        """Closed outline as an ``(n + 1, 2)`` array of ``(y, x)`` in nm."""
        phi = np.linspace(0, 2 * np.pi, n + 1)
        r = self.radius(phi)
        return np.stack([r * np.sin(phi), r * np.cos(phi)], axis=1)

    # -- fields ---------------------------------------------------------------------

    def _field(self, key: str, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        mean, std = self._p[key + "_norm"]
        return (_eval_field(self._p[key], y, x) - mean) / std

    def lithium(self, y: ArrayLike, x: ArrayLike) -> np.ndarray:
        """Li fraction X at points ``(y, x)`` (nm); defined everywhere, use :meth:`contains`."""
        y = np.asarray(y, dtype=float)
        x = np.asarray(x, dtype=float)
        r = BATCHES[self.batch]
        g = self._field("comp", y, x)
        s = np.tanh((g - self._p["g0"]) / self._p["g_scale"])
        X = r["x_lo"] + (r["x_hi"] - r["x_lo"]) * 0.5 * (1.0 + s) + 0.015 * self._field("mod", y, x)
        return np.clip(X, 0.0, 1.0)

    def thickness(self, y: ArrayLike, x: ArrayLike) -> np.ndarray:
        """Thickness along b (nm) at points ``(y, x)``; 0 outside the particle."""
        y = np.asarray(y, dtype=float)
        x = np.asarray(x, dtype=float)
        q = np.hypot(x, y) / self.radius(np.arctan2(y, x))
        profile = np.sqrt(np.clip(1.0 - q**8, 0.0, None))
        return self._p["t_max"] * profile * (1.0 + 0.08 * np.tanh(self._field("thick", y, x)))

    def tilt_mrad(self, y: ArrayLike, x: ArrayLike) -> np.ndarray:
        """Local crystal tilt from bending, mrad, ``(..., 2)``: ``(along a*, along c*)`` (crystal frame).

        A thin platelet is never flat: the tilt is the gradient of a smooth random
        height field (wavelengths 250-600 nm, RMS tilt :data:`TILT_RMS_MRAD` about a
        mean of up to :data:`TILT_OFFSET_MRAD` per axis), written as the direction of
        the incident beam relative to [010] in the crystal frame, each component
        clipped to ±:data:`TILT_LIMIT_MRAD`. It is drawn from a seed stream of its own
        (``[seed, 0xB3D]``), so it leaves every other field of the particle unchanged.
        It does not enter the truth strain; the 4D-STEM twin uses it for the disk
        contents (bend contours in dark-field images).

        Examples
        --------
        >>> p = make_particle("demo", seed=3)
        >>> t = p.tilt_mrad(np.zeros(3), np.array([-50.0, 0.0, 50.0]))
        >>> t.shape, bool(np.all(np.abs(t) <= TILT_LIMIT_MRAD))
        ((3, 2), True)
        """
        y = np.asarray(y, dtype=float)
        x = np.asarray(x, dtype=float)
        kvec, amp, phase = self._p["bend"]
        arg = np.multiply.outer(y, kvec[:, 0]) + np.multiply.outer(x, kvec[:, 1]) + phase
        # gradient of sum(amp cos(arg)) in image (y, x), then into the crystal frame (a*, c*)
        gy = -np.sum(amp * kvec[:, 0] * np.sin(arg), axis=-1)
        gx = -np.sum(amp * kvec[:, 1] * np.sin(arg), axis=-1)
        c, s = np.cos(self.crystal_angle_rad), np.sin(self.crystal_angle_rad)
        scale = self._p["bend_scale"]
        ta = scale * (c * gx + s * gy) + self._p["bend_offset"][0]
        tc = scale * (-s * gx + c * gy) + self._p["bend_offset"][1]
        return np.clip(np.stack([ta, tc], axis=-1), -TILT_LIMIT_MRAD, TILT_LIMIT_MRAD)

    def eigenstrain(self, y: ArrayLike, x: ArrayLike) -> np.ndarray:
        """Eigenstrain ``(3, ...)``: ``exx, eyy, exy`` in the image frame, with the defect."""
        y = np.asarray(y, dtype=float)
        x = np.asarray(x, dtype=float)
        e = self.law(self.lithium(y, x))
        ea, ec = e[..., 0], e[..., 1]
        c, s = np.cos(self.crystal_angle_rad), np.sin(self.crystal_angle_rad)
        out = np.stack([c * c * ea + s * s * ec, s * s * ea + c * c * ec, s * c * (ea - ec)])
        if self.defect is not None:
            w = self.defect.weight(y, x)
            out = out + np.multiply.outer(np.asarray(self.defect.eigenstrain), w)
        return out

    # -- mechanics ------------------------------------------------------------------

    def _stiffness(self):
        q0 = elasticity.stiffness_ac()
        if self.stiffness == "average":
            return elasticity.rotate_stiffness(q0, self.crystal_angle_rad)
        def field_c(x, y):
            q = elasticity.stiffness_ac(self.lithium(y, x))
            return np.moveaxis(elasticity.rotate_stiffness(q, self.crystal_angle_rad), (-2, -1), (0, 1))

        return field_c

    def solution(self) -> elasticity.ElasticSolution:
        """The FEM truth (P2 triangles on the fine star-domain mesh), computed once."""
        cache = self._p["cache"]
        if "solution" not in cache:
            mesh = elasticity.mesh_star_domain(self.radius, nrefs=self.mesh_nrefs)
            problem = elasticity.ElasticProblem(mesh, stiffness=self._stiffness(), boundary="free")
            cache["solution"] = problem.solve(lambda x, y: tuple(self.eigenstrain(y, x)))
        return cache["solution"]

    def sample(self, y: ArrayLike, x: ArrayLike) -> dict[str, np.ndarray]:
        """All truth fields at points ``(y, x)`` (nm).

        Returns
        -------
        dict of numpy.ndarray
            ``mask, X, thickness, exx, eyy, exy, theta, eps0_xx, eps0_yy,
            eps0_xy``; strain fields are NaN outside the particle, ``X`` is
            NaN outside, ``thickness`` is 0 outside.
        """
        y = np.asarray(y, dtype=float)
        x = np.asarray(x, dtype=float)
        if y.shape != x.shape:
            raise ValueError(f"y and x must have the same shape, got {y.shape} and {x.shape}")
        inside = self.contains(y, x)
        out: dict[str, np.ndarray] = {"mask": inside}
        out["X"] = np.where(inside, self.lithium(y, x), np.nan)
        out["thickness"] = np.where(inside, self.thickness(y, x), 0.0)
        strain = np.full((4,) + y.shape, np.nan)
        if inside.any():
            strain[:, inside] = self.solution().sample(y[inside], x[inside])
        for i, k in enumerate(("exx", "eyy", "exy", "theta")):
            out[k] = strain[i]
        e0 = self.eigenstrain(y, x)
        for i, k in enumerate(("eps0_xx", "eps0_yy", "eps0_xy")):
            out[k] = np.where(inside, e0[i], np.nan)
        return out

    def render(self, *, pixel_size_nm: float = 5.0, shape: tuple[int, int] | None = None,
               center_nm: tuple[float, float] = (0.0, 0.0)) -> xr.Dataset:
        """Sample the truth on a pixel grid.

        Parameters
        ----------
        pixel_size_nm : float, optional
            Pixel size, nm.
        shape : (int, int), optional
            ``(ny, nx)``; default: the particle plus a margin of 6 pixels.
        center_nm : (float, float), optional
            ``(y, x)`` of the image centre relative to the particle centre, nm.

        Returns
        -------
        xarray.Dataset
            On dims ``("y", "x")`` with coordinates in nm: ``mask``, ``X``,
            ``thickness`` (nm), ``exx``, ``eyy``, ``exy``, ``theta`` (rad),
            ``eps0_xx``, ``eps0_yy``, ``eps0_xy``.
        """
        p = _validate.positive(pixel_size_nm, name="pixel_size_nm")
        if shape is None:
            ext_y, ext_x = np.abs(self.outline()).max(axis=0)
            shape = (int(np.ceil(2 * ext_y / p)) + 12, int(np.ceil(2 * ext_x / p)) + 12)
        if (len(shape) != 2 or not all(isinstance(n, (int, np.integer)) and n > 0 for n in shape)):
            raise ValueError(f"shape must be two positive ints (ny, nx), got {shape!r}")
        ny, nx = int(shape[0]), int(shape[1])
        yc = (np.arange(ny) - (ny - 1) / 2) * p + center_nm[0]
        xc = (np.arange(nx) - (nx - 1) / 2) * p + center_nm[1]
        yy, xx = np.meshgrid(yc, xc, indexing="ij")
        f = self.sample(yy, xx)
        meta = {
            "mask": ("1", "particle mask"),
            "X": ("1", "Li fraction x in LixFePO4"),
            "thickness": ("nm", "thickness along b"),
            "exx": ("1", "strain exx (image frame)"),
            "eyy": ("1", "strain eyy (image frame)"),
            "exy": ("1", "tensor shear strain exy (image frame)"),
            "theta": ("rad", "rigid rotation (positive: x towards y)"),
            "eps0_xx": ("1", "eigenstrain xx (image frame)"),
            "eps0_yy": ("1", "eigenstrain yy (image frame)"),
            "eps0_xy": ("1", "eigenstrain xy (image frame)"),
        }
        ds = xr.Dataset(
            {k: (("y", "x"), f[k], {"units": u, "long_name": ln}) for k, (u, ln) in meta.items()},
            coords={
                "y": ("y", yc, {"units": "nm", "long_name": "y (image rows)"}),
                "x": ("x", xc, {"units": "nm", "long_name": "x (image columns)"}),
            },
            attrs={
                "particle": self.name, "batch": self.batch, "seed": self.seed, "law": self.law.name,
                "crystal_angle_rad": float(self.crystal_angle_rad), "pixel_size_nm": p,
                "defect": int(self.defect is not None),
            },
        )
        return ds


def make_particle(name: str = "particle", *, batch: str = "biphasic", seed: int = 0,
                  law: EigenstrainLaw | None = None, defect: Defect | None = None,
                  crystal_angle_rad: float = 0.0, **options) -> Particle:
    """Build one synthetic particle.

    Parameters
    ----------
    name : str
        Label.
    batch : {"li_rich", "biphasic", "li_poor"}
        Composition recipe.
    seed : int
        Seed of the outline, composition and thickness fields.
    law : EigenstrainLaw, optional
        Default :func:`vegard_law`.
    defect : Defect, optional
        A local strain source.
    crystal_angle_rad : float
        Angle of the a axis from image x.
    **options
        ``semi_axes_nm``, ``stiffness``, ``mesh_nrefs`` (see :class:`Particle`).

    Returns
    -------
    Particle

    Examples
    --------
    >>> p = make_particle("demo", batch="li_poor", seed=3)
    >>> ds = p.render(pixel_size_nm=10.0)
    >>> bool(ds.mask.any()) and float(ds.X.where(ds.mask).mean()) < 0.5
    True
    """
    _validate.no_unknown_options(options, ("semi_axes_nm", "stiffness", "mesh_nrefs"), func="make_particle")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    return Particle(name, batch, int(seed), law=law or vegard_law(), defect=defect,
                    crystal_angle_rad=float(crystal_angle_rad), **options)


#: The named particles: (batch, seed); P1 is the held-out test particle.
_PARTICLES = {
    "P1": ("biphasic", 1101),
    "P2": ("li_rich", 1202),
    "P3": ("biphasic", 1303),
    "P4": ("biphasic", 1404),
    "P5": ("li_poor", 1505),
}


def particle_set(law: EigenstrainLaw | None = None, *, defect: bool = True,
                 mesh_nrefs: int = 6) -> dict[str, Particle]:
    """The five named twin particles P1–P5, reproducible from fixed seeds.

    P2 (Li-rich), P3 and P4 (biphasic) and P5 (Li-poor) are the training set;
    P1 (biphasic) is held out and carries a local defect (when `defect`) that
    the learned law cannot explain.

    Parameters
    ----------
    law : EigenstrainLaw, optional
        Injected into every particle; default :func:`vegard_law`.
    defect : bool, optional
        Put the defect into P1.
    mesh_nrefs : int, optional
        Truth-mesh refinement.

    Returns
    -------
    dict of str to Particle
    """
    out = {}
    for name, (batch, seed) in _PARTICLES.items():
        d = Defect(center_nm=(-35.0, 55.0)) if (defect and name == "P1") else None
        out[name] = make_particle(name, batch=batch, seed=seed, law=law, defect=d, mesh_nrefs=mesh_nrefs)
    return out


def mesh_convergence(particle: Particle, *, levels: tuple[int, ...] = (3, 4, 5), reference: int = 6,
                     pixel_size_nm: float = 5.0) -> xr.Dataset:
    """Convergence of a particle's truth strain under mesh refinement.

    The particle is re-solved at each refinement level in `levels` and compared,
    pixel by pixel on a grid of `pixel_size_nm`, with the solution at level
    `reference`.

    Parameters
    ----------
    particle : Particle
        The particle (its own ``mesh_nrefs`` is ignored).
    levels : tuple of int
        Coarser refinement levels to test.
    reference : int
        Level of the reference solution; must exceed every level in `levels`.
    pixel_size_nm : float
        Sampling grid.

    Returns
    -------
    xarray.Dataset
        On dim ``level``: ``h`` (mean element edge, nm) and ``rel_error``
        (relative RMS error of exx, eyy, exy together); ``attrs["rate"]`` is
        the fitted slope of log error against log h (2 for quadratic elements
        on smooth fields).
    """
    import dataclasses

    if not isinstance(particle, Particle):
        raise TypeError(f"particle must be a Particle, got {type(particle).__name__}")
    levels = tuple(int(n) for n in levels)
    if len(levels) < 2 or max(levels) >= reference:
        raise ValueError(f"levels must hold at least two levels below reference={reference}, got {levels}")

    def strain_at(n):
        p = dataclasses.replace(particle, mesh_nrefs=n)
        ds = p.render(pixel_size_nm=pixel_size_nm)
        mesh = p.solution().problem.skmesh
        return np.stack([ds.exx.values, ds.eyy.values, ds.exy.values]), elasticity.mean_edge_length(mesh)

    ref, _ = strain_at(reference)
    norm = np.sqrt(np.nanmean(ref**2))
    h, err = [], []
    for n in levels:
        e, hn = strain_at(n)
        h.append(hn)
        err.append(float(np.sqrt(np.nanmean((e - ref) ** 2)) / norm))
    rate = float(np.polyfit(np.log(h), np.log(err), 1)[0])
    return xr.Dataset(
        {"h": ("level", np.asarray(h), {"units": "nm", "long_name": "mean element edge"}),
         "rel_error": ("level", np.asarray(err), {"units": "1", "long_name": "relative RMS strain error"})},
        coords={"level": ("level", np.asarray(levels), {"units": "1", "long_name": "refinement level"})},
        attrs={"rate": rate, "reference_level": reference},
    )
