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
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "LATTICE_FP_ANGSTROM",
    "LATTICE_LFP_ANGSTROM",
    "VEGARD_AA",
    "VEGARD_CC",
    "LFP_ATOMS",
    "C_FEPO4_GPA",
    "C_LIFEPO4_GPA",
    "OD_PER_NM_LFP_708",
    "OD_SATURATION",
    "FE_L_EDGE_MODEL",
    "PHASE_PER_NM",
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
#: 2016).
OD_PER_NM_LFP_708 = 0.010
#: Optical density above which a pixel is treated as saturated (too thick: stray
#: light and higher harmonics make OD non-linear in thickness).
OD_SATURATION = 1.5

#: The Fe L-edge reference model. Each phase has Voigt peaks ``(centre_eV, height,
#: gaussian_fwhm_eV, lorentzian_fwhm_eV)`` (height relative to the LFP 708 eV peak),
#: arctan edge steps ``(centre_eV, height, width_eV)`` for L3 and L2 (2:1 branching)
#: and a non-resonant background ``pre * (E / 700 eV)**-3`` (O, P, Li and Fe M-shell
#: absorption). Peak positions follow the literature: Fe²⁺ main L3 peak at 708 eV with
#: a weak 706.8 eV pre-shoulder and a 710 eV shoulder; Fe³⁺ main peak at 710 eV with a
#: 708 eV pre-peak; L2 at 721–724 eV (Lim et al. 2016; Yu et al. 2018). Heights are
#: tuned so that OD(710)/OD(708) = 0.50 for LiFePO4 and 2.12 for FePO4 (published
#: ratios ≈ 0.5 and ≈ 2.1). The whole model is multiplied by ``scale_per_nm`` so that
#: LiFePO4 has :data:`OD_PER_NM_LFP_708` at 708 eV; both phases share the scale (same
#: Fe density within 7 %).
FE_L_EDGE_MODEL = {
    "scale_per_nm": OD_PER_NM_LFP_708 / 1.14732,
    "LFP": {
        "peaks": ((706.8, 0.12, 0.5, 0.5), (708.0, 1.0, 0.55, 0.55), (709.9, 0.265, 0.8, 0.8),
                  (711.5, 0.10, 1.2, 1.0), (720.8, 0.26, 0.8, 1.2), (722.7, 0.12, 1.0, 1.5)),
        "steps": ((708.6, 0.22, 1.0), (721.3, 0.11, 1.0)),
        "pre": 0.07,
    },
    "FP": {
        "peaks": ((708.0, 0.43, 0.55, 0.55), (710.0, 1.0, 0.6, 0.7), (711.5, 0.22, 1.0, 1.0),
                  (722.2, 0.18, 0.8, 1.2), (723.8, 0.24, 1.0, 1.5)),
        "steps": ((710.3, 0.22, 1.0), (722.8, 0.11, 1.0)),
        "pre": 0.07,
    },
}

#: Phase shift of soft X-rays per nm of Li_xFePO4 far from the edge, rad/nm: k·δ with
#: δ ≈ 1e-3 at λ = 1.77 nm (700 eV).
PHASE_PER_NM = 0.0035
