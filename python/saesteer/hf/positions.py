"""Which tokens of the current forward an edit applies to.

A forward pre-hook on the module that owns the decoder layers (e.g. ``model.model``) reads the
arguments of every forward -- ``input_ids``/``inputs_embeds``, the 2-D ``attention_mask`` and the
KV cache -- and computes, once per forward, which tokens of that forward are edited; the layer
hooks only read the result. A forward whose cache is empty starts a new sequence (so every
``generate`` call starts afresh) and its tokens are the prompt; with a KV cache each later forward
holds only new tokens, which are "generated". Without a cache (``use_cache=False``), ``generate``
re-runs the whole sequence each step; a forward whose ``input_ids`` extend the previous forward's
is taken as the same sequence continued. Padding: tokens where the attention mask is 0 are never
edited. With ``skip_bos`` the sequence's BOS token is never edited either: the rule is
:func:`saesteer.steering.spec.bos_token_mask`, with a token's position in its sequence counted
from its first non-padding token (the attention mask's running sum, past tokens included).
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from ..steering.spec import bos_token_mask

__all__ = ["POSITIONS", "PositionTracker", "bos_mask", "sequence_positions"]

POSITIONS = ("all", "prompt", "generated")


def sequence_positions(attention_mask: torch.Tensor | None, past: int, B: int, T: int, device) -> torch.Tensor:
    """``[B, T]`` int64: each token's position in its own sequence, counted from its first
    non-padding token. ``attention_mask [B, past + T]`` (or ``[B, T]`` with ``past`` tokens before
    it, all real) or None (no padding)."""
    if attention_mask is None:
        return (torch.arange(past, past + T, device=device)).expand(B, T)
    real = (attention_mask != 0).long()
    pos = real.cumsum(-1) - 1
    if real.shape[-1] == T:
        pos = pos + past
    return pos[:, -T:]


def bos_mask(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, bos_token_id: int | None) -> torch.Tensor:
    """``[B, T]`` bool: the BOS token of each row of a (left- or right-padded) batch, by
    :func:`~saesteer.steering.spec.bos_token_mask`. Padding is never BOS."""
    B, T = input_ids.shape
    pos = sequence_positions(attention_mask, 0, B, T, input_ids.device)
    m = bos_token_mask(input_ids, pos, bos_token_id)
    return m if attention_mask is None else m & (attention_mask != 0)


class PositionTracker:
    """Reads every forward of the layers' owner and keeps the token mask of the current one.

    ``mask`` is None (every token), or a bool tensor ``[B, T]``; ``skip`` is True when no token of
    the forward is edited (e.g. a decode step under ``positions="prompt"``). ``skip_bos``: the BOS
    token (``bos_token_id`` at sequence position 0) is left out of every forward's mask.
    """

    def __init__(self, positions, owner: nn.Module, skip_bos: bool = False, bos_token_id: int | None = None):
        if not isinstance(skip_bos, bool):
            raise TypeError(f"skip_bos: expected True or False, got {skip_bos!r}")
        self.skip_bos = skip_bos and bos_token_id is not None
        self.bos_token_id = bos_token_id
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
        # Conditions (``when``) read the prompt under every positions rule: with ``track_prompt``
        # each forward also records ``real`` (padding mask), ``bos_keep`` and ``past`` (tokens before it).
        self.track_prompt = False
        self.real: torch.Tensor | None = None
        self.bos_keep: torch.Tensor | None = None
        self.past: int | None = None
        self.forwards = 0
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
        if self.track_prompt:  # a Python int a compiled graph would guard on: only counted for conditions
            self.forwards += 1
        self._begin(args, kwargs)
        self.bos_keep = None
        if self.skip_bos and (not self.skip or self.track_prompt):
            self.bos_keep = self._bos_keep(args, kwargs)
            if self.bos_keep is not None and not self.skip:
                self.mask = self.bos_keep if self.mask is None else self.mask & self.bos_keep

    def _bos_keep(self, args, kwargs) -> torch.Tensor | None:
        """``[B, T]`` bool, False at the sequence's BOS token (None: no BOS in this forward)."""
        ids = self._arg("input_ids", args, kwargs)
        ref = ids if isinstance(ids, torch.Tensor) else self._arg("inputs_embeds", args, kwargs)
        if not isinstance(ref, torch.Tensor) or ref.dim() < 2:
            return None
        B, T = ref.shape[0], ref.shape[1]
        attn = self._arg("attention_mask", args, kwargs)
        if not (isinstance(attn, torch.Tensor) and attn.dim() == 2 and attn.shape[0] == B and attn.shape[1] >= T):
            attn = None
        past = attn.shape[1] - T if attn is not None and attn.shape[1] > T else self._past_length(args, kwargs)
        if attn is None and past > 0:
            return None  # a later forward of an unpadded sequence: its BOS is in the cache
        pos = sequence_positions(attn, past, B, T, ref.device)
        return ~bos_token_mask(ids if isinstance(ids, torch.Tensor) and ids.dim() == 2 else None, pos, self.bos_token_id)

    def _begin(self, args, kwargs) -> None:
        self.active = True
        self.skip = False
        self.mask = None
        self.real = None
        self.past = None
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
        self.real = real
        if self.kind == "all" and not self.track_prompt:
            self.mask = real
            return
        if not past:  # no mask, or one covering only this forward's tokens: ask the cache
            past = self._past_length(args, kwargs)
        self._track(ids if isinstance(ids, torch.Tensor) else None, B, T, past)
        self.past = past
        if self.kind == "all":
            self.mask = real
            return
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
            if m.dim() == 2 and m.shape[0] not in (1, B):
                raise ValueError(f"positions: the mask has {m.shape[0]} batch rows but the batch has {B}")
            if m.shape[-1] < hi:
                raise ValueError(
                    f"positions: the mask covers {m.shape[-1]} sequence positions but this forward reaches "
                    f"position {hi}; a mask indexes the whole sequence (prompt, padding and generated tokens), "
                    "so make it at least that long"
                )
            sel = m[..., lo:hi]
        if sel is not None:
            sel = sel.expand(B, T)
            real = sel if real is None else real & sel
        self.mask = real

    def end(self, module, args, kwargs, output) -> None:  # forward hook of the owner (always called)
        self.active = False
        self.mask = None
        self.skip = False
        self.real = self.bos_keep = None

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


