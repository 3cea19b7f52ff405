"""The compiled ops (``torch.ops.saesteer.*``, csrc/) as backends ``cpu`` and ``cuda``, and their
fake kernels for torch.compile / FakeTensor tracing.

Each implementation takes the registry's calling convention (:mod:`saesteer.ops.registry`) and
passes the SAE's kernel view as the schemas' SAE arguments (:meth:`PackedSAE.native_args`).
"""

from __future__ import annotations

import torch

from .. import _native
from . import registry

__all__ = ["register"]


def _steer(x2, sae, feats, mode, vals, mask):
    return _op("steer")(x2, *sae.native_args(), feats, mode, vals, mask)


def _steer_rows(x, sae, feats, mode, vals, mask):
    return _op("steer_rows")(x, *sae.native_args(), feats, mode, vals, mask)


def _encode_topk(x2, sae, k):
    W_enc_T, _, b_dec, params, arch, norm, apply_b_dec, sae_k = sae.native_args()
    return torch.ops.saesteer.encode_topk.default(x2, W_enc_T, b_dec, params, arch, norm, apply_b_dec, sae_k, k)


def _trigger_score(x2, sae, feats, weights):
    W_enc_T, _, b_dec, params, arch, norm, apply_b_dec, k = sae.native_args()
    return _op("trigger_score")(x2, W_enc_T, b_dec, params, arch, norm, apply_b_dec, k, feats, weights)


def _decode_sparse(values, indices, sae):
    return torch.ops.saesteer.decode_sparse.default(values, indices, sae.W_dec, sae.b_dec, sae.params)


_OPS: dict = {}


def _op(name: str):
    """``torch.ops.saesteer.<name>.default``, looked up once (the attribute chain costs ~0.5 us)."""
    op = _OPS.get(name)
    if op is None:
        op = _OPS[name] = getattr(torch.ops.saesteer, name).default
    return op


def _has_kernel(op: str, key: str) -> bool:
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"saesteer::{op}", key)
    except RuntimeError:
        return False


def _why_missing() -> str | None:
    if _native.available():
        return None
    try:
        _native.require()
    except RuntimeError as e:
        return str(e)
    return None  # pragma: no cover


def _register_fakes() -> None:
    def same_as_x(x, *args):
        torch._check(x.dim() >= 2, lambda: f"x: expected [N, d_in] or [R, T, d_in], got {x.dim()}-D")
        torch._check(x.shape[-1] == args[1].shape[1], lambda: "x: last dimension must equal W_dec's d_in")
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    @torch.library.register_fake("saesteer::steer")
    def _steer_fake(x, W_enc_T, W_dec, b_dec, params, arch, norm, apply_b_dec, k, features, mode, values, token_mask):
        torch._check(x.dim() == 2, lambda: f"x: steer expects [N, d_in], got {x.dim()}-D")
        return same_as_x(x, W_enc_T, W_dec)

    @torch.library.register_fake("saesteer::steer_rows")
    def _steer_rows_fake(x, W_enc_T, W_dec, b_dec, params, arch, norm, apply_b_dec, k, features, mode, values, token_mask):
        torch._check(x.dim() == 3, lambda: f"x: steer_rows expects [R, T, d_in], got {x.dim()}-D")
        torch._check(values.dim() == 2 and values.shape[0] == x.shape[0], lambda: "values: expected [R, |S|]")
        return same_as_x(x, W_enc_T, W_dec)

    @torch.library.register_fake("saesteer::encode_topk")
    def _encode_topk_fake(x, W_enc_T, b_dec, params, arch, norm, apply_b_dec, sae_k, k):
        torch._check(x.dim() == 2 and x.shape[1] == W_enc_T.shape[1], lambda: "x: expected [N, d_in]")
        torch._check(1 <= k <= W_enc_T.shape[0], lambda: "k: expected 1 <= k <= d_sae")
        n = x.shape[0]
        return x.new_empty(n, k), x.new_empty(n, k, dtype=torch.int64)

    if hasattr(torch.ops.saesteer, "trigger_score"):  # absent from an extension built before it

        @torch.library.register_fake("saesteer::trigger_score")
        def _trigger_score_fake(x, W_enc_T, b_dec, params, arch, norm, apply_b_dec, k, features, weights):
            torch._check(x.dim() == 2 and x.shape[1] == W_enc_T.shape[1], lambda: "x: expected [N, d_in]")
            torch._check(weights.shape == features.shape, lambda: "weights: expected one per feature")
            return x.new_empty(x.shape[0], dtype=torch.float32)

    @torch.library.register_fake("saesteer::decode_sparse")
    def _decode_sparse_fake(values, indices, W_dec, b_dec, params):
        torch._check(values.shape == indices.shape, lambda: "values/indices: expected equal shapes [N, k]")
        return values.new_empty(values.shape[0], W_dec.shape[1])


def register() -> None:
    """Register the compiled backends that this build has kernels for (and the fakes)."""
    for name in ("cpu", "cuda"):
        registry.register_loader(name, None, _why_missing)
    if not _native.available():
        return
    impls = dict(steer=_steer, steer_rows=_steer_rows, encode_topk=_encode_topk, decode_sparse=_decode_sparse,
                 trigger_score=_trigger_score)
    for name, key in (("cpu", "CPU"), ("cuda", "CUDA")):
        found = {op: fn for op, fn in impls.items() if _has_kernel(op, key)}
        if found:
            registry.register_backend(name, (lambda t: (lambda d: d.type == t))(name), **found)
    _register_fakes()
