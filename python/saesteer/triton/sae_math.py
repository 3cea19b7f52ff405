"""The SAE math every Triton kernel shares: per-row input normalization, the per-feature activation
and the intervention edit. All in float32, whatever the storage dtype.

Ids follow the native op schemas (csrc/ops.cpp): ``NORM`` 0 none, 1 constant_norm_rescale,
2 layer_norm; ``ARCH`` 0 standard, 1 jumprelu, 2 gated, 3 topk; ``MODE`` 0 ablate, 1 scale,
2 clamp, 3 add.
"""

import triton
import triton.language as tl

@triton.jit
def row_stats(x_row, row_ok, D, sqrt_d, NORM: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr):
    """``(mu, inv, scale)`` per row, so that ``norm(x) = (x - mu) * inv`` and ``denorm(y) = y * scale``.

    ``x_row``: ``[BLOCK_T]`` row pointers. constant_norm_rescale: ``inv = sqrt(d_in) / ||x||``,
    ``scale = 1 / inv``; layer_norm: ``mu = mean(x)``, ``std`` unbiased, ``inv = 1 / (std + eps)``,
    ``scale = std`` (two passes over the row, so the variance does not cancel).
    """
    mu = tl.zeros([BLOCK_T], tl.float32)
    inv = tl.full([BLOCK_T], 1.0, tl.float32)
    scale = tl.full([BLOCK_T], 1.0, tl.float32)
    if NORM == 1:
        ss = tl.zeros([BLOCK_T], tl.float32)
        for k0 in range(0, D, BLOCK_K):
            kk = k0 + tl.arange(0, BLOCK_K)
            m = row_ok[:, None] & (kk < D)[None, :]
            xk = tl.load(x_row[:, None] + kk[None, :], mask=m, other=0.0).to(tl.float32)
            ss += tl.sum(xk * xk, axis=1)
        nrm = tl.where(row_ok, tl.sqrt(ss), 1.0)
        inv = sqrt_d / nrm
        scale = 1.0 / inv
    elif NORM == 2:
        sm = tl.zeros([BLOCK_T], tl.float32)
        for k0 in range(0, D, BLOCK_K):
            kk = k0 + tl.arange(0, BLOCK_K)
            m = row_ok[:, None] & (kk < D)[None, :]
            sm += tl.sum(tl.load(x_row[:, None] + kk[None, :], mask=m, other=0.0).to(tl.float32), axis=1)
        mu = sm / D
        var = tl.zeros([BLOCK_T], tl.float32)
        for k0 in range(0, D, BLOCK_K):
            kk = k0 + tl.arange(0, BLOCK_K)
            m = row_ok[:, None] & (kk < D)[None, :]
            xc = tl.load(x_row[:, None] + kk[None, :], mask=m, other=0.0).to(tl.float32) - mu[:, None]
            xc = tl.where(m, xc, 0.0)
            var += tl.sum(xc * xc, axis=1)
        std = tl.sqrt(var / (D - 1))
        inv = 1.0 / (std + 1e-5)  # saesteer.packed.LAYER_NORM_EPS, sae-lens's default
        scale = std
    return mu, inv, scale


@triton.jit
def normalized_chunk(x_row, row_ok, kk, D, mu, inv, bdec_ptr, NORM: tl.constexpr, APPLY_B_DEC: tl.constexpr):
    """``x'[rows, kk] = norm(x) - b_dec * apply_b_dec`` in float32; 0 outside the row/column bounds."""
    m = row_ok[:, None] & (kk < D)[None, :]
    xk = tl.load(x_row[:, None] + kk[None, :], mask=m, other=0.0).to(tl.float32)
    if NORM != 0:
        xk = (xk - mu[:, None]) * inv[:, None]
    if APPLY_B_DEC:
        xk -= tl.load(bdec_ptr + kk, mask=kk < D, other=0.0).to(tl.float32)[None, :]
    return tl.where(m, xk, 0.0)


@triton.jit
def activation(pre, bias, thr, mag_scale, mag_bias, ARCH: tl.constexpr):
    """Feature activation from ``pre = x' . W_enc[:, i]`` (no bias yet); per-feature params ``[1, S]``.

    For topk (ARCH 3) this is the selection score ``(pre + bias) * mag_scale``; the caller keeps the
    k largest per row and relus them.
    """
    h = pre + bias
    if ARCH == 0:
        f = tl.maximum(h, 0.0)
    elif ARCH == 1:
        f = tl.where(h > thr, tl.maximum(h, 0.0), 0.0)  # strict >, as sae-lens
    elif ARCH == 2:
        f = tl.where(h > 0.0, tl.maximum(pre * mag_scale + mag_bias, 0.0), 0.0)
    else:
        f = h * mag_scale
    return f


@triton.jit
def edit(f, v, MODE: tl.constexpr):
    """The edited activation ``f'``: ablate 0, scale ``v f``, clamp ``v``, add ``f + v``."""
    if MODE == 0:
        out = tl.zeros_like(f)
    elif MODE == 1:
        out = f * v
    elif MODE == 2:
        out = v + tl.zeros_like(f)
    else:
        out = f + v
    return out
