"""discover's greedy minimal sets (Prakash et al.'s stage 2) under ``cfg.edit``: pooled over the
search prompts, and per prompt."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..saeset import SAESet
from ..search import MinimalSet, greedy_minimal_set
from .candidates import edit_kw
from .config import DiscoverConfig
from .splits import PromptSplits

__all__ = ["SearchStage", "search_stage"]


@dataclass
class SearchStage:
    pooled: MinimalSet  # over all search prompts
    per_prompt: list[dict]  # {prompt, features, flipped, removed} for the first cfg.per_prompt prompts


def search_stage(model, tokenizer, saes: SAESet, splits: PromptSplits, refusal_tokens: Sequence[int], candidates: Sequence[int],
                 cfg: DiscoverConfig, *, progress: bool = True) -> SearchStage:
    kw = edit_kw(cfg)
    pooled = greedy_minimal_set(model, tokenizer, saes, splits.search, candidates, refusal_tokens, threshold=cfg.threshold,
                                keep=cfg.keep, progress=progress, **kw)
    per_prompt = []
    for p in splits.search[: cfg.per_prompt]:
        ms = greedy_minimal_set(model, tokenizer, saes, [p], candidates, refusal_tokens, threshold=cfg.threshold, keep=1.0,
                                progress=False, **kw)
        per_prompt.append({"prompt": p, "features": ms.features, "flipped": ms.flip_rate > 0, "removed": [st[0] for st in ms.steps]})
    return SearchStage(pooled, per_prompt)
