# Two commands do all set-up on a fresh machine: `make run` and `make test`.
# Both create .venv with CPython 3.10 if it is missing (dm-launchpad has no
# wheels past 3.10) and reuse it afterwards.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
SITE := $(VENV)/lib/python3.10/site-packages
STAMP := $(VENV)/.installed
RUN_ARGS ?=
TEST_ARGS ?=
# The IQL core on the newest JAX (no 2022 stack): its own venv, default python3.
CORE_VENV := .venv-core
CORE_PY := $(CORE_VENV)/bin/python
CORE_STAMP := $(CORE_VENV)/.installed
CORE_TESTS := tests/core
# GPU=1: install the JAX CUDA 12 plugin (requirements-gpu.txt) into .venv;
# the learner then runs on the GPU, every other node on CPU (iql_acme/placement.py).
GPU ?=
GPU_STAMP := $(VENV)/.gpu-installed
export D4RL_SUPPRESS_IMPORT_ERROR := 1
export TF_CPP_MIN_LOG_LEVEL := 2
export MUJOCO_GL := egl

.PHONY: run test bench bench-core bench-system toy venv venv-core gpu clean

venv: $(STAMP)

$(STAMP): requirements.txt
	@# First candidate that really runs CPython 3.10 (a pyenv shim named
	@# python3.10 may exist and still fail).
	@py310=""; \
	  for p in "$$(command -v python3.10 || true)" \
	           $$(command -v pyenv >/dev/null && for v in $$(pyenv versions --bare 2>/dev/null | grep '^3\.10'); do echo "$$(pyenv root)/versions/$$v/bin/python"; done) \
	           $$HOME/.pyenv/versions/3.10*/bin/python /usr/bin/python3.10 /usr/local/bin/python3.10; do \
	    if [ -n "$$p" ] && "$$p" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 10))' 2>/dev/null; then py310="$$p"; break; fi; \
	  done; \
	  if [ -z "$$py310" ]; then echo "error: CPython 3.10 not found; install it (e.g. 'pyenv install 3.10.13') and rerun make" >&2; exit 1; fi; \
	  [ -x $(PY) ] || { echo "creating $(VENV) with $$py310"; "$$py310" -m venv $(VENV); }
	$(PY) -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -m pip install -q -r requirements.txt 2>&1 | grep -v "^WARNING: Location" ; test $${PIPESTATUS[0]} -eq 0
	$(PY) -m pip install -q --no-deps d4rl==1.1 2>&1 | grep -v "^WARNING: Location" ; test $${PIPESTATUS[0]} -eq 0
	@# Make the repo importable from every process of the venv (Launchpad's
	@# spawned nodes start from launchpad's own directory) and install the
	@# Acme/JAX compatibility hook at interpreter start-up (iql_acme/compat.py).
	echo "$(CURDIR)" > $(SITE)/iql_acme_repo.pth
	echo "import iql_acme" > $(SITE)/zz_iql_acme_compat.pth
	touch $(STAMP)

# Core venv: any python3 >= 3.11 (current jax needs it); unpinned, newest.
venv-core: $(CORE_STAMP)

$(CORE_STAMP): requirements-core.txt
	@py="$$(command -v python3)"; \
	  "$$py" -c 'import sys; sys.exit(sys.version_info[:2] < (3, 11))' || { echo "error: $(CORE_VENV) needs python3 >= 3.11, found $$("$$py" --version)" >&2; exit 1; }; \
	  [ -x $(CORE_PY) ] || { echo "creating $(CORE_VENV) with $$py"; "$$py" -m venv $(CORE_VENV); }
	$(CORE_PY) -m pip install -q --upgrade -r requirements-core.txt 2>&1 | grep -v "^WARNING: Location" ; test $${PIPESTATUS[0]} -eq 0
	touch $(CORE_STAMP)

gpu: $(GPU_STAMP)

$(GPU_STAMP): $(STAMP) requirements-gpu.txt
	$(PY) -m pip install -q -r requirements-gpu.txt 2>&1 | grep -v "^WARNING: Location" ; test $${PIPESTATUS[0]} -eq 0
	touch $(GPU_STAMP)

run: $(STAMP) $(if $(GPU),$(GPU_STAMP))
	$(PY) launch/run_finetune.py --lp_launch_type=local_mp $(RUN_ARGS)

# The whole suite in .venv (tests/core included), then the core tests again
# on the newest JAX in .venv-core (without tests/conftest.py, which imports
# the environments).
test: $(STAMP) $(CORE_STAMP)
	$(PY) -m pytest -q tests $(TEST_ARGS)
	$(CORE_PY) -m pytest -q $(CORE_TESTS) --confcutdir=$(CORE_TESTS)

bench: $(STAMP)
	$(PY) benchmarks/bench_learner.py --repeats 7 --updates 1000

bench-core: $(CORE_STAMP)
	$(CORE_PY) benchmarks/bench_learner.py --repeats 7 --updates 1000

bench-system: $(STAMP)
	$(PY) benchmarks/bench_system.py

toy: $(STAMP)
	$(PY) experiments/toy_umaze.py --out out/toy_umaze

# A larger pen-binary-v0 stand-in: the embedded recipe (v3: BC rollouts
# from BC on the first 10 demos) with 2,000 noisy BC rollouts instead of the
# committed 300 (out/pen-binary-v0, about 100 MB; several minutes on 2
# cores). The committed demonstrator policy rewrites the same demos (README,
# "Stand-in datasets").
.PHONY: pen-data
PEN_DATA_ARGS ?= --num_demos 100 --num_bc_episodes 2000 --rollout_demos 10 --seed 0
pen-data: $(STAMP)
	$(PY) experiments/make_pen_rl_demos.py --policy_npz iql_acme/data/assets/pen-binary-v0/demonstrator_policy.npz --out out/pen-binary-v0 --work_dir out/pen-binary-v0_work $(PEN_DATA_ARGS)

# The previous embedded pen stand-in (v2, embedded until 2026-12-01): BC
# rollouts from BC on all 100 demos, as good as the demonstrator, so offline
# IQL only matched BC on it (README, "Stand-in datasets"). 21 MB:
# out/pen-binary-v0-v2.
.PHONY: pen-data-v2
PEN_V2_ARGS ?= --num_demos 100 --num_bc_episodes 300 --seed 0
pen-data-v2: $(STAMP)
	$(PY) experiments/make_pen_rl_demos.py --policy_npz iql_acme/data/assets/pen-binary-v0/demonstrator_policy.npz --out out/pen-binary-v0-v2 --work_dir out/pen-binary-v0-v2_work $(PEN_V2_ARGS)

# Stand-in door-binary-v0 data: 50 demos of the committed RL-trained door
# demonstrator, BC on them (the gate), 300 noisy BC rollouts; about 3 min on
# 2 cores, 33 MB, so not embedded: out/door-binary-v0. Run with
# --env=door-binary-v0 --dataset=out/door-binary-v0.
.PHONY: door-data
DOOR_DATA_ARGS ?= --num_demos 50 --max_episodes 200 --num_bc_episodes 300 --seed 0
door-data: $(STAMP)
	$(PY) experiments/make_hand_demos.py --env door-binary-v0 --policy_npz iql_acme/standin/demonstrators/door-binary-v0.npz --out out/door-binary-v0 --work_dir out/door-binary-v0_work $(DOOR_DATA_ARGS)

clean:
	rm -rf $(VENV) $(CORE_VENV)
