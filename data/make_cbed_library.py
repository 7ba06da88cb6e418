"""Build the multislice library of Bragg-disk contents for LiFePO4 / FePO4 viewed down [010].

Run from the repository root (needs the optional extra ``twin``, i.e. abTEM 1.0.9)::

    OMP_NUM_THREADS=1 .venv/bin/python data/make_cbed_library.py            # whole library (~7 min, 1 core)
    .venv/bin/python data/make_cbed_library.py --phase LFP --out /tmp/x.npz  # one phase only
    .venv/bin/python data/make_cbed_library.py --validate                    # probe-CBED check, prints numbers

What is computed
----------------
Every point inside a Bragg disk of a non-overlapping nanobeam CBED pattern belongs to one
incident plane-wave direction. The disk contents are therefore the intensities
``I_g(t, k_t) = |psi_g|^2`` of the Bragg beams g = (h 0 l) of a perfect crystal slab of
thickness t, illuminated by a plane wave with transverse wave vector ``k_t = tilt / lambda``
(for mrad angles a beam tilt equals a crystal tilt of opposite sign). The beam of index g is
seen on the detector at ``g + k_t``. We compute these with abTEM plane-wave multislice on a
single periodic unit cell (a along x, c along y, propagation along b), at 300 kV, for

* phases ``FP`` (X = 0) and ``LFP`` (X = 1), each with its own lattice parameters;
* thickness 10-80 nm every 5 nm (exit planes after every unit cell along b, then linear
  interpolation in thickness to the common grid; the cell is 0.58-0.60 nm long);
* incident tilts ``tilt_x`` along a* and ``tilt_y`` along c* from 0 to 4.8 mrad, step 0.2 mrad
  (4 mrad of crystal tilt plus a 0.8 mrad aperture); negative tilts follow from the mirrors
  below and are not stored;
* every h0l beam with ``|g| <= 1.0 1/Å`` (the 000 beam included).

Symmetry and termination. Down b, Pnma keeps two mirrors of the pattern: the a-glide normal
to c, ``(x + 1/2, y, 1/2 - z)``, gives ``I(h, l; tx, ty) = I(h, -l; tx, -ty)`` exactly; the
n-glide normal to a, ``(1/2 - x, y + 1/2, z + 1/2)``, also shifts the crystal by b/2 along the
beam, so ``I(h, l; tx, ty) = I(-h, l; -tx, ty)`` holds only between slabs whose surfaces are
half a cell apart. For a slab of whole cells the 3-D multislice shows that termination effect
(up to ~7 % on weak beams at 30 nm). Real surfaces are not atomically defined, so the library
stores the average over the two terminations, which by the n-glide is
``(I(h, l; tx, ty) + I(-h, l; -tx, ty)) / 2`` of one termination; it is computed on tilts
``tx`` in [-4.8, 4.8] and costs nothing extra. The largest termination difference is kept
in the attrs.

Thermal vibration. abTEM's frozen phonons are too costly here. Instead each element's projected
potential is damped in Fourier space by its Debye-Waller factor ``exp(-B g^2 / 4)`` with
``B = 8 pi^2 U_iso`` (the in-plane smearing of a static, thermally averaged atom; the smearing
along the beam and absorption by thermal diffuse scattering are neglected, so the beam
intensities sum to ~1 minus the part scattered outside the simulated grid).

Structures. Lattice parameters as in the book (``shared/science.md``): LiFePO4 a, b, c =
10.332, 6.010, 4.692 Å; FePO4 9.821, 5.792, 4.788 Å. LiFePO4 atom positions are the
single-crystal X-ray refinement of Streltsov et al., Acta Cryst. B49, 147 (1993),
doi:10.1107/S0108768192009467 (the values the twin already uses, ``chemomech.materials.LFP_ATOMS``); they
agree to < 2e-4 with the independent refinement of Janssen et al., Chem. Mater. 25, 4574
(2013), doi:10.1021/cm4027682 (COD 4001848), whose U_iso values (293 K) give the B factors
below. FePO4 (heterosite) positions: no experimental refinement (Andersson et al., Solid State
Ionics 130, 41 (2000), doi:10.1016/S0167-2738(00)00311-8; Rousse et al., Chem. Mater. 15, 4082
(2003), doi:10.1021/cm0300462) could be read from a verifiable copy while this library was
made. ``FP_ATOMS`` (``chemomech.materials.FP_ATOMS``) is therefore a *computed* structure:
the file ``test_files/FePO4a.cif`` of pymatgen (github.com/materialsproject/pymatgen, added in
commit 558e2d437, 2012-03-10; read from the fork mfherbst/pymatgen at commit cc4ccf3f3). It is
a P1 VESTA export of delithiated olivine FePO4 without a stated source; its cell (9.913, 5.914,
4.860 Å, angles 90 +- 0.004 deg) is 0.9-2.1 % larger than measured, as a GGA+U relaxation
gives, so it is not an experimental refinement. Its 24 atoms obey Pnma to < 3e-5; the
asymmetric unit is the mean over the eight Pnma images. Compared with the LiFePO4 positions it
moves O2 by 0.26 Å along c and O1 by 0.19 Å along a. The fractional positions are placed on the
measured FePO4 lattice of the book (Padhi et al. 1997, ``chemomech.materials.LATTICE_FP_ANGSTROM``),
which is therefore not from the same source as the positions. Replace
``chemomech.materials.FP_ATOMS`` by an experimental refinement when one is at hand and rerun
this script.

Numerics. 128 x 64 grid points per a x c cell (0.081 x 0.073 Å), 4 slices per cell
(b/4 ~ 1.5 Å, atoms shifted by b/8 along the beam so that none sits on a slice boundary),
Lobato parametrisation, infinite projection, float32, numpy FFT (deterministic). Checked
once on LFP at 30 nm: 8 slices per cell change intensities by < 1 %, a 192 x 96 grid by
< 5 % (relative, strong beams; the total rises from 0.984 to 0.995).

Validation (``--validate``, ~3 min). A convergent probe (0.8 mrad semi-angle, no aberrations)
on a 12 x 26 cell supercell of LFP (124 x 122 Å), 50 cells = 30.05 nm thick. In the interiors of
its 39 disks with |g| <= 0.5 1/Å (47 pixels each) the CBED intensity, divided by the vacuum
probe's intensity per pixel, equals the plane-wave intensity of the same direction and
termination to a relative RMS of 1.1e-5 (Pearson r = 1 - 7e-11): the plane-wave picture is
exact for non-overlapping disks. Against the committed library as the twin uses it
(termination average, interpolated by ``chemomech.twin.cbed.disk_intensities``): r = 0.99992,
relative RMS 1.1 %. Read with the opposite tilt sign: r = 0.982, relative RMS 17 %, so the
sign convention (beam g at g + tilt / wavelength) is the right one. At 30 nm and zero tilt
the 200 beam is 7.5x the 000 beam for LFP (0.8x for FP); the probe pattern gives 7.53.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

from chemomech.materials import FP_ATOMS, LATTICE_FP_ANGSTROM, LATTICE_LFP_ANGSTROM, LFP_ATOMS, PNMA_OPERATIONS

VOLTAGE_KV = 300.0  # accelerating voltage, kV
ENERGY_EV = VOLTAGE_KV * 1e3
#: a, b, c in Å of each phase (chemomech.materials, with their sources).
LATTICE_A = {"FP": LATTICE_FP_ANGSTROM, "LFP": LATTICE_LFP_ANGSTROM}
ATOMS = {"FP": FP_ATOMS, "LFP": LFP_ATOMS}
ATOM_SOURCE = {
    "LFP": "Streltsov et al., Acta Cryst. B49, 147 (1993), doi:10.1107/S0108768192009467",
    "FP": (
        "computed (DFT-relaxed, source not stated in the file) delithiated olivine FePO4: "
        "pymatgen test_files/FePO4a.cif (materialsproject/pymatgen commit 558e2d437), "
        "Pnma-symmetrised; placed on the measured FePO4 lattice of Padhi et al. (1997), "
        "doi:10.1149/1.1837571; not an experimental heterosite refinement"
    ),
}
#: Isotropic displacement U_iso (Å^2), LiFePO4 at 293 K, Janssen et al. (2013), doi:10.1021/cm4027682;
#: O is the mean of O1-O3. Used for both phases.
U_ISO_A2 = {"Li": 0.0166, "Fe": 0.00667, "P": 0.00522, "O": 0.00894}
GPTS_PER_CELL = (128, 64)  # grid points along a (x) and c (y)
SLICES_PER_CELL = 4
BEAM_SHIFT_FRAC = 0.125  # atoms shifted by b/8 along the beam: no atom on a slice boundary
G_MAX_INV_A = 1.0  # keep beams with |g| <= this, 1/Å
THICKNESS_NM = np.arange(10.0, 80.0 + 1e-9, 5.0)
TILT_STEP_MRAD = 0.2
TILT_MAX_MRAD = 4.8
TILT_BATCH = 24  # plane waves per multislice call (memory ~ batch x cells x 128 x 64 x 8 bytes ~ 0.2 GB)

DEFAULT_OUT = Path(__file__).resolve().parent / "stem4d_lfp-fp_cbed-library.npz"


def _abtem():
    import abtem

    abtem.config.set(
        {"device": "cpu", "fft": "numpy", "precision": "float32", "diagnostics.progress_bar": False}
    )
    return abtem


def wavelength_A(energy_eV: float = ENERGY_EV) -> float:
    """Relativistic electron wavelength in Å."""
    mc2 = 510998.95  # eV
    hc = 12398.4198  # eV Å
    return hc / np.sqrt(energy_eV * (energy_eV + 2 * mc2))


def cell_atoms(phase: str):
    """The unit cell of `phase` as ``ase.Atoms``: x along a, y along c, z (beam) along b."""
    import ase

    a, b, c = LATTICE_A[phase]
    symbols, frac = [], []
    for element, *xyz in ATOMS[phase]:
        sites: list[np.ndarray] = []
        for signs, shift in PNMA_OPERATIONS:
            p = np.mod(np.multiply(signs, xyz) + shift, 1.0)
            if not any(np.all(np.abs((p - q + 0.5) % 1.0 - 0.5) < 1e-6) for q in sites):
                sites.append(p)
        symbols += [element] * len(sites)
        frac += sites
    f = np.array(frac)
    positions = np.c_[f[:, 0] * a, f[:, 2] * c, ((f[:, 1] + BEAM_SHIFT_FRAC) % 1.0) * b]
    return ase.Atoms(symbols, positions=positions, cell=[a, c, b], pbc=True)


def cell_potential(phase: str, *, repetitions: tuple[int, int] = (1, 1)):
    """Debye-Waller-damped projected potential of `repetitions` cells (in x, y), one cell thick."""
    abtem = _abtem()
    atoms = cell_atoms(phase)
    if repetitions != (1, 1):
        atoms = atoms * (repetitions[0], repetitions[1], 1)
    gpts = (GPTS_PER_CELL[0] * repetitions[0], GPTS_PER_CELL[1] * repetitions[1])
    extent = tuple(np.diag(atoms.cell)[:2])
    b = atoms.cell[2, 2]
    kx = np.fft.fftfreq(gpts[0], extent[0] / gpts[0])
    ky = np.fft.fftfreq(gpts[1], extent[1] / gpts[1])
    g2 = kx[:, None] ** 2 + ky[None, :] ** 2
    total = np.zeros((SLICES_PER_CELL, *gpts), dtype=np.complex128)
    for element in sorted(set(atoms.get_chemical_symbols())):
        sub = atoms[[s == element for s in atoms.get_chemical_symbols()]]
        pot = abtem.Potential(
            sub, gpts=gpts, slice_thickness=b / SLICES_PER_CELL, projection="infinite", parametrization="lobato"
        )
        arr = np.asarray(pot.build().compute().array, dtype=np.float64)
        debye_waller = np.exp(-8 * np.pi**2 * U_ISO_A2[element] * g2 / 4)
        total += np.fft.fft2(arr, axes=(-2, -1)) * debye_waller
    array = np.fft.ifft2(total, axes=(-2, -1)).real.astype(np.float32)
    return abtem.PotentialArray(array, slice_thickness=b / SLICES_PER_CELL, extent=extent)


def beam_indices(phase: str, *, g_max: float = G_MAX_INV_A) -> tuple[np.ndarray, np.ndarray]:
    """Indices (h, l) of the h0l beams with |g| <= `g_max`, sorted by |g|, then h, then l."""
    a, _, c = LATTICE_A[phase]
    hmax, lmax = int(g_max * a) + 1, int(g_max * c) + 1
    h, ell = np.meshgrid(np.arange(-hmax, hmax + 1), np.arange(-lmax, lmax + 1), indexing="ij")
    h, ell = h.ravel(), ell.ravel()
    g = np.hypot(h / a, ell / c)
    keep = g <= g_max + 1e-12
    order = np.lexsort((ell[keep], h[keep], np.round(g[keep], 9)))
    return h[keep][order], ell[keep][order]


def plane_wave_intensities(
    phase: str, tilts_mrad: np.ndarray, thickness_nm: np.ndarray, h: np.ndarray, ell: np.ndarray
) -> np.ndarray:
    """Beam intensities ``(thickness, tilt, beam)`` of one termination, by abTEM multislice.

    Exit planes are recorded after every unit cell along b and interpolated linearly in
    thickness to `thickness_nm`.
    """
    abtem = _abtem()
    _, b, _ = LATTICE_A[phase]
    tilts_mrad = np.atleast_2d(np.asarray(tilts_mrad, dtype=float))
    n_cells = int(np.ceil(np.max(thickness_nm) * 10 / b)) + 1
    crystal = abtem.CrystalPotential(cell_potential(phase), repetitions=(1, 1, n_cells), exit_planes=SLICES_PER_CELL)
    cells_t = np.arange(n_cells + 1) * b / 10  # nm; the first exit plane is the entrance surface
    nx, ny = GPTS_PER_CELL
    out = np.empty((len(thickness_nm), len(tilts_mrad), len(h)), dtype=np.float64)
    for start in range(0, len(tilts_mrad), TILT_BATCH):
        batch = tilts_mrad[start : start + TILT_BATCH]
        waves = abtem.PlaneWave(energy=ENERGY_EV, tilt=batch, normalize=False)
        exit_waves = waves.multislice(crystal).compute().array  # (plane, tilt, nx, ny)
        spectrum = np.fft.fft2(exit_waves, axes=(-2, -1))[..., h % nx, ell % ny]
        intensity = np.abs(spectrum.astype(np.complex128)) ** 2 / float(nx * ny) ** 2  # (plane, tilt, beam)
        for i, t in enumerate(thickness_nm):
            k = min(int(np.floor(t / (b / 10))), n_cells - 1)
            w = (t - cells_t[k]) / (cells_t[k + 1] - cells_t[k])
            out[i, start : start + len(batch)] = (1 - w) * intensity[k] + w * intensity[k + 1]
    return out


def union_beams(phases: tuple[str, ...] = ("FP", "LFP")) -> tuple[np.ndarray, np.ndarray]:
    """Beams (h, l) within `G_MAX_INV_A` in any of `phases`, sorted by |g| of the first, then h, l."""
    keys = {(int(hh), int(ll)) for p in phases for hh, ll in zip(*beam_indices(p))}
    a, _, c = LATTICE_A[phases[0]]
    beams = sorted(keys, key=lambda k: (round(float(np.hypot(k[0] / a, k[1] / c)), 9), k[0], k[1]))
    return np.array([k[0] for k in beams]), np.array([k[1] for k in beams])


def library_entry(
    phase: str,
    *,
    thickness_nm: np.ndarray = THICKNESS_NM,
    tilt_axis_mrad: np.ndarray | None = None,
    beams: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict:
    """Termination-averaged intensities ``(thickness, tilt_x, tilt_y, beam)`` on the tilt quadrant.

    `tilt_axis_mrad` (non-negative, starting at 0) is used for both tilt_x and tilt_y; `beams`
    defaults to :func:`union_beams` (the list must be closed under h -> -h).
    """
    if tilt_axis_mrad is None:
        tilt_axis_mrad = np.round(np.arange(0, TILT_MAX_MRAD + 1e-9, TILT_STEP_MRAD), 6)
    t_axis = np.asarray(tilt_axis_mrad, dtype=float)
    h, ell = union_beams() if beams is None else beams
    thickness_nm = np.asarray(thickness_nm, dtype=float)
    tx_full = np.concatenate([-t_axis[:0:-1], t_axis])  # -T .. T
    TX, TY = np.meshgrid(tx_full, t_axis, indexing="ij")
    tilts = np.c_[TX.ravel(), TY.ravel()]
    one = plane_wave_intensities(phase, tilts, thickness_nm, h, ell)
    one = one.reshape(len(thickness_nm), len(tx_full), len(t_axis), len(h))
    n0 = len(t_axis) - 1  # index of tilt_x = 0 in tx_full
    plus = one[:, n0:]  # tx >= 0
    minus = one[:, n0::-1]  # -tx, same order
    lookup = {(hh, ll): i for i, (hh, ll) in enumerate(zip(h, ell))}
    mirror_h = np.array([lookup[(-hh, ll)] for hh, ll in zip(h, ell)])
    partner = minus[..., mirror_h]  # I(-h, l; -tx, ty)
    averaged = 0.5 * (plus + partner)
    strong = averaged > 1e-3
    termination_diff = float(np.max(np.abs(plus - partner)[strong] / averaged[strong]))
    return {
        "intensity": averaged,
        "h": h,
        "l": ell,
        "tilt_axis_mrad": t_axis,
        "termination_max_rel_diff": termination_diff,
    }


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``numpy.savez_compressed`` with fixed zip timestamps, so equal arrays give equal bytes."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(arrays[key]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue())


def build_library(phases: tuple[str, ...], *, date: str) -> tuple[dict, dict]:
    """All entries on a common beam list (:func:`union_beams`)."""
    import abtem

    entries = {}
    for phase in phases:
        t0 = time.perf_counter()
        entries[phase] = library_entry(phase)
        entries[phase]["seconds"] = time.perf_counter() - t0
    h = entries[phases[0]]["h"].astype(np.int16)
    ell = entries[phases[0]]["l"].astype(np.int16)
    t_axis = entries[phases[0]]["tilt_axis_mrad"]
    intensity = np.stack([entries[p]["intensity"] for p in phases]).astype(np.float32)
    gx = np.stack([h / LATTICE_A[p][0] for p in phases])
    gy = np.stack([ell / LATTICE_A[p][2] for p in phases])
    attrs = {
        "title": "Bragg-beam intensities of LixFePO4 down [010] (plane-wave multislice, abTEM)",
        "voltage_kV": VOLTAGE_KV,
        "wavelength_A": wavelength_A(),
        "lattice_A": {k: list(LATTICE_A[k]) for k in phases},
        "atom_positions_source": {k: ATOM_SOURCE[k] for k in phases},
        "debye_waller": "projected potential of each element x exp(-B g^2/4), B = 8 pi^2 U_iso; U_iso (A^2) "
        + json.dumps(U_ISO_A2) + ", Janssen et al. 2013, doi:10.1021/cm4027682; no absorption",
        "termination": "average of the two slab terminations half a cell apart along b (n-glide)",
        "termination_max_rel_diff": {k: entries[k]["termination_max_rel_diff"] for k in phases},
        "slice_thickness_A": {k: LATTICE_A[k][1] / SLICES_PER_CELL for k in phases},
        "sampling_A": {k: [LATTICE_A[k][0] / GPTS_PER_CELL[0], LATTICE_A[k][2] / GPTS_PER_CELL[1]] for k in phases},
        "gpts_per_cell": list(GPTS_PER_CELL),
        "parametrization": "lobato, infinite projection",
        "g_max_inv_A": G_MAX_INV_A,
        "tilt_convention": "plane-wave tilt (mrad) of abTEM: k_t = tilt / wavelength, x along a*, y along c*; "
        "beam g is seen at g + k_t; stored for tilt_x, tilt_y >= 0, I(h,l;tx,ty) = I(-h,l;-tx,ty) = I(h,-l;tx,-ty)",
        "abtem_version": abtem.__version__,
        "numpy_version": np.__version__,
        "date": date,
        "generator": "data/make_cbed_library.py",
        "licence": "generated by the chemomech project; same licence as the project",
    }
    arrays = {
        "intensity": intensity,
        "phase": np.array(phases),
        "thickness_nm": THICKNESS_NM.astype(np.float64),
        "tilt_x_mrad": t_axis.astype(np.float64),
        "tilt_y_mrad": t_axis.astype(np.float64),
        "h": h,
        "l": ell,
        "gx_inv_A": gx,
        "gy_inv_A": gy,
        "attrs_json": np.array(json.dumps(attrs, sort_keys=True)),
    }
    timing = {k: entries[k]["seconds"] for k in phases}
    return arrays, timing


# ----------------------------------------------------------------------------------- validation
PROBE_SEMIANGLE_MRAD = 0.8
PROBE_THICKNESS_NM = 30.0
PROBE_REPETITIONS = (12, 26)  # supercell of 124 x 122 Å for LFP
LIBRARY_PATH_FOR_VALIDATION = DEFAULT_OUT


def validate_probe(phase: str = "LFP") -> dict:
    """Compare a convergent-probe CBED pattern with plane-wave intensities of the same tilts."""
    abtem = _abtem()
    a, b, c = LATTICE_A[phase]
    reps = PROBE_REPETITIONS
    n_cells = int(round(PROBE_THICKNESS_NM * 10 / b))
    unit = cell_potential(phase, repetitions=reps)
    crystal = abtem.CrystalPotential(unit, repetitions=(1, 1, n_cells))
    probe = abtem.Probe(energy=ENERGY_EV, semiangle_cutoff=PROBE_SEMIANGLE_MRAD)
    probe.grid.match(unit)
    t0 = time.perf_counter()
    exit_wave = probe.multislice(crystal, scan=(reps[0] * a / 2 + 0.3, reps[1] * c / 2 + 0.2)).compute().array
    t_probe = time.perf_counter() - t0
    nx, ny = exit_wave.shape[-2:]
    pattern = np.abs(np.fft.fft2(exit_wave)) ** 2
    vacuum = np.abs(np.fft.fft2(probe.build(scan=(0.0, 0.0)).compute().array)) ** 2
    pattern = pattern / vacuum.sum()
    vacuum = vacuum / vacuum.sum()
    lam = wavelength_A()
    Lx, Ly = reps[0] * a, reps[1] * c
    qx = np.fft.fftfreq(nx, Lx / nx)
    qy = np.fft.fftfreq(ny, Ly / ny)
    # interior of the aperture: away from its soft edge
    ix = np.nonzero(np.abs(qx) * lam * 1e3 < PROBE_SEMIANGLE_MRAD)[0]
    iy = np.nonzero(np.abs(qy) * lam * 1e3 < PROBE_SEMIANGLE_MRAD)[0]
    QX, QY = np.meshgrid(qx[ix], qy[iy], indexing="ij")
    q_mrad = np.hypot(QX, QY) * lam * 1e3
    inside = q_mrad < 0.8 * PROBE_SEMIANGLE_MRAD
    IX, IY = np.meshgrid(ix, iy, indexing="ij")
    ix_in, iy_in = IX[inside], IY[inside]
    tilts = np.c_[QX[inside], QY[inside]] * lam * 1e3  # mrad
    h, ell = beam_indices(phase)
    strong = np.hypot(h / a, ell / c) <= 0.5
    h, ell = h[strong], ell[strong]
    per_pixel = vacuum[ix_in, iy_in]  # probe intensity per detector pixel in the aperture
    cbed = np.stack(
        [pattern[(ix_in + hh * reps[0]) % nx, (iy_in + ll * reps[1]) % ny] / per_pixel for hh, ll in zip(h, ell)],
        axis=1,
    )
    # the same pixels read with the opposite tilt sign must fit worse (checks the sign convention)
    cbed_flipped = np.stack(
        [pattern[(-ix_in + hh * reps[0]) % nx, (-iy_in + ll * reps[1]) % ny] / per_pixel for hh, ll in zip(h, ell)],
        axis=1,
    )
    t_exact = np.array([n_cells * b / 10])  # the probe slab is a whole number of cells
    pw = plane_wave_intensities(phase, tilts, t_exact, h, ell)[0]  # (tilt, beam), same termination
    mirror_h = [int(np.nonzero((h == -hh) & (ell == ll))[0][0]) for hh, ll in zip(h, ell)]
    pw_mirror = plane_wave_intensities(phase, tilts * np.array([-1.0, 1.0]), t_exact, h, ell)[0][:, mirror_h]
    lib_avg = 0.5 * (pw + pw_mirror)  # what the library stores

    def stats(x, y):
        return {
            "pearson_r": float(np.corrcoef(x.ravel(), y.ravel())[0, 1]),
            "rel_rms": float(np.sqrt(np.mean((x - y) ** 2)) / np.sqrt(np.mean(y**2))),
        }

    result = {}
    if LIBRARY_PATH_FOR_VALIDATION.is_file():  # the committed library, interpolated like the twin will
        from chemomech.twin import cbed as cbed_library

        library = cbed_library.load_library(LIBRARY_PATH_FOR_VALIDATION)
        interp = cbed_library.disk_intensities(library, 1.0 if phase == "LFP" else 0.0, t_exact, [0.0, 0.0], tilts)
        cols = [int(np.nonzero((library.h.values == hh) & (library.l.values == ll))[0][0]) for hh, ll in zip(h, ell)]
        result["probe_vs_library_interpolated"] = stats(cbed, interp.values[0][:, cols])

    zero = int(np.nonzero((h == 0) & (ell == 0))[0][0])
    two = int(np.nonzero((h == 2) & (ell == 0))[0][0])
    return {
        "phase": phase,
        "thickness_nm": n_cells * b / 10,
        "supercell": list(reps),
        "pixels_per_disk": int(inside.sum()),
        "beams": int(len(h)),
        "probe_vs_planewave_same_termination": stats(cbed, pw),
        "probe_vs_planewave_flipped_sign": stats(cbed_flipped, pw),
        "probe_vs_termination_average": stats(cbed, lib_avg),
        "disk_mean_200_over_000_probe": float(cbed[:, two].mean() / cbed[:, zero].mean()),
        "seconds_probe_multislice": t_probe,
        **result,
    }


def main(argv: list[str] | None = None) -> int:
    """Command line: build the library (default) or run the probe validation."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--phase", choices=sorted(LATTICE_A), action="append", help="phase(s) to compute")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--date", default=datetime.date.today().isoformat(), help="date written into the attrs")
    parser.add_argument("--validate", action="store_true", help="run the probe-CBED validation instead")
    args = parser.parse_args(argv)
    if args.validate:
        print(json.dumps(validate_probe(), indent=2))
        return 0
    phases = tuple(sorted(set(args.phase))) if args.phase else ("FP", "LFP")
    arrays, timing = build_library(phases, date=args.date)
    _write_npz(args.out, arrays)
    print(json.dumps({"out": str(args.out), "bytes": args.out.stat().st_size, "seconds": timing}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
