"""Reading (and rewriting) the residual stream at hook points: :func:`capture` and :func:`intercept`.

    >>> with saesteer.hf.capture(model, sae) as rec:          # or hook names: "blocks.3.hook_resid_pre"
    ...     model(**inputs)
    >>> x = rec[sae.hook_name][-1]                            # [B, T, d_model], one entry per forward

``blocks.L.hook_resid_post`` is the output of decoder layer ``L`` (a forward hook on it),
``blocks.L.hook_resid_pre`` its input (a forward pre-hook). Every module of saesteer that reads
activations goes through here.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from torch import nn

from .layers import HOOK_POINTS, find_layers, hook_name, hook_point

__all__ = ["capture", "intercept", "resolve_hooks", "hooked", "input_hook", "output_hook"]


def input_hook(fn: Callable[[torch.Tensor], torch.Tensor | None]):
    """A forward pre-hook (``with_kwargs=True``) that passes a layer's hidden-states input to ``fn``
    and, when ``fn`` returns a tensor, feeds that to the layer instead."""

    def hook(module, args, kwargs):
        if args:
            y = fn(args[0])
            return None if y is None else ((y, *args[1:]), kwargs)
        if "hidden_states" in kwargs:
            y = fn(kwargs["hidden_states"])
            if y is None:
                return None
            kwargs = dict(kwargs)
            kwargs["hidden_states"] = y
            return args, kwargs
        raise RuntimeError(f"saesteer: cannot find the hidden states among the inputs of {type(module).__name__}")

    return hook


def output_hook(fn: Callable[[torch.Tensor], torch.Tensor | None]):
    """A forward hook that passes a module's hidden-states output (a tensor, or a tuple's first
    element) to ``fn`` and, when ``fn`` returns a tensor, puts that in its place."""

    def hook(module, args, output):
        if isinstance(output, torch.Tensor):  # transformers 5 decoder layers, MLPs
            return fn(output)
        if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):  # transformers 4, attention
            y = fn(output[0])
            return None if y is None else (y, *output[1:])
        raise RuntimeError(
            f"saesteer: {type(module).__name__} returned {type(output).__name__}; expected a tensor or a tuple "
            "whose first element is the hidden states"
        )

    return hook


def resolve_hooks(model: nn.Module, hooks, layers=None) -> list[tuple[str, nn.Module, bool]]:
    """``[(hook name, module, is_pre), ...]`` for ``hooks``: a hook name
    (``blocks.L.hook_resid_pre|post`` or an HF layer path), an SAE (its ``hook_name``), a
    ``(layer, "resid_pre"|"resid_post")`` pair, or a list of these. Names come back in
    TransformerLens form; duplicates are dropped."""
    _, blocks = find_layers(model, layers)
    items = [hooks] if isinstance(hooks, str) or not isinstance(hooks, (list, tuple)) or _is_pair(hooks) else list(hooks)
    if not items:
        raise ValueError("hooks: expected at least one hook name or SAE")
    out, seen = [], set()
    for h in items:
        if isinstance(h, str):
            idx, kind = hook_point(None, len(blocks), hook=h)
        elif _is_pair(h):
            idx, kind = hook_point(None, len(blocks), h[0], h[1])
        elif hasattr(h, "hook_name"):
            idx, kind = hook_point(h, len(blocks))
        else:
            raise TypeError(
                f"hooks: expected a hook name, an SAE or a (layer, hook point) pair, got {type(h).__name__}"
            )
        name = hook_name(idx, kind)
        if name not in seen:
            seen.add(name)
            out.append((name, blocks[idx], kind == "resid_pre"))
    return out


def _is_pair(h) -> bool:
    return isinstance(h, tuple) and len(h) == 2 and isinstance(h[0], int) and h[1] in HOOK_POINTS


@contextlib.contextmanager
def intercept(model: nn.Module, hooks, fn: Callable[[str, torch.Tensor], torch.Tensor | None], layers=None) -> Iterator[None]:
    """Call ``fn(hook_name, x)`` on the residual stream ``x [B, T, d]`` at each hook point of every
    forward inside the block; a tensor it returns replaces ``x`` downstream (None leaves it as it
    is). The hooks are removed on exit, also on an exception."""
    with hooked(resolve_hooks(model, hooks, layers), fn):
        yield


@contextlib.contextmanager
def hooked(sites: list[tuple[str, nn.Module, bool]], fn) -> Iterator[None]:
    """Call ``fn(name, x)`` on each site's stream (``(name, module, pre)`` from
    :func:`resolve_hooks`) while the block runs; the hooks are removed on exit."""
    handles = []
    try:
        for name, module, pre in sites:
            def call(x, name=name):
                return fn(name, x)

            if pre:
                handles.append(module.register_forward_pre_hook(input_hook(call), with_kwargs=True))
            else:
                handles.append(module.register_forward_hook(output_hook(call)))
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def capture(
    model: nn.Module,
    hooks,
    layers=None,
    *,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Record the residual stream at hook points (see :func:`resolve_hooks` for ``hooks``).

    Yields a dict ``{hook name: [tensor per forward]}`` (names in TransformerLens form,
    ``blocks.L.hook_resid_post``); each tensor is the detached ``[B, T, d]`` activation on its
    layer's device, or ``transform(x)`` of it (e.g. ``lambda x: x[:, -1].float().cpu()`` to keep
    only the last position). Nothing is modified.
    """
    sites = resolve_hooks(model, hooks, layers)
    rec: dict[str, list[torch.Tensor]] = {name: [] for name, _, _ in sites}

    def record(name: str, x: torch.Tensor) -> None:
        x = x.detach()
        rec[name].append(x if transform is None else transform(x))

    with hooked(sites, record):
        yield rec
