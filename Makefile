# ecap — the two commands a user needs are `make demo` and `make test`.
# Both run `make setup` first (idempotent; installs everything as root).
PY := .venv/bin/python
export PATH := $(CURDIR)/.venv/bin:$(PATH)

.PHONY: setup demo test lint bench clean

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
