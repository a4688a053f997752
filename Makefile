# skiffyd: `make demo` and `make test` set everything up (idempotently), then run.
#
#   make test   system packages (as root), .venv, .synapse-venv, then
#               ruff check, ruff format --check, mypy and the whole pytest suite
#   make demo   the same setup, then python -m skiffyd.devenv.demo
#
# Works non-interactively (CI=true, no stdin). Not root and a Debian package
# missing: it stops and prints the apt-get line to run.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := test

PYTHON ?= python3
VENV := .venv
SYNAPSE_VENV := .synapse-venv
# The Synapse the integration tests were written against (config keys checked
# for 1.163); override with `make test SYNAPSE_SPEC=matrix-synapse`.
SYNAPSE_SPEC ?= matrix-synapse==1.163.*
APT_PACKAGES := gnome-keyring dbus libxml2-utils systemd
DEMO_ARGS ?=

export PIP_DISABLE_PIP_VERSION_CHECK := 1
export PIP_PROGRESS_BAR := off
export DEBIAN_FRONTEND := noninteractive

.PHONY: test demo bench setup bytecode system-packages lint typecheck pytest clean

test: setup lint typecheck pytest

demo: setup bytecode
	$(VENV)/bin/python -m skiffyd.devenv.demo $(DEMO_ARGS)

# Benchmarks (docs/benchmarks.md): a few minutes in all; never part of `test`.
bench: setup bytecode
	$(VENV)/bin/python -m tests.bench.bench_ingest $(BENCH_ARGS)
	$(VENV)/bin/python -m tests.bench.bench_ipc_rtt
	$(VENV)/bin/python -m tests.bench.bench_ipc_fanout

setup: system-packages $(VENV)/.installed $(SYNAPSE_VENV)/.installed

# gnome-keyring + dbus: a real Secret Service for the credential tests;
# libxml2-utils: xmllint for the launchd plist; systemd: systemd-analyze for
# the unit file; python3-venv: only when this python has no ensurepip
# (Debian's system python without that package).
system-packages:
	@missing=""; \
	if command -v dpkg >/dev/null 2>&1; then \
	  for p in $(APT_PACKAGES); do \
	    dpkg -s "$$p" >/dev/null 2>&1 || missing="$$missing $$p"; \
	  done; \
	  if ! $(PYTHON) -c 'import ensurepip' >/dev/null 2>&1; then missing="$$missing python3-venv"; fi; \
	else \
	  for c in dbus-daemon gnome-keyring-daemon xmllint systemd-analyze; do \
	    command -v "$$c" >/dev/null 2>&1 || { echo "make: $$c is missing (no dpkg here: install gnome-keyring, dbus, libxml2-utils and systemd)" >&2; exit 1; }; \
	  done; \
	fi; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "make: installing Debian packages:$$missing"; \
	    apt-get update -q; \
	    apt-get install -y -q --no-install-recommends $$missing; \
	  else \
	    echo "make: missing Debian packages:$$missing" >&2; \
	    echo "make: install them as root, then run make again:  sudo apt-get install -y$$missing" >&2; \
	    exit 1; \
	  fi; \
	fi

$(VENV)/.installed: pyproject.toml | system-packages
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q -e '.[test]'
	@touch $@

# skiffyd's own modules compiled to bytecode, as pip does when it installs a
# package for real (an editable install does not; with PYTHONDONTWRITEBYTECODE
# set, nothing ever writes them): otherwise every daemon start compiles every
# module again, ~0.15 s of a warm start. Quick when nothing changed.
bytecode: setup
	$(VENV)/bin/python -m compileall -q skiffyd ipc_schema

# Synapse gets its own environment: it must not share dependencies with skiffyd.
$(SYNAPSE_VENV)/.installed: | system-packages
	@test -x $(SYNAPSE_VENV)/bin/python || $(PYTHON) -m venv $(SYNAPSE_VENV)
	@if $(SYNAPSE_VENV)/bin/python -c 'import synapse' >/dev/null 2>&1; then \
	  echo "make: Synapse already installed in $(SYNAPSE_VENV)"; \
	else \
	  $(SYNAPSE_VENV)/bin/python -m pip install -q '$(SYNAPSE_SPEC)'; \
	fi
	@touch $@

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: setup
	$(VENV)/bin/mypy

pytest: setup bytecode
	$(VENV)/bin/pytest

clean:
	rm -rf .demo .mypy_cache .ruff_cache .pytest_cache .hypothesis
