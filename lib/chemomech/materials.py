"""Material constants of Li_xFePO4, each with its source.

One place for the numbers that both the digital twin (:mod:`chemomech.twin`)
and the analysis use: lattice parameters and the Vegard misfits they imply,
the olivine atom positions, the 3-D elastic constants, and the Fe L-edge
absorption model. Nothing here computes anything beyond a derived constant.

References
----------
.. [1] T. Maxisch and G. Ceder, "Elastic properties of olivine Li_xFePO4 from
       first principles", Phys. Rev. B 73, 174112 (2006),
       doi:10.1103/PhysRevB.73.174112.
.. [2] V. A. Streltsov, E. L. Belokoneva, V. G. Tsirelson and N. K. Hansen,
       "Multipole analysis of the electron density in triphylite, LiFePO4,
       using X-ray diffraction data", Acta Cryst. B49, 147 (1993),
       doi:10.1107/S0108768192009467.
.. [3] A. K. Padhi, K. S. Nanjundaswamy and J. B. Goodenough, J. Electrochem.
       Soc. 144, 1188 (1997), doi:10.1149/1.1837571.
.. [4] pymatgen test structure ``test_files/FePO4a.cif``
       (github.com/materialsproject/pymatgen, added in commit 558e2d437,
       2012-03-10): a P1 export of delithiated olivine FePO4 without a stated
       source; its cell (9.913, 5.914, 4.860 Å) is 0.9-2.1 % larger than the
       measured one [3]_, as a DFT (GGA+U) relaxation gives, so it is a
       *computed* structure, not an experimental refinement. Symmetrised to
       Pnma here (its 24 atoms obey Pnma to < 3e-5).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "LATTICE_FP_ANGSTROM",
    "LATTICE_LFP_ANGSTROM",
    "VEGARD_AA",
    "VEGARD_CC",
    "LFP_ATOMS",
    "FP_ATOMS",
    "PNMA_OPERATIONS",
    "C_FEPO4_GPA",
    "C_LIFEPO4_GPA",
    "OD_PER_NM_LFP_708",
    "OD_SATURATION",
    "FE_L_EDGE_MODEL",
    "PHASE_PER_NM",
    "FE_PER_A3_LFP",
    "FE_PER_A3_FP",
    "FE_DENSITY_RATIO_FP_LFP",
    "DENSITY_LFP_G_CM3",
    "DENSITY_FP_G_CM3",
    "TABULATED_ABSORPTION_PER_NM",
]

# --- lattices -----------------------------------------------------------------------------

#: Lattice parameters (a, b, c) of FePO4 (heterosite), Å [3]_.
LATTICE_FP_ANGSTROM = (9.821, 5.792, 4.788)
#: Lattice parameters (a, b, c) of LiFePO4 (triphylite), Å [2]_.
LATTICE_LFP_ANGSTROM = (10.332, 6.010, 4.692)
#: Vegard misfit FePO4 -> LiFePO4 along a (fraction, relative to FePO4): +5.2 %.
VEGARD_AA = LATTICE_LFP_ANGSTROM[0] / LATTICE_FP_ANGSTROM[0] - 1.0
#: Vegard misfit FePO4 -> LiFePO4 along c (fraction, relative to FePO4): -2.0 %.
VEGARD_CC = LATTICE_LFP_ANGSTROM[2] / LATTICE_FP_ANGSTROM[2] - 1.0

#: Asymmetric unit of olivine LiFePO4 (element, x, y, z), fractional, Pnma [2]_.
LFP_ATOMS = (
    ("Li", 0.0, 0.0, 0.0),
    ("Fe", 0.28222, 0.25, 0.97472),
    ("P", 0.09486, 0.25, 0.41820),
    ("O", 0.09678, 0.25, 0.74279),
    ("O", 0.45710, 0.25, 0.20602),
    ("O", 0.16558, 0.04646, 0.28478),
)

#: Asymmetric unit of olivine FePO4 (heterosite; element, x, y, z), fractional, Pnma, same setting
#: and origin as :data:`LFP_ATOMS`: a computed (DFT-relaxed) structure [4]_, the mean over the eight
#: Pnma images of each site. No experimental heterosite refinement (Andersson et al., Solid State
#: Ionics 130, 41 (2000); Rousse et al., Chem. Mater. 15, 4082 (2003)) was available in a verifiable
#: copy; replace these by one when it is. Against LFP_ATOMS, O2 moves by 0.26 Å along c and O1 by
#: 0.19 Å along a.
FP_ATOMS = (
    ("Fe", 0.27147, 0.25, 0.97244),
    ("P", 0.09630, 0.25, 0.42112),
    ("O", 0.11623, 0.25, 0.73226),
    ("O", 0.44650, 0.25, 0.15245),
    ("O", 0.17286, 0.04802, 0.27552),
)

#: General positions of Pnma (No. 62, standard setting): (sign x, sign y, sign z), translation.
PNMA_OPERATIONS = (
    ((1, 1, 1), (0.0, 0.0, 0.0)),
    ((-1, -1, 1), (0.5, 0.0, 0.5)),
    ((-1, 1, -1), (0.0, 0.5, 0.0)),
    ((1, -1, -1), (0.5, 0.5, 0.5)),
    ((-1, -1, -1), (0.0, 0.0, 0.0)),
    ((1, 1, -1), (0.5, 0.0, 0.5)),
    ((1, -1, 1), (0.0, 0.5, 0.0)),
    ((-1, 1, 1), (0.5, 0.5, 0.5)),
)

# --- elasticity ---------------------------------------------------------------------------


def _orthotropic(c11, c22, c33, c44, c55, c66, c12, c13, c23) -> np.ndarray:
    c = np.zeros((6, 6))
    c[0, 0], c[1, 1], c[2, 2] = c11, c22, c33
    c[3, 3], c[4, 4], c[5, 5] = c44, c55, c66
    c[0, 1] = c[1, 0] = c12
    c[0, 2] = c[2, 0] = c13
    c[1, 2] = c[2, 1] = c23
    c.setflags(write=False)
    return c


#: 3-D stiffness of FePO4 (X = 0), GPa, Voigt order (aa, bb, cc, bc, ac, ab); first principles [1]_.
C_FEPO4_GPA = _orthotropic(175.9, 153.6, 135.0, 38.8, 47.5, 55.6, 29.6, 54.0, 19.6)
#: 3-D stiffness of LiFePO4 (X = 1), GPa, Voigt order (aa, bb, cc, bc, ac, ab); first principles [1]_.
C_LIFEPO4_GPA = _orthotropic(138.9, 198.0, 173.0, 36.8, 50.6, 47.6, 72.7, 52.5, 45.8)

# --- Fe L-edge X-ray absorption -------------------------------------------------------------

#: Optical density per nm of LiFePO4 at its Fe L3 peak (708 eV), 1/nm. Estimate: the
#: X-ray attenuation length of Fe metal at the L3 white line is ≈ 17–20 nm (Nakajima,
#: Stöhr & Idzerda, Phys. Rev. B 59, 6421 (1999)), i.e. μ ≈ 0.05–0.06 /nm at 7.87 g/cm³
#: of Fe; LiFePO4 holds 1.27 g/cm³ of Fe, so μ ≈ 0.009 /nm. We take 0.010 /nm: ~100 nm
#: of LiFePO4 has an OD of about 1 at 708 eV, as in STXM of LFP platelets (Lim et al.
#: 2016). (Tabulated atomic cross-sections have no white lines, so this number stays an
#: estimate; the background and edge steps below are tabulated.)
OD_PER_NM_LFP_708 = 0.010
#: Optical density above which a pixel is treated as saturated (too thick: stray
#: light and higher harmonics make OD non-linear in thickness).
OD_SATURATION = 1.5

#: Fe atoms per Å³ in LiFePO4 and FePO4: 4 formula units per Pnma cell (lattice
#: parameters above). FePO4 holds 6.97 % more Fe per volume than LiFePO4.
FE_PER_A3_LFP = 4.0 / (LATTICE_LFP_ANGSTROM[0] * LATTICE_LFP_ANGSTROM[1] * LATTICE_LFP_ANGSTROM[2])
FE_PER_A3_FP = 4.0 / (LATTICE_FP_ANGSTROM[0] * LATTICE_FP_ANGSTROM[1] * LATTICE_FP_ANGSTROM[2])
#: Ratio of Fe densities FePO4 / LiFePO4 (≈ 1.070): converts the volume fraction
#: a/(a + b) of a two-reference fit into the molar fraction x of Li_xFePO4.
FE_DENSITY_RATIO_FP_LFP = FE_PER_A3_FP / FE_PER_A3_LFP
#: Mass densities from the lattice parameters (4 formula units per cell), g/cm³:
#: LiFePO4 3.596, FePO4 3.678.
DENSITY_LFP_G_CM3 = 3.5965
DENSITY_FP_G_CM3 = 3.6780

#: Tabulated (atomic, non-resonant) soft X-ray absorption of LiFePO4 and FePO4 near the
#: Fe L edge, natural-log OD per nm, from the Chantler (2000) tables as distributed by
#: ``xraydb`` 4.5.8 (``material_mu`` with the densities above; Henke et al. 1993 agree
#: within a few %): pre-edge at 700 eV (fitted over 680–705 eV as μ ∝ E^−2.25) and the
#: net L3 and L2 edge jumps (the tabulated μ above the edge minus the extrapolated
#: pre-edge, at 718 eV and at 730 eV). References: C. T. Chantler, J. Phys. Chem. Ref.
#: Data 29, 597 (2000); B. L. Henke, E. M. Gullikson, J. C. Davis, At. Data Nucl. Data
#: Tables 54, 181 (1993).
TABULATED_ABSORPTION_PER_NM = {
    "LFP": {"pre_700": 0.00219, "L3_step": 0.00070, "L2_step": 0.00058},
    "FP": {"pre_700": 0.00233, "L3_step": 0.00075, "L2_step": 0.00062},
    "pre_exponent": 2.25,
}

#: The Fe L-edge reference model, absorption per nm of each phase (natural-log OD, 1/nm).
#: Each phase has Voigt peaks ``(centre_eV, height_per_nm, gaussian_fwhm_eV,
#: lorentzian_fwhm_eV)``, arctan edge steps ``(centre_eV, height_per_nm, width_eV)`` for
#: L3 and L2, and a non-resonant background ``pre * (E / 700 eV) ** -pre_exponent``
#: (O, P, Li and Fe M-shell absorption). Background and edge steps are the tabulated
#: values of :data:`TABULATED_ABSORPTION_PER_NM` (``pre`` slightly below ``pre_700`` so
#: that the total at 700 eV, with the tails of peaks and steps, matches the table).
#: Peak positions follow the literature: Fe²⁺ main L3 peak at 708 eV with a weak 706.8
#: eV pre-shoulder and a 710 eV shoulder; Fe³⁺ main peak at 710 eV with a 708 eV
#: pre-peak; L2 at 721–724 eV (Lim et al. 2016; Yu et al. 2018). Peak heights are set
#: so that LiFePO4 has :data:`OD_PER_NM_LFP_708` at 708 eV and OD(710)/OD(708) = 0.50
#: for LiFePO4 and 2.12 for FePO4 (published ratios ≈ 0.5 and ≈ 2.1); the FePO4 peaks
#: are those of LiFePO4's per-Fe scale times :data:`FE_DENSITY_RATIO_FP_LFP`.
FE_L_EDGE_MODEL = {
    "pre_exponent": TABULATED_ABSORPTION_PER_NM["pre_exponent"],
    "LFP": {
        "peaks": ((706.8, 0.001046, 0.5, 0.5), (708.0, 0.007501, 0.55, 0.55), (709.9, 0.001898, 0.8, 0.8),
                  (711.5, 0.000872, 1.2, 1.0), (720.8, 0.002266, 0.8, 1.2), (722.7, 0.001046, 1.0, 1.5)),
        "steps": ((708.6, 0.00070, 1.0), (721.3, 0.00058, 1.0)),
        "pre": 0.00216,
    },
    "FP": {
        "peaks": ((708.0, 0.003032, 0.55, 0.55), (710.0, 0.009324, 0.6, 0.7), (711.5, 0.002051, 1.0, 1.0),
                  (722.2, 0.001678, 0.8, 1.2), (723.8, 0.002238, 1.0, 1.5)),
        "steps": ((710.3, 0.00075, 1.0), (722.8, 0.00062, 1.0)),
        "pre": 0.00229,
    },
}

#: Phase shift of soft X-rays per nm of Li_xFePO4 far from the edge, rad/nm: 2π·δ/λ with
#: δ = 0.99e-3 (LiFePO4) and 1.00e-3 (FePO4) at 700 eV (λ = 1.771 nm), Chantler (2000)
#: via ``xraydb.xray_delta_beta`` with the densities above (0.00352 and 0.00353 rad/nm).
#: Against the pre-edge amplitude attenuation (OD/2 = 0.0011 per nm) the phase carries
#: thickness with about 3× the contrast.
PHASE_PER_NM = 0.0035
