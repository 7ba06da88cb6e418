"""The whole correlative study, end to end, on the digital twin.

For every twin particle P1–P5 (:func:`chemomech.specimen.particle_set`) the
study

1. simulates a 4D-STEM scan (:func:`chemomech.stem4d.simulate_particle`) and
   maps its strain (:func:`chemomech.strain.measure_strain`);
2. simulates a ptychographic Fe L-edge energy stack on another grid — another
   pixel size and field of view, the particle off-centre, the image *mirrored*
   (columns flipped) and drifting from energy to energy
   (:func:`chemomech.ptycho.simulate_stack`) — and maps the Li fraction
   (:func:`chemomech.xanes.map_lithium`);
3. registers the two through the domain pattern both instruments see — the
   trace of the measured strain (4D-STEM, moving) onto the Li map (X-ray,
   fixed) — with :func:`chemomech.registration.register`, which must find the
   mirror (the virtual dark field of the twin is featureless inside a
   particle);
4. assembles the correlated stack on the X-ray grid
   (:func:`chemomech.correlate.correlate`, the strain extended by one scan
   pixel so the stack reaches the particle edge), turns its strain into the
   crystal frame (x ∥ a, y ∥ c; :func:`chemomech.strain.to_crystal_frame`)
   and brings X to the strain's resolution (sampled at the scan positions and
   interpolated back, as the strain was);
5. learns the eigenstrain law on the training particles from the *measured*
   maps only (:func:`chemomech.learning.fit_eigenstrain`, with SIMEX for the
   noise of X), after re-expressing the strain relative to FePO4
   (:func:`reference_strain`, :func:`to_fepo4`), and tests it on the held-out
   particle.

Every stage also has its truth, built from how the data were simulated (never
from the analysis): the strain relative to the same reference lattice
(:func:`chemomech.stem4d.relative_truth`), the twin's X on the X-ray grid, and
the exact X-ray → scan pixel mapping. :func:`run_study` can replace any stage's
output by its truth (``replace_with_truth``) while reusing the same simulated
measurements, which is how :func:`error_budget` attributes the final slope
error to the stages. :func:`write_outputs` writes figures, NetCDF stacks and a
``summary.json`` atomically; ``python -m chemomech reproduce`` drives it all.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import xarray as xr
from scipy import ndimage

from . import _validate, correlate, learning, ptycho, registration, specimen, stem4d, strain, xanes

__all__ = [
    "STAGES",
    "SLOPE_X",
    "StudyConfig",
    "ParticleMeasurement",
    "StudyResult",
    "measure_particle",
    "assemble",
    "reference_strain",
    "to_fepo4",
    "run_study",
    "error_budget",
    "summary_dict",
    "write_outputs",
]

#: Stages whose output can be replaced by its truth.
STAGES = ("strain", "X", "registration")
#: Li fraction at which the learned slopes d eps0/dX are reported.
SLOPE_X = 0.5
#: Particles of the named twin set (specimen.particle_set).
_NAMES = ("P1", "P2", "P3", "P4", "P5")
#: Virtual dark-field detector: everything outside this many disk radii (+2 px).
_BF_RADIUS_FACTOR = 1.5
#: Defect exclusion radius for the held-out RMS, in defect sigmas (as in the learning chapter).
_DEFECT_RADII = 6.0
#: The two instruments image the same particle without distortion here: a similarity suffices.
REGISTRATION_TRANSFORM = "similarity"
#: Rotation steps of the registration's initial search (7.5 degrees).
REGISTRATION_ANGLES = 48


# --- configuration ----------------------------------------------------------------------


@dataclass(frozen=True)
class StudyConfig:
    """All settings of one run of the study; one `seed` drives every random draw.

    Parameters
    ----------
    seed : int
        Seed of every random draw (noise, drift, offsets, bootstrap).
    train : tuple of str
        Training particles.
    heldout : str
        The test particle.
    scan_shape : (int, int)
        4D-STEM scan positions ``(ny, nx)`` covering each particle (+8 % margin).
    detector_shape : (int, int)
        4D-STEM detector pixels ``(ky, kx)``.
    dose : float
        Electrons per diffraction pattern.
    xray_shape : (int, int)
        X-ray image ``(ny, nx)`` pixels.
    xray_pixel_nm : float
        X-ray pixel size, nm.
    fine_step_ev : float
        Energy step across 705–713 eV (:func:`chemomech.ptycho.energy_grid`).
    xray_offset_nm : float
        Largest offset of the particle centre from the X-ray image centre, nm
        (drawn per particle).
    drift_px : float
        Drift across the energy scan, X-ray pixels.
    mirror : bool
        Flip the X-ray image columns relative to the 4D-STEM scan.
    max_degree : int
        Highest polynomial degree of eps0(X) tried by cross-validation.
    n_boot : int
        Bootstrap replicates of the learned law.
    simex_n_sim : int
        SIMEX noise realisations per multiplier.
    mesh_nrefs : int
        Refinement of the twin's truth mesh.
    upsample : int
        Finite-element sub-elements per X-ray pixel side in the learning.
    label : str
        Name of the preset, reported in the outputs.
    """

    seed: int = 2022
    train: tuple[str, ...] = ("P2", "P3", "P4", "P5")
    heldout: str = "P1"
    scan_shape: tuple[int, int] = (24, 28)
    detector_shape: tuple[int, int] = (96, 96)
    dose: float = 1e5
    xray_shape: tuple[int, int] = (64, 72)
    xray_pixel_nm: float = 7.0
    fine_step_ev: float = 0.5
    xray_offset_nm: float = 12.0
    drift_px: float = 2.0
    mirror: bool = True
    max_degree: int = 3
    n_boot: int = 40
    simex_n_sim: int = 2
    mesh_nrefs: int = 6
    upsample: int = 1
    label: str = "quick"

    def __post_init__(self):
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {self.seed!r}")
        for name in self.train + (self.heldout,):
            _validate.choice(name, _NAMES, name="particle name")
        if self.heldout in self.train or len(set(self.train)) != len(self.train) or len(self.train) < 2:
            raise ValueError(f"train must be at least two distinct particles without the held-out one "
                             f"{self.heldout!r}, got {self.train!r}")
        for name in ("scan_shape", "detector_shape", "xray_shape"):
            v = getattr(self, name)
            if len(v) != 2 or not all(isinstance(n, (int, np.integer)) and n >= 8 for n in v):
                raise ValueError(f"{name} must be two ints >= 8, got {v!r}")
        for name in ("dose", "xray_pixel_nm", "fine_step_ev"):
            _validate.positive(getattr(self, name), name=name)
        for name in ("xray_offset_nm", "drift_px"):
            _validate.positive(getattr(self, name), name=name, allow_zero=True)
        for name, lo in (("max_degree", 1), ("n_boot", 2), ("simex_n_sim", 1), ("mesh_nrefs", 3),
                         ("upsample", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")

    @property
    def particles(self) -> tuple[str, ...]:
        """Held-out particle first, then the training particles."""
        return (self.heldout,) + tuple(self.train)

    @classmethod
    def quick(cls, seed: int = 2022) -> StudyConfig:
        """The preset the book and CI run (under a minute on two cores)."""
        return cls(seed=seed)

    @classmethod
    def full(cls, seed: int = 2022) -> StudyConfig:
        """Full size: finer scans, larger detector, 0.25 eV steps, more bootstrap."""
        return cls(seed=seed, scan_shape=(48, 56), detector_shape=(128, 128), xray_shape=(96, 108),
                   xray_pixel_nm=4.5, fine_step_ev=0.25, max_degree=5, n_boot=200, simex_n_sim=3,
                   label="full")

    def to_dict(self) -> dict:
        """Plain-JSON form of the configuration."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


# --- one particle -----------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ParticleMeasurement:
    """Both simulated measurements of one particle, their analysis and the truth of each stage.

    Attributes
    ----------
    name : str
    particle : chemomech.specimen.Particle
    strain : xarray.Dataset
        Measured strain on the 4D-STEM scan grid (nm coordinates) with the
        virtual ``dark_field`` image.
    strain_truth : xarray.Dataset
        The twin's strain at the scan positions, relative to the same reference
        lattice as the measurement (:func:`chemomech.stem4d.relative_truth`).
    xanes : xarray.Dataset
        :func:`chemomech.xanes.map_lithium` result on the X-ray grid.
    xray_truth : xarray.Dataset
        Truth on the X-ray grid (X-ray frame): ``X`` (thickness-weighted pixel
        mean), ``thickness``, ``mask`` and the twin's ``exx, eyy, exy, theta``
        at the pixel centres, relative to the measurement's reference lattice.
    fixed, moving : xarray.DataArray
        The images registered: the Li map (fixed) and the trace of the
        measured strain (moving), each filled outside its particle mask.
    registration : chemomech.registration.Registration
        Measured fixed → moving registration.
    registration_truth : chemomech.registration.Registration
        The exact mapping, from the simulation geometry.
    crystal_angle_rad : float
        Angle of the a axis from the X-ray image x axis (the known orientation).
    seconds : dict
        Wall time per stage.
    """

    name: str
    particle: specimen.Particle
    strain: xr.Dataset
    strain_truth: xr.Dataset
    xanes: xr.Dataset
    xray_truth: xr.Dataset
    fixed: xr.DataArray
    moving: xr.DataArray
    registration: registration.Registration
    registration_truth: registration.Registration
    crystal_angle_rad: float
    seconds: dict = field(default_factory=dict)

    def tre_px(self) -> float:
        """Mean target registration error over the X-ray particle mask, X-ray pixels."""
        pts = np.argwhere(np.asarray(self.xray_truth["mask"].values, bool)).astype(float)
        est = self.registration.map_indices(pts)
        back = registration._apply(np.linalg.inv(self.registration_truth.matrix), est)
        return float(np.mean(np.hypot(*(back - pts).T)))


def _axis(n: int, step: float) -> np.ndarray:
    return (np.arange(n) - (n - 1) / 2) * step


def _xray_index_to_particle(shape: tuple[int, int], pixel_nm: float, offset_nm: np.ndarray,
                            mirror: bool) -> np.ndarray:
    """(3, 3) affine from X-ray pixel index (row, col) to particle coordinates (y, x) nm.

    The simulator puts the particle centre at `offset_nm` from the image centre;
    a mirrored image has its columns flipped afterwards (column ``c`` shows the
    unflipped column ``nx - 1 - c``, at ``x = -x_c`` for a centred axis).
    """
    y0, x0 = _axis(shape[0], pixel_nm)[0], _axis(shape[1], pixel_nm)[0]
    sx = -1.0 if mirror else 1.0
    return np.array([[pixel_nm, 0.0, y0 - offset_nm[0]],
                     [0.0, sx * pixel_nm, sx * x0 - offset_nm[1]],
                     [0.0, 0.0, 1.0]])


def _frame_q(mirror: bool) -> np.ndarray:
    """(2, 2) (y, x) orthogonal map from X-ray-frame directions to particle-frame directions."""
    return np.diag([1.0, -1.0]) if mirror else np.eye(2)


def _coords(y: np.ndarray, x: np.ndarray, frame: str) -> dict:
    return {"y": ("y", y, {"units": "nm", "long_name": f"y ({frame})"}),
            "x": ("x", x, {"units": "nm", "long_name": f"x ({frame})"})}


def _xray_truth(particle: specimen.Particle, ptruth: xr.Dataset, to_particle: np.ndarray, mirror: bool,
                coords: dict, offsets: dict) -> xr.Dataset:
    """Truth on the X-ray grid: the simulator's X/thickness/mask (flipped) and the twin strain there.

    The strain is made relative to the measurement's reference by subtracting `offsets` (particle frame).
    """
    flip = (slice(None), slice(None, None, -1)) if mirror else (slice(None), slice(None))
    ny, nx = ptruth["X"].shape
    rr, cc = np.meshgrid(np.arange(ny, dtype=float), np.arange(nx, dtype=float), indexing="ij")
    pts = registration._apply(to_particle, np.stack([rr.ravel(), cc.ravel()], axis=1))
    s = particle.sample(pts[:, 0].reshape(ny, nx), pts[:, 1].reshape(ny, nx))
    rel = [s[k] - offsets[k] for k in ("exx", "eyy", "exy", "theta")]
    exx, eyy, exy, theta = correlate.rotate_strain(*rel, _frame_q(mirror).T)
    out = xr.Dataset(coords=coords, attrs={"particle": particle.name, "frame": "X-ray image"})
    for k in ("X", "thickness", "mask"):
        out[k] = (("y", "x"), np.asarray(ptruth[k].values)[flip], dict(ptruth[k].attrs))
    meta = {"exx": exx, "eyy": eyy, "exy": exy, "theta": theta}
    for k, v in meta.items():
        out[k] = (("y", "x"), v, {"units": "rad" if k == "theta" else "1", "long_name": f"{k} (truth, X-ray frame)"})
    return out


def measure_particle(particle: specimen.Particle, config: StudyConfig, *,
                     rng: np.random.Generator | int | None = None) -> ParticleMeasurement:
    """Simulate both measurements of one particle and run the three measurement stages.

    Parameters
    ----------
    particle : chemomech.specimen.Particle
    config : StudyConfig
    rng : numpy.random.Generator or int, optional
        Source of every random draw for this particle.

    Returns
    -------
    ParticleMeasurement

    Examples
    --------
    >>> cfg = StudyConfig(scan_shape=(12, 14), detector_shape=(96, 96), xray_shape=(32, 36),
    ...                   xray_pixel_nm=14.0, fine_step_ev=1.0)
    >>> p = specimen.make_particle("demo", batch="biphasic", seed=2, mesh_nrefs=4)
    >>> m = measure_particle(p, cfg, rng=0)
    >>> m.registration.metrics["mirrored"], m.tre_px() < 1.0
    (True, True)
    """
    if not isinstance(particle, specimen.Particle):
        raise TypeError(f"particle must be a chemomech.specimen.Particle, got {type(particle).__name__}")
    if not isinstance(config, StudyConfig):
        raise TypeError(f"config must be a StudyConfig, got {type(config).__name__}")
    gen = _validate.rng(rng)
    state = _measure_strain_stage(particle, config, gen)
    _measure_xray_stage(state, config, gen)
    return _register_stage(state, config)


def _measure_strain_stage(particle: specimen.Particle, config: StudyConfig, gen: np.random.Generator) -> dict:
    """Stage 1, 4D-STEM: simulate the scan, map strain, its relative truth and the virtual dark field."""
    t0 = time.perf_counter()
    setup = stem4d.DiffractionSetup(detector_shape=tuple(config.detector_shape))
    sim = stem4d.simulate_particle(particle, scan_shape=tuple(config.scan_shape), setup=setup,
                                   dose=config.dose, rng=gen)
    res = strain.measure_strain(sim.datacube)
    virt = strain.virtual_images(sim.datacube, radius_px=_BF_RADIUS_FACTOR * setup.disk_radius_px,
                                 centre=res.attrs["origin_mean_ky_kx_px"])
    res["dark_field"] = virt["dark_field"].assign_attrs(units="counts", long_name="virtual annular dark field")
    res.attrs.update(particle=particle.name, step_nm=float(sim.attrs["step_nm"]))
    rel = stem4d.relative_truth(sim, res["mask"].values)
    rel["mask"] = res["mask"].copy()
    rel.attrs.update(particle=particle.name)
    # the reference lattice is not FePO4: the offset (particle frame) that turns the twin's strain into
    # strain relative to the measurement's reference (nearly uniform; relative_truth is the exact form)
    offsets = {k: float(np.nanmedian((sim[k] - rel[k]).values[res["mask"].values]))
               for k in ("exx", "eyy", "exy", "theta")}
    return {"particle": particle, "strain": res, "strain_truth": rel, "offsets": offsets,
            "seconds": {"strain": time.perf_counter() - t0}}


def _measure_xray_stage(state: dict, config: StudyConfig, gen: np.random.Generator) -> None:
    """Stage 2, X-ray: simulate the energy stack (off-centre, drifting), mirror it, map X; adds to `state`."""
    t0 = time.perf_counter()
    particle = state["particle"]
    offset = gen.uniform(-config.xray_offset_nm, config.xray_offset_nm, 2)
    energies = ptycho.energy_grid(fine_step_ev=config.fine_step_ev)
    stack, ptruth = ptycho.simulate_stack(particle, energies=energies, shape=tuple(config.xray_shape),
                                          pixel_size_nm=config.xray_pixel_nm, offset_nm=tuple(offset),
                                          drift_px=config.drift_px, rng=gen)
    if config.mirror:
        stack = stack.copy(data=stack.values[..., ::-1])
    xmap = xanes.map_lithium(stack)
    xmap.attrs.update(particle=particle.name)
    coords = _coords(stack["y"].values, stack["x"].values, "X-ray frame")
    to_particle = _xray_index_to_particle(config.xray_shape, config.xray_pixel_nm, offset, config.mirror)
    state.update(xanes=xmap, to_particle=to_particle,
                 xray_truth=_xray_truth(particle, ptruth, to_particle, config.mirror, coords, state["offsets"]))
    state["seconds"]["X"] = time.perf_counter() - t0


def _register_stage(state: dict, config: StudyConfig) -> ParticleMeasurement:
    """Stage 3: register the Li map (fixed) and the strain trace (moving, frame-invariant); exact truth too.

    Both instruments see the domain pattern; the masks give the moments initialisation.
    """
    t0 = time.perf_counter()
    particle, res, xmap = state["particle"], state["strain"], state["xanes"]
    fixed_mask = ndimage.binary_fill_holes(registration._largest_component(xmap["mask"].values))
    moving_mask = ndimage.binary_fill_holes(registration._largest_component(res["mask"].values))
    fixed = _fill_outside(xmap["X"], fixed_mask, "Li fraction X (registration image)")
    moving = _fill_outside(res["exx"] + res["eyy"], moving_mask, "strain trace exx + eyy (registration image)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", registration.RegistrationWarning)
        reg = registration.register(fixed, moving, fixed_mask=fixed_mask, moving_mask=moving_mask,
                                    transform=REGISTRATION_TRANSFORM, n_angles=REGISTRATION_ANGLES)
    scan_index = np.linalg.inv(np.array([[float(moving.y[1] - moving.y[0]), 0.0, float(moving.y[0])],
                                         [0.0, float(moving.x[1] - moving.x[0]), float(moving.x[0])],
                                         [0.0, 0.0, 1.0]]))
    reg_truth = registration.Registration.from_matrix(scan_index @ state["to_particle"], fixed, moving)
    seconds = dict(state["seconds"], registration=time.perf_counter() - t0)
    angle = -particle.crystal_angle_rad if config.mirror else particle.crystal_angle_rad
    return ParticleMeasurement(particle.name, particle, res, state["strain_truth"], xmap, state["xray_truth"],
                               fixed, moving, reg, reg_truth, float(angle), seconds)


def _fill_outside(image: xr.DataArray, mask: np.ndarray, long_name: str) -> xr.DataArray:
    """`image` inside `mask` (NaN gaps filled with the median), a constant below its range outside."""
    v = np.asarray(image.values, dtype=float)
    inside = v[mask & np.isfinite(v)]
    lo, hi = np.percentile(inside, [1, 99])
    filled = np.where(mask, np.where(np.isfinite(v), v, np.median(inside)), lo - 0.5 * (hi - lo))
    return image.copy(data=filled).assign_attrs(units=image.attrs.get("units", "1"), long_name=long_name)


def _nearest_fill(values: np.ndarray) -> np.ndarray:
    """NaN pixels take the value of the nearest finite pixel (so interpolation does not erode a mask)."""
    bad = ~np.isfinite(values)
    if not bad.any():
        return values.astype(float)
    idx = ndimage.distance_transform_edt(bad, return_distances=False, return_indices=True)
    return values[tuple(idx)].astype(float)


def _extend_edges(ds: xr.Dataset) -> xr.Dataset:
    """Extend the strain maps by one scan pixel beyond their mask (nearest value).

    Interpolating onto the finer X-ray grid would otherwise lose the outermost X-ray pixels of the
    particle, and the learning's free-edge model would then put a traction-free boundary inside
    the particle, which biases the slopes by about 2 %.
    """
    mask = np.asarray(ds["mask"].values, bool)
    ring = ndimage.binary_dilation(mask, iterations=1)
    out = ds.copy()
    for k in ("exx", "eyy", "exy", "theta"):
        filled = _nearest_fill(np.where(mask, ds[k].values, np.nan))
        out[k] = ds[k].copy(data=np.where(ring, filled, np.nan))
    out["mask"] = ds["mask"].copy(data=ring)
    return out


def _sample_on_moving(image: np.ndarray, reg: registration.Registration) -> np.ndarray:
    """Bilinear samples of a fixed-grid image at the moving grid's pixel centres (NaN outside)."""
    ny, nx = reg.moving_grid.shape
    rr, cc = np.meshgrid(np.arange(ny, dtype=float), np.arange(nx, dtype=float), indexing="ij")
    pts = registration._apply(np.linalg.inv(reg.matrix), np.stack([rr.ravel(), cc.ravel()], axis=1))
    out = ndimage.map_coordinates(image, pts.T, order=1, mode="constant", cval=np.nan)
    return out.reshape(ny, nx)


def _noise_gain(reg: registration.Registration, shape: tuple[int, int], mask: np.ndarray) -> float:
    """Factor by which the sample-and-interpolate operator scales white noise (median over `mask`).

    The operator is linear, so its effect on unit white noise is deterministic in distribution;
    eight realisations from a fixed seed estimate it to a few per cent.
    """
    gen = np.random.default_rng(0)
    sq = np.zeros(shape)
    for _ in range(8):
        sq += reg.warp(_sample_on_moving(gen.standard_normal(shape), reg)) ** 2
    vals = np.sqrt(sq / 8)[mask]
    vals = vals[np.isfinite(vals)]
    return float(np.median(vals)) if vals.size else 1.0


def assemble(measurement: ParticleMeasurement, *, replace_with_truth: tuple[str, ...] = ()) -> xr.Dataset:
    """The correlated stack of one particle, strain in the crystal frame (x ∥ a, y ∥ c).

    Parameters
    ----------
    measurement : ParticleMeasurement
    replace_with_truth : tuple of str
        Stages among :data:`STAGES` whose output is replaced by its truth: the
        strain by the relative truth at the scan positions, X by the twin's X on
        the X-ray grid (same mask), the registration by the exact mapping.

    Returns
    -------
    xarray.Dataset
        On the X-ray grid: ``X`` (in [0, 1], brought to the 4D-STEM
        resolution: sampled at the scan positions and interpolated back, the
        operator the strain went through), ``X_xray`` (X at the X-ray
        resolution), ``X_sigma`` (for ``X``), ``thickness``, ``exx`` (= e_aa),
        ``eyy`` (= e_cc), ``exy`` (= e_ac), ``theta``, ``dark_field`` and
        ``mask`` (the largest edge-connected piece of the joint mask).
    """
    if not isinstance(measurement, ParticleMeasurement):
        raise TypeError(f"measurement must be a ParticleMeasurement, got {type(measurement).__name__}")
    rwt = _check_stages(replace_with_truth)
    m = measurement
    s = m.strain_truth.assign(dark_field=m.strain["dark_field"]) if "strain" in rwt else m.strain
    s = _extend_edges(s[["exx", "eyy", "exy", "theta", "mask", "dark_field"]])
    x = m.xanes[["X", "X_sigma", "thickness", "mask"]]
    if "X" in rwt:
        ok = x["mask"].values & np.isfinite(m.xray_truth["X"].values)
        x = x.assign(X=x["X"].copy(data=np.where(ok, m.xray_truth["X"].values, np.nan)),
                     X_sigma=x["X_sigma"].copy(data=np.where(ok, 0.0, np.nan)),
                     mask=x["mask"].copy(data=ok))
    reg = m.registration_truth if "registration" in rwt else m.registration
    stack = correlate.correlate(s, x, reg)
    out = strain.to_crystal_frame(stack, m.crystal_angle_rad)
    keep = registration._largest_component(out["mask"].values)
    # the strain is sampled at the (coarser) scan positions and interpolated onto the X-ray grid;
    # X goes through the same operator so that both maps have the same resolution
    x_full = _nearest_fill(x["X"].values)
    matched = reg.warp(_sample_on_moving(x_full, reg))
    gain = _noise_gain(reg, x_full.shape, keep)
    out["X_xray"] = out["X"].clip(0.0, 1.0).where(keep).assign_attrs(
        units="1", long_name="Li fraction X at the X-ray resolution")
    out["X"] = out["X"].copy(data=np.clip(np.where(keep, matched, np.nan), 0.0, 1.0)).assign_attrs(
        units="1", long_name="Li fraction X at the 4D-STEM resolution")
    out["X_sigma"] = (out["X_sigma"] * gain).assign_attrs(units="1", long_name="standard deviation of X")
    keep &= np.isfinite(out["X"].values)
    for k in ("X", "X_xray", "X_sigma", "thickness", "exx", "eyy", "exy", "theta"):
        out[k] = out[k].where(keep)
    out["mask"] = out["mask"].copy(data=keep)
    out.attrs.update(particle=m.name, batch=m.particle.batch, replaced_with_truth=",".join(rwt) or "none",
                     crystal_angle_rad=m.crystal_angle_rad)
    return out


def reference_strain(offsets) -> np.ndarray:
    """Strain of the reference lattice relative to FePO4 from the fitted offsets of a free-edge fit.

    A Bragg-disk measurement reports ``e_rel``, the strain relative to the
    reference lattice; the law is relative to FePO4 (``eps0(0) = 0``). With
    ``1 + e = (1 + e_rel)(1 + e_ref)`` per axis, a fit of ``e_rel`` against the
    FePO4-based law returns the offset ``o = -e_ref / (1 + e_ref)``, so
    ``e_ref = -o / (1 + o)``.

    Parameters
    ----------
    offsets : array_like (3,)
        Fitted offsets ``(exx, eyy, exy)`` (crystal frame).

    Returns
    -------
    numpy.ndarray
        ``(3,)`` reference strain ``(e_aa, e_cc, e_ac)``.

    Examples
    --------
    >>> np.round(reference_strain([-0.025, 0.01, 0.002]), 5).tolist()
    [0.02564, -0.0099, -0.002]
    """
    o = _validate.array(offsets, name="offsets", shape=(3,), finite=True).astype(float)
    out = o.copy()
    out[:2] = -o[:2] / (1.0 + o[:2])
    out[2] = -o[2]
    return out


def to_fepo4(strain_ds: xr.Dataset, ref: np.ndarray) -> xr.Dataset:
    """Re-express crystal-frame strain measured relative to a reference lattice relative to FePO4.

    ``e = e_rel + e_ref + e_rel e_ref`` per axis (small shear: ``e_ac`` scales
    with the mean of the two axial factors).

    Examples
    --------
    >>> s = xr.Dataset({k: (("y", "x"), [[v]]) for k, v in dict(exx=0.0, eyy=0.01, exy=0.0).items()})
    >>> round(float(to_fepo4(s, np.array([0.02, 0.0, 0.0])).exx[0, 0]), 4)
    0.02
    """
    r = _validate.array(ref, name="ref", shape=(3,), finite=True).astype(float)
    out = strain_ds.copy()
    out["exx"] = strain_ds["exx"] * (1.0 + r[0]) + r[0]
    out["eyy"] = strain_ds["eyy"] * (1.0 + r[1]) + r[1]
    out["exy"] = strain_ds["exy"] * (1.0 + 0.5 * (r[0] + r[1])) + r[2]
    for k in ("exx", "eyy", "exy"):
        out[k].attrs = {**strain_ds[k].attrs, "units": "1",
                        "long_name": strain_ds[k].attrs.get("long_name", k) + " relative to FePO4"}
    out.attrs.update(reference_strain=r.tolist())
    return out


def _check_stages(stages) -> tuple[str, ...]:
    if isinstance(stages, str):
        stages = (stages,)
    stages = tuple(stages)
    for s in stages:
        _validate.choice(s, STAGES, name="replace_with_truth")
    return stages


def _crystal_truth(m: ParticleMeasurement, mask: np.ndarray) -> xr.Dataset:
    """The twin's truth on the X-ray grid in the crystal frame, NaN outside `mask`."""
    t = strain.to_crystal_frame(m.xray_truth, m.crystal_angle_rad)
    for k in ("X", "exx", "eyy", "exy", "theta"):
        t[k] = t[k].where(mask)
    t["mask"] = t["mask"].copy(data=mask)
    return t


# --- the study ----------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class StudyResult:
    """Everything one run of the study produced.

    Attributes
    ----------
    config : StudyConfig
    replace_with_truth : tuple of str
    measurements : dict of str to ParticleMeasurement
    stacks : dict of str to xarray.Dataset
        Correlated stacks (crystal frame) per particle.
    truth : dict of str to xarray.Dataset
        The twin's truth on the same grids and masks (crystal frame).
    model : chemomech.learning.EigenstrainModel
        Learned on ``config.train``.
    heldout : dict
        ``measured`` (strain relative to FePO4), ``predicted``, ``residual``,
        ``oracle`` (residual of the true law) Datasets, the RMS values
        ``strain_rms`` and ``noise_rms`` (away from the defect) and
        ``defect_rms`` (within one defect radius), ``defect_center_nm``.
    slopes : xarray.Dataset
        Slope table at ``SLOPE_X`` on dim ``component`` (aa, cc): ``learned``,
        ``low``, ``high``, ``truth``, ``literature``, ``rel_error``.
    sigma_X : float or None
        The X noise passed to SIMEX.
    reference_strain : dict of str to numpy.ndarray
        Strain ``(e_aa, e_cc, e_ac)`` of each particle's reference lattice
        relative to FePO4 (:func:`reference_strain`).
    strain_fepo4 : dict of str to xarray.Dataset
        The measured crystal-frame strain re-expressed relative to FePO4
        (:func:`to_fepo4`): what the law was fitted to.
    seconds : dict
        Wall time per stage.
    """

    config: StudyConfig
    replace_with_truth: tuple
    measurements: dict
    stacks: dict
    truth: dict
    model: learning.EigenstrainModel
    heldout: dict
    slopes: xr.Dataset
    sigma_X: float | None
    reference_strain: dict
    strain_fepo4: dict
    seconds: dict


def _stage_iter(items, desc: str, progress: bool):
    """`items`, wrapped in a tqdm bar named `desc` when `progress`."""
    if not progress:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="step", leave=True)


def _simulate_all(config: StudyConfig, progress: bool) -> dict:
    """The three measurement stages for every particle, stage by stage (one progress bar each)."""
    parts = specimen.particle_set(mesh_nrefs=config.mesh_nrefs)
    seeds = np.random.SeedSequence(config.seed).spawn(len(_NAMES))
    gens = {n: np.random.default_rng(seeds[_NAMES.index(n)]) for n in config.particles}
    states = {n: _measure_strain_stage(parts[n], config, gens[n])
              for n in _stage_iter(config.particles, "1/6 4D-STEM: simulate + map strain", progress)}
    for n in _stage_iter(config.particles, "2/6 X-ray: simulate + map X", progress):
        _measure_xray_stage(states[n], config, gens[n])
    return {n: _register_stage(states[n], config)
            for n in _stage_iter(config.particles, "3/6 register", progress)}


def run_study(config: StudyConfig, *, progress: bool = False, replace_with_truth: tuple[str, ...] = (),
              measurements: dict | None = None) -> StudyResult:
    """Run the whole study: simulate, measure, register, correlate, learn on P2–P5, test on P1.

    Parameters
    ----------
    config : StudyConfig
        Sizes and seed (:meth:`StudyConfig.quick` or :meth:`StudyConfig.full`).
    progress : bool
        tqdm progress bars, one per stage.
    replace_with_truth : tuple of str
        Stages (:data:`STAGES`) whose output is replaced by its truth.
    measurements : dict of str to ParticleMeasurement, optional
        Reuse the simulated measurements of an earlier run (same config).

    Returns
    -------
    StudyResult
    """
    if not isinstance(config, StudyConfig):
        raise TypeError(f"config must be a StudyConfig, got {type(config).__name__}")
    rwt = _check_stages(replace_with_truth)
    seconds = {}
    t0 = time.perf_counter()
    if measurements is None:
        measurements = _simulate_all(config, progress)
        for stage in STAGES:
            seconds[stage] = float(sum(m.seconds[stage] for m in measurements.values()))
    else:
        missing = [n for n in config.particles if n not in measurements]
        if missing:
            raise ValueError(f"measurements lacks particles {missing}; pass those of a run with the same config")
    t0 = time.perf_counter()
    stacks, truth = {}, {}
    for name in _stage_iter(config.particles, "4/6 correlate", progress):
        stacks[name] = assemble(measurements[name], replace_with_truth=rwt)
        truth[name] = _crystal_truth(measurements[name], stacks[name]["mask"].values)
    seconds["correlate"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    train = [stacks[n] for n in config.train]
    sig = None
    if "X" not in rwt:
        sig = float(np.nanmedian(np.concatenate([s["X_sigma"].values[s["mask"].values] for s in train])))
    seeds = np.random.SeedSequence([config.seed, 1]).generate_state(1)
    fit = dict(mask=[s["mask"].values for s in train], max_degree=config.max_degree, upsample=config.upsample)
    # a first, cheap fit gives each particle's reference lattice (its offsets); the strain is then
    # re-expressed relative to FePO4, the lattice the law is defined against, and fitted for good
    for step in _stage_iter(("reference", "law"), "5/6 learn on " + "+".join(config.train), progress):
        if step == "reference":
            first = learning.fit_eigenstrain([s[["exx", "eyy", "exy"]] for s in train], [s["X"] for s in train],
                                             n_boot=0, rng=int(seeds[0]), **fit)
            ref = {n: reference_strain(first.offsets[n]) for n in config.train}
            fepo4 = [to_fepo4(s[["exx", "eyy", "exy"]], ref[n]) for n, s in zip(config.train, train)]
        else:
            model = learning.fit_eigenstrain(fepo4, [s["X"] for s in train], sigma_X=sig, n_boot=config.n_boot,
                                             simex_n_sim=config.simex_n_sim, rng=int(seeds[0]), **fit)
    seconds["learning"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    for _ in _stage_iter((config.heldout,), f"6/6 test on {config.heldout}", progress):
        heldout = _test_heldout(model, measurements[config.heldout], stacks[config.heldout])
    ref[config.heldout] = heldout.pop("reference_strain")
    fepo4 = dict(zip(config.train, fepo4)) | {config.heldout: heldout["measured"]}
    seconds["heldout"] = time.perf_counter() - t0
    slopes = _slope_table(model, measurements[config.heldout].particle.law)
    return StudyResult(config, rwt, measurements, stacks, truth, model, heldout, slopes, sig, ref, fepo4,
                       seconds)


def _test_heldout(model, m: ParticleMeasurement, stack: xr.Dataset) -> dict:
    s = stack[["exx", "eyy", "exy"]]
    mask = stack["mask"].values
    first = model.residual(s, stack["X"], mask)
    ref = reference_strain(first.attrs["offsets"])
    s = to_fepo4(s, ref)
    predicted = model.predict_strain(stack["X"], mask)
    residual = model.residual(s, stack["X"], mask)
    oracle = learning.EigenstrainModel.from_law(m.particle.law, 1).residual(s, stack["X"], mask)
    out = {"predicted": predicted, "residual": residual, "oracle": oracle, "measured": s, "reference_strain": ref}
    d = m.particle.defect
    if d is not None:
        # the X-ray frame position of the defect (the inverse of the X-ray -> particle map)
        centre = _defect_centre_xray(m, d.center_nm)
        far = {"center_nm": centre, "radius_nm": _DEFECT_RADII * d.sigma_nm}
        out["defect_center_nm"] = centre
        out["strain_rms"] = learning.residual_rms(residual, **far)
        out["noise_rms"] = learning.residual_rms(oracle, **far)
        out["defect_rms"] = learning.residual_rms(residual, center_nm=centre, radius_nm=d.sigma_nm, inside=True)
    else:
        out["strain_rms"] = learning.residual_rms(residual)
        out["noise_rms"] = learning.residual_rms(oracle)
    return out


def _defect_centre_xray(m: ParticleMeasurement, centre_nm) -> tuple[float, float]:
    """Physical X-ray-frame (y, x) of a point given in particle coordinates."""
    grid = m.registration_truth.fixed_grid
    scan = m.registration_truth.moving_grid
    # particle nm = scan physical nm (the scan is in the particle frame)
    idx_scan = registration._apply(scan.to_index(), np.asarray([centre_nm], float))
    idx_fixed = registration._apply(np.linalg.inv(m.registration_truth.matrix), idx_scan)
    phys = registration._apply(grid.to_physical(), idx_fixed)[0]
    return float(phys[0]), float(phys[1])


def _slope_table(model, law) -> xr.Dataset:
    xs = [SLOPE_X]
    learned = model.derivative(xs)[0]
    lo, hi = model.interval(xs)
    truth = np.asarray(law.derivative(SLOPE_X), float)
    lit = np.asarray(specimen.vegard_law().derivative(SLOPE_X), float)
    comp = ("component", ["aa", "cc"], {"long_name": "crystal axis"})
    one = {"units": "1"}
    return xr.Dataset(
        {"learned": ("component", learned, {**one, "long_name": "learned d eps0/dX"}),
         "low": ("component", lo[0], {**one, "long_name": "95 % bootstrap interval, low"}),
         "high": ("component", hi[0], {**one, "long_name": "95 % bootstrap interval, high"}),
         "truth": ("component", truth, {**one, "long_name": "injected law (truth)"}),
         "literature": ("component", lit, {**one, "long_name": "Vegard's law (lattice parameters)"}),
         "rel_error": ("component", learned / truth - 1.0, {**one, "long_name": "learned / truth - 1"})},
        coords={"component": comp}, attrs={"X": SLOPE_X, "degree": model.degree})


# --- error budget ---------------------------------------------------------------------------


def error_budget(study: StudyConfig | StudyResult, *, progress: bool = False) -> xr.Dataset:
    """Where the final slope error comes from: each stage replaced by its truth in turn.

    Parameters
    ----------
    study : StudyResult or StudyConfig
        A finished run (its simulated measurements are reused; nothing is
        re-simulated), or a configuration to run first.
    progress : bool
        Progress bars.

    Returns
    -------
    xarray.Dataset
        On dim ``variant`` (``measured``, ``<stage> -> truth`` per stage, and
        ``all -> truth``, the floor set by the method itself):
        ``slope`` (variant, component), ``rel_error``, and ``contribution``
        (variant, component): the signed part of the final slope error that
        the stage causes, ``rel_error(measured) - rel_error(variant)``.
    """
    if isinstance(study, StudyConfig):
        study = run_study(study, progress=progress)
    if not isinstance(study, StudyResult):
        raise TypeError(f"study must be a StudyResult or StudyConfig, got {type(study).__name__}")
    variants = {"measured": study}
    for stages in _stage_iter([(s,) for s in STAGES] + [STAGES], "error budget: stages -> truth", progress):
        name = f"{stages[0]} -> truth" if len(stages) == 1 else "all -> truth"
        variants[name] = run_study(study.config, replace_with_truth=stages, measurements=study.measurements)
    slope = np.stack([v.slopes["learned"].values for v in variants.values()])
    rel = np.stack([v.slopes["rel_error"].values for v in variants.values()])
    contrib = rel[0][None] - rel
    names = list(variants)
    one = {"units": "1"}
    return xr.Dataset(
        {"slope": (("variant", "component"), slope, {**one, "long_name": f"learned d eps0/dX at X = {SLOPE_X}"}),
         "rel_error": (("variant", "component"), rel, {**one, "long_name": "learned / truth - 1"}),
         "contribution": (("variant", "component"), contrib,
                          {**one, "long_name": "rel_error(measured) - rel_error(variant)"}),
         "degree": ("variant", [v.model.degree for v in variants.values()], {**one, "long_name": "degree"}),
         "seconds": ("variant", [sum(v.seconds.values()) for v in variants.values()],
                     {"units": "s", "long_name": "wall time (analysis only for the variants)"})},
        coords={"variant": ("variant", names, {"long_name": "stage replaced by its truth"}),
                "component": ("component", ["aa", "cc"], {"long_name": "crystal axis"})})


# --- outputs --------------------------------------------------------------------------------


def summary_dict(result: StudyResult, budget: xr.Dataset | None = None, *, seconds: float | None = None) -> dict:
    """The ``summary.json`` content: slopes, held-out test, stage budget, timings (plain JSON types)."""
    if not isinstance(result, StudyResult):
        raise TypeError(f"result must be a StudyResult, got {type(result).__name__}")
    sl = result.slopes

    def pair(var):
        return {c: float(sl[var].sel(component=c)) for c in ("aa", "cc")}

    h = result.heldout
    out = {
        "slopes": {"X": SLOPE_X, "learned": pair("learned"), "truth": pair("truth"), "literature": pair("literature"),
                   "interval": {"level": 0.95, "low": pair("low"), "high": pair("high")},
                   "rel_error": pair("rel_error"), "degree": int(result.model.degree),
                   "sigma_X": None if result.sigma_X is None else float(result.sigma_X)},
        "heldout": {"particle": result.config.heldout, "strain_rms": float(h["strain_rms"]),
                    "noise_rms": float(h["noise_rms"])},
        "registration": {n: {"mirrored": bool(m.registration.metrics.get("mirrored", False)),
                             "tre_px": m.tre_px(), "dice": float(m.registration.metrics.get("dice", np.nan))}
                         for n, m in result.measurements.items()},
        "config": result.config.to_dict(),
        "seconds": {k: float(v) for k, v in result.seconds.items()},
    }
    if "defect_rms" in h:
        out["heldout"]["defect_rms"] = float(h["defect_rms"])
    if budget is not None:
        out["stages"] = {
            str(v): {"slope": {c: float(budget["slope"].sel(variant=v, component=c)) for c in ("aa", "cc")},
                     "rel_error": {c: float(budget["rel_error"].sel(variant=v, component=c)) for c in ("aa", "cc")},
                     "contribution": {c: float(budget["contribution"].sel(variant=v, component=c))
                                      for c in ("aa", "cc")}}
            for v in budget["variant"].values}
    if seconds is not None:
        out["seconds"]["total"] = float(seconds)
    return out


def _save_figure(fig, folder: Path, name: str) -> list[str]:
    files = []
    for ext in ("png", "pdf"):
        fig.savefig(folder / f"{name}.{ext}", dpi=150)
        files.append(f"{name}.{ext}")
    return files


def write_outputs(result: StudyResult, out_dir: str | os.PathLike, *, budget: xr.Dataset | None = None,
                  seconds: float | None = None, overwrite: bool = False) -> Path:
    """Write the figures (PNG and PDF), the correlated stacks (NetCDF) and ``summary.json``.

    Everything goes to a temporary folder next to `out_dir`, which is moved into
    place only when complete; on any error the temporary folder is removed and
    `out_dir` is left as it was.

    Parameters
    ----------
    result : StudyResult
    out_dir : path
        Output folder; must not exist unless `overwrite`.
    budget : xarray.Dataset, optional
        From :func:`error_budget` (adds ``stages`` to the summary and a figure).
    seconds : float, optional
        Total wall time to record.
    overwrite : bool
        Replace an existing `out_dir`.

    Returns
    -------
    pathlib.Path
        The output folder.
    """
    if not isinstance(result, StudyResult):
        raise TypeError(f"result must be a StudyResult, got {type(result).__name__}")
    out = Path(out_dir).expanduser().resolve()
    if out.exists() and not overwrite:
        raise FileExistsError(f"out_dir {str(out)!r} exists; choose a new folder or allow overwriting")
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"out_dir {str(out)!r} exists and is not a folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        from . import plotting

        figs = {
            "fig1_gallery": plotting.study_gallery(result),
            "fig2_correlated_maps": plotting.study_correlated_maps(result),
            "fig3_strain_vs_x": plotting.study_strain_vs_x(result),
            "fig4_heldout": plotting.study_heldout(result),
            "fig5_slope_table": plotting.study_slope_table(result, budget=budget),
        }
        files = []
        for name, fig in figs.items():
            files += _save_figure(fig, tmp, name)
        (tmp / "stacks").mkdir()
        for name, stack in result.stacks.items():
            correlate.save_stack(stack, tmp / "stacks" / f"{name}_stack.nc")
            files.append(f"stacks/{name}_stack.nc")
        summary = summary_dict(result, budget, seconds=seconds)
        summary["files"] = sorted(files) + ["summary.json"]
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
