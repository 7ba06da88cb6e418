"""The digital twin: simulators that make ground truth.

Everything in this folder *generates* data with a known answer; nothing in it
analyses data, and it imports only the shared physics (:mod:`chemomech.materials`,
:mod:`chemomech.elasticity`, :mod:`chemomech.geometry`) — never an analysis module
(``strain``, ``xanes``, ``registration``, ``correlate``, ``learning``), so that
the analysis is always tested against code that it did not shape.

- :mod:`chemomech.twin.particle` — platelets with known X, thickness, eigenstrain
  law and FEM truth strain (:func:`make_particle`, :func:`particle_set`);
- :mod:`chemomech.twin.stem4d` — 4D-STEM nanobeam datacubes of a particle;
- :mod:`chemomech.twin.cbed` — the multislice (abTEM) library of Bragg-disk contents that
  :mod:`~chemomech.twin.stem4d` draws dynamical disks from;
- :mod:`chemomech.twin.ptycho` — Fe L-edge spectro-ptychography energy stacks;
- :mod:`chemomech.twin.pair` — image pairs with a known geometric relation;
- :mod:`chemomech.twin.noise` — noisy (strain, X) measurements straight from the truth.
"""

from __future__ import annotations

from . import cbed, noise, pair, particle, ptycho, stem4d
from .particle import (
    BATCHES,
    Defect,
    EigenstrainLaw,
    Particle,
    make_particle,
    mesh_convergence,
    nonlinear_law,
    particle_set,
    vegard_law,
)

__all__ = [
    "BATCHES",
    "Defect",
    "EigenstrainLaw",
    "Particle",
    "cbed",
    "make_particle",
    "mesh_convergence",
    "noise",
    "nonlinear_law",
    "pair",
    "particle",
    "particle_set",
    "ptycho",
    "stem4d",
    "vegard_law",
]
