# speechbrain-moe: `make test` and `make demo` set everything up from nothing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install test demo lint bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check speechbrain_moe recipes tests
	$(VENV)/bin/ruff format --check speechbrain_moe recipes tests

demo: $(STAMP)
	$(PY) tools/demo.py

clean:
	rm -rf $(VENV) demo_output
