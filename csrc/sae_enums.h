// Integer ids shared by the op schemas (csrc/ops.cpp), the CPU kernels (csrc/cpu) and the CUDA
// kernels (csrc/kernels). Plain C++17: included by torch-free device code and by ATen code alike.
// The Python side spells the same ids in saesteer.sae.ARCHITECTURES / NORMS and
// saesteer.intervention.MODES.
#pragma once

namespace saesteer {

enum Arch : int { kStandard = 0, kJumpReLU = 1, kGated = 2, kTopK = 3 };
enum Norm : int { kNoNorm = 0, kConstantNormRescale = 1, kLayerNorm = 2 };
// Modes 0-3 are the schema's. kAblateMask is internal to the CPU steer_rows, whose ablate is
// f' = f * (1 - v): a row's value v (0 or 1) says whether that row ablates the feature.
enum Mode : int { kAblate = 0, kScale = 1, kClamp = 2, kAdd = 3, kAblateMask = 4 };

// Element types of the CPU kernels' arrays (csrc/cpu/kernels.h); the binding maps at::ScalarType
// to these. The CUDA kernels take the storage type as a template parameter instead.
enum Dtype : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

// Rows of the packed float32 feature params [5, d_sae].
enum ParamRow : int { kBias = 0, kThreshold = 1, kMagScale = 2, kMagBias = 3, kDecScale = 4 };

constexpr float kLayerNormEps = 1e-5f;  // sae-lens's run_time_activation_ln_in eps

}  // namespace saesteer
