# Two entry points for a newcomer: `make demo` and `make test`. Each sets up .venv itself.
# `make test-floor` runs the suite again on the oldest torch/torchvision we declare (for CI);
# `make lint` runs ruff (lint + format check) and mypy.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.gcnet-installed
TORCH_PINNED := torch==2.14.1 torchvision==0.29.1
FLOOR_VENV := .venv-floor
FLOOR_STAMP := $(FLOOR_VENV)/.gcnet-installed
TORCH_FLOOR := torch==2.4.1 torchvision==0.19.1
PYTEST_ARGS := -q -x --durations=15 tests

.PHONY: demo test test-floor lint install clean

# $(call setup_venv,DIR,TORCH PINS): a venv in DIR with those torch/torchvision and gcnet's test extras.
define setup_venv
	test -x $(1)/bin/python || $(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install --quiet --upgrade pip
	$(1)/bin/python -m pip install --quiet $(2)
	$(1)/bin/python -m pip install --quiet -e ".[test,export,lint]"
	touch $(1)/.gcnet-installed
endef

$(STAMP): pyproject.toml
	$(call setup_venv,$(VENV),$(TORCH_PINNED))

$(FLOOR_STAMP): pyproject.toml
	$(call setup_venv,$(FLOOR_VENV),$(TORCH_FLOOR))

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

test-floor: $(FLOOR_STAMP)
	$(FLOOR_VENV)/bin/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy

demo: $(STAMP)
	$(PY) -m gcnet demo --work-dir demo_out

clean:
	rm -rf $(VENV) $(FLOOR_VENV) demo_out
