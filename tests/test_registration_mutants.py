"""Registration tests added after mutation testing (benchmarks/mutation_triage.md)."""

from __future__ import annotations

import numpy as np
import pytest

from chemomech import registration


def test_map_points_needs_n_by_2_points():
    # (y, x) pairs only: three coordinates per point, or a flat list, must be refused by name, not mapped
    r = registration.Registration.from_matrix([[1, 0, 2.5], [0, -1, 9], [0, 0, 1]], np.zeros((8, 10)),
                                              np.zeros((9, 12)))
    assert r.map_points([[1.0, 2.0]]).tolist() == [[3.5, 7.0]]
    with pytest.raises(ValueError, match="points"):
        r.map_points([[1.0, 2.0, 3.0]])
    with pytest.raises(ValueError, match="points"):
        r.map_points([1.0, 2.0])
