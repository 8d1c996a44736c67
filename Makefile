# Atlas: two commands.
#   make run   - install into .venv and run the local stack (moto, ZooKeeper, Atlas, sidecar+HAProxy)
#   make test  - install and run every check and test (ruff, mypy, pytest with real servers)

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEBS   := zookeeper haproxy socat libcurator-discovery-java default-jdk-headless wrk chromium redis-server postgresql prometheus

.PHONY: run test lint unit integration deps install bench clean

deps:  ## Debian packages the stack and the tests run for real
	@if ! command -v haproxy >/dev/null || [ ! -f /usr/share/java/zookeeper.jar ] \
	   || [ ! -f /usr/share/java/curator-x-discovery.jar ] || ! command -v javac >/dev/null \
	   || ! command -v wrk >/dev/null || ! command -v chromium >/dev/null \
	   || ! command -v redis-server >/dev/null || ! command -v promtool >/dev/null \
	   || ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then \
	  echo "installing Debian packages: $(DEBS)"; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(DEBS); \
	fi

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[server,service,dev]'
	touch $(STAMP)

install: deps $(STAMP)

run: install  ## the local stack in the foreground; Ctrl-C stops everything (ARGS='--fresh ...')
	$(BIN)/atlas dev $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check atlas tests bench migrations
	$(BIN)/ruff format --check atlas tests bench migrations
	$(BIN)/mypy atlas

test: install lint  ## every test, starting the real servers it needs
	$(BIN)/pytest -p no:cacheprovider

unit: $(STAMP)
	$(BIN)/pytest -p no:cacheprovider tests/unit tests/client/test_unit.py tests/sidecar/test_units.py

bench: install  ## every benchmark (bench/_*.py and bench/*_app.py are their helpers)
	for b in $$(ls bench/*.py | grep -v -e '/_' -e '_app\.py$$'); do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .atlas-data .pytest_cache .mypy_cache .ruff_cache *.egg-info
