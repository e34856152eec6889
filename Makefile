# Two entry points (see README): `make generate` and `make test`.
PYTHON ?= python3
PROMPT ?= Once upon a time
RUNTIME_VENV := .venv-runtime
DEV_VENV := .venv
PIP_FLAGS ?= -q

RUNTIME_SOURCES := $(shell find packages/runtime packages/tinymodel -type f -not -path '*/__pycache__/*' -not -path '*.egg-info*')
DEV_INPUTS := packages/runtime/pyproject.toml packages/trainer/pyproject.toml packages/tinymodel/pyproject.toml requirements-dev.txt

.PHONY: generate test test-xla dev bench clean

# The runtime alone (no torch), with the embedded tiny model, in its own venv.
$(RUNTIME_VENV)/.installed: $(RUNTIME_SOURCES)
	$(PYTHON) -m venv $(RUNTIME_VENV)
	$(RUNTIME_VENV)/bin/pip install $(PIP_FLAGS) --upgrade pip
	$(RUNTIME_VENV)/bin/pip install $(PIP_FLAGS) ./packages/runtime ./packages/tinymodel
	touch $@

generate: $(RUNTIME_VENV)/.installed
	$(RUNTIME_VENV)/bin/tinygen "$(PROMPT)"

# Everything, editable, for development and tests.
$(DEV_VENV)/.installed: $(DEV_INPUTS)
	$(PYTHON) -m venv $(DEV_VENV)
	$(DEV_VENV)/bin/pip install $(PIP_FLAGS) --upgrade pip
	$(DEV_VENV)/bin/pip install $(PIP_FLAGS) -r requirements-dev.txt \
		-e packages/runtime -e packages/trainer -e packages/tinymodel
	touch $@

dev: $(DEV_VENV)/.installed

test: $(DEV_VENV)/.installed
	$(DEV_VENV)/bin/python -m pytest -n 2 --dist loadfile

# The XLA tests (tests/xla) on torch-xla's CPU device, in the XLA venv: torch-xla pins its own
# torch, so tools/xla_venv.sh builds that venv outside the clone, cached by requirements-xla.txt.
test-xla:
	venv="$$(tools/xla_venv.sh)" && PJRT_DEVICE=CPU PYTHONPATH="$$(tools/xla_venv.sh --pythonpath)" \
		"$$venv/bin/python" -m pytest -m xla tests/xla

bench: $(DEV_VENV)/.installed
	$(DEV_VENV)/bin/python tools/bench/bench_decode.py --record

clean:
	rm -rf $(RUNTIME_VENV) $(DEV_VENV) build
