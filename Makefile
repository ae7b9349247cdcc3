# Every target installs what it needs on its own (idempotent): a fresh clone needs only `make smoke` or
# `make test`. pyproject.toml states the supported ranges; LOCK (constraints.txt: the versions the results
# were made with) pins every package by default. `make install LOCK=` resolves the ranges instead, keeping a
# torch that is already installed (with VENV_ARGS=--system-site-packages: the machine's own, e.g. a cluster's).
VENV    ?= .venv
LOCK    ?= constraints.txt
VENV_ARGS ?=
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
export PATH := $(abspath $(VENV))/bin:$(PATH)
# Real-data tests read the CIFAR-10 JPEG copy from here (skipped with a reason when it is absent).
export CIFAR10_JPEG_DIR ?= $(abspath ../shared/data/cifar10-jpeg)

EXPERIMENT ?= smoke
FAST_TESTS := tests/test_config.py tests/test_dag.py tests/test_frequency.py tests/test_masks.py \
              tests/test_methods.py tests/test_spectral.py tests/test_tracking.py tests/test_figures.py \
              tests/test_progress.py tests/test_mlflow_runs.py tests/test_readme.py tests/test_verdicts.py \
              tests/test_train_step.py tests/test_captured.py tests/test_plan.py tests/test_resources.py \
              tests/test_models.py tests/test_recipes.py tests/test_teacher.py tests/test_report_tables.py \
              tests/test_versions.py tests/test_cost.py tests/test_curves.py tests/test_index.py tests/test_schedules.py \
              tests/test_reinit.py tests/test_readme_numbers.py

.PHONY: install smoke reproduce reproduce-slurm test test-fast mutation ui bench dvc-smoke dvc-adopt clean-smoke publish dag \
        push pull pull-teachers

install: $(STAMP)
$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || python3 -m venv $(VENV_ARGS) $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]' $(if $(LOCK),-c $(LOCK))
	touch $(STAMP)

smoke: $(STAMP)          ## the whole DAG on the smoke experiment; report in runs/smoke/report/ (git stays clean)
	python -m pipeline validate --experiment smoke     # names a bad YAML tag, which Snakemake's own loader does not
	snakemake --cores all --configfile configs/smoke.yaml --show-failed-logs

clean-smoke:             ## delete the smoke run's outputs (runs/smoke/); MLflow runs stay (superseded by the next)
	rm -rf runs/smoke

publish: $(STAMP)        ## copy runs/$(EXPERIMENT)/report/ to the committed results/$(EXPERIMENT)/
	python -m pipeline publish --experiment $(EXPERIMENT)

reproduce: $(STAMP)      ## the paper's grid (needs internet for CIFAR and, in practice, a GPU)
	snakemake --cores all

reproduce-slurm: $(STAMP) ## the paper's grid, every job a SLURM job (profiles/slurm; README: Running on a cluster)
	snakemake --profile profiles/slurm $(SNAKEMAKE_ARGS)

# PYTEST_ARGS: e.g. --random-order=random (CI: the suite in a shuffled order, its seed printed), -x, -k NAME
test: $(STAMP)           ## unit, reliability and end-to-end tests (offline)
	$(PY) -m pytest -q $(PYTEST_ARGS)

mutation: $(STAMP)       ## the mutation check alone (part of make test): every bug in tests/mutants.yaml must fail a test
	$(PY) -m pytest -q tests/test_mutation.py

test-fast: $(STAMP)      ## unit tests only (a few minutes)
	$(PY) -m pytest -q $(FAST_TESTS)

ui: $(STAMP)             ## MLflow UI on 127.0.0.1 only (set HOST=0.0.0.0 to expose it)
	mlflow ui --backend-store-uri sqlite:///$(abspath mlruns.db) --host $${HOST:-127.0.0.1} --port $${PORT:-5000}

bench: $(STAMP)          ## speed and memory ratios (benchmarks/README.md)
	$(PY) -m benchmarks.run

dvc-smoke: $(STAMP)      ## the same smoke DAG through DVC (dvc.yaml and dvc.params.yaml re-exported first)
	python -m pipeline export_dvc --experiment smoke > dvc.yaml.tmp && mv dvc.yaml.tmp dvc.yaml
	dvc repro

# dvc commit re-links the outputs stage by stage (new mtimes, in its own order): --touch gives Snakemake back
# the DAG's order, so that neither tool reruns anything afterwards.
dvc-adopt: $(STAMP)      ## after `make smoke`: DVC records Snakemake's outputs as up to date, computing nothing
	dvc commit -f -q
	snakemake --touch --cores 1 --configfile configs/$(EXPERIMENT).yaml --quiet all

# Sharing through a DVC remote (README: Sharing what was computed). The remote is each clone's own setting
# (`dvc remote add -d --local NAME URL`, kept in the git-ignored .dvc/config.local): the project commits none.
# dvc.lock says what to pull: commit it after `make push`. A pull re-times the files in the DAG's order
# (snakemake --touch), as dvc-adopt does, so that neither tool runs again what was pulled, and copies the pulled
# report build (runs/<name>/report_build/, with its manifest) into report.dir.
push: $(STAMP)           ## after dvc-adopt (or dvc repro): every output dvc.lock records, to the DVC remote
	dvc push
	@echo "pushed; commit dvc.lock (git add dvc.lock && git commit) so that a clone can pull by it"

pull: $(STAMP)           ## every output dvc.lock records, from the DVC remote; nothing is left to run
	@test -f dvc.lock || { echo "no dvc.lock: check out the commit that shared the run (make push)"; exit 2; }
	dvc pull
	snakemake --touch --cores 1 --configfile configs/$(EXPERIMENT).yaml --quiet all
	python -m pipeline report --experiment $(EXPERIMENT) --from-build   # the pulled build into report.dir

pull-teachers: $(STAMP)  ## only the prepared data and the dense teachers; a run then starts at pruning
	@test -f dvc.lock || { echo "no dvc.lock: check out the commit that shared the run (make push)"; exit 2; }
	dvc pull $$(dvc stage list --name-only | grep -E '^(prepare|train_dense)-')
	snakemake teachers --touch --cores 1 --quiet all --configfile configs/$(EXPERIMENT).yaml   # target first

dag: $(STAMP)            ## docs/dag.svg, the rule graph (needs graphviz's `dot`)
	mkdir -p docs
	snakemake --rulegraph --configfile configs/smoke.yaml | dot -Tsvg > docs/dag.svg
