# pending-jobs: `make demo` to see it work, `make test` for the whole check (lint, types, all databases).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo console test lint typecheck unit property-long bench bench-core mutation clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/python examples/demo.py

# The console on the demo database (run `make demo` first to fill it): http://127.0.0.1:8080/
console: install
	test -f .demo/jobs.sqlite3 || $(BIN)/python examples/demo.py
	PENDING_JOBS_DATABASE_URL=sqlite:///$(CURDIR)/.demo/jobs.sqlite3 $(BIN)/pending-jobs web

lint: install
	$(BIN)/ruff check pending_jobs migrations tests benchmarks examples
	$(BIN)/lint-imports

typecheck: install
	$(BIN)/mypy

# The whole suite on SQLite, MariaDB and PostgreSQL (set PENDING_JOBS_TEST_BACKENDS to narrow it).
test: lint typecheck
	$(BIN)/python -m pytest -q -ra --durations=15

# The runner's logic alone: no database, no network (seconds).
unit: install
	$(BIN)/python -m pytest -q -x tests/unit

# The property tests with a large example budget (`make test` runs 25 examples per database).
property-long: install
	PENDING_JOBS_PROPERTY_EXAMPLES=300 $(BIN)/python -m pytest -q tests/contract/test_properties.py \
		tests/unit/test_config_properties.py --hypothesis-show-statistics

# Every benchmark, each printing its figures beside the raw-SQL floor or target measured in the same
# invocation; cron and soak run in real time (5 and 10 minutes per database by default). bench-core is the
# throughput table of docs/performance.md alone (a few minutes).
bench: bench-core
	$(BIN)/python -m benchmarks.statements
	$(BIN)/python -m benchmarks.declared
	$(BIN)/python -m benchmarks.ceilings
	$(BIN)/python -m benchmarks.flow
	$(BIN)/python -m benchmarks.console
	$(BIN)/python -m benchmarks.push
	$(BIN)/python -m benchmarks.scaling
	$(BIN)/python -m benchmarks.cron
	$(BIN)/python -m benchmarks.soak

bench-core: install
	$(BIN)/python -m benchmarks

# Mutation testing (not part of `make test`): mutmut over `only_mutate` in pyproject.toml's [tool.mutmut],
# driven by tests/unit only; writes docs/mutation.md and fails when a module misses its target.
mutation: install
	rm -rf mutants
	$(BIN)/mutmut run
	$(BIN)/python -m tests.mutation.report

clean:
	rm -rf $(VENV) build *.egg-info .demo .mypy_cache .ruff_cache .pytest_cache
