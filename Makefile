# Two commands do everything on a fresh machine: `make train` and `make test`.
# Settings pass through as JOB_* variables or ARGS, e.g.  make train ARGS="--max-iters 200"

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
RUN    ?= tiny
ARGS   ?=

.DEFAULT_GOAL := help
.PHONY: help setup train sample status test test-fast lint clean monitor monitor-down bench bench-prepare bench-metrics

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -r requirements.txt -r requirements-dev.txt
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps -e .
	@touch $@

setup: $(STAMP) ## Create or update the venv in .venv (idempotent)

train: setup ## Prepare the embedded corpus if needed, train (or resume) and print a sample
	$(BIN)/python -m job train --run $(RUN) $(ARGS)
	$(BIN)/python -m job sample $(RUN) --tokens 200

sample: setup ## Print text from the newest checkpoint of RUN
	$(BIN)/python -m job sample $(RUN)

status: setup ## Where RUN stands: iteration, loss, ETA, energy, last checkpoint
	$(BIN)/python -m job status $(RUN)

test: setup ## Run the test suite (the fast tier, then the end-to-end tests with real processes)
	$(BIN)/python -m pytest -q -n auto tests

test-fast: setup ## Only the fast tier: the loop's parts in-process, a few seconds
	$(BIN)/python -m pytest -q tests/unit

bench-prepare: setup ## Data-prep throughput vs raw tiktoken (tokens/s, MB/s, ratio); ARGS="--format jsonl"
	$(BIN)/python scripts/bench_prepare.py $(ARGS)

lint: setup ## ruff over the code, hadolint over the Dockerfile
	$(BIN)/ruff check job tests scripts
	$(BIN)/hadolint Dockerfile

monitor: ## Start trainer (GPU), Prometheus and Grafana with docker compose; dashboard on 127.0.0.1:3000
	@command -v docker >/dev/null || { echo "error: docker not found; install Docker with the compose plugin and the NVIDIA container toolkit" >&2; exit 2; }
	docker compose -f grafana/compose.yml up -d --build
	@echo "Grafana:    http://127.0.0.1:3000/d/trainer  (anonymous viewer; admin/admin to edit)"
	@echo "Prometheus: http://127.0.0.1:9090   metrics: http://127.0.0.1:9100/metrics"

monitor-down: ## Stop the monitoring stack (keeps Prometheus and Grafana data volumes)
	docker compose -f grafana/compose.yml down

bench-metrics: setup ## Step time of tiny with metrics off and on, and the difference
	$(BIN)/python scripts/bench_metrics.py

bench: bench-prepare bench-metrics ## Run the benchmarks

clean: ## Remove the venv and caches (never runs/ or data/)
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
	find . -name __pycache__ -type d -prune -not -path './runs/*' -not -path './data/*' -exec rm -rf {} +

# ---- container and cron (see the README's "Container, cron and the nightly window") ----------
IMAGE    ?= job:latest
ENV_FILE ?= .env
PORT     ?= $(or $(JOB_METRICS_PORT),9100)
HF_CACHE ?= $(HOME)/.cache/huggingface

.PHONY: docker-build docker-train cron-install

docker-build: ## Build the CUDA image (IMAGE=job:latest), owned by your uid/gid
	docker build --build-arg UID=$$(id -u) --build-arg GID=$$(id -g) -t $(IMAGE) .

docker-train: ## Train in the container on all GPUs; metrics on 127.0.0.1:PORT; ARGS pass through
	mkdir -p data runs $(HF_CACHE)
	docker run --rm --init --gpus all --stop-timeout 120 --name job-$(RUN) \
	  $(if $(wildcard $(ENV_FILE)),--env-file $(ENV_FILE)) \
	  -v $(CURDIR)/data:/app/data -v $(CURDIR)/runs:/app/runs \
	  -v $(HF_CACHE):/home/job/.cache/huggingface -v /etc/localtime:/etc/localtime:ro \
	  -p 127.0.0.1:$(PORT):$(PORT) -e JOB_METRICS_PORT=$(PORT) \
	  $(foreach v,$(filter JOB_% HF_TOKEN,$(.VARIABLES)),-e $(v)) \
	  $(IMAGE) train --run $(RUN) $(ARGS)

cron-install: ## Print crontab lines for the nightly window (never edits your crontab)
	@echo "# Add these with 'crontab -e' (or: (crontab -l; make -s cron-install) | crontab -)"
	@sed 's|/path/to/repo|$(CURDIR)|g' scripts/crontab.example
