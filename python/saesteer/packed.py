"""The kernel view of an SAE: one frozen set of tensors that every backend and engine takes.

:class:`saesteer.SAE` holds sae-lens's parameters. The kernels want them laid out differently:
the encoder transposed (``W_enc_T [d_sae, d_in]``, so that the encoder columns of a feature set
are a row gather) and the per-architecture parameters packed into one float32 tensor
``params [5, d_sae]`` (rows :data:`PARAM_ROWS`), so one kernel serves every architecture.
:meth:`saesteer.SAE.packed` builds a :class:`PackedSAE` once and caches it until a weight changes;
the reference, the compiled ops, the Triton kernels, the HF hooks and the vLLM plugin all read it.

This module imports nothing of saesteer: it is the leaf that the others share.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["ARCHITECTURES", "NORMS", "PARAM_ROWS", "LAYER_NORM_EPS", "SAEFields", "PackedSAE", "as_packed"]

#: Supported architectures, in the order of their integer ids in the native op schemas.
ARCHITECTURES = ("standard", "jumprelu", "gated", "topk")
#: Run-time input normalizations, in the order of their ids. sae-lens treats every other value
#: ("expected_average_only_in", "covariance_whitening") as the identity at run time (its loaders fold
#: them into the weights), and so do we.
NORMS = ("none", "constant_norm_rescale", "layer_norm")
#: Rows of ``params``:
#:   bias       b_enc (b_gate for gated)
#:   threshold  jumprelu threshold; 0 for standard and gated (relu(p) * (p > 0) == relu(p))
#:   mag_scale  gated: exp(r_mag); topk: ||W_dec[i]|| when rescaled, else 1; others 1
#:   mag_bias   gated: b_mag; others 0
#:   dec_scale  topk rescaled: 1 / ||W_dec[i]||; others 1 (multiplies f before the decode)
PARAM_ROWS = ("bias", "threshold", "mag_scale", "mag_bias", "dec_scale")
#: sae-lens's run_time_activation_ln_in epsilon.
LAYER_NORM_EPS = 1e-5


class SAEFields:
    """What an SAE and its kernel view both derive: ``dtype`` and ``device`` (read off ``W_dec``;
    an SAE's weights share both) and the schema ids of its architecture and normalization."""

    W_dec: torch.Tensor
    architecture: str
    normalize_activations: str

    @property
    def dtype(self) -> torch.dtype:
        return self.W_dec.dtype

    @property
    def device(self) -> torch.device:
        return self.W_dec.device

    @property
    def arch_id(self) -> int:
        return ARCHITECTURES.index(self.architecture)

    @property
    def norm_id(self) -> int:
        return NORMS.index(self.normalize_activations)


@dataclass(frozen=True, eq=False)
class PackedSAE(SAEFields):
    """An SAE as the kernels take it. Built by :meth:`saesteer.SAE.packed`; never edited.

    Tensors share storage with the SAE's buffers where the layout allows (``W_enc``, ``W_dec``,
    ``b_dec``); ``W_enc_T``, ``params`` and ``decoder_norms`` are derived copies.
    """

    W_enc: torch.Tensor  #: [d_in, d_sae], the SAE dtype
    W_enc_T: torch.Tensor  #: [d_sae, d_in] contiguous, the SAE dtype
    W_dec: torch.Tensor  #: [d_sae, d_in] contiguous, the SAE dtype
    b_dec: torch.Tensor  #: [d_in], the SAE dtype
    params: torch.Tensor  #: [5, d_sae] float32, rows PARAM_ROWS
    decoder_norms: torch.Tensor  #: [d_sae] float32
    architecture: str
    normalize_activations: str
    apply_b_dec_to_input: bool
    k: int | None

    def __post_init__(self):
        # Read on every op call: computed once here (a view is never edited).
        object.__setattr__(self, "d_in", self.W_dec.shape[1])
        object.__setattr__(self, "d_sae", self.W_dec.shape[0])
        object.__setattr__(self, "_device", self.W_dec.device)
        object.__setattr__(self, "_native_args", (
            self.W_enc_T, self.W_dec, self.b_dec, self.params, self.arch_id, self.norm_id,
            self.apply_b_dec_to_input, self.k or 0))

    d_in: int = field(init=False, repr=False)  #: W_dec.shape[1]
    d_sae: int = field(init=False, repr=False)  #: W_dec.shape[0]

    @property
    def device(self) -> torch.device:
        return self._device

    def native_args(self) -> tuple:
        """``(W_enc_T, W_dec, b_dec, params, arch, norm, apply_b_dec, k)``: the SAE arguments of the
        compiled ops' schemas (csrc/ops.cpp), in order."""
        return self._native_args

    def check_input(self, x, name: str = "x") -> None:
        """Raise if ``x`` is not a floating-point tensor ``[..., d_in]``."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise ValueError(f"{name}: expected a floating-point tensor, got dtype {x.dtype}")
        if x.dim() < 1 or x.shape[-1] != self.d_in:
            raise ValueError(f"{name}: expected last dimension d_in={self.d_in}, got shape {tuple(x.shape)}")


def as_packed(sae) -> PackedSAE:
    """The :class:`PackedSAE` of ``sae`` (a ``saesteer.SAE``, or a ``PackedSAE`` as it is)."""
    if isinstance(sae, PackedSAE):
        return sae
    packed = getattr(sae, "packed", None)
    if callable(packed):
        return packed()
    raise TypeError(f"sae: expected a saesteer.SAE, got {type(sae).__name__}")
