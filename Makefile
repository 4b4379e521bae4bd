# cdi-live: `make demo` runs the pipeline on a simulated beamline, `make test` the whole suite.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: install test demo bench clean

$(BIN)/cdi-live: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON)"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev,atomistic,bluesky,yardstick]"
	@touch $@

install: $(BIN)/cdi-live

test: install
	$(BIN)/python -m pytest -q

demo: install
	$(BIN)/cdi-live demo

bench: install
	$(BIN)/python benchmarks/erhio_speed.py

clean:
	rm -rf $(VENV) demo-output .pytest_cache
