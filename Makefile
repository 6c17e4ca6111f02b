# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
# The local CPU build; the project itself only needs torch>=2.4 (pyproject.toml).
TORCH  ?= torch==2.13.0

.PHONY: demo test contracts docs lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/nasframe space dartsformer --memory
	$(VENV)/bin/nasframe quickstart

test: $(VENV)/.installed
	$(PY) -m pytest

# The import rules between nasframe's parts (pyproject.toml [tool.importlinter]).
contracts: $(VENV)/.installed
	$(VENV)/bin/lint-imports

# The documentation site (mkdocs.yml) into site/; --strict: a broken link, a missing page or
# a public name without a docstring (docs/_gen/reference.py) fails the build.
$(VENV)/.docs-installed: pyproject.toml $(VENV)/.installed
	$(PY) -m pip install -q -e ".[docs]"
	touch $@

docs: $(VENV)/.docs-installed
	NO_MKDOCS_2_WARNING=1 DISABLE_MKDOCS_2_WARNING=true $(VENV)/bin/mkdocs build --strict --site-dir site

lint: $(VENV)/.installed
	$(PY) -m pip install -q ruff && $(VENV)/bin/ruff check nasframe benchmarks tests

bench: $(VENV)/.installed
	$(PY) -m benchmarks.memory_vs_hidden
	$(PY) -m benchmarks.strategies

clean:
	rm -rf $(VENV) build site *.egg-info
