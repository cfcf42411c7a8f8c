# The two README commands: `make test` and `make demo`. Each creates .venv if missing and installs the
# project (torch pinned to a tested release: an open range would pull a multi-GB CUDA build).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PIN ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: test demo lint venv clean

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check $(TORCH_PIN)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m flake8 launch.py launcher jobs ecg_core tests bench
	$(PY) -m pylint launch.py launcher jobs ecg_core bench

# The embedded default: the demo grid's whole DAG (builds the demo dataset on first use), as local processes
# unless a SLURM profile is configured (see README, "Cluster profiles"). DEMO_ARGS: e.g. --dry-run, steps=50.
demo: $(STAMP)
	$(PY) launch.py --grid grids/demo.yaml $(DEMO_ARGS)

clean:
	rm -rf build runs .pytest_cache
