# Every target creates and uses the project-local virtual environment .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXTRAS ?= dev,cli,ical

.PHONY: install test lint protos demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check dispatch_client tests bench scripts
	$(BIN)/ruff format --check dispatch_client tests bench scripts
	$(BIN)/mypy --strict dispatch_client

demo: $(STAMP)
	$(BIN)/python scripts/demo.py

# Benchmarks against the official client (own venv: bench/.venv); BENCH_ARGS=--quick for a smoke run.
bench:
	PYTHON=$(PYTHON) bench/bench.sh $(BENCH_ARGS)

protos: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" scripts/gen_protos.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist
