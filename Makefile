# distinit — the pipeline driven by make. `make help` lists targets and variables.
# Every target depends on `setup`, which builds .venv from requirements.txt once.
#
# Stages re-run only when something they depend on changed: `distinit stamps` rewrites
# $(STAMPS)/<stage>.key only when that stage's key (its config, the keys of the stages it reads,
# its code version; pipeline/stages/graph.py) changed, and each stage's rule below depends on its .key
# and on the .done of each stage it reads ($(STAMPS)/<stage>.needs names them). `make status` says
# which stages are stale and why.
#
#   demo-data (DATA=demo) -> extract (-> prepare, PREPARE=1) -> distill -> compare | eval-hmdb | eval-ucf

SHELL    := /bin/bash
PYTHON   ?= python3
VENV     ?= .venv
BIN      := $(VENV)/bin
DISTINIT := $(BIN)/distinit
DEMO_DIR ?= data/demo
DEMO_SET ?=
DATA     ?= demo
ROOT     ?= $(if $(filter demo,$(DATA)),$(DEMO_DIR),)
TEACHERS ?=
EXTRACT_SET ?=
EXTRACT_ARGS ?=
DISTILL_CONFIG ?= $(if $(filter demo,$(DATA)),configs/demo-distill.yaml,configs/distill.yaml)
DISTILL_SET ?=
DISTILL_ARGS ?=
# PREPARE=1: distill reads the prepare stage's copies (short side 128, short GOPs; configs/prepare.yaml + PREPARE_SET).
PREPARE  ?=
# The copies must have the short side distill reads at (the demo's config reads 72 px; configs/distill.yaml 128,
# prepare's default): another is refused in one line.
PREPARE_SET ?= $(if $(filter demo,$(DATA)),short_side=72,)
PREPARE_ARGS ?=
NPROC    ?=
TORCHRUN_ARGS ?=
EVAL_CONFIG ?= $(if $(filter demo,$(DATA)),configs/demo-eval.yaml,configs/eval.yaml)
HMDB_ROOT ?= $(if $(filter demo,$(DATA)),$(DEMO_DIR)/actions/videos,)
UCF_ROOT ?=
RESULTS  ?= results/$(DATA)
DISTILL_OUT ?= $(if $(filter demo,$(DATA)),runs/demo/distill,runs/distill)
INIT     ?= $(DISTILL_OUT)
# Real data: the paper's matched trio on one 3D ResNet-18 (configs/distill.yaml distils a resnet18_3d, the network
# ResNet-18 inflates into exactly): scratch, ImageNet-inflated ResNet-18 and DistInit. The demo compares its tiny
# R(2+1)D with scratch of the same network (an inflated row is full width: another architecture, its own scratch row).
comma    := ,
INITS    ?= $(if $(filter demo,$(DATA)),scratch$(comma)$(DISTILL_OUT),scratch$(comma)inflated:resnet18$(comma)$(DISTILL_OUT))
SEEDS    ?= 0,1,2
EVAL_SET ?=
EVAL_ARGS ?=
STAMPS   ?= .stamps/$(DATA)
PYTEST_ARGS ?=
POSE     ?= 1
# The PyTorch build setup installs (docs/install.md: the NVIDIA driver each CUDA build needs). default: PyPI's wheel,
# on Linux x86_64 the CUDA 13.0 build; cpu or cuXYZ: torch and torchvision from PyTorch's own index for that build.
# Unset: the build $(VENV)/.torch-<build> records (VENV is set above; none: default), so a plain make keeps it.
TORCH    ?= $(or $(patsubst $(VENV)/.torch-%,%,$(firstword $(wildcard $(VENV)/.torch-*))),default)
# SLURM (pipeline/cluster/*.sbatch; docs/cluster.md). SHARD=i/N: `make extract` writes only those shards.
SHARD    ?=
SLURM_ARGS ?=
SHARDS   ?= 16
EXTRACT_SBATCH ?= --gpus-per-task=1
NODES    ?= 1
GPUS_PER_NODE ?= 8
DISTILL_SBATCH ?= --nodes=$(NODES) --ntasks-per-node=1 --gpus-per-node=$(GPUS_PER_NODE)
EVAL     ?= eval-hmdb
EVAL_SBATCH ?= --gpus-per-task=1
RUN_INDEX ?=
AFTER    ?=

# NPROC=8: distill under torchrun with 8 processes per node (DDP);
# TORCHRUN_ARGS='--nnodes 2 --rdzv-endpoint host:29500 ...'.
# A distill run is its global batch (the config's global_batch: batch_size per process x processes x accumulation
# steps), so with global_batch set NPROC changes no key: 8 processes, or 1 accumulating 8 steps, are one run. Without
# it, batch_size x NPROC x the --nnodes N of TORCHRUN_ARGS is the global batch (1 node without one, or for an
# elastic range such as 1:4, which cannot be known ahead): a change re-runs distill into its own folder.
DISTILL_LAUNCH = $(if $(NPROC),$(BIN)/torchrun --nproc_per_node $(NPROC) $(TORCHRUN_ARGS) -m distinit.pipeline,$(DISTINIT))

# `key=value` options that change a stage's output: passed to the stage and to its key alike.
# Each reaches distinit as one literal shell word (bash would brace-expand {a,b} and glob [..]; a ' inside is kept).
quote = '$(subst ','\'',$(1))'
EXTRACT_SETS = $(if $(TEACHERS),teachers=[$(TEACHERS)]) $(EXTRACT_SET)
STAGE_ARGS = --stamps $(STAMPS) --data $(DATA) $(if $(ROOT),--root $(ROOT)) --demo-dir $(DEMO_DIR) $(foreach pair,$(DEMO_SET),--demo-set $(call quote,$(pair))) \
	$(foreach pair,$(EXTRACT_SETS),--extract-set $(call quote,$(pair))) \
	$(if $(filter 1,$(PREPARE)),--prepare) $(foreach pair,$(PREPARE_SET),--prepare-set $(call quote,$(pair))) \
	--distill-config $(DISTILL_CONFIG) $(foreach pair,out=$(DISTILL_OUT) $(DISTILL_SET),--distill-set $(call quote,$(pair))) \
	--distill-nproc $(or $(NPROC),1) $(if $(and $(NPROC),$(TORCHRUN_ARGS)),--torchrun-args '$(TORCHRUN_ARGS)') \
	--eval-config $(EVAL_CONFIG) $(foreach pair,$(EVAL_SET),--eval-set $(call quote,$(pair))) \
	$(if $(HMDB_ROOT),--eval-root $(HMDB_ROOT)) $(if $(UCF_ROOT),--ucf-root $(UCF_ROOT)) \
	--inits $(INITS) --init $(INIT) --seeds $(SEEDS) --results $(RESULTS)

# Extract's video selection (split, limit, ...), which prepare takes too: it prepares what is extracted.
SELECTION_SETS = $(filter split=% split_roles=% limit=% splits_dir=% annotations=%,$(EXTRACT_SET))

# The .done files of the stages stage $(1) reads, as `distinit stamps` last listed them.
needs = $(foreach stage,$(shell cat $(STAMPS)/$(1).needs 2>/dev/null),$(STAMPS)/$(stage).done)
# Bring stage $(1) up to date: refresh the stamps (`+`: also under make -n, it only records keys), then let
# make re-run exactly the stale stages up to it.
define run_stage
	+@$(DISTINIT) stamps $(STAGE_ARGS) --until $(1)
	+@$(MAKE) --no-print-directory $(STAMPS)/$(1).done
endef

.DEFAULT_GOAL := help
# One stage at a time: each uses every core, and two public targets (make -j eval-hmdb compare) would otherwise
# each start the upstream stages they share.
.NOTPARALLEL:
.PHONY: help setup demo-data demo-data-stage extract extract-finalize verify prepare distill compare eval-hmdb eval-ucf eval-tune eval-run \
	eval-report submit-extract submit-distill submit-eval demo status test bench clean

help: ## Show targets and variables
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 14
	@echo
	@echo "Variables (current value):"
	@echo "  DEMO_SET='key=value ...'  demo-data options (configs/demo-data.yaml)"
	@echo "  DATA=$(DATA)  stage-one dataset: kinetics | hmdb51 | ucf101 | folder | demo"
	@echo "  ROOT=$(ROOT)  its folder (videos); DEMO_DIR=$(DEMO_DIR) for the demo"
	@echo "  TEACHERS=$(TEACHERS)  comma list of KIND or INSTANCE=KIND (see distinit teachers); default configs/extract.yaml's"
	@echo "  EXTRACT_SET / DISTILL_SET / EVAL_SET='key=value ...'  options that change the output (part of the key)"
	@echo "  EXTRACT_ARGS / DISTILL_ARGS / EVAL_ARGS='--workers 8 ...'  options that only change speed or device"
	@echo "  DISTILL_CONFIG=$(DISTILL_CONFIG)  EVAL_CONFIG=$(EVAL_CONFIG)  DISTILL_OUT=$(DISTILL_OUT)"
	@echo "  DETECTRON2_WHEEL=FILE  DETECTRON2_WHEEL_DIR=DIR  the Detectron2 wheel setup installs (default: the newest for this Python in ../shared/wheels)"
	@echo "  PREPARE=$(PREPARE)  PREPARE_SET / PREPARE_ARGS  (1: distill reads prepare's copies; make prepare makes them)"
	@echo "  NPROC=$(NPROC)  TORCHRUN_ARGS=$(TORCHRUN_ARGS)  distill under torchrun (processes per node, multi-node options; part of distill's key)"
	@echo "  HMDB_ROOT=$(HMDB_ROOT)  UCF_ROOT=$(UCF_ROOT)  labeled video folders"
	@echo "  INIT=$(INIT)  (eval-hmdb/eval-ucf)  INITS=$(INITS)  (compare)  SEEDS=$(SEEDS)  (all three)"
	@echo "  RESULTS=$(RESULTS)  where compare and the eval-* reports go"
	@echo "  STAMPS=$(STAMPS)  PYTHON=$(PYTHON)  POSE=$(POSE) (1: install the MediaPipe pose teacher)"
	@echo "  TORCH=$(TORCH)  the PyTorch build setup installs, kept until another is named: $(TORCH_BUILDS) (docs/install.md)"
	@echo "  SLURM: SLURM_ARGS='$(SLURM_ARGS)' (every job: --partition, --account, --time ...)  AFTER=$(AFTER) (job id to wait for)"
	@echo "    SHARDS=$(SHARDS) EXTRACT_SBATCH='$(EXTRACT_SBATCH)'  NODES=$(NODES) GPUS_PER_NODE=$(GPUS_PER_NODE) DISTILL_SBATCH='$(DISTILL_SBATCH)'"
	@echo "    EVAL=$(EVAL) EVAL_SBATCH='$(EVAL_SBATCH)'  SHARD=i/N (make extract: those shards only)"
	@echo "  PYTEST_ARGS='$(PYTEST_ARGS)'  e.g. PYTEST_ARGS='-m \"not slow\"'"

# Detectron2 is not on PyPI (users install it from its official repository: docs/install.md). Tests and CI install the
# CPU wheel built from that repository which shared/wheels/ beside this checkout holds (DETECTRON2_WHEEL_DIR), or
# DETECTRON2_WHEEL=FILE; with neither, setup says so and goes on without it (the Detectron2 tests skip). Its
# dependencies are pinned in requirements-detectron2.txt, and the other pins are constraints so it changes none
# of them (torch, numpy, protobuf).
REPO_ROOT := $(patsubst %/,%,$(dir $(abspath $(firstword $(MAKEFILE_LIST)))))
DETECTRON2_WHEEL_DIR ?= $(abspath $(REPO_ROOT)/../shared/wheels)
# Only a wheel built for the Python it installs into fits (detectron2-*-cp311-cp311-*.whl for 3.11; newest version
# first). That Python is the venv's, read from its pyvenv.cfg (starting pyenv's python3 shim alone takes ~0.1 s),
# or $(PYTHON)'s before the venv exists. These are recursive (=) variables: only the setup recipes below compute
# them, never parsing, `make help` or an up-to-date stage.
detectron2_python_tag = $(shell sed -n 's/^version *= *\([0-9]*\)\.\([0-9]*\)\..*/cp\1\2/p' '$(VENV)/pyvenv.cfg' 2>/dev/null \
	| grep . || $(PYTHON) -c 'import sys; print("cp%d%d" % sys.version_info[:2])')
detectron2_wheel_pattern = detectron2-*-$(1)-$(1)-*.whl
DETECTRON2_WHEEL ?= $(shell cd '$(DETECTRON2_WHEEL_DIR)' 2>/dev/null && ls -1 $(call detectron2_wheel_pattern,$(detectron2_python_tag)) \
	2>/dev/null | sort -t- -k2,2V | tail -n 1 | sed 's|^|$(DETECTRON2_WHEEL_DIR)/|')
DETECTRON2_STAMP := $(VENV)/.detectron2-wheel
detectron2_no_wheel = make setup: no Detectron2 wheel for this Python ($(call detectron2_wheel_pattern,$(detectron2_python_tag))) \
	in $(DETECTRON2_WHEEL_DIR)/: going on without it (its tests will skip); DETECTRON2_WHEEL=FILE installs one

# SETUP=0: never build or update .venv (what the cluster jobs get: submit-* sets the venv up once, before submitting;
# a dozen array tasks reinstalling one shared venv at once would break it).
SETUP ?= 1
setup: $(if $(filter 0,$(SETUP)),,$(VENV)/.installed) ## Create .venv and install the pinned requirements + distinit (editable); TORCH=cpu|cuXYZ; Detectron2 from DETECTRON2_WHEEL

# TORCH=cpu or cuXYZ installs requirements.txt's torch and torchvision pins with that local version label
# (torch==2.14.1+cu126) from $(TORCH_INDEX_URL)/<build>, before the rest: requirements.txt's torch==2.14.1 is then
# already satisfied (a local label is ignored when a pin has none), so pip keeps the build. --no-deps: torch's own
# dependencies (nvidia-* libraries, sympy ...) come from PyPI with requirements.txt. TORCH=default adds no step (PyPI's
# wheel, as before TORCH existed). Only builds PyTorch publishes for torch 2.14.1 are listed (docs/install.md).
TORCH_BUILDS := default cpu cu126 cu130 cu132
TORCH_INDEX_URL ?= https://download.pytorch.org/whl
torch_pins = $(shell sed -nE 's/^(torch|torchvision)==([^ #]*).*/\1==\2+$(TORCH)/p' requirements.txt)
# The build is in the stamp's name, so another TORCH is a missing prerequisite and setup re-runs. Before touching
# torch, setup removes .installed and the last build's stamp and writes the new one: a failed or interrupted run
# re-runs, with the build it was installing unless TORCH names another. Finding another build's stamp, it uninstalls
# that torch and torchvision first (PyPI's torch==2.14.1 would count a +cpu one as installed). A venv set up before
# TORCH existed has no stamp: it re-runs setup once, keeping its torch.
TORCH_STAMP = $(VENV)/.torch-$(TORCH)
torch_stamps_replaced = $(filter-out $(TORCH_STAMP),$(wildcard $(VENV)/.torch-*))

# $(PYTHON)'s version against pyproject.toml's requires-python (the one statement of the Pythons distinit supports),
# before the venv is made. sed and awk, not tomllib: $(PYTHON) may be any Python. Clauses: >=, <=, >, <, == or != a
# release (3.11 is 3.11.0); another form is refused, as "no Python it can run" is.
python_check_awk = function cmp(a, b,  x, y, n, m, i) { n = split(a, x, "."); m = split(b, y, "."); if (m > n) n = m; \
		for (i = 1; i <= n; i++) if (x[i] + 0 != y[i] + 0) return x[i] + 0 < y[i] + 0 ? -1 : 1; return 0 } \
	BEGIN { n = split(range, clause, ","); ok = found != ""; \
		for (i = 1; i <= n || i == 1; i++) { c = clause[i]; gsub(/ /, "", c); \
			if (c !~ /^(>=|<=|==|!=|>|<)[0-9]+(\.[0-9]+)*$$/) { \
				print "make setup: cannot check requires-python \"" range "\" in pyproject.toml"; exit 2 } \
			v = c; sub(/^[<>=!]+/, "", v); op = substr(c, 1, length(c) - length(v)); r = cmp(found, v); \
			if (op ~ /^>/ && pick == "") pick = "python" (match(v, /^[0-9]+\.[0-9]+/) ? substr(v, 1, RLENGTH) : v); \
			ok = ok && (op == ">=" ? r >= 0 : op == "<=" ? r <= 0 : op == ">" ? r > 0 : op == "<" ? r < 0 : \
				op == "==" ? r == 0 : r != 0) } \
		if (ok) exit 0; \
		print "make setup: " python " is " (found == "" ? "no Python it can run" : "Python " found) ", but distinit needs Python " \
			range " (requires-python in pyproject.toml): PYTHON=" (pick == "" ? "<another python>" : pick) " picks another"; exit 2 }
python_check = found=$$($(PYTHON) --version 2>&1 | sed -nE 's/^Python ([0-9]+(\.[0-9]+)*).*/\1/p'); \
	range=$$(sed -nE 's/^requires-python *= *"([^"]*)".*/\1/p' pyproject.toml); \
	awk -v found="$$found" -v range="$$range" -v python='$(PYTHON)' '$(python_check_awk)' >&2

$(VENV)/.installed: requirements.txt requirements-pose.txt requirements-detectron2.txt pyproject.toml $(TORCH_STAMP) $(DETECTRON2_STAMP)
	@$(python_check)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	rm -f $(strip $@ $(torch_stamps_replaced)) && touch $(TORCH_STAMP)
	$(if $(torch_stamps_replaced),$(BIN)/python -m pip uninstall -q -y torch torchvision)
	$(if $(filter-out default,$(TORCH)),$(BIN)/python -m pip install -q --no-deps $(torch_pins) --index-url $(TORCH_INDEX_URL)/$(TORCH))
	$(BIN)/python -m pip install -q -r requirements.txt
	$(if $(filter 1,$(POSE)),$(BIN)/python -m pip install -q -r requirements-pose.txt)
	$(if $(DETECTRON2_WHEEL),$(BIN)/python -m pip install -q -r requirements-detectron2.txt '$(DETECTRON2_WHEEL)' \
		-c requirements.txt $(if $(filter 1,$(POSE)),-c requirements-pose.txt),@echo "$(detectron2_no_wheel)")
	$(BIN)/python -m pip install -q --no-deps -e .
	$(if $(DETECTRON2_WHEEL),,echo none > $(DETECTRON2_STAMP))  # what was installed, whatever a dry run recorded
	touch $@

# Only checks TORCH (the recipe above writes the stamp): one word of TORCH_BUILDS, exactly (`%` is no pattern here).
# `+`: an unknown TORCH is refused under make -n too, before anything is installed.
$(TORCH_STAMP):
	$(if $(and $(filter 1,$(words $(TORCH))),$(if $(filter-out $(TORCH_BUILDS),$(TORCH)),,one)),,+@echo \
		"make setup: TORCH=$(TORCH) is not one of: $(TORCH_BUILDS) (docs/install.md)" >&2; exit 2)

# The stamp holds the installed wheel's name and sha256 ("none" for a venv set up without one) and is rewritten
# only when that changes, so setup re-runs when a wheel appears or changes, whatever its file time. Finding no
# wheel leaves it alone: pip would uninstall nothing, and a one-off DETECTRON2_WHEEL= must not make the next make
# reinstall. The sha256 is recomputed only when the wheel's name, size or time changed ($@.hashed keeps them).
# `+`: it runs under make -n and -q too, so they tell whether setup would re-run (as `distinit stamps` does for
# stages); it writes nothing unless the wheel changed.
$(DETECTRON2_STAMP): FORCE
	+@wheel='$(DETECTRON2_WHEEL)'; stamp='$@'; mkdir -p '$(VENV)' || exit 1; \
	if [ -z "$$wheel" ]; then \
		[ -e "$$stamp" ] || { echo none > "$$stamp.tmp" && mv "$$stamp.tmp" "$$stamp"; }; exit; fi; \
	[ -f "$$wheel" ] || { echo "make setup: DETECTRON2_WHEEL=$$wheel is not a file; name a Detectron2 wheel" >&2; exit 2; }; \
	seen="$$(basename "$$wheel") $$(stat -c '%s %Y' "$$wheel")" && hashed="$$(cat "$$stamp.hashed" 2>/dev/null)"; \
	if [ "$${hashed% *}" != "$$seen" ]; then hashed="$$seen $$(sha256sum < "$$wheel" | cut -c1-64)" \
		&& echo "$$hashed" > "$$stamp.hashed.tmp" && mv "$$stamp.hashed.tmp" "$$stamp.hashed" || exit 1; fi; \
	identity="$${seen%% *} $${hashed##* }"; \
	[ "$$(cat "$$stamp" 2>/dev/null)" = "$$identity" ] || { echo "$$identity" > "$$stamp.tmp" && mv "$$stamp.tmp" "$$stamp"; }

FORCE:

demo-data: setup ## Generate the embedded demo data (unlabeled pool + HMDB-51-layout action set) into DEMO_DIR
	+@$(MAKE) --no-print-directory demo-data-stage DATA=demo

demo-data-stage:
	$(call run_stage,demo-data)

extract: setup ## Stage one: teachers over sampled frames -> targets/DATA/KEY/ (DATA=... ROOT=dir TEACHERS=a,b; SHARD=i/N: part)
	@test -n "$(ROOT)" || { echo "make extract: set ROOT=<dataset folder> for DATA=$(DATA)"; exit 2; }
ifeq ($(SHARD),)
	$(call run_stage,extract)
else
	+@$(DISTINIT) stamps $(STAGE_ARGS) --until extract
	$(EXTRACT_COMMAND) --shard $(SHARD) $(EXTRACT_ARGS)
endif

extract-finalize: setup ## Seal DATA's targets once every SHARD=i/N part ran (manifest, one full verify), recorded done for make
	+@$(DISTINIT) stamps $(STAGE_ARGS) --until extract
	$(EXTRACT_COMMAND) --finalize
	$(DISTINIT) verify targets/$(DATA)/$$(cat targets/$(DATA)/latest)
	cp $(STAMPS)/extract.key $(STAMPS)/extract.done

prepare: setup ## Re-encode DATA's videos once for stage two (short side 128, GOP 16) -> prepared/DATA/KEY/; PREPARE=1 makes distill read them
	@test -n "$(ROOT)" || { echo "make prepare: set ROOT=<dataset folder> for DATA=$(DATA)"; exit 2; }
	$(call run_stage,prepare)

distill: setup ## Stage two: train a 3D student on DATA's latest targets (DISTILL_CONFIG, DISTILL_SET, DISTILL_ARGS)
	$(call run_stage,distill)

compare: setup ## Stage three: scratch vs inflated vs DistInit on HMDB-51 (INITS, SEEDS) -> RESULTS/RESULTS.md
	@test -n "$(HMDB_ROOT)" || { echo "make compare: set HMDB_ROOT=<hmdb51 video folder>"; exit 2; }
	@test -n "$(INITS)" || { echo "make compare: set INITS=scratch,inflated:...,<distill run folder>"; exit 2; }
	$(call run_stage,compare)

eval-hmdb: setup ## Finetune one INIT on HMDB-51 (HMDB_ROOT=dir, INIT=run folder|scratch|inflated:..., SEEDS) -> RESULTS/eval-hmdb/
	@test -n "$(HMDB_ROOT)" || { echo "make eval-hmdb: set HMDB_ROOT=<hmdb51 video folder>"; exit 2; }
	@test -n "$(INIT)" || { echo "make eval-hmdb: set INIT=<distill run folder>|scratch|inflated:<2d model>"; exit 2; }
	$(call run_stage,eval-hmdb)
	@cat $(RESULTS)/eval-hmdb/RESULTS.txt

eval-ucf: setup ## Finetune one INIT on UCF-101 (UCF_ROOT=dir, INIT=..., SEEDS) -> RESULTS/eval-ucf/
	@test -n "$(UCF_ROOT)" || { echo "make eval-ucf: set UCF_ROOT=<UCF-101 video folder>"; exit 2; }
	@test -n "$(INIT)" || { echo "make eval-ucf: set INIT=<distill run folder>|scratch|inflated:<2d model>"; exit 2; }
	$(call run_stage,eval-ucf)
	@cat $(RESULTS)/eval-ucf/RESULTS.txt

demo: ## Every stage on the embedded demo data, ending with the results table (re-runs only what changed)
	+@$(MAKE) --no-print-directory compare DATA=demo
	@awk '/^\| init/ { printing = 1 } printing && /^$$/ { exit } printing' $(RESULTS)/RESULTS.md

status: setup ## Say which stages are up to date, stale (and why), missing or not set up, for DATA
	@$(DISTINIT) status $(STAGE_ARGS)

# Each stage's rule: its .key and what it reads (see `needs`); on success .key is copied to .done.
$(STAMPS)/demo-data.done: $(STAMPS)/demo-data.key
	$(DISTINIT) demo-data --out $(DEMO_DIR) --config configs/demo-data.yaml $(foreach pair,$(DEMO_SET),--set $(call quote,$(pair)))
	cp $< $@

EXTRACT_COMMAND = $(DISTINIT) extract --config configs/extract.yaml --data $(DATA) --root $(ROOT) $(foreach pair,$(EXTRACT_SETS),--set $(call quote,$(pair)))
$(STAMPS)/extract.done: $(STAMPS)/extract.key $(call needs,extract)
	$(EXTRACT_COMMAND) $(EXTRACT_ARGS)
	$(DISTINIT) verify targets/$(DATA)/$$(cat targets/$(DATA)/latest)
	$(DISTINIT) inspect targets/$(DATA)/$$(cat targets/$(DATA)/latest) --top-k 3
	cp $< $@

$(STAMPS)/prepare.done: $(STAMPS)/prepare.key $(call needs,prepare)
	$(DISTINIT) prepare --config configs/prepare.yaml --data $(DATA) --root $(ROOT) $(foreach pair,$(SELECTION_SETS) $(PREPARE_SET),--set $(call quote,$(pair))) $(PREPARE_ARGS)
	cp $< $@

# --videos: where the dataset is now (ROOT), which is not part of any key; moving it re-runs nothing.
# PREPARE=1: --prepared, the prepare stage's latest copies (distill's key then holds prepare's).
$(STAMPS)/distill.done: $(STAMPS)/distill.key $(call needs,distill)
	$(DISTILL_LAUNCH) distill --config $(DISTILL_CONFIG) --targets targets/$(DATA) $(if $(ROOT),--videos $(ROOT)) $(if $(filter 1,$(PREPARE)),--prepared prepared/$(DATA)) --set $(call quote,out=$(DISTILL_OUT)) $(foreach pair,$(DISTILL_SET),--set $(call quote,$(pair))) $(DISTILL_ARGS)
	cp $< $@

$(STAMPS)/compare.done: $(STAMPS)/compare.key $(call needs,compare)
	$(call eval_command,compare)
	cp $< $@

# stdout (the table) is shown by the public target, from the report.
# Stage three's command for compare, eval-hmdb or eval-ucf (the whole, or with --run-index one run for eval-run).
eval_command = $(DISTINIT) $(if $(filter compare,$(1)),compare,eval) --config $(EVAL_CONFIG) \
	--data $(if $(filter eval-ucf,$(1)),ucf101 --root $(UCF_ROOT),hmdb51 --root $(HMDB_ROOT)) \
	$(if $(filter compare,$(1)),--inits $(INITS) --out $(RESULTS),--init $(INIT)) --seeds $(SEEDS) \
	$(foreach pair,$(EVAL_SET),--set $(call quote,$(pair))) $(EVAL_ARGS)
$(STAMPS)/eval-hmdb.done: $(STAMPS)/eval-hmdb.key $(call needs,eval-hmdb)
	$(call eval_command,eval-hmdb) --report $(RESULTS)/eval-hmdb > /dev/null
	cp $< $@

$(STAMPS)/eval-ucf.done: $(STAMPS)/eval-ucf.key $(call needs,eval-ucf)
	$(call eval_command,eval-ucf) --report $(RESULTS)/eval-ucf > /dev/null
	cp $< $@

# --- SLURM (pipeline/cluster/): each job runs make, so make knows what the cluster ran ---------------------------------
# The make variables a job needs, forwarded to the make it runs as one word each.
FORWARDED := DATA ROOT DEMO_DIR DEMO_SET TEACHERS EXTRACT_SET EXTRACT_ARGS PREPARE PREPARE_SET PREPARE_ARGS DISTILL_CONFIG \
	DISTILL_SET DISTILL_ARGS DISTILL_OUT EVAL_CONFIG EVAL_SET EVAL_ARGS HMDB_ROOT UCF_ROOT INIT INITS SEEDS RESULTS STAMPS \
	VENV EVAL
FORWARD = $(foreach name,$(FORWARDED),$(call quote,$(name)=$($(name)))) SETUP=0
SBATCH = sbatch --parsable $(SLURM_ARGS)
after = $(if $(1),--dependency=afterok:$(1))

eval-tune: setup ## (SLURM array task) One (row, split) tuning of EVAL on validation: RUN_INDEX=k
	@test -n "$(RUN_INDEX)" || { echo "make eval-tune: set RUN_INDEX=<k> (eval-tune.sbatch's array task)"; exit 2; }
	+@$(DISTINIT) stamps $(STAGE_ARGS) --until $(EVAL)
	$(call eval_command,$(EVAL)) --tune-index $(RUN_INDEX) > /dev/null

eval-run: setup ## (SLURM array task) One (row, split, seed) run of EVAL: RUN_INDEX=k
	@test -n "$(RUN_INDEX)" || { echo "make eval-run: set RUN_INDEX=<k> (eval.sbatch's array task)"; exit 2; }
	+@$(DISTINIT) stamps $(STAGE_ARGS) --until $(EVAL)
	$(call eval_command,$(EVAL)) --run-index $(RUN_INDEX) > /dev/null

eval-report: ## (SLURM) The report of EVAL once its runs are done (eval-report.sbatch)
	+@$(MAKE) --no-print-directory $(EVAL)

submit-extract: setup ## (SLURM) Stage one as an array of SHARDS tasks + a finalize job after them (SLURM_ARGS, EXTRACT_SBATCH)
	@test -n "$(ROOT)" || { echo "make submit-extract: set ROOT=<dataset folder> for DATA=$(DATA)"; exit 2; }
	$(if $(filter demo,$(DATA)),+@$(MAKE) --no-print-directory demo-data-stage DATA=demo)
	@array=$$($(SBATCH) --array=0-$$(( $(SHARDS) - 1 )) $(EXTRACT_SBATCH) $(call after,$(AFTER)) pipeline/cluster/extract.sbatch $(FORWARD)) \
	&& final=$$($(SBATCH) --dependency=afterok:$$array pipeline/cluster/extract-finalize.sbatch $(FORWARD)) \
	&& echo "extract: array job $$array ($(SHARDS) tasks), then finalize job $$final"

submit-distill: setup ## (SLURM) Stage two on NODES x GPUS_PER_NODE (srun + torchrun, c10d), requeued on preemption
	@job=$$($(SBATCH) --export=ALL,GPUS_PER_NODE=$(GPUS_PER_NODE) $(DISTILL_SBATCH) $(call after,$(AFTER)) pipeline/cluster/distill.sbatch $(FORWARD)) \
	&& echo "distill: job $$job"

submit-eval: setup ## (SLURM) EVAL (compare | eval-hmdb | eval-ucf): tunings, then one task per run, then a report job
	@tunings=$$($(call eval_command,$(EVAL)) --count-tunings) && runs=$$($(call eval_command,$(EVAL)) --count-runs) \
	&& wait='$(call after,$(AFTER))' && tune='' \
	&& if [ "$$tunings" -gt 0 ]; then \
		tune=$$($(SBATCH) --array=0-$$(( tunings - 1 )) $(EVAL_SBATCH) $$wait pipeline/cluster/eval-tune.sbatch $(FORWARD)) \
		&& wait="--dependency=afterok:$$tune"; fi \
	&& array=$$($(SBATCH) --array=0-$$(( runs - 1 )) $(EVAL_SBATCH) $$wait pipeline/cluster/eval.sbatch $(FORWARD)) \
	&& report=$$($(SBATCH) --dependency=afterok:$$array $(EVAL_SBATCH) pipeline/cluster/eval-report.sbatch $(FORWARD)) \
	&& echo "$(EVAL): $${tune:+tuning array job $$tune ($$tunings tunings), then }array job $$array ($$runs runs), then report job $$report"

verify: setup ## Check the latest targets of DATA (checksums, row counts, NaN/inf, manifest)
	$(DISTINIT) verify targets/$(DATA)/$$(cat targets/$(DATA)/latest)

test: setup ## Run the test suite (slow and reliability tests included, as CI does)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: demo-data ## Run the benchmarks on the demo data and write bench/results/*.json
	$(BIN)/python bench/decode.py --videos $(DEMO_DIR)/pool --out bench/results/decode.json

clean: ## Remove generated data (keeps .venv)
	rm -rf data targets runs results .stamps
