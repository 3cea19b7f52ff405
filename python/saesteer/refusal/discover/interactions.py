"""discover's interactions: a factorization machine over the minimal set and the most active other
features, its strongest pairs verified by real ablations (:mod:`saesteer.refusal.interactions`)."""

from __future__ import annotations

from itertools import zip_longest
from typing import Sequence

from ..features import site_residuals
from ..interactions import Interactions, active_features, find_interactions
from ..saeset import SAESet
from .candidates import edit_kw
from .config import DiscoverConfig
from .splits import PromptSplits

__all__ = ["interaction_stage"]


def interaction_stage(model, tokenizer, saes: SAESet, splits: PromptSplits, refusal_tokens: Sequence[int],
                      minimal_set: Sequence[int], cfg: DiscoverConfig) -> Interactions:
    """FM interactions among the minimal set and the ``cfg.fm_extra`` features most active at the
    search prompts' last position that are not in it (Prakash et al.'s "remaining active features";
    with several SAEs the most active of each SAE in turn, since activation scales differ)."""
    own = saes.split(minimal_set)
    ranked = []
    for k, s in enumerate(saes.saes):
        last = site_residuals(model, tokenizer, s, splits.search, layer=saes.layers[k], batch_size=cfg.batch_size)
        ranked.append([saes.offsets[k] + i for i in active_features(s, last, own[k], cfg.fm_extra)])
    others = [g for row in zip_longest(*ranked) for g in row if g is not None][: cfg.fm_extra]
    return find_interactions(model, tokenizer, saes, splits.search, list(minimal_set), others, refusal_tokens,
                             n_samples=cfg.fm_samples, seed=cfg.seed, **edit_kw(cfg))
