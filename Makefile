# distinit — the pipeline driven by make. `make help` lists targets and variables.
# Every target depends on `setup`, which builds .venv from requirements.txt once.

SHELL    := /bin/bash
PYTHON   ?= python3
VENV     ?= .venv
BIN      := $(VENV)/bin
DISTINIT := $(BIN)/distinit
DEMO_DIR ?= data/demo
DATA     ?= demo
ROOT     ?= $(if $(filter demo,$(DATA)),$(DEMO_DIR),)
TEACHERS ?=
EXTRACT_ARGS ?=
DISTILL_CONFIG ?= $(if $(filter demo,$(DATA)),configs/demo-distill.yaml,configs/distill.yaml)
TARGETS  ?= targets/$(DATA)
DISTILL_ARGS ?=
EVAL_CONFIG ?= $(if $(filter demo,$(DATA)),configs/demo-eval.yaml,configs/eval.yaml)
HMDB_ROOT ?= $(if $(filter demo,$(DATA)),$(DEMO_DIR)/actions/videos,)
UCF_ROOT ?=
INIT     ?= $(if $(filter demo,$(DATA)),runs/demo/distill,runs/distill)
INITS    ?= scratch,inflated:efficientnet_lite0,$(INIT)
SEEDS    ?= 0,1,2
EVAL_ARGS ?=
PYTEST_ARGS ?=
POSE     ?= 1

.DEFAULT_GOAL := help
.PHONY: help setup demo-data extract verify distill eval-hmdb eval-ucf compare demo test bench clean

help: ## Show targets and variables
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 14
	@echo
	@echo "Variables: PYTHON=$(PYTHON) (interpreter for the venv), DEMO_DIR=$(DEMO_DIR),"
	@echo "           PYTEST_ARGS='$(PYTEST_ARGS)' (e.g. PYTEST_ARGS='-m \"not slow\"'),"
	@echo "           POSE=$(POSE) (1: also install the MediaPipe pose teacher, requirements-pose.txt)"

setup: $(VENV)/.installed ## Create .venv and install the pinned requirements + distinit (editable)

$(VENV)/.installed: requirements.txt requirements-pose.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	$(if $(filter 1,$(POSE)),$(BIN)/python -m pip install -q -r requirements-pose.txt)
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $@

demo-data: setup ## Generate the embedded demo data (unlabeled pool + HMDB-51-layout action set) into DEMO_DIR
	$(DISTINIT) demo-data --out $(DEMO_DIR) --config configs/demo-data.yaml

extract: setup $(if $(filter demo,$(DATA)),demo-data) ## Stage one: teachers over sampled frames -> targets/DATA/KEY/ (DATA=kinetics|hmdb51|ucf101|folder|demo ROOT=dir)
	@test -n "$(ROOT)" || { echo "make extract: set ROOT=<dataset folder> for DATA=$(DATA)"; exit 2; }
	$(DISTINIT) extract --config configs/extract.yaml --data $(DATA) --root $(ROOT) $(if $(TEACHERS),--teachers $(TEACHERS)) $(EXTRACT_ARGS)

verify: setup ## Check the latest targets of DATA (checksums, row counts, NaN/inf, manifest)
	$(DISTINIT) verify targets/$(DATA)/$$(cat targets/$(DATA)/latest)

distill: setup ## Stage two: train a 3D student on the latest targets of DATA (TARGETS=dir, DISTILL_CONFIG=yaml, DISTILL_ARGS=...)
	$(DISTINIT) distill --config $(DISTILL_CONFIG) --targets $(TARGETS) $(DISTILL_ARGS)

eval-hmdb: setup ## Stage three: finetune INIT on HMDB-51 (HMDB_ROOT=dir, INIT=checkpoint|scratch|inflated:..., EVAL_ARGS=...)
	@test -n "$(HMDB_ROOT)" || { echo "make eval-hmdb: set HMDB_ROOT=<hmdb51 video folder>"; exit 2; }
	$(DISTINIT) eval --config $(EVAL_CONFIG) --data hmdb51 --root $(HMDB_ROOT) --init $(INIT) $(EVAL_ARGS)

eval-ucf: setup ## Stage three: finetune INIT on UCF-101 (UCF_ROOT=dir, INIT=..., EVAL_ARGS=...)
	@test -n "$(UCF_ROOT)" || { echo "make eval-ucf: set UCF_ROOT=<UCF-101 video folder>"; exit 2; }
	$(DISTINIT) eval --config configs/eval.yaml --data ucf101 --root $(UCF_ROOT) --init $(INIT) $(EVAL_ARGS)

compare: setup ## Scratch vs inflated vs DistInit on HMDB-51 (INITS=a,b,c SEEDS=0,1,2) -> results/$(DATA)/RESULTS.md
	@test -n "$(HMDB_ROOT)" || { echo "make compare: set HMDB_ROOT=<hmdb51 video folder>"; exit 2; }
	$(DISTINIT) compare --config $(EVAL_CONFIG) --data hmdb51 --root $(HMDB_ROOT) --inits $(INITS) --seeds $(SEEDS) --out results/$(DATA) $(EVAL_ARGS)

demo: demo-data ## Run the whole pipeline on the embedded demo data (stages that exist so far)
	$(DISTINIT) manifest --data hmdb51 --root $(DEMO_DIR)/actions/videos --out $(DEMO_DIR)/manifests/actions.jsonl
	$(MAKE) --no-print-directory extract DATA=demo
	$(MAKE) --no-print-directory verify DATA=demo
	$(DISTINIT) inspect targets/demo/$$(cat targets/demo/latest) --top-k 3
	$(MAKE) --no-print-directory distill DATA=demo

test: setup ## Run the test suite (slow and reliability tests included, as CI does)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: demo-data ## Run the benchmarks on the demo data and write bench/results/*.json
	$(BIN)/python bench/decode.py --videos $(DEMO_DIR)/pool --out bench/results/decode.json

clean: ## Remove generated data (keeps .venv)
	rm -rf data targets runs results
