# Two commands for a newcomer: `make demo` (ober's main job on a local lab fleet) and `make test`. Both set
# themselves up: system packages, a virtualenv in .venv, ober in it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup test unit example bench clean demo bench-rolling

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/install-system-packages scripts/fetch-promtool
	scripts/install-system-packages
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	scripts/fetch-promtool $(BIN)
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

# Render and check every node of the example site (no lab, no root needed for the files themselves).
example: setup
	install -m 600 tests/data/login.example $(VENV)/login.example
	$(BIN)/ober fleet render -i inventory/example.yaml --secrets $(VENV)/login.example -o out/example
	@echo "see out/example/NODE/... ; try: $(BIN)/ober fleet inventory -i inventory/example.yaml"

bench: setup
	$(BIN)/python bench/render.py
	$(BIN)/python bench/failover.py
	$(BIN)/python bench/fanout.py
	$(BIN)/python bench/dataplane.py
	$(BIN)/python bench/footprint.py
	$(BIN)/python bench/slowclients.py

# The lab fleet demo (root): lab up, fleet bootstrap, status, a rolling restart under S3 load; the lab stays up.
demo: setup
	$(BIN)/python -m ober.lab.demo

# What each class of rolling step costs an S3 client, on the lab `make demo` leaves up.
bench-rolling: setup
	$(BIN)/python bench/rolling.py

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache .coverage

# A local lab fleet (root): 4 systemd-nspawn nodes, a BIRD ECMP router, two real Ceph RGW groups. Not
# bootstrapped; its inventory and ssh_config are in /var/lib/ober/lab. `make lab-down` removes all of it.
.PHONY: lab-up lab-down
lab-up: setup
	$(BIN)/ober lab up

lab-down: setup
	$(BIN)/ober lab down
