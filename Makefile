# clrepro: the two set-up commands are `make quickstart` and `make test`.
PY ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml ci/constraints.txt | sha1sum | cut -c1-12)
CLREPRO := $(VENV)/bin/clrepro

.PHONY: venv quickstart test docs lint bench tables parity parity-lockstep clean

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

# The docs site (docs/, mkdocs.yml) in strict mode: a broken link or anchor fails. Output in site/.
docs: venv
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

# The GitHub workflow against its JSON schema and zizmor's audits, both offline.
lint: venv
	$(VENV)/bin/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml
	$(VENV)/bin/zizmor --offline --no-progress .github/workflows/

# Regenerate the CI-scale tables into a clean store and compare with paper_tables/ci/expected/;
# TABLES_OUT=DIR also writes them there (md, tex, csv, png), as CI does for its artifact.
tables: venv
	$(VENV)/bin/python ci/regenerate_tables.py $(if $(TABLES_OUT),--out $(TABLES_OUT))

bench: venv
	$(VENV)/bin/python benchmarks/hat_step_overhead.py
	$(VENV)/bin/python benchmarks/sweep_efficiency.py sweeps/quickstart.yaml

# Parity with CLArena and Avalanche on identical data (hours; not in CI): make parity [PAIR=clarena/hat]
parity: venv
	$(VENV)/bin/python benchmarks/parity/run.py $(if $(PAIR),--only $(PAIR)) $(if $(SEEDS),--seeds $(SEEDS))

# The same pairs in lockstep: the peer replays clrepro's initial weights and batch order (CLArena; ~1 min a seed)
parity-lockstep: venv
	$(VENV)/bin/python benchmarks/parity/run.py --lockstep $(if $(PAIR),--only $(PAIR)) $(if $(SEEDS),--seeds $(SEEDS))

clean:
	rm -rf $(VENV) outputs site .pytest_cache ray_results mlartifacts mlflow.db
