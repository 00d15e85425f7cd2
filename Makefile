# The two commands a newcomer needs: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install demo test lint format migrate bench clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

migrate: install
	$(VENV)/bin/relay migrate

demo: install
	$(VENV)/bin/relay migrate
	$(VENV)/bin/relay demo

lint: install
	$(VENV)/bin/ruff check relay workers tests bench
	$(VENV)/bin/ruff format --check relay workers tests bench
	$(VENV)/bin/mypy

format: install
	$(VENV)/bin/ruff format relay workers tests bench
	$(VENV)/bin/ruff check --fix relay workers tests bench

test: install lint
	$(PY) -m pytest $(PYTEST_ARGS)

bench: install
	@for script in bench/*.py; do echo "== $$script"; $(PY) $$script || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
