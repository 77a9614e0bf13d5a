# The README's quick start: two commands on a fresh machine with Python 3.10+.
#
#   make demo   the main job: editforge demo --out demo_output
#   make test   the tests:    python -m pytest -q   (.ci/run runs `make test`)
#
# Each creates and fills the virtual environment .venv on first use: PyTorch first, pinned (an
# unpinned torch pulls gigabytes of CUDA), then editforge with its test extras, editable. The stamp
# file .venv/.editforge-installed makes later runs skip installing; a changed setup.py (or a
# deleted .venv) installs again. `make venv` only sets up; `make PYTHON=python3.12 ...` picks the
# interpreter the environment is made from. The editable install runs with -qq (errors only):
# setuptools prints pages of build-time packaging advice there that a user can do nothing about.

PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.editforge-installed
TORCH := torch==2.13.0

.PHONY: demo test venv
.DELETE_ON_ERROR:

demo: $(STAMP)
	. $(VENV)/bin/activate && editforge demo --out demo_output

test: $(STAMP)
	. $(VENV)/bin/activate && python -m pytest -q

venv: $(STAMP)

$(STAMP): setup.py
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' || { \
		echo "editforge needs Python 3.10 or newer; $(PYTHON) is $$($(PYTHON) --version 2>&1)" \
		"(choose one: make PYTHON=python3.11 ...)" >&2; exit 1; }
	@echo "setting up $(VENV): $(TORCH), then editforge with its test extras (first run: a few minutes)"
	@$(VENV)/bin/python -m pip --version >/dev/null 2>&1 || $(PYTHON) -m venv --clear $(VENV) || { \
		echo "could not create $(VENV) with $(PYTHON) -m venv (Debian/Ubuntu: apt install python3-venv)" >&2; exit 1; }
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet $(TORCH)
	$(VENV)/bin/python -m pip install --quiet --quiet -e ".[test]"
	@touch $@
