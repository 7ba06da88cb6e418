"""chemomech: correlative image learning of chemo-mechanics in Li_xFePO4.

The public entry points of ``shared/api.md`` are re-exported here and imported
lazily, so that ``import chemomech`` stays fast and does not pull in py4DSTEM
or SimpleITK until they are needed:

- :func:`chemomech.strain.measure_strain` — 4D-STEM Bragg-disk strain maps;
- :func:`chemomech.xanes.map_lithium` — Li fraction from Fe L-edge energy stacks;
- :func:`chemomech.registration.register` — correlative multimodal registration;
- :func:`chemomech.learning.fit_eigenstrain` and
  :class:`chemomech.learning.EigenstrainModel` — physics-constrained learning.

Where things live: the stage modules ``strain``, ``xanes``, ``registration``,
``correlate`` and ``learning`` analyse data, each with the corrections it owns;
``materials`` (constants with sources), ``geometry`` and ``elasticity`` are the
shared physics; ``evaluate`` compares results with ground truth; ``io`` holds
every reader and writer; ``study`` orchestrates the end-to-end run; the
``twin`` folder makes ground truth (simulators only); ``plotting`` draws.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "measure_strain": "strain",
    "map_lithium": "xanes",
    "register": "registration",
    "fit_eigenstrain": "learning",
    "EigenstrainModel": "learning",
}
_SUBMODULES = (
    "materials", "geometry", "elasticity", "strain", "xanes", "registration", "correlate", "learning",
    "evaluate", "io", "study", "twin", "plotting",
)

__all__ = sorted(_LAZY) + list(_SUBMODULES)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'chemomech' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
