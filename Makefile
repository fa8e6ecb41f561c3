# The README's commands. Each target installs what it needs first, so a fresh clone needs nothing else
# than Python 3.11+, a JDK 17+ and Maven (the broker's jars come from Maven Central on first use).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install lint run test test-all test-spark spark-extra test-docker docker-up docker-down faults bench bench-producer bench-web bench-batch schemas broker-jars clean

# setup.py and the C sources too: the extensions are compiled at install (consumers/_treewalk.c, _rows.c, shared/_batch.c).
$(STAMP): pyproject.toml setup.py consumers/_treewalk.c consumers/_rows.c shared/_batch.c
	$(PYTHON) -m venv $(VENV)
	# uv resolves and installs the same pins as pip, in seconds instead of ~3 min (CI's budget is 20).
	# --compile-bytecode as pip does: where PYTHONDONTWRITEBYTECODE is set, every process would otherwise
	# compile scikit-learn, pandas and MLflow from source again (it made CI twice as long).
	$(BIN)/python -m pip install --quiet 'uv>=0.5,<1'
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python -e '.[test,faust,bench,lint]'
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
# long fault loops); `make test-all` runs those too. Two workers (pytest-xdist), a test file each at a
# time, each with its own broker: most tests wait on brokers and processes, so this fits CI's 20 minutes.
# Tests marked `serial` (they time pauses and exits) then run alone. TEST_WORKERS=0: all in one process.
TEST_WORKERS ?= 2
PYTEST_PARALLEL = $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

test: lint broker-jars
	$(BIN)/python -m pytest -m "not slow and not docker and not spark and not serial" $(PYTEST_PARALLEL) $(ARGS)
	$(BIN)/python -m pytest -m "serial and not slow and not docker" $(ARGS)

test-all: lint broker-jars spark-extra
	$(BIN)/python -m pytest -m "not docker and not serial" $(PYTEST_PARALLEL) $(ARGS)
	$(BIN)/python -m pytest -m "serial and not docker" $(ARGS)

# The Spark engine (`batch score --engine spark`) in Spark's local mode against a real PostgreSQL: its own
# target, because pyspark is a ~450 MB install (about 3 minutes of CI's 20).
test-spark: spark-extra
	$(BIN)/python -m pytest -m spark $(ARGS)

spark-extra: install
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python -e '.[spark]'

# The Docker path (Debian's docker.io, debootstrap, docker-compose and kcat; installed when missing and
# root): a dockerd of the project's own, the locally made images, then the integration tests against a
# containerized broker and the compose smoke test. The engine it started is stopped at the end.
test-docker: broker-jars
	BIN=$(BIN) bash .ci/test-docker $(TEST_DOCKER_FLAGS) $(ARGS)

docker-up: broker-jars
	$(BIN)/python -m stack.docker up

docker-down: install
	$(BIN)/python -m stack.docker down

# The long tests (marked slow: own broker clusters, long rollouts) and the full fault-injection suite:
# prints a table, writes results/faults.json.
faults: broker-jars
	$(BIN)/python -m pytest -m "slow and not docker"
	$(BIN)/python -m bench.faults $(ARGS)

# Consumer benchmark against the raw client's ceiling and the peers, with a 1M-event memory soak:
# writes results/bench.{json,md,png}; then the per-stage CPU costs: results/scoring-costs.{json,md}; then
# a py-spy profile of the service draining a backlog: results/service-profile.{md,txt}.
BENCH_ARGS ?= --soak 1000000
bench: broker-jars
	$(BIN)/python -m bench.consumers $(BENCH_ARGS) $(ARGS)
	$(BIN)/python -m bench.scoring_costs
	$(BIN)/python -m bench.profile_service

bench-producer: broker-jars
	$(BIN)/python -m bench.producer $(ARGS)

# The estimate service under open-loop load (fixed-rate sends, latency from the scheduled send time), one
# worker, single-ride and 100-ride requests, against the in-process predict: writes results/web.{json,md}.
bench-web: install
	$(BIN)/python -m bench.web $(ARGS)

# The batch job at a million rides on a PostgreSQL of its own: results/batch.{json,md}.
bench-batch: install
	$(BIN)/python -m bench.batch $(ARGS)

schemas: install
	$(BIN)/ridestream schemas

clean:
	rm -rf $(VENV) .pytest_cache results/*.tmp
