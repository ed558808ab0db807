# Two commands for a newcomer: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-dev
# Benchmarks get their own venv: the peers they compare against (arq, taskiq-redis) pin
# redis-py below 6, which must not downgrade the development venv.
BENCH_VENV ?= .venv-bench
BENCH_PY := $(BENCH_VENV)/bin/python
BENCH_STAMP := $(BENCH_VENV)/.installed-bench
# The dashboard's end-to-end test drives Debian's Chromium; no browser is ever downloaded.
CHROMIUM ?= /usr/bin/chromium

.PHONY: demo test lint types pytest bench docs clean

$(PY):
	$(PYTHON) -c 'import sys; sys.exit("runtrack needs Python >= 3.11, found " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

$(BENCH_PY):
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_PY) -m pip install --quiet --upgrade pip

$(BENCH_STAMP): pyproject.toml | $(BENCH_PY)
	$(BENCH_PY) -m pip install --quiet -e '.[all,bench]'
	touch $@

$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ]; then \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	else \
		echo "$(CHROMIUM) is missing and this is not root: install Debian's chromium" \
			"to run the dashboard test (skipped without it, failed when CI is set)"; \
	fi

demo: $(STAMP)
	$(PY) examples/demo.py

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks examples docs
	$(PY) -m ruff format --check src tests benchmarks examples docs

types: $(STAMP)
	$(PY) -m mypy src tests

pytest: $(STAMP) $(CHROMIUM)
	$(PY) -m pytest

test: lint types pytest

bench: $(BENCH_STAMP)
	$(BENCH_PY) benchmarks/run.py

docs: $(STAMP)
	$(PY) -m mkdocs build --strict

clean:
	rm -rf $(VENV) $(BENCH_VENV) .mypy_cache .ruff_cache .pytest_cache site dist
