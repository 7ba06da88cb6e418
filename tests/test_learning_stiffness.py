"""How much the learned law depends on a stiffness that the particles do not share with the model.

The twin's truth strain and ``fit_eigenstrain`` share the FEM solver; these tests break the other shared
piece, the stiffness: the truth is computed with a composition-dependent stiffness (``stiffness="composition"``
in the twin) or the fit uses constants perturbed by 10 %. The slopes must move (the test would be empty if
they did not) but stay small. Measured on three particles (biphasic, Li-rich, Li-poor) fitted jointly at 8 nm
pixels: a composition-dependent truth moves the slopes by -0.11 % (a) and -0.58 % (c); Q_aa or Q_cc off by
10 % in the fit moves them by 0.1-0.24 % (a) and 0.34-0.48 % (c). Single particles are more sensitive (a
Li-poor particle alone: -1.9 % along c with the composition-dependent truth). The bounds below are about twice
the joint values.
"""

from __future__ import annotations

import numpy as np
import pytest

from chemomech import elasticity, twin
from chemomech.learning import fit_eigenstrain

PIXEL_NM = 8.0
BATCHES = (("biphasic", 5), ("li_rich", 21), ("li_poor", 8))


def _rendered(stiffness: str) -> list:
    return [twin.make_particle(f"{b}-{stiffness}", batch=b, seed=s, mesh_nrefs=4, stiffness=stiffness)
            .render(pixel_size_nm=PIXEL_NM) for b, s in BATCHES]


def _slopes(datasets, stiffness=None) -> np.ndarray:
    model = fit_eigenstrain([d[["exx", "eyy", "exy"]] for d in datasets], [d.X for d in datasets], degree=1,
                            n_boot=0, stiffness=stiffness)
    return model.derivative([0.5])[0]


@pytest.fixture(scope="module")
def twins():
    return {"average": _rendered("average"), "composition": _rendered("composition")}


def test_composition_dependent_truth_biases_the_slopes_a_little(twins):
    matched = _slopes(twins["average"])           # the model's stiffness is the truth's
    shifted = _slopes(twins["composition"]) / matched - 1
    # measured -0.11 % (a), -0.58 % (c)
    assert np.all(np.abs(shifted) < [0.003, 0.012]), shifted
    assert np.any(np.abs(shifted) > 5e-4), "a composition-dependent stiffness should change the answer"


@pytest.mark.parametrize("component", [0, 1])
@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_fit_with_perturbed_stiffness(twins, component, factor):
    q = elasticity.stiffness_ac()
    scale = np.ones(3)
    scale[component] = np.sqrt(factor)
    perturbed = np.diag(scale) @ q @ np.diag(scale)     # Q_aa (or Q_cc) by factor, the coupling by its root
    base = _slopes(twins["average"])
    shifted = _slopes(twins["average"], stiffness=perturbed) / base - 1
    # measured 0.1-0.24 % (a), 0.34-0.48 % (c)
    assert np.all(np.abs(shifted) < [0.005, 0.01]), shifted
    assert np.abs(shifted).max() > 1e-4, "the fit should feel the stiffness"


def test_a_uniform_stiffness_scale_changes_nothing(twins):
    # strain answers to ratios of elastic constants, not their scale: 10 % stiffer everywhere, same law
    base = _slopes(twins["average"])
    scaled = _slopes(twins["average"], stiffness=1.1 * elasticity.stiffness_ac())
    assert np.allclose(scaled, base, rtol=1e-9)
