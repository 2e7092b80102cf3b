# The README's commands. Everything lands in .venv (created here) and runs/ (ignored by git).
# Installs are pinned by requirements/constraints.txt (the tested environment), so pip resolves in seconds.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip install --quiet -c requirements/constraints.txt
DEMO   ?= runs/demo
TRAIN_DEMO ?= runs/train-demo
DOWNSTREAM ?= runs/downstream
REFERENCE ?= runs/reference

.PHONY: demo train-demo downstream reference test test-all install install-base lint ci clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The lean runtime alone (numpy, ONNX Runtime, OpenCV, click): what `make demo` needs.
$(VENV)/.installed-base: pyproject.toml requirements/constraints.txt | $(BIN)/python
	$(PIP) -e .
	touch $@

# Everything that installs on a CPU machine (training, export, serving, Ray, tests).
$(VENV)/.installed: pyproject.toml requirements/constraints.txt | $(BIN)/python
	$(PIP) -e ".[all,dev]"
	touch $@ $(VENV)/.installed-base

install-base: $(VENV)/.installed-base
install: $(VENV)/.installed

# The main job: 64 labelled tiles from the shipped model (no training).
demo: install-base
	bash scripts/demo.sh $(DEMO)

# Train your own generator on the example data, end to end (autoencoder, U-Net, export, lean runtime).
train-demo: install
	bash scripts/train_demo.sh $(TRAIN_DEMO)

# After `make train-demo`: does the synthetic data help a downstream segmenter?
downstream: install
	bash scripts/downstream.sh $(TRAIN_DEMO) $(DOWNSTREAM)

# The reference example model (about an hour on 2 cores) and its count-control / realism reports.
reference: install
	bash scripts/reference.sh $(REFERENCE)

# Fast tier: units and small CLI cases (about 5 minutes on 2 cores).
test: install
	$(BIN)/python -m pytest -q -m "not slow and not full"

# Everything: Ray, the PyTriton server, torchrun, torch.compile, the gate and long end-to-end runs.
test-all: install
	$(BIN)/python -m pytest -q -m ""

lint: install
	$(BIN)/ruff check .

# What CI runs (.ci/run): the linter, then every test.
ci: lint test-all

clean:
	rm -rf $(DEMO) $(TRAIN_DEMO)
