# Two commands on a fresh machine:  `make demo`  and  `make test`.
# Both create the project's own virtual environment (.venv) and install everything first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
REFACE_TEST_DATA ?= $(abspath ../shared/data)
export REFACE_TEST_DATA

.PHONY: demo test test-fast venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## The end-to-end main job on real photos, no downloads.
demo: $(STAMP)
	$(PY) scripts/demo.py --out demo_out

## The whole test suite: lint first (ruff, pyproject's rule set), then unit, slow and
## real-data tests.
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

## The edit loop: skip slow tests.
test-fast: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -m "not slow" -q

clean:
	rm -rf demo_out .pytest_cache
