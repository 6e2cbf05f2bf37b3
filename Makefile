# ecap — the two commands a user needs are `make demo` and `make test`.
# Both run `make setup` first (idempotent; installs everything as root).
PY := .venv/bin/python
export PATH := $(CURDIR)/.venv/bin:$(PATH)

.PHONY: setup demo test lint bench clean wheelhouse

setup:
	@bash scripts/setup.sh

demo: setup
	@bash scripts/demo.sh

test: setup
	@$(PY) -m ruff check .
	@$(PY) -m ruff format --check .
	@$(PY) -m pytest -q -ra tests

lint: setup
	@$(PY) -m ruff check .
	@$(PY) -m ruff format --check .

bench: setup
	@for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit $$?; done

clean:
	rm -rf .venv build *.egg-info .pytest_cache

# The fleet playbooks install from this (deploy/ansible, README "Scanning a fleet").
wheelhouse: setup
	@rm -rf dist/wheelhouse && mkdir -p dist/wheelhouse
	@$(PY) -m pip wheel -q --disable-pip-version-check --no-build-isolation -w dist/wheelhouse . 2>&1 | grep -v "is ignored" || true
	@tar -C dist/wheelhouse -cf dist/ecap-wheelhouse.tar .
	@echo "wrote dist/ecap-wheelhouse.tar"
