"""Proposing a trigger for conditional steering: the SAE features that separate the harmful prompts
the model refuses from the harmless ones it answers, as a spec's ``when``
(:mod:`saesteer.steering.condition`).

:func:`propose_trigger` splits each prompt set into a selection half and a validation half. On the
selection half it reads every prompt with :func:`saesteer.inspect` (chat-formatted, the BOS token
left out) and ranks the features by Cohen's d of their per-prompt ``reduce`` (max or mean over the
prompt's tokens) between the two classes (:func:`saesteer.hf.contrast`), keeping those higher on
the harmful prompts. For each candidate count it reads the summed trigger score on the validation
half through the same hooks that will gate the edit (a monitor), and keeps the count and threshold
with the best balanced accuracy there (the threshold halfway between two neighbouring scores).
With ``target_recall`` the threshold of each count is instead the highest one that still catches
that share of the validation harmful prompts, and the count with the best balanced accuracy at
that recall (the fewest harmless prompts caught) is kept: a trigger that gates a safety edit errs
towards firing, since a request it misses is not steered, while a harmless prompt it catches only
costs what the edit costs there. Requests shaped differently from the validation ones (other
jailbreak wrappers) score lower, so a validation recall above the one wanted elsewhere leaves
room for that shift.
Those validation numbers chose the trigger, so they are optimistic: measure it on other prompts.
A caller with its own split (``saesteer discover``: its direction prompts select, its val prompts
validate) passes the validation prompts as ``validation``, and every prompt of ``harmful`` /
``harmless`` selects.
"""

from __future__ import annotations

import random
from typing import Sequence

import torch

from ..hf import contrast, inspect, steer
from .chat import tokenize_prompts
from .turns import Prompt

__all__ = ["propose_trigger", "trigger_scores"]


@torch.no_grad()
def trigger_scores(model, tokenizer, sae, prompts: Sequence[Prompt], when: dict, *, batch_size: int = 16) -> torch.Tensor:
    """The prompt score ``[N]`` of the condition ``when`` on each chat-formatted prompt, read by a
    monitor (the HF hooks' own decision code: BOS and padding left out)."""
    device = next(model.parameters()).device
    out = []
    for b in range(0, len(prompts), batch_size):
        enc = tokenize_prompts(tokenizer, list(prompts[b : b + batch_size]), device)
        with steer(model, sae, None, when=when) as h:
            model(**enc)
        out.append(h.conditions[0].score.float().cpu())
    return torch.cat(out) if out else torch.empty(0)


def _best_threshold(pos: torch.Tensor, neg: torch.Tensor, target_recall: float | None = None) -> tuple[float, float, float, float]:
    """``(threshold, balanced accuracy, true positive rate, false positive rate)`` of the best cut
    ``score > threshold`` between positives and negatives (halfway between neighbouring scores): the
    one with the best balanced accuracy, or with ``target_recall`` the highest cut whose true
    positive rate is at least ``target_recall``."""
    s = torch.cat([pos, neg]).sort().values
    cuts = torch.cat([s[:1] - 1.0, (s[1:] + s[:-1]) / 2])
    best = None
    for t in cuts.tolist():
        tpr = float((pos > t).float().mean())
        fpr = float((neg > t).float().mean())
        bal = (tpr + 1.0 - fpr) / 2
        if target_recall is not None:
            if tpr >= target_recall and (best is None or t > best[0]):
                best = (t, bal, tpr, fpr)
        elif best is None or bal > best[1]:
            best = (t, bal, tpr, fpr)
    return best


def propose_trigger(
    model,
    tokenizer,
    sae,
    harmful: Sequence[Prompt],
    harmless: Sequence[Prompt],
    *,
    n_features: Sequence[int] = (1, 2, 4, 8),
    reduce: str = "max",
    scope: str = "prompt",
    val_fraction: float = 0.5,
    seed: int = 0,
    batch_size: int = 16,
    k: int = 16,
    validation: tuple[Sequence[Prompt], Sequence[Prompt]] | None = None,
    target_recall: float | None = None,
) -> dict:
    """A ``when`` that fires on ``harmful`` (the prompts the model refuses) and not on ``harmless``.

    Returns ``{"when": {features, threshold, reduce, scope}, "candidates": [contrast rows],
    "validation": [{"n_features", "threshold", "balanced_accuracy", "tpr", "fpr"}, ...] (one per
    count tried), "n_selection": (harmful, harmless), "n_validation": (harmful, harmless)}``; the
    chosen entry of ``validation`` is the one whose features ``when`` holds. See the module docstring.

    ``validation``: ``(harmful, harmless)`` prompts that choose the count and threshold; then
    ``harmful`` / ``harmless`` only select the features (at least 2 prompts per class each) and
    ``val_fraction`` and ``seed`` are unused.

    ``target_recall``: a share in (0, 1] of the validation harmful prompts the trigger must catch;
    each count's threshold is the highest that does, and the count with the best balanced accuracy
    there is kept (default None: the threshold with the best balanced accuracy).
    """
    if reduce not in ("max", "mean"):
        raise ValueError(f"reduce: expected 'max' or 'mean' (a trigger reduced over the prompt), got {reduce!r}")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction: expected a number in (0, 1), got {val_fraction!r}")
    if target_recall is not None and (isinstance(target_recall, bool) or not isinstance(target_recall, (int, float))
                                      or not 0 < target_recall <= 1):
        raise ValueError(f"target_recall: expected a share in (0, 1] of the harmful validation prompts, got {target_recall!r}")
    counts = sorted({int(n) for n in n_features})
    if not counts or counts[0] < 1:
        raise ValueError(f"n_features: expected positive counts, got {list(n_features)!r}")
    if validation is not None:
        sel_h, sel_l, (val_h, val_l) = list(harmful), list(harmless), (list(v) for v in validation)
        for name, prompts in (("harmful", sel_h), ("harmless", sel_l), ("validation[0]", val_h), ("validation[1]", val_l)):
            if len(prompts) < 2:
                raise ValueError(f"{name}: a trigger needs at least 2 prompts per class to select and 2 to validate, "
                                 f"got {len(prompts)}")
    else:
        rng = random.Random(seed)
        splits = []
        for name, prompts in (("harmful", list(harmful)), ("harmless", list(harmless))):
            if len(prompts) < 4:
                raise ValueError(f"{name}: a trigger needs at least 4 prompts per class (2 to select, 2 to validate), got {len(prompts)}")
            idx = list(range(len(prompts)))
            rng.shuffle(idx)
            n_val = min(max(2, round(len(prompts) * val_fraction)), len(prompts) - 2)
            splits.append(([prompts[i] for i in idx[n_val:]], [prompts[i] for i in idx[:n_val]]))
        (sel_h, val_h), (sel_l, val_l) = splits
    device = next(model.parameters()).device

    def read(prompts):
        return [inspect(model, sae, tokenize_prompts(tokenizer, prompts[b : b + batch_size], device), k=k)
                for b in range(0, len(prompts), batch_size)]

    rows = contrast(read(sel_h), read(sel_l), top=max(counts) * 4, by=reduce)
    cands = [r for r in rows if r["d"] > 0]
    if not cands:
        raise ValueError("harmful: no SAE feature is more active on the harmful prompts than on the harmless ones")
    tried = []
    for n in counts:
        if n > len(cands) and tried:
            break
        feats = [r["feature"] for r in cands[:n]]
        when = {"features": feats, "threshold": 0.0, "reduce": reduce, "scope": scope}
        pos = trigger_scores(model, tokenizer, sae, val_h, when, batch_size=batch_size)
        neg = trigger_scores(model, tokenizer, sae, val_l, when, batch_size=batch_size)
        thr, bal, tpr, fpr = _best_threshold(pos, neg, target_recall)
        tried.append({"n_features": len(feats), "features": feats, "threshold": thr, "balanced_accuracy": bal, "tpr": tpr, "fpr": fpr})
    best = max(tried, key=lambda r: (r["balanced_accuracy"], -r["n_features"]))
    when = {"features": best["features"], "threshold": best["threshold"], "reduce": reduce, "scope": scope}
    return {"when": when, "candidates": cands, "validation": tried, "n_selection": (len(sel_h), len(sel_l)),
            "n_validation": (len(val_h), len(val_l))}
