"""Reading the correlated stacks that Deng et al. published, and `python -m chemomech learn` on them.

The authors' files carry no licence and are not in this project; these tests write stand-ins in the
same layout from the twin (known law, an oblique crystal, strain relative to the particle's own lattice
as a Bragg-disk measurement gives it) in MATLAB v5 (scipy) and v7.3 (HDF5) form.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from chemomech import correlate, io, twin

ROOT = Path(__file__).resolve().parents[1]
ANGLE = 0.35            # rad: the crystal a axis in the image
PIXEL_NM = 8.0
SIGMA_STRAIN = 2e-4     # noise added to the strain maps


def _layout(particle, rng) -> dict:
    return twin.published.published_layout(particle, pixel_size_nm=PIXEL_NM, sigma_strain=SIGMA_STRAIN, rng=rng)


def write_v5(path: Path, data: dict) -> Path:
    return twin.published.write_published(data, path, version="v5")


def write_v73(path: Path, data: dict) -> Path:
    return twin.published.write_published(data, path, version="v7.3")


@pytest.fixture(scope="module")
def standins(tmp_path_factory):
    folder = tmp_path_factory.mktemp("published")
    rng = np.random.default_rng(17)
    parts = [twin.make_particle(n, batch=b, seed=s, mesh_nrefs=4, crystal_angle_rad=ANGLE)
             for n, b, s in (("S1", "biphasic", 5), ("S2", "li_rich", 21), ("S3", "li_poor", 8))]
    data = [_layout(p, rng) for p in parts]
    files = [write_v5(folder / "S1.mat", data[0]), write_v73(folder / "S2.mat", data[1]),
             write_v5(folder / "S3.mat", data[2])]
    return parts, data, files


def test_reader_gives_a_correlated_stack(standins):
    parts, data, files = standins
    for path, d in zip(files, data):
        ds = io.read_published_stack(path)
        assert set(io._validate.STACK_VARIABLES) <= set(ds.data_vars) and {"HAADF", "VADF", "VBF"} <= set(ds)
        m = ds["mask"].values
        assert m.dtype == bool and np.array_equal(m, d["mask"].astype(bool))
        x = d["LFP"][m] / (d["LFP"][m] + d["FP"][m])
        assert np.allclose(ds["X"].values[m], x) and np.isnan(ds["X"].values[~m]).all()
        assert np.allclose(ds["exx"].values[m], d["exx"][m])      # v7.3 came back in row order
        assert ds.attrs["crystal_angle_rad"] == pytest.approx(ANGLE) and ds.attrs["source"] == d["filename"]


def test_align_to_crystal_recovers_the_crystal_grid(standins):
    # the particle rendered with its a axis along x has the same extent as the published one turned back
    parts, data, files = standins
    turned = correlate.align_to_crystal(io.read_published_stack(files[0]))
    straight = twin.make_particle("S1", batch="biphasic", seed=5, mesh_nrefs=4).render(pixel_size_nm=PIXEL_NM)
    assert turned.attrs["crystal_angle_rad"] == 0.0 and turned.attrs["image_angle_rad"] == pytest.approx(ANGLE)
    assert abs(int(turned["mask"].sum()) - int(straight["mask"].sum())) < 0.04 * int(straight["mask"].sum())
    extent = [np.ptp(np.nonzero(a)[ax]) for a in (turned["mask"].values, straight["mask"].values) for ax in (0, 1)]
    assert abs(extent[0] - extent[2]) <= 2 and abs(extent[1] - extent[3]) <= 2


def test_learning_refuses_a_turned_grid(standins):
    from chemomech.learning import fit_eigenstrain

    ds = io.read_published_stack(standins[2][0])
    with pytest.raises(ValueError, match="align_to_crystal"):
        fit_eigenstrain(ds[["exx", "eyy", "exy"]], ds["X"], degree=1, n_boot=0)


def _learn(args, cwd):
    return subprocess.run([sys.executable, "-m", "chemomech", "learn", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd)


@pytest.mark.slow
def test_learn_command_recovers_the_law(standins, tmp_path):
    parts, _, files = standins
    out = tmp_path / "learned"
    run = _learn([*files, "--out", out, "--n-boot", 50], tmp_path)
    assert run.returncode == 0, run.stderr
    summary = json.loads((out / "summary.json").read_text())
    truth = parts[0].law.derivative(0.5)
    for i, c in enumerate(("aa", "cc")):
        assert summary["slopes"][c] == pytest.approx(truth[i], rel=0.02)        # the acceptance: 2 %
        lo, hi = summary["slope_interval"][c]
        assert lo <= truth[i] <= hi
        mean = np.mean(parts[0].law.derivative(np.linspace(0.2, 0.8, 61))[:, i])
        assert summary["mean_slope"][c] == pytest.approx(mean, rel=0.02)
    assert summary["degree"] >= 1 and summary["pixels"] > 1000
    assert set(summary["files"]) >= {"summary.json", "model.nc", "learned_law.png"}
    assert all((out / f).is_file() for f in summary["files"])


def test_registration_term_widens_the_intervals_only(standins):
    from chemomech import learning

    stacks = io.read_stacks(standins[2])
    kw = dict(max_degree=1, n_boot=20, seed=3)
    _, _, plain = learning.learn_stacks(stacks, **kw)
    _, _, reg = learning.learn_stacks(stacks, registration_sd_px=1.0, n_perturb=3, **kw)
    assert plain["slopes"] == reg["slopes"]               # a spread term, not a shift
    # a linear law (max_degree=1) has one slope everywhere: its mean over X in [0.2, 0.8] is that slope
    assert plain["degree"] == 1
    assert [plain["mean_slope"][c] for c in ("aa", "cc")] == pytest.approx([plain["slopes"][c] for c in ("aa", "cc")])
    assert any(t.startswith("registration ±1 px") for t in reg["interval_terms"])
    assert not any(t.startswith("registration") for t in plain["interval_terms"])
    for c in ("aa", "cc"):
        width = [np.diff(s["slope_interval"][c])[0] for s in (plain, reg)]
        assert width[1] > width[0], (c, width)
    with pytest.raises(ValueError, match="registration_sd_px"):
        learning.learn_stacks(stacks, registration_sd_px=-0.5, **kw)


@pytest.mark.parametrize("flaw, expected", [
    ("missing_var", "lacks ['LFP']"),
    ("wrong_shape", "share one grid"),
    ("all_nan_mask", "no pixel of mask"),
    ("not_mat", "not"),
    ("missing_file", "does not exist"),
])
def test_bad_files_give_one_line_and_write_nothing(standins, tmp_path, flaw, expected):
    _, data, _ = standins
    d = dict(data[0])
    path = tmp_path / f"{flaw}.mat"
    if flaw == "missing_var":
        d.pop("LFP")
    elif flaw == "wrong_shape":
        d["FP"] = d["FP"][:-3]
    elif flaw == "all_nan_mask":
        d["mask"] = np.zeros_like(d["mask"])
    if flaw == "not_mat":
        path.write_text("exx,eyy\n0,0\n")
    elif flaw != "missing_file":
        write_v5(path, d)
    with pytest.raises((FileNotFoundError, ValueError)) as err:
        io.read_published_stack(path)
    assert expected in str(err.value) and path.name in str(err.value)
    out = tmp_path / "out"
    run = _learn([path, "--out", out], tmp_path)
    assert run.returncode == 1 and not out.exists()
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path.name) in lines[0] and expected in lines[0], run.stderr


def test_learn_bad_arguments_exit_2(tmp_path):
    run = _learn(["--out", tmp_path / "o"], tmp_path)
    assert run.returncode == 2
    run = _learn(["x.mat", "--out", tmp_path / "o", "--registration-sd-px", "-1"], tmp_path)
    assert run.returncode == 2 and "--registration-sd-px" in run.stderr and not (tmp_path / "o").exists()
