# The kit's two set-up commands (see README):
#   make course   install, resolve models, run every notebook headless -> outputs/
#   make test     install, run the tests (helpers + every notebook on the offline set)
# Everything else here is a step those two use, or a convenience.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# Reuse a torch that the base interpreter already has (GPU images ship one).
VENV_FLAGS := $(shell $(PYTHON) -c "import torch" >/dev/null 2>&1 && echo --system-site-packages)
STAMP  := $(VENV)/.kit-installed

.PHONY: course test install models lab lock clean-outputs

course: install
	$(PY) -m helpers.course

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

install: $(STAMP)

$(STAMP): pyproject.toml requirements/constraints.txt requirements/torch.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -c "import torch" >/dev/null 2>&1 || $(PY) -m pip install --quiet -r requirements/torch.txt
	$(PY) -m pip install --quiet -c requirements/constraints.txt -e ".[dev]"
	$(PY) -m pip check
	touch $@

# Download the real weights (needs internet and about 25 GB of disk).
models: install
	KOLORS_KIT_WEIGHTS=real $(PY) -m helpers.models --resolve

lab: install
	$(PY) -m jupyter lab $(if $(filter 0,$(shell id -u)),--allow-root) notebooks/

# Re-resolve the working set in a scratch venv and rewrite requirements/*.txt.
lock:
	rm -rf /tmp/kit-lock && $(PYTHON) -m venv /tmp/kit-lock
	/tmp/kit-lock/bin/pip install --quiet --upgrade "pip>=24"
	/tmp/kit-lock/bin/pip install --quiet -e ".[dev]"
	/tmp/kit-lock/bin/pip check
	/tmp/kit-lock/bin/python -m helpers.lockfile /tmp/kit-lock

clean-outputs:
	rm -rf outputs/
