// The one schema file of saesteer: every op of the `saesteer` namespace is declared here, and each
// backend registers its implementations beside its kernels (csrc/ops_cpu.cpp for CPU,
// csrc/ops_cuda.cu for CUDA). The Python module saesteer._C only reports how the extension was
// built; it is written against the CPython API, not pybind11 or torch/extension.h: with those this
// file took ~70 s to compile on the 2-core build machines (the longest file of the build), with
// torch/library.h and Python.h it takes ~10 s.
//
// Argument conventions shared by every op (python/saesteer/sae.py documents them):
//   x            [N, d_in] float32/bfloat16/float16 (the wrapper flattens leading dims)
//   W_enc_T      [d_sae, d_in] contiguous, the SAE dtype (encoder columns as rows)
//   W_dec        [d_sae, d_in] contiguous, the SAE dtype
//   b_dec        [d_in], the SAE dtype
//   params       [5, d_sae] float32: bias, threshold, mag_scale, mag_bias, dec_scale
//   arch         0 standard, 1 jumprelu, 2 gated, 3 topk        (saesteer.sae.ARCHITECTURES)
//   norm         0 none, 1 constant_norm_rescale, 2 layer_norm  (saesteer.sae.NORMS)
//   k            the topk SAE's own k (ignored by other architectures)
//   features     [S] int64 feature ids; values [S] float32 (steer) or [R, S] float32 (steer_rows)
//   mode         0 ablate, 1 scale, 2 clamp, 3 add              (saesteer.intervention.MODES)
//   token_mask   [N] bool (steer) or [R, T] bool (steer_rows): where the edit applies
//   weights      [S] float32: trigger_score's per-feature weights; it returns [N] float32
#include <Python.h>
#include <torch/library.h>

#ifndef SAESTEER_CUDA_ARCHS
#define SAESTEER_CUDA_ARCHS ""
#endif
#ifndef SAESTEER_TORCH_VERSION
#define SAESTEER_TORCH_VERSION "unknown"
#endif

TORCH_LIBRARY(saesteer, m) {
  m.def(
      "steer(Tensor x, Tensor W_enc_T, Tensor W_dec, Tensor b_dec, Tensor params, int arch, int norm, "
      "bool apply_b_dec, int k, Tensor features, int mode, Tensor values, Tensor? token_mask) -> Tensor");
  m.def(
      "steer_rows(Tensor x, Tensor W_enc_T, Tensor W_dec, Tensor b_dec, Tensor params, int arch, int norm, "
      "bool apply_b_dec, int k, Tensor features, int mode, Tensor values, Tensor? token_mask) -> Tensor");
  m.def(
      "encode_topk(Tensor x, Tensor W_enc_T, Tensor b_dec, Tensor params, int arch, int norm, "
      "bool apply_b_dec, int sae_k, int k) -> (Tensor, Tensor)");
  m.def("decode_sparse(Tensor values, Tensor indices, Tensor W_dec, Tensor b_dec, Tensor params) -> Tensor");
  m.def(
      "trigger_score(Tensor x, Tensor W_enc_T, Tensor b_dec, Tensor params, int arch, int norm, bool apply_b_dec, "
      "int k, Tensor features, Tensor weights) -> Tensor");
}

namespace {

#ifdef SAESTEER_WITH_CUDA
constexpr bool kWithCuda = true;
#else
constexpr bool kWithCuda = false;
#endif

// build_info() -> {"with_cuda": bool, "cuda_archs": str, "built_with_torch": str}
PyObject* build_info(PyObject*, PyObject*) {
  return Py_BuildValue("{s:O,s:s,s:s}", "with_cuda", kWithCuda ? Py_True : Py_False, "cuda_archs",
                       SAESTEER_CUDA_ARCHS, "built_with_torch", SAESTEER_TORCH_VERSION);
}

PyMethodDef methods[] = {
    {"build_info", build_info, METH_NOARGS, "How this extension was built"},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_C", "saesteer native ops (registered in the torch.ops.saesteer namespace)", -1, methods,
};

}  // namespace

PyMODINIT_FUNC PyInit__C() { return PyModule_Create(&module); }
