# fmmformer-pl: every command a user or CI needs. `make help` lists them.
# `make quickstart` and `make test` work on a fresh machine: they create .venv first.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Installed FIRST and on its own: a bare `torch` requirement would pull the multi-GB CUDA build.
# Pip resolves this to the CPU wheel where one is on disk (pip's find-links); on a GPU machine
# set e.g. TORCH_SPEC="torch==2.11.0" to keep the CUDA build you have.
TORCH_SPEC ?= torch==2.13.0
# Extra pip options for that torch install. Elsewhere PyPI's Linux wheel is the CUDA build;
# for the CPU build: make install TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
TORCH_PIP_ARGS ?=
# kernels-cpu: triton for the CPU interpreter tests of the GPU kernels; on a GPU machine use
# EXTRAS=dev,deepspeed (its torch brings the triton it needs).
EXTRAS ?= dev,deepspeed,kernels-cpu
STAMP := $(VENV)/.fmmformer-installed
IMAGE ?= fmmformer-pl
# `latest` links to the folder of the newest quick-start fit: the one `make quickstart` just ran.
QUICKSTART_CKPT := logs/quickstart/latest/checkpoints/last.ckpt

.DEFAULT_GOAL := help
.PHONY: help install quickstart test test-tools lint bench tensorboard docker-build docker-run clean

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  make %-13s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# Re-run the install when the package metadata changes; the stamp marks a finished install.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(PY) -m pip install -e ".[$(EXTRAS)]"
	touch $@

install: $(STAMP) ## Create .venv: torch (CPU wheel) first, then this package with [dev] extras

quickstart: $(STAMP) ## Train an FMMformer on generated ListOps (CPU, a few minutes), then test it
	$(PY) cli.py fit --config configs/quickstart.yaml
	$(PY) cli.py test --config configs/quickstart.yaml --ckpt_path $(QUICKSTART_CKPT)

# Test processes (pytest-xdist); the suite's Python-bound kernel-interpreter tests halve on 2 cores.
TEST_WORKERS ?= 2

test: $(STAMP) ## Run the test suite (GPU tests are skipped without CUDA)
	$(PY) -m pytest -q -n $(TEST_WORKERS)

test-tools: $(STAMP) ## Run the tests of the benchmark and plotting scripts (bench/tests, scripts/tests)
	$(PY) -m pytest -q -n $(TEST_WORKERS) bench/tests scripts/tests

lint: $(STAMP) ## ruff (code) and hadolint (Dockerfile)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check fmmformer_pl data_modules tests bench scripts cli.py conftest.py
	$(VENV)/bin/hadolint Dockerfile

bench: $(STAMP) ## CPU attention benchmark (table + CSV); GPU ones: bench/attention_gpu.py, bench/train_throughput.py
	$(PY) bench/attention_cpu.py

tensorboard: $(STAMP) ## Serve the TensorBoard logs in logs/ on http://localhost:6006
	$(VENV)/bin/tensorboard --logdir logs --port 6006

docker-build: ## Build the CUDA image (needs a Docker daemon; files you write stay yours)
	docker build --build-arg UID=$$(id -u) --build-arg GID=$$(id -g) -t $(IMAGE) .

docker-run: ## The quick start in the image, with ./data and ./logs mounted
	docker run --rm -it --gpus all --ipc=host \
		-v "$(CURDIR)/data:/app/data" -v "$(CURDIR)/logs:/app/logs" \
		$(IMAGE) fit --config configs/quickstart.yaml

clean: ## Remove logs, checkpoints and caches (keeps .venv and data/)
	rm -rf logs lightning_logs .pytest_cache .ruff_cache .hypothesis build dist *.egg-info
	find . -name __pycache__ -type d -not -path "./$(VENV)/*" -prune -exec rm -rf {} +
