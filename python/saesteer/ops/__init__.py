"""Typed entry points of the fused SAE ops, and the one place that picks a backend.

Users call these functions, never ``torch.ops.saesteer.*``. Backends:

* ``"cuda"``   -- csrc/ops_cuda.cu (CUDA tensors; built when torch has CUDA and a toolkit exists)
* ``"triton"`` -- python/saesteer/triton (CUDA tensors; CPU tensors only under ``TRITON_INTERPRET=1``)
* ``"cpu"``    -- csrc/ops_cpu.cpp over the kernels in csrc/cpu (CPU tensors)
* ``"torch"``  -- :mod:`saesteer.reference`, pure PyTorch, every device

``backend="auto"`` (or the ``SAESTEER_BACKEND`` environment variable) takes the first available of
the device's preference list and falls back with one warning; a backend asked for by name that is
not available raises. float64 inputs (or a float64 SAE) always run ``"torch"``, the float64 reference.
"""

from __future__ import annotations

import importlib

import torch

from .. import reference
from ..intervention import MODES, Intervention, as_intervention
from ..packed import PackedSAE, as_packed
from . import native, registry
from .registry import BACKENDS, OPS, available_backends, register_backend, resolve_backend

__all__ = [
    "steer",
    "steer_rows",
    "encode_topk",
    "decode_sparse",
    "trigger_score",
    "kernel",
    "BACKENDS",
    "available_backends",
    "resolve_backend",
    "register_backend",
]


# ------------------------------------------------------------------------------------------------
# argument checks shared by the wrappers
# ------------------------------------------------------------------------------------------------
_X_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


_Tensor = torch.Tensor


def _check_x(x: torch.Tensor, sae: PackedSAE, name: str = "x") -> torch.device:
    """Raise unless ``x`` is a float tensor ``[..., d_in]`` on the SAE's device; return that device."""
    if not isinstance(x, _Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _X_DTYPES:
        raise ValueError(f"{name}: expected float32, bfloat16 or float16, got dtype {x.dtype}")
    shape = x.shape
    if not shape or shape[-1] != sae.d_in:
        raise ValueError(f"{name}: expected last dimension d_in={sae.d_in} (the SAE's), got shape {tuple(shape)}")
    device = x.device
    if device != sae._device:  # PackedSAE.device, without the property call
        raise ValueError(f"{name}: on {device} but the SAE is on {sae.device}; move one with .to()")
    return device


_F64 = torch.float64


def _float64(dtype: torch.dtype, sae: PackedSAE) -> bool:
    """float64 work always runs the reference: the compiled kernels accumulate in float32."""
    return dtype is _F64 or sae.W_dec.dtype is _F64


def _checked(intervention, d_sae: int) -> Intervention:
    """``as_intervention(intervention, d_sae)``, remembering on the intervention that its ids fit d_sae."""
    iv = intervention if type(intervention) is Intervention else as_intervention(intervention)
    if iv._cache.get("checked_d_sae") != d_sae:
        iv.check(d_sae)
        iv._cache["checked_d_sae"] = d_sae
    return iv


_check_mask = reference.check_token_mask


def kernel(op: str, device: torch.device | str, backend: str = "auto", dtype: torch.dtype = torch.float32):
    """The implementation that runs ``op`` on ``device`` for inputs of ``dtype``, resolved once.

    For callers that validate their arguments once and then call per token (the steering core):
    the returned function takes the registry's calling convention (:mod:`saesteer.ops.registry`),
    with the SAE's kernel view. float64 inputs or SAEs get the float64 reference, as the public
    ops route them.
    """
    device = torch.device(device)
    name = resolve_backend(op, device, backend)
    impl = registry.implementation(op, name)
    if name == "torch":
        return impl
    ref = registry.implementation(op, "torch")

    def run(x, sae, *args):
        if _float64(x.dtype, sae):
            return ref(x, sae, *args)
        return impl(x, sae, *args)

    run.backend = name
    return run


# ------------------------------------------------------------------------------------------------
# public ops
# ------------------------------------------------------------------------------------------------
def steer(
    x: torch.Tensor,
    sae,
    intervention: Intervention,
    token_mask: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Error-preserving steer: ``y = x + s * sum_{i in S} (f'_i - f_i) * W_dec[i]``.

    Parameters
    ----------
    x : Tensor ``[..., d_in]`` (float32, bfloat16 or float16; any strides)
    sae : saesteer.SAE on x's device
    intervention : saesteer.Intervention (or a dict ``{features, mode, value}``)
    token_mask : bool Tensor ``[...]`` (x's leading dims), optional. Where False, y == x bit for bit.
    backend : "auto" | "cuda" | "triton" | "cpu" | "torch"

    Returns
    -------
    Tensor ``[..., d_in]`` in x's dtype. For standard/jumprelu/gated SAEs only the |S| encoder
    columns and decoder rows are read; topk needs the full encode for the membership test.
    """
    # This runs once per generated token and hook: every look-up here is cached (SAE.packed,
    # resolve_backend, _checked); benchmarks/RESULTS.md has the per-call overhead.
    sae = sae if type(sae) is PackedSAE else as_packed(sae)
    device = _check_x(x, sae)
    iv = _checked(intervention, sae.d_sae)
    mask = None if token_mask is None else _check_mask(token_mask, x.shape[:-1], device)
    name = resolve_backend("steer", device, backend)
    if name == "torch" or _float64(x.dtype, sae):
        return reference.steer(x, sae, iv, mask)
    if not iv.features:
        return x.clone()
    feats, vals = iv.tensors(device)
    impl = registry.implementation("steer", name)
    if x.dim() == 2:
        return impl(x, sae, feats, iv.mode_id, vals, mask)
    m2 = None if mask is None else mask.reshape(-1)
    return impl(x.reshape(-1, sae.d_in), sae, feats, iv.mode_id, vals, m2).view(x.shape)


def steer_rows(
    x: torch.Tensor,
    sae,
    features,
    values: torch.Tensor,
    mode: str = "ablate",
    token_mask: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Per-row steer for batched search: row ``r`` of ``x [R, T, d_in]`` gets its own edit.

    ``features [|S|]`` are shared; ``values [R, |S|]`` give each row's edit: for ``ablate`` a 0/1
    mask (1 = ablate that feature in that row), else the row's ``scale``/``clamp``/``add`` values.
    One call evaluates hundreds of candidate feature sets.
    """
    sae = as_packed(sae)
    _check_x(x, sae)
    if x.dim() != 3:
        raise ValueError(f"x: steer_rows expects [R, T, d_in], got shape {tuple(x.shape)}")
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {', '.join(MODES)}, got {mode!r}")
    iv = Intervention(features, "ablate").check(sae.d_sae)
    R, S = x.shape[0], len(iv.features)
    if not isinstance(values, torch.Tensor) or tuple(values.shape) != (R, S):
        got = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
        raise ValueError(f"values: expected shape [R={R}, |S|={S}] (one row per batch row), got {got}")
    if not values.is_floating_point() and values.dtype != torch.bool:
        raise ValueError(f"values: expected a float (or bool mask) tensor, got {values.dtype}")
    mask = _check_mask(token_mask, x.shape[:-1], x.device)
    name = resolve_backend("steer_rows", x.device, backend)
    if name == "torch" or _float64(x.dtype, sae):
        return reference.steer_rows(x, sae, iv.features, values, mode, mask)
    if S == 0:
        return x.clone()
    feats, _ = iv.tensors(x.device)
    vals = values.to(device=x.device, dtype=torch.float32).contiguous()
    return registry.implementation("steer_rows", name)(x, sae, feats, MODES.index(mode), vals, mask)


def encode_topk(x: torch.Tensor, sae, k: int, backend: str = "auto"):
    """Fused encode + per-row top-k: ``(values [..., k], indices int64 [..., k])``, descending.

    The dense ``[..., d_sae]`` activations are never handed to the caller (nor, in the fused
    backends, written to memory). Ties, in particular among zero activations, break arbitrarily.
    """
    sae = as_packed(sae)
    _check_x(x, sae)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= sae.d_sae:
        raise ValueError(f"k: expected an int in [1, d_sae={sae.d_sae}], got {k!r}")
    name = resolve_backend("encode_topk", x.device, backend)
    if name == "torch" or _float64(x.dtype, sae):
        return reference.encode_topk(x, sae, k)
    v, i = registry.implementation("encode_topk", name)(x.reshape(-1, sae.d_in), sae, k)
    return v.view(*x.shape[:-1], k), i.view(*x.shape[:-1], k)


def decode_sparse(values: torch.Tensor, indices: torch.Tensor, sae, backend: str = "auto") -> torch.Tensor:
    """``x_hat[..., :] = sum_j values[..., j] * W_dec[indices[..., j]] + b_dec`` (with topk rescaling).

    ``values [..., k]`` float, ``indices [..., k]`` integer in ``[0, d_sae)``. Returns ``[..., d_in]``
    in values' dtype.
    """
    sae = as_packed(sae)
    if not isinstance(values, torch.Tensor) or not values.is_floating_point():
        raise ValueError(f"values: expected a floating-point tensor, got {getattr(values, 'dtype', type(values).__name__)}")
    if not isinstance(indices, torch.Tensor) or indices.is_floating_point() or indices.dtype == torch.bool:
        raise ValueError(f"indices: expected an integer tensor, got {getattr(indices, 'dtype', type(indices).__name__)}")
    if values.shape != indices.shape or values.dim() < 1:
        raise ValueError(f"values/indices: expected equal shapes [..., k], got {tuple(values.shape)} and {tuple(indices.shape)}")
    if values.device != sae.device or indices.device != sae.device:
        raise ValueError(f"values/indices: on {values.device}/{indices.device} but the SAE is on {sae.device}")
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= sae.d_sae):
        raise ValueError(f"indices: expected ids in [0, d_sae={sae.d_sae}), got range [{int(indices.min())}, {int(indices.max())}]")
    name = resolve_backend("decode_sparse", values.device, backend)
    if name == "torch" or _float64(values.dtype, sae):
        return reference.decode_sparse(values, indices, sae)
    k = values.shape[-1]
    out = registry.implementation("decode_sparse", name)(values.reshape(-1, k), indices.reshape(-1, k).long(), sae)
    return out.view(*values.shape[:-1], sae.d_in)


_TRIGGERS: dict = {}  # (features, weights, d_sae, device) -> validated tensors, for plain-int feature lists
# (id(features), id(weights), d_sae, device) -> (features, weights, tensors) for tuples (a Condition's
# features and weights): the entry keeps both tuples alive, so their ids are not reused, and tuples
# of ints and floats never change, so a hit needs no look at their elements (~0.3 us, against ~2 us
# for the value key of 32 ids).
_TRIGGERS_BY_ID: dict = {}
_TRIGGERS_MAX = 1024
_INT, _NUMBER = {int}, {int, float}


def _trigger_tensors(features, weights, d_sae: int, device: torch.device):
    """:func:`reference.trigger_tensors`, cached when ``features`` is a list/tuple of ints and
    ``weights`` None, a float or a list/tuple of floats (validating 32 ids costs ~60 us per call)."""
    by_id = type(features) is tuple and (weights is None or type(weights) is tuple)
    if by_id:
        id_key = (id(features), id(weights), d_sae, device)
        hit = _TRIGGERS_BY_ID.get(id_key)
        if hit is not None:
            return hit[2]
    key = None
    if isinstance(features, (list, tuple)) and set(map(type, features)) <= _INT:
        if weights is None or type(weights) in (int, float):
            key = (tuple(features), weights, d_sae, device)
        elif isinstance(weights, (list, tuple)) and set(map(type, weights)) <= _NUMBER:
            key = (tuple(features), tuple(weights), d_sae, device)
    if key is not None:
        hit = _TRIGGERS.get(key)
        if hit is not None:
            return hit
    out = reference.trigger_tensors(features, weights, d_sae, device)
    if key is not None:
        if len(_TRIGGERS) >= _TRIGGERS_MAX:
            _TRIGGERS.clear()
        _TRIGGERS[key] = out
        if by_id:
            if len(_TRIGGERS_BY_ID) >= _TRIGGERS_MAX:
                _TRIGGERS_BY_ID.clear()
            _TRIGGERS_BY_ID[id_key] = (features, weights, out)
    return out


def trigger_score(x: torch.Tensor, sae, features, weights=None, backend: str = "auto") -> torch.Tensor:
    """The trigger read: ``score[...] = sum_j weights[j] * f_{features[j]}(x[...])``, float32 ``[...]``.

    Parameters
    ----------
    x : Tensor ``[..., d_in]`` (float32, bfloat16 or float16)
    sae : saesteer.SAE on x's device
    features : distinct feature ids ``T`` (sequence or 1-D integer tensor)
    weights : None (all 1), a float, or one float per feature
    backend : "auto" | "cuda" | "triton" | "cpu" | "torch"

    For standard/jumprelu/gated SAEs only the |T| encoder columns are read (the subset encode of
    :func:`steer`); topk needs the full encode. Activations are accumulated in float32.
    """
    sae = sae if type(sae) is PackedSAE else as_packed(sae)
    device = _check_x(x, sae)
    feats, w = _trigger_tensors(features, weights, sae.d_sae, device)
    name = resolve_backend("trigger_score", device, backend)
    if name == "torch" or _float64(x.dtype, sae) or not feats.numel():
        return reference.trigger_from_tensors(x, sae, feats, w)
    impl = registry.implementation("trigger_score", name)
    if x.dim() == 2:
        return impl(x, sae, feats, w)
    return impl(x.reshape(-1, sae.d_in), sae, feats, w).view(x.shape[:-1])


# ------------------------------------------------------------------------------------------------
# backends: torch (the reference, every device), the compiled ops (cpu, cuda), Triton (lazily)
# ------------------------------------------------------------------------------------------------
def _torch_steer(x2, sae, feats, mode, vals, mask):
    # The reference on the registry's convention: values are read from a tensor (so a compiled
    # graph sees in-place updates) and nothing is rebuilt per call.
    return reference.apply_delta(x2, sae, feats, lambda f: reference.edit(f, MODES[mode], vals.to(f.dtype)), mask)


def _torch_steer_rows(x, sae, feats, mode, vals, mask):
    return reference.apply_delta(x, sae, feats, reference.row_edit(vals, MODES[mode]), mask)


registry.register_backend(
    "torch",
    lambda device: True,
    steer=_torch_steer,
    steer_rows=_torch_steer_rows,
    encode_topk=reference.encode_topk,
    decode_sparse=reference.decode_sparse,
    trigger_score=reference.trigger_from_tensors,
)
native.register()
registry.register_loader("triton", lambda: importlib.import_module("saesteer.triton"))


def native_args(sae) -> tuple:
    """The SAE arguments of the compiled ops' schemas, ``(W_enc_T, W_dec, b_dec, params, arch, norm,
    apply_b_dec, k)``, for calling ``torch.ops.saesteer.*`` directly."""
    return as_packed(sae).native_args()
