"""Where things are in a HuggingFace model: its decoder layers, its hidden size, and the module a
TransformerLens-style hook name (``blocks.L.hook_resid_pre`` / ``blocks.L.hook_resid_post``) maps to."""

from __future__ import annotations

import re
from typing import Sequence

import torch
from torch import nn

__all__ = [
    "LAYER_PATHS",
    "HOOK_POINTS",
    "find_layers",
    "hidden_size",
    "parse_hook",
    "hook_point",
    "hook_name",
    "module_device",
]

#: Where decoder layers live, tried in order: Llama, Mistral, Qwen2/3, Gemma2/3, Phi-3 and most
#: decoder-only models (``model.layers``); multimodal Gemma3/Llava-style wrappers; GPT-2 (``transformer.h``);
#: GPT-NeoX; and a base model passed directly.
LAYER_PATHS = (
    "model.layers",
    "model.language_model.layers",
    "language_model.model.layers",
    "model.model.layers",
    "transformer.h",
    "gpt_neox.layers",
    "layers",
    "h",
)
#: ``resid_pre`` is a decoder layer's input, ``resid_post`` its output.
HOOK_POINTS = ("resid_pre", "resid_post")

_TL_HOOK = re.compile(r"^blocks\.(-?\d+)\.hook_(\w+)$")
# Hook names of SAEs trained on raw HF modules ("model.layers.12" = that layer's output).
_HF_HOOK = re.compile(r"^(?:model\.|transformer\.|language_model\.|model\.language_model\.)*(?:layers|h)\.(-?\d+)$")


def _getpath(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def find_layers(model: nn.Module, layers=None) -> tuple[nn.Module, Sequence[nn.Module]]:
    """``(owner, layers)``: the decoder layers of ``model`` and the module whose forward runs them.

    ``layers`` (a ``ModuleList`` or sequence of modules) overrides the lookup; its owner is then
    ``model`` itself, whose forward must receive the token ids (or embeddings) and attention mask.
    """
    if layers is not None:
        if isinstance(layers, nn.Module) and not isinstance(layers, (nn.ModuleList, nn.Sequential)):
            raise TypeError(f"layers: expected a ModuleList or a sequence of modules, got one {type(layers).__name__}")
        if not all(isinstance(m, nn.Module) for m in layers):
            raise TypeError("layers: every element must be an nn.Module (a decoder layer)")
        return model, layers
    for path in LAYER_PATHS:
        found = _getpath(model, path)
        if isinstance(found, nn.ModuleList) and len(found) > 0:
            owner_path = path.rsplit(".", 1)[0] if "." in path else ""
            owner = _getpath(model, owner_path) if owner_path else model
            return owner, found
    raise ValueError(
        f"saesteer: cannot find the decoder layers of {type(model).__name__} (looked for "
        f"{', '.join(LAYER_PATHS)}); pass them explicitly, e.g. "
        f"saesteer.steer(model, sae, intervention, layers=model.my.blocks)"
    )


def hidden_size(model: nn.Module) -> int | None:
    """The width of ``model``'s residual stream from its config (text config of multimodal models),
    or None when the model has no config that says."""
    cfg = getattr(model, "config", None)
    if cfg is None:
        return None
    if hasattr(cfg, "get_text_config"):
        cfg = cfg.get_text_config()
    for name in ("hidden_size", "n_embd", "d_model"):
        v = getattr(cfg, name, None)
        if isinstance(v, int):
            return v
    return None


def parse_hook(name: str) -> tuple[int, str]:
    """``(layer, "resid_pre"|"resid_post")`` of a TransformerLens or HF hook name."""
    m = _TL_HOOK.match(name)
    if m:
        kind = m.group(2)
        if kind not in HOOK_POINTS:
            raise ValueError(
                f"hook: {name!r} is not supported; saesteer hooks the residual stream: "
                f"blocks.L.hook_resid_pre or blocks.L.hook_resid_post"
            )
        return int(m.group(1)), kind
    m = _HF_HOOK.match(name)
    if m:
        return int(m.group(1)), "resid_post"
    raise ValueError(
        f"hook: unknown hook name {name!r}; expected blocks.L.hook_resid_pre, blocks.L.hook_resid_post "
        f"or an HF layer path like model.layers.L (pass layer=L, hook='resid_post' to override)"
    )


def hook_name(layer: int, kind: str) -> str:
    """The TransformerLens name of a hook point: ``blocks.{layer}.hook_{kind}``."""
    return f"blocks.{layer}.hook_{kind}"


def check_layer(layer, n_layers: int, name: str = "layer", *, negative: bool = False) -> int:
    """``layer`` as an index in ``[0, n_layers)``, or an error naming ``name`` (as the user gave it,
    e.g. ``--layer``, or a phrase like ``"--sae 'x' reads layer"``). ``negative``: count from the
    end too (``-1`` is the last layer)."""
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise TypeError(f"{name}: expected an int, got {type(layer).__name__}")
    low = -n_layers if negative else 0
    if not low <= layer < n_layers:
        raise ValueError(f"{name}: {layer} is out of range; the model has {n_layers} decoder layers (0..{n_layers - 1})")
    return layer % n_layers


def hook_point(sae, n_layers: int, layer: int | None = None, hook: str | None = None) -> tuple[int, str]:
    """The ``(layer index in [0, n_layers), "resid_pre"|"resid_post")`` an SAE applies at.

    ``layer`` and ``hook`` (a hook point or a full hook name) override the SAE's ``hook_name``;
    ``sae`` may be None when they say everything. Both are validated.
    """
    kind = None
    if isinstance(hook, str) and hook not in HOOK_POINTS:
        parsed_layer, kind = parse_hook(hook)
        if layer is None:
            layer = parsed_layer
    elif hook is not None:
        if hook not in HOOK_POINTS:
            raise ValueError(f"hook: expected one of {HOOK_POINTS} or a hook name, got {hook!r}")
        kind = hook
    if layer is None or kind is None:
        name = getattr(sae, "hook_name", None)
        if not name:
            raise ValueError(
                "sae: the SAE has no hook_name, so where it applies is unknown; pass layer=L "
                "(and hook='resid_post' or 'resid_pre')"
            )
        name_layer, name_kind = parse_hook(name)
        layer = name_layer if layer is None else layer
        kind = name_kind if kind is None else kind
    return check_layer(layer, n_layers, negative=True), kind


def module_device(module: nn.Module, default: torch.device) -> torch.device:
    """The device of ``module``'s first parameter (or buffer), else ``default``."""
    for p in module.parameters():
        return p.device
    for b in module.buffers():
        return b.device
    return default
