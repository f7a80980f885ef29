# Set-up and the two everyday commands. Only python3 (3.11+) and a C compiler are needed:
# everything else is installed into .venv by the first command that needs it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
OUT ?= runs/demo

.PHONY: demo test lint bench clean

$(VENV)/.core: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e .
	touch $@

$(VENV)/.test: $(VENV)/.core
	$(PIP) install --quiet -e '.[test,finetune,hub,ray]'
	touch $@

## demo: generate a small Self-Instruct dataset on the embedded model into runs/demo
demo: $(VENV)/.core
	$(VENV)/bin/selfinstruct run --out $(OUT)

## test: install everything the tests need, then run them (pytest decides the exit code; a
## last line counts the tests skipped because ../shared/data, the release's data, is absent)
test: $(VENV)/.test
	$(PY) -m pytest -q

lint: $(VENV)/.test
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
