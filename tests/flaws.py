"""Flaw injection for tests: what real instruments hand over, right in form and flawed in content.

Every function takes a numpy array and a seed (or ``numpy.random.Generator``),
returns a flawed *copy* and a boolean map of what it changed, and never touches
its input. The hypothesis strategy :func:`flaw_plans` draws flaw plans for
property tests; :func:`inject` applies one.

Flaw classes (``kind``):

- ``"specks"``: isolated NaN pixels of an image (dead pixels, single lost frames
  of a scan mapped to one pixel each) — 2-D, or the scan axes of a 4-D cube;
- ``"region"``: a square NaN region (a lost scan block, a failed area of a map);
- ``"dust"``: small disks whose values are scaled by ``factor`` (a dust speck in
  an image: finite, wrong);
- ``"lost_frames"``: whole patterns/frames set to NaN (4-D: at scan positions;
  3-D stack: along axis 0);
- ``"zero_frames"``: whole frames set to 0 (a failed reconstruction in a stack);
- ``"dead_column"``: a detector column at 0 in every pattern (last axis);
- ``"hot_pixels"``: detector pixels at ``factor`` times the maximum in every pattern.

The ``affected`` map has the shape of the positions a flaw acts on: the image
(2-D input), the scan (``shape[:2]`` of a 4-D cube, for specks/region/dust/
lost frames), the frames (``shape[:1]`` of a 3-D stack, for lost/zero frames)
or the detector (``shape[-2:]``, for dead columns and hot pixels).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KINDS = ("specks", "region", "dust", "lost_frames", "zero_frames", "dead_column", "hot_pixels")


@dataclass(frozen=True)
class Flaw:
    """One flaw to inject: its kind, how many, how big (pixels), a value factor and a seed."""

    kind: str
    count: int = 1
    size: int = 1
    factor: float = 10.0
    seed: int = 0


def _positions(shape2, within, n, rng) -> tuple[np.ndarray, np.ndarray]:
    cand = np.argwhere(np.ones(shape2, bool) if within is None else np.asarray(within, bool))
    if cand.size == 0:
        raise ValueError("within selects no pixel to flaw")
    pick = rng.choice(len(cand), size=min(int(n), len(cand)), replace=False)
    return cand[pick, 0], cand[pick, 1]


def inject(array: np.ndarray, flaw: Flaw, *, within: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Apply `flaw` to a copy of `array`; return ``(flawed, affected)``.

    Parameters
    ----------
    array : numpy.ndarray
        A 2-D image, a 3-D ``(frame, y, x)`` stack or a 4-D ``(ny, nx, ky, kx)`` cube.
    flaw : Flaw
    within : numpy.ndarray of bool, optional
        Where on the image/scan positional flaws may fall (e.g. a particle mask).

    Examples
    --------
    >>> img, hit = inject(np.zeros((8, 8)), Flaw("specks", count=3, seed=1))
    >>> int(np.isnan(img).sum()), int(hit.sum())
    (3, 3)
    """
    a = np.array(array, dtype=float if np.asarray(array).dtype.kind in "iub" else None, copy=True)
    rng = np.random.default_rng(flaw.seed)
    k = flaw.kind
    if k not in KINDS:
        raise ValueError(f"flaw.kind must be one of {KINDS}, got {k!r}")
    if k in ("dead_column", "hot_pixels"):
        if a.ndim < 3:
            raise ValueError(f"{k} needs patterns (a 3-D or 4-D array), got {a.ndim}-D")
        det = np.zeros(a.shape[-2:], bool)
        if k == "dead_column":
            cols = rng.choice(a.shape[-1], size=min(flaw.count, a.shape[-1]), replace=False)
            det[:, cols] = True
            a[..., det] = 0
        else:
            r, c = _positions(a.shape[-2:], None, flaw.count, rng)
            det[r, c] = True
            a[..., det] = flaw.factor * np.nanmax(a)
        return a, det
    if k in ("lost_frames", "zero_frames") and a.ndim == 3:
        frames = np.zeros(a.shape[0], bool)
        frames[rng.choice(a.shape[0], size=min(flaw.count, a.shape[0]), replace=False)] = True
        a[frames] = np.nan if k == "lost_frames" else 0
        return a, frames
    if a.ndim not in (2, 4):
        raise ValueError(f"{k} acts on a 2-D image or the scan of a 4-D cube, got {a.ndim}-D")
    scan = a.shape[:2]
    hit = np.zeros(scan, bool)
    if k in ("specks", "lost_frames", "zero_frames"):
        r, c = _positions(scan, within, flaw.count, rng)
        hit[r, c] = True
    elif k == "region":
        for _ in range(flaw.count):
            r, c = _positions(scan, within, 1, rng)
            h = max(int(flaw.size), 1)
            hit[max(r[0] - h // 2, 0):r[0] - h // 2 + h, max(c[0] - h // 2, 0):c[0] - h // 2 + h] = True
    else:  # dust: disks of radius size/2, values scaled
        yy, xx = np.mgrid[:scan[0], :scan[1]]
        r, c = _positions(scan, within, flaw.count, rng)
        for ri, ci in zip(r, c):
            hit |= (yy - ri) ** 2 + (xx - ci) ** 2 <= max(flaw.size / 2, 0.5) ** 2
    if within is not None and k != "region":
        hit &= np.asarray(within, bool)
    if k == "dust":
        a[hit] = a[hit] * flaw.factor
    else:
        a[hit] = 0 if k == "zero_frames" else np.nan
    return a, hit


def flaw_plans(kinds=KINDS, *, max_count: int = 12, max_size: int = 8):
    """Hypothesis strategy of :class:`Flaw` (seeded: the seed is part of the drawn plan)."""
    from hypothesis import strategies as st

    return st.builds(Flaw, kind=st.sampled_from(tuple(kinds)), count=st.integers(1, max_count),
                     size=st.integers(1, max_size), factor=st.sampled_from((0.0, 0.2, 5.0, 50.0)),
                     seed=st.integers(0, 2**31 - 1))
