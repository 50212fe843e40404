# Two commands for a newcomer: `make test` (everything the tests need, then the tests) and, with the fleet
# controller, `make demo`. Both set themselves up: system packages, a virtualenv in .venv, ober in it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup test lint unit bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/install-system-packages
	scripts/install-system-packages
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

# The test command README and CI both run: linters, strict typing, then the whole suite with coverage.
test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict
	$(BIN)/pytest --cov --cov-report=term

# Fast feedback while editing: no lab, no image.
unit: setup
	$(BIN)/pytest -m "not lab" -q

bench: setup
	$(BIN)/python bench/render.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage
