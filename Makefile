# Every target creates and uses the project-local virtual environment .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXTRAS ?= dev,cli,ical

.PHONY: install test lint protos demo docs bench clean

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

# The documentation site (mkdocs-material + mkdocstrings) into site/; --strict
# turns every warning (broken link, unresolved cross-reference) into a failure.
DOCS_STAMP := $(VENV)/.docs-installed

$(DOCS_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS),docs]"
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

# Benchmarks against the official client (own venv: bench/.venv); BENCH_ARGS=--quick for a smoke run.
bench:
	PYTHON=$(PYTHON) bench/bench.sh $(BENCH_ARGS)

protos: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" scripts/gen_protos.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist site
