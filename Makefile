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
# `make test` also runs the suite on every other CPython of these versions found on PATH or
# under pyenv, each in its own venv (.venv-3.12, ...); one that is not installed is reported.
SUPPORTED_PYTHONS ?= 3.11 3.12 3.13 3.14

.PHONY: demo test lint types imports pytest pytest-other-pythons coverage bench docs clean

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
	$(VENV)/bin/runtrack demo

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks examples docs
	$(PY) -m ruff format --check src tests benchmarks examples docs

types: $(STAMP)
	$(PY) -m mypy src tests

# The layers and the optional integrations, as import-linter contracts in pyproject.toml.
imports: $(STAMP)
	$(VENV)/bin/lint-imports

pytest: $(STAMP) $(CHROMIUM)
	$(PY) -m pytest

# Lint, types and docs run on the main venv only; the suite runs on every Python found.
pytest-other-pythons: $(STAMP)
	@main=$$($(PY) -c 'import sys; print("%d.%d" % sys.version_info[:2])'); \
	ran="$$main"; missing=""; failed=""; \
	pyenv_root=$$(pyenv root 2>/dev/null || true); \
	for v in $(SUPPORTED_PYTHONS); do \
		[ "$$v" = "$$main" ] && continue; \
		py=""; \
		for c in $$(command -v python$$v 2>/dev/null) $$pyenv_root/versions/$$v*/bin/python$$v; do \
			if [ -x "$$c" ] && "$$c" -c "import sys; sys.exit(sys.implementation.name != 'cpython' or '%d.%d' % sys.version_info[:2] != '$$v')" 2>/dev/null; then \
				py=$$c; break; \
			fi; \
		done; \
		if [ -z "$$py" ]; then missing="$$missing $$v"; continue; fi; \
		venv=.venv-$$v; \
		if [ ! -x $$venv/bin/python ]; then \
			"$$py" -m venv $$venv && $$venv/bin/python -m pip install --quiet --upgrade pip || exit 1; \
		fi; \
		if [ ! -f $$venv/.installed-dev ] || [ pyproject.toml -nt $$venv/.installed-dev ]; then \
			$$venv/bin/python -m pip install --quiet -e '.[dev]' && touch $$venv/.installed-dev || exit 1; \
		fi; \
		echo "== pytest on Python $$v ($$py)"; \
		if $$venv/bin/python -m pytest -q; then ran="$$ran $$v"; else failed="$$failed $$v"; fi; \
	done; \
	echo "== the suite ran on Python $$ran (main venv: $$main)"; \
	[ -z "$$missing" ] || echo "== not installed, not run:$$missing"; \
	[ -z "$$failed" ] || { echo "== FAILED on Python$$failed"; exit 1; }

test: lint types imports pytest pytest-other-pythons

# `coverage run` starts measuring before pytest imports its plugins (runtrack.testing among
# them), so module-level code counts; settings in pyproject.toml ([tool.coverage.*]).
coverage: $(STAMP) $(CHROMIUM)
	$(PY) -m coverage erase
	$(PY) -m coverage run -m pytest
	$(PY) -m coverage combine --quiet || true
	$(PY) -m coverage report

bench: $(BENCH_STAMP)
	$(BENCH_PY) benchmarks/run.py

docs: $(STAMP)
	$(PY) -m mkdocs build --strict

clean:
	rm -rf $(VENV) $(BENCH_VENV) .venv-3.* .coverage .coverage.* htmlcov .mypy_cache .ruff_cache .pytest_cache site dist
