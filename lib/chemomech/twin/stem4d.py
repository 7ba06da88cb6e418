"""Simulated 4D-STEM nanobeam datacubes of Li_xFePO4 viewed down [010].

This module *generates* measurements; it shares no code with the analysis in
:mod:`chemomech.strain` (no inverse crime). The crystal is olivine LiFePO4
(space group Pnma, No. 62) seen down b, so the (a, c) plane is the image plane
and the pattern shows the h0l reflections. Per scan position the simulator

1. deforms the reciprocal basis with the local deformation gradient of the
   specimen, ``G = F^-T G0`` (``F = I + [[exx, exy - theta], [exy + theta, eyy]]``
   in ``(x, y)``, the api.md conventions);
2. gives every disk a kinematic-looking, thickness-dependent intensity from the
   structure factor ``F(h0l)`` (a Pendellösung-like ``sin^2(pi t / xi_g)`` with
   extinction distance ``xi_g ∝ 1/|F_g|``; the central disk keeps the rest);
3. renders each disk *analytically* as a soft-edged aperture (error-function
   edge, the blur of a slightly defocused, finite-source probe), integrated over
   each detector pixel by 3 x 3 supersampling at its exact sub-pixel centre;
4. adds a diffuse thickness-dependent background, convolves with a detector
   point-spread function (Gaussian core + exponential tail, by FFT), shifts the
   whole pattern by a linear probe descan, optionally rotates it relative to
   the scan, and draws Poisson counts at the requested dose.

The analysis derives its template from the *data* (mean pattern or vacuum
probe), never from these formulas.

Atom positions of LiFePO4 (fractional, Pnma, asymmetric unit) are those of the
single-crystal X-ray refinement of Streltsov et al., Acta Cryst. B49, 147 (1993),
doi:10.1107/S0108768192009467, as quoted in structure databases, rounded to 5 decimals::

    Li 4a (0, 0, 0)
    Fe 4c (0.28222, 1/4, 0.97472)
    P  4c (0.09486, 1/4, 0.41820)
    O1 4c (0.09678, 1/4, 0.74279)
    O2 4c (0.45710, 1/4, 0.20602)
    O3 8d (0.16558, 0.04646, 0.28478)

This uniform-disk renderer uses the same LiFePO4 fractional positions for every
X, on the locally deformed lattice. That is an approximation: in FePO4
(heterosite) some atoms sit up to about 0.05 away in fractional coordinates — in
the computed structure the disk-content library uses (``materials.FP_ATOMS``),
O2 z by 0.054, O1 z by 0.011, Fe z by 0.002 — so the disk intensities of
Li-poor regions are only indicative. Disk *positions*, which
carry the strain, depend on the lattice alone and are unaffected. (The
multislice disk-content library used by the dynamical twin has its own FePO4
positions, a computed structure, see ``data/README.md``.) The reference lattice is
FePO4 (the twin's strain is relative to FePO4).

Electron scattering factors are the screened-Coulomb (Wentzel) model in the
first Born approximation, ``f(q) = 2 Z / (a0 (q^2 + 1/R^2))`` with
``q = 2 pi |g|`` and Thomas–Fermi radius ``R = 0.885 a0 Z^(-1/3)``, times a
Debye–Waller factor ``exp(-B |g|^2 / 4)`` with ``B = 0.5 Å^2``. It is a
documented, smooth, element-dependent choice (not a Doyle–Turner fit): good
enough to give the right forbidden reflections and a realistic spread of disk
intensities.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import xarray as xr
from numpy.typing import ArrayLike
from scipy.special import erfc

from .. import _validate
from ..materials import LATTICE_FP_ANGSTROM, LFP_ATOMS, PNMA_OPERATIONS
from .particle import Particle

__all__ = [
    "DiffractionSetup",
    "electron_wavelength_A",
    "unit_cell_atoms",
    "structure_factor",
    "reflections",
    "reciprocal_basis",
    "simulate_fields",
    "simulate_uniform",
    "simulate_wedge",
    "WEDGE_STATES",
    "simulate_particle",
    "relative_truth",
]

_Z = {"Li": 3, "Fe": 26, "P": 15, "O": 8}
_BOHR_A = 0.529177  # Bohr radius, Å
_DEBYE_WALLER_A2 = 0.5  # isotropic B, Å^2
_ELECTRON_MASS_KEV = 510.999  # m c^2, keV
_HC_KEV_A = 12.39842  # h c, keV Å


def electron_wavelength_A(voltage_kV: float) -> float:
    """Relativistic electron wavelength (Å) at accelerating voltage `voltage_kV`.

    Examples
    --------
    >>> round(electron_wavelength_A(300.0), 5)
    0.01969
    """
    e = _validate.positive(voltage_kV, name="voltage_kV")
    pc = np.sqrt(e * (e + 2 * _ELECTRON_MASS_KEV))
    return float(_HC_KEV_A / pc)


def unit_cell_atoms() -> list[tuple[str, np.ndarray]]:
    """All atoms of the LiFePO4 unit cell: ``[(element, (n, 3) fractional positions)]``.

    Applies the eight Pnma operations to :data:`chemomech.materials.LFP_ATOMS` and removes duplicates
    (special positions), giving 4 Li, 4 Fe, 4 P and 16 O.

    Examples
    --------
    >>> {el: len(p) for el, p in unit_cell_atoms()}
    {'Li': 4, 'Fe': 4, 'P': 4, 'O': 16}
    """
    out: dict[str, list[np.ndarray]] = {}
    for el, *xyz in LFP_ATOMS:
        pts: list[np.ndarray] = []
        for signs, t in PNMA_OPERATIONS:
            p = np.mod(np.multiply(signs, xyz) + t, 1.0)
            if not any(np.all(np.abs(((p - q) + 0.5) % 1.0 - 0.5) < 1e-6) for q in pts):
                pts.append(p)
        out.setdefault(el, []).extend(pts)
    return [(el, np.array(p)) for el, p in out.items()]


def _scattering_factor(element: str, g_inv_A: np.ndarray) -> np.ndarray:
    """Screened-Coulomb (Wentzel) Born amplitude with Debye–Waller damping, Å."""
    z = _Z[element]
    r = 0.885 * _BOHR_A * z ** (-1.0 / 3.0)
    q = 2 * np.pi * np.asarray(g_inv_A, dtype=float)
    return 2 * z / (_BOHR_A * (q**2 + r**-2)) * np.exp(-_DEBYE_WALLER_A2 * np.asarray(g_inv_A) ** 2 / 4)


def structure_factor(h: ArrayLike, k: ArrayLike, l: ArrayLike, *,  # noqa: E741
                     lattice_A: tuple[float, float, float] = LATTICE_FP_ANGSTROM) -> np.ndarray:
    """Complex kinematic structure factor ``F(hkl)`` (Å) of olivine LiFePO4.

    Parameters
    ----------
    h, k, l : array_like of int
        Miller indices (broadcast together).
    lattice_A : (float, float, float)
        Lattice parameters (a, b, c), Å, for ``|g|`` in the scattering factors.

    Returns
    -------
    numpy.ndarray
        ``sum_j f_j(|g|) exp(2 pi i (h x_j + k y_j + l z_j))``.

    Examples
    --------
    >>> bool(abs(structure_factor(1, 0, 0)) < 1e-9), bool(abs(structure_factor(1, 0, 1)) > 1)
    (True, True)
    """
    h, k, l = np.broadcast_arrays(*(np.asarray(v, dtype=float) for v in (h, k, l)))  # noqa: E741
    a, b, c = lattice_A
    g = np.sqrt((h / a) ** 2 + (k / b) ** 2 + (l / c) ** 2)
    total = np.zeros(h.shape, dtype=complex)
    for el, pos in unit_cell_atoms():
        phase = np.exp(2j * np.pi * (np.multiply.outer(h, pos[:, 0]) + np.multiply.outer(k, pos[:, 1])
                                     + np.multiply.outer(l, pos[:, 2])))
        total += _scattering_factor(el, g) * phase.sum(axis=-1)
    return total


@dataclass(frozen=True)
class DiffractionSetup:
    """Microscope and detector settings of the simulated nanobeam experiment.

    Parameters
    ----------
    voltage_kV : float
        Accelerating voltage, kV.
    convergence_mrad : float
        Probe convergence semi-angle, mrad (disk radius = alpha / lambda).
    pixel_inv_A : float
        Detector calibration, Å^-1 per pixel.
    detector_shape : (int, int)
        ``(ky, kx)`` pixels.
    edge_px : float
        Width (standard deviation, px) of the soft aperture edge.
    psf_sigma_px : float
        Gaussian core of the detector point-spread function, px.
    psf_tail : float
        Fraction of the signal in the exponential PSF tail (decay length 4 px).
    extinction_nm : float
        Extinction distance of the strongest reflection, nm.
    background : float
        Diffuse (inelastic/TDS) fraction of the dose per 100 nm of thickness.
    lattice_A : (float, float, float)
        Reference lattice (a, b, c), Å (FePO4).
    """

    voltage_kV: float = 300.0
    convergence_mrad: float = 0.4
    pixel_inv_A: float = 0.0085
    detector_shape: tuple[int, int] = (128, 128)
    edge_px: float = 0.25
    psf_sigma_px: float = 0.4
    psf_tail: float = 0.05
    extinction_nm: float = 60.0
    background: float = 0.04
    lattice_A: tuple[float, float, float] = LATTICE_FP_ANGSTROM

    @property
    def disk_radius_px(self) -> float:
        """Bragg-disk radius on the detector, px."""
        return self.convergence_mrad * 1e-3 / electron_wavelength_A(self.voltage_kV) / self.pixel_inv_A


def reciprocal_basis(setup: DiffractionSetup, *, crystal_angle_rad: float = 0.0) -> np.ndarray:
    """Undeformed reciprocal basis ``G0`` (2 x 2, Å^-1): columns a*, c* in ``(x, y)``.

    a* points along image x rotated by `crystal_angle_rad` (towards y).
    """
    a, _, c = setup.lattice_A
    co, si = np.cos(crystal_angle_rad), np.sin(crystal_angle_rad)
    return np.array([[co / a, -si / c], [si / a, co / c]])


def reflections(setup: DiffractionSetup = DiffractionSetup(), *, max_g_inv_A: float | None = None) -> xr.Dataset:
    """The h0l reflections within the detector, with structure factors.

    Returns
    -------
    xarray.Dataset
        On dim ``reflection``: ``h``, ``l``, ``g`` (Å^-1), ``F`` (|F|, Å) and
        ``allowed`` (|F| above 1e-6 of the largest).

    Examples
    --------
    >>> r = reflections()
    >>> bool(r.allowed.sel(reflection=(r.h == 3) & (r.l == 0)).item())
    False
    """
    a, _, c = setup.lattice_A
    if max_g_inv_A is None:
        max_g_inv_A = 0.75 * min(setup.detector_shape) * setup.pixel_inv_A
    hmax, lmax = int(np.ceil(max_g_inv_A * a)), int(np.ceil(max_g_inv_A * c))
    hh, ll = np.meshgrid(np.arange(-hmax, hmax + 1), np.arange(-lmax, lmax + 1), indexing="ij")
    hh, ll = hh.ravel(), ll.ravel()
    g = np.hypot(hh / a, ll / c)
    keep = (g <= max_g_inv_A) & (g > 0)
    hh, ll, g = hh[keep], ll[keep], g[keep]
    f = np.abs(structure_factor(hh, 0, ll, lattice_A=setup.lattice_A))
    ds = xr.Dataset(
        {"h": ("reflection", hh), "l": ("reflection", ll),
         "g": ("reflection", g, {"units": "1/Å", "long_name": "|g|"}),
         "F": ("reflection", f, {"units": "Å", "long_name": "|structure factor|"}),
         "allowed": ("reflection", f > 1e-6 * f.max())},
    )
    return ds


# ----------------------------------------------------------------- rendering


def _disk_intensities(setup: DiffractionSetup, f_abs: np.ndarray, thickness_nm: np.ndarray) -> tuple:
    """Pendellösung-like intensities (n_pos, n_refl) and central-disk intensity (n_pos,)."""
    xi = setup.extinction_nm * f_abs.max() / np.maximum(f_abs, 1e-12 * f_abs.max())
    t = np.asarray(thickness_nm, float)[:, None]
    ig = np.sin(np.pi * t / xi) ** 2 * (f_abs > 1e-6 * f_abs.max())
    total = ig.sum(axis=1, keepdims=True)
    cap = 0.85
    ig = np.where(total > cap, ig * cap / np.maximum(total, 1e-30), ig)
    return ig, 1.0 - ig.sum(axis=1)


_LIBRARY_CACHE: dict = {}


def _library(library: xr.Dataset | None) -> xr.Dataset:
    """The multislice disk-content library (:mod:`chemomech.twin.cbed`), loaded once per process."""
    if library is not None:
        if not isinstance(library, xr.Dataset) or "intensity" not in library:
            raise TypeError(f"library must be the xarray.Dataset of chemomech.twin.cbed.load_library(), "
                            f"got {type(library).__name__}")
        return library
    if "default" not in _LIBRARY_CACHE:
        from . import cbed

        _LIBRARY_CACHE["default"] = cbed.load_library()
    return _LIBRARY_CACHE["default"]


def _library_beams(library: xr.Dataset, setup: DiffractionSetup) -> xr.Dataset:
    """The library restricted to the beams that can reach the detector, 000 first (mirror-closed by |g|)."""
    h, ell = library.h.values.astype(int), library.l.values.astype(int)
    a, _, c = setup.lattice_A
    g = np.hypot(h / a, ell / c)
    keep = g <= 0.75 * min(setup.detector_shape) * setup.pixel_inv_A
    order = np.argsort(np.where(keep, g, np.inf), kind="stable")[: int(keep.sum())]
    if g[order[0]] != 0:
        raise ValueError("library has no 000 beam")
    return library.isel(beam=order)


def _dynamical_content(library: xr.Dataset, X: np.ndarray, thick: np.ndarray, tilt: np.ndarray,
                       setup: DiffractionSetup, det_to_crystal: np.ndarray, grid_half: int) -> np.ndarray:
    """Disk contents (n, G, G, beams) on detector-pixel offsets from each disk centre, G = 2 grid_half + 1.

    The pixel at detector offset (dky, dkx) from the centre of disk g belongs to the incident direction
    ``q`` = (offset in 1/Å) x wavelength, turned into the crystal frame; its intensity is the library's
    ``I_g(X, t, tilt + q)``. Thickness outside the library's range: clamped at the thick end; below the
    thin end the diffracted beams fall off kinematically, ``I_g(t) = (t / t_min)^2 I_g(t_min)``, and the
    000 beam keeps the rest.
    """
    from . import cbed

    gh = int(grid_half)
    k = np.arange(-gh, gh + 1)
    dky, dkx = np.meshgrid(k, k, indexing="ij")
    inside = np.hypot(dky, dkx) <= setup.disk_radius_px + 4 * setup.edge_px + 1.5
    mrad_per_px = setup.pixel_inv_A * electron_wavelength_A(setup.voltage_kV) * 1e3
    det_xy = np.stack([dkx[inside], dky[inside]], axis=1) * mrad_per_px  # (m, 2) detector (x, y), mrad
    q = det_xy @ det_to_crystal.T  # (m, 2) crystal frame (along a*, along c*)
    t_grid = library.thickness_nm.values
    lim = np.array([library.tilt_x_mrad.values[-1], library.tilt_y_mrad.values[-1]])
    t_eff = np.clip(thick, t_grid[0], t_grid[-1])
    scale = np.clip(thick / t_grid[0], 0.0, 1.0) ** 2  # kinematic fall-off below the thinnest slab
    n, m = len(thick), len(q)
    direction = np.clip(tilt[:, None, :] + q[None, :, :], -lim, lim).reshape(-1, 2)
    vals = cbed.disk_intensities(library, np.repeat(np.clip(X, 0.0, 1.0), m), np.repeat(t_eff, m),
                                 direction, np.zeros(2)).values[:, 0, :].reshape(n, m, -1)
    vals[:, :, 1:] *= scale[:, None, None]
    vals[:, :, 0] = 1.0 - scale[:, None] * (1.0 - vals[:, :, 0])
    out = np.zeros((n, 2 * gh + 1, 2 * gh + 1, vals.shape[2]))
    out[:, inside, :] = vals
    return out


def _psf_otf(setup: DiffractionSetup) -> np.ndarray:
    ny, nx = setup.detector_shape
    y = np.fft.fftfreq(ny) * ny
    x = np.fft.fftfreq(nx) * nx
    r2 = y[:, None] ** 2 + x[None, :] ** 2
    core = np.exp(-0.5 * r2 / setup.psf_sigma_px**2)
    tail = np.exp(-np.sqrt(r2) / 4.0)
    kern = (1 - setup.psf_tail) * core / core.sum() + setup.psf_tail * tail / tail.sum()
    return np.fft.rfft2(kern)


def _render_half(setup: DiffractionSetup) -> int:
    """Half-width (px) of the square window in which one disk is drawn."""
    return int(np.ceil(setup.disk_radius_px + 4 * setup.edge_px)) + 1


def _render(centres: np.ndarray, weights: np.ndarray, setup: DiffractionSetup,
            content: np.ndarray | None = None) -> np.ndarray:
    """Sum of soft-edged disks, pixel-integrated: centres (n, d, 2) as (ky, kx) px, weights (n, d).

    `content` (n, G, G, d), optional: intensity inside each disk on a grid of detector-pixel offsets
    ``-(G // 2) .. G // 2`` from the disk centre (both axes); it multiplies the weight, bilinearly
    interpolated at each pixel centre.
    """
    ny, nx = setup.detector_shape
    r = setup.disk_radius_px
    half = _render_half(setup)
    pad = 2 * half + 2
    canvas = np.zeros((centres.shape[0], ny + 2 * pad, nx + 2 * pad))
    ss = 3
    sub = (np.arange(ss) + 0.5) / ss - 0.5
    win = np.arange(-half, half + 1)
    n_idx = np.arange(centres.shape[0])[:, None, None]
    norm = 1.0 / (np.pi * r**2)
    for d in range(centres.shape[1]):
        c = centres[:, d, :]
        w = weights[:, d]
        inside = (np.all(c > -half, axis=1) & (c[:, 0] < ny + half) & (c[:, 1] < nx + half) & (w > 0))
        if not inside.any():
            continue
        c, w, n_sel = c[inside], w[inside], n_idx[inside]
        base = np.round(c).astype(int)
        py = base[:, 0, None] + win[None, :]  # (m, W) pixel rows
        px = base[:, 1, None] + win[None, :]
        dy = py[:, :, None] + sub[None, None, :] - c[:, 0, None, None]  # (m, W, ss)
        dx = px[:, :, None] + sub[None, None, :] - c[:, 1, None, None]
        rho = np.sqrt(dy[:, :, None, :, None] ** 2 + dx[:, None, :, None, :] ** 2)  # (m, W, W, ss, ss)
        val = 0.5 * erfc((rho - r) / (np.sqrt(2) * setup.edge_px)).mean(axis=(3, 4))
        if content is not None:
            val = val * _interp_content(content[inside, :, :, d], base - c, win)
        canvas[n_sel, (py + pad)[:, :, None], (px + pad)[:, None, :]] += val * (w * norm)[:, None, None]
    return canvas[:, pad:pad + ny, pad:pad + nx]


def _interp_content(table: np.ndarray, frac: np.ndarray, win: np.ndarray) -> np.ndarray:
    """Bilinear interpolation of content tables (m, G, G) at offsets ``win + frac`` (m, W, W)."""
    gh = table.shape[1] // 2
    m = np.arange(len(table))[:, None]
    out = None
    idx_y = win[None, :] + frac[:, 0, None] + gh  # (m, W) fractional grid rows
    idx_x = win[None, :] + frac[:, 1, None] + gh
    iy0 = np.clip(np.floor(idx_y).astype(int), 0, table.shape[1] - 2)
    ix0 = np.clip(np.floor(idx_x).astype(int), 0, table.shape[2] - 2)
    wy = (idx_y - iy0)[:, :, None]
    wx = (idx_x - ix0)[:, None, :]
    rows0 = table[m, iy0]  # (m, W, G)
    rows1 = table[m, iy0 + 1]
    rows = (1 - wy) * rows0 + wy * rows1
    mm = np.arange(len(table))[:, None, None]
    ww = np.arange(rows.shape[1])[None, :, None]
    out = (1 - wx) * rows[mm, ww, ix0[:, None, :]] + wx * rows[mm, ww, ix0[:, None, :] + 1]
    return out


def _rotation(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s], [s, c]])


def _deformation(exx, eyy, exy, theta) -> np.ndarray:
    """F = I + grad u, (..., 2, 2) in (x, y): [[1+exx, exy-theta], [exy+theta, 1+eyy]]."""
    f = np.empty(np.shape(exx) + (2, 2))
    f[..., 0, 0] = 1 + exx
    f[..., 0, 1] = exy - theta
    f[..., 1, 0] = exy + theta
    f[..., 1, 1] = 1 + eyy
    return f


def simulate_fields(exx: ArrayLike, eyy: ArrayLike, exy: ArrayLike, theta: ArrayLike,
                    thickness_nm: ArrayLike, *, setup: DiffractionSetup = DiffractionSetup(),
                    dose: float = 1e4, crystal_angle_rad: float = 0.0, rotation_rad: float = 0.0,
                    descan_px: float = 3.0, probe_dose: float = 1e6, chunk: int = 256,
                    disks: str = "uniform", X: ArrayLike | float = 0.0, tilt_mrad: ArrayLike | None = None,
                    library: xr.Dataset | None = None,
                    rng: np.random.Generator | int | None = None, progress: bool = False) -> xr.Dataset:
    """Simulate a 4D-STEM datacube from per-position strain, rotation and thickness.

    Parameters
    ----------
    exx, eyy, exy, theta : array_like
        ``(ny, nx)`` fields in the image frame (api.md conventions; theta in rad).
        NaN where there is no crystal (vacuum: only the direct beam).
    thickness_nm : array_like
        ``(ny, nx)`` thickness along b, nm (0 = vacuum).
    setup : DiffractionSetup
        Microscope and detector.
    dose : float
        Mean electrons per diffraction pattern.
    crystal_angle_rad : float
        In-plane angle of a* from image x (positive towards y).
    rotation_rad : float
        Rotation of the diffraction pattern relative to the scan (a vector with
        scan-frame components (gx, gy) lands at ``R(rotation_rad) (gx, gy)``).
    descan_px : float
        Amplitude of the linear probe descan across the scan, px.
    probe_dose : float
        Electrons in the vacuum probe image.
    chunk : int
        Patterns rendered at once (memory).
    disks : {"uniform", "dynamical"}
        ``"uniform"``: every disk is a uniformly filled aperture with a
        Pendellösung-like intensity (the idealised twin, for teaching).
        ``"dynamical"``: every disk carries its multislice contents from the
        abTEM library (:mod:`chemomech.twin.cbed`) for the local composition,
        thickness and crystal tilt: the intensity at each point of the disk of
        beam g is that of beam g for the incident direction ``tilt + q`` that
        the point belongs to (thickness clamped to the library's 10-80 nm, with
        a kinematic fall-off below 10 nm).
    X : array_like or float
        ``(ny, nx)`` Li fraction (or one value) for the dynamical disk contents;
        the lattice itself follows the strain fields only.
    tilt_mrad : array_like, optional
        ``(ny, nx, 2)`` crystal tilt, mrad, as the incident direction relative to
        [010] in the crystal frame ``(along a*, along c*)``; default zero. Only
        the dynamical disks depend on it.
    library : xarray.Dataset, optional
        A disk-content library (:func:`chemomech.twin.cbed.load_library`);
        default the committed one.
    rng : numpy.random.Generator or int or None
        Random source (Poisson noise).
    progress : bool
        Show a progress bar.

    Returns
    -------
    xarray.Dataset
        ``datacube`` (y, x, ky, kx; counts, float32), ``probe`` (ky, kx),
        truth on (y, x): ``exx, eyy, exy, theta, thickness, mask`` (crystal
        present), ``origin_ky, origin_kx`` (px, the descan truth). Attributes
        hold the setup, dose and angles.

    Examples
    --------
    >>> z = np.zeros((2, 3))
    >>> sim = simulate_fields(z, z, z, z, z, dose=1e3, rng=0)  # vacuum: only the direct beam
    >>> sim.datacube.shape, round(float(sim.datacube.sum(("ky", "kx")).mean()) / 1e3, 1)
    ((2, 3, 128, 128), 1.0)
    """
    fields = [_validate.array(v, name=n, ndim=2) .astype(float)
              for v, n in zip((exx, eyy, exy, theta, thickness_nm), ("exx", "eyy", "exy", "theta", "thickness_nm"))]
    shape = fields[0].shape
    for f, n in zip(fields[1:], ("eyy", "exy", "theta", "thickness_nm")):
        if f.shape != shape:
            raise ValueError(f"{n} must have shape {shape} like exx, got {f.shape}")
    if not isinstance(setup, DiffractionSetup):
        raise TypeError(f"setup must be a DiffractionSetup, got {type(setup).__name__}")
    dose = _validate.positive(dose, name="dose")
    disks = _validate.choice(disks, ("uniform", "dynamical"), name="disks")
    gen = _validate.rng(rng)
    ny, nx = shape
    x_li = np.broadcast_to(_validate.array(X, name="X", ndim=(0, 2)).astype(float), shape)
    if tilt_mrad is None:
        tilt = np.zeros(shape + (2,))
    else:
        tilt = _validate.array(tilt_mrad, name="tilt_mrad", shape=shape + (2,), finite=True).astype(float)
    e_xx, e_yy, e_xy, th, thick = fields
    crystal = np.isfinite(e_xx) & np.isfinite(e_yy) & np.isfinite(e_xy) & np.isfinite(th) & (thick > 0)
    thick = np.where(crystal, thick, 0.0)

    if disks == "uniform":
        refl = reflections(setup)
        hl = np.stack([refl.h.values, refl.l.values]).astype(float)  # (2, d)
        f_abs = refl.F.values
    else:
        lib = _library_beams(_library(library), setup)
        hl = np.stack([lib.h.values[1:], lib.l.values[1:]]).astype(float)  # 000 is the direct disk
        det_to_crystal = _rotation(-crystal_angle_rad) @ _rotation(-rotation_rad)
    g0 = reciprocal_basis(setup, crystal_angle_rad=crystal_angle_rad)
    fdef = _deformation(*(np.where(crystal, f, 0.0) for f in (e_xx, e_yy, e_xy, th)))
    g_def = np.linalg.inv(np.swapaxes(fdef, -1, -2)) @ g0  # F^-T G0, (ny, nx, 2, 2)
    gvec = np.einsum("ij,yxjk,kd->yxid", _rotation(rotation_rad), g_def, hl)  # (ny, nx, 2[x,y], d)

    dny, dnx = setup.detector_shape
    u = (np.arange(ny)[:, None] / max(ny - 1, 1) - 0.5) * np.ones((1, nx))
    v = (np.arange(nx)[None, :] / max(nx - 1, 1) - 0.5) * np.ones((ny, 1))
    o_ky = dny / 2 + 0.37 + descan_px * (0.6 * u - 0.4 * v)
    o_kx = dnx / 2 - 0.61 + descan_px * (0.3 * u + 0.8 * v)

    if disks == "uniform":
        i_g, i_0 = _disk_intensities(setup, f_abs, thick.ravel())
        weights = np.concatenate([i_0[:, None], i_g], axis=1)
    else:  # the contents carry the intensities
        weights = np.ones((ny * nx, hl.shape[1] + 1))
        weights[~crystal.ravel(), 1:] = 0.0
    centres = np.empty((ny * nx, hl.shape[1] + 1, 2))
    centres[:, 0, 0], centres[:, 0, 1] = o_ky.ravel(), o_kx.ravel()
    centres[:, 1:, 0] = (o_ky[..., None] + gvec[:, :, 1, :] / setup.pixel_inv_A).reshape(ny * nx, -1)
    centres[:, 1:, 1] = (o_kx[..., None] + gvec[:, :, 0, :] / setup.pixel_inv_A).reshape(ny * nx, -1)

    otf = _psf_otf(setup)
    ky = np.arange(dny)[:, None]
    kx = np.arange(dnx)[None, :]
    cube = np.empty((ny * nx, dny, dnx), dtype=np.float32)
    steps = range(0, ny * nx, chunk)
    if progress:
        from tqdm.auto import tqdm
        steps = tqdm(steps, desc="rendering patterns", unit="chunk")
    bg_sigma = 12.0 * setup.disk_radius_px
    for s in steps:
        sl = slice(s, min(s + chunk, ny * nx))
        content = None
        if disks == "dynamical":
            idx = np.arange(sl.start, sl.stop)
            cry = crystal.ravel()[idx]
            content = np.zeros((len(idx), 2 * _render_half(setup) + 3, 2 * _render_half(setup) + 3,
                                hl.shape[1] + 1))
            content[~cry, :, :, 0] = 1.0  # vacuum: the bare probe
            if cry.any():
                content[cry] = _dynamical_content(lib, x_li.ravel()[idx][cry], thick.ravel()[idx][cry],
                                                  tilt.reshape(-1, 2)[idx][cry], setup, det_to_crystal,
                                                  _render_half(setup) + 1)
        img = _render(centres[sl], weights[sl], setup, content)
        oy, ox = centres[sl, 0, 0], centres[sl, 0, 1]
        halo = np.exp(-0.5 * ((ky[None] - oy[:, None, None]) ** 2 + (kx[None] - ox[:, None, None]) ** 2) / bg_sigma**2)
        frac = setup.background * thick.ravel()[sl] / 100.0
        img = img * (1 - frac)[:, None, None] + halo * (frac / halo.sum(axis=(1, 2)))[:, None, None]
        img = np.fft.irfft2(np.fft.rfft2(img) * otf, s=(dny, dnx))
        img = np.clip(img, 0, None) * dose
        cube[sl] = gen.poisson(img)
    vac = _render(np.array([[[dny / 2 + 0.37, dnx / 2 - 0.61]]]), np.ones((1, 1)), setup)
    vac = np.fft.irfft2(np.fft.rfft2(vac) * otf, s=(dny, dnx))[0]
    probe = gen.poisson(np.clip(vac, 0, None) * probe_dose).astype(np.float32)

    yx = ("y", "x")
    ds = xr.Dataset(
        {
            "datacube": (("y", "x", "ky", "kx"), cube.reshape(ny, nx, dny, dnx),
                         {"units": "counts", "long_name": "diffraction intensity"}),
            "probe": (("ky", "kx"), probe, {"units": "counts", "long_name": "vacuum probe"}),
            "exx": (yx, np.where(crystal, e_xx, np.nan), {"units": "1", "long_name": "strain exx (truth)"}),
            "eyy": (yx, np.where(crystal, e_yy, np.nan), {"units": "1", "long_name": "strain eyy (truth)"}),
            "exy": (yx, np.where(crystal, e_xy, np.nan), {"units": "1", "long_name": "shear strain exy (truth)"}),
            "theta": (yx, np.where(crystal, th, np.nan), {"units": "rad", "long_name": "rotation (truth)"}),
            "thickness": (yx, thick, {"units": "nm", "long_name": "thickness along b"}),
            "mask": (yx, crystal, {"units": "1", "long_name": "crystal present"}),
            "tilt_a": (yx, np.where(crystal, tilt[..., 0], np.nan),
                       {"units": "mrad", "long_name": "crystal tilt along a* (truth)"}),
            "tilt_c": (yx, np.where(crystal, tilt[..., 1], np.nan),
                       {"units": "mrad", "long_name": "crystal tilt along c* (truth)"}),
            "origin_ky": (yx, o_ky, {"units": "px", "long_name": "direct-beam position ky (descan truth)"}),
            "origin_kx": (yx, o_kx, {"units": "px", "long_name": "direct-beam position kx (descan truth)"}),
        },
        coords={
            "y": ("y", np.arange(ny), {"units": "px", "long_name": "scan row"}),
            "x": ("x", np.arange(nx), {"units": "px", "long_name": "scan column"}),
            "ky": ("ky", (np.arange(dny) - dny / 2) * setup.pixel_inv_A, {"units": "1/Å", "long_name": "k_y"}),
            "kx": ("kx", (np.arange(dnx) - dnx / 2) * setup.pixel_inv_A, {"units": "1/Å", "long_name": "k_x"}),
        },
        attrs={**{k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(setup).items()},
               "dose": dose, "crystal_angle_rad": float(crystal_angle_rad),
               "rotation_rad": float(rotation_rad), "disk_radius_px": setup.disk_radius_px, "disks": disks},
    )
    return ds


#: Homogeneous states (exx, eyy, exy, theta) of :func:`simulate_wedge`: ±1 % normal, ±0.5 % shear, 1° rotation.
WEDGE_STATES = ((0.01, 0.0, 0.0, 0.0), (-0.01, 0.0, 0.0, 0.0), (0.0, 0.01, 0.0, 0.0), (0.0, -0.01, 0.0, 0.0),
                (0.0, 0.0, 0.005, 0.0), (0.0, 0.0, -0.005, 0.0), (0.0, 0.0, 0.0, float(np.deg2rad(1.0))))


def simulate_wedge(*, states=WEDGE_STATES, block: int = 4, rows: int = 8,
                   thickness_nm: tuple[float, float] = (20.0, 60.0), tilt_mrad: tuple[float, float] = (1.0, -0.6),
                   rng: np.random.Generator | int | None = None, **options) -> tuple[xr.Dataset, np.ndarray]:
    """Homogeneous strain states side by side across a thickness wedge.

    The scan has `rows` rows; its leftmost `block` columns are the unstrained
    reference, then each state of `states` fills the next `block` columns. The
    thickness rises linearly from the first to the last column, and the crystal
    is tilted by `tilt_mrad` everywhere, so with ``disks="dynamical"`` the disk
    contents change along the scan while the strain does not.

    Parameters
    ----------
    states : sequence of (exx, eyy, exy, theta)
        The homogeneous states, left to right (default :data:`WEDGE_STATES`).
    block : int
        Scan columns per state (and of the reference).
    rows : int
        Scan rows.
    thickness_nm : (float, float)
        Thickness at the first and last column, nm.
    tilt_mrad : (float, float)
        Crystal tilt (along a*, c*), mrad.
    rng : numpy.random.Generator or int, optional
    **options
        Passed to :func:`simulate_fields` (``dose``, ``disks``, ``setup``, ...).

    Returns
    -------
    sim : xarray.Dataset
        From :func:`simulate_fields`.
    region : numpy.ndarray of int, shape (rows, columns)
        0 for the reference, ``i`` for the ``i``-th state.

    Examples
    --------
    >>> sim, region = simulate_wedge(block=1, rows=2, dose=1e5, rng=0)
    >>> sim.datacube.shape[:2], region[0].tolist()
    ((2, 8), [0, 1, 2, 3, 4, 5, 6, 7])
    """
    for name, v in (("block", block), ("rows", rows)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    st = _validate.array(states, name="states", ndim=2, finite=True)
    if st.shape[1] != 4:
        raise ValueError(f"states must be rows of (exx, eyy, exy, theta), got shape {st.shape}")
    region = np.repeat(np.arange(st.shape[0] + 1), int(block))[None].repeat(int(rows), 0)
    fields = [np.concatenate([[0.0], st[:, i]])[region] for i in range(4)]
    thick = np.linspace(*thickness_nm, region.shape[1])[None].repeat(int(rows), 0)
    tilt = np.broadcast_to(np.asarray(tilt_mrad, float), region.shape + (2,))
    return simulate_fields(*fields, thick, tilt_mrad=tilt, rng=rng, **options), region


def simulate_uniform(*, exx: float = 0.0, eyy: float = 0.0, exy: float = 0.0, theta: float = 0.0,
                     scan_shape: tuple[int, int] = (6, 8), reference_columns: int = 3,
                     thickness_nm: float = 60.0, **options) -> xr.Dataset:
    """Simulate a scan whose first `reference_columns` columns are unstrained, the rest homogeneous.

    Parameters
    ----------
    exx, eyy, exy, theta : float
        Homogeneous strain (tensor shear) and rotation (rad) right of the reference block.
    scan_shape : (int, int)
        ``(ny, nx)``.
    reference_columns : int
        Number of unstrained columns on the left (the zero-strain reference).
    thickness_nm : float or array_like
        Thickness, nm: one value, or a ``(ny, nx)`` map (e.g. a wedge).
    **options
        Passed to :func:`simulate_fields` (``setup, dose, rng, rotation_rad, ...``).

    Returns
    -------
    xarray.Dataset
        As :func:`simulate_fields`, plus ``reference`` (bool, on (y, x)).

    Examples
    --------
    >>> sim = simulate_uniform(exx=0.01, scan_shape=(2, 3), reference_columns=1, rng=1)
    >>> sim.exx.values[0].tolist(), int(sim.reference.sum())
    ([0.0, 0.01, 0.01], 2)
    """
    ny, nx = scan_shape
    if not 0 < reference_columns < nx:
        raise ValueError(f"reference_columns must be between 1 and nx - 1 = {nx - 1}, got {reference_columns}")
    ref = np.zeros((ny, nx), bool)
    ref[:, :reference_columns] = True
    fields = [np.where(ref, 0.0, v) for v in (exx, eyy, exy, theta)]
    thick = np.broadcast_to(_validate.array(thickness_nm, name="thickness_nm", ndim=(0, 2)).astype(float),
                            (ny, nx))
    ds = simulate_fields(*fields, np.array(thick), **options)
    return ds.assign(reference=(("y", "x"), ref, {"units": "1", "long_name": "zero-strain reference"}))


def simulate_particle(particle: Particle, *, scan_shape: tuple[int, int] = (64, 64),
                      step_nm: float | None = None, center_nm: tuple[float, float] = (0.0, 0.0),
                      **options) -> xr.Dataset:
    """Simulate a 4D-STEM scan of a twin particle.

    Parameters
    ----------
    particle : chemomech.twin.particle.Particle
        The twin; its truth strain (relative to FePO4) and thickness are sampled
        at the scan positions; its ``crystal_angle_rad`` orients the lattice.
    scan_shape : (int, int)
        ``(ny, nx)`` scan positions.
    step_nm : float, optional
        Scan step, nm; default: the particle plus ~8 % margin fills the scan.
    center_nm : (float, float)
        ``(y, x)`` of the scan centre, nm.
    **options
        Passed to :func:`simulate_fields`.

    Returns
    -------
    xarray.Dataset
        As :func:`simulate_fields`, with ``y``/``x`` coordinates in nm and the
        particle's ``X`` (Li fraction) added. With ``disks="dynamical"`` the disk
        contents follow the particle's X, thickness and bending tilt
        (:meth:`~chemomech.twin.particle.Particle.tilt_mrad`), so virtual bright-
        and dark-field images show thickness fringes and bend contours.
    """
    if not isinstance(particle, Particle):
        raise TypeError(f"particle must be a chemomech.twin.Particle, got {type(particle).__name__}")
    ny, nx = scan_shape
    if step_nm is None:
        ol = particle.outline()
        ext = np.ptp(ol, axis=0) * 1.08
        step_nm = float(max(ext[0] / ny, ext[1] / nx))
    step = _validate.positive(step_nm, name="step_nm")
    yc = (np.arange(ny) - (ny - 1) / 2) * step + center_nm[0]
    xc = (np.arange(nx) - (nx - 1) / 2) * step + center_nm[1]
    yy, xx = np.meshgrid(yc, xc, indexing="ij")
    truth = particle.sample(yy, xx)
    options.setdefault("X", np.where(truth["mask"], truth["X"], 0.0))
    options.setdefault("tilt_mrad", particle.tilt_mrad(yy, xx))
    ds = simulate_fields(truth["exx"], truth["eyy"], truth["exy"], truth["theta"], truth["thickness"],
                         crystal_angle_rad=particle.crystal_angle_rad, **options)
    ds = ds.assign_coords(
        y=("y", yc, {"units": "nm", "long_name": "y (image rows)"}),
        x=("x", xc, {"units": "nm", "long_name": "x (image columns)"}),
    )
    ds["X"] = (("y", "x"), truth["X"], {"units": "1", "long_name": "Li fraction x in LixFePO4"})
    ds.attrs.update(particle=particle.name, step_nm=step)
    return ds


def relative_truth(truth: xr.Dataset, reference: ArrayLike) -> xr.Dataset:
    """Truth strain as a Bragg-disk measurement must report it: relative to a reference lattice.

    The reference reciprocal lattice is the element-wise median of
    ``F^-T`` over `reference`; the relative deformation ``F_rel`` satisfies
    ``F_rel^-T = F^-T F_ref^T``, and the returned strain is its linearised
    symmetric part, the rotation its antisymmetric part.

    Parameters
    ----------
    truth : xarray.Dataset
        With ``exx, eyy, exy, theta`` on ``("y", "x")``.
    reference : array_like of bool
        ``(ny, nx)`` zero-strain reference region.

    Returns
    -------
    xarray.Dataset
        ``exx, eyy, exy, theta`` relative to the reference.

    Examples
    --------
    >>> t = xr.Dataset({k: (("y", "x"), np.full((1, 2), v)) for k, v in
    ...                 dict(exx=0.01, eyy=0.0, exy=0.0, theta=0.0).items()})
    >>> float(relative_truth(t, np.array([[True, False]])).exx[0, 1])
    0.0
    """
    ref = _validate.mask(reference, name="reference", shape=truth.exx.shape)
    f = _deformation(truth.exx.values, truth.eyy.values, truth.exy.values, truth.theta.values)
    finv_t = np.linalg.inv(np.swapaxes(np.where(np.isfinite(f), f, np.eye(2)), -1, -2))
    finv_t = np.where(np.isfinite(f), finv_t, np.nan)
    ref_inv_t = np.nanmedian(finv_t[ref], axis=0)
    rel_inv_t = finv_t @ np.linalg.inv(ref_inv_t)
    h = np.swapaxes(np.linalg.inv(np.where(np.isfinite(rel_inv_t), rel_inv_t, np.eye(2))), -1, -2) - np.eye(2)
    h = np.where(np.isfinite(rel_inv_t), h, np.nan)
    out = {
        "exx": h[..., 0, 0], "eyy": h[..., 1, 1],
        "exy": 0.5 * (h[..., 0, 1] + h[..., 1, 0]), "theta": 0.5 * (h[..., 1, 0] - h[..., 0, 1]),
    }
    return xr.Dataset({k: (("y", "x"), v, {"units": "rad" if k == "theta" else "1",
                                          "long_name": f"{k} relative to the reference (truth)"})
                       for k, v in out.items()}, coords=truth.exx.coords)
