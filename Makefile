# Two commands do everything on a fresh Debian 12 machine, as root:
#   make run    set up, then run the agent on examples/antiprof.toml
#   make test   set up, then lint and run the whole test suite
VENV   := .venv
BIN    := $(VENV)/bin
PLUGINS := $(wildcard plugins/antiprof-*)
STAMP  := $(VENV)/.installed

.PHONY: setup system run test test-busy lint pytest bench clean dist install uninstall

setup: system $(STAMP)

system:
	bash scripts/setup-system.sh

$(VENV)/bin/python:
	/usr/bin/python3 -m venv --system-site-packages $(VENV)

# Reinstall when any pyproject changes; editable installs pick up code changes by themselves.
$(STAMP): $(VENV)/bin/python pyproject.toml $(wildcard plugins/*/pyproject.toml)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]' $(foreach p,$(PLUGINS),-e '$(p)[test]')
	touch $@

run: setup
	$(BIN)/antiprof run -c examples/antiprof.toml

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy antiprof_core $(foreach p,$(PLUGINS) examples/antiprof-example-top,$(filter-out %.egg-info,$(wildcard $(p)/antiprof_*)))
	@# one run per test folder: each has its own conftest module
	for d in tests $(addsuffix /tests,$(PLUGINS)); do $(BIN)/mypy $$d || exit 1; done

pytest: setup
	$(BIN)/pytest

test: lint pytest

# The real-eBPF tests once more with two CPU hogs beside them: a busy host is a real condition,
# and the tests must wait for the agent's readiness rather than for a guessed time.
test-busy: setup
	@yes >/dev/null & a=$$!; yes >/dev/null & b=$$!; trap 'kill $$a $$b' EXIT; \
	echo "two CPU hogs running (pids $$a $$b)"; $(BIN)/pytest -m bpf --ignore=tests/test_deploy_install.py

bench: setup
	$(BIN)/pip install -q -e '.[bench]'
	for b in benchmarks/*.py; do $(BIN)/python $$b || exit 1; done

# Wheels of the core and every plugin, for machines without this checkout (README "Deploy").
DIST ?= dist
dist: $(VENV)/bin/python
	rm -rf $(DIST) && mkdir -p $(DIST)
	$(BIN)/pip wheel --quiet --no-deps --wheel-dir $(DIST) . $(PLUGINS)
	rm -rf build $(addsuffix /build,$(PLUGINS))  # setuptools' scratch space

# The agent into /opt/antiprof, its config into /etc/antiprof (kept if present), the unit into
# /etc/systemd/system; uninstall keeps the config and the data (scripts/install.sh --purge does not).
install: dist
	bash scripts/install.sh

uninstall:
	bash scripts/install.sh --uninstall

clean:
	rm -rf $(VENV) antiprof-data dist .pytest_cache .mypy_cache .ruff_cache
