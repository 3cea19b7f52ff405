"""The trigger read in Triton: ``score[n] = sum_r w[r] * f_{S_r}(x_n)``, float32 ``[N]``.

Program ``t`` owns ``BLOCK_T`` tokens: the row statistics, then for each chunk of ``BLOCK_S``
features the activations of :func:`.steer.subset_acts` (the |S| gathered encoder rows; a topk SAE
looks its features up among the rows' winners), weighted and summed. Nothing else is written.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .sae_math import row_stats
from .steer import subset_acts, topk_winners


@triton.jit
def trigger_kernel(
    x_ptr, out_ptr, wenc_ptr, bdec_ptr, params_ptr, feats_ptr, w_ptr, tk_v_ptr, tk_i_ptr,
    N, D, S, K_TOPK, stride_x, stride_p, sqrt_d,
    ARCH: tl.constexpr, NORM: tl.constexpr, APPLY_B_DEC: tl.constexpr, TOPK_SRC: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_K: tl.constexpr,
):
    USE_DOT: tl.constexpr = BLOCK_T >= 16
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    row_ok = rows < N
    rows64 = rows.to(tl.int64)
    x_row = x_ptr + rows64 * stride_x
    mu, inv, _ = row_stats(x_row, row_ok, D, sqrt_d, NORM, BLOCK_T, BLOCK_K)
    score = tl.zeros([BLOCK_T], tl.float32)
    for s0 in range(0, S, BLOCK_S):
        s_idx = s0 + tl.arange(0, BLOCK_S)
        s_ok = s_idx < S
        feat = tl.load(feats_ptr + s_idx, mask=s_ok, other=0)
        f = subset_acts(
            x_row, rows64, row_ok, feat, s_ok, mu, inv, wenc_ptr, bdec_ptr, params_ptr, tk_v_ptr, tk_i_ptr,
            D, K_TOPK, stride_p, ARCH, NORM, APPLY_B_DEC, TOPK_SRC, BLOCK_T, BLOCK_S, BLOCK_K, USE_DOT,
        )
        w = tl.load(w_ptr + s_idx, mask=s_ok, other=0.0)
        score += tl.sum(tl.where(s_ok[None, :], f * w[None, :], 0.0), axis=1)
    tl.store(out_ptr + rows64, score, mask=row_ok)


def trigger_2d(x2, W_enc_T, b_dec, params, arch: int, norm: int, apply_b_dec: bool, sae_k: int, feats, weights,
               wrap=lambda k: k):
    """Launch the trigger kernel on ``x2 [N, d_in]`` (row stride free, unit column stride)."""
    N, D = x2.shape
    S = feats.shape[0]
    out = torch.empty((N,), dtype=torch.float32, device=x2.device)
    if N == 0:
        return out
    tk_v, tk_i = topk_winners(x2, W_enc_T, b_dec, params, arch, norm, apply_b_dec, sae_k, feats, wrap)
    # prefill-sized: 16-token tiles on tl.dot; generation: one token per program
    BT, BK = (16, 32) if N >= 64 else (1, 64)
    BS = max(16 if BT == 16 else 2, min(64, triton.next_power_of_2(max(S, 1))))
    wrap(trigger_kernel)[(triton.cdiv(N, BT),)](
        x2, out, W_enc_T, b_dec, params, feats, weights, tk_v, tk_i,
        N, D, S, sae_k if arch == 3 else 0, x2.stride(0), params.stride(0), float(D) ** 0.5,
        ARCH=arch, NORM=norm, APPLY_B_DEC=bool(apply_b_dec), TOPK_SRC=arch == 3,
        BLOCK_T=BT, BLOCK_S=BS, BLOCK_K=BK, num_warps=4,
    )
    return out
