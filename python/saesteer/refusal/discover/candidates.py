"""discover's candidate features: ranked by attribution (Yeo et al.'s integrated gradients or
zero-ablation attribution) or by cosine to the refusal direction (Prakash et al.'s stage 1), after
an optional per-SAE pre-filter by cosine (Yeo et al.: 10 per layer by positive cosine); the pool the
greedy search starts from; and with ``select = "topk:K"`` Yeo et al.'s top K by attribution, global
and per prompt."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..features import Attribution, attribution, rank_by_cosine, site_residuals
from ..saeset import SAESet
from ..search import grow_candidate_pool
from .config import DiscoverConfig
from .direction import DirectionStage
from .splits import PromptSplits

__all__ = ["CandidateStage", "candidate_stage", "site_directions", "prefilter", "edit_kw"]


@dataclass
class CandidateStage:
    candidates: list[tuple[int, float]]  # the pool the search starts from, best first, with scores
    pool_steps: list[dict]  # pool size and the search prompts' flip rate, per growth step
    # select = "topk:K": the top K by attribution regardless of the direction the direction's
    # ablation moves them (global, over the selection prompts), and each held-out prompt's own top K.
    top_k: list[tuple[int, float]] = field(default_factory=list)
    top_k_per_prompt: list[list[int]] = field(default_factory=list)
    prefiltered: int | None = None  # candidates per SAE after the pre-filter (None: no pre-filter)
    site_directions: list[torch.Tensor] = field(default_factory=list, repr=False)  # per SAE

    @property
    def ids(self) -> list[int]:
        return [i for i, _ in self.candidates]


def edit_kw(cfg: DiscoverConfig) -> dict:
    """The search functions' keyword arguments for the configured edit and backend."""
    from ..search import parse_edit

    return dict(backend=cfg.backend, edit=parse_edit(cfg.edit), skip_bos=cfg.skip_bos)


def site_directions(model, tokenizer, saes: SAESet, splits: PromptSplits, position: int, batch_size: int) -> list[torch.Tensor]:
    """Per SAE, the difference in means (harmful - harmless direction prompts) at its own hook point
    and the selected prompt position: the refusal direction where that SAE reads the stream."""
    out = []
    for s, layer in zip(saes.saes, saes.layers):
        kw = dict(position=position, layer=layer, batch_size=batch_size)
        mh = site_residuals(model, tokenizer, s, splits.direction, **kw).double().mean(0)
        ml = site_residuals(model, tokenizer, s, splits.harmless_direction, **kw).double().mean(0)
        out.append((mh - ml).float())
    return out


def prefilter(saes: SAESet, directions: list[torch.Tensor], n: int, sign: str) -> list[list[int]]:
    """Per SAE, the local ids of its ``n`` decoder rows with the largest cosine to its site's
    direction: ``sign="positive"`` (Yeo et al.) by cosine, ``"abs"`` by |cosine| (both ends: on the
    organism a third of the single-SAE minimal set points away from the direction)."""
    out = []
    for s, d in zip(saes.saes, directions):
        if sign == "positive":
            out.append([i for i, _ in rank_by_cosine(s, d, n)])
        else:
            both = rank_by_cosine(s, d, n) + rank_by_cosine(s, -d, n)
            out.append([i for i, _ in sorted(both, key=lambda t: -abs(t[1]))[:n]])
    return out


def candidate_stage(model, tokenizer, saes: SAESet, splits: PromptSplits, direction: DirectionStage,
                    cfg: DiscoverConfig) -> CandidateStage:
    """Rank features by ``cfg.method`` (flat ids of ``saes``, one ranking over every SAE), then grow
    the pool until it flips the search prompts; with ``cfg.select = "topk:K"`` also the top K."""
    top = max(cfg.n_candidates, cfg.max_candidates)
    dirs = site_directions(model, tokenizer, saes, splits, direction.direction.position, cfg.batch_size)
    n_pre = cfg.prefilter_size(len(saes))
    allowed = prefilter(saes, dirs, n_pre, cfg.prefilter_sign) if n_pre else None
    top_k, per_prompt = [], []
    if cfg.method == "cosine":
        ranked = []
        for k, (s, d) in enumerate(zip(saes.saes, dirs)):
            got = rank_by_cosine(s, d, s.d_sae if allowed else top)
            keep = set(allowed[k]) if allowed else None
            ranked += [(saes.offsets[k] + i, c) for i, c in got if keep is None or i in keep]
        ranked = sorted(ranked, key=lambda t: -t[1])[:top]
        if cfg.top_k:
            top_k = ranked[: cfg.top_k]
    else:
        def attr_of(prompts) -> Attribution:
            return attribution(model, tokenizer, saes, prompts, direction.refusal_tokens, allowed=allowed,
                               method=cfg.attribution, ablation=lambda: direction.direction.ablate(model), steps=cfg.ig_steps)

        att = attr_of(splits.selection)
        # The search turns features down (ablation, negative scaling): the features the direction's
        # ablation turns down rank first. Yeo et al.'s top k takes the attribution alone.
        ranked = att.ranking(top, down_first=True)
        if cfg.top_k:
            top_k = att.ranking(cfg.top_k)
            per_prompt = attr_of(splits.held).top_per_prompt(cfg.top_k)
    n, steps = grow_candidate_pool(
        model, tokenizer, saes, splits.search, [i for i, _ in ranked], direction.refusal_tokens,
        start=cfg.n_candidates, min_full_flip=cfg.min_full_flip, threshold=cfg.threshold, **edit_kw(cfg),
    )
    return CandidateStage(ranked[:n], steps, top_k, per_prompt, n_pre or None, dirs)
