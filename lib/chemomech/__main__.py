"""Command line of chemomech.

``python -m chemomech reproduce [--quick] --out DIR [--seed N] [--force]`` runs
the end-to-end study of the book (:mod:`chemomech.study`) outside the book and
writes its figures (PNG and PDF), the correlated stacks (NetCDF) and
``DIR/summary.json``.

``python -m chemomech learn FILE [FILE ...] --out DIR [--force]`` learns the
composition–eigenstrain law from correlated stacks: the package's own NetCDF
stacks (:func:`chemomech.io.save_stack`) or MATLAB files in the layout Deng et
al. published (:func:`chemomech.io.read_published_stack`). Each stack is turned
onto a grid aligned with the crystal (:func:`chemomech.correlate.align_to_crystal`),
the strain re-referenced to FePO4 and the law fitted with a cross-validated
degree and bootstrap intervals (``fit_eigenstrain(..., reference="fepo4")``).

Both write into a temporary folder and move it into place only when complete,
so a failed run leaves nothing half-written.

Exit codes: 0 success, 1 the study failed, 2 bad command-line arguments.

A failure inside the study is reported as one line naming the stage and the
particle it happened in, e.g. ``python -m chemomech: error: the study failed in
stage "2/6 X-ray: simulate + map X", particle P3 (ValueError: ...); nothing was
written to 'out'``. Pixels that a stage had to leave out of a particle
(:class:`chemomech.learning.DataWarning`) are reported as warning lines, also
naming the stage and particle; other warnings are silenced.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m chemomech",
                                description="Reproduce the correlative image-learning study of the chemomech book.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    r = sub.add_parser("reproduce", help="run the end-to-end study and write figures, stacks and summary.json",
                       description="Simulate P1-P5, map strain and X, register, correlate, learn the law on "
                                   "P2-P5, test on P1, run the error budget, and write the outputs to DIR.")
    r.add_argument("--quick", action="store_true",
                   help="the small preset the book and CI run (under a minute on two cores); "
                        "default: the full size")
    r.add_argument("--out", required=True, metavar="DIR", help="output folder (must not exist unless --force)")
    r.add_argument("--seed", type=int, default=2022, metavar="N", help="seed of every random draw (default 2022)")
    r.add_argument("--force", action="store_true", help="replace DIR if it exists")
    r.add_argument("--no-budget", action="store_true", help="skip the error budget (three extra fits)")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    r.add_argument("--realistic", action="store_true",
                   help="the realistic twin: dynamical Bragg disks, per-frame X-ray offsets and artefacts "
                        "(with --quick: the quick sizes)")
    m = sub.add_parser("learn", help="learn the eigenstrain law from correlated stacks (.nc or published .mat)",
                       description="Read correlated stacks, align them with the crystal, re-reference the strain "
                                   "to FePO4, learn eps0(X) with cross-validated degree and bootstrap intervals, "
                                   "and write summary.json, figures and the fitted model to DIR.")
    m.add_argument("files", nargs="+", metavar="FILE", help="correlated stacks: .nc (chemomech) or .mat (published)")
    m.add_argument("--out", required=True, metavar="DIR", help="output folder (must not exist unless --force)")
    m.add_argument("--force", action="store_true", help="replace DIR if it exists")
    m.add_argument("--max-degree", type=int, default=3, metavar="N", help="highest degree tried (default 3)")
    m.add_argument("--n-boot", type=int, default=200, metavar="N", help="bootstrap replicates (default 200)")
    m.add_argument("--seed", type=int, default=0, metavar="N", help="seed of CV folds and bootstrap (default 0)")
    m.add_argument("--registration-sd-px", type=float, default=0.0, metavar="PX",
                   help="expected registration error of the stacks (RMS displacement, pixels); the intervals then "
                        "include it (default 0: they do not)")
    return p


def _save_figure(fig, folder: Path, name: str) -> list[str]:
    files = []
    for ext in ("png", "pdf"):
        fig.savefig(folder / f"{name}.{ext}", dpi=150)
        files.append(f"{name}.{ext}")
    return files


def write_outputs(result, out_dir: str | os.PathLike, *, budget=None,
                  seconds: float | None = None, overwrite: bool = False) -> Path:
    """Write the figures (PNG and PDF), the correlated stacks (NetCDF) and ``summary.json``.

    Everything goes to a temporary folder next to `out_dir`, which is moved into
    place only when complete; on any error the temporary folder is removed and
    `out_dir` is left as it was.

    Parameters
    ----------
    result : chemomech.study.StudyResult
    out_dir : path
        Output folder; must not exist unless `overwrite`.
    budget : xarray.Dataset, optional
        From :func:`chemomech.study.error_budget` (adds ``stages`` to the summary and a figure).
    seconds : float, optional
        Total wall time to record.
    overwrite : bool
        Replace an existing `out_dir`.

    Returns
    -------
    pathlib.Path
        The output folder.
    """
    from . import io, plotting, study

    if not isinstance(result, study.StudyResult):
        raise TypeError(f"result must be a StudyResult, got {type(result).__name__}")

    def fill(tmp: Path) -> None:
        figs = {
            "fig1_gallery": plotting.study_gallery(result),
            "fig2_correlated_maps": plotting.study_correlated_maps(result),
            "fig3_strain_vs_x": plotting.study_strain_vs_x(result),
            "fig4_heldout": plotting.study_heldout(result),
            "fig5_slope_table": plotting.study_slope_table(result, budget=budget),
        }
        files = []
        for name, fig in figs.items():
            files += _save_figure(fig, tmp, name)
        (tmp / "stacks").mkdir()
        for name, stack in result.stacks.items():
            io.save_stack(stack, tmp / "stacks" / f"{name}_stack.nc")
            files.append(f"stacks/{name}_stack.nc")
        summary = study.summary_dict(result, budget, seconds=seconds)
        summary["files"] = sorted(files) + ["summary.json"]
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")

    return _write_folder(out_dir, fill, overwrite=overwrite)


def _write_folder(out_dir: str | os.PathLike, fill, *, overwrite: bool) -> Path:
    """Call ``fill(tmp)`` on a temporary folder beside `out_dir`, then move it into place (atomically)."""
    out = Path(out_dir).expanduser().resolve()
    if out.exists() and not overwrite:
        raise FileExistsError(f"out_dir {str(out)!r} exists; choose a new folder or allow overwriting")
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"out_dir {str(out)!r} exists and is not a folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        fill(tmp)
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def write_learned(model, aligned, summary: dict, out_dir, *, overwrite: bool = False) -> Path:
    """Write ``summary.json``, the figures and the fitted model of :func:`chemomech.learning.learn_stacks`."""
    from . import io, plotting, strain

    def fill(tmp: Path) -> None:
        files = _save_figure(plotting.learned_law(model), tmp, "learned_law")
        for s in aligned:
            name = s.attrs["particle"]
            measured = strain.change_reference(s[["exx", "eyy", "exy"]], model.reference_strain[name])
            mask = s["mask"].values
            fig = plotting.strain_residual_maps(measured, model.predict_strain(s["X"], mask),
                                                model.residual(measured, s["X"], mask))
            files += _save_figure(fig, tmp, f"residuals_{_safe(name)}")
        io.save_netcdf(model.summary(), tmp / "model.nc")
        files.append("model.nc")
        body = dict(summary, coef={c: [float(x) for x in row] for c, row in zip(("aa", "cc"), model.coef)},
                    files=sorted(files) + ["summary.json"])
        (tmp / "summary.json").write_text(json.dumps(body, indent=2, allow_nan=False) + "\n")

    return _write_folder(out_dir, fill, overwrite=overwrite)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _fail(msg: str, code: int) -> int:
    print(f"python -m chemomech: error: {_one_line(msg)}", file=sys.stderr)
    return code


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def where(step: dict | None) -> str:
    """Words for a :data:`chemomech.study.current_step`: ``'in stage "3/6 register", particle P2'``.

    Examples
    --------
    >>> where({"stage": "3/6 register", "item": "P2"})
    'in stage "3/6 register", particle P2'
    >>> where({"stage": "error budget: stages -> truth", "item": ("strain", "X")})
    'in stage "error budget: stages -> truth", variant strain+X'
    >>> where({"stage": None, "item": None})
    ''
    """
    if not step or step.get("stage") is None:
        return ""
    stage, item = step["stage"], step.get("item")
    if isinstance(item, str) and item[:1] == "P" and item[1:].isdigit():
        return f'in stage "{stage}", particle {item}'
    if isinstance(item, tuple):
        return f'in stage "{stage}", variant {"+".join(map(str, item))}'
    return f'in stage "{stage}"'


def _failure(err: BaseException, step: dict | None, out: Path) -> str:
    """One line: where the study failed, the error, and that nothing was written."""
    place = where(step)
    place = f" {place}" if place else ""
    return (f"the study failed{place} ({type(err).__name__}: {_one_line(err) or 'no message'}); "
            f"nothing was written to {str(out)!r}")


def _check_out(args) -> str | None:
    """The reason `--out` cannot be used, or None."""
    out = Path(args.out).expanduser()
    if args.seed < 0:
        return f"--seed must be a non-negative integer, got {args.seed}"
    if out.exists() and not args.force:
        return f"--out {str(out)!r} exists; choose a new folder or pass --force to replace it"
    if out.exists() and not out.is_dir():
        return f"--out {str(out)!r} exists and is not a folder"
    parent = out.resolve().parent
    if parent.exists() and not os.access(parent, os.W_OK):
        return f"cannot write into {str(parent)!r} (permission denied)"
    return None


def _main_learn(args) -> int:
    from . import io, learning

    out = Path(args.out).expanduser()
    if args.max_degree < 1 or args.n_boot < 2:
        return _fail(f"--max-degree must be >= 1 and --n-boot >= 2, got {args.max_degree} and {args.n_boot}", 2)
    if not args.registration_sd_px >= 0 or args.registration_sd_px == float("inf"):
        return _fail(f"--registration-sd-px must be a finite number >= 0, got {args.registration_sd_px}", 2)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            stacks = io.read_stacks(args.files)
            model, aligned, summary = learning.learn_stacks(stacks, max_degree=args.max_degree, n_boot=args.n_boot,
                                                           seed=args.seed,
                                                           registration_sd_px=args.registration_sd_px)
            path = write_learned(model, aligned, summary, out, overwrite=args.force)
    except KeyboardInterrupt:
        return _fail("interrupted; nothing was written", 1)
    except Exception as err:  # one clear line, nothing half-written
        return _fail(f"learning failed ({type(err).__name__}: {_one_line(err) or 'no message'}); "
                     f"nothing was written to {str(out)!r}", 1)
    sl = summary["slopes"]
    print(f"learned d eps0/dX at X = {summary['X']}: aa {sl['aa']:+.4f}, cc {sl['cc']:+.4f} "
          f"(degree {summary['degree']}, {summary['pixels']} pixels); outputs in {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args = _parser().parse_args(argv)
    if args.command not in ("reproduce", "learn"):
        _parser().print_help(sys.stderr)
        return 2
    problem = _check_out(args)
    if problem:
        return _fail(problem, 2)
    out = Path(args.out).expanduser()
    os.environ.setdefault("MPLBACKEND", "Agg")
    if args.command == "learn":
        return _main_learn(args)
    from . import study

    progress = not args.no_progress
    config = study.StudyConfig.quick(seed=args.seed) if args.quick else study.StudyConfig.full(seed=args.seed)
    if args.realistic:
        config = dataclasses.replace(config, twin="realistic", label=f"{config.label}-realistic")
    from .learning import DataWarning

    t0 = time.perf_counter()
    notes = []

    def note(message, category, *_args, **_kw):  # a data warning, with where it happened, printed once
        place = where(study.current_step)
        line = _one_line(f"{place}: {message}" if place else message)
        if line not in notes:
            notes.append(line)
            print(f"python -m chemomech: warning: {line}", file=sys.stderr)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("always", DataWarning)
            warnings.showwarning = note
            result = study.run_study(config, progress=progress)
            budget = None if args.no_budget else study.error_budget(result, progress=progress)
            study.current_step.update(stage="write outputs", item=None)
            path = write_outputs(result, out, budget=budget, seconds=time.perf_counter() - t0,
                                 overwrite=args.force)
            study.current_step.update(stage=None, item=None)
    except KeyboardInterrupt:
        place = where(study.current_step)
        return _fail(f"interrupted{' ' + place if place else ''}; nothing was written", 1)
    except Exception as err:  # report any failure as one clear line, nothing half-written
        return _fail(_failure(err, dict(study.current_step), out), 1)
    sl = result.slopes
    print(f"learned d eps0/dX at X = {study.SLOPE_X}: aa {float(sl.learned[0]):+.4f} "
          f"(truth {float(sl.truth[0]):+.4f}), cc {float(sl.learned[1]):+.4f} (truth {float(sl.truth[1]):+.4f}); "
          f"{time.perf_counter() - t0:.0f} s; outputs in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
