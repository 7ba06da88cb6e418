"""Correlative registration of a 4D-STEM image onto an X-ray image of the same particle.

The two modalities see the same particle through different physics: an X-ray
thickness or optical-density map (the *fixed* image) and a 4D-STEM virtual
bright- or dark-field image (the *moving* image), whose contrast is inverted
and non-linear in thickness, on another pixel size and field of view, possibly
mirrored. :func:`register` finds the affine map from fixed to moving pixel
positions in four steps:

1. particle masks (given, or :func:`particle_mask`: the background modelled
   from the image border, candidate foregrounds on either side of it at
   several thresholds, closed, hole-filled, cut at narrow necks to a neighbour
   and scored for plausibility — real
   images have three or more levels: background, film, textured particle,
   diffraction blobs);
2. initial guesses in two families, each over ``n_angles`` rotations and the
   mirror: the moments-based affine ``A = S_m R S_f^-1`` that maps the centroid
   and second moments of one mask onto the other (``S`` the square root of a
   mask's covariance, ``R`` any orthogonal matrix — the moments fix everything
   except a rotation angle and a mirror), and the similarity ``s R`` with ``s``
   the square root of the area ratio (square pixels, little scan distortion:
   for a nearly elliptical outline, where every ``R`` of the first family fits
   the moments by trading rotation against shear, this family keeps the shear
   small);
3. the guesses are scored by Mattes mutual information (MI); the best few of
   each family are refined with a coarse registration (affine for moments
   guesses, similarity for similarity guesses) and the best final MI wins;
4. multi-resolution refinement, similarity then affine, with SimpleITK's
   Mattes MI metric (histogram bins by Sturges' rule on the number of samples:
   a fixed 32 bins over a few thousand pixels biases the optimum towards
   texture only one modality has) sampled inside the (dilated) fixed particle mask, on
   *content shared by both modalities*: with automatic masks each image is
   mapped from background (0) to particle level (1) and clipped, so that
   diffraction contrast (brighter than the particle in dark field) saturates
   while edges, thin patches and holes — thickness contrast both modalities
   see — remain; with both masks given, on the images themselves.

Isolated outlier pixels (dust, hot pixels) and NaN/inf pixels are treated as
missing and left out of the metric. If the final Dice of the masks is low, other
mask candidates are tried; the best is returned with a warning, and
:class:`RegistrationError` is raised only when no pair reaches ``min_dice``.

SimpleITK works in ``(x, y) = (col, row)`` order; every conversion happens in
this module, and the public results are in ``(row, col)`` order.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass, field

import numpy as np
import xarray as xr
from numpy.typing import ArrayLike
from scipy import ndimage

from . import _validate
from .geometry import apply_affine, largest_component

__all__ = [
    "Registration",
    "RegistrationError",
    "RegistrationWarning",
    "dice",
    "mutual_information",
    "metric_profile",
    "particle_mask",
    "register",
    "registration_image",
]

# margin (px) of the metric region around the fixed particle mask. Measured on seeds disjoint from the acceptance
# ones (evaluate.tre_trials real-looking cases 20-39, dynamical-twin dark field): 4 / 8 / 12 / 16 px gave a mean TRE
# of 0.54 / 0.35 / 0.30 / 0.28 px, but with 12 px a self-registration (test_register_image_to_itself_is_identity)
# stops 0.25 px from the identity (a 1 % scale error), so the margin stays at 8 px
_DILATE = 8
_MAX_STEP_PX = 1.0
_DISTINCT_PX = 2.0  # two solutions further apart than this (moving px) are different hypotheses
_RELAX = 0.9  # step shrink factor at each direction change of the gradient
_MIN_STEP = 1e-4  # convergence: step length (scaled parameter units, ~px at the particle rim)
_OPTIONS = ("smooth_px", "mirror", "n_angles", "bins", "sampling", "iterations", "min_dice", "seed", "n_refine",
            "content")
_LEVEL_PCT = 10.0  # percentile of the particle that sets the clipped content level (see _content)
_AREA_RATIO = (0.4, 2.5)  # plausible physical-area ratio of the two masks (scale 0.8-1.25 and shear, with margin)
_MAX_ATTEMPTS = 4  # mask pairs tried before giving up
_FAMILIES = ("moments", "similarity")  # initial-guess families of the orientation search (see _register_once)


class RegistrationError(RuntimeError):
    """A registration did not converge to an acceptable solution."""


class RegistrationWarning(UserWarning):
    """A registration finished, but with a sign of trouble (e.g. iteration cap reached)."""


# --- grids ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Grid:
    """Pixel grid of an image: index → physical is ``origin + spacing * index`` per axis (y, x)."""

    shape: tuple[int, int]
    origin: tuple[float, float] = (0.0, 0.0)
    spacing: tuple[float, float] = (1.0, 1.0)
    physical: bool = False
    coords: dict = field(default_factory=dict, compare=False)

    def to_index(self) -> np.ndarray:
        """``(3, 3)`` homogeneous map from physical (y, x) to index (row, col)."""
        return np.linalg.inv(self.to_physical())

    def to_physical(self) -> np.ndarray:
        """``(3, 3)`` homogeneous map from index (row, col) to physical (y, x)."""
        return np.array([[self.spacing[0], 0.0, self.origin[0]],
                         [0.0, self.spacing[1], self.origin[1]],
                         [0.0, 0.0, 1.0]])

    def matches(self, da: xr.DataArray) -> bool:
        if tuple(da.shape) != self.shape:
            return False
        if not self.physical:
            return True
        return all(c in da.coords and np.allclose(da[c].values, self.coords[c][1], rtol=0, atol=1e-6 * abs(s))
                   for c, s in zip(("y", "x"), self.spacing))


def _grid_of(image: object, name: str) -> _Grid:
    if not isinstance(image, xr.DataArray) or not ("y" in image.coords and "x" in image.coords):
        return _Grid(shape=tuple(np.shape(image)))
    origin, spacing, coords = [], [], {}
    for ax in ("y", "x"):
        v = np.asarray(image[ax].values, dtype=float)
        if v.size < 2:
            raise ValueError(f"{name} must have at least 2 pixels along {ax!r} to define a pixel size")
        d = np.diff(v)
        if not np.allclose(d, d[0], rtol=1e-6, atol=0) or d[0] == 0:
            raise ValueError(f"{name} coordinate {ax!r} must be uniformly spaced, got steps {d.min()}..{d.max()}")
        origin.append(float(v[0]))
        spacing.append(float(d[0]))
        coords[ax] = (ax, v, dict(image[ax].attrs))
    return _Grid(shape=tuple(image.shape), origin=tuple(origin), spacing=tuple(spacing), physical=True,
                 coords=coords)


def _image(image: object, name: str) -> np.ndarray:
    if isinstance(image, xr.DataArray) and image.ndim == 2:
        _validate.dims(image, ("y", "x"), name=name)
    arr = _validate.array(image, name=name, ndim=2, dtype_kind="biuf", any_finite=True).astype(float)
    arr[np.isinf(arr)] = np.nan  # +-inf (e.g. log of 0) is missing data, like NaN
    if min(arr.shape) < 8:
        raise ValueError(f"{name} must be at least 8 x 8 pixels, got shape {arr.shape}")
    finite = arr[np.isfinite(arr)]
    if np.ptp(finite) == 0:
        raise ValueError(f"{name} is constant (all finite values equal {finite[0]!r}); nothing to register")
    return arr


# --- masks and metrics ------------------------------------------------------------------

_MIN_FRACTION, _MAX_FRACTION = 0.02, 0.85  # plausible particle areas, fraction of the field of view
_MIN_CONTRAST = 5.0  # particle-to-background contrast, in pixel-noise sigmas, below which nothing is a particle
_CLOSE_PX = 2  # radius of the closing that mends speckled, broken rims
_BRIDGE_PX = 3  # radius of the opening that cuts a particle from a neighbour joined through a narrow neck


def _filled(arr: np.ndarray) -> np.ndarray:
    """NaN pixels replaced by the median of the image border (the background)."""
    if np.isfinite(arr).all():
        return arr
    fill = np.nanmedian(np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]]))
    return np.where(np.isfinite(arr), arr, fill if np.isfinite(fill) else np.nanmedian(arr))


def _border(a: np.ndarray, width: int = 2) -> np.ndarray:
    b = np.zeros(a.shape, bool)
    b[:width], b[-width:], b[:, :width], b[:, -width:] = True, True, True, True
    return a[b]


def _clean(fg: np.ndarray) -> np.ndarray:
    """Close a foreground, fill its holes and keep the most particle-like connected piece."""
    from skimage.morphology import disk

    fg = ndimage.binary_fill_holes(ndimage.binary_closing(fg, structure=disk(_CLOSE_PX), border_value=0) | fg)
    # a neighbouring particle a few pixels away (blurred edges, film between) can join the particle through a
    # narrow neck; an opening cuts necks narrower than 2 * _BRIDGE_PX, and each opened piece is grown back
    # inside the foreground, so that only the neck is lost, not the outline. The joined and the cut pieces
    # all compete on plausibility (a joined neighbour touches the border or lowers the solidity)
    pieces = [fg]
    lab_o, n_o = ndimage.label(ndimage.binary_opening(fg, structure=disk(_BRIDGE_PX), border_value=0))
    if n_o > 1:
        pieces += [ndimage.binary_dilation(lab_o == i, structure=disk(_BRIDGE_PX + 1)) & fg for i in range(1, n_o + 1)]
    best, best_score = None, -np.inf
    for piece in pieces:
        lab, n = ndimage.label(piece)
        for i in range(1, n + 1):
            comp = lab == i
            s = _mask_score(comp)
            if best is None or s > best_score:
                best, best_score = comp, s
    return fg if best is None else best


def _mask_score(m: np.ndarray) -> float:
    """Plausibility of a particle mask: big, solid (convex-ish) and clear of the image border."""
    from skimage.measure import regionprops

    area = m.mean()
    if not (_MIN_FRACTION <= area <= _MAX_FRACTION):
        return -np.inf
    props = regionprops(m.astype(np.uint8))[0]
    border = _border(m, 1).mean()
    return float(np.log(area) + 4.0 * np.log(props.solidity) - 10.0 * border)


def _mask_candidates(arr: np.ndarray, sigma_px: float) -> list[tuple[float, np.ndarray, str]]:
    """Candidate particle masks of an image, most plausible first: ``(score, mask, how)``.

    Background is modelled from the image border (median and robust spread); the
    particle is whatever differs from it, on either side, at several thresholds
    (two- and three-class Otsu, and half-way between background and particle).
    Each foreground is closed (speckled rims), hole-filled (blobs, holes) and its
    most particle-like connected piece kept.
    """
    from skimage.filters import threshold_multiotsu, threshold_otsu

    sm = _filled(arr)
    sm = ndimage.gaussian_filter(sm, sigma_px, mode="nearest") if sigma_px > 0 else sm
    bg = float(np.median(_border(sm)))
    thresholds = {"otsu": threshold_otsu(sm)}
    try:
        t1, t2 = threshold_multiotsu(sm, classes=3)
        thresholds.update({"otsu3-low": t1, "otsu3-high": t2})
    except ValueError:  # too few distinct values for three classes
        pass
    raw = _filled(arr)
    edge = np.concatenate([np.diff(raw[:2], axis=1).ravel(), np.diff(raw[-2:], axis=1).ravel(),
                           np.diff(raw[:, :2], axis=0).ravel(), np.diff(raw[:, -2:], axis=0).ravel()])
    noise = 1.4826 * np.median(np.abs(edge)) / np.sqrt(2)  # pixel noise of the background (border), robust
    if sigma_px > 0:  # white noise after the Gaussian smoothing
        noise /= 2.0 * np.sqrt(np.pi) * max(sigma_px, 0.5)
    out = []
    for how, t in thresholds.items():
        for side in (1.0, -1.0):
            if side * (t - bg) <= 0:  # the background must lie on the "not particle" side
                continue
            m = _clean(side * (sm - t) > 0)
            # a particle stands out of the noise: its median is > _MIN_CONTRAST pixel-noise sigmas off background
            score = _mask_score(m) if abs(np.median(sm[m]) - bg) > _MIN_CONTRAST * noise else -np.inf
            out.append((score, m, f"{how}, {'bright' if side > 0 else 'dark'} particle"))
    # thresholds a quarter and half-way from background to particle level: the edge of a blurred
    # step is unbiased at half-way; a signal that falls to zero with thickness (dark field) at lower levels
    for score, m, how in list(out):
        if not np.isfinite(score):
            continue
        side = np.sign(np.median(sm[m]) - bg)
        for frac, bonus in ((0.5, 0.05), (0.25, 0.1)):
            mid = m
            for it in range(3):  # iterate: the level is the median of the current mask (a blob-only start grows)
                level = float(np.median(sm[mid]))
                new = _clean(side * (sm - bg - frac * (level - bg)) > 0)
                if new.sum() == mid.sum() or not new.any() or (new & m).sum() <= 0.5 * m.sum():
                    break
                mid = new
                out.append((_mask_score(mid) + bonus, mid, f"{frac:g} of the way to the particle, pass {it + 1} "
                            f"({how})"))
    out.sort(key=lambda t: -t[0])
    return out


def particle_mask(image: ArrayLike, *, sigma_px: float = 1.0, method: str = "auto") -> np.ndarray:
    """Particle mask of an image: whatever differs from the background of the image border.

    Real images have more than two levels: a vacuum or film background, a
    textured particle, and diffraction-contrast blobs or holes. The background
    is modelled from the image border; candidate foregrounds on either side of
    it (two- and three-class Otsu thresholds, then the level half-way between
    background and particle, where a blurred edge is unbiased) are closed
    (speckled rims), hole-filled (blobs, holes) and reduced to their most
    particle-like connected piece (large, solid, clear of the border: a
    neighbour cut by the field of view loses). The most plausible wins.

    Parameters
    ----------
    image : array_like or xarray.DataArray
        2-D image; NaN pixels count as background.
    sigma_px : float, optional
        Gaussian smoothing before thresholding, pixels.
    method : {"auto", "otsu"}
        ``"auto"``: the candidates above. ``"otsu"``: the earlier rule, one
        two-class Otsu threshold with the class covering most of the border as
        background (kept for comparison: on dark-field images with strong
        diffraction blobs it returns the blobs).

    Returns
    -------
    numpy.ndarray
        Boolean mask of the image's shape.

    Raises
    ------
    ValueError
        When no candidate covers a plausible 2-85 % of the image.

    Examples
    --------
    >>> img = np.zeros((20, 30)); img[5:15, 8:20] = -1.0   # a dark particle
    >>> int(particle_mask(img, sigma_px=0).sum())
    120
    """
    arr = _image(image, "image")
    _validate.positive(sigma_px, name="sigma_px", allow_zero=True)
    _validate.choice(method, ("auto", "otsu"), name="method")
    if method == "otsu":
        from skimage.filters import threshold_otsu

        sm = _filled(arr)
        sm = ndimage.gaussian_filter(sm, sigma_px) if sigma_px > 0 else sm
        high = sm > threshold_otsu(sm)
        mask = ~high if _border(high, 1).mean() > 0.5 else high
        if not mask.any():
            raise ValueError("image: no particle found (Otsu threshold left no foreground); pass a mask")
        return ndimage.binary_fill_holes(largest_component(mask))
    cands = _mask_candidates(arr, sigma_px)
    if not cands or not np.isfinite(cands[0][0]):
        raise ValueError("image: no particle found (no threshold gives a particle covering 2-85 % of the image, "
                         "clear of the border); pass a mask (fixed_mask=/moving_mask=) or a larger field of view")
    return cands[0][1]


def registration_image(image: ArrayLike, mask: ArrayLike, *, long_name: str | None = None
                       ) -> tuple[np.ndarray | xr.DataArray, np.ndarray]:
    """An image and mask ready for :func:`register`: one solid particle on a flat background.

    Maps made by the analysis (a Li map, a strain trace) have NaN gaps, stray
    pixels outside the particle and noise around the edge; mutual information
    is computed over the whole overlap, so those would steer the fit. This step
    keeps the largest connected piece of `mask` with its holes filled, puts the
    median of the particle into NaN gaps inside it, and sets everything
    outside to one constant below the particle's 1–99 % range.

    Parameters
    ----------
    image : array_like or xarray.DataArray
        2-D map on ``("y", "x")`` (e.g. ``X`` from :func:`chemomech.xanes.map_lithium`
        or ``exx + eyy`` from :func:`chemomech.strain.measure_strain`).
    mask : array_like of bool
        Valid pixels of `image`, same shape.
    long_name : str, optional
        ``long_name`` attribute of a DataArray result.

    Returns
    -------
    image : numpy.ndarray or xarray.DataArray
        The filled image, same type and coordinates as `image`.
    mask : numpy.ndarray
        The cleaned particle mask (bool), to pass as ``fixed_mask``/``moving_mask``.

    Examples
    --------
    >>> img = np.full((10, 12), np.nan); img[2:8, 2:10] = np.linspace(0.0, 1.0, 8); img[4, 5] = np.nan
    >>> inside = np.zeros((10, 12), bool); inside[2:8, 2:10] = True; inside[0, 0] = True  # a stray pixel
    >>> out, m = registration_image(img, inside)
    >>> int(m.sum()), bool(np.isfinite(out).all()), bool(out[0, 0] < out[2, 2])
    (48, True, True)
    """
    arr = _image(image, "image")
    m = _validate.mask(mask, name="mask", shape=arr.shape)
    m = ndimage.binary_fill_holes(largest_component(m))
    inside = arr[m & np.isfinite(arr)]
    if inside.size == 0:
        raise ValueError("image has no finite values inside mask; pass the map's own mask")
    lo, hi = np.percentile(inside, [1, 99])
    filled = np.where(m, np.where(np.isfinite(arr), arr, np.median(inside)), lo - 0.5 * (hi - lo))
    if isinstance(image, xr.DataArray):
        attrs = {"units": image.attrs.get("units", "1"), "long_name": long_name or image.attrs.get("long_name", "")}
        return image.copy(data=filled).assign_attrs(attrs), m
    return filled, m


def dice(a: ArrayLike, b: ArrayLike) -> float:
    """Dice coefficient ``2 |a & b| / (|a| + |b|)`` of two boolean masks of one shape.

    Examples
    --------
    >>> dice(np.array([1, 1, 0], bool), np.array([1, 0, 0], bool))
    0.6666666666666666
    """
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"masks must have the same shape, got {a.shape} and {b.shape}")
    total = a.sum() + b.sum()
    if total == 0:
        raise ValueError("both masks are empty; Dice is undefined")
    return float(2 * np.logical_and(a, b).sum() / total)


def mutual_information(a: ArrayLike, b: ArrayLike, *, mask: ArrayLike | None = None, bins: int = 32) -> float:
    """Mutual information (nats) of the joint intensity histogram of two images.

    ``MI = sum p(a, b) log(p(a, b) / (p(a) p(b)))`` over pixels where both are
    finite (and `mask` is set). It is high whenever one image predicts the
    other, whatever the (possibly inverted, non-linear) relation.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> a = rng.random((40, 50))
    >>> mutual_information(a, -a ** 3) > 5 * mutual_information(a, rng.random((40, 50)))
    True
    """
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"images must have the same shape, got {a.shape} and {b.shape}")
    ok = np.isfinite(a) & np.isfinite(b)
    if mask is not None:
        ok &= np.asarray(mask, dtype=bool)
    if ok.sum() < 2:
        raise ValueError("fewer than 2 pixels are finite in both images (and in mask)")
    h, _, _ = np.histogram2d(a[ok], b[ok], bins=bins)
    p = h / h.sum()
    pa, pb = p.sum(1, keepdims=True), p.sum(0, keepdims=True)
    nz = p > 0
    return float(np.sum(p[nz] * np.log(p[nz] / (pa @ pb)[nz])))


def _overlap_mi(a: np.ndarray, b: np.ndarray, mask: np.ndarray, bins: int) -> float:
    """Mutual information over the overlap, NaN when the images do not overlap."""
    if np.count_nonzero(mask & np.isfinite(a) & np.isfinite(b)) < 2:
        return float("nan")
    return mutual_information(a, b, mask=mask, bins=bins)


# --- the result -------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Registration:
    """Result of :func:`register`: the affine map from fixed to moving positions.

    Attributes
    ----------
    matrix : numpy.ndarray
        ``(3, 3)`` homogeneous affine from fixed pixel indices ``(row, col, 1)``
        to moving pixel indices.
    metrics : dict
        ``mutual_information`` (nats, numpy histogram of the final overlap),
        ``mattes_mi`` (SimpleITK's Mattes MI at full resolution, nats),
        ``mi_margin`` (Mattes MI of the winner minus that of the best refined
        rival solution more than 2 px away; small = ambiguous, NaN = no rival),
        ``dice`` (particle masks), ``bins`` (histogram bins of the metric), ``iterations``, ``stop_condition``,
        ``mirrored`` and ``rotation_deg`` (:meth:`frame_angle_deg`).
    candidates : xarray.Dataset or None
        The initialisation search: ``family`` ("moments" or "similarity"),
        ``angle_rad``, ``mirror`` and MI per candidate; ``attrs["chosen"]`` is the
        candidate whose refinement won.
    fixed_mask, moving_mask : numpy.ndarray or None
        The particle masks used.
    """

    matrix: np.ndarray
    fixed_grid: _Grid
    moving_grid: _Grid
    metrics: dict = field(default_factory=dict)
    candidates: xr.Dataset | None = None
    fixed_mask: np.ndarray | None = None
    moving_mask: np.ndarray | None = None

    @classmethod
    def from_matrix(cls, matrix: ArrayLike, fixed: object, moving: object) -> Registration:
        """A Registration from a known ``(3, 3)`` fixed → moving pixel-index affine (e.g. ground truth).

        `fixed` and `moving` are the two images (or arrays of their shapes), whose
        grids define the physical coordinates.

        Examples
        --------
        >>> r = Registration.from_matrix(np.eye(3), np.zeros((4, 5)), np.zeros((4, 5)))
        >>> r.map_points([[1.0, 2.0]]).tolist()
        [[1.0, 2.0]]
        """
        m = _validate.array(matrix, name="matrix", shape=(3, 3), finite=True).astype(float)
        if abs(np.linalg.det(m[:2, :2])) < 1e-12 or not np.allclose(m[2], [0, 0, 1]):
            raise ValueError("matrix must be an invertible homogeneous affine with last row (0, 0, 1)")
        return cls(matrix=m, fixed_grid=_grid_of(fixed, "fixed"), moving_grid=_grid_of(moving, "moving"))

    @property
    def score(self) -> float:
        """Mutual information (nats) of the final overlap; higher is better."""
        return float(self.metrics.get("mutual_information", np.nan))

    @property
    def physical_matrix(self) -> np.ndarray:
        """``(3, 3)`` affine from fixed physical ``(y, x)`` to moving physical ``(y, x)``."""
        return self.moving_grid.to_physical() @ self.matrix @ self.fixed_grid.to_index()

    def frame_rotation(self) -> np.ndarray:
        """Orthogonal ``(2, 2)`` matrix, ``(y, x)`` order, taking fixed-frame directions to moving-frame ones.

        The polar factor of the physical linear map: the rotation (and, with
        ``det = -1``, the mirror) between the two frames, without the pixel-size
        and shear distortion. Tensors (strain) change frame with it.
        """
        u, _, vt = np.linalg.svd(self.physical_matrix[:2, :2])
        return u @ vt

    def frame_angle_deg(self) -> float:
        """Rotation of the moving frame relative to the fixed frame, degrees (positive: x towards y).

        For a mirrored pair, the angle left after undoing a flip of the moving rows,
        i.e. moving = flip(rotate(fixed)); :meth:`frame_rotation` holds the full matrix.
        """
        q = self.frame_rotation()
        rot = q.T @ np.diag([-1.0, 1.0]) if np.linalg.det(q) < 0 else q.T
        return float(np.degrees(np.arctan2(rot[0, 1], rot[0, 0])))

    def map_points(self, points: ArrayLike) -> np.ndarray:
        """Map ``(N, 2)`` ``(row, col)`` positions in `fixed` to positions in `moving`.

        Pixel indices when the images were numpy arrays; physical ``(y, x)``
        coordinates when they were DataArrays with coordinates.

        Examples
        --------
        >>> r = Registration.from_matrix([[1, 0, 2.5], [0, -1, 9], [0, 0, 1]], np.zeros((8, 10)), np.zeros((9, 12)))
        >>> r.map_points([[1.0, 2.0]]).tolist()
        [[3.5, 7.0]]
        """
        p = _validate.array(points, name="points", shape=(None, 2), finite=True).astype(float)
        if self.fixed_grid.physical:
            return apply_affine(self.physical_matrix, p)
        return apply_affine(self.matrix, p)

    def map_indices(self, points: ArrayLike) -> np.ndarray:
        """Map ``(N, 2)`` fixed pixel indices ``(row, col)`` to moving pixel indices, whatever the input type.

        Examples
        --------
        >>> r = Registration.from_matrix([[2, 0, 1], [0, 1, 0], [0, 0, 1]], np.zeros((8, 10)), np.zeros((9, 12)))
        >>> r.map_indices([[1.0, 2.0]]).tolist()
        [[3.0, 2.0]]
        """
        p = _validate.array(points, name="points", shape=(None, 2), finite=True).astype(float)
        return apply_affine(self.matrix, p)

    def warp(self, image: ArrayLike | xr.DataArray) -> np.ndarray | xr.DataArray:
        """Resample an image on `moving`'s grid onto `fixed`'s grid (bilinear, NaN outside).

        NaN pixels spread to their interpolation neighbours (they never become
        numbers). Boolean images come back boolean (interpolated value >= 0.5).

        Parameters
        ----------
        image : array_like or xarray.DataArray
            2-D, the shape (and, for DataArrays, the coordinates) of `moving`.

        Returns
        -------
        numpy.ndarray or xarray.DataArray
            On `fixed`'s grid; a DataArray (with `fixed`'s coordinates and
            `image`'s attrs) when `image` is one.

        Examples
        --------
        >>> r = Registration.from_matrix([[1, 0, 1], [0, 1, 0], [0, 0, 1]], np.zeros((3, 4)), np.zeros((3, 4)))
        >>> r.warp(np.arange(12.0).reshape(3, 4))[:, 0].tolist()
        [4.0, 8.0, nan]
        """
        is_da = isinstance(image, xr.DataArray)
        if is_da:
            _validate.dims(image, ("y", "x"), name="image")
            if not self.moving_grid.matches(image):
                raise ValueError("image must be on the moving image's grid (same shape and y/x coordinates), "
                                 f"got shape {image.shape}")
        arr = np.asarray(image.values if is_da else image)
        if arr.shape != self.moving_grid.shape:
            raise ValueError(f"image must have the moving image's shape {self.moving_grid.shape}, got {arr.shape}")
        is_bool = arr.dtype == bool
        arr = _validate.array(arr, name="image", ndim=2, dtype_kind="biuf").astype(float)
        ny, nx = self.fixed_grid.shape
        rr, cc = np.meshgrid(np.arange(ny, dtype=float), np.arange(nx, dtype=float), indexing="ij")
        m = self.matrix
        r = m[0, 0] * rr + m[0, 1] * cc + m[0, 2]
        c = m[1, 0] * rr + m[1, 1] * cc + m[1, 2]
        out = ndimage.map_coordinates(arr, [r, c], order=1, mode="constant", cval=np.nan)
        # be strict at the edge: SciPy's 'constant' mode (1.17, pinned) already gives cval beyond the last
        # row/column, and this guard keeps warp strict should the interpolation ever clamp there
        outside = (r < -1e-9) | (r > arr.shape[0] - 1 + 1e-9) | (c < -1e-9) | (c > arr.shape[1] - 1 + 1e-9)
        out[outside] = np.nan
        if is_bool:
            out = np.nan_to_num(out, nan=0.0) >= 0.5
        if not is_da:
            return out
        coords = self.fixed_grid.coords if self.fixed_grid.physical else {}
        return xr.DataArray(out, dims=("y", "x"), coords=coords, name=image.name, attrs=dict(image.attrs))


# --- SimpleITK plumbing -----------------------------------------------------------------

_SWAP = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # (row, col) <-> (x, y)


def _to_sitk(arr: np.ndarray):
    import SimpleITK as sitk

    return sitk.GetImageFromArray(np.ascontiguousarray(arr, dtype=np.float32))


def _sitk_affine(h_rc: np.ndarray, center_rc: np.ndarray):
    """SimpleITK AffineTransform (x, y) from a (row, col) homogeneous affine."""
    import SimpleITK as sitk

    h = _SWAP @ h_rc @ _SWAP
    c = center_rc[::-1]
    tx = sitk.AffineTransform(2)
    tx.SetCenter(tuple(float(v) for v in c))
    tx.SetMatrix(tuple(float(v) for v in h[:2, :2].ravel()))
    tx.SetTranslation(tuple(float(v) for v in (h[:2, :2] @ c + h[:2, 2] - c)))
    return tx


def _homogeneous_rc(tx) -> np.ndarray:
    """(row, col) homogeneous affine of a SimpleITK matrix-offset transform (x, y)."""
    m = np.asarray(tx.GetMatrix(), dtype=float).reshape(2, 2)
    c = np.asarray(tx.GetCenter(), dtype=float)
    t = np.asarray(tx.GetTranslation(), dtype=float)
    h = np.eye(3)
    h[:2, :2], h[:2, 2] = m, c + t - m @ c
    return _SWAP @ h @ _SWAP


_SPECK_SIGMA = 8.0  # an isolated pixel this many robust sigmas off its 3x3 median is a speck (dust, hot pixel)


def _despeckle(arr: np.ndarray) -> np.ndarray:
    """Isolated outlier pixels (dust, hot or dead pixels) set to NaN, i.e. treated as missing data."""
    filled = _fill_nearest(arr)
    resid = filled - ndimage.median_filter(filled, size=3, mode="nearest")
    ok = np.isfinite(arr)
    mad = np.median(np.abs(resid[ok] - np.median(resid[ok])))
    if mad == 0:
        return arr
    out = arr.copy()
    out[np.abs(resid) > _SPECK_SIGMA * 1.4826 * mad] = np.nan
    return out


def _fill_nearest(arr: np.ndarray) -> np.ndarray:
    """NaN pixels set to the nearest finite pixel's value (they are also left out of the metric)."""
    bad = ~np.isfinite(arr)
    if not bad.any():
        return arr
    idx = ndimage.distance_transform_edt(bad, return_distances=False, return_indices=True)
    return arr[tuple(idx)]


def _normalise(arr: np.ndarray, mask: np.ndarray, smooth_px: float) -> np.ndarray:
    """Smoothed, robustly rescaled image (1st-99th percentile to 0-1); NaN pixels filled from their neighbours."""
    arr = _fill_nearest(arr)
    if smooth_px > 0:
        arr = ndimage.gaussian_filter(arr, smooth_px, mode="nearest")
    lo, hi = np.percentile(arr, [1, 99])
    return (arr - lo) / max(hi - lo, 1e-12)


def _content(arr: np.ndarray, mask: np.ndarray, smooth_px: float, level_pct: float) -> np.ndarray:
    """Background-to-particle map shared by both modalities: 0 background, 1 particle, clipped.

    ``(image - background) / (particle level - background)`` with the background
    the median outside `mask` and the particle level a low percentile inside it,
    clipped to [0, 1]: what is *more* particle than the particle level — the
    diffraction blobs and bend contours of a dark-field image, the thick middle
    of an X-ray map — saturates, while what lies between background and particle
    in both modalities — soft edges, thin patches and holes — stays.
    """
    bg = np.nanmedian(arr[~mask]) if (~mask).any() else np.nanmin(arr)
    arr = _fill_nearest(arr)
    inside = ndimage.gaussian_filter(arr, 1.0, mode="nearest")[mask]  # the level from a denoised image
    med = np.median(inside)
    side = 1.0 if med >= bg else -1.0
    level = np.percentile(side * inside, level_pct) * side
    span = level - bg if abs(level - bg) > 1e-12 else (med - bg or 1.0)
    # clip first, then smooth: a strong blob at the rim must not bleed outwards through the smoothing
    out = np.clip((arr - bg) / span, -0.2, 1.0)
    return ndimage.gaussian_filter(out, smooth_px, mode="nearest") if smooth_px > 0 else out


def _method(fixed_mask_img, *, bins, sampling, seed, iterations, shrink, sigmas, moving_mask_img=None):
    import SimpleITK as sitk

    r = sitk.ImageRegistrationMethod()
    r.SetMetricAsMattesMutualInformation(numberOfHistogramBins=bins)
    if sampling < 1.0:
        r.SetMetricSamplingStrategy(r.RANDOM)
        r.SetMetricSamplingPercentage(sampling, seed + 1)  # SimpleITK: seed 0 means "wall clock"
    else:
        r.SetMetricSamplingStrategy(r.NONE)
    r.SetMetricFixedMask(fixed_mask_img)
    if moving_mask_img is not None:
        r.SetMetricMovingMask(moving_mask_img)
    r.SetInterpolator(sitk.sitkLinear)
    # the first step moves no point by more than _MAX_STEP_PX; steps then shrink by relaxation
    r.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=_MIN_STEP, numberOfIterations=iterations,
                                               relaxationFactor=_RELAX, gradientMagnitudeTolerance=1e-8,
                                               estimateLearningRate=r.Once,
                                               maximumStepSizeInPhysicalUnits=_MAX_STEP_PX)
    r.SetOptimizerScalesFromPhysicalShift()
    r.SetShrinkFactorsPerLevel(list(shrink))
    r.SetSmoothingSigmasPerLevel(list(sigmas))
    r.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    return r


def _sturges_bins(n_samples: int) -> int:
    """Histogram bins for ``n_samples`` metric samples: Sturges' rule ``ceil(log2 n) + 1``, at least 8.

    MI estimated from a joint histogram is biased upwards by roughly
    ``(bins - 1)^2 / (2 n)`` nats for independent images, and the bias depends on the
    alignment: with many sparsely filled cells the optimum moves to wherever
    texture one modality does not share happens to fall into the same cells.
    Sturges' rule sizes the histogram to the sample count (13-14 bins for the
    4000-7000 pixels of a particle and its margin) instead of a fixed number.
    Measured on seeds disjoint from the acceptance ones (real-looking cases 20-29
    of :func:`chemomech.evaluate.tre_trials`, dynamical-twin dark field): 32 / 24 /
    16 / 12 fixed bins gave a mean TRE of 0.45 / 0.41 / 0.36 / 0.33 px.

    Examples
    --------
    >>> _sturges_bins(5000)
    14
    """
    return max(8, int(np.ceil(np.log2(max(n_samples, 2)))) + 1)


def _moments(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centroid (row, col) and covariance square root of a mask."""
    pts = np.argwhere(mask).astype(float)
    c = pts.mean(axis=0)
    w, v = np.linalg.eigh(np.cov(pts.T))
    return c, (v * np.sqrt(w)) @ v.T


def _rot_rc(angle: float, mirror: bool) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    r = np.array([[c, s], [-s, c]])
    return r @ np.diag([-1.0, 1.0]) if mirror else r


def _single_itk_thread(func):
    """Run `func` with SimpleITK on one thread, then restore the previous setting.

    With several threads ITK's metric and resampling filters sum in a varying
    order, and the optimiser amplifies those last-bit differences: the same
    call gave target registration errors from 0.25 to 0.35 px. One thread makes
    the result reproducible (and is no slower on a busy two-core machine).
    """

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        import SimpleITK as sitk

        before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
        try:
            return func(*args, **kwargs)
        finally:
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before)

    return wrapper


def _mask_options(arr: np.ndarray, mask, name: str) -> list[tuple[str, np.ndarray]]:
    """The user's mask, or the automatic candidates (how, mask) of an image; raise when there is none."""
    if mask is not None:
        return [("given", _validate.mask(mask, name=f"{name}_mask", shape=arr.shape, min_count=10))]
    found = [(how, m) for sc, m, how in _mask_candidates(arr, 1.0) if np.isfinite(sc)]
    if not found:
        raise ValueError(f"{name}: no particle found automatically (no threshold gives a solid particle covering "
                         f"2-85 % of the image, clear of the border); pass {name}_mask=")
    return found


@_single_itk_thread
def register(fixed: ArrayLike | xr.DataArray, moving: ArrayLike | xr.DataArray, *,
             fixed_mask: ArrayLike | None = None, moving_mask: ArrayLike | None = None,
             transform: str = "affine", **options) -> Registration:
    """Register a 4D-STEM image (moving) onto an X-ray image (fixed) of the same particle.

    Parameters
    ----------
    fixed, moving : array_like or xarray.DataArray
        2-D images on ``("y", "x")``; contrast may be inverted or non-linearly
        related, shapes and pixel sizes may differ, one may be mirrored. With
        DataArrays carrying ``y``/``x`` coordinates, :meth:`Registration.map_points`
        works in those physical coordinates.
    fixed_mask, moving_mask : array_like of bool, optional
        Particle masks; default :func:`particle_mask` of each image.
    transform : {"affine", "similarity"}
        Final transform model.
    **options
        ``mirror`` ("auto", True or False; default "auto": search both),
        ``n_angles`` (rotation steps of the initial search, default 24),
        ``n_refine`` (candidates refined, default 4: the best 2 of each initial-guess family),
        ``bins`` (Mattes histogram bins, default "auto": Sturges' rule on the number of metric samples,
        13-14 for a particle of ~60 px),
        ``sampling`` (fraction of the masked fixed pixels sampled by the metric, default 1.0: all),
        ``iterations`` (per level, default 400), ``seed`` (metric sampling seed,
        default 0), ``smooth_px`` (Gaussian pre-smoothing of both images, default
        1.0), ``min_dice`` (default 0.85), ``content`` ("auto", "clipped" or
        "intensity": what the metric compares; "auto" = "intensity" when both
        masks are given — prepared maps whose interiors are meant to be
        compared, e.g. from :func:`registration_image` — else "clipped").

    Returns
    -------
    Registration
        With ``matrix``, ``metrics`` (MI, Dice, iterations, stop condition),
        the ``candidates`` of the search and the masks.

    Raises
    ------
    ValueError, TypeError
        Images that are not 2-D, constant or all-NaN; empty or non-boolean
        masks; unknown options.
    RegistrationError
        When no tried mask pair reaches a Dice of ``min_dice`` (the message
        lists the attempts and says what to pass), or SimpleITK fails for all
        of them; never a third-party exception.

    Warns
    -----
    RegistrationWarning
        When the first masks failed and an alternative was used; when the
        final optimisation stopped at the iteration cap; when another refined
        orientation scored within 1 % (ambiguous). The warning gives the metrics.

    Notes
    -----
    Moments initialisation: if the moving mask is an affine image of the
    fixed one, ``p_m = A (p_f - c_f) + c_m`` with ``A Σ_f A^T = Σ_m``, so
    ``A = Σ_m^{1/2} R Σ_f^{-1/2}`` with ``R`` orthogonal; ``det R = -1`` is a
    mirror. The search scans ``R`` (and, for the similarity family ``s R``, the
    same angles) and keeps the maximum Mattes MI [1]_.

    Failure policy: a wrong solution that misplaces the particle shows as a
    low Dice and raises; a run that stops at the iteration cap warns. A
    wrong *rotation* of a nearly symmetric particle can keep a high Dice —
    compare ``metrics["mutual_information"]`` of alternatives (e.g.
    ``mirror=True`` vs ``False``) and check the overlays.

    References
    ----------
    .. [1] D. Mattes et al., "PET-CT image registration in the chest using
       free-form deformations", IEEE Trans. Med. Imaging 22, 120 (2003),
       doi:10.1109/TMI.2003.809072.

    Examples
    --------
    >>> from chemomech import twin
    >>> p = twin.make_particle("demo", seed=7)
    >>> fixed, moving, truth = twin.pair.simulate_pair(p, rotation_rad=0.2, scale=1.1, mirror=True, rng=1)
    >>> r = register(fixed.values, moving.values)
    >>> pts = np.argwhere(r.fixed_mask).astype(float)
    >>> bool(truth.target_registration_error(r.map_points(pts), pts).mean() < 1.0), r.metrics["mirrored"]
    (True, True)
    """
    _validate.no_unknown_options(options, _OPTIONS, func="register")
    _validate.choice(transform, ("affine", "similarity"), name="transform")
    mirror = options.get("mirror", "auto")
    _validate.choice(mirror, ("auto", True, False), name="mirror")
    n_angles = int(options.get("n_angles", 24))
    n_refine = int(options.get("n_refine", 4))
    bins = options.get("bins", "auto")
    if isinstance(bins, str):
        _validate.choice(bins, ("auto",), name="bins")
        bins = None  # Sturges' rule on the number of metric samples (see _sturges_bins)
    else:
        bins = int(bins)
    sampling = float(options.get("sampling", 1.0))
    iterations = int(options.get("iterations", 400))
    seed = int(options.get("seed", 0))
    smooth_px = _validate.positive(options.get("smooth_px", 1.0), name="smooth_px", allow_zero=True)
    min_dice = float(options.get("min_dice", 0.85))
    if not (0 < sampling <= 1):
        raise ValueError(f"sampling must be in (0, 1], got {sampling}")
    if n_angles < 1 or n_refine < 1 or (bins is not None and bins < 4) or iterations < 1:
        raise ValueError("n_angles, n_refine and iterations must be >= 1 and bins >= 4 (or \"auto\")")

    content = options.get("content", "auto")
    _validate.choice(content, ("auto", "clipped", "intensity"), name="content")

    f_arr, m_arr = _despeckle(_image(fixed, "fixed")), _despeckle(_image(moving, "moving"))
    f_grid, m_grid = _grid_of(fixed, "fixed"), _grid_of(moving, "moving")
    f_masks = _mask_options(f_arr, fixed_mask, "fixed")
    m_masks = _mask_options(m_arr, moving_mask, "moving")
    if content == "auto":
        content = "intensity" if fixed_mask is not None and moving_mask is not None else "clipped"
    pairs = _mask_pairs(f_masks, m_masks, f_grid, m_grid)
    args = dict(transform=transform, mirror=mirror, n_angles=n_angles, n_refine=n_refine, bins=bins,
                sampling=sampling, iterations=iterations, seed=seed, smooth_px=smooth_px, content=content)
    attempts = []
    for (fh, fm), (mh, mm) in pairs[:_MAX_ATTEMPTS]:
        try:
            reg = _register_once(f_arr, m_arr, fm, mm, f_grid, m_grid, **args)
        except RuntimeError as err:  # SimpleITK reports optimiser/metric failures as RuntimeError
            attempts.append((f"masks ({fh} | {mh})", None, str(err).strip().splitlines()[-1][:200]))
            continue
        attempts.append((f"masks ({fh} | {mh})", reg, ""))
        if reg.metrics["dice"] >= min_dice:
            break
    done = [a for a in attempts if a[1] is not None]
    if not done:
        raise RegistrationError("registration failed: SimpleITK could not evaluate the metric for any mask pair ("
                                + "; ".join(f"{w}: {e}" for w, _, e in attempts)
                                + "). Pass fixed_mask=/moving_mask= that overlap the particles.")
    how, reg, _ = max(done, key=lambda t: t[1].metrics["dice"])
    metrics = reg.metrics
    summary = ", ".join(f"{k}={v:.3f}" for k, v in metrics.items() if isinstance(v, float))
    tried = "; ".join(f"{w}: Dice {r.metrics['dice']:.3f}" if r is not None else f"{w}: {e}" for w, r, e in attempts)
    if metrics["dice"] < min_dice:
        raise RegistrationError(
            f"registration failed: best Dice of the particle masks {metrics['dice']:.3f} < min_dice {min_dice} "
            f"after {len(attempts)} mask pair(s) [{tried}] ({summary}; optimiser: {metrics['stop_condition']}). "
            "Pass fixed_mask=/moving_mask= (e.g. from particle_mask with another sigma_px, or drawn by hand), "
            "or fix mirror=True/False.")
    if len(attempts) > 1:
        warnings.warn(f"register: the first particle masks gave a poor fit; used {how} instead [{tried}] "
                      f"({summary}). Check the overlays.", RegistrationWarning, stacklevel=2)
    if metrics["iterations"] >= iterations:
        warnings.warn(f"register: the optimiser hit the iteration cap ({iterations}); result not converged "
                      f"({summary}). Increase iterations= or check the images.", RegistrationWarning, stacklevel=2)
    if np.isfinite(metrics["mi_margin"]) and metrics["mi_margin"] < 0.01 * metrics["mattes_mi"]:
        warnings.warn(f"register: ambiguous orientation — another refined solution scored within 1 % "
                      f"(mi_margin {metrics['mi_margin']:.4f}; {summary}); compare mirror=True/False and check "
                      "the overlays.", RegistrationWarning, stacklevel=2)
    return reg


def _mask_pairs(f_masks, m_masks, f_grid: _Grid, m_grid: _Grid) -> list:
    """Mask pairs to try, in order: most plausible first, implausible physical-area ratios last."""
    pairs = []
    for i, fc in enumerate(f_masks[:3]):
        for j, mc in enumerate(m_masks[:3]):
            rank = i + j
            if f_grid.physical and m_grid.physical:
                af = fc[1].sum() * abs(f_grid.spacing[0] * f_grid.spacing[1])
                am = mc[1].sum() * abs(m_grid.spacing[0] * m_grid.spacing[1])
                if not _AREA_RATIO[0] <= af / am <= _AREA_RATIO[1]:
                    rank += 10
            pairs.append((rank, i, j, fc, mc))
    pairs.sort(key=lambda t: t[:3])
    return [(fc, mc) for *_, fc, mc in pairs]


def _register_once(f_arr, m_arr, fm, mm, f_grid, m_grid, *, transform, mirror, n_angles, n_refine, bins,
                   sampling, iterations, seed, smooth_px, content) -> Registration:
    """One registration with given masks: moments start, rotation/mirror search, refinement."""
    import SimpleITK as sitk

    if content == "clipped":
        f_img = _to_sitk(_content(f_arr, fm, smooth_px, _LEVEL_PCT))
        m_img = _to_sitk(_content(m_arr, mm, smooth_px, _LEVEL_PCT))
    else:
        f_img = _to_sitk(_normalise(f_arr, fm, smooth_px))
        m_img = _to_sitk(_normalise(m_arr, mm, smooth_px))
    metric_mask = sitk.GetImageFromArray(
        (ndimage.binary_dilation(fm, iterations=_DILATE) & np.isfinite(f_arr)).astype(np.uint8))
    moving_valid = sitk.GetImageFromArray(np.isfinite(m_arr).astype(np.uint8)) if not np.isfinite(m_arr).all() else None
    if bins is None:
        bins = _sturges_bins(int(np.count_nonzero(sitk.GetArrayViewFromImage(metric_mask))))

    # 1. initial guesses: two families, each scanned over rotation and mirror. "moments": the affine
    #    S_m R S_f^-1 that matches the second moments of the masks exactly for the right R, but for a
    #    nearly elliptical particle every R matches them (rotation and shear trade freely); "similarity":
    #    isotropic scale (the area ratio) times R, the form of a scan with square pixels and little
    #    distortion, which the outline of an ellipse pins up to 180 deg
    cf, sf = _moments(fm)
    cm, sm = _moments(mm)
    sf_inv = np.linalg.inv(sf)
    iso = np.sqrt(np.linalg.det(sm) / np.linalg.det(sf))
    mirrors = (False, True) if mirror == "auto" else (bool(mirror),)
    angles = np.arange(n_angles) * 2 * np.pi / n_angles
    cand, h_cand = [], []
    probe = _method(metric_mask, bins=bins, sampling=1.0, seed=seed, iterations=1, shrink=(1,), sigmas=(0,),
                    moving_mask_img=moving_valid)
    for fam in _FAMILIES:
        for mir in mirrors:
            for ang in angles:
                h = np.eye(3)
                h[:2, :2] = sm @ _rot_rc(ang, mir) @ sf_inv if fam == "moments" else iso * _rot_rc(ang, mir)
                h[:2, 2] = cm - h[:2, :2] @ cf
                probe.SetInitialTransform(_sitk_affine(h, cf))
                cand.append((fam, ang, mir, -probe.MetricEvaluate(f_img, m_img)))
                h_cand.append(h)
    cand_mi = np.array([c[3] for c in cand])
    cand_fam = np.array([c[0] for c in cand])

    # 2. refinement stages; a rotation error of a moments guess is not a similarity once conjugated
    #    by the anisotropic moments, so its first, coarse stage is affine; a similarity guess stays one
    def stage(h0, kind, shrink, sigmas, iters):
        r = _method(metric_mask, bins=bins, sampling=sampling, seed=seed, iterations=iters,
                    shrink=shrink, sigmas=sigmas, moving_mask_img=moving_valid)
        if kind == "affine":
            tx = _sitk_affine(h0, cf)
            r.SetInitialTransform(tx, inPlace=True)
            r.Execute(f_img, m_img)
            return _homogeneous_rc(tx), r
        r.SetMovingInitialTransform(_sitk_affine(h0, cf))
        s = sitk.Similarity2DTransform()
        s.SetCenter(tuple(float(v) for v in cf[::-1]))
        r.SetInitialTransform(s, inPlace=True)
        r.Execute(f_img, m_img)
        return h0 @ _homogeneous_rc(s), r  # moving-initial transform acts after the optimised one

    def refine(h0):
        h, r = stage(h0, "similarity", (2, 1), (1.0, 0.0), iterations)
        if transform == "affine":
            h, r = stage(h, "affine", (2, 1), (1.0, 0.0), iterations)
        probe.SetInitialTransform(_sitk_affine(h, cf))
        return -probe.MetricEvaluate(f_img, m_img), h, r

    # 3. multi-resolution similarity, then affine, from the best few of each family; keep the best MI
    order = np.argsort(cand_mi)[::-1]
    per_family = max(1, n_refine // len(_FAMILIES))
    refined = []
    for fam in _FAMILIES:
        for i in order[cand_fam[order] == fam][:per_family]:
            h, _ = stage(h_cand[i], "affine" if fam == "moments" else "similarity", (2,), (1.0,), 100)
            refined.append((*refine(h), i))
    best_mi, h, r, best_i = max(refined, key=lambda t: t[0])
    # margin over the best *different* solution (> _DISTINCT_PX apart somewhere on the particle)
    pts = np.argwhere(fm).astype(float)
    rivals = [mi for mi, h2, _, _ in refined
              if np.abs(apply_affine(h2, pts) - apply_affine(h, pts)).max() > _DISTINCT_PX]
    margin = float(best_mi - max(rivals)) if rivals else float("nan")
    stop = r.GetOptimizerStopConditionDescription()
    n_iter = int(r.GetOptimizerIteration())

    reg = Registration(matrix=h, fixed_grid=f_grid, moving_grid=m_grid, fixed_mask=fm, moving_mask=mm)
    warped = reg.warp(m_arr)
    d = dice(fm, reg.warp(mm))
    metrics = {
        "mutual_information": _overlap_mi(f_arr, warped, ndimage.binary_dilation(fm, iterations=4), bins),
        "mattes_mi": float(best_mi),
        "mi_margin": margin,
        "dice": d,
        "bins": int(bins),
        "iterations": n_iter,
        "stop_condition": stop,
        "mirrored": bool(np.linalg.det(reg.frame_rotation()) < 0),
        "rotation_deg": reg.frame_angle_deg(),
    }
    candidates = xr.Dataset(
        {"family": ("candidate", cand_fam, {"long_name": "initial-guess family (moments or similarity)"}),
         "angle_rad": ("candidate", np.array([c[1] for c in cand]), {"units": "rad", "long_name": "search angle"}),
         "mirror": ("candidate", np.array([c[2] for c in cand]), {"units": "1", "long_name": "mirrored"}),
         "mattes_mi": ("candidate", cand_mi, {"units": "nats", "long_name": "Mattes MI of the initial guess"})},
        attrs={"chosen": int(best_i)})
    return Registration(matrix=h, fixed_grid=f_grid, moving_grid=m_grid, metrics=metrics, candidates=candidates,
                        fixed_mask=fm, moving_mask=mm)


def metric_profile(fixed: ArrayLike, moving: ArrayLike, registration: Registration, *,
                   shifts_px: ArrayLike, axis: str = "x", bins: int = 32) -> xr.Dataset:
    """Similarity of `fixed` and a shifted warp of `moving`, for a 1-D scan of misalignments.

    The moving image is warped with `registration`, then shifted by each of
    `shifts_px` (fixed pixels) along `axis`; inside the dilated fixed mask the
    signed Pearson correlation (what cross-correlation and template matching
    maximise) and the mutual information are reported.

    Returns
    -------
    xarray.Dataset
        ``correlation`` and ``mutual_information`` on dim ``shift`` (px).
    """
    _validate.choice(axis, ("y", "x"), name="axis")
    f_arr = _image(fixed, "fixed")
    shifts = _validate.array(shifts_px, name="shifts_px", ndim=1, finite=True).astype(float)
    fm = registration.fixed_mask if registration.fixed_mask is not None else particle_mask(f_arr)
    roi = ndimage.binary_dilation(fm, iterations=4)
    warped = registration.warp(np.asarray(moving.values if isinstance(moving, xr.DataArray) else moving, float))
    corr, mi = [], []
    for s in shifts:
        sh = (s, 0.0) if axis == "y" else (0.0, s)
        w = ndimage.shift(warped, sh, order=1, mode="constant", cval=np.nan)
        ok = roi & np.isfinite(w)
        corr.append(float(np.corrcoef(f_arr[ok], w[ok])[0, 1]))
        mi.append(mutual_information(f_arr, w, mask=roi, bins=bins))
    return xr.Dataset(
        {"correlation": ("shift", np.array(corr), {"units": "1", "long_name": "Pearson correlation"}),
         "mutual_information": ("shift", np.array(mi), {"units": "nats", "long_name": "mutual information"})},
        coords={"shift": ("shift", shifts, {"units": "px", "long_name": f"shift along {axis}"})})
