"""Mutation score of the six analysis modules on a stratified random sample of mutmut's mutants (issue 19).

A full mutmut run over the ~17 000 mutants takes about a day on the project's two-core machine, so the score
is *estimated*: a uniform random sample of N mutants per module (seeded, ``mutation_sample.sample``), every one
of them run to a verdict, and a 95 % Wilson interval per module and for the whole (strata weighted by their
mutant counts). The mutants are the ones mutmut 3 generates (``make mutation`` or ``generate`` below); each runs
through mutmut's own trampolines (``MUTANT_UNDER_TEST``), against the fast tests of ``[tool.mutmut]`` in
``pyproject.toml`` that reach the mutated function -- mutmut's own rule, recorded here by one clean pass of the
unmutated code, which must pass.

Verdicts: ``killed`` (a selected test fails, pytest exit 1), ``timeout`` (the run exceeds 5x the clean duration
of its tests + 180 s; counted as killed, as the issue says), ``survived`` (exit 0), ``no tests`` (no fast test
reaches the function; counted as survived). Anything else (collection error, pytest internal error, a crash)
is an ``error``: reported, never counted as a kill.

From the checkout, after ``make env`` and ``.venv/bin/pip install -r requirements-mutation.txt`` (the staging
folder is ``_build/mutation``, as for ``make mutation``; ``--stage DIR`` picks another)::

    B=benchmarks/mutation_score.py
    nice -n 10 .venv/bin/python $B generate          # stage lib/ as src/, generate the mutants (~5 min)
    nice -n 10 .venv/bin/python $B run 45 19 _build/mutation/sample.jsonl --jobs 2   # the sample (~1 h)
    .venv/bin/python $B score _build/mutation/sample.jsonl --triage benchmarks/mutation_survivors.tsv
    .venv/bin/python $B show NAME [NAME ...]         # a mutant's changed lines
    .venv/bin/python $B retest                       # new tests into the staged copy, then `run --only`

``run`` appends one JSON line per mutant to OUT.jsonl and skips mutants already there (so it resumes); the
sampled mutants run in a seeded random order, so a run stopped early is still a random subsample of every
module. ``--only FILE`` runs the names in FILE instead (e.g. the survivors against new tests, with
``--tag``). ``score`` prints the table; with ``--triage`` (tab-separated: mutant, status, reason; status
``killed`` = killed by a new test, ``equivalent``) it adds the score after triage.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import signal
import sys
import time
import tomllib
from collections import defaultdict
from math import sqrt
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from mutation_sample import MODULES, all_names, sample  # noqa: E402

Z95 = 1.959963984540054
TIMEOUT_FLOOR_S = 180  # a child imports and collects its test files first: up to ~60 s on a loaded machine
KILLED = {"killed", "timeout"}
SURVIVED = {"survived", "no tests"}


# ------------------------------------------------------------------------------------------- statistics
def wilson(k: float, n: float, z: float = Z95) -> tuple[float, float]:
    """95 % Wilson score interval of a binomial proportion k/n (n may be an effective, non-integer size).

    >>> [round(v, 3) for v in wilson(40, 50)]
    [0.67, 0.888]
    """
    if n <= 0:
        return (float("nan"), float("nan"))
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (mid - half, mid + half)


def stratified(strata: list[tuple[float, int, int]]) -> tuple[float, float, float, float]:
    """Weighted score over strata (weight, killed, n) with a Wilson interval at Kish's effective sample size.

    The point estimate is sum(W p) with W = w / sum(w) (each module weighted by its number of mutants); the
    effective size n_eff = 1 / sum(W^2 / n) is the simple random sample with the same variance for a common
    p, and the interval is Wilson's at n_eff (it stays meaningful when every module scores 0 or 100 %).
    Returns (score, low, high, n_eff).

    >>> p, lo, hi, n = stratified([(1.0, 40, 50), (1.0, 40, 50)])
    >>> round(p, 2), round(n), [round(v, 3) for v in wilson(80, 100)] == [round(lo, 3), round(hi, 3)]
    (0.8, 100, True)
    """
    strata = [s for s in strata if s[2] > 0]
    wsum = sum(w for w, _, _ in strata)
    p = sum(w / wsum * k / n for w, k, n in strata)
    neff = 1.0 / sum((w / wsum) ** 2 / n for w, _, n in strata)
    lo, hi = wilson(p * neff, neff)
    return p, lo, hi, neff


# ------------------------------------------------------------------------------------------- generation
def stage(root: Path, where: Path) -> None:
    """Copy the package (as src/chemomech: mutmut 3 knows only src/ layouts), tests, data and config to `where`."""
    import shutil

    (where / "src").mkdir(parents=True, exist_ok=True)
    for old in (where / "src" / "chemomech", where / "tests", where / "data", where / "mutants"):
        shutil.rmtree(old, ignore_errors=True)
    skip = shutil.ignore_patterns("__pycache__")
    shutil.copytree(root / "lib" / "chemomech", where / "src" / "chemomech", ignore=skip)
    shutil.copytree(root / "tests", where / "tests", ignore=skip)
    shutil.copytree(root / "data", where / "data", ignore=skip)
    shutil.copy(root / "pyproject.toml", where / "pyproject.toml")


def retest(root: Path) -> None:
    """Replace the tests (and config) of the generated mutants by the checkout's, e.g. to re-run survivors."""
    import shutil

    shutil.rmtree("mutants/tests")
    shutil.copytree(root / "tests", "mutants/tests", ignore=shutil.ignore_patterns("__pycache__"))
    for dest in ("pyproject.toml", "mutants/pyproject.toml"):
        shutil.copy(root / "pyproject.toml", dest)


def generate() -> None:
    """Write the mutants (mutants/src/chemomech/*.py and .meta) with mutmut's generator, without its runs."""
    from mutmut.__main__ import (
        copy_also_copy_files,
        copy_src_dir,
        create_mutants,
        set_mutant_under_test,
        setup_source_paths,
    )
    t0 = time.time()
    set_mutant_under_test("mutant_generation")
    copy_src_dir()
    copy_also_copy_files()
    setup_source_paths()
    print(create_mutants(2), f"{time.time() - t0:.0f} s")


# ------------------------------------------------------------------------------------------- running
def _test_files() -> list[str]:
    cfg = tomllib.loads(Path("pyproject.toml").read_text())["tool"]["mutmut"]
    return list(cfg["pytest_add_cli_args_test_selection"])


PYTEST_ARGS = ["-q", "-p", "no:cacheprovider", "-p", "no:randomly", "-m", "not slow and not browser",
               "--hypothesis-seed=0", "-o", "addopts=", "--no-header", "-rN"]


class _Recorder:
    """pytest plugin of the clean pass: which mutated functions each test reaches, and how long it takes."""

    def __init__(self, dump: Path):
        self.dump = dump
        self.current = "<collection>"
        self.hits: dict[str, set[str]] = defaultdict(set)
        self.duration: dict[str, float] = defaultdict(float)
        self.failed: list[str] = []

    def hit(self, name, caller=None):
        self.hits[self.current].add(name)

    def pytest_runtest_logstart(self, nodeid, location):
        self.current = nodeid

    def pytest_runtest_logreport(self, report):
        self.duration[report.nodeid] += report.duration
        if report.failed:
            self.failed.append(report.nodeid)

    def pytest_sessionfinish(self, session, exitstatus):
        self.dump.write_text(json.dumps({"exit": int(exitstatus), "failed": self.failed, "duration": self.duration,
                                         "hits": {k: sorted(v) for k, v in self.hits.items()}}))


class _Select:
    """pytest plugin of a mutant run: keep the tests that reach the mutant's function, fastest first."""

    def __init__(self, keep: dict[str, float]):
        self.keep = keep

    def pytest_collection_modifyitems(self, config, items):
        kept = sorted((i for i in items if i.nodeid in self.keep), key=lambda i: self.keep[i.nodeid])
        dropped = [i for i in items if i.nodeid not in self.keep]
        items[:] = kept
        if dropped:
            config.hook.pytest_deselected(items=dropped)


def _child(argv: list[str], plugin, log: Path) -> None:
    """In a forked child: new process group, output to log, run pytest, exit with its code."""
    os.setsid()
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    code = 99
    try:
        import pytest
        code = int(pytest.main(argv, plugins=[plugin]))
    except BaseException:  # noqa: BLE001 - anything escaping pytest is a harness error
        import traceback
        traceback.print_exc()
        code = 98
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def clean_pass(files: list[str], out: Path) -> dict:
    """Run the whole fast selection once on the unmutated code (mutmut's 'stats' mode), in a child."""
    import mutmut.mutation.trampoline as tr

    tmp = out.with_suffix(".clean.json")
    rec = _Recorder(tmp)
    pid = os.fork()
    if pid == 0:
        tr.record_trampoline_hit = rec.hit
        tr.set_mutant_under_test("stats")
        _child([*PYTEST_ARGS, *files], rec, out.with_suffix(".clean.log"))
    _, status = os.waitpid(pid, 0)
    data = json.loads(tmp.read_text())
    if os.waitstatus_to_exitcode(status) != 0 or data["exit"] != 0:
        raise SystemExit(f"clean pass failed (exit {data['exit']}; {data['failed']}): see "
                         f"{out.with_suffix('.clean.log')}")
    return data


def _function_of(name: str) -> str:
    return name.rpartition("__mutmut_")[0]


def run(names: list[str], out: Path, jobs: int, tag: str, files: list[str] | None = None) -> None:
    files = files or _test_files()
    sys.path.insert(0, str(Path("mutants/src").resolve()))
    os.chdir("mutants")
    out = out if out.is_absolute() else Path("..") / out
    import chemomech  # noqa: F401  - the mutated package, imported once before the forks
    for module in MODULES:
        __import__(f"chemomech.{module}")
    assert Path(chemomech.__file__).resolve().is_relative_to(Path("src").resolve()), chemomech.__file__
    import mutmut.mutation.trampoline as tr
    t0 = time.time()
    clean = clean_pass(files, out)
    print(f"clean pass: {len(clean['duration'])} test reports, exit 0, {time.time() - t0:.0f} s", flush=True)
    tests_of = defaultdict(dict)
    for test, funcs in clean["hits"].items():
        for f in funcs:
            tests_of[f][test] = clean["duration"].get(test, 0.0)
    done = set()
    if out.exists():
        done = {json.loads(line)["mutant"] for line in out.read_text().splitlines() if line.strip()}
    todo = [n for n in names if n not in done]
    logs = out.with_suffix(".logs")
    logs.mkdir(exist_ok=True)
    running: dict[int, tuple[str, float, float, int]] = {}

    def record(name, verdict, code, seconds, ntests):
        with open(out, "a") as fh:
            fh.write(json.dumps({"mutant": name, "module": name.split(".")[1], "verdict": verdict, "exit": code,
                                 "seconds": round(seconds, 1), "tests": ntests, "tag": tag}) + "\n")
        print(f"{verdict:9s} {seconds:6.1f}s {ntests:3d} tests  {name}", flush=True)

    while todo or running:
        while todo and len(running) < jobs:
            name = todo.pop(0)
            keep = tests_of.get(_function_of(name), {})
            if "<collection>" in keep:
                keep.pop("<collection>")
            if not keep:
                record(name, "no tests", None, 0.0, 0)
                continue
            sel = sorted({k.split("::")[0] for k in keep})
            limit = 5 * sum(keep.values()) + TIMEOUT_FLOOR_S
            pid = os.fork()
            if pid == 0:
                tr.set_mutant_under_test(name)
                _child([*PYTEST_ARGS, "-x", *sel], _Select(keep), logs / f"{name}.log")
            running[pid] = (name, time.time(), limit, len(keep))
        time.sleep(0.2)
        for pid, (name, start, limit, ntests) in list(running.items()):
            got, status = os.waitpid(pid, os.WNOHANG)
            if got == 0:
                if time.time() - start > limit:
                    os.killpg(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    del running[pid]
                    record(name, "timeout", None, time.time() - start, ntests)
                continue
            del running[pid]
            code = os.waitstatus_to_exitcode(status)
            verdict = {0: "survived", 1: "killed"}.get(code, "error")
            record(name, verdict, code, time.time() - start, ntests)


# ------------------------------------------------------------------------------------------- showing
def _function_source(lines: list[str], name: str) -> list[str]:
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)def " + re.escape(name) + r"\(", line)
        if m:
            indent, out = len(m.group(1)), [line]
            for nxt in lines[i + 1:]:
                if (nxt.strip() and len(nxt) - len(nxt.lstrip()) <= indent
                        and not nxt.lstrip().startswith((")", "]", "}"))):
                    break
                out.append(nxt)
            return out
    return []


def show(names: list[str]) -> str:
    """The changed lines of each mutant against the original function (from mutants/src/chemomech)."""
    files: dict[str, list[str]] = {}
    out = []
    for full in names:
        _, module, name = full.split(".", 2)
        func, _, n = name.rpartition("__mutmut_")
        if module not in files:
            files[module] = Path(f"mutants/src/chemomech/{module}.py").read_text().splitlines()
        a = [x.replace("__mutmut_orig", "") for x in _function_source(files[module], func + "__mutmut_orig")]
        b = [x.replace("__mutmut_" + n, "") for x in _function_source(files[module], name)]
        diff = [x for x in difflib.unified_diff(a, b, lineterm="", n=0)
                if x[:1] in "+-" and not x.startswith(("+++", "---"))]
        out += [full] + ["   " + x[0] + " " + x[1:].strip() for x in diff]
    return "\n".join(out)


# ------------------------------------------------------------------------------------------- scoring
def _pct(x: float) -> str:
    return f"{100 * x:.0f} %"


def _read(paths: list[Path]) -> dict:
    rows = {}
    for path in paths:
        for line in path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                rows[r["mutant"]] = r  # a later line (a re-run) replaces an earlier one
    return rows


def score(results: list[Path], triage: Path | None, after: list[Path] | None = None) -> str:
    """The results table; with `after` (re-runs of the survivors against the new tests) a survivor counts as
    killed by a new test only when that re-run killed it, and disagreements with the triage file are listed."""
    rows = _read(results)
    rerun = _read(after) if after else None
    tri, klass = {}, {}
    if triage:
        for line in triage.read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                name, status, cls, *_ = line.split("\t")
                tri[name], klass[name] = status, cls
    counts = {m: len(all_names(m)) for m in MODULES}
    head = ("| module | mutants | sampled | killed | timeout | survived | no tests | error | raw score (95 % CI) "
            "| killed by new tests | equivalent | after triage (95 % CI) |")
    lines = [head, "|" + " --- |" * 12]
    before, after = [], []
    tot = defaultdict(int)
    for m in MODULES:
        rs = [r for r in rows.values() if r["module"] == m]
        c = defaultdict(int)
        for r in rs:
            c[r["verdict"]] += 1
        k = c["killed"] + c["timeout"]
        n = k + c["survived"] + c["no tests"]
        surv = [r["mutant"] for r in rs if r["verdict"] in SURVIVED]
        if rerun is None:
            newk = sum(tri.get(s) == "killed" for s in surv)
        else:
            newk = sum(s in rerun and rerun[s]["verdict"] in KILLED for s in surv)
        eq = sum(tri.get(s) == "equivalent" and not (rerun and s in rerun and rerun[s]["verdict"] in KILLED)
                 for s in surv)
        k2, n2 = k + newk, n - eq
        before.append((counts[m], k, n))
        after.append((counts[m], k2, n2))
        for key, v in (("sampled", len(rs)), ("killed", c["killed"]), ("timeout", c["timeout"]),
                       ("survived", c["survived"]), ("no tests", c["no tests"]), ("error", c["error"]),
                       ("new", newk), ("eq", eq), ("k", k), ("n", n), ("k2", k2), ("n2", n2)):
            tot[key] += v
        lo, hi = wilson(k, n)
        lo2, hi2 = wilson(k2, n2)
        lines.append(f"| {m} | {counts[m]} | {len(rs)} | {c['killed']} | {c['timeout']} | {c['survived']} | "
                     f"{c['no tests']} | {c['error']} | {_pct(k / n) if n else '-'} ({_pct(lo)}–{_pct(hi)}) | "
                     f"{newk} | {eq} | {_pct(k2 / n2) if n2 else '-'} ({_pct(lo2)}–{_pct(hi2)}) |")
    p, lo, hi, neff = stratified(before)
    p2, lo2, hi2, neff2 = stratified(after)
    lines.append(f"| **all (weighted by mutants)** | {sum(counts.values())} | {tot['sampled']} | {tot['killed']} | "
                 f"{tot['timeout']} | {tot['survived']} | {tot['no tests']} | {tot['error']} | "
                 f"**{_pct(p)}** ({_pct(lo)}–{_pct(hi)}) | {tot['new']} | {tot['eq']} | "
                 f"**{_pct(p2)}** ({_pct(lo2)}–{_pct(hi2)}) |")
    lines.append(f"\nKish effective sample size of the weighted score: {neff:.0f} (raw), {neff2:.0f} (after triage).")
    if rerun is not None:
        for s_, r in sorted(rows.items()):
            if r["verdict"] not in SURVIVED:
                continue
            got = rerun.get(s_, {}).get("verdict", "not re-run")
            if (tri.get(s_) == "killed") != (got in KILLED):
                lines.append(f"- triage says {tri.get(s_)!r}, re-run says {got!r}: {s_}")
    if tri:
        tally = defaultdict(int)
        for s_, r in rows.items():
            if r["verdict"] in SURVIVED:
                got = tri.get(s_, "untriaged")
                if rerun is not None:
                    got = "killed" if rerun.get(s_, {}).get("verdict") in KILLED else (
                        "survived" if got == "killed" else got)
                tally[(got, klass.get(s_, "-"))] += 1
        lines.append("\nSurvivors of the sample by outcome and class: " + "; ".join(
            f"{st} / {cl}: {n}" for (st, cl), n in sorted(tally.items())))
    untriaged = [s for s, r in rows.items() if r["verdict"] in SURVIVED and s not in tri]
    if triage and untriaged:
        lines.append(f"\n{len(untriaged)} survivors not in the triage file: " + ", ".join(sorted(untriaged)))
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--stage", type=Path, default=ROOT / "_build" / "mutation",
                    help="staging folder (default _build/mutation); relative paths below are inside it")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("generate", help="stage the checkout and generate the mutants")
    sub.add_parser("retest", help="copy the checkout's tests over the staged ones (keeps the mutants)")
    r = sub.add_parser("run")
    r.add_argument("n", type=int)
    r.add_argument("seed", type=int)
    r.add_argument("out", type=Path)
    r.add_argument("--jobs", type=int, default=2)
    r.add_argument("--only", type=Path, help="file of mutant names to run instead of the sample")
    r.add_argument("--tests", nargs="+", help="test files instead of [tool.mutmut]'s selection")
    r.add_argument("--tag", default="sample")
    sh = sub.add_parser("show")
    sh.add_argument("names", nargs="+")
    s = sub.add_parser("score")
    s.add_argument("results", type=Path, nargs="+")
    s.add_argument("--triage", type=Path)
    s.add_argument("--after", type=Path, nargs="+", help="re-runs of the survivors against the new tests")
    a = ap.parse_args(argv)
    for key in ("out", "only", "results", "triage", "after"):  # user paths are relative to where the command runs
        v = getattr(a, key, None)
        if isinstance(v, list):
            setattr(a, key, [p.resolve() for p in v])
        elif v is not None:
            setattr(a, key, v.resolve())
    a.stage = a.stage.resolve()
    if a.cmd == "generate":
        stage(ROOT, a.stage)
    os.chdir(a.stage)
    if a.cmd == "generate":
        generate()
    elif a.cmd == "retest":
        retest(ROOT)
    elif a.cmd == "show":
        print(show(a.names))
    elif a.cmd == "run":
        if a.only:
            names = [n.strip() for n in a.only.read_text().splitlines() if n.strip()]
        else:
            import numpy as np
            names = sample(a.n, a.seed)
            names = [names[i] for i in np.random.default_rng(a.seed).permutation(len(names))]
        run(names, a.out, a.jobs, a.tag, a.tests)
    else:
        print(score(a.results, a.triage, a.after))


if __name__ == "__main__":
    main(sys.argv[1:])
