"""The digital twin: simulators that make ground truth.

Everything in this folder *generates* data with a known answer; nothing in it
analyses data, and it imports only the shared physics (:mod:`chemomech.materials`,
:mod:`chemomech.elasticity`, :mod:`chemomech.geometry`) — never an analysis module
(``strain``, ``xanes``, ``registration``, ``correlate``, ``learning``), so that
the analysis is always tested against code that it did not shape.

- :mod:`chemomech.twin.particle` — platelets with known X, thickness, eigenstrain
  law and FEM truth strain (:func:`make_particle`, :func:`particle_set`);
- :mod:`chemomech.twin.stem4d` — 4D-STEM nanobeam datacubes of a particle;
- :mod:`chemomech.twin.ptycho` — Fe L-edge spectro-ptychography energy stacks;
- :mod:`chemomech.twin.pair` — image pairs with a known geometric relation;
- :mod:`chemomech.twin.noise` — noisy (strain, X) measurements straight from the truth;
- :mod:`chemomech.twin.published` — stand-ins for the correlated stacks Deng et al. published;
- :mod:`chemomech.twin.cbed` — the multislice (abTEM) library of Bragg-disk contents over
  thickness and tilt, computed by ``data/make_cbed_library.py``.
"""

from __future__ import annotations

from . import cbed, noise, pair, particle, ptycho, published, stem4d
from .particle import *  # noqa: F403  (make_particle, particle_set, Particle, laws, ...)

__all__ = [*particle.__all__, "cbed", "noise", "pair", "particle", "ptycho", "published", "stem4d"]
