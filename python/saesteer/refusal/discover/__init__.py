"""``saesteer discover``: the refusal-feature pipeline of Arditi et al., Yeo et al., Prakash et al.
and O'Brien et al., one module per stage, run in order by :func:`discover` (:mod:`.pipeline`):

0. :func:`~.direction.refusal_check`: the unsteered refusal rate on the held-out harmful prompts;
   below :data:`~saesteer.refusal.validity.MIN_REFUSAL_RATE` there is nothing to jailbreak and
   discover stops (unless ``force``);
1. :func:`~.splits.split_prompts` / :func:`~.direction.direction_stage`: held-out, direction,
   selection and search prompts; refusal tokens, Arditi's filter and the refusal direction
   (difference in means, selected by bypass / induce / KL, candidates scored in batches);
2. :func:`~.candidates.candidate_stage`: candidate SAE features (integrated gradients towards the
   direction-ablated codes, zero-ablation attribution, or cosine to the direction at the SAE's hook
   point), an optional per-SAE pre-filter, the pool the search starts from, Yeo et al.'s top k;
3. :func:`~.search.search_stage`: greedy minimal sets under ``cfg.edit``, pooled and per prompt;
   :func:`~.amplify.amplify_stage`: the refusal feature(s) to amplify (O'Brien et al.);
   :func:`~.trigger.trigger_stage` (unless ``cfg.trigger`` is off): the trigger for conditional
   steering, the specs' ``when`` (features chosen on the direction split, threshold on val);
4. :func:`~.interactions.interaction_stage`: factorization-machine interactions, verified;
5. :func:`~.verification.verification_stage`: attack success rate by generation on held-out
   prompts, the per-prompt sets confirmed by generation, the direction judged by generation,
   capability;
6. :func:`~.dormant.dormant_stage`: dormant features downstream of the edit (several SAEs).

One SAE is an :class:`~saesteer.refusal.saeset.SAESet` of one: every stage works on its flat ids.
:class:`~.results.DiscoverResults` holds each stage's typed output and renders ``results.json``;
:func:`~.report.write_discover_outputs` writes it, ``direction.safetensors``, ``spec.json`` (for
``saesteer eval`` / ``generate``), and the plots and ``report.md`` rendered from the typed results.
"""

from ..validity import MIN_REFUSAL_RATE
from .amplify import Amplify, amplify_stage
from .candidates import CandidateStage, candidate_stage
from .config import DiscoverConfig, parse_select
from .direction import DirectionStage, RefusalCheck, direction_stage, refusal_check
from .dormant import dormant_stage
from .interactions import interaction_stage
from .pipeline import check_inputs, discover
from .report import discover_plots, discover_report, summary_lines, write_discover_outputs
from .results import MIN_BASELINE_REFUSAL, STAGES, DiscoverResult, DiscoverResults, result_warnings
from .search import SearchStage, search_stage
from .splits import PromptSplits, filter_splits, split_prompts
from .trigger import TriggerStage, trigger_stage
from .verification import (
    AttackSuccess,
    Capability,
    ConditionRates,
    DirectionGeneration,
    PromptSet,
    VerificationStage,
    editing,
    verification_stage,
)

__all__ = [
    "DiscoverConfig",
    "DiscoverResult",
    "DiscoverResults",
    "PromptSplits",
    "RefusalCheck",
    "DirectionStage",
    "CandidateStage",
    "SearchStage",
    "VerificationStage",
    "AttackSuccess",
    "ConditionRates",
    "PromptSet",
    "DirectionGeneration",
    "Capability",
    "Amplify",
    "TriggerStage",
    "STAGES",
    "discover",
    "check_inputs",
    "split_prompts",
    "filter_splits",
    "refusal_check",
    "direction_stage",
    "candidate_stage",
    "search_stage",
    "amplify_stage",
    "trigger_stage",
    "interaction_stage",
    "verification_stage",
    "dormant_stage",
    "editing",
    "parse_select",
    "write_discover_outputs",
    "discover_report",
    "discover_plots",
    "summary_lines",
    "result_warnings",
    "MIN_REFUSAL_RATE",
    "MIN_BASELINE_REFUSAL",
]
