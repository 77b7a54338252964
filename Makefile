# `make demo` and `make test` install into .venv when needed, then run.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo lint format test test-fast bench gpu-check clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: here that is the local CPU build, on a GPU machine the normal build.
	# Everything after it accepts the installed torch, so nothing pulls CUDA packages on top.
	$(PY) -m pip install -q "torch==2.13.0"
	# the diffusers extra too, so `make test` runs tests/test_diffusers_vae.py (skipped without it)
	$(PY) -m pip install -q -e ".[test,diffusers]"
	# lpips only for its calibrated linear heads (weights/v0.1/vgg.pth); --no-deps keeps
	# torchvision out (it cannot load next to the CPU torch build).
	$(PY) -m pip install -q --no-deps "lpips==0.1.4"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/coordtok demo

# ruff (pyproject.toml [tool.ruff]): lint, and the layout `ruff format` gives; `make format` applies it
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# the whole suite, in JOBS parallel workers (pytest-xdist; each gets its share of the cores; an idle
# worker takes tests still queued on the other, so neither is left alone with a long queue)
JOBS ?= 2
test: lint
	$(PY) -m pytest -q -n $(JOBS) --dist worksteal

# the edit-test loop (under 2 minutes on a 2-core CPU): lint and every test not marked slow
test-fast: lint
	$(PY) -m pytest -q -m "not slow"

# on one CUDA GPU, under 8 minutes: training steps, attention backends, max batch, sampling -> gpu_check.md
gpu-check: $(STAMP)
	$(PY) -m bench.gpu_check

bench: $(STAMP)
	$(PY) -m bench.tokenizer_step
	$(PY) -m bench.reconstruct
	$(PY) -m bench.dataloader

clean:
	rm -rf $(VENV) demo_out runs .pytest_cache
