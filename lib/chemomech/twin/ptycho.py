"""Simulated Fe L-edge energy stacks of a twin particle (spectro-ptychography and STXM).

The measurement simulator for :mod:`chemomech.xanes`, kept on a separate code path
from the analysis (no inverse crime):

- spectra: the peak table :data:`chemomech.materials.FE_L_EDGE_MODEL` is evaluated
  here with its own code — Lorentzians convolved numerically with their Gaussian
  width on a 0.01 eV grid, then with the beamline bandwidth — whereas the analysis
  interpolates the 0.05 eV tabulation of :func:`chemomech.xanes.reference_spectra`
  (exact Voigt profiles, no bandwidth); the molar fraction x of the particle is
  turned into LiFePO4/FePO4 volume fractions with the phases' Fe densities;
- geometry: every frame samples the particle's analytic fields at its own shifted
  positions with sub-pixel supersampling (the transmission is averaged within a
  pixel), so no frame is made by interpolating another;
- noise: per-energy incident flux, reconstruction (complex Gaussian) or Poisson
  noise, an amplitude scale and global phase per ptychographic reconstruction, a
  weakly absorbing Si3N4 membrane with a slight thickness gradient, stray light;
- realism (``preset="realistic"``, :data:`PRESETS`): independent per-frame offsets,
  an energy-calibration offset, a coarser resolution than the analysis' references,
  incident-flux jumps, a linear phase ramp per reconstruction and ringing along the
  edge of the reconstructed field.
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from scipy import ndimage
from scipy.signal import hilbert

from .. import _validate
from ..materials import FE_DENSITY_RATIO_FP_LFP, FE_L_EDGE_MODEL, PHASE_PER_NM
from .particle import Particle

__all__ = ["BANDWIDTH_EV", "MEMBRANE_OD_700", "PRESETS", "energy_grid", "drift_path", "frame_offsets",
           "model_spectra", "simulate_stack"]

#: Beamline bandwidth (FWHM, eV): resolving power E/ΔE ≈ 5000 at 708 eV, typical of
#: soft X-ray spectro-microscopy beamlines (e.g. ALS 5.3.2 / 7.0.1).
BANDWIDTH_EV = 0.14
#: OD of the 50 nm Si3N4 support membrane at 700 eV (attenuation length ≈ 0.5 µm).
MEMBRANE_OD_700 = 0.1
_FINE_STEP_EV = 0.01

#: What a stack of each preset contains (see :func:`simulate_stack`). ``"ideal"``: a smooth
#: drift only, the analysis' energy scale, the beamline bandwidth of :data:`BANDWIDTH_EV`.
#: ``"realistic"``: every energy reconstructed on its own — an independent offset per frame
#: (uniform in ±4 px on each axis, on top of the drift), a 0.3 eV energy-calibration
#: offset (the monochromator reads 0.3 eV low), a coarser resolution (0.35 eV FWHM), ±10 %
#: random incident-flux jumps, and reconstruction artefacts (a random linear phase ramp
#: per frame, ringing along the edge of the reconstructed field).
PRESETS = {
    "ideal": {"frame_offset_px": 0.0, "energy_offset_ev": 0.0, "bandwidth_ev": BANDWIDTH_EV,
              "flux_jitter": 0.03, "artefacts": False},
    "realistic": {"frame_offset_px": 4.0, "energy_offset_ev": 0.3, "bandwidth_ev": 0.35,
                  "flux_jitter": 0.10, "artefacts": True},
}


def energy_grid(*, fine_step_ev: float = 0.25) -> np.ndarray:
    """A realistic Fe L-edge scan: 1 eV steps from 700 eV, `fine_step_ev` over 705–713 eV, 0.75 eV to 730 eV.

    Examples
    --------
    >>> e = energy_grid()
    >>> e.size, float(e[0]), float(e[-1])
    (60, 700.0, 729.5)
    """
    step = _validate.positive(fine_step_ev, name="fine_step_ev")
    fine = np.arange(705.0, 713.0 + step / 2, step)
    return np.round(np.concatenate([np.arange(700.0, 705.0, 1.0), fine, np.arange(713.0 + 0.75, 730.0, 0.75)]), 4)


def model_spectra(energy, *, bandwidth_ev: float = BANDWIDTH_EV) -> xr.Dataset:
    """Fe L-edge absorption (OD per nm) and phase (rad per nm) of LFP and FP as the beamline sees them.

    Parameters
    ----------
    energy : array_like
        Energies, eV.
    bandwidth_ev : float, optional
        FWHM of the (Gaussian) photon-energy bandwidth, eV.

    Returns
    -------
    xarray.Dataset
        ``LFP``, ``FP`` (1/nm) and ``phase_LFP``, ``phase_FP`` (rad/nm) on ``energy``.

    Examples
    --------
    >>> s = model_spectra([708.0, 710.0])
    >>> round(float(s.LFP[1] / s.LFP[0]), 1), round(float(s.FP[1] / s.FP[0]), 1)
    (0.5, 2.1)
    """
    e = _validate.array(energy, name="energy", ndim=1, dtype_kind="iuf", finite=True).astype(float)
    bw = _validate.positive(bandwidth_ev, name="bandwidth_ev", allow_zero=True)
    fine = np.arange(680.0, 750.0, _FINE_STEP_EV)
    to_samples = 1.0 / (_FINE_STEP_EV * 2.0 * np.sqrt(2.0 * np.log(2.0)))  # FWHM (eV) -> sigma (samples)
    out = {}
    for phase in ("LFP", "FP"):
        spec = FE_L_EDGE_MODEL[phase]
        mu = spec["pre"] * (700.0 / fine) ** FE_L_EDGE_MODEL["pre_exponent"]
        for c, h, gf, lf in spec["peaks"]:
            line = 1.0 / (1.0 + ((fine - c) / (lf / 2.0)) ** 2)  # Lorentzian
            line = ndimage.gaussian_filter1d(line, gf * to_samples, mode="nearest")
            mu = mu + h * line / line.max()
        for c, h, w in spec["steps"]:
            mu = mu + h * (np.arctan((fine - c) * 2.0 / w) / np.pi + 0.5)
        if bw > 0:
            mu = ndimage.gaussian_filter1d(mu, bw * to_samples, mode="nearest")
        # anomalous dispersion from Kramers-Kronig (Hilbert transform of the absorption)
        anomalous = np.imag(hilbert(mu - np.linspace(mu[0], mu[-1], mu.size)))
        phi = -(PHASE_PER_NM + 0.5 * anomalous)
        out[phase] = np.interp(e, fine, mu)
        out["phase_" + phase] = np.interp(e, fine, phi)
    units = {"LFP": "1/nm", "FP": "1/nm", "phase_LFP": "rad/nm", "phase_FP": "rad/nm"}
    return xr.Dataset({k: ("energy", v, {"units": units[k], "long_name": k}) for k, v in out.items()},
                      coords={"energy": ("energy", e, {"units": "eV", "long_name": "photon energy"})})


def drift_path(n_energy: int, *, total_px: float = 3.0, jitter_px: float = 0.01, rng=None) -> np.ndarray:
    """Stage/beam drift across an energy scan, ``(n_energy, 2)`` px (y, x), zero at the first frame.

    A smooth thermal trend of about `total_px` over the scan (random direction,
    slightly curved), a small random walk (0.015 px per frame) and white jitter.

    Examples
    --------
    >>> d = drift_path(60, total_px=3.0, rng=1)
    >>> d.shape, bool(np.all(d[0] == 0)), bool(2.0 < np.hypot(*d[-1]) < 4.0)
    ((60, 2), True, True)
    """
    gen = _validate.rng(rng)
    total = _validate.positive(total_px, name="total_px", allow_zero=True)
    jit = _validate.positive(jitter_px, name="jitter_px", allow_zero=True)
    tau = np.linspace(0.0, 1.0, int(n_energy))[:, None]
    ang = gen.uniform(0, 2 * np.pi, 2)
    u = np.array([np.sin(ang[0]), np.cos(ang[0])])
    v = np.array([np.sin(ang[1]), np.cos(ang[1])]) * 0.3
    d = total * (u * tau + v * (tau**2 - tau))
    d = d + np.cumsum(gen.normal(0.0, 0.015, d.shape), axis=0) + gen.normal(0.0, jit, d.shape)
    return d - d[0]


def frame_offsets(n_energy: int, *, max_px: float = 4.0, rng=None) -> np.ndarray:
    """Independent offsets of separately reconstructed frames, ``(n_energy, 2)`` px, zero at frame 0.

    Each energy of a spectro-ptychography stack is its own reconstruction, placed with
    its own stage position and an arbitrary origin: the offsets jump from one energy
    to the next (uniform in ±`max_px` on each axis), they do not drift slowly.

    Examples
    --------
    >>> d = frame_offsets(60, max_px=4.0, rng=1)
    >>> d.shape, bool(np.all(d[0] == 0)), bool(np.abs(d).max() <= 4.0), bool(np.abs(np.diff(d, axis=0)).max() > 2)
    ((60, 2), True, True, True)
    """
    gen = _validate.rng(rng)
    m = _validate.positive(max_px, name="max_px", allow_zero=True)
    d = gen.uniform(-m, m, (int(n_energy), 2))
    d[0] = 0.0
    return d


def _ringing(shape: tuple[int, int], amplitude: float, period_px: float = 5.0, decay_px: float = 3.0) -> np.ndarray:
    """Damped oscillation along the border of the reconstructed field (1 + δ), as ptychography leaves it."""
    ny, nx = shape
    yy, xx = np.mgrid[:ny, :nx]
    dist = np.minimum.reduce([yy, ny - 1 - yy, xx, nx - 1 - xx]).astype(float)
    return amplitude * np.cos(2 * np.pi * dist / period_px) * np.exp(-dist / decay_px)


def simulate_stack(particle: Particle, *, energies=None, shape: tuple[int, int] = (128, 128),
                   pixel_size_nm: float = 4.0, offset_nm: tuple[float, float] = (18.0, -14.0),
                   mode: str = "ptycho", drift_px: float = 3.0, shifts=None, noise: float = 0.007,
                   counts: float = 3e4,
                   thickness_scale: float = 1.0, stray_fraction: float = 0.002,
                   bandwidth_ev: float | None = None, supersample: int = 2, mirror: bool = False,
                   rng=None, preset: str = "ideal", frame_offset_px: float | None = None,
                   energy_offset_ev: float | None = None, flux_jitter: float | None = None,
                   artefacts: bool | None = None) -> tuple[xr.DataArray, xr.Dataset]:
    """Simulate an Fe L-edge energy stack of `particle` and return it with the truth.

    Parameters
    ----------
    particle : chemomech.twin.particle.Particle
        The twin particle (thickness in nm, X in [0, 1]).
    energies : array_like, optional
        Photon energies, eV (default :func:`energy_grid`, 60 energies).
    shape : (int, int)
        ``(ny, nx)`` pixels.
    pixel_size_nm : float
        Pixel size, nm.
    offset_nm : (float, float)
        Position ``(y, x)`` of the particle centre relative to the image centre, nm.
    mode : {"ptycho", "stxm"}
        ``"ptycho"``: complex object transmission O = exp(−OD/2)·exp(iφ) per
        reconstruction, with its own amplitude scale and global phase, plus complex
        Gaussian reconstruction noise of standard deviation `noise` (per component,
        relative to the incident amplitude). ``"stxm"``: real transmitted counts,
        Poisson noise with `counts` incident photons per pixel (at mean flux).
    drift_px : float
        Size of the drift trend over the scan, px (see :func:`drift_path`).
    shifts : array_like, optional
        Explicit drift ``(n_energy, 2)`` px (y, x) instead of a random one.
    noise : float
        Reconstruction noise (ptycho mode).
    counts : float
        Incident photons per pixel and energy (stxm mode).
    thickness_scale : float
        Multiplies the particle thickness; > ~1.4 gives saturated pixels (OD > 1.5).
    stray_fraction : float
        Stray/higher-harmonic light reaching the detector, fraction of the incident
        intensity: caps the measurable OD at ≈ −ln(stray_fraction).
    bandwidth_ev : float, optional
        Photon-energy bandwidth (FWHM), eV (default from `preset`).
    supersample : int
        Sub-samples per pixel and axis.
    mirror : bool
        Flip the image columns (as when the particle is imaged from the other
        side of the support, relative to another instrument); the truth is
        flipped alike.
    rng : numpy.random.Generator or int, optional
        Random source.
    preset : {"ideal", "realistic"}, optional
        Defaults of the five options below (:data:`PRESETS`); ``"realistic"`` makes a
        stack that behaves like a measured spectro-ptychography stack.
    frame_offset_px : float, optional
        Independent per-frame offsets, uniform in ±this on each axis (px), added to
        the drift (:func:`frame_offsets`); frame 0 stays put.
    energy_offset_ev : float, optional
        Energy-calibration error: the true photon energy of every frame is its
        nominal (stack coordinate) energy plus this, eV.
    flux_jitter : float, optional
        Relative standard deviation of random per-frame incident-flux changes (on top
        of a slow ±15 % variation).
    artefacts : bool, optional
        Ptychography only: a random linear phase ramp per reconstruction (up to
        0.03 rad/px) and ringing (amplitude and phase) along the edge of the field.

    Returns
    -------
    stack : xarray.DataArray
        ``(energy, y, x)``, coordinates in eV and nm; complex (ptycho) or float (stxm).
    truth : xarray.Dataset
        On the first frame's grid: ``X`` (thickness-weighted pixel mean, NaN outside),
        ``thickness`` (pixel mean, nm), ``mask`` (pixel centre inside), ``interior``
        (more than 3 px from the edge), ``shifts`` ``(energy, axis)`` px (frame k shows
        the specimen displaced by ``shifts[k]``), ``flux`` (relative incident flux),
        and ``index_to_particle`` ``(i, j)``: the ``(3, 3)`` affine map from pixel
        index ``(row, col, 1)`` to the particle's own coordinates ``(y, x)`` in nm
        (:meth:`chemomech.twin.Particle.sample` takes those).

    Examples
    --------
    >>> from chemomech import twin
    >>> p = twin.make_particle("demo", batch="li_poor", seed=2, semi_axes_nm=(90.0, 120.0))
    >>> stack, truth = simulate_stack(p, shape=(40, 48), pixel_size_nm=8.0, rng=0)
    >>> stack.dims, stack.shape, stack.dtype.kind, int(truth.mask.sum()) > 300
    (('energy', 'y', 'x'), (60, 40, 48), 'c', True)
    """
    if not isinstance(particle, Particle):
        raise TypeError(f"particle must be a chemomech.twin.particle.Particle, got {type(particle).__name__}")
    _validate.choice(mode, ("ptycho", "stxm"), name="mode")
    _validate.choice(preset, tuple(PRESETS), name="preset")
    opts = dict(PRESETS[preset])
    for name, val in (("frame_offset_px", frame_offset_px), ("energy_offset_ev", energy_offset_ev),
                      ("bandwidth_ev", bandwidth_ev), ("flux_jitter", flux_jitter), ("artefacts", artefacts)):
        if val is not None:
            opts[name] = val
    if not isinstance(opts["artefacts"], (bool, np.bool_)):
        raise TypeError(f"artefacts must be a bool, got {type(opts['artefacts']).__name__}")
    e_off = float(opts["energy_offset_ev"])
    if not np.isfinite(e_off) or abs(e_off) > 5.0:
        raise ValueError(f"energy_offset_ev must be a finite number of eV within ±5, got {e_off!r}")
    gen = _validate.rng(rng)
    e = energy_grid() if energies is None else _validate.array(
        energies, name="energies", ndim=1, dtype_kind="iuf", finite=True).astype(float)
    if len(shape) != 2 or not all(isinstance(n, (int, np.integer)) and n > 1 for n in shape):
        raise ValueError(f"shape must be two ints > 1 (ny, nx), got {shape!r}")
    p = _validate.positive(pixel_size_nm, name="pixel_size_nm")
    for name, val in (("noise", noise), ("stray_fraction", stray_fraction)):
        _validate.positive(val, name=name, allow_zero=True)
    _validate.positive(counts, name="counts")
    _validate.positive(thickness_scale, name="thickness_scale")
    if not isinstance(supersample, (int, np.integer)) or supersample < 1:
        raise ValueError(f"supersample must be a positive int, got {supersample!r}")
    ny, nx = int(shape[0]), int(shape[1])
    n_e = e.size
    bw = _validate.positive(opts["bandwidth_ev"], name="bandwidth_ev", allow_zero=True)
    jitter = _validate.positive(opts["flux_jitter"], name="flux_jitter", allow_zero=True)
    spectra = model_spectra(e + e_off, bandwidth_ev=bw)  # true energies: nominal + calibration error
    if shifts is None:
        shifts = drift_path(n_e, total_px=drift_px, rng=gen)
        if opts["frame_offset_px"] > 0:
            shifts = shifts + frame_offsets(n_e, max_px=opts["frame_offset_px"], rng=gen)
    else:
        shifts = _validate.array(shifts, name="shifts", shape=(n_e, 2), dtype_kind="iuf", finite=True)
        shifts = shifts.astype(float)
    flux = (1.0 + 0.15 * np.sin(2 * np.pi * (e - e[0]) / 37.0)) * np.clip(1.0 + gen.normal(0.0, jitter, n_e), 0.3, None)
    r_fe = FE_DENSITY_RATIO_FP_LFP

    # pixel centres (nm) relative to the image centre, and sub-pixel offsets
    yc = (np.arange(ny) - (ny - 1) / 2) * p
    xc = (np.arange(nx) - (nx - 1) / 2) * p
    sub = ((np.arange(supersample) + 0.5) / supersample - 0.5) * p
    Y = yc[:, None, None, None] + sub[None, None, :, None]
    X = xc[None, :, None, None] + sub[None, None, None, :]
    Y, X = np.broadcast_arrays(Y, X)  # (ny, nx, s, s)
    tilt = gen.normal(0.0, 1.0, 2)
    tilt = tilt / np.hypot(*tilt)

    def fields(dy_px: float, dx_px: float):
        yy = Y - offset_nm[0] - dy_px * p  # particle coordinates of the (drifted) samples
        xx = X - offset_nm[1] - dx_px * p
        inside = particle.contains(yy, xx)
        t = np.zeros(yy.shape)
        li = np.zeros(yy.shape)
        t[inside] = particle.thickness(yy[inside], xx[inside]) * thickness_scale
        li[inside] = particle.lithium(yy[inside], xx[inside])  # molar fraction x
        ramp = 1.0 + 0.03 * (tilt[0] * yy + tilt[1] * xx) / (0.5 * p * max(ny, nx))
        return t, li, ramp

    data = np.empty((n_e, ny, nx), complex if mode == "ptycho" else float)
    for k in range(n_e):
        t, li, ramp = fields(*shifts[k])
        s = spectra.isel(energy=k)
        vol = li * r_fe / (li * r_fe + 1.0 - li)  # LiFePO4 volume fraction: FePO4 packs more Fe per volume
        od = t * (vol * float(s.LFP) + (1 - vol) * float(s.FP))
        od = od + MEMBRANE_OD_700 * (e[k] / 700.0) ** -2.6 * ramp
        phi = t * (vol * float(s.phase_LFP) + (1 - vol) * float(s.phase_FP))
        if mode == "ptycho":
            obj = np.exp(-od / 2 + 1j * phi).mean(axis=(2, 3))
            amp = np.sqrt(np.abs(obj) ** 2 + stray_fraction)
            obj = amp * np.exp(1j * np.angle(obj))
            obj = obj + noise * (gen.normal(size=obj.shape) + 1j * gen.normal(size=obj.shape))
            if opts["artefacts"]:  # reconstruction artefacts: linear phase ramp, ringing at the field edge
                g = gen.uniform(-0.03, 0.03, 2)
                yy_px, xx_px = np.mgrid[:ny, :nx]
                ring = _ringing((ny, nx), gen.uniform(0.05, 0.15))
                obj = obj * (1.0 + ring) * np.exp(1j * (g[0] * yy_px + g[1] * xx_px + ring))
            data[k] = np.sqrt(flux[k]) * np.exp(1j * gen.uniform(-np.pi, np.pi)) * obj
        else:
            trans = np.exp(-od).mean(axis=(2, 3)) + stray_fraction
            data[k] = gen.poisson(counts * flux[k] * trans).astype(float)

    t0, li0, _ = fields(0.0, 0.0)
    tsum = t0.sum(axis=(2, 3))
    centre = particle.contains(yc[:, None] - offset_nm[0], xc[None, :] - offset_nm[1])
    with np.errstate(invalid="ignore", divide="ignore"):
        x_true = np.where(centre & (tsum > 0), (t0 * li0).sum(axis=(2, 3)) / tsum, np.nan)
    interior = ndimage.distance_transform_edt(centre) > 3
    sx = -1.0 if mirror else 1.0
    to_particle = np.array([[p, 0.0, yc[0] - offset_nm[0]],
                            [0.0, sx * p, sx * xc[0] - offset_nm[1]],
                            [0.0, 0.0, 1.0]])
    if mirror:  # column c shows the unflipped column nx - 1 - c
        data, x_true, tsum = data[..., ::-1], x_true[:, ::-1], tsum[:, ::-1]
        centre, interior = centre[:, ::-1], interior[:, ::-1]
        shifts = shifts * np.array([1.0, -1.0])
    coords = {
        "y": ("y", yc, {"units": "nm", "long_name": "y (image rows)"}),
        "x": ("x", xc, {"units": "nm", "long_name": "x (image columns)"}),
    }
    ecoord = ("energy", e, {"units": "eV", "long_name": "photon energy"})
    stack = xr.DataArray(
        data, dims=("energy", "y", "x"), coords={"energy": ecoord, **coords},
        attrs={"units": "1" if mode == "ptycho" else "counts",
               "long_name": "object transmission" if mode == "ptycho" else "transmitted intensity",
               "mode": mode, "particle": particle.name})
    truth = xr.Dataset(
        {
            "X": (("y", "x"), x_true, {"units": "1", "long_name": "Li fraction x (truth)"}),
            "thickness": (("y", "x"), tsum / supersample**2, {"units": "nm", "long_name": "thickness (truth)"}),
            "mask": (("y", "x"), centre, {"units": "1", "long_name": "particle mask (truth)"}),
            "interior": (("y", "x"), interior, {"units": "1", "long_name": "more than 3 px inside the edge"}),
            "shifts": (("energy", "axis"), shifts, {"units": "px", "long_name": "drift (truth)"}),
            "flux": ("energy", flux, {"units": "1", "long_name": "relative incident flux"}),
            "index_to_particle": (("i", "j"), to_particle,
                                  {"units": "nm", "long_name": "affine map: pixel index -> particle (y, x)"}),
        },
        coords={"energy": ecoord, "axis": ("axis", ["y", "x"], {"long_name": "image axis"}), **coords},
        attrs={"particle": particle.name, "batch": particle.batch, "mode": mode, "preset": preset,
               "energy_offset_ev": e_off, "bandwidth_ev": float(bw), "artefacts": int(bool(opts["artefacts"])),
               "pixel_size_nm": p, "thickness_scale": float(thickness_scale), "mirrored": int(bool(mirror))},
    )
    return stack, truth


