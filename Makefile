# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
OUT ?= runs/quick-sweep
# Extra flags for the main job (CI passes a one-epoch smoke setting through it).
RUN_ARGS ?=

.PHONY: run test test-slow lint bench clean

$(VENV)/.torch:
	$(PYTHON) -m venv $(VENV)
	# torch first and pinned: the CPU build on this disk; nothing may pull a newer one.
	$(PIP) install --quiet torch==2.13.0
	touch $@

$(VENV)/.installed: $(VENV)/.torch pyproject.toml
	$(PIP) install --quiet -e '.[dev]'
	touch $@

run: $(VENV)/.installed
	$(VENV)/bin/mmssl sweep --preset quick --objectives CR,XX,RR,CR-XX-CC-RR --out $(OUT) $(RUN_ARGS)

# The suite without the tests marked slow (minutes); test-slow runs those (CI runs both).
test: $(VENV)/.installed
	$(PY) -m pytest -n 2 -q -m "not slow"

test-slow: $(VENV)/.installed
	$(PY) -m pytest -n 2 -q -m slow

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check mmssl tests benchmarks examples
	$(VENV)/bin/mypy mmssl benchmarks

bench: $(VENV)/.installed
	$(PY) -m benchmarks.throughput
	$(PY) -m benchmarks.neuro
	$(PY) -m benchmarks.scaling

clean:
	rm -rf $(VENV) runs .pytest_cache
