# Two commands do all set-up on a fresh machine: `make run` and `make test` (see README.md).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo -n)

.PHONY: install data run test test-fast clean

install: $(VENV)/.installed

# torch/torchvision first, pinned to the pair on local disk: an unpinned resolve would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[dev]'
	@# a venv from before cnnlab's own sweeper still holds Hydra's Optuna plugin (optuna<3), which Hydra would load
	$(BIN)/pip uninstall -y -q hydra-optuna-sweeper 2>/dev/null || true
	touch $@

# Fashion-MNIST, the offline default dataset: Debian's package when there is no local copy (needs apt-get + root).
data:
	@if [ ! -f $(FMNIST) ] && [ ! -f data/raw/fashion_mnist/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null; then \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist \
	  || echo "warning: could not install dataset-fashion-mnist; cnnlab will try to download Fashion-MNIST"; fi

# The whole pipeline (dvc.yaml): params.yaml composed from conf/, then only the stages whose inputs changed.
run: install data
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/cnnlab params
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/dvc repro
	@echo
	@echo "report:    $(CURDIR)/results/report/index.html  (commit dvc.lock and params.yaml: your baseline)"
	@echo "MLflow UI: $(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --port 5000"

# Two workers: most test time is process start-up and imports, which overlap well on 2 cores.
test: install data
	$(BIN)/ruff check
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest -q -n 2

# The inner loop (≤ 60 s here): the in-process tests of config, schema, models, data, faults, DVC deps, metrics,
# report and the README's command lines: 285 tests, 59 s on 2 cores (docs/BENCHMARKS.md). `make test` is the gate.
FAST := config schema models prepare faults dvc_deps evaluation pretrained loader report readme
test-fast: install
	$(BIN)/ruff check
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest -q -n 2 -m "not slow" $(FAST:%=tests/test_%.py)

clean:
	rm -rf data/prepared results runs mlflow.db optuna.db mlartifacts
