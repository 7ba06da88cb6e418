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
    "simulate_realistic_pair",
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
    fixed_mask, moving_mask : numpy.ndarray or None
        True particle masks (pixel centres inside the outline) on each grid,
        when the simulator provides them (:func:`simulate_realistic_pair`).
    """

    matrix: np.ndarray
    rotation_rad: float
    scale: float
    shear: float
    mirror: bool
    shift_nm: tuple[float, float]
    fixed_pixel_nm: float
    moving_pixel_nm: float
    fixed_mask: np.ndarray | None = None
    moving_mask: np.ndarray | None = None

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


def _coords(yv: np.ndarray, xv: np.ndarray, frame: str) -> dict:
    return {"y": ("y", yv, {"units": "nm", "long_name": f"y ({frame})"}),
            "x": ("x", xv, {"units": "nm", "long_name": f"x ({frame})"})}


def _fixed_image(values: np.ndarray, fy: np.ndarray, fx: np.ndarray, kind: str) -> xr.DataArray:
    """The X-ray image as a DataArray: a thickness map (nm) or a scaled optical density."""
    return xr.DataArray(values, dims=("y", "x"), coords=_coords(fy, fx, "X-ray frame"), name=kind,
                        attrs={"units": "nm" if kind == "thickness" else "1",
                               "long_name": "X-ray thickness map" if kind == "thickness"
                               else "X-ray optical density at 710 eV (scaled)"})


def _grid_inputs(particle: Particle, fixed_pixel_nm: float, moving_pixel_nm: float, scale: float):
    """Checked particle, pixel sizes (nm) and scan scale shared by the pair simulators."""
    if not isinstance(particle, Particle):
        raise TypeError(f"particle must be a chemomech.twin.particle.Particle, got {type(particle).__name__}")
    return (_validate.positive(fixed_pixel_nm, name="fixed_pixel_nm"),
            _validate.positive(moving_pixel_nm, name="moving_pixel_nm"), _validate.positive(scale, name="scale"))


def _geometry_inputs(particle: Particle, shift_nm, shear: float, rng):
    """Checked shift (nm), random generator and outline extent shared by the pair simulators."""
    shift = np.asarray(_validate.array(shift_nm, name="shift_nm", shape=(2,), finite=True), dtype=float)
    if abs(shear) >= 0.5:
        raise ValueError(f"shear must satisfy |shear| < 0.5, got {shear!r}")
    return shift, _validate.rng(rng), _outline_extent(particle)


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
    pf, pm, scale = _grid_inputs(particle, fixed_pixel_nm, moving_pixel_nm, scale)
    _validate.choice(contrast, ("bright_field", "dark_field"), name="contrast")
    _validate.choice(fixed_kind, ("thickness", "od"), name="fixed_kind")
    _validate.positive(noise, name="noise", allow_zero=True)
    _validate.positive(blur_px, name="blur_px", allow_zero=True)
    shift, g, outline = _geometry_inputs(particle, shift_nm, shear, rng)

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

    fixed_da = _fixed_image(fixed, fy, fx, fixed_kind)
    moving_da = xr.DataArray(moving, dims=("y", "x"), coords=_coords(my + centre[0], mx + centre[1], "scan frame"),
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


# --- real-looking pairs ------------------------------------------------------------------

#: Raster spacing (nm) of the particle-frame scene that both images of a real-looking pair sample.
_SCENE_NM = 1.5
#: X-ray absorption of the support film, as an equivalent LiFePO4 thickness, nm (amorphous
#: carbon/SiN of ~10-20 nm absorbs roughly like 2-4 nm of LiFePO4 at the Fe L edge; assumption).
FILM_EQUIVALENT_NM = 3.0
#: Dark-field signal of the support film relative to the particle's peak signal (amorphous
#: film scatters weakly and diffusely into the annular detector; assumption).
FILM_DF = 0.12


def _smooth_noise(g: np.random.Generator, shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    """Unit-variance Gaussian random field with correlation length ~`sigma_px` raster pixels."""
    f = ndimage.gaussian_filter(g.normal(size=shape), sigma_px, mode="wrap")
    return (f - f.mean()) / (f.std() or 1.0)


@dataclass(frozen=True)
class _Scene:
    """Particle-frame rasters (nm grid ``y0 + h * i``, ``x0 + h * j``) of everything the two instruments see."""

    y0: float
    x0: float
    h: float
    thickness: np.ndarray      # main particle (with holes and gradient) + neighbour, nm
    film: np.ndarray           # support-film coverage, 0..1
    df: np.ndarray             # dark-field signal, particle peak ~1 (vacuum 0)
    inside: np.ndarray         # main particle only (bool)

    def sample(self, key: str, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        arr = getattr(self, key).astype(float)
        return ndimage.map_coordinates(arr, [(y - self.y0) / self.h, (x - self.x0) / self.h], order=1,
                                       mode="nearest")


def _stand_in_df(particle: Particle, yy: np.ndarray, xx: np.ndarray, t: np.ndarray, h: float,
                 blob_nm: tuple[float, float], g: np.random.Generator) -> np.ndarray:
    """Stand-in dark-field signal with diffraction contrast (bend contours, blobs, grain, speckled rim).

    Not physics: a documented texture that reproduces what real virtual dark-field
    images of LiFePO4 platelets show and the thickness map does not (see
    :func:`simulate_realistic_pair`). Values: particle ~0.3-1, blobs up to ~2.5, vacuum 0.
    """
    inside = t > 0
    rho = np.hypot(yy, xx) / particle.radius(np.arctan2(yy, xx))
    u = t / DF_MEAN_FREE_PATH_NM
    base = u * np.exp(1.0 - u)  # annular DF: grows with t, peaks at lambda
    # bend contours: bright bands where a smooth bending (tilt) field crosses a Bragg condition
    bend = 1.2 * _smooth_noise(g, yy.shape, 90.0 / h) + 0.004 * (g.normal() * yy + g.normal() * xx)
    frac = bend - np.round(bend)
    contours = np.exp(-0.5 * (frac / 0.1) ** 2)
    # dark blobs (in the inverted view): strongly diffracting patches, mostly along the rim
    blobs = np.zeros(yy.shape)
    area, target = 0.0, 0.10 * inside.sum()
    while area < target:
        d = g.uniform(*blob_nm)
        on_rim = g.random() < 0.75
        ang = g.uniform(0, 2 * np.pi)
        rr = g.uniform(0.8, 1.0) if on_rim else g.uniform(0.0, 0.7)
        rad = particle.radius(ang) * rr
        cy, cx = rad * np.sin(ang), rad * np.cos(ang)
        ay, ax = d / 2 * g.uniform(0.7, 1.3), d / 2 * g.uniform(0.7, 1.3)
        blob = np.exp(-0.5 * (((yy - cy) / ay) ** 2 + ((xx - cx) / ax) ** 2) ** 2)  # flat top, FWHM ~d
        blobs = np.maximum(blobs, blob * g.uniform(0.8, 1.2))
        area = float(((blobs > 0.5) & inside).sum())
    grain = _smooth_noise(g, yy.shape, 4.0 / h)
    df = base * (0.35 + 0.3 * contours + 2.0 * blobs) * (1.0 + 0.18 * grain)
    # speckled, broken rim: the outermost ~10 nm flickers, and along a few arcs it is missing
    rim = (rho > 1.0 - 12.0 / particle.radius(np.arctan2(yy, xx))) & inside
    speck = np.clip(1.0 + 0.6 * _smooth_noise(g, yy.shape, 1.5 / h), 0.0, None)
    phi = np.arctan2(yy, xx)
    gaps = np.zeros(yy.shape, bool)
    for _ in range(int(g.integers(3, 7))):
        a0, w = g.uniform(-np.pi, np.pi), np.deg2rad(g.uniform(8.0, 25.0))
        gaps |= np.abs(np.angle(np.exp(1j * (phi - a0)))) < w / 2
    df = np.where(rim, df * np.where(gaps, 0.15, speck), df)
    return np.where(inside, df, 0.0)


def _scene(particle: Particle, bounds: np.ndarray, *, holes: int, film: bool, neighbour: bool,
           blob_nm: tuple[float, float], df_image: xr.DataArray | None, g: np.random.Generator) -> _Scene:
    (ylo, xlo), (yhi, xhi) = bounds
    h = _SCENE_NM
    ys = np.arange(ylo - 4 * h, yhi + 4 * h, h)
    xs = np.arange(xlo - 4 * h, xhi + 4 * h, h)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    inside = particle.contains(yy, xx)
    t = t_particle = particle.thickness(yy, xx)
    r_mean = float(np.mean(particle.radius(np.linspace(0, 2 * np.pi, 64))))
    # thickness gradient across the platelet (wedge) and thinner patches / holes
    d = g.uniform(0, 2 * np.pi)
    t = t * (1.0 + g.uniform(0.15, 0.35) * (np.cos(d) * xx + np.sin(d) * yy) / r_mean)
    for _ in range(int(holes)):
        ang, rr = g.uniform(0, 2 * np.pi), g.uniform(0.0, 0.6)
        cy, cx = rr * r_mean * np.sin(ang), rr * r_mean * np.cos(ang)
        rad = g.uniform(0.08, 0.16) * r_mean
        depth = g.choice([1.0, g.uniform(0.4, 0.7)])  # a through-hole or a thinner patch
        prof = np.clip(1.5 - np.hypot(yy - cy, xx - cx) / rad, 0.0, 1.0)  # flat bottom, soft wall
        t = t * (1.0 - depth * prof)
    t = np.where(inside, np.clip(t, 0.0, None), 0.0)
    # the DF signal of the particle: stand-in texture, or a given virtual DF image of it
    if df_image is None:
        df = _stand_in_df(particle, yy, xx, t, h, blob_nm, g)
    else:
        _validate.dims(df_image, ("y", "x"), name="df_image")
        src = np.asarray(df_image.values, dtype=float)
        dy_, dx_ = (float(np.diff(df_image[c].values[:2])[0]) for c in ("y", "x"))
        df = ndimage.map_coordinates(np.nan_to_num(src), [(yy - float(df_image.y[0])) / dy_,
                                                         (xx - float(df_image.x[0])) / dx_],
                                     order=1, mode="constant", cval=0.0)
        df = np.where(inside, df / (np.percentile(df[inside], 95) or 1.0), 0.0)
        # the given image is of the particle without the scene's holes and thickness gradient; no
        # material scatters nothing, so rescale it by the annular signal u exp(1 - u) of the scene's
        # thickness over that of the particle's own (kinematic, per pixel)
        u, u0 = t / DF_MEAN_FREE_PATH_NM, t_particle / DF_MEAN_FREE_PATH_NM
        df = df * np.where(u0 > 0, u * np.exp(u0 - u) / np.where(u0 > 0, u0, 1.0), 0.0)
    # part of a neighbouring particle, 15-40 nm beyond the rim
    if neighbour:
        ang = g.uniform(0, 2 * np.pi)
        ay, ax = g.uniform(0.7, 1.1) * r_mean, g.uniform(0.9, 1.4) * r_mean
        tilt = g.uniform(0, np.pi)
        gap = g.uniform(15.0, 40.0)
        dist = particle.radius(ang) + gap + ax
        cy, cx = dist * np.sin(ang), dist * np.cos(ang)
        # orient the neighbour's long axis towards the particle, so that its near edge is ~gap away
        tilt = ang + g.uniform(-0.3, 0.3)
        v, w = (yy - cy) * np.sin(tilt) + (xx - cx) * np.cos(tilt), -(yy - cy) * np.cos(tilt) + (xx - cx) * np.sin(tilt)
        q = np.hypot(v / ax, w / ay)
        tn = np.where(q < 1, g.uniform(50.0, 100.0) * np.sqrt(np.clip(1 - q**8, 0, None)), 0.0) * (~inside)
        un = tn / DF_MEAN_FREE_PATH_NM
        dfn = un * np.exp(1.0 - un) * (0.8 + 0.4 * (_smooth_noise(g, yy.shape, 20.0 / h) > 0.8))
        t, df = t + tn, df + dfn
    # support film: a half-plane with a wavy edge (holey-carbon hole edge), under or beside the particle
    cover = np.zeros(yy.shape)
    if film:
        d = g.uniform(0, 2 * np.pi)
        off = g.uniform(-1.2, 1.2) * r_mean
        s = np.cos(d) * xx + np.sin(d) * yy - off + 25.0 * _smooth_noise(g, yy.shape, 60.0 / h)
        cover = ndimage.gaussian_filter((s > 0).astype(float), 2.0 / h)
        df = df + FILM_DF * cover * (1.0 + 0.3 * _smooth_noise(g, yy.shape, 2.0 / h))
    return _Scene(y0=float(ys[0]), x0=float(xs[0]), h=h, thickness=t, film=cover, df=df, inside=inside)


def simulate_realistic_pair(particle: Particle, *, fixed_pixel_nm: float = 5.0, moving_pixel_nm: float = 4.0,
                            rotation_rad: float = 0.0, scale: float = 1.0, shear: float = 0.0,
                            mirror: bool = False, shift_nm: tuple[float, float] = (0.0, 0.0),
                            fixed_kind: str = "thickness", invert_moving: bool = True, holes: int = 3,
                            film: bool = True, neighbour: bool = True,
                            blob_px: tuple[float, float] = (10.0, 25.0), xray_resolution_px: float = 3.0,
                            noise: float = 0.03, fill: float = 0.45, df_image: xr.DataArray | None = None,
                            rng: np.random.Generator | int | None = None
                            ) -> tuple[xr.DataArray, xr.DataArray, PairTruth]:
    """A real-looking X-ray thickness map (fixed) and 4D-STEM dark-field image (moving).

    Like :func:`simulate_pair`, with what real images of a platelet show and the
    idealised pair does not:

    - **thickness** (both modalities): a wedge-like gradient of 15-35 % across the
      particle and `holes` thinner patches or through-holes;
    - **diffraction contrast** (dark field only), a *stand-in texture* until the
      dynamical (multislice) 4D-STEM twin provides virtual images: bright bend
      contours where a smooth random bending field crosses a Bragg condition,
      strongly diffracting blobs `blob_px` moving pixels across (75 % of them
      along the rim) covering ~10 % of the particle, a multiplicative grain of
      ~18 % and a speckled rim that is missing along a few arcs;
    - a **support film** with a wavy edge (holey carbon) that adds a weak signal
      to both images, and **part of a neighbouring particle** 15-40 nm away;
    - the X-ray resolution: Gaussian blur of FWHM `xray_resolution_px`.

    The dark-field image is shown *inverted* by default (``invert_moving``), as
    users often do: light background, mid-grey particle, dark blobs. The
    geometry (rotation, scale, shear, mirror, shift) and :class:`PairTruth` are
    as in :func:`simulate_pair`; the truth also carries the particle masks.

    Parameters
    ----------
    particle : chemomech.twin.particle.Particle
    fixed_pixel_nm, moving_pixel_nm : float
        Pixel sizes of the X-ray map and (nominal) of the 4D-STEM scan, nm.
    rotation_rad, scale, shear, mirror, shift_nm
        Scan geometry, see :func:`simulate_pair`.
    fixed_kind : {"thickness", "od"}
        Thickness (nm) or optical density at 710 eV.
    invert_moving : bool
        Return the negated dark-field signal (offset to be positive).
    holes : int
        Number of thin patches / through-holes.
    film, neighbour : bool
        Include the support film / a neighbouring particle.
    blob_px : (float, float)
        Range of diffraction-blob diameters, moving pixels.
    xray_resolution_px : float
        FWHM of the X-ray point-spread function, fixed pixels.
    noise : float
        Gaussian noise, a fraction of each image's signal range.
    fill : float
        Target fraction of the fixed field of view covered by the particle's bounding box.
    df_image : xarray.DataArray, optional
        A virtual dark-field image of the particle on particle-frame ``("y", "x")``
        coordinates in nm (e.g. from a dynamical 4D-STEM simulation on a fine
        grid). When given it replaces the stand-in texture of the particle
        (film, neighbour, geometry and noise are added as usual); it is taken
        to be of the particle without this scene's holes and thickness
        gradient, so it is rescaled per point by the annular signal
        ``u exp(1 - u)`` (``u = t / DF_MEAN_FREE_PATH_NM``) of the scene's
        thickness over that of the particle's own — a through-hole scatters
        nothing in either modality.
    rng : numpy.random.Generator or int or None
        Seeds every random draw (texture, holes, film, neighbour, noise).

    Returns
    -------
    fixed, moving : xarray.DataArray
        Images on ``("y", "x")`` with coordinates in nm, each in its own frame.
    truth : PairTruth
        Exact fixed → moving map, with ``fixed_mask``/``moving_mask`` of the main particle.

    Examples
    --------
    >>> from chemomech import twin
    >>> p = twin.make_particle("demo", seed=2)
    >>> fixed, moving, truth = simulate_realistic_pair(p, rotation_rad=0.3, mirror=True, rng=0)
    >>> 0.2 < truth.fixed_mask.mean() < 0.6, bool(np.linalg.det(truth.matrix[:2, :2]) < 0)
    (True, True)
    """
    pf, pm, scale = _grid_inputs(particle, fixed_pixel_nm, moving_pixel_nm, scale)
    _validate.choice(fixed_kind, ("thickness", "od"), name="fixed_kind")
    _validate.positive(noise, name="noise", allow_zero=True)
    _validate.positive(xray_resolution_px, name="xray_resolution_px", allow_zero=True)
    fill = _validate.positive(fill, name="fill")
    if not fill < 1:
        raise ValueError(f"fill must be in (0, 1), got {fill!r}")
    blob = np.asarray(_validate.array(blob_px, name="blob_px", shape=(2,), finite=True), dtype=float)
    if not 0 < blob[0] <= blob[1]:
        raise ValueError(f"blob_px must be (min, max) with 0 < min <= max, got {tuple(blob)}")
    if int(holes) < 0:
        raise ValueError(f"holes must be >= 0, got {holes!r}")
    shift, g, outline = _geometry_inputs(particle, shift_nm, shear, rng)

    # fixed grid: particle frame, the particle's bounding box fills ~`fill` of each axis... of the area
    ext = np.abs(outline).max(axis=0)
    side = 1.0 / np.sqrt(fill)
    nfy, nfx = (int(np.ceil(2 * e * side / pf)) for e in ext)
    fy, fx = _grid_axis(nfy, pf), _grid_axis(nfx, pf)
    # moving grid: scan frame, same relative margin
    lin = _scan_to_particle(rotation_rad, scale, shear, mirror)
    lin_inv = np.linalg.inv(lin)
    s_outline = (outline @ lin_inv.T) + shift
    lo, hi = s_outline.min(axis=0), s_outline.max(axis=0)
    centre = np.round((lo + hi) / 2 / pm) * pm
    nmy, nmx = (int(np.ceil(max(abs(h - c), abs(c - lo_)) * 2 * side / pm))
                for lo_, h, c in zip(lo, hi, centre))
    my, mx = _grid_axis(nmy, pm) + centre[0], _grid_axis(nmx, pm) + centre[1]
    r0 = -lin @ shift

    # the scene covers both fields of view (particle frame)
    corners_m = np.array([[y, x] for y in (my[0] - pm, my[-1] + pm) for x in (mx[0] - pm, mx[-1] + pm)])
    corners = np.vstack([corners_m @ lin.T + r0, [[fy[0] - pf, fx[0] - pf], [fy[-1] + pf, fx[-1] + pf]]])
    scene = _scene(particle, np.array([corners.min(axis=0), corners.max(axis=0)]), holes=int(holes), film=film,
                   neighbour=neighbour, blob_nm=tuple(blob * pm), df_image=df_image, g=g)

    def xray(y, x):
        t = scene.sample("thickness", y, x)
        if fixed_kind == "od":  # OD(710 eV) per nm: FePO4 ~2.1x LiFePO4 (science.md)
            X = np.clip(particle.lithium(y, x), 0.0, 1.0)
            t = t * (2.1 * (1.0 - X) + 1.0 * X) / 2.1
        return t + FILM_EQUIVALENT_NM * scene.sample("film", y, x)

    def dark_field(y, x):
        return scene.sample("df", y + r0[0], x + r0[1]) + 0.01

    fyy, fxx = np.meshgrid(fy, fx, indexing="ij")
    fixed = _integrate(xray, fyy, fxx, pf, np.eye(2))
    myy, mxx = np.meshgrid(my, mx, indexing="ij")
    moving = _integrate(dark_field, myy, mxx, pm, lin)
    if xray_resolution_px > 0:
        fixed = ndimage.gaussian_filter(fixed, xray_resolution_px / 2.3548, mode="nearest")
    moving = ndimage.gaussian_filter(moving, 0.7, mode="nearest")  # probe
    fixed = fixed + g.normal(0.0, noise * float(np.ptp(fixed)), fixed.shape)
    moving = moving + g.normal(0.0, noise * float(np.ptp(moving)), moving.shape)
    if invert_moving:
        moving = float(moving.max()) - moving

    f_idx_to_nm = np.array([[pf, 0, fy[0]], [0, pf, fx[0]], [0, 0, 1.0]])
    m_idx_to_nm = np.array([[pm, 0, my[0]], [0, pm, mx[0]], [0, 0, 1.0]])
    lin_aff = np.eye(3)
    lin_aff[:2, :2], lin_aff[:2, 2] = lin, r0
    matrix = np.linalg.inv(m_idx_to_nm) @ np.linalg.inv(lin_aff) @ f_idx_to_nm
    mp = myy * lin[0, 0] + mxx * lin[0, 1] + r0[0], myy * lin[1, 0] + mxx * lin[1, 1] + r0[1]
    truth = PairTruth(matrix=matrix, rotation_rad=float(rotation_rad), scale=scale, shear=float(shear),
                      mirror=bool(mirror), shift_nm=(float(shift[0]), float(shift[1])),
                      fixed_pixel_nm=pf, moving_pixel_nm=pm,
                      fixed_mask=particle.contains(fyy, fxx), moving_mask=particle.contains(*mp))

    fixed_da = _fixed_image(fixed, fy, fx, fixed_kind)
    name = "dark_field_inverted" if invert_moving else "dark_field"
    moving_da = xr.DataArray(moving, dims=("y", "x"), coords=_coords(my, mx, "scan frame"), name=name,
                             attrs={"units": "1", "long_name": "4D-STEM virtual dark field"
                                    + (" (inverted)" if invert_moving else "")})
    return fixed_da, moving_da, truth
