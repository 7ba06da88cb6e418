# chemomech: build the book and run the tests from a fresh checkout.
#
#   make book   # main job: clean build of the executed book -> _build/html/index.html
#   make test   # unit tests + doctests + every chapter under nbval
#   make env    # (run by both) create/update .venv from requirements.lock; fast no-op when current
#   make pdf         # after make book: the book as one PDF, _build/html/chemomech.pdf (run by .ci/run)
#   make check-html  # after make book: every page in headless Chromium, network blocked (run by .ci/run)
#   make mutation    # mutation testing of six analysis modules with mutmut (slow; not part of CI)
#   make lint | clean | distclean
#
# Needs only GNU make and Python 3.11 (override with `make PYTHON=/path/to/python3.11 ...`).

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:
MAKEFLAGS += --no-builtin-rules

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
STAMP  := $(VENV)/.installed
BUILD  := _build
NBVAL  := $(BUILD)/nbval

# Chapters run under nbval: book/01_twin.md, book/02_strain.md, ...
CHAPTERS := $(sort $(wildcard book/[0-9]*.md))

# Headless plotting everywhere; the venv's Jupyter data dir (kernelspec `python3`) comes first,
# so notebooks never run on a kernel registered by some other interpreter.
export MPLBACKEND := Agg
export JUPYTER_PATH := $(CURDIR)/$(VENV)/share/jupyter
export PYDEVD_DISABLE_FILE_VALIDATION := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help env test unit nbval book pdf check-html mutation lint clean distclean

help:
	@echo "make book       build the book (clean, executed, -W) -> $(BUILD)/html/index.html"
	@echo "make test       unit tests + doctests + nbval of every chapter"
	@echo "make pdf        after make book: print the single-page build to $(BUILD)/html/chemomech.pdf"
	@echo "make check-html after make book: open every page in headless Chromium (network blocked), check it"
	@echo "make env        create/update $(VENV) from requirements.lock (run by book and test)"
	@echo "make mutation   mutmut over elasticity, _diskfind, learning, strain, xanes, registration (slow)"
	@echo "make lint       ruff check lib tests tools"
	@echo "make clean      remove $(BUILD), caches and data/generated (keeps $(VENV))"
	@echo "make distclean  clean + remove $(VENV)"

# ------------------------------------------------------------------ environment
$(PY):
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or pass PYTHON=/path/to/python3.11" >&2; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || { echo "error: $(PYTHON) is not Python 3.11" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)

# Re-install only when the lock or the package metadata changed (or the venv is new).
$(STAMP): requirements.lock pyproject.toml | $(PY)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements.lock
	$(PY) -m pip install --no-deps -e .
	$(PY) -c 'import chemomech, sys; print("chemomech installed in", sys.prefix)'
	touch $@

env: $(STAMP)

# ------------------------------------------------------------------ tests
test: unit nbval

# Unit tests and chapters run on TEST_WORKERS processes (pytest-xdist), whole files per worker (--dist
# loadfile: a file's module fixtures are built once, a chapter's cells run in order in one kernel), one
# BLAS/OpenMP thread each so the workers do not oversubscribe the two cores.
TEST_WORKERS ?= 2

unit: $(STAMP)
	OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 \
	  $(PY) -m pytest tests lib/chemomech --doctest-modules -m "not browser" -n $(TEST_WORKERS) --dist loadfile

# Each chapter is converted to a notebook in $(NBVAL) and executed cell by cell; outputs are not
# compared (--nbval-lax), so any error or failing `assert` fails the run. Pytest's exit code 5
# ("no tests collected") is non-zero, so an empty chapter set fails too.
nbval: $(STAMP)
	rm -rf $(NBVAL)
	mkdir -p $(NBVAL)
	@test -n "$(CHAPTERS)" || { echo "error: no chapters book/[0-9]*.md to test" >&2; exit 1; }
	for md in $(CHAPTERS); do \
	  $(BIN)/jupytext --quiet --to ipynb --output $(NBVAL)/$$(basename $${md%.md}).ipynb $$md; \
	done
	OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 \
	  $(PY) -m pytest --nbval-lax --nbval-current-env --nbval-cell-timeout=300 -n $(TEST_WORKERS) --dist loadfile $(NBVAL)

# ------------------------------------------------------------------ book
book: $(STAMP)
	rm -rf $(BUILD)/html $(BUILD)/singlehtml $(BUILD)/.jupyter_cache $(BUILD)/jupyter_execute $(BUILD)/.doctrees
	$(BIN)/jupyter-book build . -n -W --keep-going
	@echo
	@echo "Book built: open $(BUILD)/html/index.html"

# ------------------------------------------------------------------ rendered pages
# Both targets need the built book and Debian's chromium, installed when missing (needs root, as in CI).
define need_book_and_chromium
	@test -f $(BUILD)/html/index.html || { echo "error: $(BUILD)/html/index.html missing; run make book first" >&2; exit 1; }
	@command -v chromium >/dev/null || { echo "installing Debian's chromium (apt-get)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
endef

# The single-page build reuses the chapters executed by `make book` (same .doctrees, nothing changed),
# then Chromium prints it, network blocked, after the page passes the same checks as check-html.
pdf: $(STAMP)
	$(need_book_and_chromium)
	$(BIN)/jupyter-book build . --builder singlehtml -n -W --keep-going
	$(PY) tools/book_pdf.py $(BUILD)/singlehtml $(BUILD)/html/chemomech.pdf

# Tests the checker on pages with known faults, then checks every page of the built book (links to
# the PDF included, so run `make pdf` first); screenshots go to $(BUILD)/screens.
check-html: $(STAMP)
	$(need_book_and_chromium)
	$(PY) -m pytest -q -m browser tests/test_check_html.py
	rm -rf $(BUILD)/screens
	$(PY) tools/check_html.py $(BUILD)/html --screens $(BUILD)/screens

# ------------------------------------------------------------------ mutation testing
# Not part of `make test` or .ci/run: hours on one core. mutmut 3 (requirements-mutation.txt, installed
# into .venv here, not by `make env`) derives module names from src/ layouts only, so the package is
# copied to $(MUT)/src/chemomech with the tests, the data and the [tool.mutmut] config of pyproject.toml,
# and mutmut runs there; its results (mutants/) persist between runs, so a second run only redoes what
# changed. Select modules with MUTANTS, e.g. `make mutation MUTANTS='chemomech.elasticity.*'`;
# MUTATION_SAMPLE=N runs a seeded random sample of N mutants per module instead (all of them number
# ~16 000; needs the mutants from an earlier run; MUTATION_MODULES narrows it). MUTATION_JOBS sets the
# parallel workers. Summary: `cd $(MUT) && ../../$(BIN)/mutmut results`; triage in
# benchmarks/mutation_triage.md.
MUT              := $(BUILD)/mutation
MUTANTS          ?=
MUTATION_SAMPLE  ?=
MUTATION_MODULES ?= elasticity _diskfind learning strain xanes registration
MUTATION_JOBS    ?= 2

mutation: $(STAMP)
	$(PY) -m pip install -q -r requirements-mutation.txt
	mkdir -p $(MUT)/src
	rm -rf $(MUT)/src/chemomech $(MUT)/tests $(MUT)/data
	cp -a lib/chemomech $(MUT)/src/chemomech
	cp -a tests data pyproject.toml $(MUT)/
	find $(MUT)/src $(MUT)/tests -name __pycache__ -type d -prune -exec rm -rf {} +
	cd $(MUT) && names="$(MUTANTS)" && \
	  if [ -n "$(MUTATION_SAMPLE)" ]; then \
	    names=$$($(CURDIR)/$(PY) $(CURDIR)/benchmarks/mutation_sample.py $(MUTATION_SAMPLE) 19 $(MUTATION_MODULES)); fi && \
	  OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 \
	  nice -n 10 $(CURDIR)/$(BIN)/mutmut run --max-children $(MUTATION_JOBS) $$names
	cd $(MUT) && $(CURDIR)/$(BIN)/mutmut results --all true > results.txt || true
	@echo "mutmut results: $(MUT)/results.txt"

# ------------------------------------------------------------------ housekeeping
lint: $(STAMP)
	$(BIN)/ruff check lib tests tools

clean:
	rm -rf $(BUILD) .pytest_cache .hypothesis .ruff_cache data/generated
	find . -path ./$(VENV) -prune -o \( -name __pycache__ -o -name .ipynb_checkpoints \) -type d -print0 \
	  | xargs -0 rm -rf

distclean: clean
	rm -rf $(VENV) lib/*.egg-info
