# The two set-up commands of the README: `make demo` and `make test`.
# Each creates .venv on first use and installs what it needs; nothing else is done by hand.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv

.PHONY: install demo test lint typecheck unit

$(UV):
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check uv

# Strict editable mode: a link tree that mypy can resolve through the namespaced mapping.
# Re-run on every target so new modules are linked in.
install: $(UV)
	$(UV) pip install --quiet --python $(PY) --reinstall-package aerie \
		--config-settings editable_mode=strict -e '.[dev]'

demo: install
	$(VENV)/bin/aerie demo

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install
	$(VENV)/bin/mypy -p aerie.proto -p aerie.edge -p aerie.models -p aerie.brain -p aerie.perf

unit: install
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

test: lint typecheck unit
