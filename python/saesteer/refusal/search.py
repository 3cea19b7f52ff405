"""Greedy minimal jailbreak sets (Prakash et al. stage 2), evaluated in batches with ``steer_rows``;
the candidate pool they start from, and their confirmation by generation.

Start from the candidate features ``C`` all ablated (which should flip refusal to compliance); rank
them in one batched forward -- each batch row its own ablation set through
:func:`saesteer.ops.steer_rows` -- by the refusal score with that feature left out, then, least
important first, drop each feature whose removal keeps the prompts flipped. "Flipped"
means a refusal score (log-odds of the refusal tokens at the last prompt position) below
``threshold`` (default 0: the refusal tokens are less likely than not).

The search's edit is ablation by default; ``edit="scale:-3"`` (Yeo et al.'s negative scaling on
Gemma: zeroing a feature that is mostly 0 does little) or ``"clamp:V"`` apply that edit to the
set instead (:func:`parse_edit`). Every edit leaves the BOS token alone unless ``skip_bos=False``.

* :func:`grow_candidate_pool`: the greedy search keeps only a fraction (``keep``) of what its whole
  candidate pool flips, so the pool grows (doubling) until ablating it flips enough search prompts.
* :func:`confirm_by_generation`: a set pruned to the edge of the score criterion can still be
  refused by greedy decoding, so the search's removals are undone, last first, until the reply
  complies.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from ..intervention import Intervention
from ..sae import SAE
from .chat import last_logits, refusal_scores_from_logits, tokenize_prompts
from .saeset import SAESet

__all__ = ["edit_scores", "greedy_minimal_set", "MinimalSet", "grow_candidate_pool", "confirm_by_generation",
           "Edit", "parse_edit", "EDIT_FORMS"]

EDIT_FORMS = "ablate, scale:FACTOR (e.g. scale:-3) or clamp:VALUE"


@dataclass(frozen=True)
class Edit:
    """What the search does to a set of features: ``ablate``, ``scale`` by ``value`` or ``clamp``
    to ``value``. ``str(edit)`` is its command-line form (``scale:-3``)."""

    mode: str = "ablate"
    value: float | None = None

    def intervention(self, features: Sequence[int]) -> Intervention | None:
        """The intervention on ``features`` (None for an empty set: nothing is edited)."""
        if not len(features):
            return None
        return Intervention(list(features), self.mode, self.value)

    def __str__(self) -> str:
        return self.mode if self.value is None else f"{self.mode}:{self.value:g}"


def parse_edit(edit) -> Edit:
    """An :class:`Edit` from ``"ablate"``, ``"scale:-3"``, ``"clamp:5"`` (or an Edit as it is)."""
    if isinstance(edit, Edit):
        return edit
    if not isinstance(edit, str):
        raise ValueError(f"edit: expected {EDIT_FORMS}, got {edit!r}")
    mode, sep, value = edit.strip().partition(":")
    if mode == "ablate" and not sep:
        return Edit()
    if mode in ("scale", "clamp") and sep:
        try:
            v = float(value)
        except ValueError:
            raise ValueError(f"edit: {mode}'s value must be a number, got {value!r} in {edit!r}") from None
        if v != v or v in (float("inf"), float("-inf")):
            raise ValueError(f"edit: {mode}'s value must be finite, got {edit!r}")
        return Edit(mode, v)
    raise ValueError(f"edit: expected {EDIT_FORMS}, got {edit!r}")


@torch.no_grad()
def edit_scores(
    model,
    tokenizer,
    sae: SAE,
    prompts: Sequence[str],
    sets: Sequence[Sequence[int]],
    refusal_tokens: Sequence[int],
    *,
    layer: int | None = None,
    max_rows: int = 256,
    backend: str = "auto",
    edit: Edit | str = "ablate",
    skip_bos: bool = True,
) -> torch.Tensor:
    """Refusal score ``[len(sets), len(prompts)]`` with ``edit`` (default: ablation) applied to each
    set of features at every position but the BOS (``skip_bos``).

    Every (set, prompt) pair is one batch row with its own intervention: one forward per ``max_rows``.
    ``sae`` may be an :class:`~.saeset.SAESet`: the sets are then of its flat ids, and each row's
    edit applies at every SAE's hook point in that forward.
    """
    edit = parse_edit(edit)
    saes = SAESet.of(sae, layer)
    pairs = [(s, p) for s in range(len(sets)) for p in range(len(prompts))]
    out = torch.empty(len(pairs))
    device = next(model.parameters()).device
    for b in range(0, len(pairs), max_rows):
        chunk = pairs[b : b + max_rows]
        enc = tokenize_prompts(tokenizer, [prompts[p] for _, p in chunk], device)
        handle = saes.steer(model, [list(sets[s]) for s, _ in chunk], edit, backend=backend, skip_bos=skip_bos)
        with handle if handle is not None else contextlib.nullcontext():
            logits = last_logits(model, enc)
        out[b : b + len(chunk)] = refusal_scores_from_logits(logits.float(), refusal_tokens)
    return out.view(len(sets), len(prompts))


@dataclass
class MinimalSet:
    features: list[int]
    flip_rate: float  # fraction of the search prompts flipped with the set ablated
    mean_score: float
    full_flip_rate: float  # with every candidate ablated
    steps: list = field(default_factory=list)  # (removed feature, flip rate, mean score) per step

    def to_dict(self) -> dict:
        return {
            "features": self.features,
            "flip_rate": self.flip_rate,
            "mean_score": self.mean_score,
            "full_flip_rate": self.full_flip_rate,
            "steps": self.steps,
        }


def greedy_minimal_set(
    model,
    tokenizer,
    sae: SAE,
    prompts: Sequence[str],
    candidates: Sequence[int],
    refusal_tokens: Sequence[int],
    *,
    threshold: float = 0.0,
    keep: float = 0.9,
    layer: int | None = None,
    max_rows: int = 256,
    progress: bool = True,
    backend: str = "auto",
    edit: Edit | str = "ablate",
    skip_bos: bool = True,
) -> MinimalSet:
    """Prune ``candidates`` to a minimal set whose ablation (or ``edit``) still flips ``prompts``.

    With one prompt this is the per-prompt search; with several, the pooled search: a removal is
    accepted while the flip rate stays >= ``keep`` x the flip rate of the full candidate set.
    """
    kw = dict(layer=layer, max_rows=max_rows, backend=backend, edit=parse_edit(edit), skip_bos=skip_bos)
    if not prompts:
        raise ValueError("prompts: the search needs at least one prompt")
    current = list(dict.fromkeys(int(c) for c in candidates))
    if not current:
        raise ValueError("candidates: empty candidate feature list")
    full = edit_scores(model, tokenizer, sae, prompts, [current], refusal_tokens, **kw)[0]
    full_rate = float((full < threshold).float().mean())
    target = keep * full_rate
    steps = []
    rate, mean = full_rate, float(full.mean())
    if full_rate == 0 or len(current) == 1:
        return MinimalSet(current, rate, mean, full_rate, steps)
    # One batched forward ranks the candidates: the refusal score with each one left out of the full
    # set. Least important first (leaving it out keeps refusal lowest), then Prakash et al.'s filter:
    # drop a feature for good when the prompts stay flipped without it. |C| + |C| rows x prompts in
    # all, instead of |C|^2 / 2 for a best-removal-per-step search.
    single = edit_scores(model, tokenizer, sae, prompts, [[f for f in current if f != g] for g in current],
                             refusal_tokens, **kw)
    order = [current[int(j)] for j in single.mean(1).argsort()]
    for g in tqdm(order, desc="greedy search", disable=not progress, leave=False):
        if len(current) == 1:
            break
        trial = [f for f in current if f != g]
        s = edit_scores(model, tokenizer, sae, prompts, [trial], refusal_tokens, **kw)[0]
        r = float((s < threshold).float().mean())
        if r >= target - 1e-9:
            current, rate, mean = trial, r, float(s.mean())
            steps.append((g, rate, mean))
    # Removals interact, so re-check the survivors together (one batched forward per pass) until
    # every remaining feature is needed: the set is then 1-minimal under the criterion.
    while len(current) > 1:
        trials = [[f for f in current if f != g] for g in current]
        s = edit_scores(model, tokenizer, sae, prompts, trials, refusal_tokens, **kw)
        rates = (s < threshold).float().mean(1)
        ok = rates >= target - 1e-9
        if not bool(ok.any()):
            break
        j = int(torch.where(ok, s.mean(1), torch.full_like(rates, float("inf"))).argmin())
        rate, mean = float(rates[j]), float(s[j].mean())
        steps.append((current.pop(j), rate, mean))
    return MinimalSet(current, rate, mean, full_rate, steps)


def grow_candidate_pool(
    model,
    tokenizer,
    sae: SAE,
    prompts: Sequence[str],
    ranked: Sequence[int],
    refusal_tokens: Sequence[int],
    *,
    start: int,
    min_full_flip: float,
    threshold: float = 0.0,
    layer: int | None = None,
    backend: str = "auto",
    edit: Edit | str = "ablate",
    skip_bos: bool = True,
) -> tuple[int, list[dict]]:
    """How many of the ``ranked`` candidates (best first) the search starts from: ``start``, doubled
    while ablating them all flips fewer than ``min_full_flip`` of ``prompts``, up to all of them.

    Returns ``(n, steps)``, with one ``{"n", "full_flip_rate"}`` per pool size tried.
    """
    if not ranked:
        raise ValueError("ranked: expected at least one candidate feature")
    if start < 1:
        raise ValueError(f"start: expected >= 1, got {start}")
    n, steps = min(start, len(ranked)), []
    while True:
        full = edit_scores(model, tokenizer, sae, prompts, [list(ranked[:n])], refusal_tokens, layer=layer, backend=backend,
                              edit=edit, skip_bos=skip_bos)[0]
        steps.append({"n": n, "full_flip_rate": float((full < threshold).float().mean())})
        if steps[-1]["full_flip_rate"] >= min_full_flip or n >= len(ranked):
            return n, steps
        n = min(2 * n, len(ranked))


def confirm_by_generation(
    features: Sequence[int],
    removed: Sequence[int],
    complies: Callable[[list[int]], tuple[bool, str]],
) -> tuple[list[int], str | None, bool]:
    """Extend a score-minimal set until ablating it makes the reply comply.

    ``features``: the set the search kept; ``removed``: the features it removed, in removal order;
    ``complies(set)``: generates with ``set`` ablated and returns ``(judged compliant, reply)``.
    Removals are undone, last first, until the reply complies. The walk ends at the whole search
    set at the latest, so that set is tried first: when even it is refused, the answer is known
    without the generations in between. Returns ``(features, reply, complied)`` (``reply`` is None
    when there was nothing to try).
    """
    feats, removed = list(features), list(removed)
    ok, reply = complies(feats) if feats else (False, None)
    if not ok and removed:
        full = feats + removed[::-1]
        ok_full, reply_full = complies(full)
        if not ok_full:
            feats, removed, reply = full, [], reply_full
    while not ok and removed:
        feats.append(removed.pop())
        ok, reply = complies(feats)
    return feats, reply, ok
