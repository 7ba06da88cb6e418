"""The command line reports a failure inside any stage as one line naming the stage and the particle."""

from __future__ import annotations

import warnings

import pytest

from chemomech import __main__ as cli
from chemomech import study
from chemomech.learning import DataWarning


def _run(monkeypatch, tmp_path, capsys, stage_fn: str, fail_on: str, err: Exception, *, warn: bool = False):
    calls = []

    def fake(particle_or_state, *args, **kwargs):
        name = getattr(particle_or_state, "name", None)
        calls.append(name)
        if warn:
            warnings.warn("mask (P1): 3 of 100 pixels have a non-finite strain", DataWarning, stacklevel=1)
        if name == fail_on:
            raise err
        return {}

    monkeypatch.setattr(study, stage_fn, fake)
    code = cli.main(["reproduce", "--quick", "--out", str(tmp_path / "out"), "--no-progress", "--no-budget"])
    return code, capsys.readouterr().err, calls


def test_failure_inside_a_stage_is_one_line_naming_stage_and_particle(monkeypatch, tmp_path, capsys):
    # a third-party message spread over lines (as h5py and scikit-image sometimes do)
    err = OSError("Unable to synchronously open file\n(truncated file: eof = 10, stored_eof = 20)")
    code, out, calls = _run(monkeypatch, tmp_path, capsys, "_measure_strain_stage", "P2", err)
    assert code == 1 and calls == ["P1", "P2"]
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert len(lines) == 1, out
    assert 'in stage "1/6 4D-STEM: simulate + map strain", particle P2' in lines[0]
    assert "OSError: Unable to synchronously open file (truncated file" in lines[0]
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []  # nothing half-written
    assert study.current_step == {"stage": "1/6 4D-STEM: simulate + map strain", "item": "P2"}


def test_data_warnings_are_reported_with_the_stage(monkeypatch, tmp_path, capsys):
    code, out, _ = _run(monkeypatch, tmp_path, capsys, "_measure_strain_stage", "P2", ValueError("boom"),
                        warn=True)
    assert code == 1
    lines = out.splitlines()
    assert lines[0] == ('python -m chemomech: warning: in stage "1/6 4D-STEM: simulate + map strain", '
                        "particle P1: mask (P1): 3 of 100 pixels have a non-finite strain")
    assert len(lines) == 3 and "particle P2 (ValueError: boom)" in lines[2]


@pytest.mark.parametrize("step, words", [
    ({"stage": "5/6 learn on P2+P3+P4+P5", "item": "law"}, 'in stage "5/6 learn on P2+P3+P4+P5"'),
    ({"stage": "6/6 test on P1", "item": "P1"}, 'in stage "6/6 test on P1", particle P1'),
    ({"stage": None, "item": None}, ""),
])
def test_where_words(step, words):
    assert cli.where(step) == words
    line = cli._failure(ValueError("x\n y"), step, cli.Path("o"))
    assert "\n" not in line and "(ValueError: x y)" in line
