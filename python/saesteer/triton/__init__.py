"""The ``triton`` backend of the saesteer ops: CUDA tensors, and CPU tensors under ``TRITON_INTERPRET=1``.

Each op is a ``torch.library.triton_op`` in the ``saesteer_triton`` namespace, so torch.compile
traces into the kernels (``wrap_triton``) instead of treating them as opaque; where that API is
missing (torch < 2.6) the same functions launch the kernels directly. Importing this package
registers the backend with :mod:`saesteer.ops.registry` (which imports it on first need).

Kernels: :mod:`.steer` (steer, steer_rows), :mod:`.trigger` (trigger_score), :mod:`.encode_topk`,
:mod:`.decode_sparse`; the SAE math they share is in :mod:`.sae_math`.
"""

from __future__ import annotations

import os
from typing import Optional

import torch

from ..ops import registry as _registry
from .decode_sparse import decode_sparse as _decode_sparse
from .encode_topk import encode_topk as _encode_topk
from .steer import steer_2d as _steer_2d
from .trigger import trigger_2d as _trigger_2d

__all__ = ["supports"]

_HAS_TRITON_OP = hasattr(torch.library, "triton_op") and hasattr(torch.library, "wrap_triton")


def supports(device: torch.device) -> bool:
    return device.type == "cuda" or (device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1")


if _HAS_TRITON_OP:
    _wrap = torch.library.wrap_triton

    def _op(name):
        return torch.library.triton_op(f"saesteer_triton::{name}", mutates_args=())

else:  # pragma: no cover - old torch
    def _wrap(kernel):
        return kernel

    def _op(name):
        return lambda fn: fn


@_op("steer")
def _steer_op(
    x: torch.Tensor, W_enc_T: torch.Tensor, W_dec: torch.Tensor, b_dec: torch.Tensor, params: torch.Tensor,
    arch: int, norm: int, apply_b_dec: bool, k: int, features: torch.Tensor, mode: int, values: torch.Tensor,
    token_mask: Optional[torch.Tensor], tok_per_row: int,
) -> torch.Tensor:
    # values [S] (steer: stride 0, one row for every token) or [R, S] (steer_rows, tok_per_row = T)
    stride_vals = values.stride(0) if values.dim() == 2 else 0
    return _steer_2d(
        x, W_enc_T, W_dec, b_dec, params, arch, norm, apply_b_dec, k, features, mode, values, token_mask,
        tok_per_row, stride_vals, _wrap,
    )


@_op("encode_topk")
def _encode_topk_op(
    x: torch.Tensor, W_enc_T: torch.Tensor, b_dec: torch.Tensor, params: torch.Tensor,
    arch: int, norm: int, apply_b_dec: bool, sae_k: int, k: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    return _encode_topk(x, W_enc_T, b_dec, params, arch, norm, apply_b_dec, sae_k, k, _wrap)


@_op("decode_sparse")
def _decode_sparse_op(
    values: torch.Tensor, indices: torch.Tensor, W_dec: torch.Tensor, b_dec: torch.Tensor, params: torch.Tensor
) -> torch.Tensor:
    return _decode_sparse(values, indices, W_dec, b_dec, params, _wrap)


@_op("trigger_score")
def _trigger_score_op(
    x: torch.Tensor, W_enc_T: torch.Tensor, b_dec: torch.Tensor, params: torch.Tensor,
    arch: int, norm: int, apply_b_dec: bool, k: int, features: torch.Tensor, weights: torch.Tensor,
) -> torch.Tensor:
    return _trigger_2d(x, W_enc_T, b_dec, params, arch, norm, apply_b_dec, k, features, weights, _wrap)


def _rows_2d(x: torch.Tensor) -> torch.Tensor:
    """``x`` as ``[N, d_in]`` with unit column stride (a view when possible)."""
    x2 = x.reshape(-1, x.shape[-1])
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


def steer(x2, sae, feats, mode, vals, mask):
    m = None if mask is None else mask.contiguous()
    return _steer_op(
        _rows_2d(x2), sae.W_enc_T, sae.W_dec, sae.b_dec, sae.params, sae.arch_id, sae.norm_id,
        sae.apply_b_dec_to_input, sae.k or 0, feats, mode, vals.contiguous(), m, 1,
    )


def steer_rows(x, sae, feats, mode, vals, mask):
    R, T, D = x.shape
    if mode == 0:  # ablate with a 0/1 mask m: f' = f * (1 - m), i.e. scale by 1 - m
        mode, vals = 1, 1.0 - vals
    m = None if mask is None else mask.reshape(-1).contiguous()
    out = _steer_op(
        _rows_2d(x), sae.W_enc_T, sae.W_dec, sae.b_dec, sae.params, sae.arch_id, sae.norm_id,
        sae.apply_b_dec_to_input, sae.k or 0, feats, mode, vals.contiguous(), m, max(T, 1),
    )
    return out.view(R, T, D)


def encode_topk(x2, sae, k):
    return _encode_topk_op(
        _rows_2d(x2), sae.W_enc_T, sae.b_dec, sae.params, sae.arch_id, sae.norm_id,
        sae.apply_b_dec_to_input, sae.k or 0, k,
    )


def trigger_score(x2, sae, feats, weights):
    return _trigger_score_op(
        _rows_2d(x2), sae.W_enc_T, sae.b_dec, sae.params, sae.arch_id, sae.norm_id,
        sae.apply_b_dec_to_input, sae.k or 0, feats, weights.contiguous(),
    )


def decode_sparse(values, indices, sae):
    return _decode_sparse_op(values.contiguous(), indices.contiguous(), sae.W_dec, sae.b_dec, sae.params)


_registry.register_backend(
    "triton", supports, steer=steer, steer_rows=steer_rows, encode_topk=encode_topk, decode_sparse=decode_sparse,
    trigger_score=trigger_score,
)
