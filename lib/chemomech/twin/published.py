"""Stand-ins for the correlated stacks that Deng et al. (2022) published, written from the twin.

The authors' MATLAB files carry no licence, so they are not part of this project; the tests and
the book use files in the same layout made from a twin particle with a known law. The layout (read
by :func:`chemomech.io.read_published_stack`): on one image grid, ``exx``, ``eyy``, ``exy`` — the
strain in the crystal frame (ε_aa, ε_cc, ε_ac), relative to the particle's own median lattice as a
Bragg-disk measurement gives it — ``theta``, ``mask``, ``LFP`` and ``FP`` (thicknesses of the two
reference spectra), virtual images ``HAADF``, ``VADF``, ``VBF``, the scalar ``rot`` (angle of the a
axis in the image, radians) and ``filename``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import _validate, geometry
from .particle import Particle

__all__ = ["published_layout", "write_published"]


def published_layout(particle: Particle, *, pixel_size_nm: float = 8.0, sigma_strain: float = 2e-4,
                     rng: np.random.Generator | int | None = None) -> dict:
    """The published variables of one twin particle, as numpy arrays.

    Parameters
    ----------
    particle : chemomech.twin.Particle
        Its ``crystal_angle_rad`` becomes ``rot``.
    pixel_size_nm : float
        Pixel size of the image grid, nm.
    sigma_strain : float
        Gaussian noise added to ``exx``, ``eyy``, ``exy``.
    rng : numpy.random.Generator or int, optional

    Returns
    -------
    dict
        ``exx, eyy, exy, theta, mask (uint8), LFP, FP, HAADF, VADF, VBF, rot, filename``.

    Examples
    --------
    >>> from chemomech import twin
    >>> p = twin.make_particle("S", seed=2, mesh_nrefs=3, crystal_angle_rad=0.3)
    >>> d = published_layout(p, pixel_size_nm=20.0, rng=0)
    >>> sorted(d)[:4], d["rot"]
    (['FP', 'HAADF', 'LFP', 'VADF'], 0.3)
    """
    if not isinstance(particle, Particle):
        raise TypeError(f"particle must be a chemomech.twin.Particle, got {type(particle).__name__}")
    gen = _validate.rng(rng)
    _validate.positive(sigma_strain, name="sigma_strain", allow_zero=True)
    ds = particle.render(pixel_size_nm=_validate.positive(pixel_size_nm, name="pixel_size_nm"))
    m = ds["mask"].values
    angle = float(particle.crystal_angle_rad)
    eaa, ecc, eac, _ = geometry.rotate_strain(ds["exx"].values, ds["eyy"].values, ds["exy"].values, None,
                                              geometry.rotation_yx(angle))
    out = {}
    for k, v in (("exx", eaa), ("eyy", ecc)):   # relative to the particle's median lattice, as measured
        out[k] = (1 + v) / (1 + float(np.nanmedian(v[m]))) - 1
    out["exy"] = eac - float(np.nanmedian(eac[m]))
    for k in ("exx", "eyy", "exy"):
        out[k] = np.where(m, out[k] + sigma_strain * gen.standard_normal(m.shape), np.nan)
    out["theta"] = np.where(m, ds["theta"].values, np.nan)
    t = np.where(m, ds["thickness"].values, 0.0)
    out["LFP"] = t * np.nan_to_num(ds["X"].values)
    out["FP"] = t - out["LFP"]
    out["mask"] = m.astype(np.uint8)
    out["HAADF"] = t.copy()
    out["VADF"] = -t
    out["VBF"] = np.exp(-t / 100.0)
    out["rot"] = angle
    out["filename"] = f"{particle.name}.mat"
    return out


def write_published(data: dict, path, *, version: str = "v5") -> Path:
    """Write :func:`published_layout` output as a MATLAB file, ``"v5"`` (scipy) or ``"v7.3"`` (HDF5)."""
    _validate.choice(version, ("v5", "v7.3"), name="version")
    path = Path(path)
    if version == "v5":
        import scipy.io

        scipy.io.savemat(path, data)
        return path
    import h5py

    with h5py.File(path, "w", userblock_size=512) as f:
        for k, v in data.items():
            if isinstance(v, str):
                d = f.create_dataset(k, data=np.array([[ord(c)] for c in v], dtype=np.uint16))
                d.attrs["MATLAB_class"] = np.bytes_("char")
            else:
                d = f.create_dataset(k, data=np.atleast_2d(np.asarray(v, dtype=float)).T)   # MATLAB: columns first
                d.attrs["MATLAB_class"] = np.bytes_("double")
    return path
