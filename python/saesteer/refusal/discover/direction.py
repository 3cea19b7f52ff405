"""discover's first stages: the unsteered refusal rate (before anything expensive), then the refusal
tokens, Arditi et al.'s prompt filter and the refusal direction."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from ..chat import find_refusal_tokens, generate
from ..direction import DirectionResult, select_direction
from ..judges import SubstringJudge
from ..validity import MIN_REFUSAL_RATE, nothing_to_jailbreak, refusal_line
from .config import DiscoverConfig
from .splits import PromptSplits, filter_splits

__all__ = ["RefusalCheck", "refusal_check", "DirectionStage", "direction_stage"]


@dataclass
class RefusalCheck:
    """The unsteered model's replies to the held-out harmful prompts, judged by the substring judge
    at ``max_new_tokens``: how many it refuses, and whether that is too few to jailbreak
    (:data:`~saesteer.refusal.validity.MIN_REFUSAL_RATE`)."""

    n_refused: int
    n: int
    max_new_tokens: int
    replies: list[str] = field(repr=False, default_factory=list)

    @property
    def nothing_to_jailbreak(self) -> bool:
        return nothing_to_jailbreak(self.n_refused, self.n)

    @property
    def line(self) -> str:
        return refusal_line(self.n_refused, self.n)

    def to_dict(self) -> dict:
        return {"refused": self.n_refused, "n_prompts": self.n, "rate": self.n_refused / max(self.n, 1),
                "min_rate": MIN_REFUSAL_RATE, "nothing_to_jailbreak": self.nothing_to_jailbreak,
                "max_new_tokens": self.max_new_tokens, "judge": "substring"}


def refusal_check(model, tokenizer, prompts: Sequence[str], cfg: DiscoverConfig) -> RefusalCheck:
    """Generate unsteered replies to ``prompts`` (the held-out harmful ones) and count refusals."""
    replies = generate(model, tokenizer, list(prompts), max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
                       progress=False)
    refused = sum(SubstringJudge()(list(prompts), replies))
    return RefusalCheck(int(refused), len(prompts), cfg.max_new_tokens, replies)


@dataclass
class DirectionStage:
    refusal_tokens: list[int]
    direction: DirectionResult
    splits: PromptSplits | None = None  # the splits with the direction's prompts filtered
    filtering: dict = field(default_factory=dict)  # per split: prompts given and kept


def direction_stage(model, tokenizer, splits: PromptSplits, cfg: DiscoverConfig, *, progress: bool = True) -> DirectionStage:
    """The refusal tokens (first tokens of the model's own refusals), the filtered prompts and the
    selected direction."""
    rtoks = find_refusal_tokens(model, tokenizer, splits.selection, max_new_tokens=8)
    filtering = {}
    if cfg.filter_prompts:
        splits, filtering = filter_splits(model, tokenizer, splits, rtoks, cfg)
    d = select_direction(
        model, tokenizer, splits.direction, splits.harmless_direction, splits.selection,
        splits.harmless_val or splits.harmless_direction, rtoks,
        max_layer_frac=cfg.max_layer_frac, batch_size=cfg.batch_size, progress=progress, ablation=cfg.ablation,
        score_all=cfg.score_all_directions,
    )
    return DirectionStage(rtoks, d, splits, filtering)
