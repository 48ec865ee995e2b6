# Two entry points, both self-installing on a fresh Debian machine: `make demo` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
PYTHON ?= python3
DEMO_ARGS ?=
BENCH_ARGS ?=


.PHONY: demo test lint typecheck unit bench bench-forward bench-instructions os-deps demo-os-deps venv runtime-venv generate check-generated clean

# The OS packages the suite runs for real: Prometheus + promtool, Alertmanager + amtool, and
# Ruby with msgpack (the Fluentd config's record_transformer expressions and its document-id
# rule are evaluated on sample records).
OS_PACKAGES := prometheus prometheus-alertmanager ruby ruby-msgpack
os-deps:
	@if ! command -v promtool >/dev/null || ! command -v amtool >/dev/null \
	    || ! command -v ruby >/dev/null || ! ruby -rmsgpack -e '' 2>/dev/null; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q $(OS_PACKAGES); \
	fi

# What `make demo` runs for real: Prometheus and Alertmanager (without them the demo still
# runs, and says what it skipped).
DEMO_OS_PACKAGES := prometheus prometheus-alertmanager
demo-os-deps:
	@if ! command -v prometheus >/dev/null || ! command -v prometheus-alertmanager >/dev/null; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q $(DEMO_OS_PACKAGES); \
	fi

# Debian's python3 makes no venv without python3-venv: install it then, and only then.
MAKE_VENV = test -x $(PY) || $(PYTHON) -m venv $(VENV) 2>/dev/null || { \
	  rm -rf $(VENV); SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q python3-venv && \
	  $(PYTHON) -m venv $(VENV); }

# The suite's environment: rpcscope with the test and bench extras.
$(VENV)/.installed: pyproject.toml
	@$(MAKE_VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[test,bench]'
	@touch $@ $(VENV)/.runtime

# The demo's: rpcscope and its runtime dependencies only (a test venv has them too).
$(VENV)/.runtime: pyproject.toml
	@$(MAKE_VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e .
	@touch $@

venv: $(VENV)/.installed
runtime-venv: $(VENV)/.runtime

demo: demo-os-deps runtime-venv
	$(VENV)/bin/rpcscope demo $(DEMO_ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(MAKE) --no-print-directory typecheck

# mypy cannot follow setuptools' package-dir mapping (collector/ -> rpcscope.collector), so it
# checks a throw-away tree laid out the way the wheel installs it.
typecheck: venv
	@rm -rf build/typecheck && mkdir -p build/typecheck
	@cp -r src/rpcscope build/typecheck/rpcscope
	@cp -r collector build/typecheck/rpcscope/collector
	@cp -r exporters build/typecheck/rpcscope/exporters
	@cp -r examples/shop build/typecheck/rpcscope/example_shop
	cd build/typecheck && ../../$(VENV)/bin/mypy --config-file ../../pyproject.toml -p rpcscope
	MYPYPATH=build/typecheck $(VENV)/bin/mypy --strict --python-version 3.11 dashboards alerts tools

generate: venv
	$(PY) tools/generate.py

check-generated: venv
	$(PY) tools/generate.py --check

unit: venv
	$(VENV)/bin/pytest -q

test: os-deps venv lint check-generated unit

bench: venv
	$(PY) bench/run.py $(BENCH_ARGS)

# Fluentd shipping: ForwardSink vs fluent-logger into one receiver; replaces its own section of
# docs/benchmarks.md.
bench-forward: venv
	$(PY) bench/forward.py --write-docs $(BENCH_ARGS)

# Instruction counts under valgrind's callgrind (they repeat to a few percent; see
# bench/instructions.py).
bench-instructions: venv
	@if ! command -v callgrind_control >/dev/null; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q valgrind; \
	fi
	$(PY) bench/instructions.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build dist *.egg-info
