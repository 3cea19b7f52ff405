"""The backend registry of the saesteer ops: which implementation runs an op on a device.

It imports nothing of saesteer, so every backend (the reference, the compiled extension, Triton)
registers into it without importing the public ops. Implementations share one calling convention,
on already validated, flattened arguments and the SAE's kernel view (:class:`saesteer.packed.PackedSAE`):

* ``steer(x [N, d_in], sae, features int64 [S], mode int, values f32 [S], token_mask bool [N] | None)``
* ``steer_rows(x [R, T, d_in], sae, features int64 [S], mode int, values f32 [R, S], token_mask bool [R, T] | None)``
* ``encode_topk(x [N, d_in], sae, k) -> (values [N, k], indices int64 [N, k])``
* ``decode_sparse(values [N, k], indices int64 [N, k], sae) -> [N, d_in]``
* ``trigger_score(x [N, d_in], sae, features int64 [T], weights f32 [T]) -> f32 [N]``
"""

from __future__ import annotations

import os
import warnings
from typing import Callable

import torch

__all__ = ["BACKENDS", "OPS", "register_backend", "available_backends", "resolve_backend", "implementation"]

BACKENDS = ("auto", "cuda", "triton", "cpu", "torch")
OPS = ("steer", "steer_rows", "encode_topk", "decode_sparse", "trigger_score")

# Preference per device type and op, fastest first. `auto` walks this list. The CUDA order is
# per op: whichever the benchmarks (benchmarks/RESULTS.md) show faster. Not yet measured on a GPU:
# by design, the fused CUDA kernels for steer/steer_rows/decode_sparse (memory-bound, one launch)
# and Triton for encode_topk (tensor-core GEMM with the selection in its epilogue; no CUDA kernel).
AUTO_ORDER: dict[str, dict[str, tuple[str, ...]]] = {
    "cuda": {
        "steer": ("cuda", "triton", "torch"),
        "steer_rows": ("cuda", "triton", "torch"),
        "encode_topk": ("triton", "cuda", "torch"),
        "decode_sparse": ("cuda", "triton", "torch"),
        "trigger_score": ("cuda", "triton", "torch"),
    },
    "cpu": {op: ("cpu", "torch") for op in OPS},
}
_AUTO_DEFAULT = ("torch",)

_IMPLS: dict[tuple[str, str], Callable] = {}  # (op, backend) -> implementation
_SUPPORTS: dict[str, Callable[[torch.device], bool]] = {}  # backend -> can it run on this device
_warned: set = set()
# (op, device, requested backend) -> backend; ~10 us per call saved at generation time. Cleared
# whenever a backend registers.
_RESOLVED: dict[tuple, str] = {}
# Hooks that make a backend available on first need (the Triton package registers on import) and
# that explain why a named backend is missing (the compiled extension's load error).
_loaders: dict[str, Callable[[], None]] = {}
_why_missing: dict[str, Callable[[], str | None]] = {}


def register_backend(name: str, supports: Callable[[torch.device], bool], **impls: Callable) -> None:
    """Register ``impls`` (``steer=..., steer_rows=..., ...``) of backend ``name``."""
    if name not in BACKENDS or name == "auto":
        raise ValueError(f"backend: unknown backend {name!r}; expected one of {BACKENDS[1:]}")
    for op in impls:
        if op not in OPS:
            raise ValueError(f"op: unknown op {op!r}; expected one of {OPS}")
    _SUPPORTS[name] = supports
    _RESOLVED.clear()
    for op, fn in impls.items():
        _IMPLS[(op, name)] = fn


def register_loader(name: str, load: Callable[[], None] | None, why_missing: Callable[[], str | None] | None = None) -> None:
    """``load()`` is called (once) before ``name`` is looked up on a device where it could run."""
    _loaders[name] = load
    if why_missing is not None:
        _why_missing[name] = why_missing


def _load(name: str) -> None:
    load = _loaders.pop(name, None)
    if load is not None:
        try:
            load()
        except Exception as e:  # pragma: no cover - depends on the environment
            _why_missing.setdefault(name, lambda e=e: str(e))


def available_backends(device: torch.device | str, op: str = "steer") -> list[str]:
    """Backends that can run ``op`` on ``device``, in ``auto``'s order."""
    device = torch.device(device)
    if device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1":
        _load("triton")
    order = AUTO_ORDER.get(device.type, {}).get(op, _AUTO_DEFAULT)
    extra = [b for b in ("triton",) if b not in order]
    return [b for b in (*order, *extra) if (op, b) in _IMPLS and _SUPPORTS[b](device)]


def resolve_backend(op: str, device: torch.device, backend: str = "auto") -> str:
    """The backend that runs ``op`` on ``device`` for the requested ``backend``."""
    if backend == "auto":
        backend = os.environ.get("SAESTEER_BACKEND", "auto") or "auto"
    key = (op, device, backend)
    hit = _RESOLVED.get(key)
    if hit is not None:
        return hit
    name = _resolve(op, torch.device(device), backend)
    _RESOLVED[key] = name
    return name


def implementation(op: str, backend: str) -> Callable:
    """The registered implementation of ``op`` for a resolved ``backend``."""
    return _IMPLS[(op, backend)]


def _resolve(op: str, device: torch.device, backend: str) -> str:
    if op not in OPS:
        raise ValueError(f"op: expected one of {', '.join(OPS)}, got {op!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {', '.join(BACKENDS)}, got {backend!r}")
    avail = available_backends(device, op)
    if backend != "auto":
        if backend in avail:
            return backend
        why = _why_missing.get(backend)
        reason = why() if why is not None else None
        if reason:
            raise RuntimeError(f"backend: {backend!r} is not available: {reason}")
        raise RuntimeError(
            f"backend: {backend!r} cannot run {op} on {device.type} tensors here; available: {', '.join(avail)}"
        )
    order = AUTO_ORDER.get(device.type, {}).get(op, _AUTO_DEFAULT)
    best = avail[0]
    if best != order[0]:
        key = (op, device.type, best)
        if key not in _warned:
            _warned.add(key)
            why = _why_missing.get(order[0])
            reason = why() if why is not None else None
            warnings.warn(
                f"saesteer: backend {order[0]!r} is not available for {op} on {device.type}"
                f"{f' ({reason})' if reason else ''}; falling back to {best!r}",
                RuntimeWarning,
                stacklevel=4,
            )
    return best
