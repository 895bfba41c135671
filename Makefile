# The two commands: `make run` and `make test`. Each installs what is missing first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PROTO_SRC := $(shell find protos -name '*.proto')
# Marker files make the second run skip work already done.
VENV_STAMP := $(VENV)/.installed
PROTO_STAMP := lib/studyassist/.protos

.PHONY: all install protos run test lint typecheck pytest webtest chromium bench web clean images

all: test

$(VENV_STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	# torch first and pinned: the CPU wheel lies on disk; any other version downloads gigabytes.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV_STAMP) $(PROTO_STAMP)

$(PROTO_STAMP): $(VENV_STAMP) $(PROTO_SRC)
	$(PY) -m studyassist.buildprotos
	touch $@

protos: $(PROTO_STAMP)

# The web app (React + Vite): npm ci when the lock file changed, a build when a source did.
web:
	$(MAKE) -s -C services/gateway/web build

webtest:
	$(MAKE) -s -C services/gateway/web typecheck test

# The browser tests drive Debian's Chromium (no browser downloads work here).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "the browser tests need Debian's chromium: sudo apt-get install chromium"; fi; }

run: install web
	$(PY) -m studyassist.launcher

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install
	$(VENV)/bin/mypy

pytest: install web chromium
	$(PY) -m pytest

test: lint typecheck webtest pytest

bench: install web chromium
	$(PY) -m bench

images:
	@command -v docker >/dev/null && docker info >/dev/null 2>&1 || { echo "make images needs a running Docker engine"; exit 1; }
	for svc in gateway chat storage embedding metrics; do \
	  docker build -f services/$$svc/Dockerfile -t studyassist/$$svc:dev . || exit 1; done
	docker build -f services/embedding/Dockerfile.cuda -t studyassist/embedding:dev-cuda .

clean:
	rm -rf $(VENV) $(PROTO_STAMP) .mypy_cache .pytest_cache .ruff_cache
	find lib/studyassist -name '*_pb2*.py*' -delete
