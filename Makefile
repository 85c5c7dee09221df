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

# torch first, pinned: the CPU build of 2.13.0 lies on local disk; an unpinned torch pulls CUDA.
$(STAMP): pyproject.toml | $(PY)
	$(PIP) install --quiet "torch==2.13.0"
	$(PIP) install --quiet -e .
	touch $(STAMP)

$(DEVSTAMP): $(STAMP) pyproject.toml
	$(PIP) install --quiet -e ".[dev]"
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
