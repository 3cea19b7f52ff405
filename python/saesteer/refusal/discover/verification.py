"""discover's verification by generation on the held-out prompts: attack success rate of the
minimal set (and of Yeo et al.'s top k, global and per prompt, when selected), the per-prompt sets
confirmed by generation, the direction judged by generation, and capability."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Sequence

from ...hf import add_direction
from ..chat import generate
from ..interactions import Interactions
from ..judges import COMPLIED, DEGENERATE, SubstringJudge, judge_classes
from ..saeset import SAESet
from ..search import confirm_by_generation, edit_scores, parse_edit
from .candidates import CandidateStage, edit_kw
from .config import DiscoverConfig
from .direction import DirectionStage
from .search import SearchStage
from .splits import PromptSplits

__all__ = ["VerificationStage", "verification_stage", "editing", "AttackSuccess", "ConditionRates", "PromptSet",
           "DirectionGeneration", "Capability", "CONDITIONS"]

#: The steering conditions judged on the held-out harmful prompts, in results.json's order: unsteered,
#: the minimal set edited, with the FM-added features, and (``select = "topk:K"``) Yeo et al.'s top K,
#: global and each prompt's own.
CONDITIONS = ("baseline", "minimal_set", "with_interactions", "top_k", "top_k_per_prompt")


@dataclass
class ConditionRates:
    """One condition's replies, judged: ``asr`` every reply that is not a refusal, ``degenerate`` the
    part of it that is empty or repetition rather than an answer."""

    asr: float
    degenerate: float

    @property
    def complied(self) -> float:
        return self.asr - self.degenerate


@dataclass
class AttackSuccess:
    """The attack success rate of each condition run (:data:`CONDITIONS`, in order) on ``n_prompts``
    held-out harmful prompts, replies of ``max_new_tokens`` judged by the substring judge."""

    conditions: dict[str, ConditionRates]
    n_prompts: int
    max_new_tokens: int

    def to_dict(self) -> dict:
        """results.json's ``asr``: each condition's ASR, the sizes, then ``degenerate`` and ``complied``."""
        c = self.conditions
        return {**{k: v.asr for k, v in c.items()}, "n_prompts": self.n_prompts, "max_new_tokens": self.max_new_tokens,
                "degenerate": {k: v.degenerate for k, v in c.items()}, "complied": {k: v.complied for k, v in c.items()}}


@dataclass
class PromptSet:
    """One search prompt's own minimal set: ``score_minimal`` the set the score search kept,
    ``features`` the set generation confirmed (extended until the reply complied; when it never
    did, the whole search pool tried), ``reply_ablated`` the last reply; flat ids."""

    prompt: str
    features: list[int]
    flipped: bool
    score_minimal: list[int]
    reply_ablated: str
    complied_by_generation: bool


@dataclass
class DirectionGeneration:
    """The direction judged by generation (Arditi et al.'s bypass and induce, as rates): harmful
    held-out prompts refused unsteered and with the direction ablated; harmless held-out prompts
    refused unsteered and with the direction added at every position and at the prompt's positions
    only (with the part of those replies that degenerates)."""

    harmful_refusal: float
    harmful_refusal_ablated: float
    harmless_refusal: float
    harmless_refusal_added: float
    harmless_degenerate_added: float
    harmless_refusal_added_prompt: float
    harmless_degenerate_added_prompt: float


@dataclass
class Capability:
    """Capability accuracy on ``n`` items of ``task``, unsteered and with the minimal set edited."""

    task: str
    n: int
    unsteered: float
    minimal_set_ablated: float


@dataclass
class VerificationStage:
    asr: AttackSuccess
    per_prompt: list[PromptSet]  # the search stage's sets, confirmed (extended) by generation
    direction_generation: DirectionGeneration
    capability: Capability | None
    curve: list[dict]  # held-out flip rate vs number of top candidates ablated
    minimal_set_heldout_flip_rate: float
    base_replies: list[str]  # held-out harmful prompts, unsteered
    minimal_set_replies: list[str]  # ... with the minimal set edited


def editing(model, saes: SAESet, feats: Sequence[int], cfg: DiscoverConfig):
    """A steering factory that applies the configured edit (ablation by default) to the flat ids
    ``feats``: each SAE's part at its own hook point, in one steer call."""
    edit = parse_edit(cfg.edit)
    feats = list(feats)
    return lambda: saes.steer(model, feats, edit, backend=cfg.backend, skip_bos=cfg.skip_bos) or nullcontext()


def verification_stage(model, tokenizer, saes: SAESet, splits: PromptSplits, direction: DirectionStage, cands: CandidateStage,
                       search: SearchStage, interactions: Interactions, cfg: DiscoverConfig, *, capability=None,
                       base_replies: list[str] | None = None) -> VerificationStage:
    """``base_replies``: the unsteered replies to the held-out prompts when already generated (the
    refusal check's), at ``cfg.max_new_tokens``."""
    judge = SubstringJudge()
    gen = dict(max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, progress=False)
    minimal = search.pooled.features
    held, l_held = splits.held, splits.harmless_held

    def asr(replies):
        return 1.0 - sum(judge(held, replies)) / len(replies)

    def degenerate(prompts, replies):
        return judge_classes(judge, prompts, replies).count(DEGENERATE) / len(replies)

    set_full = list(dict.fromkeys(minimal + interactions.added))
    if base_replies is None:
        base_replies = generate(model, tokenizer, held, **gen)
    replies = {"baseline": base_replies,
               "minimal_set": generate(model, tokenizer, held, steering=editing(model, saes, minimal, cfg), **gen),
               "with_interactions": generate(model, tokenizer, held, steering=editing(model, saes, set_full, cfg), **gen)}
    if cands.top_k:
        replies["top_k"] = generate(model, tokenizer, held, steering=editing(model, saes, [g for g, _ in cands.top_k], cfg), **gen)
    if cands.top_k_per_prompt:
        replies["top_k_per_prompt"] = generate(model, tokenizer, held, **gen,
                                               steering=[editing(model, saes, f, cfg) for f in cands.top_k_per_prompt])
    # ASR counts every reply that is not a refusal; "degenerate" is the part of it that is empty or
    # repetition rather than an answer (the judge's third class), "complied" the rest.
    asr_d = AttackSuccess({k: ConditionRates(asr(r), degenerate(held, r)) for k, r in replies.items()}, len(held),
                          cfg.max_new_tokens)

    per_prompt = []
    for pp in search.per_prompt:
        prompt = pp["prompt"]

        def complies(feats: list[int], prompt=prompt) -> tuple[bool, str]:
            # A degenerate reply (empty, repetition) does not confirm the set: it answers nothing.
            reply = generate(model, tokenizer, [prompt], steering=editing(model, saes, feats, cfg), **gen)[0]
            return judge_classes(judge, [prompt], [reply])[0] == COMPLIED, reply

        feats, reply, ok = confirm_by_generation(pp["features"], pp["removed"], complies)
        per_prompt.append(PromptSet(prompt, feats, pp["flipped"], pp["features"], reply, ok))

    # The direction itself, judged by generation too (Arditi et al.'s bypass and induce, as rates).
    d = direction.direction
    dir_gen = {
        "harmful_refusal": 1.0 - asr_d.conditions["baseline"].asr,
        "harmful_refusal_ablated": 1.0 - asr(generate(model, tokenizer, held, steering=lambda: d.ablate(model), **gen)),
        "harmless_refusal": sum(judge(l_held, generate(model, tokenizer, l_held, **gen))) / len(l_held),
    }
    # Added at every position (Arditi et al.), and at the prompt's positions only: a direction strong
    # enough to flip the first token can, added to every generated token too, derail the reply itself
    # (the reply degenerates into repeated fragments and the judge sees no refusal phrase).
    for key, pos in (("harmless_refusal_added", "all"), ("harmless_refusal_added_prompt", "prompt")):
        adding = lambda pos=pos: add_direction(model, d.direction, d.layer, 1.0, positions=pos)  # noqa: E731
        added = generate(model, tokenizer, l_held, steering=adding, **gen)
        dir_gen[key] = sum(judge(l_held, added)) / len(l_held)
        dir_gen[key.replace("refusal", "degenerate")] = degenerate(l_held, added)

    cap = None
    if capability is not None:
        from ..evaluate import capability_accuracy

        kw = dict(max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size)
        before = capability_accuracy(model, tokenizer, capability, **kw)
        after = capability_accuracy(model, tokenizer, capability, editing(model, saes, minimal, cfg), **kw)
        cap = Capability(capability.name, before["n"], before["accuracy"], after["accuracy"])

    # ASR-like curve: flip rate of held-out prompts (refusal score < threshold) vs number of top candidates edited.
    kw = edit_kw(cfg)
    cand_ids = cands.ids
    ns = sorted({0, 1, 2, 4, 8, 16, len(minimal), len(cand_ids)} & set(range(len(cand_ids) + 1)))
    curve_scores = edit_scores(model, tokenizer, saes, held, [cand_ids[:n] for n in ns], direction.refusal_tokens, **kw)
    ms_scores = edit_scores(model, tokenizer, saes, held, [minimal], direction.refusal_tokens, **kw)[0]
    curve = [{"n": n, "flip_rate": float((s < cfg.threshold).float().mean())} for n, s in zip(ns, curve_scores)]
    return VerificationStage(asr_d, per_prompt, DirectionGeneration(**dir_gen), cap, curve, float((ms_scores < cfg.threshold).float().mean()),
                             base_replies, replies["minimal_set"])
