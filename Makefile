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
export D4RL_SUPPRESS_IMPORT_ERROR := 1
export TF_CPP_MIN_LOG_LEVEL := 2
export MUJOCO_GL := egl

.PHONY: run test bench toy venv clean

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

run: $(STAMP)
	$(PY) launch/run_finetune.py $(RUN_ARGS)

test: $(STAMP)
	$(PY) -m pytest -q tests $(TEST_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/bench_learner.py --repeats 7 --updates 1000

toy: $(STAMP)
	$(PY) experiments/toy_umaze.py --out out/toy_umaze

clean:
	rm -rf $(VENV)
