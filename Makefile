# odir: `make demo` and `make test` do all the set-up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-odir
DEMO_DATA ?= data/demo
# trainings at once on each gpu pool (make deploy): one per GPU
ODIR_GPUS ?= 1

.PHONY: install demo test test-slow test-integration lint format bench up down deploy clean help

help:
	@echo "make demo   install, generate synthetic fundus data, run the pipeline on it"
	@echo "make test   install, lint, run the test suite (make test-slow, make test-integration: the other tiers)"
	@echo "make bench  install, run the benchmarks (table into docs/benchmarks.md, fails on a missed goal)"
	@echo "make up     start the Prefect server, MLflow UI and the deployments on 127.0.0.1; make down stops them"

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

demo: install
	@test -f $(DEMO_DATA)/train.csv || $(BIN)/odir demo-data $(DEMO_DATA)
	$(BIN)/odir validate $(DEMO_DATA)
	$(BIN)/odir full --profile demo --data $(DEMO_DATA)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# test files run in TEST_WORKERS processes at once (pytest-xdist), each file's tests in one of them, in order: much of
# a test's time is a server or a subprocess starting, which leaves a core idle
TEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

test: lint
	$(PYTEST)

# the long end-to-end runs: deployments, workers, retraining, a killed run resumed, two pipelines at once
test-slow: install
	$(PYTEST) -m slow

# the scaled-out path against real PostgreSQL, SeaweedFS, MLflow and Prefect servers (processes, no Docker)
test-integration: install
	$(BIN)/python -m pytest -m integration

# writes its table into docs/benchmarks.md and fails when a row misses its goal
bench: install
	$(BIN)/python -m bench --docs docs/benchmarks.md

up: install
	$(BIN)/odir up

down:
	@test -x $(BIN)/odir && $(BIN)/odir down || true

# Deployments for work pools (prefect.yaml); needs PREFECT_API_URL pointing at a server.
deploy: install
	$(BIN)/prefect work-pool inspect local >/dev/null 2>&1 || $(BIN)/prefect work-pool create local --type process
	$(BIN)/prefect work-pool inspect gpu >/dev/null 2>&1 || $(BIN)/prefect work-pool create gpu --type process
	$(BIN)/prefect work-pool inspect gpu-k8s >/dev/null 2>&1 || $(BIN)/prefect work-pool create gpu-k8s \
		--type kubernetes --base-job-template infra/k8s/gpu-job-template.json
	$(BIN)/prefect work-pool set-concurrency-limit gpu $(ODIR_GPUS)
	$(BIN)/prefect work-pool set-concurrency-limit gpu-k8s $(ODIR_GPUS)
	ODIR_ROOT=$(CURDIR) $(BIN)/prefect --no-prompt deploy --all

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
