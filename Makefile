# Two commands do everything on a fresh machine: `make train` and `make test`.
# Settings pass through as JOB_* variables or ARGS, e.g.  make train ARGS="--max-iters 200"

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# RUN: the run's name when you give one (make train RUN=night1); otherwise the job resolves it as
# every command does: JOB_RUN, else JOB_PRESET, from the environment or the env file, else tiny.
RUN    ?=
ARGS   ?=
run_flag = $(if $(RUN),--run $(RUN))
# NPROC: processes (GPUs) on this machine; above 1 `job train` runs them under torchrun (DDP).
NPROC  ?=
nproc_flag = $(if $(NPROC),--nproc $(NPROC))

.DEFAULT_GOAL := help
.PHONY: help setup train sample status test test-tools test-fast test-network lint clean gpu-wheels monitor monitor-trainer monitor-down bench bench-prepare bench-metrics bench-recipe bench-dtype bench-optim bench-compile

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(STAMP): requirements.txt requirements-dev.txt requirements-trackers.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -r requirements.txt -r requirements-dev.txt
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps -e .
	@touch $@

setup: $(STAMP) ## Create or update the venv in .venv (idempotent)

train: setup ## Prepare the embedded corpus if needed, train (or resume; NPROC=8: on 8 GPUs) and print a sample
	$(BIN)/python -m job train $(run_flag) $(nproc_flag) $(ARGS)
	$(BIN)/python -m job sample $(RUN) --tokens 200

sample: setup ## Print text from the newest checkpoint of RUN
	$(BIN)/python -m job sample $(RUN)

status: setup ## Where RUN stands: iteration, loss, ETA, energy, last checkpoint
	$(BIN)/python -m job status $(RUN)

test: test-tools setup ## Run the suite, on every core, offline (tests/README.md maps it; test-network is the rest)
	$(BIN)/python -m pytest -q -n auto -m "not network" tests

test-network: setup ## The tests that download from PyPI: the wheels `make gpu-wheels` carries to a bare GPU box
	$(BIN)/python -m pytest -q -m network tests

test-tools: ## Install what the tests run besides Python (prometheus, promtool, tini) if missing; apt-get
	@bash tests/tools.sh

test-fast: setup ## Only the fast tier (tests/unit, nothing marked e2e): the loop's parts in-process, seconds
	$(BIN)/python -m pytest -q -m "not e2e" tests/unit

bench-prepare: setup ## Data-prep throughput vs raw tiktoken (tokens/s, MB/s, ratio); ARGS="--format jsonl"
	$(BIN)/python scripts/bench/bench_prepare.py $(ARGS)

lint: setup ## ruff over the code, hadolint over the Dockerfile, the image's torch/CUDA pair
	$(BIN)/ruff check job tests scripts
	$(BIN)/hadolint Dockerfile
	$(BIN)/python scripts/gpu/check_torch_cuda.py

COMPOSE = docker compose -f grafana/compose.yml
# Docker, and its compose plugin: without the plugin, docker reads `compose -f` as flags of its own
# ("unknown shorthand flag: 'f'"), so say what is missing first, in one line, and exit 2.
need_docker = @command -v docker >/dev/null || { echo "error: docker not found; install Docker with the compose plugin (and the NVIDIA container toolkit for the trainer)" >&2; exit 2; }; \
	docker compose version >/dev/null 2>&1 || { echo "error: docker has no compose plugin ('docker compose version' fails); install it: sudo apt-get install docker-compose-plugin (from Docker's apt repository; docs.docker.com/compose/install/linux)" >&2; exit 2; }

monitor: ## Prometheus + Grafana + Alertmanager (host network, 127.0.0.1) for whatever trains here; dashboard on :3000
	$(need_docker)
	mkdir -p data runs $(HF_CACHE)
	$(COMPOSE) up -d
	@echo "Grafana:      http://127.0.0.1:$(or $(GRAFANA_PORT),3000)/d/trainer  (anonymous viewer; admin/admin to edit)"
	@echo "Prometheus:   http://127.0.0.1:$(or $(PROMETHEUS_PORT),9090)  scraping the trainer at http://127.0.0.1:$(PORT)/metrics"
	@echo "Alertmanager: http://127.0.0.1:$(or $(ALERTMANAGER_PORT),9093)  sending the alerts to .env's ALERT_WEBHOOK_URL (where to: $(COMPOSE) logs alertmanager)"

monitor-trainer: ## The same, plus the trainer in a container on all GPUs (compose profile "trainer")
	$(need_docker)
	mkdir -p data runs $(HF_CACHE)
	HOST_UID=$$(id -u) HOST_GID=$$(id -g) HF_CACHE=$(HF_CACHE) $(COMPOSE) --profile trainer up -d --build

monitor-down: ## Stop the monitoring stack and its trainer (keeps the Prometheus, Grafana and Alertmanager volumes)
	$(need_docker)
	$(COMPOSE) --profile trainer down

bench-metrics: setup ## Step time of tiny with metrics off and on, and the difference
	$(BIN)/python scripts/bench/bench_metrics.py

bench-recipe: setup ## Val loss per token and per second of each recipe, 3 seeds, tiny and 6x192 (about 20 min)
	$(BIN)/python scripts/bench/bench_recipe.py $(ARGS)

bench-dtype: setup ## Step time of tiny in fp32 and bf16 on this CPU, and what dtype=auto picks
	$(BIN)/python scripts/bench/bench_dtype.py $(ARGS)

bench-compile: setup ## Seconds to the first step of a compiled run, cold and from the compile cache
	$(BIN)/python scripts/bench/bench_compile.py $(ARGS)

bench-optim: setup ## One Muon step for gpt2-40m's matrices, torch's way and stacked: aten ops and seconds
	$(BIN)/python scripts/bench/bench_optim.py $(ARGS)

gpu-wheels: setup ## The closed set of wheels a bare GPU box (CPython 3.12, manylinux x86_64) lacks, into .whl/ (carry it)
	rm -rf .whl
	$(BIN)/python scripts/gpu/gpu_wheels.py build --dest .whl --python-version 3.12

bench: bench-prepare bench-metrics bench-dtype bench-optim bench-compile bench-recipe ## Run the benchmarks

clean: ## Remove the venv and caches (never runs/ or data/)
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
	find . -name __pycache__ -type d -prune -not -path './runs/*' -not -path './data/*' -exec rm -rf {} +

# ---- container and cron (see docs/operations.md, "The container" and "Cron") -----------------
IMAGE    ?= job:latest
# The image's CUDA variant (docs/gpu.md, "Image variants"): the Dockerfile's default, or one of these.
CUDA     ?=
CUDA_IMAGE_cu126 := nvidia/cuda:12.6.3-base-ubuntu24.04
CUDA_IMAGE_cu130 := nvidia/cuda:13.0.0-base-ubuntu24.04
ENV_FILE ?= .env
PORT     ?= $(or $(JOB_METRICS_PORT),9838)
HF_CACHE ?= $(HOME)/.cache/huggingface

.PHONY: docker-build docker-train cron-install

docker-build: ## Build the CUDA image (IMAGE=job:latest, CUDA=cu130|cu126), owned by your uid/gid
	$(if $(CUDA),$(if $(CUDA_IMAGE_$(CUDA)),,$(error CUDA=$(CUDA) is not a variant; use cu130 or cu126)))
	docker build --build-arg UID=$$(id -u) --build-arg GID=$$(id -g) \
	  $(if $(CUDA),--build-arg TORCH_CUDA=$(CUDA) --build-arg CUDA_IMAGE=$(CUDA_IMAGE_$(CUDA))) -t $(IMAGE) .

docker-train: ## Train in the container (NPROC=8: one process per GPU); metrics on 127.0.0.1:PORT; ARGS pass through
	mkdir -p data runs $(HF_CACHE)
	docker run --rm --gpus all --shm-size 1g --stop-timeout 120 --name job-$(or $(RUN),train) \
	  $(if $(wildcard $(ENV_FILE)),--env-file $(ENV_FILE)) \
	  -v $(CURDIR)/data:/app/data -v $(CURDIR)/runs:/app/runs \
	  -v $(HF_CACHE):/home/job/.cache/huggingface -v /etc/localtime:/etc/localtime:ro \
	  -p 127.0.0.1:$(PORT):$(PORT) -e JOB_METRICS_PORT=$(PORT) $(if $(NPROC),-e JOB_NPROC=$(NPROC)) \
	  $(foreach v,$(filter JOB_% HF_TOKEN,$(.VARIABLES)),-e $(v)) \
	  $(IMAGE) train $(run_flag) $(ARGS)

cron-install: ## Print crontab lines for the nightly window (never edits your crontab)
	@echo "# Add these with 'crontab -e' (or: (crontab -l; make -s cron-install) | crontab -)"
	@sed 's|/path/to/repo|$(CURDIR)|g' scripts/ops/crontab.example
