# The README's two commands. Everything lands in .venv (created here) and runs/ (ignored by git).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEMO   ?= runs/demo
DOWNSTREAM ?= runs/downstream
REFERENCE ?= runs/reference

.PHONY: demo downstream reference test install lint ci clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The stamp depends on pyproject.toml so a changed dependency list reinstalls.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[all,dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	bash scripts/demo.sh $(DEMO)

# After `make demo`: does the synthetic data help a downstream segmenter? (docs/results/downstream/)
downstream: install
	bash scripts/downstream.sh $(DEMO) $(DOWNSTREAM)

# The reference example model (under an hour on 2 cores) and its count-control / realism reports.
reference: install
	bash scripts/reference.sh $(REFERENCE)

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .

# What CI runs (.ci/run): the linter, then the README's test command.
ci: lint test

clean:
	rm -rf $(DEMO)
