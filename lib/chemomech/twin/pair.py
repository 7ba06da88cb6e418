"""Simulated pairs of modality images for correlative registration.

A stand-in for the image pair of the registration chapter, generated from the
digital twin (:mod:`chemomech.twin.particle`) with a *known* geometric relation:

- the **fixed** image is an X-ray thickness (or optical-density) map on the
  particle frame, axis-aligned, with the X-ray pixel size;
- the **moving** image is a 4D-STEM virtual bright- or dark-field image on a
  scan grid that is rotated, scaled, sheared, shifted and optionally mirrored
  relative to the particle, with another pixel size and a contrast that is a
  non-linear (bright field: inverted) function of thickness.

Both are integrated over each pixel (super-sampling), blurred by a probe and
given noise. :class:`PairTruth` returns the exact fixed → moving pixel mapping,
so the target registration error of any estimate can be computed. This module
is a measurement simulator: it shares no code with
:mod:`chemomech.registration`, which analyses its output.

When the 4D-STEM and ptychography simulators (``stem4d``, ``ptycho``) are used
instead, only the images change; the truth transform is built the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xarray as xr
from numpy.typing import ArrayLike
from scipy import ndimage

from .. import _validate
from .particle import Particle

__all__ = [
    "BF_MEAN_FREE_PATH_NM",
    "DF_MEAN_FREE_PATH_NM",
    "PairTruth",
    "random_pair_parameters",
    "simulate_pair",
    "simulate_stack_inputs",
]

#: Effective attenuation length of the virtual bright-field signal in LiFePO4 at
#: 200–300 kV with a small collection angle, nm (order of the elastic/inelastic
#: mean free path, ~100–200 nm; an assumption of the simulator).
BF_MEAN_FREE_PATH_NM = 140.0
#: Thickness at which the virtual dark-field signal peaks, nm: the annular signal
#: grows ~ t exp(-t / lambda), so it is non-monotonic in thickness (assumption).
DF_MEAN_FREE_PATH_NM = 120.0
#: Relative diffraction contrast between Li-rich and Li-poor domains in the
#: 4D-STEM virtual image (lattice-parameter-dependent Bragg excitation; assumption).
DOMAIN_CONTRAST = 0.08
#: Super-sampling per axis used to integrate the signal over a pixel.
_SUPERSAMPLE = 3


@dataclass(frozen=True)
class PairTruth:
    """The known geometry of a simulated image pair.

    Attributes
    ----------
    matrix : numpy.ndarray
        ``(3, 3)`` homogeneous affine map from fixed pixel indices
        ``(row, col, 1)`` to moving pixel indices.
    rotation_rad, scale, shear : float
        Scan-frame rotation (positive turns x towards y), relative pixel-size
        error and symmetric (pure) shear of the 4D-STEM scan relative to the
        particle.
    mirror : bool
        The moving image is mirrored (its rows flipped), ``det(matrix) < 0``.
    shift_nm : (float, float)
        Particle-centre offset ``(y, x)`` in the scan frame, nm.
    fixed_pixel_nm, moving_pixel_nm : float
        Nominal pixel sizes.
    """

    matrix: np.ndarray
    rotation_rad: float
    scale: float
    shear: float
    mirror: bool
    shift_nm: tuple[float, float]
    fixed_pixel_nm: float
    moving_pixel_nm: float

    def map_points(self, points: ArrayLike) -> np.ndarray:
        """Exact moving pixel positions ``(N, 2)`` of fixed pixel positions ``(N, 2)`` (row, col)."""
        p = _validate.array(points, name="points", shape=(None, 2), finite=True).astype(float)
        return p @ self.matrix[:2, :2].T + self.matrix[:2, 2]

    def inverse_map_points(self, points: ArrayLike) -> np.ndarray:
        """Exact fixed pixel positions of moving pixel positions ``(N, 2)`` (row, col)."""
        p = _validate.array(points, name="points", shape=(None, 2), finite=True).astype(float)
        inv = np.linalg.inv(self.matrix)
        return p @ inv[:2, :2].T + inv[:2, 2]

    def target_registration_error(self, estimated_moving: ArrayLike, fixed_points: ArrayLike) -> np.ndarray:
        """Target registration error in fixed-image pixels.

        Parameters
        ----------
        estimated_moving : array_like
            ``(N, 2)`` moving positions that a registration assigned to `fixed_points`.
        fixed_points : array_like
            ``(N, 2)`` landmark positions ``(row, col)`` in the fixed image.

        Returns
        -------
        numpy.ndarray
            ``(N,)`` distances ``|T_true^-1(estimate) - p|`` in fixed pixels.
        """
        back = self.inverse_map_points(estimated_moving)
        fixed = _validate.array(fixed_points, name="fixed_points", shape=(back.shape[0], 2))
        return np.hypot(*(back - fixed).T)


def _rot_yx(angle_rad: float) -> np.ndarray:
    """Rotation acting on (y, x) column vectors; positive turns x towards y."""
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    return np.array([[c, s], [-s, c]])


def _scan_to_particle(rotation_rad: float, scale: float, shear: float, mirror: bool) -> np.ndarray:
    """Linear map (y, x) from nominal scan-frame nm to particle-frame nm.

    ``L = R(rotation) @ M @ K`` with ``M`` the row flip of a mirrored scan and
    ``K = scale * [[1, shear], [shear, 1]]`` a symmetric (rotation-free) distortion.
    """
    m = np.diag([-1.0, 1.0]) if mirror else np.eye(2)
    k = scale * np.array([[1.0, shear], [shear, 1.0]])
    return _rot_yx(rotation_rad) @ m @ k


def random_pair_parameters(rng: np.random.Generator | int | None = None, *,
                           max_rotation_rad: float = np.deg2rad(15.0),
                           scale_range: tuple[float, float] = (0.8, 1.25),
                           max_shear: float = 0.06, max_shift_nm: float = 40.0) -> dict:
    """Draw the geometry of one simulated pair (the acceptance ranges of the chapter).

    Returns
    -------
    dict
        Keyword arguments ``rotation_rad, scale, shear, mirror, shift_nm,
        contrast`` for :func:`simulate_pair`.

    Examples
    --------
    >>> sorted(random_pair_parameters(0))
    ['contrast', 'mirror', 'rotation_rad', 'scale', 'shear', 'shift_nm']
    """
    g = _validate.rng(rng)
    return {
        "rotation_rad": float(g.uniform(-max_rotation_rad, max_rotation_rad)),
        "scale": float(np.exp(g.uniform(np.log(scale_range[0]), np.log(scale_range[1])))),
        "shear": float(g.uniform(-max_shear, max_shear)),
        "mirror": bool(g.integers(2)),
        "shift_nm": (float(g.uniform(-max_shift_nm, max_shift_nm)), float(g.uniform(-max_shift_nm, max_shift_nm))),
        "contrast": str(g.choice(["bright_field", "dark_field"])),
    }


def _outline_extent(particle: Particle) -> np.ndarray:
    return particle.outline(360)[:-1]


def _grid_axis(n: int, pixel_nm: float) -> np.ndarray:
    return (np.arange(n) - (n - 1) / 2) * pixel_nm


def _integrate(func, yy: np.ndarray, xx: np.ndarray, pixel_nm: float, lin: np.ndarray) -> np.ndarray:
    """Average `func` over each pixel footprint (super-sampled), mapped by `lin` (y, x)."""
    acc = np.zeros(yy.shape)
    offs = (np.arange(_SUPERSAMPLE) + 0.5) / _SUPERSAMPLE - 0.5
    for oy in offs:
        for ox in offs:
            py = yy + oy * pixel_nm
            px = xx + ox * pixel_nm
            acc += func(lin[0, 0] * py + lin[0, 1] * px, lin[1, 0] * py + lin[1, 1] * px)
    return acc / _SUPERSAMPLE**2


def simulate_pair(particle: Particle, *, fixed_pixel_nm: float = 6.0, moving_pixel_nm: float = 7.5,
                  rotation_rad: float = 0.0, scale: float = 1.0, shear: float = 0.0,
                  mirror: bool = False, shift_nm: tuple[float, float] = (0.0, 0.0),
                  contrast: str = "bright_field", fixed_kind: str = "thickness",
                  noise: float = 0.03, blur_px: float = 0.7, margin_px: int = 8,
                  rng: np.random.Generator | int | None = None
                  ) -> tuple[xr.DataArray, xr.DataArray, PairTruth]:
    """Simulate an X-ray map (fixed) and a 4D-STEM virtual image (moving) of one particle.

    Parameters
    ----------
    particle : chemomech.twin.particle.Particle
        The twin particle.
    fixed_pixel_nm, moving_pixel_nm : float
        Pixel sizes of the X-ray map and (nominal) of the 4D-STEM scan, nm.
    rotation_rad : float
        Rotation of the scan frame relative to the particle (positive: x towards y).
    scale : float
        True / nominal scan step (a calibration error, 0.8–1.25 in the chapter).
    shear : float
        Symmetric shear of the scan (scan distortion), dimensionless.
    mirror : bool
        Flip the scan rows (one modality viewed from the other side).
    shift_nm : (float, float)
        Offset ``(y, x)`` of the particle centre in the scan frame, nm.
    contrast : {"bright_field", "dark_field"}
        Virtual image type: bright field ``exp(-t / lambda)`` (inverted,
        non-linear) or annular dark field ``(t / lambda) exp(-t / lambda)``
        (non-monotonic above ``lambda``), both with a small Li-dependent
        diffraction contrast.
    fixed_kind : {"thickness", "od"}
        X-ray map: thickness (nm) or optical density at 710 eV (Fe3+ peak, so
        Li-poor domains are ~2x darker per nm than Li-rich ones).
    noise : float
        Gaussian noise, a fraction of each image's signal range.
    blur_px : float
        Gaussian probe/PSF blur in each image's own pixels.
    margin_px : int
        Empty pixels around the particle.
    rng : numpy.random.Generator or int or None
        Noise generator.

    Returns
    -------
    fixed, moving : xarray.DataArray
        Images on ``("y", "x")`` with coordinates in nm (each in its own frame).
    truth : PairTruth
        The exact fixed → moving pixel mapping.

    Examples
    --------
    >>> from chemomech import twin
    >>> p = twin.make_particle("demo", seed=2)
    >>> fixed, moving, truth = simulate_pair(p, rotation_rad=0.1, mirror=True, rng=0)
    >>> bool(np.linalg.det(truth.matrix[:2, :2]) < 0)
    True
    """
    if not isinstance(particle, Particle):
        raise TypeError(f"particle must be a chemomech.twin.particle.Particle, got {type(particle).__name__}")
    pf = _validate.positive(fixed_pixel_nm, name="fixed_pixel_nm")
    pm = _validate.positive(moving_pixel_nm, name="moving_pixel_nm")
    scale = _validate.positive(scale, name="scale")
    _validate.choice(contrast, ("bright_field", "dark_field"), name="contrast")
    _validate.choice(fixed_kind, ("thickness", "od"), name="fixed_kind")
    _validate.positive(noise, name="noise", allow_zero=True)
    _validate.positive(blur_px, name="blur_px", allow_zero=True)
    shift = np.asarray(_validate.array(shift_nm, name="shift_nm", shape=(2,), finite=True), dtype=float)
    if abs(shear) >= 0.5:
        raise ValueError(f"shear must satisfy |shear| < 0.5, got {shear!r}")
    g = _validate.rng(rng)
    outline = _outline_extent(particle)

    # fixed grid: particle frame, axis-aligned, particle centred
    ext = np.abs(outline).max(axis=0)
    nfy, nfx = (int(np.ceil(2 * e / pf)) + 2 * margin_px for e in ext)
    fy, fx = _grid_axis(nfy, pf), _grid_axis(nfx, pf)

    # moving grid: scan frame; particle point r = L @ s + r0, with s in scan nm
    lin = _scan_to_particle(rotation_rad, scale, shear, mirror)
    lin_inv = np.linalg.inv(lin)
    s_outline = (outline @ lin_inv.T) + shift  # particle centre sits at `shift` in the scan frame
    lo, hi = s_outline.min(axis=0), s_outline.max(axis=0)
    centre = np.round((lo + hi) / 2 / pm) * pm
    nmy, nmx = (int(np.ceil(max(abs(h - c), abs(c - lo_)) * 2 / pm)) + 2 * margin_px
                for lo_, h, c in zip(lo, hi, centre))
    my, mx = _grid_axis(nmy, pm), _grid_axis(nmx, pm)
    r0 = -lin @ shift  # particle coords of scan origin
    lin_aff = np.eye(3)
    lin_aff[:2, :2], lin_aff[:2, 2] = lin, r0

    def field(kind):
        def f(y, x):
            t = particle.thickness(y, x)
            X = np.where(t > 0, particle.lithium(y, x), 0.0)
            if kind == "thickness":
                return t
            if kind == "od":  # OD(710 eV) per nm: FePO4 ~2.1x LiFePO4 (science.md)
                return t * (2.1 * (1.0 - X) + 1.0 * X) / 2.1
            domain = 1.0 + DOMAIN_CONTRAST * (X - 0.5) * (t > 0)
            if kind == "bright_field":
                return np.exp(-t / BF_MEAN_FREE_PATH_NM * domain)
            u = t / DF_MEAN_FREE_PATH_NM
            return u * np.exp(1.0 - u) * domain + 0.02
        return f

    fyy, fxx = np.meshgrid(fy, fx, indexing="ij")
    fixed = _integrate(field(fixed_kind), fyy, fxx, pf, np.eye(2))
    myy, mxx = np.meshgrid(my + centre[0], mx + centre[1], indexing="ij")

    def moving_field(y, x):  # (y, x) already mapped by lin; add the offset
        return field(contrast)(y + r0[0], x + r0[1])
    moving = _integrate(moving_field, myy, mxx, pm, lin)

    out = []
    for img in (fixed, moving):
        if blur_px > 0:
            img = ndimage.gaussian_filter(img, blur_px, mode="nearest")
        span = float(np.ptp(img)) or 1.0
        out.append(img + g.normal(0.0, noise * span, img.shape))
    fixed, moving = out

    # exact pixel mapping fixed (row, col) -> moving (row, col)
    f_idx_to_nm = np.array([[pf, 0, fy[0]], [0, pf, fx[0]], [0, 0, 1.0]])
    m_idx_to_nm = np.array([[pm, 0, my[0] + centre[0]], [0, pm, mx[0] + centre[1]], [0, 0, 1.0]])
    matrix = np.linalg.inv(m_idx_to_nm) @ np.linalg.inv(lin_aff) @ f_idx_to_nm
    truth = PairTruth(matrix=matrix, rotation_rad=float(rotation_rad), scale=scale, shear=float(shear),
                      mirror=bool(mirror), shift_nm=(float(shift[0]), float(shift[1])),
                      fixed_pixel_nm=pf, moving_pixel_nm=pm)

    def coords(yv, xv, frame):
        return {"y": ("y", yv, {"units": "nm", "long_name": f"y ({frame})"}),
                "x": ("x", xv, {"units": "nm", "long_name": f"x ({frame})"})}
    fixed_da = xr.DataArray(fixed, dims=("y", "x"), coords=coords(fy, fx, "X-ray frame"), name=fixed_kind,
                            attrs={"units": "nm" if fixed_kind == "thickness" else "1",
                                   "long_name": "X-ray thickness map" if fixed_kind == "thickness"
                                   else "X-ray optical density at 710 eV (scaled)"})
    moving_da = xr.DataArray(moving, dims=("y", "x"), coords=coords(my + centre[0], mx + centre[1], "scan frame"),
                             name=contrast,
                             attrs={"units": "1", "long_name": f"4D-STEM virtual {contrast.replace('_', '-')}"})
    return fixed_da, moving_da, truth


def simulate_stack_inputs(particle: Particle, truth: PairTruth, fixed: xr.DataArray, moving: xr.DataArray, *,
                          strain_noise: float = 5e-4, x_noise: float = 0.05,
                          rng: np.random.Generator | int | None = None) -> tuple[xr.Dataset, xr.Dataset]:
    """Stand-ins for the strain and XANES results on the two grids of a simulated pair.

    The strain is the twin's truth, expressed in the scan frame (the detector
    frame of the 4D-STEM measurement, i.e. rotated and possibly mirrored with
    the scan, but not distorted with it) plus Gaussian noise; the XANES map is
    the truth ``X`` on the X-ray grid plus noise, with ``X_sigma`` set to the
    noise level.

    Parameters
    ----------
    particle : Particle
    truth : PairTruth
        From :func:`simulate_pair` with the same particle.
    fixed, moving : xarray.DataArray
        The images of that pair (their grids are used).
    strain_noise : float
        Standard deviation of the strain noise (fraction).
    x_noise : float
        Standard deviation of the X noise.
    rng : numpy.random.Generator or int or None

    Returns
    -------
    strain, xanes : xarray.Dataset
        ``strain`` on the moving grid: ``exx, eyy, exy, theta, mask`` and the
        virtual image ``virtual``; ``xanes`` on the fixed grid: ``X, X_sigma,
        thickness, mask``.
    """
    g = _validate.rng(rng)
    # moving pixel centres -> particle nm via the exact transform
    ny, nx = moving.shape
    rr, cc = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    inv = np.linalg.inv(truth.matrix)
    pts = np.stack([rr.ravel(), cc.ravel()], axis=1)
    fpts = pts @ inv[:2, :2].T + inv[:2, 2]
    fy, fx = fixed["y"].values, fixed["x"].values
    py = fy[0] + fpts[:, 0] * truth.fixed_pixel_nm
    px = fx[0] + fpts[:, 1] * truth.fixed_pixel_nm
    s = particle.sample(py.reshape(ny, nx), px.reshape(ny, nx))
    # rotation of the detector frame relative to the particle frame, in (x, y) order:
    # a scan-frame vector v_s (x, y) is the particle-frame vector Q v_s
    c, si = np.cos(truth.rotation_rad), np.sin(truth.rotation_rad)
    q = np.array([[c, -si], [si, c]]) @ (np.diag([1.0, -1.0]) if truth.mirror else np.eye(2))
    eps_p = np.array([[s["exx"], s["exy"]], [s["exy"], s["eyy"]]])  # (2, 2, ny, nx) xy order
    eps_s = np.einsum("ai,abyx,bj->ijyx", q, eps_p, q)  # Q^T eps Q
    theta = s["theta"] * np.linalg.det(q)
    mask = s["mask"] & np.all(np.isfinite(eps_s), axis=(0, 1))
    meta = {"exx": ("1", "strain exx (scan frame)"), "eyy": ("1", "strain eyy (scan frame)"),
            "exy": ("1", "tensor shear strain exy (scan frame)"),
            "theta": ("rad", "rigid rotation (scan frame)")}
    vals = {"exx": eps_s[0, 0], "eyy": eps_s[1, 1], "exy": eps_s[0, 1], "theta": theta}
    strain = xr.Dataset(coords=moving.coords)
    for k, (u, ln) in meta.items():
        v = np.where(mask, vals[k] + g.normal(0.0, strain_noise, mask.shape), np.nan)
        strain[k] = (("y", "x"), v, {"units": u, "long_name": ln})
    strain["mask"] = (("y", "x"), mask, {"units": "1", "long_name": "strain mask"})
    strain["virtual"] = moving.assign_attrs(moving.attrs)

    fyy, fxx = np.meshgrid(fy, fx, indexing="ij")
    inside = particle.contains(fyy, fxx)
    X = np.where(inside, particle.lithium(fyy, fxx) + g.normal(0.0, x_noise, inside.shape), np.nan)
    t = np.where(inside, particle.thickness(fyy, fxx) * (1 + g.normal(0.0, x_noise, inside.shape)), np.nan)
    xanes = xr.Dataset(
        {"X": (("y", "x"), X, {"units": "1", "long_name": "Li fraction X"}),
         "X_sigma": (("y", "x"), np.where(inside, x_noise, np.nan),
                     {"units": "1", "long_name": "standard deviation of X"}),
         "thickness": (("y", "x"), t, {"units": "nm", "long_name": "thickness along b"}),
         "mask": (("y", "x"), inside, {"units": "1", "long_name": "X-ray particle mask"})},
        coords=fixed.coords)
    return strain, xanes
