# Two entry points for a fresh machine (see README): `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel: an unpinned torch with no torch installed pulls a multi-GB CUDA build.
# On a GPU machine: make setup TORCH=torch
TORCH ?= torch==2.13.0

.PHONY: setup system-packages demo test
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

demo: setup
	$(VENV)/bin/tuner run studies/digits-mlp-sgd.toml

# Chromium and PostgreSQL, which the browser and distributed tests start (installs as root).
system-packages:
	.ci/system-packages

test: setup system-packages
	$(PY) -m pytest
