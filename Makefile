# clrepro: the two set-up commands are `make quickstart` and `make test`.
PY ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml ci/constraints.txt | sha1sum | cut -c1-12)
CLREPRO := $(VENV)/bin/clrepro

.PHONY: venv quickstart test bench tables parity clean

venv: $(STAMP)

# (Re)create the environment when it is missing or pyproject/constraints changed.
$(STAMP): pyproject.toml ci/constraints.txt
	rm -rf $(VENV)
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q torch==2.13.0 -c ci/constraints.txt
	$(VENV)/bin/pip install -q -c ci/constraints.txt -e ".[test]"
	touch $@

quickstart: venv
	$(CLREPRO) sweep sweeps/quickstart.yaml
	$(CLREPRO) table paper_tables/ci/quickstart.yaml --out outputs/tables

test: venv
	$(VENV)/bin/python -m pytest

# Regenerate the CI-scale tables into a clean store and compare with paper_tables/ci/expected/.
tables: venv
	$(VENV)/bin/python ci/regenerate_tables.py

bench: venv
	$(VENV)/bin/python benchmarks/hat_step_overhead.py
	$(VENV)/bin/python benchmarks/sweep_efficiency.py sweeps/quickstart.yaml

# Parity with CLArena and Avalanche on identical data (hours; not in CI): make parity [PAIR=clarena/hat]
parity: venv
	$(VENV)/bin/python benchmarks/parity/run.py $(if $(PAIR),--only $(PAIR)) $(if $(SEEDS),--seeds $(SEEDS))

clean:
	rm -rf $(VENV) outputs .pytest_cache ray_results mlartifacts mlflow.db
