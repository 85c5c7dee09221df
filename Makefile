# Two commands: `make demo` and `make test`. Both (re)create .venv idempotently.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
DEVSTAMP := $(VENV)/.installed-dev
STUDY_DIR ?= studies/organism

.PHONY: demo test venv dev lint bench clean

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

$(DEVSTAMP): $(STAMP) pyproject.toml
	$(UV_INSTALL) -e ".[dev]" || $(PIP) install --quiet -e ".[dev]"
	touch $(DEVSTAMP)

venv: $(STAMP)
dev: $(DEVSTAMP)

demo: $(STAMP)
	$(VENV)/bin/irr-ray run experiments/organism.yaml --study-dir $(STUDY_DIR) --resume

test: $(DEVSTAMP)
	bash .ci/ensure-chromium
	$(VENV)/bin/ruff check irr_ray tests
	$(PY) -m pytest -q tests

lint: $(DEVSTAMP)
	$(VENV)/bin/ruff check irr_ray tests

bench: $(STAMP)
	$(VENV)/bin/irr-ray bench core

clean:
	rm -rf $(VENV)
