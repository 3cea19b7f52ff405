"""Which SAE features fire on which tokens: :func:`inspect`, one forward, the fused encode + top-k.

    >>> res = saesteer.inspect(model, sae, tok(["How do I pick a lock?"], return_tensors="pt"), k=16, tokenizer=tok)
    >>> res.ids[0, 3], res.values[0, 3]       # token 3's 16 strongest features, descending
    >>> res.summary(0)["max"][:5]             # the prompt's strongest features: [(feature, max act), ...]

The residual stream is captured at each SAE's hook point (:func:`saesteer.hf.capture`; the
forward stops after the last one) and encoded with :func:`saesteer.ops.encode_topk`, which never
writes the dense ``[T, d_sae]`` activations. The per-prompt summary (each feature's max and mean
over the prompt's tokens) needs every feature, so it runs one dense encode per prompt.
:func:`contrast` ranks the features whose mean activation differs most between two prompt sets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn

from .. import ops, reference
from ..steering import as_sae
from .capture import hooked, resolve_hooks
from .handle import bos_token_id
from .layers import find_layers, hidden_size
from .positions import bos_mask

__all__ = ["inspect", "Inspection", "contrast"]


class _Stop(Exception):
    """Raised by the last capture hook: nothing after the deepest SAE's hook point is needed."""


@dataclass
class Inspection:
    """One SAE's features on a batch of ``B`` sequences of ``T`` tokens (padding included).

    Attributes
    ----------
    ids : int64 ``[B, T, k]``, the k strongest features of each token, strongest first; -1 at padding.
    values : float32 ``[B, T, k]``, their activations; 0 at padding.
    mask : bool ``[B, T]``, True at real (non-padding) tokens.
    token_ids : int64 ``[B, T]``.
    tokens : per row, per column, the token's text (None at padding; the id as text without a tokenizer).
    max_acts, mean_acts : float32 ``[B, d_sae]``, each feature's max and mean over the row's tokens
        (padding and, with ``skip_bos``, the BOS token left out).
    tracked : feature ids whose activation on every token is in ``tracked_values`` ``[B, T, |tracked|]``
        (the union of the prompts' top features and ``track``), for colouring tokens by a feature.
    """

    hook_name: str
    k: int
    ids: torch.Tensor
    values: torch.Tensor
    mask: torch.Tensor
    token_ids: torch.Tensor
    tokens: list
    max_acts: torch.Tensor
    mean_acts: torch.Tensor
    summary_mask: torch.Tensor
    tracked: list = field(default_factory=list)
    tracked_values: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.ids.shape[0]

    def top(self, row: int, by: str = "max", k: int | None = None) -> list[tuple[int, float]]:
        """The prompt's ``k`` (default: the inspection's k) strongest features by their ``max`` or
        ``mean`` activation over its tokens, ``[(feature, value), ...]`` (features that never fire left out)."""
        if by not in ("max", "mean"):
            raise ValueError(f"by: expected 'max' or 'mean', got {by!r}")
        acts = (self.max_acts if by == "max" else self.mean_acts)[row]
        v, i = acts.topk(min(k or self.k, acts.numel()))
        return [(int(a), float(b)) for a, b in zip(i.tolist(), v.tolist()) if b > 0]

    def summary(self, row: int, k: int | None = None) -> dict:
        """``{"max": top(row, "max"), "mean": top(row, "mean")}``."""
        return {"max": self.top(row, "max", k), "mean": self.top(row, "mean", k)}

    def token_features(self, row: int) -> list[tuple[int, str | None, list[tuple[int, float]]]]:
        """``[(column, token, [(feature, value), ...]), ...]`` for the real tokens of ``row``
        (features with a zero activation left out)."""
        out = []
        for t in torch.nonzero(self.mask[row]).flatten().tolist():
            feats = [(int(i), float(v)) for i, v in zip(self.ids[row, t].tolist(), self.values[row, t].tolist()) if v > 0]
            out.append((t, self.tokens[row][t], feats))
        return out

    def to_dict(self) -> dict:
        """Plain Python for JSON: per prompt its real tokens with their top features, the prompt's top
        features by max and mean, and the tracked features' activations on each token."""
        prompts = []
        for r in range(len(self)):
            cols = torch.nonzero(self.mask[r]).flatten()
            entry = {
                "tokens": [self.tokens[r][t] for t in cols.tolist()],
                "token_ids": self.token_ids[r, cols].tolist(),
                "features": [[[i, round(v, 5)] for i, v in feats] for _, _, feats in self.token_features(r)],
                "top_max": [[i, round(v, 5)] for i, v in self.top(r, "max")],
                "top_mean": [[i, round(v, 5)] for i, v in self.top(r, "mean")],
            }
            if self.tracked_values is not None:
                entry["tracked"] = [[round(float(v), 5) for v in row] for row in self.tracked_values[r, cols].tolist()]
            prompts.append(entry)
        return {"hook_name": self.hook_name, "k": self.k, "tracked": list(self.tracked), "prompts": prompts}

    def __repr__(self) -> str:
        B, T, k = self.ids.shape
        return f"Inspection({self.hook_name}, B={B}, T={T}, k={k})"


def _as_batch(inputs, tokenizer, device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(input_ids [B, T], attention_mask [B, T] | None)`` from a tokenizer's output (dict or
    BatchEncoding), an id tensor, or a list of strings (with ``tokenizer``)."""
    if isinstance(inputs, str):
        inputs = [inputs]
    if isinstance(inputs, (list, tuple)) and inputs and all(isinstance(s, str) for s in inputs):
        if tokenizer is None:
            raise ValueError("inputs: text needs tokenizer= (or pass the tokenizer's output)")
        enc = tokenizer(list(inputs), return_tensors="pt", padding=True)
        return enc["input_ids"].to(device), enc["attention_mask"].to(device)
    if isinstance(inputs, torch.Tensor):
        if inputs.is_floating_point() or inputs.dim() not in (1, 2):
            raise ValueError(f"inputs: expected token ids [T] or [B, T], got {inputs.dtype} {tuple(inputs.shape)}")
        ids = inputs if inputs.dim() == 2 else inputs[None]
        return ids.to(device), None
    if hasattr(inputs, "keys") and "input_ids" in inputs:
        ids = inputs["input_ids"]
        ids = ids if ids.dim() == 2 else ids[None]
        attn = inputs.get("attention_mask")
        if attn is not None:
            attn = (attn if attn.dim() == 2 else attn[None]).to(device)
        return ids.to(device), attn
    raise ValueError("inputs: expected a tokenizer's output (input_ids, attention_mask), a tensor of token ids, or a "
                     f"list of strings with tokenizer=; got {type(inputs).__name__}")


def _token_texts(ids: torch.Tensor, mask: torch.Tensor, tokenizer) -> list[list[str | None]]:
    rows = []
    for r in range(ids.shape[0]):
        row = []
        for t, i in enumerate(ids[r].tolist()):
            if not mask[r, t]:
                row.append(None)
            elif tokenizer is None:
                row.append(str(i))
            else:
                row.append(tokenizer.decode([i]))
        rows.append(row)
    return rows


@torch.no_grad()
def inspect(
    model: nn.Module,
    sae,
    inputs,
    k: int = 16,
    *,
    tokenizer=None,
    skip_bos: bool = True,
    track: Sequence[int] | None = None,
    layers=None,
    backend: str = "auto",
):
    """Per token, the ``k`` strongest features of ``sae`` at its hook point, from one forward.

    Parameters
    ----------
    model : a HuggingFace causal LM or base model
    sae : saesteer.SAE or sae_lens SAE, or a list (or dict) of them: all read in the same forward.
    inputs : the tokenizer's output (``input_ids``, ``attention_mask``; padding either side), token
        ids ``[T]`` / ``[B, T]``, or text (a string or list of strings, with ``tokenizer``).
    k : features per token (``1 <= k <= d_sae``).
    tokenizer : decodes each token for :attr:`Inspection.tokens` (else the ids as text).
    skip_bos : leave each sequence's BOS token (``model.config.bos_token_id`` in first position) out of
        the per-prompt max and mean; its per-token top-k is computed as for any token.
    track : more features whose activation on every token to keep, beside the prompts' top features
        by max and by mean (always kept), e.g. to colour the tokens by a feature.
    backend : passed to :func:`saesteer.ops.encode_topk`.

    Returns
    -------
    :class:`Inspection` for one SAE; a list (or dict, by the same keys) of them for several.
    """
    if isinstance(sae, dict):
        names, saes = list(sae), [as_sae(s) for s in sae.values()]
    elif isinstance(sae, (list, tuple)):
        names, saes = None, [as_sae(s) for s in sae]
    else:
        names, saes = None, [as_sae(sae)]
    if not saes:
        raise ValueError("sae: expected an SAE or a non-empty list of SAEs")
    if isinstance(k, bool) or not isinstance(k, int) or not all(1 <= k <= s.d_sae for s in saes):
        raise ValueError(f"k: expected an int in [1, d_sae={min(s.d_sae for s in saes)}], got {k!r}")
    hidden = hidden_size(model)
    for s in saes:
        if hidden is not None and s.d_in != hidden:
            raise ValueError(f"sae: d_in={s.d_in} but the model's hidden size is {hidden}")
    device = next(model.parameters()).device
    ids, attn = _as_batch(inputs, tokenizer, device)
    sites = resolve_hooks(model, saes, layers)
    _, blocks = find_layers(model, layers)
    rank = {id(m): i for i, m in enumerate(blocks)}
    last = max(sites, key=lambda s: (rank[id(s[1])], not s[2]))[0]  # the deepest hook point
    got: dict[str, torch.Tensor] = {}

    def record(name, x):
        got[name] = x.detach()
        if len(got) == len(sites) and name == last:
            raise _Stop

    try:
        with hooked(sites, record):
            model(input_ids=ids, attention_mask=attn, use_cache=False)
    except _Stop:
        pass
    mask = torch.ones_like(ids, dtype=torch.bool) if attn is None else attn.bool()
    summary_mask = mask & ~bos_mask(ids, attn, bos_token_id(model)) if skip_bos else mask
    tokens = _token_texts(ids.cpu(), mask.cpu(), tokenizer)
    out = [_one(s, got[resolve_hooks(model, s, layers)[0][0]], ids, mask, summary_mask, tokens, k, track, backend)
           for s in saes]
    if names is not None:
        return dict(zip(names, out))
    return out if isinstance(sae, (list, tuple)) else out[0]


def _one(sae, x, ids, mask, summary_mask, tokens, k, track, backend) -> Inspection:
    view = sae.packed(sae.device)
    xs = x.to(device=sae.device, dtype=view.dtype)
    vals, idx = ops.encode_topk(xs, view, k, backend=backend)
    m = mask.to(vals.device)
    vals = torch.where(m[..., None], vals.float(), 0.0)
    idx = torch.where(m[..., None], idx, -1)
    B = x.shape[0]
    max_acts = torch.zeros(B, sae.d_sae)
    mean_acts = torch.zeros(B, sae.d_sae)
    sm = summary_mask.to(xs.device)
    for r in range(B):  # one dense encode per prompt: every feature's max and mean
        rows = xs[r][sm[r]]
        if rows.shape[0]:
            f = reference.encode(rows, view).float()
            max_acts[r] = f.amax(0).clamp_min(0).cpu()
            mean_acts[r] = f.mean(0).cpu()
    res = Inspection(sae.hook_name or "", k, idx.cpu(), vals.cpu(), mask.cpu(), ids.cpu(), tokens, max_acts, mean_acts,
                     summary_mask.cpu())
    track = sorted({i for r in range(B) for by in ("max", "mean") for i, _ in res.top(r, by)} | {int(i) for i in track or ()})
    if track:
        bad = [i for i in track if not 0 <= i < sae.d_sae]
        if bad:
            raise ValueError(f"track: feature {bad[0]} is out of range (d_sae={sae.d_sae})")
        res.tracked = track
        res.tracked_values = reference.feature_acts(xs, view, track).float().cpu()
    else:
        res.tracked_values = torch.zeros(B, x.shape[1], 0)
    return res


def contrast(a: Inspection | Sequence[Inspection], b: Inspection | Sequence[Inspection], top: int = 20,
             by: str = "mean") -> list[dict]:
    """The ``top`` features whose mean activation differs most between the prompts of ``a`` and of
    ``b`` (each an :class:`Inspection` or a list of them, e.g. one per batch; each prompt's mean over
    its tokens, :attr:`Inspection.mean_acts`, or with ``by="max"`` its max), by the size of the
    effect: Cohen's d with the pooled standard deviation, largest ``|d|`` first (a feature constant
    within both sets but different between them has an infinite d). Rows: ``{feature, mean_a,
    mean_b, diff, d, frac_a, frac_b}`` (``mean_*``: the per-prompt value averaged over the set;
    ``frac``: the share of prompts on which the feature fires); features equal in both are left out."""
    if by not in ("mean", "max"):
        raise ValueError(f"by: expected 'mean' or 'max', got {by!r}")
    a, b = _stack(a, "a", by), _stack(b, "b", by)
    if a[0].shape[1] != b[0].shape[1]:
        raise ValueError(f"contrast: the two prompt sets were read with SAEs of different widths ({a[0].shape[1]} vs "
                         f"{b[0].shape[1]})")
    na, nb = a[0].shape[0], b[0].shape[0]
    if na < 2 or nb < 2:
        raise ValueError(f"contrast: each prompt set needs at least 2 prompts (got {na} and {nb})")
    A, B = a[0].double(), b[0].double()
    ma, mb = A.mean(0), B.mean(0)
    pooled = (((na - 1) * A.var(0) + (nb - 1) * B.var(0)) / (na + nb - 2)).sqrt()
    diff = ma - mb
    d = torch.where(pooled > 0, diff / pooled.clamp_min(1e-12), torch.where(diff == 0, 0.0, math.inf * diff.sign()))
    by_diff = diff.abs().argsort(descending=True, stable=True)  # ties of |d| (e.g. inf) broken by |diff|
    order = by_diff[d.abs()[by_diff].argsort(descending=True, stable=True)][:top].tolist()
    fa, fb = (a[1] > 0).double().mean(0), (b[1] > 0).double().mean(0)
    return [{"feature": i, "mean_a": float(ma[i]), "mean_b": float(mb[i]), "diff": float(diff[i]), "d": float(d[i]),
             "frac_a": float(fa[i]), "frac_b": float(fb[i])} for i in order if float(diff[i]) != 0]


def _stack(x, name: str, by: str = "mean") -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean_acts or max_acts, max_acts)`` of an Inspection or a list of them, stacked over prompts."""
    items = [x] if isinstance(x, Inspection) else list(x)
    if not items or not all(isinstance(i, Inspection) for i in items):
        raise ValueError(f"{name}: expected an Inspection or a non-empty list of them")
    if len({i.mean_acts.shape[1] for i in items}) != 1:
        raise ValueError(f"{name}: the inspections were read with SAEs of different widths")
    return torch.cat([i.mean_acts if by == "mean" else i.max_acts for i in items]), torch.cat([i.max_acts for i in items])
