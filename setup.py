"""Build of saesteer and its extension ``saesteer._C``.

C++ CPU sources always; CUDA sources only when torch was built with CUDA (``torch.version.cuda``)
and a CUDA toolkit is found (``CUDA_HOME``) -- never decided by ``torch.cuda.is_available()``, so a
GPU-less build machine with a CUDA torch still builds the CUDA kernels.

Knobs: ``SAESTEER_SKIP_CUDA=1`` (CPU only), ``SAESTEER_FORCE_CUDA=1`` (fail if CUDA cannot be
built), ``TORCH_CUDA_ARCH_LIST`` (default ``8.0;9.0``), ``MAX_JOBS`` (parallel compile jobs).
Install with ``pip install --no-build-isolation -e .`` so the extension links the torch you have.
"""

import glob
import os
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _extensions():
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        sys.stderr.write("saesteer: torch is not installed; building the pure-Python package only\n")
        return [], {}

    cpu_sources = sorted(glob.glob("csrc/ops.cpp") + glob.glob("csrc/ops_cpu.cpp") + glob.glob("csrc/cpu/*.cpp"))
    cuda_sources = sorted(glob.glob("csrc/ops_cuda.cu") + glob.glob("csrc/kernels/*.cu"))
    want_cuda = not _flag("SAESTEER_SKIP_CUDA")
    has_cuda = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    if _flag("SAESTEER_FORCE_CUDA") and not has_cuda:
        raise RuntimeError(
            "SAESTEER_FORCE_CUDA=1 but CUDA cannot be built: torch.version.cuda="
            f"{torch.version.cuda!r}, CUDA_HOME={cpp_extension.CUDA_HOME!r}"
        )
    use_cuda = want_cuda and has_cuda and bool(cuda_sources)
    archs = os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0") if use_cuda else ""

    define_macros = [
        ("SAESTEER_TORCH_VERSION", f'"{torch.__version__}"'),
        ("SAESTEER_CUDA_ARCHS", f'"{archs}"'),
    ]
    cxx = ["-O3", "-std=c++17"]
    if sys.platform != "win32":
        cxx += ["-fopenmp"] if torch.backends.openmp.is_available() else []
    extra = {"cxx": cxx}
    if use_cuda:
        define_macros.append(("SAESTEER_WITH_CUDA", None))
        extra["nvcc"] = ["-O3", "-std=c++17", "--use_fast_math", "-lineinfo", "-Icsrc"]
        ext = cpp_extension.CUDAExtension(
            "saesteer._C",
            cpu_sources + cuda_sources,
            include_dirs=[os.path.join(ROOT, "csrc")],
            define_macros=define_macros,
            extra_compile_args=extra,
        )
    else:
        ext = cpp_extension.CppExtension(
            "saesteer._C",
            cpu_sources,
            include_dirs=[os.path.join(ROOT, "csrc")],
            define_macros=define_macros,
            extra_compile_args=extra,
            extra_link_args=["-fopenmp"] if "-fopenmp" in cxx else [],
        )
    return [ext], {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()

setup(
    packages=find_packages("python"),
    package_dir={"": "python"},
    package_data={"saesteer": ["prompts/*.json", "organism/prompts/*.json", "organism/training/tables/*.json", "organism/weights/**/*", "refusal/*.jsonl"]},
    include_package_data=True,
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
