"""The GPU code compiles on a GPU-less machine.

* csrc/kernels (torch-free CUDA) through CMake for sm_80 and sm_90, warnings as errors: what
  ``make cuda-check`` does, into a temporary build directory.
* csrc/ops_cuda.cu (the ATen bindings) against the installed torch's headers (slow). A CPU-only
  torch ships the c10/cuda headers but not the generated ``c10/cuda/impl/cuda_cmake_macros.h``; a
  one-line stand-in is written for it. Nothing is linked: this checks names, types and overloads.
* Every Triton kernel variant AOT-compiled to a cubin for sm_90 (slow), which the interpreter
  tests cannot check.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NVCC = shutil.which("nvcc")
needs_nvcc = pytest.mark.skipif(NVCC is None or shutil.which("cmake") is None, reason="needs nvcc and cmake")


def _run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    return r


@needs_nvcc
def test_cmake_compiles_cuda_kernels(tmp_path):
    _run(["cmake", "-S", ROOT, "-B", tmp_path, "-DCMAKE_BUILD_TYPE=Release"])
    _run(["cmake", "--build", tmp_path, "-j", os.environ.get("MAX_JOBS", "2")])
    assert (tmp_path / "libsaesteer_kernels.a").is_file()


@pytest.mark.slow
@needs_nvcc
def test_cuda_bindings_compile_against_torch_headers(tmp_path):
    torch = pytest.importorskip("torch")
    from torch.utils.cpp_extension import include_paths

    stub = tmp_path / "stub" / "c10" / "cuda" / "impl"
    stub.mkdir(parents=True)
    (stub / "cuda_cmake_macros.h").write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    incs = [f"-I{p}" for p in include_paths()] + [f"-I{tmp_path / 'stub'}", f"-I{ROOT / 'csrc'}"]
    defs = [
        f"-D{m}"
        for m in (
            "__CUDA_NO_HALF_OPERATORS__", "__CUDA_NO_HALF_CONVERSIONS__", "__CUDA_NO_BFLOAT16_CONVERSIONS__",
            "__CUDA_NO_HALF2_OPERATORS__", f"_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
        )
    ]
    _run([NVCC, "-std=c++17", "-O0", "-arch=sm_90", *incs, *defs, "-c", ROOT / "csrc" / "ops_cuda.cu", "-o", tmp_path / "ops_cuda.o"])


@pytest.mark.slow
def test_triton_kernels_compile_for_sm90():
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = _run([sys.executable, "-m", "saesteer.triton.compile_check", "--arch", "90"], env=env, cwd=ROOT)
    assert "kernel variants compiled" in r.stdout
