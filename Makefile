# The two commands of the README: `make demo` runs the main job, `make test` runs the tests.
# Each creates the virtual environment .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export JAX_COMPILATION_CACHE_DIR ?= $(CURDIR)/.cache/jax
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS ?= 0.5

.PHONY: venv demo test test-slow test-all lint format clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev,notebooks]"
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(PY) -m yolov4_jax.main --config=configs/demo.py --workdir=workdirs/demo

lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: venv
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

# The fast tier: every test not marked slow (about 5 minutes on 2 cores).
test: lint
	$(PY) -m pytest -q -n 2 -m "not slow" --durations=10 tests

# The slow tier: full-size parity, notebooks, learning and end-to-end runs, benchmark harnesses.
test-slow: venv
	$(PY) -m pytest -q -n 2 -m slow --durations=10 tests

test-all: test test-slow

clean:
	rm -rf $(VENV) .cache workdirs
