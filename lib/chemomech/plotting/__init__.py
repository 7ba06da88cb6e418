"""Figures for the book: the only part of chemomech that imports matplotlib.

Every helper takes results (Datasets, arrays, model objects) and optional
``ax=``/``fig=`` arguments, returns a :class:`matplotlib.figure.Figure` built
without pyplot (so it is shown once by Jupyter and leaves no global state), and
does no science. One submodule per chapter; all names are re-exported here.
"""

from ._common import *  # noqa: F401,F403
from .learning import *  # noqa: F401,F403
from .registration import *  # noqa: F401,F403
from .strain import *  # noqa: F401,F403
from .study import *  # noqa: F401,F403
from .twin import *  # noqa: F401,F403
from .xanes import *  # noqa: F401,F403
