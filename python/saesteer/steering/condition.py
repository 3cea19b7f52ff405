"""Conditional interventions: an edit that applies only where a trigger read on SAE features fires.

A steering spec may carry ``"when"``, in one of two forms::

    {"sae": "jumprelu", "features": [301, 77], "threshold": 2.5, "reduce": "max", "scope": "prompt"}
    {"sae": "jumprelu", "features": [301, 77], "weights": [0.8, -1.2], "bias": -0.3, "reduce": "last"}

The trigger score of a token is ``s = sum_j w_j f_{features[j]}(x) + bias`` (threshold form:
``w = 1``, ``bias = 0``), read with :func:`saesteer.ops.trigger_score`: the |T| encoder columns
the trigger names, the same subset encode the edit does. It fires where ``s > threshold``
(probe form: ``threshold = 0``, i.e. the probe's probability is over 1/2).

* ``scope: "prompt"`` (Lee et al.'s conditional activation steering): the score is reduced over the
  prompt's tokens (``reduce``: ``max``, ``mean``, or ``last``, the last prompt token, where
  :func:`saesteer.refusal.probes.compare_probes` trains its feature probe) and decides once for the
  whole sequence: the edit then applies to the positions the spec names, in the prompt and in every
  generated token. Padding never counts; the sequence's BOS token neither (when the edit skips it).
* ``scope: "token"``: each token is edited only where its own score is over the threshold.

A spec with a ``when`` and no features is a monitor: nothing is edited, the score and the decision
are reported. :func:`parse_when` validates the field (errors name it, e.g. ``when.threshold``);
:func:`token_scores` and :class:`PromptScore` are the decision code every engine shares (the HF
hooks keep one :class:`PromptScore` per handle, a serving engine one row per request).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .. import ops
from ..packed import as_packed

__all__ = ["Condition", "parse_when", "resolve_sae", "token_scores", "PromptScore", "REDUCES", "SCOPES"]

REDUCES = ("max", "mean", "last")
SCOPES = ("prompt", "token")
_COMMON = {"sae", "features", "reduce", "scope"}
_THRESHOLD = _COMMON | {"threshold"}
_PROBE = _COMMON | {"weights", "bias"}


class ConditionError(ValueError):
    """A malformed ``when``; the message names the field."""


@dataclass(frozen=True)
class Condition:
    """A parsed ``when``: the trigger's SAE (its name, or None for the edit's own), its features,
    per-feature weights (None: all 1), bias, threshold, reduction and scope."""

    sae: str | None
    features: tuple[int, ...]
    threshold: float = 0.0
    weights: tuple[float, ...] | None = None
    bias: float = 0.0
    reduce: str = "max"
    scope: str = "prompt"

    @property
    def is_probe(self) -> bool:
        return self.weights is not None

    def fires(self, score: torch.Tensor) -> torch.Tensor:
        """Where ``score`` (bias included) is over the threshold."""
        return score > self.threshold

    def to_dict(self) -> dict:
        d: dict = {"sae": self.sae, "features": list(self.features)}
        if self.is_probe:
            d.update(weights=list(self.weights), bias=self.bias)
        else:
            d["threshold"] = self.threshold
        d.update(reduce=self.reduce, scope=self.scope)
        if d["sae"] is None:
            d.pop("sae")
        return d


def _number(v, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
        raise ConditionError(f"{where}: expected a finite number, got {v!r}")
    return float(v)


def json_kind(v) -> str:
    """How a JSON value is named in an error: ``a list``, ``a string 'abc'``, ..."""
    if isinstance(v, str):
        return f"a string {v!r}"
    if isinstance(v, bool):
        return f"{str(v).lower()}"
    return {list: "a list", dict: "an object", type(None): "null"}.get(type(v), f"{v!r}")


def resolve_sae(name, saes: dict | None, where: str, error: type[ValueError] = ConditionError) -> str | None:
    """The SAE a spec or a ``when`` names (``name``: its ``sae`` field, None when left out), checked
    against ``saes`` (``name -> d_sae``; None skips the check): left out, the only SAE; unknown, or
    not a string, an ``error`` naming ``where`` (the field, e.g. ``saesteer.when.sae``)."""
    if name is not None and not isinstance(name, str):
        raise error(f"{where}: expected the name of a registered SAE (a string), got {json_kind(name)}")
    if saes is None:
        return name
    if name is None:
        if len(saes) != 1:
            raise error(f"{where}: required (registered SAEs: {', '.join(sorted(map(str, saes)))})")
        return next(iter(saes))
    if name not in saes:
        raise error(f"{where}: unknown SAE {name!r} (registered: {', '.join(sorted(map(str, saes))) or 'none'})")
    return name


def parse_when(d, saes: dict | None = None, where: str = "when", default_sae: str | None = None) -> Condition:
    """Validate a ``when`` object (a dict, or a :class:`Condition` returned as it is).

    ``saes``: the SAEs a trigger may read, ``name -> d_sae`` (feature ids are checked against it);
    None skips the name and range checks (a spec file read before its SAEs load). A ``when`` without
    ``sae`` reads ``default_sae`` (the edit's). Errors are :class:`ValueError` naming the field
    as ``{where}.{field}``.
    """
    if isinstance(d, Condition):
        return d
    if not isinstance(d, dict):
        raise ConditionError(f"{where}: expected an object with sae, features and threshold (or weights and bias), "
                             f"got {type(d).__name__}")
    probe = "weights" in d or "bias" in d
    if probe and "threshold" in d:
        raise ConditionError(f"{where}.threshold: give either threshold (a threshold on the summed activations) or "
                             "weights and bias (a linear probe), not both")
    allowed = _PROBE if probe else _THRESHOLD
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise ConditionError(f"{where}.{unknown[0]}: unknown field (expected {', '.join(sorted(allowed))})")
    name = resolve_sae(d.get("sae", default_sae), saes, f"{where}.sae")
    feats = d.get("features")
    if not isinstance(feats, (list, tuple)) or not feats:
        raise ConditionError(f"{where}.features: expected a non-empty list of feature ids, got {feats!r}")
    if any(isinstance(i, bool) or not isinstance(i, int) for i in feats):
        raise ConditionError(f"{where}.features: expected integer feature ids, got {list(feats)!r}")
    if len(set(feats)) != len(feats):
        raise ConditionError(f"{where}.features: ids must be distinct, got {list(feats)!r}")
    if saes is not None and saes[name] is not None:
        bad = [i for i in feats if not 0 <= i < saes[name]]
        if bad:
            raise ConditionError(f"{where}.features: id {bad[0]} is out of range for SAE {name!r} (d_sae={saes[name]})")
    reduce = d.get("reduce", "max")
    if reduce not in REDUCES:
        raise ConditionError(f"{where}.reduce: expected one of {', '.join(REDUCES)}, got {reduce!r}")
    scope = d.get("scope", "prompt")
    if scope not in SCOPES:
        raise ConditionError(f"{where}.scope: expected one of {', '.join(SCOPES)}, got {scope!r}")
    if probe:
        w = d.get("weights")
        if not isinstance(w, (list, tuple)) or len(w) != len(feats):
            raise ConditionError(f"{where}.weights: expected one number per feature ({len(feats)}), got {w!r}")
        weights = tuple(_number(v, f"{where}.weights") for v in w)
        bias = _number(d.get("bias", 0.0), f"{where}.bias")
        return Condition(name, tuple(feats), 0.0, weights, bias, reduce, scope)
    if "threshold" not in d:
        raise ConditionError(f"{where}.threshold: required (or weights and bias for a linear probe)")
    return Condition(name, tuple(feats), _number(d["threshold"], f"{where}.threshold"), None, 0.0, reduce, scope)


def token_scores(x: torch.Tensor, sae, cond: Condition, backend: str = "auto") -> torch.Tensor:
    """The trigger score ``[*lead]`` (float32, bias included) of every token of ``x [*lead, d_in]``,
    read in the SAE's dtype on its device (x is cast there)."""
    view = as_packed(sae)
    xs = x.to(device=view.W_dec.device, dtype=view.W_dec.dtype)
    # The condition's own tuples: ops.trigger_score finds their validated tensors by identity.
    s = ops.trigger_score(xs, view, cond.features, cond.weights, backend=backend)
    s = s.float()
    return s + cond.bias if cond.bias else s


class PromptScore:
    """The per-row state of a condition over a sequence: the prompt score accumulated over the
    prompt's tokens (in one forward or in chunks) and the decision it gives.

    ``update(scores [B, T], valid [B, T])`` adds a forward's prompt tokens (``valid``: real prompt
    tokens; BOS and padding out); ``score`` ``[B]`` is the reduced prompt score (NaN for a row with
    no valid token yet, which never fires) and ``fired`` ``[B]`` the decision.
    """

    def __init__(self, cond: Condition, rows: int, device):
        self.cond = cond
        self.rows = rows
        self.max = torch.full((rows,), -math.inf, device=device)
        self.sum = torch.zeros(rows, device=device)
        self.count = torch.zeros(rows, device=device)
        self.last = torch.full((rows,), math.nan, device=device)

    def update(self, scores: torch.Tensor, valid: torch.Tensor) -> None:
        scores = scores.to(self.max.device).float()
        valid = valid.to(self.max.device)
        self.max = torch.maximum(self.max, torch.where(valid, scores, -math.inf).amax(-1))
        self.sum = self.sum + torch.where(valid, scores, 0.0).sum(-1)
        n = valid.sum(-1)
        self.count = self.count + n
        # the rightmost valid token of each row in this chunk
        T = scores.shape[-1]
        col = torch.where(valid, torch.arange(T, device=valid.device), -1).amax(-1)
        last = scores.gather(-1, col.clamp(min=0)[:, None])[:, 0]
        self.last = torch.where(n > 0, last, self.last)

    @property
    def score(self) -> torch.Tensor:
        seen = self.count > 0
        if self.cond.reduce == "max":
            s = self.max
        elif self.cond.reduce == "mean":
            s = self.sum / self.count.clamp(min=1)
        else:
            s = self.last
        return torch.where(seen, s, math.nan)

    @property
    def fired(self) -> torch.Tensor:
        return self.cond.fires(self.score)  # NaN compares False: a row without prompt never fires
