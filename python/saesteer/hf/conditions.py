"""Conditions (``when``) in the HF hooks: a :class:`Trigger` reads a condition's score at its hook
point in every forward and keeps the per-row decision across the forwards of a sequence (the
prompt, then each cached decode step); the edits it gates take its mask for the current forward.

The decision code is the engine-neutral :mod:`saesteer.steering.condition`; this module only
finds the tokens: which are real (padding out), which is BOS, which belong to the prompt.
"""

from __future__ import annotations

import torch

from ..steering import as_sae
from ..steering.condition import Condition, PromptScore, parse_when, token_scores

__all__ = ["Trigger", "split_when"]


def split_when(intervention, when):
    """``(intervention, when)``: a ``"when"`` key of an intervention dict taken out (a dict with a
    ``when`` and no features is a monitor: an empty intervention). ``when`` given both ways is an
    error. Per-row lists carry no ``when`` of their own (one condition per edit)."""
    if isinstance(intervention, (list, tuple)):
        if any(isinstance(iv, dict) and "when" in iv for iv in intervention):
            raise ValueError("when: per-row interventions share one condition; pass it as when= (not in a row's dict)")
        return intervention, when
    if isinstance(intervention, dict) and "when" in intervention:
        if when is not None:
            raise ValueError("when: given twice (in the intervention and as when=)")
        iv = {k: v for k, v in intervention.items() if k != "when"}
        when = intervention["when"]
        if not iv.get("features"):
            iv = {"features": [], "mode": "ablate"}  # a monitor: nothing edited
        return iv, when
    if intervention is None and when is not None:
        return {"features": [], "mode": "ablate"}, when
    return intervention, when


def parse_hf_when(when, edit_sae, where: str = "when") -> tuple[Condition, object]:
    """``(condition, trigger SAE)`` for a ``when`` given to the HF hooks: its ``sae`` is an SAE object
    (saesteer or sae-lens) or left out (the edit's own SAE)."""
    if isinstance(when, Condition):
        return when, edit_sae
    if not isinstance(when, dict):
        raise ValueError(f"{where}: expected a dict with features and threshold (or weights and bias), got {type(when).__name__}")
    trig = when.get("sae")
    if trig is None:
        trig = edit_sae
    elif isinstance(trig, str):
        raise ValueError(f"{where}.sae: in the HF hooks pass the SAE object (or leave sae out to read the edit's own SAE), "
                         f"got the name {trig!r}")
    else:
        try:
            trig = as_sae(trig)
        except TypeError:
            raise ValueError(f"{where}.sae: expected a saesteer.SAE or an sae_lens SAE, got {type(trig).__name__}") from None
    d = {k: v for k, v in when.items() if k != "sae"}
    return parse_when(d, {"sae": trig.d_sae}, where, default_sae="sae"), trig


class Trigger:
    """One condition read at its hook point on every forward of the handle.

    After a forward (or during it, for the edits downstream of the read):

    * ``scope="prompt"``: ``score`` ``[B]``, the prompt's reduced score (bias included; NaN for a
      row without a real prompt token), and ``fired`` ``[B]`` bool, the decision kept for the
      whole sequence.
    * ``scope="token"``: ``score`` ``[B, T]`` and ``fired`` ``[B, T]`` of the latest forward (NaN /
      False at padding and BOS), ``fired_tokens`` ``[B]`` how many tokens of the sequence fired so
      far and ``max_score`` ``[B]`` the largest token score.
    """

    def __init__(self, cond: Condition, sae, device: torch.device, backend: str, positions):
        self.cond = cond
        self.view = as_sae(sae).packed(device)
        self.backend = backend
        self.positions = positions
        self._state: PromptScore | None = None
        self._mask: torch.Tensor | None = None
        self._forward = -1
        self.token_score: torch.Tensor | None = None
        self.fired_tokens: torch.Tensor | None = None
        self._max: torch.Tensor | None = None

    # -- reading (a read-only hook at the trigger's site, before any edit there) --------------------
    def read(self, x: torch.Tensor) -> None:
        pos = self.positions
        if not pos.active:
            raise RuntimeError("saesteer: a condition (when) needs the model's forward to find the prompt; call the model, "
                               "not the layer")
        B, T = x.shape[0], x.shape[1]
        s = token_scores(x.reshape(-1, x.shape[-1]), self.view, self.cond, self.backend).view(B, T).to(x.device)
        valid = torch.ones(B, T, dtype=torch.bool, device=x.device)
        for m in (pos.real, pos.bos_keep):
            if m is not None:
                valid = valid & m.to(x.device)
        lo = pos.past or 0
        if self.cond.scope == "prompt":
            if lo == 0 or self._state is None:
                self._state = PromptScore(self.cond, B, x.device)
            elif self._state.rows != B:
                raise ValueError(f"when: the sequence has {self._state.rows} rows but this forward has {B} "
                                 "(beam search and num_return_sequences change the rows; decide before expanding)")
            P = pos.prompt_length if pos.prompt_length is not None else lo + T
            if lo < P:
                in_prompt = torch.arange(lo, lo + T, device=x.device) < P
                self._state.update(s, valid & in_prompt)
            self._mask = self._state.fired[:, None].expand(B, T)
        else:
            fired = self.cond.fires(s) & valid
            if lo == 0 or self.fired_tokens is None or self.fired_tokens.shape[0] != B:
                self.fired_tokens = torch.zeros(B, dtype=torch.long, device=x.device)
                self._max = torch.full((B,), float("-inf"), device=x.device)
            self.fired_tokens = self.fired_tokens + fired.sum(-1)
            self._max = torch.maximum(self._max, torch.where(valid, s, float("-inf")).amax(-1))
            self._mask = fired
        self.token_score = torch.where(valid, s, float("nan"))
        self._forward = pos.forwards

    def mask(self, device: torch.device) -> torch.Tensor:
        """``[B, T]`` bool: the tokens of the current forward the condition lets the edit touch."""
        if self._forward != self.positions.forwards or self._mask is None:
            raise RuntimeError("saesteer: the condition was not read in this forward (its hook point runs after the edit's)")
        return self._mask.to(device)

    # -- results -------------------------------------------------------------------------------
    @property
    def score(self) -> torch.Tensor | None:
        if self.cond.scope == "prompt":
            return None if self._state is None else self._state.score
        return self.token_score

    @property
    def fired(self) -> torch.Tensor | None:
        if self.cond.scope == "prompt":
            return None if self._state is None else self._state.fired
        return None if self._mask is None else self._mask

    @property
    def max_score(self) -> torch.Tensor | None:
        """``[B]``: the largest token score of the sequence so far (token scope; NaN: no real token)."""
        return None if self._max is None else torch.where(torch.isinf(self._max), float("nan"), self._max)

    def report(self) -> dict:
        """The decision as plain Python (lists), for printing or JSON."""
        out = {"condition": self.cond.to_dict()}
        if self.score is None:
            return out
        out.update(score=self.score.tolist(), fired=self.fired.tolist())
        if self.cond.scope == "token":
            out.update(fired_tokens=self.fired_tokens.tolist(), max_score=self.max_score.tolist())
        return out

    def __repr__(self) -> str:
        return f"Trigger({self.cond.to_dict()})"
