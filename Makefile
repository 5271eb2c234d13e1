# The README's commands. `make run` and `make test` each set everything up first.
PYTHON ?= python3
VENV ?= .venv
FUNCTION ?= echo
PORT ?= 8080
METRICS_PORT ?= 8081
BIN := $(VENV)/bin

.PHONY: setup run test lint check bench bench-smoke clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,lint]'
	touch $@

run: setup
	@echo "fwatchdog on examples/$(FUNCTION).sh, http://127.0.0.1:$(PORT)/ (Ctrl-C stops it)"
	@echo "  curl -s -d 'hello gateway' http://127.0.0.1:$(PORT)/"
	@echo "  curl -s http://127.0.0.1:$(PORT)/_/health"
	@echo "  curl -s http://127.0.0.1:$(METRICS_PORT)/metrics | grep ^http_requests"
	@echo "  (make run FUNCTION=wordcount for the word count)"
	$(BIN)/fwatchdog --bind-address 127.0.0.1 --port $(PORT) --metrics-port $(METRICS_PORT) \
		--healthcheck-interval 0 -- /bin/sh examples/$(FUNCTION).sh

test: setup
	$(BIN)/pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy

check: lint test

bench: setup
	$(BIN)/python bench/echo.py --write

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
