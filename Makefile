# secretsvc: `make run` serves on 127.0.0.1:50051, `make test` runs the suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint format proto bench clean

install: $(STAMP)

$(STAMP): pyproject.toml clients/python/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e clients/python -e '.[dev]'
	touch $(STAMP)

run: install
	$(BIN)/secretsvc serve --dev-key-file var/dev-root-key

test: install
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

proto: install
	$(BIN)/python clients/python/generate.py

bench: install
	$(BIN)/python bench/get_secret.py
	$(BIN)/python bench/replica_delay.py
	$(BIN)/python bench/client_cache.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
