# One command each: `make demo` (the main job on RefShapes) and `make test` (the test suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Extra options of `ditsam demo`, e.g. `make demo DEMO_ARGS=--overwrite` to replace an earlier demo's results.
DEMO_ARGS ?=

.PHONY: setup test demo clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/python -m pytest -n 2 tests

demo: $(STAMP)
	$(BIN)/ditsam demo $(DEMO_ARGS)

clean:
	rm -rf $(VENV) runs
