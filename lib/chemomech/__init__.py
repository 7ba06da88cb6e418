"""chemomech: correlative image learning of chemo-mechanics in Li_xFePO4.

The public entry points of ``shared/api.md`` are re-exported here and imported
lazily, so that ``import chemomech`` stays fast and does not pull in py4DSTEM
or SimpleITK until they are needed:

- :func:`chemomech.strain.measure_strain` — 4D-STEM Bragg-disk strain maps;
- :func:`chemomech.xanes.map_lithium` — Li fraction from Fe L-edge energy stacks;
- :func:`chemomech.registration.register` — correlative multimodal registration;
- :func:`chemomech.learning.fit_eigenstrain` and
  :class:`chemomech.learning.EigenstrainModel` — physics-constrained learning.

The digital twin is :mod:`chemomech.specimen`, the elasticity solver
:mod:`chemomech.elasticity`.
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
    "specimen", "elasticity", "plotting",
    "stem4d", "strain", "io", "ptycho", "xanes", "modalities", "registration", "correlate", "learning", "study",
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
