"""Error-preserving steer in Triton: ``y = x + s * sum_{i in S} (f'_i - f_i) * dec_scale_i * W_dec[i]``.

One kernel serves ``steer`` and ``steer_rows``. Program ``(t, d)`` owns ``BLOCK_T`` tokens and the
output columns ``[d * BLOCK_DO, (d + 1) * BLOCK_DO)``: it computes the row statistics, the |S| dot
products ``x' . W_enc[:, i]`` over all of d_in (gathered encoder rows, fp32), the activation, the
edit and the coefficients, then accumulates its slice of ``coef @ W_dec[S]``. Splitting the output
columns spreads a generation step (T = 1..64) over ``d_in / BLOCK_DO`` programs; each recomputes
the |S| dots from L2 (|S| * d_in elements), which is what a single program would read anyway.

Small token blocks (``BLOCK_T < 16``) use broadcast-and-reduce products, which waste nothing at
T = 1; larger blocks use ``tl.dot`` in fp32 (``ieee``; tf32 would miss the fp32 tolerance).

For topk SAEs the membership of feature i in a row's top k needs the whole encode: the caller runs
:func:`encode_keys_topk` first and passes the winners (``TOPK_SRC``); the kernel then looks the
features of S up among them instead of computing dots.

A token whose coefficients are all zero, or whose mask is False, is copied bit for bit.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .encode_topk import encode_keys_topk
from .sae_math import activation, edit, normalized_chunk, row_stats


@triton.jit
def _mm_nt(a, b, acc, USE_DOT: tl.constexpr):
    """``acc + a @ b.T`` for ``a [M, K]``, ``b [N, K]`` in fp32."""
    if USE_DOT:
        acc = tl.dot(a, tl.trans(b), acc, input_precision="ieee")
    else:
        acc += tl.sum(a[:, None, :] * b[None, :, :], axis=2)
    return acc


@triton.jit
def _mm_nn(a, b, acc, USE_DOT: tl.constexpr):
    """``acc + a @ b`` for ``a [M, K]``, ``b [K, N]`` in fp32."""
    if USE_DOT:
        acc = tl.dot(a, b, acc, input_precision="ieee")
    else:
        acc += tl.sum(a[:, :, None] * b[None, :, :], axis=1)
    return acc


@triton.jit
def subset_acts(
    x_row, rows64, row_ok, feat, s_ok, mu, inv, wenc_ptr, bdec_ptr, params_ptr, tk_v_ptr, tk_i_ptr,
    D, K_TOPK, stride_p,
    ARCH: tl.constexpr, NORM: tl.constexpr, APPLY_B_DEC: tl.constexpr, TOPK_SRC: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_K: tl.constexpr, USE_DOT: tl.constexpr,
):
    """Activations ``f [BLOCK_T, BLOCK_S]`` of the features ``feat`` (``s_ok``: in range) for the rows
    ``x_row``: the dots with their gathered encoder rows, or (``TOPK_SRC``) a look-up among the
    rows' top-k winners ``tk_v``/``tk_i`` ``[N, K_TOPK]``. Shared by steer and the trigger read."""
    if TOPK_SRC:
        f = tl.zeros([BLOCK_T, BLOCK_S], tl.float32)
        for j in range(0, K_TOPK):
            ij = tl.load(tk_i_ptr + rows64 * K_TOPK + j, mask=row_ok, other=-1)
            vj = tl.load(tk_v_ptr + rows64 * K_TOPK + j, mask=row_ok, other=0.0)
            f = tl.where(ij[:, None] == feat[None, :], vj[:, None], f)
    else:
        pre = tl.zeros([BLOCK_T, BLOCK_S], tl.float32)
        w_row = wenc_ptr + feat[:, None] * D
        for k0 in range(0, D, BLOCK_K):
            kk = k0 + tl.arange(0, BLOCK_K)
            xk = normalized_chunk(x_row, row_ok, kk, D, mu, inv, bdec_ptr, NORM, APPLY_B_DEC)
            wk = tl.load(w_row + kk[None, :], mask=s_ok[:, None] & (kk < D)[None, :], other=0.0).to(tl.float32)
            pre = _mm_nt(xk, wk, pre, USE_DOT)
        bias = tl.load(params_ptr + feat, mask=s_ok, other=0.0)[None, :]
        thr = tl.load(params_ptr + stride_p + feat, mask=s_ok, other=0.0)[None, :]
        mag_scale = tl.load(params_ptr + 2 * stride_p + feat, mask=s_ok, other=1.0)[None, :]
        mag_bias = tl.load(params_ptr + 3 * stride_p + feat, mask=s_ok, other=0.0)[None, :]
        f = activation(pre, bias, thr, mag_scale, mag_bias, ARCH)
    return f


@triton.jit
def steer_kernel(
    x_ptr, out_ptr, wenc_ptr, wdec_ptr, bdec_ptr, params_ptr, feats_ptr, vals_ptr, mask_ptr,
    tk_v_ptr, tk_i_ptr,
    N, D, S, K_TOPK, stride_x, stride_out, stride_p, tok_per_row, stride_vals, sqrt_d,
    ARCH: tl.constexpr, NORM: tl.constexpr, APPLY_B_DEC: tl.constexpr, MODE: tl.constexpr,
    HAS_MASK: tl.constexpr, TOPK_SRC: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_DO: tl.constexpr,
):
    USE_DOT: tl.constexpr = BLOCK_T >= 16
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    row_ok = rows < N
    rows64 = rows.to(tl.int64)
    x_row = x_ptr + rows64 * stride_x
    dcols = tl.program_id(1) * BLOCK_DO + tl.arange(0, BLOCK_DO)
    d_ok = dcols < D

    mu, inv, scale = row_stats(x_row, row_ok, D, sqrt_d, NORM, BLOCK_T, BLOCK_K)
    # steer: one value row shared by all tokens (stride 0); steer_rows: row r of [R, S] for token r*T+t.
    v_row = (rows64 // tok_per_row) * stride_vals
    delta = tl.zeros([BLOCK_T, BLOCK_DO], tl.float32)
    changed = tl.zeros([BLOCK_T], tl.int32)
    for s0 in range(0, S, BLOCK_S):
        s_idx = s0 + tl.arange(0, BLOCK_S)
        s_ok = s_idx < S
        feat = tl.load(feats_ptr + s_idx, mask=s_ok, other=0)
        f = subset_acts(
            x_row, rows64, row_ok, feat, s_ok, mu, inv, wenc_ptr, bdec_ptr, params_ptr, tk_v_ptr, tk_i_ptr,
            D, K_TOPK, stride_p, ARCH, NORM, APPLY_B_DEC, TOPK_SRC, BLOCK_T, BLOCK_S, BLOCK_K, USE_DOT,
        )
        ts_ok = row_ok[:, None] & s_ok[None, :]
        v = tl.load(vals_ptr + v_row[:, None] + s_idx[None, :], mask=ts_ok, other=0.0)
        dec_scale = tl.load(params_ptr + 4 * stride_p + feat, mask=s_ok, other=0.0)[None, :]
        coef = (edit(f, v, MODE) - f) * dec_scale
        if NORM != 0:
            coef = coef * scale[:, None]
        coef = tl.where(ts_ok, coef, 0.0)
        changed = tl.maximum(changed, tl.max((coef != 0.0).to(tl.int32), axis=1))
        wd = tl.load(wdec_ptr + feat[:, None] * D + dcols[None, :], mask=s_ok[:, None] & d_ok[None, :], other=0.0)
        delta = _mm_nn(coef, wd.to(tl.float32), delta, USE_DOT)

    upd = changed != 0
    if HAS_MASK:
        upd = upd & (tl.load(mask_ptr + rows, mask=row_ok, other=0) != 0)
    io_mask = row_ok[:, None] & d_ok[None, :]
    xo = tl.load(x_row[:, None] + dcols[None, :], mask=io_mask, other=0.0)
    # Untouched tokens keep x's bits (x + 0.0 would turn -0.0 into +0.0).
    y = tl.where(upd[:, None], (xo.to(tl.float32) + delta).to(xo.dtype), xo)
    tl.store(out_ptr + rows64[:, None] * stride_out + dcols[None, :], y, mask=io_mask)


def _blocks(N: int, S: int, D: int):
    """``(BLOCK_T, BLOCK_S, BLOCK_K, BLOCK_DO, num_warps)`` by token count (untuned: no GPU yet)."""
    if N >= 64:  # prefill-sized: 16-token tiles on tl.dot
        return 16, max(16, min(64, triton.next_power_of_2(S))), 32, 128, 4
    # generation: one token per program, output columns split over ~d_in/256 programs
    return 1, max(2, min(64, triton.next_power_of_2(S))), 64, min(256, triton.next_power_of_2(D)), 4


def topk_winners(x2, W_enc_T, b_dec, params, arch: int, norm: int, apply_b_dec: bool, sae_k: int, feats, wrap):
    """A topk SAE's per-row winners ``(relu'd values, ids) [N, sae_k]`` for :func:`subset_acts`;
    for the other architectures two placeholder tensors (TOPK_SRC is off)."""
    if arch != 3:
        return params, feats  # unused; any tensors of the right kind
    tk_v, tk_i = encode_keys_topk(x2, W_enc_T, b_dec, params, arch, norm, apply_b_dec, sae_k, wrap, exact=True)
    return tk_v.clamp_min(0.0).contiguous(), tk_i.contiguous()


def steer_2d(
    x2, W_enc_T, W_dec, b_dec, params, arch: int, norm: int, apply_b_dec: bool, sae_k: int,
    feats, mode: int, vals, mask, tok_per_row: int, stride_vals: int, wrap=lambda k: k,
):
    """Launch the steer kernel on ``x2 [N, d_in]`` (row stride free, unit column stride)."""
    N, D = x2.shape
    S = feats.shape[0]
    out = torch.empty((N, D), dtype=x2.dtype, device=x2.device)
    if N == 0:
        return out
    tk_v, tk_i = topk_winners(x2, W_enc_T, b_dec, params, arch, norm, apply_b_dec, sae_k, feats, wrap)
    BT, BS, BK, BDO, warps = _blocks(N, S, D)
    mask_u8 = mask.view(torch.uint8) if mask is not None else x2
    wrap(steer_kernel)[(triton.cdiv(N, BT), triton.cdiv(D, BDO))](
        x2, out, W_enc_T, W_dec, b_dec, params, feats, vals, mask_u8, tk_v, tk_i,
        N, D, S, sae_k if arch == 3 else 0, x2.stride(0), out.stride(0), params.stride(0),
        tok_per_row, stride_vals, float(D) ** 0.5,
        ARCH=arch, NORM=norm, APPLY_B_DEC=bool(apply_b_dec), MODE=mode,
        HAS_MASK=mask is not None, TOPK_SRC=arch == 3,
        BLOCK_T=BT, BLOCK_S=BS, BLOCK_K=BK, BLOCK_DO=BDO, num_warps=warps,
    )
    return out
