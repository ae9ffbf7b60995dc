# nnserve: `make serve` runs the service on the shipped models; `make test` runs the tests.
# Every target creates or refreshes the local virtual environment (.venv) when needed.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# pip finds the local CPU torch wheel through PIP_FIND_LINKS / pip.conf where the machine has one.
PIP    := $(PY) -m pip install --quiet --disable-pip-version-check

.PHONY: serve test test-fast train check lint format bench system-packages soak clean help

help:
	@echo "make serve   - serve models/ at http://127.0.0.1:8000 (serving dependencies only)"
	@echo "make test    - install everything needed, then run the whole test suite"
	@echo "make test-fast - the in-process tests only (no servers, no training): seconds"
	@echo "make soak DURATION=600 - the soak of tests/endurance alone, DURATION seconds (default 600)"
	@echo "make train   - train the three classifiers and the two CO2 forecasters, publish new versions into models/"
	@echo "make check   - ruff (lint + format check) and mypy"
	@echo "make bench   - service vs raw onnxruntime on one core (wrk; gRPC with h2load), scaling, capacity; results in bench/results/"

$(VENV)/.serve: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip setuptools wheel
	$(PIP) -e .
	@touch $@

$(VENV)/.dev: pyproject.toml $(VENV)/.serve
	$(PIP) -e '.[train,dev]'
	@touch $@

serve: $(VENV)/.serve
	$(PY) -m service

system-packages:
	bash scripts/system-packages.sh

test: $(VENV)/.dev system-packages
	$(PY) -m pytest

test-fast: $(VENV)/.dev
	$(PY) -m pytest -m "not server and not slow"

# The endurance soak alone, long (make test runs it for 60 s): DURATION seconds of mixed
# traffic with version swaps, RSS of every process sampled (tests/endurance/test_soak.py).
DURATION ?= 600
soak: $(VENV)/.dev
	NNSERVE_SOAK_SECONDS=$(DURATION) $(PY) -m pytest tests/endurance/test_soak.py -s

train: $(VENV)/.dev system-packages
	$(PY) -m training all
	$(PY) -m training forecast all

check: $(VENV)/.dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: $(VENV)/.dev
	@command -v wrk >/dev/null || (apt-get install -y -qq wrk >/dev/null 2>&1 || \
		(apt-get update -qq && apt-get install -y -qq wrk)) || \
		(echo "bench needs wrk: apt-get install wrk" && exit 1)
	@command -v h2load >/dev/null || (apt-get install -y -qq nghttp2-client >/dev/null 2>&1 || \
		(apt-get update -qq && apt-get install -y -qq nghttp2-client)) || \
		(echo "bench needs h2load (gRPC rows): apt-get install nghttp2-client" && exit 1)
	$(PY) -m bench.run $(BENCH_ARGS)
	$(PY) -m bench.grpc $(GRPC_ARGS)
	$(PY) -m bench.floor $(FLOOR_ARGS)
	$(PY) -m bench.scaling $(SCALING_ARGS)
	$(PY) -m bench.capacity $(CAPACITY_ARGS)

format: $(VENV)/.dev
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
