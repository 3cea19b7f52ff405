"""Sparse decode in Triton: ``out[n] = sum_j values[n, j] * dec_scale[i_nj] * W_dec[i_nj] + b_dec``.

Program ``(n, d)`` gathers ``BLOCK_J`` decoder rows at a time (``[BLOCK_J, BLOCK_D]`` loads, so
many rows are in flight) and reduces them in fp32. Cost: ``N * k * d_in`` weight elements, against
``N * d_sae * d_in`` MACs for the dense ``f @ W_dec``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def decode_sparse_kernel(
    v_ptr, i_ptr, wdec_ptr, bdec_ptr, params_ptr, out_ptr, K, D, stride_v, stride_i, stride_p, stride_out,
    BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64)
    dcols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = dcols < D
    acc = tl.zeros([BLOCK_D], tl.float32)
    for j0 in range(0, K, BLOCK_J):
        jj = j0 + tl.arange(0, BLOCK_J)
        j_ok = jj < K
        idx = tl.load(i_ptr + n * stride_i + jj, mask=j_ok, other=0)
        w = tl.load(v_ptr + n * stride_v + jj, mask=j_ok, other=0.0).to(tl.float32)
        w = w * tl.load(params_ptr + 4 * stride_p + idx, mask=j_ok, other=0.0)
        rows = tl.load(wdec_ptr + idx[:, None] * D + dcols[None, :], mask=j_ok[:, None] & d_ok[None, :], other=0.0)
        acc += tl.sum(w[:, None] * rows.to(tl.float32), axis=0)
    acc += tl.load(bdec_ptr + dcols, mask=d_ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + n * stride_out + dcols, acc.to(out_ptr.dtype.element_ty), mask=d_ok)


def decode_sparse(values, indices, W_dec, b_dec, params, wrap=lambda k: k) -> torch.Tensor:
    """``values [N, k]`` float, ``indices [N, k]`` int64 -> ``[N, d_in]`` in values' dtype."""
    N, K = values.shape
    D = W_dec.shape[1]
    out = torch.empty((N, D), dtype=values.dtype, device=values.device)
    if N == 0:
        return out
    BLOCK_D = min(512, triton.next_power_of_2(D))
    BLOCK_J = max(2, min(16, triton.next_power_of_2(K)))
    wrap(decode_sparse_kernel)[(N, triton.cdiv(D, BLOCK_D))](
        values, indices, W_dec, b_dec, params, out, K, D, values.stride(0), indices.stride(0), params.stride(0),
        out.stride(0), BLOCK_J=BLOCK_J, BLOCK_D=BLOCK_D, num_warps=4,
    )
    return out
