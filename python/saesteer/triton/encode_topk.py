"""Fused encode + per-row top-k in Triton: the ``[N, d_sae]`` pre-activations never reach memory.

Two stages, both capture-safe (no host sync, outputs from ``torch.empty``, shapes from sizes only):

1. ``encode_select_kernel``, grid ``(cdiv(N, BM), SPLIT)``: program ``(m, s)`` walks the column
   tiles ``s, s + SPLIT, ...`` of the encode GEMM ``x' @ W_enc`` (``BM x BN`` tiles, fp32
   accumulate), applies the activation in the epilogue and merges the tile into a running per-row
   candidate set of ``KPAD >= k`` entries held in registers. The merge is a streaming selection:
   while some row's best tile entry beats the row's current minimum candidate, that entry replaces
   the minimum. On sparse SAE activations this is a handful of steps per tile; on dense random data
   the expected number of replacements per row over ``n`` columns is ``k (1 + ln(n / k))``, so the
   epilogue stays small against the ``BM * BN * d_in`` MACs of the tile.
2. ``torch.topk`` over the ``[N, SPLIT * KPAD]`` candidates (a few KB per row) and a gather.

For half SAEs the GEMM runs on tensor cores in the weights' dtype (x' rounded to it, as sae-lens does);
steer on topk SAEs asks for near-fp32 scores instead (see :func:`_precision`).

``k`` above 256 falls back to writing the dense activations and ``torch.topk`` over them.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .sae_math import activation, normalized_chunk, row_stats

#: Largest candidate set kept in registers; larger k writes the dense activations instead.
MAX_KPAD = 256


@triton.jit
def normalize_kernel(
    x_ptr, out_ptr, bdec_ptr, N, D, stride_x, stride_out, sqrt_d,
    NORM: tl.constexpr, APPLY_B_DEC: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """``out = norm(x) - b_dec * apply_b_dec``, in out's dtype (the GEMM operand dtype)."""
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    row_ok = rows < N
    x_row = x_ptr + rows.to(tl.int64) * stride_x
    mu, inv, _ = row_stats(x_row, row_ok, D, sqrt_d, NORM, BLOCK_T, BLOCK_K)
    o_row = out_ptr + rows.to(tl.int64) * stride_out
    for k0 in range(0, D, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)
        xk = normalized_chunk(x_row, row_ok, kk, D, mu, inv, bdec_ptr, NORM, APPLY_B_DEC)
        tl.store(o_row[:, None] + kk[None, :], xk.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & (kk < D)[None, :])


@triton.jit
def _encode_tile(
    xn_ptr, w_ptr, params_ptr, rows, row_ok, cols, col_ok, D, stride_xn, stride_p,
    ARCH: tl.constexpr, PREC: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
):
    """Selection keys ``[BM, BN]`` of one GEMM tile: the activation (topk: the score); -inf outside.

    ``PREC`` (see :func:`_precision`): 0 one MMA in the weights' dtype, 1 fp32 ``ieee`` products,
    2 x' (fp32) split into two weight-dtype halves ``hi + lo``, two MMAs: near-fp32 x' at twice the
    tensor-core work, the weights being exact in their own dtype.
    """
    acc = tl.zeros([BM, BN], tl.float32)
    a_row = xn_ptr + rows.to(tl.int64)[:, None] * stride_xn
    b_row = w_ptr + cols.to(tl.int64)[:, None] * D
    for k0 in range(0, D, BK):
        kk = k0 + tl.arange(0, BK)
        k_ok = (kk < D)[None, :]
        a = tl.load(a_row + kk[None, :], mask=row_ok[:, None] & k_ok, other=0.0)
        b = tl.load(b_row + kk[None, :], mask=col_ok[:, None] & k_ok, other=0.0)
        if PREC == 0:
            acc = tl.dot(a, tl.trans(b), acc)
        elif PREC == 1:  # tf32 would miss the fp32 tolerance
            acc = tl.dot(a.to(tl.float32), tl.trans(b.to(tl.float32)), acc, input_precision="ieee")
        else:
            a_hi = a.to(b.dtype)
            a_lo = (a - a_hi.to(tl.float32)).to(b.dtype)
            acc = tl.dot(a_hi, tl.trans(b), acc)
            acc = tl.dot(a_lo, tl.trans(b), acc)
    bias = tl.load(params_ptr + cols, mask=col_ok, other=0.0)[None, :]
    thr = tl.load(params_ptr + stride_p + cols, mask=col_ok, other=0.0)[None, :]
    mag_scale = tl.load(params_ptr + 2 * stride_p + cols, mask=col_ok, other=1.0)[None, :]
    mag_bias = tl.load(params_ptr + 3 * stride_p + cols, mask=col_ok, other=0.0)[None, :]
    key = activation(acc, bias, thr, mag_scale, mag_bias, ARCH)
    return tl.where(row_ok[:, None] & col_ok[None, :], key, float("-inf"))


@triton.jit
def encode_select_kernel(
    xn_ptr, w_ptr, params_ptr, cand_v_ptr, cand_i_ptr, N, D, d_sae, stride_xn, stride_p, stride_cand,
    ARCH: tl.constexpr, PREC: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    KPAD: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_s = tl.program_id(1)
    n_split = tl.num_programs(1)
    rows = pid_m * BM + tl.arange(0, BM)
    row_ok = rows < N
    kcols = tl.arange(0, KPAD)
    run_v = tl.full([BM, KPAD], float("-inf"), tl.float32)
    run_i = tl.zeros([BM, KPAD], tl.int32)
    run_min = tl.full([BM], float("-inf"), tl.float32)
    for tile in range(pid_s, tl.cdiv(d_sae, BN), n_split):
        cols = tile * BN + tl.arange(0, BN)
        key = _encode_tile(
            xn_ptr, w_ptr, params_ptr, rows, row_ok, cols, cols < d_sae, D, stride_xn, stride_p, ARCH, PREC, BM, BN, BK
        )
        best = tl.max(key, axis=1)
        # Streaming selection: each step moves every row's best remaining entry into the slot of
        # the row's smallest candidate, where it is larger. Strict >, so equal keys (the zeros of
        # inactive features) never displace each other.
        while tl.max((best > run_min).to(tl.int32), axis=0) > 0:
            take = best > run_min
            pos = tl.argmax(key, axis=1)
            slot = tl.argmin(run_v, axis=1)
            hit = take[:, None] & (kcols[None, :] == slot[:, None])
            run_v = tl.where(hit, best[:, None], run_v)
            run_i = tl.where(hit, (tile * BN + pos)[:, None], run_i)
            key = tl.where(tl.arange(0, BN)[None, :] == pos[:, None], float("-inf"), key)
            best = tl.max(key, axis=1)
            run_min = tl.min(run_v, axis=1)
    out = rows.to(tl.int64)[:, None] * stride_cand + (pid_s * KPAD + kcols)[None, :]
    tl.store(cand_v_ptr + out, run_v, mask=row_ok[:, None])
    tl.store(cand_i_ptr + out, run_i, mask=row_ok[:, None])


@triton.jit
def encode_dense_kernel(
    xn_ptr, w_ptr, params_ptr, out_ptr, N, D, d_sae, stride_xn, stride_p, stride_out,
    ARCH: tl.constexpr, PREC: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
):
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    cols = tl.program_id(1) * BN + tl.arange(0, BN)
    row_ok = rows < N
    col_ok = cols < d_sae
    key = _encode_tile(xn_ptr, w_ptr, params_ptr, rows, row_ok, cols, col_ok, D, stride_xn, stride_p, ARCH, PREC, BM, BN, BK)
    tl.store(out_ptr + rows.to(tl.int64)[:, None] * stride_out + cols[None, :], key, mask=row_ok[:, None] & col_ok[None, :])


def _precision(W_enc_T: torch.Tensor, exact: bool) -> int:
    """The GEMM's ``PREC``: 1 (fp32 ieee) for float32 SAEs; for half SAEs 0 (one MMA, x' rounded to
    the weights' dtype, as sae-lens computes) or, when ``exact``, 2 (x' kept to ~16 bits).

    ``exact`` is for top-k *membership* (steer on topk SAEs): a feature whose score is within x'
    rounding of the k-th must fall on the same side as in the fp32 reference.
    Under TRITON_INTERPRET=1 everything runs as 1: the interpreter's tl.dot mis-multiplies bfloat16
    tiles (triton 3.9: errors of 3e10 on a 16x16 product of N(0, 1) values), so there the
    interpreter checks everything but the half-precision MMA itself.
    """
    if W_enc_T.dtype == torch.float32 or os.environ.get("TRITON_INTERPRET") == "1":
        return 1
    return 2 if exact else 0


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 2  # the interpreter runs programs one after another; 2 still exercises the split merge


def normalize_input(x2, b_dec, norm: int, apply_b_dec: bool, dtype: torch.dtype, wrap=lambda k: k) -> torch.Tensor:
    """``norm(x) - b_dec * apply_b_dec`` as a ``[N, d_in]`` GEMM operand of ``dtype`` (unit column stride)."""
    N, D = x2.shape
    if norm == 0 and not apply_b_dec and x2.dtype == dtype and x2.stride(-1) == 1:
        return x2
    out = torch.empty((N, D), dtype=dtype, device=x2.device)
    if N:
        wrap(normalize_kernel)[(triton.cdiv(N, 4),)](
            x2, out, b_dec, N, D, x2.stride(0), out.stride(0), float(D) ** 0.5,
            NORM=norm, APPLY_B_DEC=bool(apply_b_dec), BLOCK_T=4, BLOCK_K=256,
        )
    return out


def encode_keys_topk(
    x2, W_enc_T, b_dec, params, arch: int, norm: int, apply_b_dec: bool, k: int, wrap=lambda k: k, exact: bool = False
):
    """The ``k`` largest selection keys per row and their feature ids, ``([N, k] f32, [N, k] int64)``.

    Keys are the activations, or for topk SAEs the scores ``(pre + b_enc) * mag_scale``. ``exact``:
    see :func:`_precision`.
    """
    N, D = x2.shape
    d_sae = W_enc_T.shape[0]
    prec = _precision(W_enc_T, exact)
    xn = normalize_input(x2, b_dec, norm, apply_b_dec, W_enc_T.dtype if prec == 0 else torch.float32, wrap)
    BM = 64 if N >= 64 else 16
    BN, BK = 128, 64
    kpad = max(16, triton.next_power_of_2(k))
    if kpad > MAX_KPAD:
        keys = torch.empty((N, d_sae), dtype=torch.float32, device=x2.device)
        if N:
            wrap(encode_dense_kernel)[(triton.cdiv(N, BM), triton.cdiv(d_sae, BN))](
                xn, W_enc_T, params, keys, N, D, d_sae, xn.stride(0), params.stride(0), keys.stride(0),
                ARCH=arch, PREC=prec, BM=BM, BN=BN, BK=BK, num_warps=8 if BM == 64 else 4,
            )
        vals, idx = torch.topk(keys, k, dim=1, sorted=True)
        return vals, idx
    n_tiles = triton.cdiv(d_sae, BN)
    row_blocks = triton.cdiv(N, BM)
    split = max(1, min(n_tiles, triton.cdiv(2 * _num_sms(x2.device), max(row_blocks, 1))))
    cand_v = torch.empty((N, split * kpad), dtype=torch.float32, device=x2.device)
    cand_i = torch.empty((N, split * kpad), dtype=torch.int32, device=x2.device)
    if N:
        wrap(encode_select_kernel)[(row_blocks, split)](
            xn, W_enc_T, params, cand_v, cand_i, N, D, d_sae, xn.stride(0), params.stride(0), cand_v.stride(0),
            ARCH=arch, PREC=prec, BM=BM, BN=BN, BK=BK, KPAD=kpad, num_warps=8 if BM == 64 else 4,
        )
    vals, pos = torch.topk(cand_v, k, dim=1, sorted=True)
    return vals, cand_i.gather(1, pos).long()


def encode_topk(x2, W_enc_T, b_dec, params, arch: int, norm: int, apply_b_dec: bool, sae_k: int, k: int, wrap=lambda k: k):
    """``(values [N, k] in x's dtype, indices [N, k] int64)``: the k largest activations, descending.

    For topk SAEs the selection is by score; the SAE's own ``sae_k`` winners are relu'd and the
    positions past ``sae_k`` (features outside the SAE's top-k) are zero, as in the dense encode.
    """
    vals, idx = encode_keys_topk(x2, W_enc_T, b_dec, params, arch, norm, apply_b_dec, k, wrap)
    if arch == 3:
        vals = vals.clamp_min(0.0)
        if k > sae_k:
            vals[:, sae_k:] = 0.0
    return vals.to(x2.dtype), idx
