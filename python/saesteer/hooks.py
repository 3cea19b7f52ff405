"""Drop-in steering of HuggingFace ``transformers`` models: forward hooks that run saesteer's ops.

    >>> with saesteer.steer(model, sae, saesteer.Intervention([123, 456], "ablate"), positions="generated"):
    ...     out = model.generate(**inputs, max_new_tokens=64)

* :func:`steer` / :func:`attach` put one or several ``(sae, intervention)`` edits on the residual
  stream, at the point the SAE was trained on (``sae.hook_name``, TransformerLens naming:
  ``blocks.L.hook_resid_post`` is the output of decoder layer ``L``, ``blocks.L.hook_resid_pre`` its
  input). The edit is error-preserving (:func:`saesteer.ops.steer`): only
  ``s * sum_{i in S} (f'_i - f_i) W_dec[i]`` enters the stream, and unedited tokens are kept bit for bit.
* :func:`directional_ablation` / :func:`add_direction` are Arditi et al. (2024)'s two interventions
  on a refusal direction, on the same machinery.

How positions are known. A forward pre-hook on the module that owns the decoder layers (e.g.
``model.model``) reads the arguments of every forward -- ``input_ids``/``inputs_embeds``, the 2-D
``attention_mask`` and the KV cache -- and computes, once per forward, which tokens of that forward
are edited; the layer hooks only read the result. A forward whose cache is empty starts a new
sequence (so every ``generate`` call starts afresh) and its tokens are the prompt; with a KV cache each
later forward holds only new tokens, which are "generated". Without a cache (``use_cache=False``),
``generate`` re-runs the whole sequence each step; a forward whose ``input_ids`` extend the previous
forward's is taken as the same sequence continued. :meth:`SteeringHandle.reset` starts a new
sequence by hand. Padding: tokens where the attention mask is 0 are never edited.

torch.compile. Dynamo does not guard on the hooks of submodules: hooks added after a compiled
model has run are silently ignored (measured with torch 2.13), and whether a removal is noticed
depends on the torch version. So attach first, then compile, and switch steering with
``handle.enabled = False/True``, ``handle.update(...)`` and ``handle.coeff = ...``: the flag and the
values live in tensors that the compiled graph reads, so none of these recompiles. After
``remove()``, call ``torch._dynamo.reset()`` before using the compiled model again. With
``positions="all"`` the hooks trace into the model's graph without a graph break; the other
position rules read Python ints from the inputs (the prompt length) and specialise on them. An
SAE's derived tensors (transposed encoder, packed per-feature parameters) are built at attach:
after editing its weights, attach again.
"""

from __future__ import annotations

import copy
import inspect
import re
from typing import Sequence

import torch
from torch import nn

from . import ops, reference
from .intervention import MODES, as_intervention
from .sae import SAE

__all__ = ["steer", "attach", "SteeringHandle", "directional_ablation", "add_direction", "affine_ablation", "find_layers"]

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
HOOK_POINTS = ("resid_pre", "resid_post")
POSITIONS = ("all", "prompt", "generated")

_TL_HOOK = re.compile(r"^blocks\.(-?\d+)\.hook_(\w+)$")
# Hook names of SAEs trained on raw HF modules ("model.layers.12" = that layer's output).
_HF_HOOK = re.compile(r"^(?:model\.|transformer\.|language_model\.|model\.language_model\.)*(?:layers|h)\.(-?\d+)$")


# ------------------------------------------------------------------------------------------------
# finding layers and hook points
# ------------------------------------------------------------------------------------------------
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


def _hidden_size(model: nn.Module) -> int | None:
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


def _parse_hook(name: str) -> tuple[int, str]:
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


def _hook_point(sae: SAE, layer, hook, n_layers: int) -> tuple[int, str]:
    """The ``(layer index, hook point)`` an SAE is applied at; validates both."""
    kind = None
    if isinstance(hook, str) and hook not in HOOK_POINTS:
        parsed_layer, kind = _parse_hook(hook)
        if layer is None:
            layer = parsed_layer
    elif hook is not None:
        if hook not in HOOK_POINTS:
            raise ValueError(f"hook: expected one of {HOOK_POINTS} or a hook name, got {hook!r}")
        kind = hook
    if layer is None or kind is None:
        if not sae.hook_name:
            raise ValueError(
                "sae: the SAE has no hook_name, so where it applies is unknown; pass layer=L "
                "(and hook='resid_post' or 'resid_pre')"
            )
        name_layer, name_kind = _parse_hook(sae.hook_name)
        layer = name_layer if layer is None else layer
        kind = name_kind if kind is None else kind
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise TypeError(f"layer: expected an int, got {type(layer).__name__}")
    if not -n_layers <= layer < n_layers:
        raise ValueError(f"layer: {layer} is out of range; the model has {n_layers} decoder layers (0..{n_layers - 1})")
    return layer % n_layers, kind


def _module_device(module: nn.Module, default: torch.device) -> torch.device:
    for p in module.parameters():
        return p.device
    for b in module.buffers():
        return b.device
    return default


def _as_sae(obj) -> SAE:
    if isinstance(obj, SAE):
        return obj
    if hasattr(obj, "cfg") and hasattr(obj, "W_dec"):  # an sae_lens.SAE
        return SAE.from_sae_lens(obj)
    raise TypeError(f"sae: expected a saesteer.SAE or an sae_lens SAE, got {type(obj).__name__}")


class _HookedSAE(SAE):
    """An SAE as a hook holds it: its derived kernel tensors (``W_enc_T``, ``feature_params``,
    ``decoder_norms``) are plain attributes computed once at attach. ``SAE`` derives them lazily,
    keyed on data pointers, which torch.compile cannot trace (a graph break per access, ~1 s of
    tracing each on the tiny test model)."""

    W_enc_T = feature_params = decoder_norms = None  # shadow SAE's properties


def _sae_on(sae: SAE, device: torch.device) -> SAE:
    """A hook's copy of ``sae`` on ``device``: weights shared when already there, else moved (the
    user's SAE stays where it is); derived tensors built here, once, not per token."""
    hooked = copy.copy(sae)
    hooked._buffers = dict(sae._buffers)
    hooked._derived = {}
    if sae.device != device:
        hooked.to(device)
    derived = {n: getattr(hooked, n) for n in ("W_enc_T", "feature_params", "decoder_norms")}
    hooked.__class__ = _HookedSAE
    for name, t in derived.items():
        object.__setattr__(hooked, name, t)
    return hooked


# ------------------------------------------------------------------------------------------------
# positions: which tokens of the current forward are edited
# ------------------------------------------------------------------------------------------------
class _Positions:
    """Reads every forward of the layers' owner and keeps the token mask of the current one.

    ``mask`` is None (every token), or a bool tensor ``[B, T]``; ``skip`` is True when no token of
    the forward is edited (e.g. a decode step under ``positions="prompt"``).
    """

    def __init__(self, positions, owner: nn.Module):
        if isinstance(positions, str):
            if positions not in POSITIONS:
                raise ValueError(f"positions: expected one of {POSITIONS}, a bool mask or a callable, got {positions!r}")
            self.kind = positions
        elif isinstance(positions, torch.Tensor):
            if positions.dtype != torch.bool or positions.dim() not in (1, 2):
                raise ValueError(
                    f"positions: a mask must be a bool tensor [seq] or [batch, seq], got {positions.dtype} "
                    f"of shape {tuple(positions.shape)}"
                )
            self.kind = "mask"
        elif callable(positions):
            self.kind = "callable"
        else:
            raise TypeError(f"positions: expected a str, a bool tensor or a callable, got {type(positions).__name__}")
        self.positions = positions
        try:
            params = inspect.signature(owner.forward).parameters.values()
            self._arg_names = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
            self._arg_names = []
        self.active = False
        self.mask: torch.Tensor | None = None
        self.skip = False
        self.reset()

    def reset(self) -> None:
        """Forget the current sequence: the next forward's tokens are a new prompt."""
        self.prompt_length: int | None = None
        self._prev_ids: torch.Tensor | None = None

    def _arg(self, name, args, kwargs):
        if name in kwargs:
            return kwargs[name]
        try:
            i = self._arg_names.index(name)
        except ValueError:
            return None
        return args[i] if i < len(args) else None

    def begin(self, module, args, kwargs) -> None:  # forward pre-hook of the owner
        self.active = True
        self.skip = False
        self.mask = None
        ids = self._arg("input_ids", args, kwargs)
        ref = ids if isinstance(ids, torch.Tensor) else self._arg("inputs_embeds", args, kwargs)
        if not isinstance(ref, torch.Tensor) or ref.dim() < 2:
            if self.kind != "all":
                raise RuntimeError(
                    f"saesteer: positions={self.kind!r} needs the model's input_ids or inputs_embeds to find the "
                    "prompt; none reached the forward"
                )
            return
        B, T = ref.shape[0], ref.shape[1]
        attn = self._arg("attention_mask", args, kwargs)
        real = past = None
        if isinstance(attn, torch.Tensor) and attn.dim() == 2 and attn.shape[0] == B and attn.shape[1] >= T:
            real = attn[:, attn.shape[1] - T :] != 0  # pads (left or right) are never edited
            past = attn.shape[1] - T
        if self.kind == "all":
            self.mask = real
            return
        if not past:  # no mask, or one covering only this forward's tokens: ask the cache
            past = self._past_length(args, kwargs)
        self._track(ids if isinstance(ids, torch.Tensor) else None, B, T, past)
        P = self.prompt_length
        lo, hi = past, past + T
        sel = None  # [T] or [B, T] bool over this forward's tokens; None = all of them
        if self.kind == "prompt":
            if lo >= P:
                self.skip = True
                return
            if hi > P:
                sel = torch.arange(lo, hi, device=ref.device) < P
        elif self.kind == "generated":
            if hi <= P:
                self.skip = True
                return
            if lo < P:
                sel = torch.arange(lo, hi, device=ref.device) >= P
        elif self.kind == "callable":
            sel = self.positions(torch.arange(lo, hi, device=ref.device), P)
            if not isinstance(sel, torch.Tensor) or sel.dtype != torch.bool or sel.shape[-1] != T:
                raise ValueError(
                    f"positions: the callable must return a bool tensor [T={T}] or [B, T={T}], got "
                    f"{getattr(sel, 'dtype', type(sel).__name__)} {tuple(getattr(sel, 'shape', ()))}"
                )
        else:  # a bool mask over sequence positions (columns of the attention mask)
            m = self.positions.to(ref.device)
            sel = torch.zeros(*m.shape[:-1], T, dtype=torch.bool, device=ref.device)
            n = max(0, min(hi, m.shape[-1]) - lo)
            sel[..., :n] = m[..., lo : lo + n]
        if sel is not None:
            sel = sel.expand(B, T)
            real = sel if real is None else real & sel
        self.mask = real

    def end(self, module, args, kwargs, output) -> None:  # forward hook of the owner (always called)
        self.active = False
        self.mask = None
        self.skip = False

    def _past_length(self, args, kwargs) -> int:
        cp = self._arg("cache_position", args, kwargs)  # transformers 4
        if isinstance(cp, torch.Tensor) and cp.numel() > 0:
            return int(cp.reshape(-1)[0])
        cache = self._arg("past_key_values", args, kwargs)
        if cache is None:
            cache = self._arg("cache", args, kwargs)  # transformers >= 5.24 renamed the argument
        if cache is not None and hasattr(cache, "get_seq_length"):
            return int(cache.get_seq_length())
        if isinstance(cache, (tuple, list)) and cache and isinstance(cache[0], (tuple, list)):
            return int(cache[0][0].shape[-2])  # legacy tuple cache
        return 0

    def _track(self, ids, B: int, T: int, past: int) -> None:
        if past > 0:
            if self.prompt_length is None:  # attached mid-sequence: what came before is the prompt
                self.prompt_length = past
            self._prev_ids = None
            return
        prev = self._prev_ids
        continued = (
            prev is not None
            and ids is not None
            and self.prompt_length is not None
            and prev.shape[0] == B
            and prev.shape[1] < T
            and prev.device == ids.device
            and torch.equal(ids[:, : prev.shape[1]], prev)
        )
        if not continued:
            self.prompt_length = T
        self._prev_ids = ids


# ------------------------------------------------------------------------------------------------
# edits: what runs at a hook point
# ------------------------------------------------------------------------------------------------
def _reference_steer(x2, sae, feats, mode, vals, mask):
    # saesteer.reference.steer with the intervention already as tensors, so that the values are
    # read from a tensor (torch.compile sees updates) and nothing is rebuilt per call.
    return reference.apply_delta(x2, sae, feats, lambda f: reference.edit(f, MODES[mode], vals.to(f.dtype)), mask)


def _reference_steer_rows(x, sae, feats, mode, vals, mask):
    # feats is a tuple here: reference.steer_rows takes ids, and a tuple is a constant under compile.
    return reference.steer_rows(x, sae, feats, vals, MODES[mode], mask)


class _SAEEdit:
    """One SAE's error-preserving edit at one hook point (a single intervention or one per row)."""

    def __init__(self, sae: SAE, intervention, device: torch.device, backend: str):
        self.sae = sae.packed(device)
        self.device = device
        self.per_row = isinstance(intervention, (list, tuple))
        op = "steer_rows" if self.per_row else "steer"
        name = ops.resolve_backend(op, device, backend)
        if name == "torch":
            self._op = _reference_steer_rows if self.per_row else _reference_steer
        else:
            self._op = ops.kernel(op, device, name, sae.dtype)  # validated once here, called per token
        self.backend = name
        self.set(intervention)

    # -- the intervention, as tensors ---------------------------------------------------------
    def set(self, intervention) -> None:
        """Install ``intervention``; when its features and mode are unchanged the value tensors are
        updated in place (what a compiled graph reads), else rebuilt."""
        plan, keys = self._plan(intervention)
        if keys == getattr(self, "keys", None):
            for old, new in zip(self.plan, plan):
                old[2].copy_(new[2])
            return
        self.plan, self.keys = plan, keys

    def _plan(self, intervention) -> tuple[list[tuple], list[tuple]]:
        """``[(features, mode id, values f32, rows bool [R] | None)]`` on the device, and the
        Python keys (features, mode, rows) that say whether two plans have the same structure."""
        d_sae, dev = self.sae.d_sae, self.device
        if not self.per_row:
            iv = as_intervention(intervention, d_sae)
            if not iv.features:
                return [], []
            f, v = iv.tensors("cpu")
            return [(f.to(dev), iv.mode_id, v.clone().to(dev), None)], [(iv.features, iv.mode_id)]
        ivs = [None if iv is None else as_intervention(iv, d_sae) for iv in intervention]
        if not ivs:
            raise ValueError("intervention: an empty list of per-row interventions")
        R = self.rows = len(ivs)
        # Group rows by mode; clamp rows also by feature set, since a clamp has no value that leaves a
        # feature untouched (ablate/scale/add do: 0 / 1 / 0 on features outside a row's set).
        groups: dict[tuple, list[int]] = {}
        for r, iv in enumerate(ivs):
            if iv is None or not iv.features:
                continue
            key = (iv.mode, iv.features if iv.mode == "clamp" else None)
            groups.setdefault(key, []).append(r)
        plan, keys = [], []
        for (mode, _), rows in groups.items():
            feats = tuple(sorted({i for r in rows for i in ivs[r].features}))
            col = {i: j for j, i in enumerate(feats)}
            vals = torch.full((R, len(feats)), 1.0 if mode == "scale" else 0.0, dtype=torch.float32)
            for r in rows:
                idx = [col[i] for i in ivs[r].features]
                vals[r, idx] = 1.0 if mode == "ablate" else torch.tensor(ivs[r].values, dtype=torch.float32)
            in_group = None
            if len(rows) < R:
                in_group = torch.zeros(R, dtype=torch.bool)
                in_group[rows] = True
                in_group = in_group.to(dev)
            f = feats if self.backend == "torch" else torch.tensor(feats, dtype=torch.int64, device=dev)
            plan.append((f, MODES.index(mode), vals.to(dev), in_group))
            keys.append((feats, mode, tuple(rows), R))
        return plan, keys

    # -- the hot path ---------------------------------------------------------------------------
    def __call__(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        sae = self.sae
        B, T = x.shape[0], x.shape[1]
        if self.per_row and B != self.rows:
            raise ValueError(
                f"intervention: {self.rows} per-row interventions but the batch has {B} rows "
                "(num_return_sequences and beam search multiply the rows; give one intervention per row)"
            )
        xs = x
        if x.device != self.device or x.dtype != sae.dtype:
            xs = x.to(device=self.device, dtype=sae.dtype)
            if mask is not None:
                mask = mask.to(self.device)
        if self.per_row:
            ys = xs
            for feats, mode, vals, rows in self.plan:
                m = mask
                if rows is not None:
                    m = rows[:, None].expand(B, T) if m is None else m & rows[:, None]
                ys = self._op(ys, sae, feats, mode, vals, m)
        else:
            if not self.plan:
                return x
            feats, mode, vals, _ = self.plan[0]
            m = None if mask is None else mask.reshape(-1)
            ys = self._op(xs.reshape(-1, sae.d_in), sae, feats, mode, vals, m).view(xs.shape)
        if xs is x:
            return ys
        if ys is xs:
            return x
        return _cast_back(x, xs, ys)


def _cast_back(x: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """The SAE's result ``ys`` (computed on ``xs``, x in the SAE's dtype/device) in x's dtype/device.

    When the SAE's dtype is at least as precise as x's, x -> xs is exact and one rounding of ys
    suffices. Otherwise only the edit ``ys - xs`` is carried back, so x's own precision survives,
    and unedited elements are x bit for bit."""
    if torch.promote_types(x.dtype, xs.dtype) == xs.dtype:
        return ys.to(device=x.device, dtype=x.dtype)
    delta = ys.to(x.dtype) - xs.to(x.dtype)
    return torch.where(ys == xs, x.to(ys.device), x.to(ys.device) + delta).to(x.device)


class _Project:
    """``x - (x . r) r`` for a unit direction ``r`` (float32), computed in float32."""

    def __init__(self, direction: torch.Tensor, device: torch.device):
        self.r = direction.to(device=device, dtype=torch.float32)

    def __call__(self, x, mask):
        xf = x.float()
        y = (xf - (xf @ self.r).unsqueeze(-1) * self.r).to(x.dtype)
        return y if mask is None else torch.where(mask.unsqueeze(-1), y, x)


class _Add:
    """``x + coeff * direction``; ``coeff`` is a tensor (updatable under torch.compile)."""

    def __init__(self, direction: torch.Tensor, coeff: torch.Tensor, device: torch.device):
        self.v = direction.to(device=device, dtype=torch.float32)
        self.coeff = coeff

    def __call__(self, x, mask):
        y = (x.float() + self.coeff.to(x.device) * self.v).to(x.dtype)
        return y if mask is None else torch.where(mask.unsqueeze(-1), y, x)


class _Affine:
    """``x - ((x . r) - c) r + coeff * v``: the projection on the unit direction ``r`` set to ``c``
    (affine concept editing), plus ``coeff`` times the raw direction ``v``."""

    def __init__(self, r: torch.Tensor, c: float, v: torch.Tensor, coeff: torch.Tensor, device: torch.device):
        self.r = r.to(device=device, dtype=torch.float32)
        self.c = float(c)
        self.v = v.to(device=device, dtype=torch.float32)
        self.coeff = coeff

    def __call__(self, x, mask):
        xf = x.float()
        y = (xf - ((xf @ self.r) - self.c).unsqueeze(-1) * self.r + self.coeff.to(x.device) * self.v).to(x.dtype)
        return y if mask is None else torch.where(mask.unsqueeze(-1), y, x)


# ------------------------------------------------------------------------------------------------
# the hooks and the handle
# ------------------------------------------------------------------------------------------------
class _Site:
    """Every edit of one handle at one module, as one forward (pre-)hook."""

    def __init__(self, handle: "SteeringHandle", module: nn.Module, pre: bool, device: torch.device):
        self.handle = handle
        self.module = module
        self.pre = pre
        self.edits: list = []
        self.flag = handle._flag(device)

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        pos = self.handle._positions
        if pos.active:
            if pos.skip:
                return x
            mask = pos.mask
        elif pos.kind == "all":
            mask = None  # the layer was called on its own: edit every token
        else:
            raise RuntimeError(
                f"saesteer: positions={pos.kind!r} needs the model's forward to see the prompt; call the "
                "model, not the layer"
            )
        if mask is not None and mask.device != x.device:  # layers spread over devices (device_map)
            mask = mask.to(x.device, non_blocking=True)
        if torch.compiler.is_compiling():
            # The flag is a tensor: the compiled graph reads it, so toggling never recompiles.
            mask = self.flag.expand(x.shape[0], x.shape[1]) if mask is None else mask & self.flag
        elif not self.handle._enabled:
            return x
        for edit in self.edits:
            x = edit(x, mask)
        return x

    def pre_hook(self, module, args, kwargs):
        if args:
            return (self._apply(args[0]), *args[1:]), kwargs
        if "hidden_states" in kwargs:
            kwargs = dict(kwargs)
            kwargs["hidden_states"] = self._apply(kwargs["hidden_states"])
            return args, kwargs
        raise RuntimeError(f"saesteer: cannot find the hidden states among the inputs of {type(module).__name__}")

    def post_hook(self, module, args, output):
        if isinstance(output, torch.Tensor):  # transformers 5 decoder layers, MLPs
            return self._apply(output)
        if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):  # transformers 4, attention
            return (self._apply(output[0]), *output[1:])
        raise RuntimeError(
            f"saesteer: {type(module).__name__} returned {type(output).__name__}; expected a tensor or a tuple "
            "whose first element is the hidden states"
        )


class SteeringHandle:
    """Steering hooks on one model. A context manager: leaving the ``with`` block removes them.

    Attributes
    ----------
    enabled : bool
        Switch every edit of the handle off and on without touching the hooks (also inside a
        ``torch.compile``-d model, without recompiling).
    edits : list
        One entry per ``(sae, intervention)`` pair, in the order given.
    hook_points : list of (layer index, "resid_pre" | "resid_post")
        Where each pair applies.
    """

    def __init__(self, model: nn.Module, owner: nn.Module, positions):
        self.model = model
        self._positions = _Positions(positions, owner)
        self._owner = owner
        self._enabled = True
        self._flags: dict[torch.device, torch.Tensor] = {}
        self._sites: dict[tuple[int, bool], _Site] = {}
        self._removables: list = []
        self.edits: list = []
        self.hook_points: list[tuple[int, str]] = []
        self._coeff: torch.Tensor | None = None

    # -- building (everything is validated before any hook is registered) ----------------------
    def _flag(self, device: torch.device) -> torch.Tensor:
        if device not in self._flags:
            self._flags[device] = torch.tensor(self._enabled, device=device)
        return self._flags[device]

    def _site(self, module: nn.Module, pre: bool, device: torch.device) -> _Site:
        key = (id(module), pre)
        if key not in self._sites:
            self._sites[key] = _Site(self, module, pre, device)
        return self._sites[key]

    def _register(self) -> "SteeringHandle":
        try:
            pos = self._positions
            self._removables.append(self._owner.register_forward_pre_hook(pos.begin, with_kwargs=True, prepend=True))
            self._removables.append(self._owner.register_forward_hook(pos.end, with_kwargs=True, always_call=True))
            for site in self._sites.values():
                if site.pre:
                    self._removables.append(site.module.register_forward_pre_hook(site.pre_hook, with_kwargs=True))
                else:
                    self._removables.append(site.module.register_forward_hook(site.post_hook))
        except BaseException:
            self.remove()
            raise
        return self

    # -- public ---------------------------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        return self._enabled

    @enabled.setter
    def enabled(self, value: bool) -> None:
        self._enabled = bool(value)
        for t in self._flags.values():
            t.fill_(self._enabled)

    @property
    def active(self) -> bool:
        """True while the hooks are registered."""
        return bool(self._removables)

    def update(self, intervention, index: int = 0) -> None:
        """Replace the intervention of pair ``index`` (a single intervention, or a per-row list).

        Same features and mode: the values are written in place, so a compiled model picks them up
        without recompiling. Otherwise the edit is rebuilt (a compiled model then recompiles)."""
        edit = self.edits[index]
        if not isinstance(edit, _SAEEdit):
            raise TypeError("update: this handle's edits are not SAE interventions")
        if isinstance(intervention, (list, tuple)) != edit.per_row:
            raise ValueError("update: cannot switch between one intervention and per-row interventions")
        edit.set(intervention)

    @property
    def coeff(self) -> float:
        """:func:`add_direction`'s coefficient (settable; stored in a tensor)."""
        if self._coeff is None:
            raise AttributeError("coeff: only handles from add_direction have a coefficient")
        return float(self._coeff)

    @coeff.setter
    def coeff(self, value: float) -> None:
        if self._coeff is None:
            raise AttributeError("coeff: only handles from add_direction have a coefficient")
        self._coeff.fill_(float(value))

    def reset(self) -> None:
        """Start a new sequence: the next forward's tokens are the prompt (for positions rules)."""
        self._positions.reset()

    def remove(self) -> None:
        """Remove every hook of the handle (idempotent)."""
        while self._removables:
            self._removables.pop().remove()

    def __enter__(self) -> "SteeringHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __repr__(self) -> str:
        pts = ", ".join(f"{k}@{i}" for i, k in self.hook_points)
        return f"SteeringHandle({type(self.model).__name__}, [{pts}], enabled={self._enabled}, active={self.active})"


# ------------------------------------------------------------------------------------------------
# public entry points
# ------------------------------------------------------------------------------------------------
def _pairs(sae, intervention) -> list[tuple]:
    if isinstance(sae, (list, tuple)):
        if intervention is not None:
            raise ValueError(
                "intervention: with a list of (sae, intervention) pairs, leave the intervention argument out"
            )
        out = []
        for p in sae:
            if not isinstance(p, (list, tuple)) or len(p) not in (2, 3):
                raise TypeError(
                    "sae: expected (sae, intervention) or (sae, intervention, layer_or_hook_name) pairs, "
                    f"got {type(p).__name__}"
                )
            out.append(tuple(p) + (None,) * (3 - len(p)))
        if not out:
            raise ValueError("sae: an empty list of (sae, intervention) pairs")
        return out
    if intervention is None:
        raise ValueError("intervention: required (a saesteer.Intervention, a dict, or one per batch row)")
    return [(sae, intervention, None)]


def attach(
    model: nn.Module,
    sae,
    intervention=None,
    *,
    positions="all",
    layer: int | None = None,
    hook: str | None = None,
    layers=None,
    backend: str = "auto",
) -> SteeringHandle:
    """Steer ``model`` with SAE feature interventions until ``handle.remove()``.

    Parameters
    ----------
    model : a HuggingFace causal LM (Llama, Mistral, Qwen2/3, Gemma2/3, Phi-3, GPT-2, ...) or base model
    sae : saesteer.SAE or sae_lens SAE, or a list of ``(sae, intervention)`` pairs (optionally
        ``(sae, intervention, layer_or_hook_name)``), applied in order; pairs at one hook point chain.
    intervention : saesteer.Intervention or dict, or a list with one per batch row (``None`` for an
        unsteered row). Per-row lists run as one :func:`saesteer.ops.steer_rows` per mode (clamp rows
        also per feature set), so mixed modes work, at one op call per group.
    positions : "all" | "prompt" | "generated" | bool Tensor ``[seq]``/``[batch, seq]`` | callable
        Which tokens are edited. A mask indexes sequence positions (columns of the attention mask,
        padding included); a callable gets ``(pos [T] int64, prompt_length)`` for the tokens of each
        forward and returns a bool ``[T]`` or ``[B, T]``. Padding tokens are never edited.
    layer, hook : where, when the SAE's ``hook_name`` is missing or to override it: a layer index and
        ``"resid_post"`` (the layer's output, default) or ``"resid_pre"`` (its input), or a full hook
        name ``hook="blocks.3.hook_resid_pre"``.
    layers : the model's decoder layers (``ModuleList``), for models the lookup does not know.
    backend : passed to :mod:`saesteer.ops` ("auto", "cuda", "triton", "cpu", "torch").

    Returns
    -------
    SteeringHandle, also a context manager.
    """
    owner, blocks = find_layers(model, layers)
    n = len(blocks)
    hidden = _hidden_size(model)
    handle = SteeringHandle(model, owner, positions)
    model_device = _module_device(model, torch.device("cpu"))
    for s, iv, where in _pairs(sae, intervention):
        s = _as_sae(s)
        p_layer, p_hook = layer, hook
        if isinstance(where, int) and not isinstance(where, bool):
            p_layer = where
        elif isinstance(where, str):
            p_hook = where
        idx, kind = _hook_point(s, p_layer, p_hook, n)
        name = f"blocks.{idx}.hook_{kind}"
        if hidden is not None and s.d_in != hidden:
            raise ValueError(f"sae: d_in={s.d_in} but the model's hidden size is {hidden} (hook {name})")
        device = _module_device(blocks[idx], model_device)
        edit = _SAEEdit(s, iv, device, backend)
        handle._site(blocks[idx], kind == "resid_pre", device).edits.append(edit)
        handle.edits.append(edit)
        handle.hook_points.append((idx, kind))
    return handle._register()


def steer(model: nn.Module, sae, intervention=None, **kwargs) -> SteeringHandle:
    """:func:`attach`, meant as a context manager: ``with saesteer.steer(model, sae, iv): ...``.

    The hooks are registered by this call and removed when the ``with`` block exits, also on an
    exception. Takes the same arguments as :func:`attach`.
    """
    return attach(model, sae, intervention, **kwargs)


def _direction(direction, hidden: int | None, name: str = "direction") -> torch.Tensor:
    d = torch.as_tensor(direction).detach()
    if not d.is_floating_point() or d.dim() != 1:
        raise ValueError(f"{name}: expected a 1-D float tensor [d_model], got {d.dtype} of shape {tuple(d.shape)}")
    if hidden is not None and d.shape[0] != hidden:
        raise ValueError(f"{name}: length {d.shape[0]} but the model's hidden size is {hidden}")
    d = d.float()
    if not torch.isfinite(d).all():
        raise ValueError(f"{name}: contains NaN or inf")
    return d


def _unit(d: torch.Tensor) -> torch.Tensor:
    norm = d.norm()
    if norm == 0:
        raise ValueError("direction: the zero vector has no direction")
    return d / norm


def _residual_writers(block: nn.Module) -> list[nn.Module]:
    """The modules whose outputs are added to the residual stream in one decoder layer."""
    if hasattr(block, "post_feedforward_layernorm") and hasattr(block, "post_attention_layernorm"):
        # Gemma2/3 sandwich norms: what enters the stream is the post-norms' output.
        return [block.post_attention_layernorm, block.post_feedforward_layernorm]
    attn = next((getattr(block, n) for n in ("self_attn", "attn", "attention", "self_attention") if hasattr(block, n)), None)
    mlp = next((getattr(block, n) for n in ("mlp", "feed_forward", "ffn") if hasattr(block, n)), None)
    if attn is None or mlp is None:
        raise ValueError(
            f"directional_ablation: cannot find the attention and MLP modules of {type(block).__name__} "
            "(looked for self_attn/attn and mlp)"
        )
    return [attn, mlp]


def directional_ablation(model: nn.Module, direction, *, positions="all", layers=None) -> SteeringHandle:
    """Project ``direction`` out of the residual stream everywhere (Arditi et al. 2024, sec. 2.4).

    ``x <- x - (x . r) r`` with ``r = direction / ||direction||``, applied to every decoder layer's
    input and to every attention and MLP output (what each layer writes to the stream), so no
    component can write along ``r``. Returns a :class:`SteeringHandle` (a context manager).
    """
    owner, blocks = find_layers(model, layers)
    r = _unit(_direction(direction, _hidden_size(model)))
    handle = SteeringHandle(model, owner, positions)
    model_device = _module_device(model, torch.device("cpu"))
    writers = [_residual_writers(b) for b in blocks]  # validated before anything is registered
    for i, block in enumerate(blocks):
        device = _module_device(block, model_device)
        edit = _Project(r, device)
        handle._site(block, True, device).edits.append(edit)
        for m in writers[i]:
            handle._site(m, False, device).edits.append(edit)
        handle.edits.append(edit)
        handle.hook_points.append((i, "resid_pre"))
    return handle._register()


def add_direction(
    model: nn.Module, direction, layer: int, coeff: float = 1.0, *, positions="all", layers=None
) -> SteeringHandle:
    """Activation addition (Arditi et al. 2024, sec. 2.4): ``x <- x + coeff * direction`` at the
    input of decoder layer ``layer`` (``blocks.layer.hook_resid_pre``), every edited token.

    ``direction`` is used as given (not normalised): with a difference-in-means vector and
    ``coeff=1`` this is Arditi's "induce refusal"; ``coeff=-1`` subtracts it. ``handle.coeff`` can be
    changed later (also under torch.compile, without recompiling).
    """
    d = _direction(direction, _hidden_size(model))
    return _layer_input_edit(model, layers, layer, coeff, positions, lambda c, dev: _Add(d, c, dev))


def _layer_input_edit(model, layers, layer, coeff: float, positions, make_edit) -> SteeringHandle:
    """One edit at the input of decoder layer ``layer`` with an updatable ``handle.coeff``;
    ``make_edit(coeff_tensor, device)`` builds it."""
    owner, blocks = find_layers(model, layers)
    n = len(blocks)
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise TypeError(f"layer: expected an int, got {type(layer).__name__}")
    if not -n <= layer < n:
        raise ValueError(f"layer: {layer} is out of range; the model has {n} decoder layers (0..{n - 1})")
    layer %= n
    handle = SteeringHandle(model, owner, positions)
    device = _module_device(blocks[layer], _module_device(model, torch.device("cpu")))
    handle._coeff = torch.tensor(float(coeff), dtype=torch.float32, device=device)
    edit = make_edit(handle._coeff, device)
    handle._site(blocks[layer], True, device).edits.append(edit)
    handle.edits.append(edit)
    handle.hook_points.append((layer, "resid_pre"))
    return handle._register()


def affine_ablation(
    model: nn.Module, direction, reference, layer: int, coeff: float = 0.0, *, positions="all", layers=None
) -> SteeringHandle:
    """Affine concept editing (Marshall et al. 2024, "Refusal in LLMs is an affine function") at the
    input of decoder layer ``layer``: ``x <- x - (x . r) r + (reference . r) r + coeff * direction``
    with ``r = direction / ||direction||``.

    Directional ablation (:func:`directional_ablation`) sets the projection on ``r`` to zero; that
    only removes refusal when harmless activations sit near zero along ``r``. Here the projection is
    set to the harmless mean's (``reference``: the mean harmless activation at that layer and
    position), so ``coeff=0`` makes every prompt look harmless along ``r`` and ``coeff=1`` adds the
    difference in means on top (induces refusal). ``handle.coeff`` is updatable like
    :func:`add_direction`'s.
    """
    hidden = _hidden_size(model)
    d = _direction(direction, hidden)
    ref = _direction(reference, hidden, "reference")
    r = _unit(d)
    return _layer_input_edit(model, layers, layer, coeff, positions, lambda c, dev: _Affine(r, float(ref @ r), d, c, dev))
