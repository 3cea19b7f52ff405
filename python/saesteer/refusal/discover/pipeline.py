"""discover's pipeline: the inputs checked before any work, then each stage in order, the results
handed to ``on_stage`` as each stage finishes (``saesteer discover`` writes results.json there, so a
killed run leaves what it had)."""

from __future__ import annotations

import time
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from ...hf import check_layer, find_layers, hidden_size, parse_hook
from ...sae import SAE
from ..chat import chat_template_kind, check_chat_template
from ..saeset import SAESet
from .amplify import amplify_stage
from .candidates import candidate_stage
from .config import DiscoverConfig
from .direction import direction_stage, refusal_check
from .dormant import dormant_stage
from .interactions import interaction_stage
from .results import STAGES, DiscoverResult, DiscoverResults
from .search import search_stage
from .splits import split_prompts
from .trigger import trigger_stage
from .verification import verification_stage

__all__ = ["discover", "check_inputs"]


def check_inputs(model, sae: SAE | SAESet, harmful, harmless, cfg: DiscoverConfig) -> SAESet:
    """Validate the inputs before any work; returns the SAEs as a set (one SAE: a set of one, read
    at ``cfg.layer`` or its hook's layer)."""
    _, blocks = find_layers(model)
    hidden = hidden_size(model)
    if isinstance(sae, SAESet) and len(sae) > 1 and cfg.layer is not None:
        raise ValueError("layer: overrides one SAE's hook layer; with several SAEs each reads its own hook point")
    many = isinstance(sae, SAESet)
    saes = SAESet.of(sae, cfg.layer) if not many else sae
    for name, s, lay in zip(saes.names, saes.saes, saes.layers):
        who = f"sae: {name!r}" if many else "sae:"
        if s.hook_name:
            try:
                parse_hook(s.hook_name)
            except ValueError as e:
                raise ValueError(f"{who} {str(e).removeprefix('hook: ')}") from None
        if hidden is not None and s.d_in != hidden:
            raise ValueError(f"{who} d_in={s.d_in} but the model's hidden size is {hidden}; this SAE is for another model")
        check_layer(lay, len(blocks), f"sae: {name!r} reads layer" if many else "layer")
    if not harmful or not harmless:
        raise ValueError("prompts: both the harmful and the harmless prompt sets must be non-empty")
    cfg.validate()
    return saes


def discover(
    model,
    tokenizer,
    sae: SAE | SAESet,
    harmful: Sequence[str],
    harmless: Sequence[str],
    config: DiscoverConfig | None = None,
    *,
    capability=None,
    heldout_harmful: Sequence[str] | None = None,
    heldout_harmless: Sequence[str] | None = None,
    progress: bool = True,
    on_stage: Callable[[DiscoverResult], None] | None = None,
) -> DiscoverResult:
    """Run every stage on ``model`` with ``sae``; returns the results, the direction and a spec.

    First the unsteered refusal rate on the held-out harmful prompts: below
    :data:`~saesteer.refusal.validity.MIN_REFUSAL_RATE` discover stops there (results with
    ``valid: false``, no spec) unless ``config.force``.

    ``sae``: one SAE, or an :class:`~saesteer.refusal.saeset.SAESet` of several at their own hook
    points; then the results name features as ``[sae name, feature]``, ``dormant_downstream``
    reports the later SAEs' features the earlier SAEs' part of the minimal set wakes, and the spec's
    ``edits`` hold one entry per SAE.

    ``capability``: an optional :class:`~saesteer.refusal.evaluate.CapabilityTask` whose accuracy
    is measured with and without the minimal set edited.
    ``heldout_harmful`` / ``heldout_harmless``: prompts kept apart for the generation-judged ASR and
    direction rates (default: ``cfg.n_heldout`` of ``harmful`` and the harmless val split); then
    every prompt of ``harmful`` / ``harmless`` serves the direction, its selection and the search.
    ``on_stage``: called with the results so far after each stage.
    """
    cfg = config or DiscoverConfig()
    saes = check_inputs(model, sae, harmful, harmless, cfg)
    check_chat_template(tokenizer)
    torch.manual_seed(cfg.seed)
    t0 = time.time()
    splits = split_prompts(harmful, harmless, cfg, heldout_harmful, heldout_harmless)
    res = DiscoverResults(cfg, saes, chat_template_kind(tokenizer), splits)
    bar = tqdm(total=len(STAGES), desc="discover", disable=not progress)

    def done(stage: str) -> DiscoverResult:
        res.stages_done.append(stage)
        res.timings[stage] = round(time.time() - t0, 1)
        res.timings["total"] = res.timings[stage]
        bar.update()
        out = _result(res)
        if on_stage is not None:
            on_stage(out)
        return out

    bar.set_postfix_str("unsteered refusal")
    res.refusal = refusal_check(model, tokenizer, splits.held, cfg)
    out = done("refusal")
    if res.refusal.nothing_to_jailbreak and not cfg.force:
        res.stopped = res.refusal.line
        bar.close()
        return _result(res)

    bar.set_postfix_str("refusal direction")
    ds = direction_stage(model, tokenizer, splits, cfg, progress=progress)
    res.direction, res.splits = ds, ds.splits or splits
    res.refusal_tokens_text = [tokenizer.decode([t]) for t in ds.refusal_tokens]
    done("direction")

    bar.set_postfix_str("candidates")
    res.candidates = candidate_stage(model, tokenizer, saes, res.splits, ds, cfg)
    done("candidates")

    bar.set_postfix_str("greedy search")
    res.search = search_stage(model, tokenizer, saes, res.splits, ds.refusal_tokens, res.candidates.ids, cfg, progress=progress)
    res.amplify = amplify_stage(model, tokenizer, saes, res.splits, res.search.pooled.features or res.candidates.ids,
                                res.candidates.site_directions, cfg)
    done("search")

    if cfg.trigger:
        bar.set_postfix_str("trigger")
        res.trigger = trigger_stage(model, tokenizer, saes, res.splits, res.spec_features(), cfg)
    done("trigger")

    bar.set_postfix_str("interactions")
    res.interactions = interaction_stage(model, tokenizer, saes, res.splits, ds.refusal_tokens, res.search.pooled.features, cfg)
    done("interactions")

    bar.set_postfix_str("ASR by generation")
    res.verification = verification_stage(model, tokenizer, saes, res.splits, ds, res.candidates, res.search, res.interactions,
                                          cfg, capability=capability, base_replies=res.refusal.replies)
    done("verification")

    bar.set_postfix_str("dormant features")
    vs = res.verification
    res.dormant_downstream = dormant_stage(model, tokenizer, saes, res.splits.held[:8], vs.base_replies[:8],
                                           vs.minimal_set_replies[:8], res.search.pooled.features, cfg)
    out = done("dormant")
    bar.close()
    return out


def _result(res: DiscoverResults) -> DiscoverResult:
    d = res.direction.direction if res.direction is not None else None
    return DiscoverResult(res.to_dict(), None if d is None else d.direction, res.spec(),
                          d.reference if d is not None and d.ablation == "affine" else None, res, res.amplify_spec())
