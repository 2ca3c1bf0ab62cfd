# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# The venv is (re)installed only when the pins or the install script change.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DATA ?= data/shapes_world_small
WORK_DIR ?= work_dirs/demo
PYTEST_ARGS ?=

.PHONY: install demo test lint lock clean-venv

$(STAMP): requirements/constraints.txt requirements/excludes.txt requirements/overrides.txt requirements/tools.txt setup.cfg tools/setup/install.sh tools/setup/selfcheck.py
	bash tools/setup/install.sh
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) tools/demo/mammut_shapes.py --data-root $(DATA) --work-dir $(WORK_DIR)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check . && $(PY) -m ruff format --check . && $(PY) -m mypy toolkit

# Re-pin after changing dependencies in setup.cfg (writes requirements/constraints.txt).
lock: $(STAMP)
	bash tools/setup/lock.sh

clean-venv:
	rm -rf $(VENV)
