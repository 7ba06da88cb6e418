"""Tests of the multislice disk-content library (data/make_cbed_library.py) and its loader."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from numpy.testing import assert_allclose

from chemomech.twin import cbed

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "data" / "make_cbed_library.py"


@pytest.fixture(scope="module")
def lib() -> xr.Dataset:
    return cbed.load_library()


def _beam(lib, h, ell):
    return int(np.nonzero((lib.h.values == h) & (lib.l.values == ell))[0][0])


# ------------------------------------------------------------------- (a) regenerate with abTEM
@pytest.mark.slow
@pytest.mark.parametrize("phase", ["LFP", "FP"])
def test_regenerated_entry_matches_committed_library(lib, phase):
    pytest.importorskip("abtem")
    spec = importlib.util.spec_from_file_location("make_cbed_library", SCRIPT)
    maker = importlib.util.module_from_spec(spec)
    sys.modules["make_cbed_library"] = maker
    spec.loader.exec_module(maker)
    tilts = lib.tilt_x_mrad.values[:3]  # 0, 0.2, 0.4 mrad: exercises the termination average
    thickness = lib.thickness_nm.values[:2]  # 10, 15 nm
    entry = maker.library_entry(phase, thickness_nm=thickness, tilt_axis_mrad=tilts)
    assert_allclose(entry["h"], lib.h.values)
    assert_allclose(entry["l"], lib.l.values)
    committed = lib.intensity.sel(phase=phase).isel(thickness_nm=[0, 1], tilt_x_mrad=[0, 1, 2], tilt_y_mrad=[0, 1, 2])
    # Same code, same numpy FFT: only the float32 storage differs (relative 6e-8), so 1e-6 of the
    # largest intensity is tight; a changed structure, slicing or tilt sign moves values by >1e-3.
    assert_allclose(entry["intensity"], committed.values, rtol=0, atol=1e-6 * float(committed.max()))


# ------------------------------------------------------------------- (b) loader
def test_library_shapes_coords_and_units(lib):
    assert lib.intensity.dims == ("phase", "thickness_nm", "tilt_x_mrad", "tilt_y_mrad", "beam")
    assert [str(p) for p in lib.phase.values] == ["FP", "LFP"]
    assert_allclose(lib.thickness_nm.values, np.arange(10.0, 80.1, 5.0))
    assert lib.tilt_x_mrad.values[0] == 0.0 and lib.tilt_x_mrad.values[-1] >= 4.8 - 1e-9
    assert_allclose(np.diff(lib.tilt_x_mrad.values), 0.2, atol=1e-9)
    assert_allclose(lib.tilt_y_mrad.values, lib.tilt_x_mrad.values)
    # g vectors follow each phase's own lattice: LFP a = 10.332 Å, FP a = 9.821 Å
    b200 = _beam(lib, 2, 0)
    assert_allclose(lib.gx_inv_A.sel(phase="LFP").values[b200], 2 / 10.332)
    assert_allclose(lib.gx_inv_A.sel(phase="FP").values[b200], 2 / 9.821)
    g = np.hypot(lib.gx_inv_A.sel(phase="LFP").values, lib.gy_inv_A.sel(phase="LFP").values)
    assert g.max() <= 1.0 + 0.02  # union of the two phases' |g| <= 1.0 1/Å beams
    for name in ["intensity", "thickness_nm", "tilt_x_mrad", "tilt_y_mrad", "h", "l", "gx_inv_A"]:
        assert "units" in lib[name].attrs and "long_name" in lib[name].attrs, name
    assert lib.attrs["voltage_kV"] == 300.0
    assert lib.attrs["abtem_version"] == "1.0.9"


def test_missing_file_names_path_and_command(tmp_path):
    missing = tmp_path / "nope.npz"
    with pytest.raises(FileNotFoundError, match="make_cbed_library.py") as err:
        cbed.load_library(missing)
    assert str(missing) in str(err.value)


def test_default_path_is_the_repository_data_folder():
    assert cbed.default_library_path() == ROOT / "data" / cbed.LIBRARY_FILE


def test_interpolation_reproduces_grid_nodes(lib):
    table = lib.intensity.sel(phase="LFP")
    t, tx, ty = 35.0, 1.4, 2.6  # grid nodes
    node = table.sel(thickness_nm=t, tilt_x_mrad=tx, tilt_y_mrad=ty).values
    out = cbed.disk_intensities(lib, 1.0, t, [0.0, 0.0], [[tx, ty]])
    assert_allclose(out.values[0, 0], node, rtol=1e-12, atol=0)
    # the same node reached as tilt + q
    out = cbed.disk_intensities(lib, 1.0, t, [1.0, 2.0], [[0.4, 0.6]])
    assert_allclose(out.values[0, 0], node, rtol=1e-6, atol=1e-9)


def test_interpolation_is_linear_between_nodes(lib):
    table = lib.intensity.sel(phase="FP")
    lo = table.sel(thickness_nm=20.0, tilt_x_mrad=0.4, tilt_y_mrad=0.2).values
    hi = table.sel(thickness_nm=25.0, tilt_x_mrad=0.4, tilt_y_mrad=0.2).values
    out = cbed.disk_intensities(lib, 0.0, 21.0, [0.4, 0.2], [0.0, 0.0])
    assert_allclose(out.values[0, 0], 0.8 * lo + 0.2 * hi, rtol=1e-6, atol=1e-9)


def test_negative_directions_use_the_mirrors(lib):
    table = lib.intensity.sel(phase="LFP", thickness_nm=40.0)
    ref = table.sel(tilt_x_mrad=1.2, tilt_y_mrad=0.8).values
    h, ell = lib.h.values, lib.l.values
    out = cbed.disk_intensities(lib, 1.0, 40.0, [0.0, 0.0], [[-1.2, 0.8], [1.2, -0.8], [-1.2, -0.8]]).values[0]
    for j in [_beam(lib, 2, 1), _beam(lib, 1, 1), _beam(lib, 3, 0), _beam(lib, 0, 2)]:
        assert_allclose(out[0, j], ref[_beam(lib, -h[j], ell[j])])
        assert_allclose(out[1, j], ref[_beam(lib, h[j], -ell[j])])
        assert_allclose(out[2, j], ref[_beam(lib, -h[j], -ell[j])])


def test_composition_end_members_and_midpoint(lib):
    args = (33.0, [[0.5, -0.3], [1.1, 0.7]], [[0.1, 0.2], [-0.3, 0.0]])
    fp = cbed.disk_intensities(lib, [0.0, 0.0], *args).values
    lfp = cbed.disk_intensities(lib, [1.0, 1.0], *args).values
    mid = cbed.disk_intensities(lib, [0.25, 0.25], *args).values
    assert_allclose(mid, 0.75 * fp + 0.25 * lfp, rtol=1e-12, atol=1e-15)
    node_fp = lib.intensity.sel(phase="FP", thickness_nm=30.0, tilt_x_mrad=0.6, tilt_y_mrad=0.4).values
    node_lfp = lib.intensity.sel(phase="LFP", thickness_nm=30.0, tilt_x_mrad=0.6, tilt_y_mrad=0.4).values
    assert_allclose(cbed.disk_intensities(lib, 0.0, 30.0, [0.6, 0.4], [0, 0]).values[0, 0], node_fp, rtol=1e-12)
    assert_allclose(cbed.disk_intensities(lib, 1.0, 30.0, [0.6, 0.4], [0, 0]).values[0, 0], node_lfp, rtol=1e-12)
    assert np.abs(node_fp - node_lfp).max() > 1e-2  # the two tables really differ


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"X": 1.2}, "X"),
        ({"X": -0.1}, "X"),
        ({"thickness_nm": 5.0}, "thickness_nm"),
        ({"thickness_nm": 90.0}, "thickness_nm"),
        ({"tilt_mrad": [4.5, 0.0]}, "tilt_mrad"),
        ({"tilt_mrad": [0.0, -4.9]}, "tilt_mrad"),
        ({"q_mrad": [[5.0, 0.0]]}, "q_mrad"),
        ({"tilt_mrad": [[0.0, 0.0, 0.0]]}, "tilt_mrad"),
    ],
)
def test_out_of_range_raises_naming_the_argument(lib, kwargs, name):
    args = {"X": 0.5, "thickness_nm": 30.0, "tilt_mrad": [0.0, 0.0], "q_mrad": [[0.5, 0.0]], **kwargs}
    with pytest.raises(ValueError, match=name):
        cbed.disk_intensities(lib, **args)


def test_loader_imports_no_abtem_and_no_analysis_module():
    source = (ROOT / "lib" / "chemomech" / "twin" / "cbed.py").read_text()
    imports = [ln.strip() for ln in source.splitlines() if ln.strip().startswith(("import ", "from "))]
    assert not [ln for ln in imports if "abtem" in ln]
    for module in ["strain", "xanes", "registration", "learning", "correlate"]:
        assert not [ln for ln in imports if module in ln], module


# ------------------------------------------------------------------- (c) physics
def test_intensities_non_negative_and_nearly_conserved(lib):
    values = lib.intensity.values
    assert np.all(np.isfinite(values))
    assert values.min() >= 0.0
    total = values.sum(axis=-1)
    # No absorption model, so only electrons scattered outside the stored beams (|g| > 1 1/Å)
    # or beyond the grid's antialiasing aperture (~4 1/Å) are missing: the sum is just below 1.
    assert total.max() <= 1.0 + 1e-4
    assert total.min() >= 0.8


def test_zero_tilt_pattern_has_the_mirrors_of_pnma(lib):
    zero = lib.intensity.sel(tilt_x_mrad=0.0, tilt_y_mrad=0.0).values  # (phase, thickness, beam)
    h, ell = lib.h.values, lib.l.values
    flip_h = [_beam(lib, -a, b) for a, b in zip(h, ell)]
    flip_l = [_beam(lib, a, -b) for a, b in zip(h, ell)]
    # The c-mirror (a-glide normal to c) is exact for a slab; the a-mirror holds for the
    # termination average that the library stores. Both to float32 precision.
    assert_allclose(zero[..., flip_h], zero, rtol=1e-5, atol=1e-7)
    assert_allclose(zero[..., flip_l], zero, rtol=1e-5, atol=1e-7)


def test_forbidden_reflections_are_weak_when_thin(lib):
    thin = lib.intensity.sel(thickness_nm=10.0, tilt_x_mrad=0.0, tilt_y_mrad=0.0)
    h, ell = lib.h.values, lib.l.values
    forbidden = ((ell == 0) & (h % 2 == 1)) | ((h == 0) & (ell % 2 == 1))
    allowed = ~forbidden & ~((h == 0) & (ell == 0))
    for phase in ["FP", "LFP"]:
        values = thin.sel(phase=phase).values
        # h00 (h odd) and 00l (l odd) appear only by double diffraction: at 10 nm they stay
        # more than 10x below the strongest allowed reflection.
        assert values[forbidden].max() < 0.1 * values[allowed].max(), phase


def test_lfp_central_disk_is_not_the_brightest_at_30_nm(lib):
    pattern = lib.intensity.sel(phase="LFP", thickness_nm=30.0, tilt_x_mrad=0.0, tilt_y_mrad=0.0).values
    ratio = pattern[_beam(lib, 2, 0)] / pattern[_beam(lib, 0, 0)]
    assert ratio > 1.0
    assert pattern.argmax() != _beam(lib, 0, 0)
