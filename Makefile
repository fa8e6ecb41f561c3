# The README's commands. Each target installs what it needs first, so a fresh clone needs nothing else
# than Python 3.11+, a JDK 17+ and Maven (the broker's jars come from Maven Central on first use).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install lint run test test-all faults bench bench-producer schemas broker-jars clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,faust,bench,lint]'
	touch $(STAMP)

install: $(STAMP)

# Fetch (once, then cached) the Apache Kafka broker jars, so the first test does not pay for it.
broker-jars: install
	$(BIN)/ridestream broker fetch

# The main job: a local broker, the scoring fleet and rides replayed into it, with a live view.
run: broker-jars
	$(BIN)/ridestream demo $(ARGS)

# The house stays in order: the layers (import-linter contracts in pyproject.toml), types, lint.
lint: install
	$(BIN)/lint-imports
	$(BIN)/mypy
	$(BIN)/ruff check .

# The CI test suite: the checks above, then every test but the ones marked slow (own broker clusters,
# long fault loops); `make test-all` runs those too.
test: lint broker-jars
	$(BIN)/python -m pytest -m "not slow" $(ARGS)

test-all: lint broker-jars
	$(BIN)/python -m pytest $(ARGS)

# The full fault-injection suite (long): prints a table, writes results/faults.json.
faults: broker-jars
	$(BIN)/python -m bench.faults $(ARGS)

# Consumer benchmark against the raw client's ceiling and the peers, with a 1M-event memory soak:
# writes results/bench.{json,md,png}; then the per-stage CPU costs: results/scoring-costs.{json,md}.
BENCH_ARGS ?= --soak 1000000
bench: broker-jars
	$(BIN)/python -m bench.consumers $(BENCH_ARGS) $(ARGS)
	$(BIN)/python -m bench.scoring_costs

bench-producer: broker-jars
	$(BIN)/python -m bench.producer $(ARGS)

schemas: install
	$(BIN)/ridestream schemas

clean:
	rm -rf $(VENV) .pytest_cache results/*.tmp
