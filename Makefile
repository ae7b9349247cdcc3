# Every target installs what it needs on its own (idempotent): a fresh clone needs only `make smoke` or
# `make test`. torch/torchvision are pinned; pip takes them from a local wheel cache where one exists.
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
export PATH := $(abspath $(VENV))/bin:$(PATH)
# Real-data tests read the CIFAR-10 JPEG copy from here (skipped with a reason when it is absent).
export CIFAR10_JPEG_DIR ?= $(abspath ../shared/data/cifar10-jpeg)

.PHONY: install smoke reproduce reproduce-slurm test ui bench dvc-smoke clean-smoke

install: $(STAMP)
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

smoke: $(STAMP)          ## the whole DAG on the smoke experiment (synthetic data, CPU, minutes)
	snakemake --cores all --configfile configs/smoke.yaml

reproduce: $(STAMP)      ## the paper's grid (needs internet for CIFAR and, in practice, a GPU)
	snakemake --cores all

reproduce-slurm: $(STAMP) ## the paper's grid, every job a SLURM job (profiles/slurm; README: Running on a cluster)
	snakemake --profile profiles/slurm $(SNAKEMAKE_ARGS)

test: $(STAMP)           ## unit, reliability and end-to-end tests (offline)
	$(PY) -m pytest -q

ui: $(STAMP)             ## MLflow UI on 127.0.0.1 only (set HOST=0.0.0.0 to expose it)
	mlflow ui --backend-store-uri sqlite:///$(abspath mlruns.db) --host $${HOST:-127.0.0.1} --port $${PORT:-5000}

bench: $(STAMP)          ## speed and memory ratios (benchmarks/README.md)
	$(PY) -m benchmarks.run

dvc-smoke: $(STAMP)      ## the same smoke DAG through DVC
	test -d .dvc || dvc init -q
	dvc repro
