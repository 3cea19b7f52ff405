"""Compile every Triton kernel of the backend to a cubin for a GPU architecture, without a GPU.

The interpreter (``TRITON_INTERPRET=1``) checks what the kernels compute but accepts programs the
real compiler rejects; this catches those on GPU-less machines. Run as
``python -m saesteer.triton.compile_check --arch 80 90`` (with TRITON_INTERPRET unset).
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from .decode_sparse import decode_sparse_kernel
from .encode_topk import encode_dense_kernel, encode_select_kernel, normalize_kernel
from .steer import steer_kernel
from .trigger import trigger_kernel


def _variants(dt: str):
    """``(kernel, pointer/scalar types, constexprs, num_warps)`` for storage dtype ``dt`` (``"bf16"``...)."""
    p = f"*{dt}"
    steer = dict(
        x_ptr=p, out_ptr=p, wenc_ptr=p, wdec_ptr=p, bdec_ptr=p, params_ptr="*fp32", feats_ptr="*i64", vals_ptr="*fp32",
        mask_ptr="*u8", tk_v_ptr="*fp32", tk_i_ptr="*i64", N="i32", D="i32", S="i32", K_TOPK="i32", stride_x="i32",
        stride_out="i32", stride_p="i32", tok_per_row="i32", stride_vals="i32", sqrt_d="fp32",
    )
    for (bt, bs, bk, bdo), (arch, norm, mode) in itertools.product(
        [(1, 64, 64, 256), (16, 64, 32, 128)], [(1, 2, 2), (3, 1, 0), (2, 0, 3), (0, 0, 1)]
    ):
        yield steer_kernel, steer, dict(
            ARCH=arch, NORM=norm, APPLY_B_DEC=True, MODE=mode, HAS_MASK=True, TOPK_SRC=arch == 3,
            BLOCK_T=bt, BLOCK_S=bs, BLOCK_K=bk, BLOCK_DO=bdo,
        ), 4
    trigger = dict(
        x_ptr=p, out_ptr="*fp32", wenc_ptr=p, bdec_ptr=p, params_ptr="*fp32", feats_ptr="*i64", w_ptr="*fp32",
        tk_v_ptr="*fp32", tk_i_ptr="*i64", N="i32", D="i32", S="i32", K_TOPK="i32", stride_x="i32", stride_p="i32",
        sqrt_d="fp32",
    )
    for (bt, bs, bk), (arch, norm) in itertools.product([(1, 64, 64), (16, 64, 32)], [(1, 2), (3, 1), (2, 0)]):
        yield trigger_kernel, trigger, dict(
            ARCH=arch, NORM=norm, APPLY_B_DEC=True, TOPK_SRC=arch == 3, BLOCK_T=bt, BLOCK_S=bs, BLOCK_K=bk,
        ), 4
    enc = dict(
        xn_ptr=p, w_ptr=p, params_ptr="*fp32", cand_v_ptr="*fp32", cand_i_ptr="*i32", N="i32", D="i32", d_sae="i32",
        stride_xn="i32", stride_p="i32", stride_cand="i32",
    )
    xn = dict(enc, xn_ptr="*fp32")  # PREC 1 and 2 read an fp32 x'
    for arch, (bm, warps), prec in itertools.product((1, 3), ((16, 4), (64, 8)), (1, 2) if dt != "fp32" else (1,)):
        yield encode_select_kernel, xn, dict(ARCH=arch, PREC=prec, BM=bm, BN=128, BK=64, KPAD=64), warps
    if dt != "fp32":
        yield encode_select_kernel, enc, dict(ARCH=1, PREC=0, BM=64, BN=128, BK=64, KPAD=64), 8
    dense = dict(
        xn_ptr=p, w_ptr=p, params_ptr="*fp32", out_ptr="*fp32", N="i32", D="i32", d_sae="i32", stride_xn="i32",
        stride_p="i32", stride_out="i32",
    )
    yield encode_dense_kernel, dense, dict(ARCH=0, PREC=1 if dt == "fp32" else 0, BM=64, BN=128, BK=64), 8
    norm = dict(x_ptr=p, out_ptr=p, bdec_ptr=p, N="i32", D="i32", stride_x="i32", stride_out="i32", sqrt_d="fp32")
    yield normalize_kernel, norm, dict(NORM=2, APPLY_B_DEC=True, BLOCK_T=4, BLOCK_K=256), 4
    dec = dict(
        v_ptr=p, i_ptr="*i64", wdec_ptr=p, bdec_ptr=p, params_ptr="*fp32", out_ptr=p, K="i32", D="i32",
        stride_v="i32", stride_i="i32", stride_p="i32", stride_out="i32",
    )
    yield decode_sparse_kernel, dec, dict(BLOCK_J=16, BLOCK_D=512), 4


def compile_all(arch: int, dtypes=("bf16", "fp32")) -> int:
    """Compile each variant for ``sm_<arch>``; returns how many were compiled (raises on the first failure)."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("compile_check: unset TRITON_INTERPRET (interpreted kernels cannot be compiled)")
    n = 0
    for dt in dtypes:
        for fn, types, consts, warps in _variants(dt):
            sig = {name: "constexpr" if name in consts else types[name] for name in fn.arg_names}
            src = ASTSource(fn=fn, signature=sig, constexprs=consts)
            try:
                triton.compile(src, target=GPUTarget("cuda", arch, 32), options=dict(num_warps=warps))
            except Exception as e:
                raise RuntimeError(f"{fn.__name__} {dt} {consts} failed to compile for sm_{arch}: {e}") from e
            n += 1
    return n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, nargs="+", default=[80, 90])
    args = ap.parse_args(argv)
    for a in args.arch:
        print(f"sm_{a}: {compile_all(a)} kernel variants compiled")
    return 0


if __name__ == "__main__":
    sys.exit(main())
