"""The whole correlative study, end to end, on the digital twin: orchestration only.

For every twin particle P1–P5 (:func:`chemomech.twin.particle_set`) the study
runs the same public calls that a user runs on their own data:

1. 4D-STEM: :func:`chemomech.twin.stem4d.simulate_particle`, then
   :func:`chemomech.strain.measure_strain` and
   :func:`chemomech.strain.virtual_images`;
2. X-ray: :func:`chemomech.twin.ptycho.simulate_stack` (another pixel size and
   field of view, the particle off-centre, the image *mirrored*, drifting
   from energy to energy), then :func:`chemomech.xanes.map_lithium`;
3. registration of the Li map (fixed) and the strain trace (moving), both
   prepared by :func:`chemomech.registration.registration_image`, with
   :func:`chemomech.registration.register`;
4. the correlated stack in the crystal frame with the strain extended to the
   particle edge and X brought to the strain's resolution
   (:func:`chemomech.correlate.correlate`);
5. the law learned on the training particles from the *measured* maps, with
   the strain re-referenced to FePO4 and SIMEX for the noise of X
   (``fit_eigenstrain(..., reference="fepo4", sigma_X=...)``), and tested on
   the held-out particle (:func:`chemomech.evaluate.heldout_test`).

Every stage also has its truth, built from how the data were simulated (never
from the analysis): the strain relative to the same reference lattice
(:func:`chemomech.twin.stem4d.relative_truth`), the twin's X on the X-ray grid,
and the exact X-ray → scan pixel mapping. :func:`run_study` can replace any
stage's output by its truth (``replace_with_truth``) while reusing the same
simulated measurements, which is how :func:`error_budget` attributes the final
slope error to the stages. Two more comparisons reuse the measurements in the
same way: :func:`assembly_ablation` (each assembly step of step 4 left out in
turn) and :func:`dark_field_registration` (the featureless dark field
registered instead of the trace in step 3). ``python -m chemomech reproduce`` runs it and writes
the figures, stacks and ``summary.json``.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import xarray as xr

from . import _validate, correlate, evaluate, geometry, learning, registration, strain, twin, xanes
from .twin import ptycho, stem4d

__all__ = [
    "STAGES",
    "SLOPE_X",
    "StudyConfig",
    "ParticleMeasurement",
    "StudyResult",
    "measure_particle",
    "assemble",
    "run_study",
    "error_budget",
    "assembly_ablation",
    "ASSEMBLY_OPTIONS",
    "dark_field_registration",
    "summary_dict",
]

#: Stages whose output can be replaced by its truth.
STAGES = ("strain", "X", "registration")
#: Li fraction at which the learned slopes d eps0/dX are reported.
SLOPE_X = 0.5
#: Assembly steps of :func:`chemomech.correlate.correlate` that :func:`assembly_ablation` leaves out in turn
#: (each an option that is True by default).
ASSEMBLY_OPTIONS = ("match_resolution", "strain_kernel", "extend_edges")
#: Particles of the named twin set (twin.particle_set).
_NAMES = ("P1", "P2", "P3", "P4", "P5")
#: Virtual dark-field detector: everything outside this many disk radii.
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
    twin : {"ideal", "realistic"}
        ``"ideal"``: uniform Bragg disks and a smoothly drifting X-ray stack.
        ``"realistic"``: dynamical (multislice) disk contents with a bent
        particle (:mod:`chemomech.twin.stem4d`, ``disks="dynamical"``) and an
        X-ray stack with independent per-frame offsets, an energy-calibration
        offset, flux jumps and reconstruction artefacts
        (:func:`chemomech.twin.ptycho.simulate_stack`, ``preset="realistic"``).
    label : str
        Name of the preset, reported in the outputs.
    stiffness_uncertainty : float
        Relative uncertainty of each stiffness constant for the stiffness term
        of the intervals (real particles do not share the model's stiffness;
        ``fit_eigenstrain(stiffness_uncertainty=...)``); 0: no term.
    registration_sd_px : float
        Expected registration error, X-ray pixels (RMS displacement), for the
        registration term of the intervals: the law is refitted with
        registrations perturbed by random affines of this size. 0.5 px is the
        accuracy the registration chapter accepts (mean TRE <= 0.5 px). 0: no term.
    n_perturb : int
        Refits per perturbation term.
    truth_stiffness : {"average", "composition"}
        Stiffness the twin's truth strain is computed with
        (:class:`chemomech.twin.Particle` ``stiffness``): the phase-averaged
        stiffness the learning also assumes, or one that follows X point by point
        (``elasticity.stiffness_ac(X)``), which the learning does not know — as
        for a real particle. The stiffness term of the intervals
        (`stiffness_uncertainty`) is what should cover the difference. Off in
        every preset: on the realistic twin the a-slope intervals covered the
        truth for only 8 of 10 seeds with it (benchmarks/study_coverage.py).
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
    simex_n_sim: int = 4
    mesh_nrefs: int = 6
    upsample: int = 1
    twin: str = "ideal"
    label: str = "quick"
    stiffness_uncertainty: float = 0.1
    registration_sd_px: float = 0.5
    n_perturb: int = 6
    truth_stiffness: str = "average"

    def __post_init__(self):
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {self.seed!r}")
        for name in self.train + (self.heldout,):
            _validate.choice(name, _NAMES, name="particle name")
        _validate.choice(self.twin, ("ideal", "realistic"), name="twin")
        _validate.choice(self.truth_stiffness, ("average", "composition"), name="truth_stiffness")
        if self.heldout in self.train or len(set(self.train)) != len(self.train) or len(self.train) < 2:
            raise ValueError(f"train must be at least two distinct particles without the held-out one "
                             f"{self.heldout!r}, got {self.train!r}")
        for name in ("scan_shape", "detector_shape", "xray_shape"):
            v = getattr(self, name)
            if len(v) != 2 or not all(isinstance(n, (int, np.integer)) and n >= 8 for n in v):
                raise ValueError(f"{name} must be two ints >= 8, got {v!r}")
        for name in ("dose", "xray_pixel_nm", "fine_step_ev"):
            _validate.positive(getattr(self, name), name=name)
        for name in ("xray_offset_nm", "drift_px", "stiffness_uncertainty", "registration_sd_px"):
            _validate.positive(getattr(self, name), name=name, allow_zero=True)
        for name, lo in (("max_degree", 1), ("n_boot", 2), ("simex_n_sim", 1), ("mesh_nrefs", 3),
                         ("upsample", 1), ("n_perturb", 2)):
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
    def realistic(cls, seed: int = 2022) -> StudyConfig:
        """The quick preset on the realistic twin (dynamical disks, per-frame X-ray offsets, artefacts)."""
        return cls(seed=seed, twin="realistic", label="quick-realistic")

    @classmethod
    def full(cls, seed: int = 2022) -> StudyConfig:
        """Full size: finer scans, larger detector, 0.25 eV steps, more bootstrap."""
        return cls(seed=seed, scan_shape=(48, 56), detector_shape=(128, 128), xray_shape=(96, 108),
                   xray_pixel_nm=4.5, fine_step_ev=0.25, max_degree=5, n_boot=200, simex_n_sim=8,
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
    particle : chemomech.twin.Particle
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
        measured strain (moving), made by :func:`chemomech.registration.registration_image`.
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
    particle: twin.Particle
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

    def tre_px(self, estimate: registration.Registration | None = None) -> float:
        """Mean target registration error over the X-ray particle mask, X-ray pixels.

        Of the study's registration, or of `estimate` (same grids) when given.
        """
        pts = np.argwhere(np.asarray(self.xray_truth["mask"].values, bool)).astype(float)
        reg = self.registration if estimate is None else estimate
        return float(np.mean(evaluate.registration_tre(reg, self.registration_truth, pts)))


def measure_particle(particle: twin.Particle, config: StudyConfig, *,
                     rng: np.random.Generator | int | None = None) -> ParticleMeasurement:
    """Simulate both measurements of one particle and run the three measurement stages.

    Parameters
    ----------
    particle : chemomech.twin.Particle
    config : StudyConfig
    rng : numpy.random.Generator or int, optional
        Source of every random draw for this particle.

    Returns
    -------
    ParticleMeasurement

    Examples
    --------
    >>> cfg = StudyConfig(scan_shape=(18, 20), detector_shape=(96, 96), xray_shape=(40, 44),
    ...                   xray_pixel_nm=10.0, fine_step_ev=1.0)
    >>> p = twin.make_particle("demo", batch="biphasic", seed=2, mesh_nrefs=4)
    >>> m = measure_particle(p, cfg, rng=0)
    >>> m.registration.metrics["mirrored"], m.tre_px() < 1.0
    (True, True)
    """
    if not isinstance(particle, twin.Particle):
        raise TypeError(f"particle must be a chemomech.twin.Particle, got {type(particle).__name__}")
    if not isinstance(config, StudyConfig):
        raise TypeError(f"config must be a StudyConfig, got {type(config).__name__}")
    gen = _validate.rng(rng)
    state = _measure_strain_stage(particle, config, gen)
    _measure_xray_stage(state, config, gen)
    return _register_stage(state, config)


def _measure_strain_stage(particle: twin.Particle, config: StudyConfig, gen: np.random.Generator) -> dict:
    """Stage 1, 4D-STEM: simulate the scan, map strain and the virtual dark field; the relative truth."""
    t0 = time.perf_counter()
    setup = stem4d.DiffractionSetup(detector_shape=tuple(config.detector_shape))
    sim = stem4d.simulate_particle(particle, scan_shape=tuple(config.scan_shape), setup=setup,
                                   dose=config.dose, disks="dynamical" if config.twin == "realistic" else "uniform",
                                   rng=gen)
    res = strain.measure_strain(sim.datacube)
    virt = strain.virtual_images(sim.datacube, radius_px=_BF_RADIUS_FACTOR * setup.disk_radius_px,
                                 centre=res.attrs["origin_mean_ky_kx_px"])
    res["dark_field"] = virt["dark_field"].assign_attrs(units="counts", long_name="virtual annular dark field")
    res.attrs.update(particle=particle.name, step_nm=float(sim.attrs["step_nm"]))
    rel = stem4d.relative_truth(sim, res["mask"].values)
    rel["mask"] = res["mask"].copy()
    rel.attrs.update(particle=particle.name)
    # the offset (particle frame) that turns the twin's strain into strain relative to the measurement's
    # reference lattice (nearly uniform; relative_truth is the exact form), for the truth on the X-ray grid
    offsets = {k: float(np.nanmedian((sim[k] - rel[k]).values[res["mask"].values]))
               for k in ("exx", "eyy", "exy", "theta")}
    return {"particle": particle, "strain": res, "strain_truth": rel, "offsets": offsets,
            "seconds": {"strain": time.perf_counter() - t0}}


def _measure_xray_stage(state: dict, config: StudyConfig, gen: np.random.Generator) -> None:
    """Stage 2, X-ray: simulate the (mirrored, off-centre, drifting) energy stack and map X; adds to `state`."""
    t0 = time.perf_counter()
    particle = state["particle"]
    offset = gen.uniform(-config.xray_offset_nm, config.xray_offset_nm, 2)
    stack, ptruth = ptycho.simulate_stack(particle, energies=ptycho.energy_grid(fine_step_ev=config.fine_step_ev),
                                          shape=tuple(config.xray_shape), pixel_size_nm=config.xray_pixel_nm,
                                          offset_nm=tuple(offset), drift_px=config.drift_px, mirror=config.mirror,
                                          preset=config.twin, rng=gen)
    xmap = xanes.map_lithium(stack)
    xmap.attrs.update(particle=particle.name)
    to_particle = np.asarray(ptruth["index_to_particle"].values)
    state.update(xanes=xmap, to_particle=to_particle,
                 xray_truth=_xray_truth(particle, ptruth, to_particle, config.mirror, state["offsets"]))
    state["seconds"]["X"] = time.perf_counter() - t0


def _xray_truth(particle: twin.Particle, ptruth: xr.Dataset, to_particle: np.ndarray, mirror: bool,
                offsets: dict) -> xr.Dataset:
    """Truth on the X-ray grid: the simulator's X/thickness/mask and the twin strain there (X-ray frame).

    The strain is made relative to the measurement's reference by subtracting `offsets` (particle frame).
    """
    ny, nx = ptruth["X"].shape
    rr, cc = np.meshgrid(np.arange(ny, dtype=float), np.arange(nx, dtype=float), indexing="ij")
    pts = geometry.apply_affine(to_particle, np.stack([rr.ravel(), cc.ravel()], axis=1))
    s = particle.sample(pts[:, 0].reshape(ny, nx), pts[:, 1].reshape(ny, nx))
    rel = [s[k] - offsets[k] for k in ("exx", "eyy", "exy", "theta")]
    # X-ray-frame directions in particle-frame components: a mirror flips x
    exx, eyy, exy, theta = geometry.rotate_strain(*rel, np.diag([1.0, -1.0]) if mirror else np.eye(2))
    out = ptruth[["X", "thickness", "mask"]].drop_vars(["energy", "axis"], errors="ignore")
    out.attrs = {"particle": particle.name, "frame": "X-ray image"}
    for k, v in {"exx": exx, "eyy": eyy, "exy": exy, "theta": theta}.items():
        out[k] = (("y", "x"), v, {"units": "rad" if k == "theta" else "1", "long_name": f"{k} (truth, X-ray frame)"})
    return out


def _register_stage(state: dict, config: StudyConfig) -> ParticleMeasurement:
    """Stage 3: register the Li map (fixed) and the strain trace (moving, frame-invariant); exact truth too."""
    t0 = time.perf_counter()
    particle, res, xmap = state["particle"], state["strain"], state["xanes"]
    reg, fixed, moving = _register_onto_x(xmap, res["exx"] + res["eyy"], res["mask"].values,
                                          "strain trace exx + eyy (registration image)")
    dy, dx = float(moving.y[1] - moving.y[0]), float(moving.x[1] - moving.x[0])
    scan_index = np.linalg.inv(np.array([[dy, 0.0, float(moving.y[0])], [0.0, dx, float(moving.x[0])],
                                         [0.0, 0.0, 1.0]]))
    reg_truth = registration.Registration.from_matrix(scan_index @ state["to_particle"], fixed, moving)
    seconds = dict(state["seconds"], registration=time.perf_counter() - t0)
    angle = -particle.crystal_angle_rad if config.mirror else particle.crystal_angle_rad
    return ParticleMeasurement(particle.name, particle, res, state["strain_truth"], xmap, state["xray_truth"],
                               fixed, moving, reg, reg_truth, float(angle), seconds)


def _register_onto_x(xmap: xr.Dataset, image: xr.DataArray, mask: np.ndarray, long_name: str) -> tuple:
    """The study's registration of a 4D-STEM image (moving) onto the Li map (fixed): (Registration, fixed, moving)."""
    fixed, fixed_mask = registration.registration_image(xmap["X"], xmap["mask"].values,
                                                        long_name="Li fraction X (registration image)")
    moving, moving_mask = registration.registration_image(image, mask, long_name=long_name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", registration.RegistrationWarning)
        reg = registration.register(fixed, moving, fixed_mask=fixed_mask, moving_mask=moving_mask,
                                    transform=REGISTRATION_TRANSFORM, n_angles=REGISTRATION_ANGLES)
    return reg, fixed, moving


def assemble(measurement: ParticleMeasurement, *, replace_with_truth: tuple[str, ...] = (),
             assembly: dict | None = None) -> xr.Dataset:
    """The correlated stack of one particle, strain in the crystal frame (x ∥ a, y ∥ c).

    Parameters
    ----------
    measurement : ParticleMeasurement
    replace_with_truth : tuple of str
        Stages among :data:`STAGES` whose output is replaced by its truth: the
        strain by the relative truth at the scan positions, X by the twin's X on
        the X-ray grid (same mask), the registration by the exact mapping.
    assembly : dict, optional
        Options of :func:`chemomech.correlate.correlate` among
        :data:`ASSEMBLY_OPTIONS` (bools); default: all steps.

    Returns
    -------
    xarray.Dataset
        :func:`chemomech.correlate.correlate` with those assembly steps and the
        crystal angle of the particle.
    """
    if not isinstance(measurement, ParticleMeasurement):
        raise TypeError(f"measurement must be a ParticleMeasurement, got {type(measurement).__name__}")
    rwt = _check_stages(replace_with_truth)
    m = measurement
    reg = _registration_used(m, rwt)
    return _assembled(m, rwt, reg, _check_assembly(assembly))


def _registration_used(m: ParticleMeasurement, rwt: tuple[str, ...]) -> registration.Registration:
    return m.registration_truth if "registration" in rwt else m.registration


def _xanes_used(m: ParticleMeasurement, rwt: tuple[str, ...]) -> xr.Dataset:
    x = m.xanes[["X", "X_sigma", "thickness", "mask"]]
    if "X" in rwt:
        ok = x["mask"].values & np.isfinite(m.xray_truth["X"].values)
        x = x.assign(X=x["X"].copy(data=np.where(ok, m.xray_truth["X"].values, np.nan)),
                     X_sigma=x["X_sigma"].copy(data=np.where(ok, 0.0, np.nan)),
                     mask=x["mask"].copy(data=ok))
    return x


def _assembled(m: ParticleMeasurement, rwt: tuple[str, ...], reg: registration.Registration,
               assembly: dict) -> xr.Dataset:
    """The stack of `m` with the given registration and assembly options (see :func:`assemble`)."""
    s = m.strain_truth.assign(dark_field=m.strain["dark_field"]) if "strain" in rwt else m.strain
    x = _xanes_used(m, rwt)
    out = correlate.correlate(s[["exx", "eyy", "exy", "theta", "mask", "dark_field"]], x, reg,
                              crystal_angle_rad=m.crystal_angle_rad, **assembly)
    out.attrs.update(particle=m.name, batch=m.particle.batch, replaced_with_truth=",".join(rwt) or "none",
                     crystal_angle_rad=m.crystal_angle_rad)
    return out


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
        Learned on ``config.train`` (``reference="fepo4"``).
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
        relative to FePO4 (:func:`chemomech.learning.reference_strain`).
    strain_fepo4 : dict of str to xarray.Dataset
        The measured crystal-frame strain re-expressed relative to FePO4
        (:func:`chemomech.strain.change_reference`): what the law was fitted to.
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


#: The step being run: ``{"stage": progress-bar label, "item": particle (or other item)}``, both None between
#: stages. Set by every stage loop so that a failure can be reported with where it happened (the CLI does).
current_step: dict = {"stage": None, "item": None}


def _stage_iter(items, desc: str, progress: bool):
    """`items`, wrapped in a tqdm bar named `desc` when `progress`; records the step in :data:`current_step`."""
    if progress:
        from tqdm.auto import tqdm

        items = tqdm(items, desc=desc, unit="step", leave=True)
    for item in items:
        current_step.update(stage=desc, item=item)
        yield item
    current_step.update(stage=None, item=None)


def _particles(config: StudyConfig) -> dict:
    """The twin particles P1–P5, their truth computed with ``config.truth_stiffness``."""
    parts = twin.particle_set(mesh_nrefs=config.mesh_nrefs)
    if config.truth_stiffness != "average":
        parts = {n: dataclasses.replace(p, stiffness=config.truth_stiffness) for n, p in parts.items()}
    return parts


def _simulate_all(config: StudyConfig, progress: bool) -> dict:
    """The three measurement stages for every particle, stage by stage (one progress bar each)."""
    parts = _particles(config)
    seeds = np.random.SeedSequence(config.seed).spawn(len(_NAMES))
    gens = {n: np.random.default_rng(seeds[_NAMES.index(n)]) for n in config.particles}
    states = {n: _measure_strain_stage(parts[n], config, gens[n])
              for n in _stage_iter(config.particles, "1/6 4D-STEM: simulate + map strain", progress)}
    for n in _stage_iter(config.particles, "2/6 X-ray: simulate + map X", progress):
        _measure_xray_stage(states[n], config, gens[n])
    return {n: _register_stage(states[n], config)
            for n in _stage_iter(config.particles, "3/6 register", progress)}


def run_study(config: StudyConfig, *, progress: bool = False, replace_with_truth: tuple[str, ...] = (),
              measurements: dict | None = None, degree: int | None = None,
              assembly: dict | None = None) -> StudyResult:
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
    degree : int, optional
        Polynomial degree of the law, held fixed (no cross-validation); default:
        chosen by cross-validation up to ``config.max_degree``.
        :func:`error_budget` passes the degree the measured run chose.
    assembly : dict, optional
        Assembly options (:func:`assemble`); default: all steps.

    Returns
    -------
    StudyResult
    """
    if not isinstance(config, StudyConfig):
        raise TypeError(f"config must be a StudyConfig, got {type(config).__name__}")
    rwt = _check_stages(replace_with_truth)
    assembly = _check_assembly(assembly)
    if degree is not None and (isinstance(degree, bool) or not isinstance(degree, (int, np.integer))
                               or not 1 <= degree <= config.max_degree):
        raise ValueError(f"degree must be None or an int in 1..{config.max_degree} (config.max_degree), "
                         f"got {degree!r}")
    seconds = {}
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
        stacks[name] = assemble(measurements[name], replace_with_truth=rwt, assembly=assembly)
        truth[name] = _crystal_truth(measurements[name], stacks[name]["mask"].values)
    seconds["correlate"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    train = [stacks[n] for n in config.train]
    sig = None
    if "X" not in rwt:
        sig = float(np.nanmedian(np.concatenate([s["X_sigma"].values[s["mask"].values] for s in train])))
    seed = int(np.random.SeedSequence([config.seed, 1]).generate_state(1)[0])
    noise = None
    if "X" not in rwt:  # SIMEX with the X noise as the stacks carry it: X-ray noise through the resampling
        noise = [correlate.x_noise_sampler(_registration_used(measurements[n], rwt), measurements[n].xanes["X_sigma"])
                 for n in config.train]
    for _ in _stage_iter(("law",), "5/6 learn on " + "+".join(config.train), progress):
        model = learning.fit_eigenstrain([s[["exx", "eyy", "exy"]] for s in train], [s["X"] for s in train],
                                         mask=[s["mask"].values for s in train], reference="fepo4", sigma_X=sig,
                                         X_noise=noise, degree=None if degree is None else int(degree),
                                         max_degree=config.max_degree, upsample=config.upsample,
                                         n_boot=config.n_boot, simex_n_sim=config.simex_n_sim,
                                         stiffness_uncertainty=config.stiffness_uncertainty,
                                         n_perturb=config.n_perturb, rng=seed)
    seconds["learning"] = time.perf_counter() - t0
    if config.registration_sd_px > 0 and "registration" not in rwt:
        t0 = time.perf_counter()
        model = _registration_term(model, config, measurements, rwt, seed, assembly)
        seconds["registration_term"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    held = measurements[config.heldout]
    hstack = stacks[config.heldout]
    defect = held.particle.defect
    extra = {}
    if defect is not None:
        extra = dict(defect_center_nm=_defect_centre_xray(held, defect.center_nm), defect_radius_nm=defect.sigma_nm,
                     exclusion_radius_nm=_DEFECT_RADII * defect.sigma_nm)
    for _ in _stage_iter((config.heldout,), f"6/6 test on {config.heldout}", progress):
        heldout = evaluate.heldout_test(model, hstack[["exx", "eyy", "exy"]], hstack["X"], hstack["mask"].values,
                                        held.particle.law, **extra)
    ref = dict(model.reference_strain) | {config.heldout: heldout.pop("reference_strain")}
    fepo4 = {n: strain.change_reference(s[["exx", "eyy", "exy"]], model.reference_strain[n])
             for n, s in zip(config.train, train)} | {config.heldout: heldout["measured"]}
    seconds["heldout"] = time.perf_counter() - t0
    slopes = evaluate.slope_table(model, held.particle.law, at_X=SLOPE_X)
    return StudyResult(config, rwt, measurements, stacks, truth, model, heldout, slopes, sig, ref, fepo4,
                       seconds)


def _registration_term(model: learning.EigenstrainModel, config: StudyConfig, measurements: dict,
                       rwt: tuple[str, ...], seed: int, assembly: dict) -> learning.EigenstrainModel:
    """Widen the model's intervals by the slope changes that registration errors of the expected size cause.

    The law is refitted (selected degree, no SIMEX, no bootstrap, FePO4 reference)
    ``config.n_perturb`` times with every training particle's registration
    composed with a random affine of RMS size ``config.registration_sd_px``, and
    once unperturbed; the coefficient differences are added to the bootstrap
    replicates (:meth:`chemomech.learning.EigenstrainModel.add_spread`).
    """
    gen = np.random.default_rng(np.random.SeedSequence([config.seed, 2]))

    def refit(stacks):
        return learning.fit_eigenstrain([s[["exx", "eyy", "exy"]] for s in stacks], [s["X"] for s in stacks],
                                        mask=[s["mask"].values for s in stacks], reference="fepo4",
                                        degree=model.degree, upsample=config.upsample, n_boot=0, rng=seed).coef

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", learning.DataWarning)
        regs = {n: _registration_used(measurements[n], rwt) for n in config.train}
        base = refit([_assembled(measurements[n], rwt, regs[n], assembly) for n in config.train])
        deltas = []
        for _ in range(config.n_perturb):
            stacks = [_assembled(measurements[n], rwt,
                                 _perturbed_registration(regs[n], measurements[n].xanes["mask"].values,
                                                         config.registration_sd_px, gen), assembly)
                      for n in config.train]
            deltas.append(refit(stacks) - base)
    return model.add_spread(np.array(deltas),
                            term=f"registration ±{config.registration_sd_px:g} px RMS ({config.n_perturb} refits)")


def _perturbed_registration(reg: registration.Registration, mask: np.ndarray, sd_px: float,
                            gen: np.random.Generator) -> registration.Registration:
    """`reg` composed with a random affine on the fixed grid: RMS displacement `sd_px` over `mask`.

    The affine is :func:`chemomech.geometry.random_affine`.
    """
    return dataclasses.replace(reg, matrix=reg.matrix @ geometry.random_affine(mask, sd_px, gen))


def _defect_centre_xray(m: ParticleMeasurement, centre_nm) -> tuple[float, float]:
    """Physical X-ray-frame (y, x) of a point given in particle coordinates."""
    grid, scan = m.registration_truth.fixed_grid, m.registration_truth.moving_grid
    # particle nm = scan physical nm (the scan is in the particle frame)
    idx_scan = geometry.apply_affine(scan.to_index(), np.asarray([centre_nm], float))
    idx_fixed = geometry.apply_affine(np.linalg.inv(m.registration_truth.matrix), idx_scan)
    phys = geometry.apply_affine(grid.to_physical(), idx_fixed)[0]
    return float(phys[0]), float(phys[1])


# --- error budget ---------------------------------------------------------------------------


def error_budget(study: StudyConfig | StudyResult, *, progress: bool = False) -> xr.Dataset:
    """Where the final slope error comes from: each stage replaced by its truth in turn.

    Every variant is fitted with the polynomial degree the measured run chose
    (held fixed, not chosen again by cross-validation). A budget asks what the
    *same* estimator gives when one stage is perfect; letting each variant pick
    its own degree would mix the stage's cost with a change of model. The
    degree rule is a step function of noisy cross-validation errors (four
    leave-one-particle-out folds): a small change of data can flip it, and a
    cubic's slope at X = 0.5 differs from a line's by far more than any stage
    costs (on the quick study, seed 2022, the exact-registration variant chose
    degree 3 and was 15–17 % off, against about 1 % at degree 1).

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
        variants[name] = _refit(study, replace_with_truth=stages)
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
         "degree": ("variant", [v.model.degree for v in variants.values()],
                    {**one, "long_name": "polynomial degree (the measured run's, held fixed)"}),
         "seconds": ("variant", [sum(v.seconds.values()) for v in variants.values()],
                     {"units": "s", "long_name": "wall time (analysis only for the variants)"})},
        coords={"variant": ("variant", names, {"long_name": "stage replaced by its truth"}),
                "component": ("component", ["aa", "cc"], {"long_name": "crystal axis"})})


def _refit(result: StudyResult, **options) -> StudyResult:
    """`result`'s measurements analysed again with other `options` of :func:`run_study`, its degree held fixed."""
    return run_study(result.config, measurements=result.measurements, degree=int(result.model.degree), **options)


def assembly_ablation(result: StudyResult, *, progress: bool = False) -> xr.Dataset:
    """What each assembly step of :func:`chemomech.correlate.correlate` is worth to the learned slopes.

    The simulated measurements of `result` are assembled again with one step
    of :data:`ASSEMBLY_OPTIONS` left out (``match_resolution``: sharp X against
    strain interpolated from the scan; ``strain_kernel``: the strain not given
    the X-ray pixel's resolution; ``extend_edges``: the particles' outermost
    X-ray pixels lost to the interpolation), and the law is refitted with the
    degree `result` chose, held fixed as in :func:`error_budget`.

    Parameters
    ----------
    result : StudyResult
        A finished run with every assembly step (the default).
    progress : bool
        Progress bars.

    Returns
    -------
    xarray.Dataset
        On dim ``variant`` (``all steps``, then ``no <option>`` per option) and
        ``component`` (aa, cc): ``slope`` (d eps0/dX at ``SLOPE_X``),
        ``rel_error`` (against the truth) and ``change`` (slope over the
        all-steps slope, minus 1; negative: the step's absence biases the slope
        low).
    """
    if not isinstance(result, StudyResult):
        raise TypeError(f"result must be a StudyResult, got {type(result).__name__}")
    variants = {"all steps": result}
    for option in _stage_iter(ASSEMBLY_OPTIONS, "assembly: one step left out", progress):
        variants[f"no {option}"] = _refit(result, replace_with_truth=result.replace_with_truth,
                                          assembly={option: False})
    slope = np.stack([v.slopes["learned"].values for v in variants.values()])
    rel = np.stack([v.slopes["rel_error"].values for v in variants.values()])
    one = {"units": "1"}
    return xr.Dataset(
        {"slope": (("variant", "component"), slope, {**one, "long_name": f"learned d eps0/dX at X = {SLOPE_X}"}),
         "rel_error": (("variant", "component"), rel, {**one, "long_name": "learned / truth - 1"}),
         "change": (("variant", "component"), slope / slope[0] - 1,
                    {**one, "long_name": "slope / slope with all steps - 1"})},
        coords={"variant": ("variant", list(variants), {"long_name": "assembly step left out"}),
                "component": ("component", ["aa", "cc"], {"long_name": "crystal axis"})})


def dark_field_registration(result: StudyResult, *, progress: bool = False) -> xr.Dataset:
    """What the study's choice of registration image is worth: the virtual dark field instead of the trace.

    Each particle's virtual annular dark field (nearly featureless inside the
    particle: registering it is registering the outline) is registered onto
    its Li map exactly as the strain trace was (same options), and both are
    scored against the exact mapping.

    Parameters
    ----------
    result : StudyResult
        A finished run (its measurements are reused).
    progress : bool
        Progress bar.

    Returns
    -------
    xarray.Dataset
        On dim ``particle``: ``tre_trace`` (the study's registration) and
        ``tre_dark_field``, the mean target registration error over the
        particle's X-ray mask, in X-ray pixels.
    """
    if not isinstance(result, StudyResult):
        raise TypeError(f"result must be a StudyResult, got {type(result).__name__}")
    names = list(result.measurements)
    dark = []
    for name in _stage_iter(names, "register the dark field", progress):
        m = result.measurements[name]
        reg, *_ = _register_onto_x(m.xanes, m.strain["dark_field"], m.strain["mask"].values,
                                   "virtual dark field (registration image)")
        dark.append(m.tre_px(reg))
    px = {"units": "X-ray pixels"}
    return xr.Dataset(
        {"tre_trace": ("particle", [result.measurements[n].tre_px() for n in names],
                       {**px, "long_name": "mean TRE, strain trace registered (the study's)"}),
         "tre_dark_field": ("particle", dark, {**px, "long_name": "mean TRE, virtual dark field registered"})},
        coords={"particle": names})


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
                   "interval": {"level": 0.95, "low": pair("low"), "high": pair("high"),
                                "terms": str(result.slopes.attrs.get("interval_terms", ""))},
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
            str(v): {"degree": int(budget["degree"].sel(variant=v)),
                     "slope": {c: float(budget["slope"].sel(variant=v, component=c)) for c in ("aa", "cc")},
                     "rel_error": {c: float(budget["rel_error"].sel(variant=v, component=c)) for c in ("aa", "cc")},
                     "contribution": {c: float(budget["contribution"].sel(variant=v, component=c))
                                      for c in ("aa", "cc")}}
            for v in budget["variant"].values}
    if seconds is not None:
        out["seconds"]["total"] = float(seconds)
    return out


def _check_assembly(assembly) -> dict:
    if assembly is None:
        return {}
    if not isinstance(assembly, dict):
        raise TypeError(f"assembly must be a dict of correlate options, got {type(assembly).__name__}")
    unknown = sorted(set(assembly) - set(ASSEMBLY_OPTIONS))
    if unknown:
        raise ValueError(f"assembly has unknown options {unknown}; choose from {list(ASSEMBLY_OPTIONS)}")
    return dict(assembly)


def _check_stages(stages) -> tuple[str, ...]:
    if isinstance(stages, str):
        stages = (stages,)
    stages = tuple(stages)
    for s in stages:
        _validate.choice(s, STAGES, name="replace_with_truth")
    return stages

