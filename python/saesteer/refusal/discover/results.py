"""discover's results: :class:`DiscoverResults` holds each stage's output as it finishes (typed), and
renders ``results.json``'s dict (:meth:`DiscoverResults.to_dict`), naming features as plain ids with
one SAE and as ``[sae name, id]`` pairs with several; :func:`result_warnings` says whether they mean
anything."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch

from ..interactions import Interactions
from ..report import feature_text
from ..saeset import SAESet
from ..search import parse_edit
from ..spec import SteeringSpec
from ..validity import MIN_REFUSAL_RATE
from .amplify import Amplify
from .candidates import CandidateStage
from .config import DiscoverConfig
from .direction import DirectionStage, RefusalCheck
from .search import SearchStage
from .splits import PromptSplits
from .trigger import TriggerStage
from .verification import VerificationStage

__all__ = ["DiscoverResults", "DiscoverResult", "result_warnings", "MIN_BASELINE_REFUSAL", "STAGES"]

#: The old name of :data:`saesteer.refusal.validity.MIN_REFUSAL_RATE`.
MIN_BASELINE_REFUSAL = MIN_REFUSAL_RATE

#: The stages in the order they run; ``results.json`` lists those done in ``stages_done``.
STAGES = ("refusal", "direction", "candidates", "search", "trigger", "interactions", "verification", "dormant")


@dataclass
class DiscoverResults:
    """What discover has found so far: each stage's output once it has run (None before)."""

    cfg: DiscoverConfig
    saes: SAESet
    chat_template: str
    splits: PromptSplits
    refusal: RefusalCheck | None = None
    direction: DirectionStage | None = None
    refusal_tokens_text: list[str] = field(default_factory=list)
    candidates: CandidateStage | None = None
    search: SearchStage | None = None
    interactions: Interactions | None = None
    verification: VerificationStage | None = None
    amplify: Amplify | None = None
    trigger: TriggerStage | None = None  # None: not run yet (or cfg.trigger off)
    dormant_downstream: list | None = None
    stages_done: list[str] = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    stopped: str | None = None  # why discover stopped before the last stage

    # -- features as results.json names them ----------------------------------------------------
    def name(self, g: int):
        """One SAE: the id itself; several: ``[sae name, id]``."""
        return int(g) if len(self.saes) == 1 else list(self.saes.pair(g))

    def names(self, gs) -> list:
        return [self.name(g) for g in gs]

    def feature_text(self, g: int) -> str:
        """A feature as the report writes it: its id, or ``ID@SAE`` with several SAEs."""
        return feature_text(self.name(g))

    @property
    def edit_text(self) -> str:
        """The configured edit, normalized (``"ablate"``, ``"scale:-3.0"``, ``"clamp:5.0"``)."""
        return str(parse_edit(self.cfg.edit))

    def spec(self) -> SteeringSpec | None:
        """The steering spec of the selected features (the minimal set, or the top k), or None
        before the search."""
        if self.search is None:
            return None
        edit = parse_edit(self.cfg.edit)
        return self._spec(self.spec_features(), edit.mode, edit.value, {"source": "saesteer discover", "selection": self.cfg.select})

    def spec_features(self) -> list[int]:
        """spec.json's features (flat ids): the top k with ``select = "topk:K"``, else the minimal set."""
        return [g for g, _ in self.candidates.top_k] if self.cfg.top_k else list(self.search.pooled.features)

    def amplify_spec(self) -> SteeringSpec | None:
        """O'Brien et al.'s edit: the refusal feature(s) clamped to the largest activation they
        reach on the harmful search prompts (None when no feature points along the direction)."""
        if self.amplify is None or not self.amplify.features:
            return None
        return self._spec(self.amplify.features, "clamp", list(self.amplify.values),
                          {"source": "saesteer discover", "selection": "amplify (O'Brien et al.)"})

    def _spec(self, feats: list[int], mode: str, values, notes: dict) -> SteeringSpec:
        saes = self.saes
        layer = saes.layers[0] if len(saes) == 1 else None
        # The trigger's `when`; with several SAEs only in a spec that edits the SAE it reads.
        when = self.trigger.spec_when(len(saes) > 1) if self.trigger is not None else None
        if when is not None and len(saes) > 1 and not saes.split(feats)[self.trigger.k]:
            when = None
        spec = SteeringSpec(features=list(feats), mode=mode, values=values, layer=layer, positions="all",
                            skip_bos=self.cfg.skip_bos, notes=notes, when=when)
        if len(saes) > 1:
            spec.features = []
            spec.edits = [{"sae": name, "layer": lay, "features": local}
                          for name, lay, local in zip(saes.names, saes.layers, saes.split(feats)) if local]
        return spec

    def to_dict(self) -> dict:
        """``results.json``: the sections of the stages done so far, then ``valid`` and ``warnings``."""
        cfg, saes = self.cfg, self.saes
        r: dict[str, Any] = {
            "valid": True,
            "warnings": [],
            "stages_done": list(self.stages_done),
            "stopped": self.stopped,
            "chat_template": self.chat_template,
            "splits": self.splits.sizes(),
            "split_prompts": self.splits.prompts(),
            "sae": ({"hook_name": saes.saes[0].hook_name, "layer": saes.layers[0], "d_sae": saes.saes[0].d_sae,
                     "architecture": saes.saes[0].architecture} if len(saes) == 1 else
                    [{"name": n, "hook_name": s.hook_name, "layer": lay, "d_sae": s.d_sae, "architecture": s.architecture}
                     for n, s, lay in zip(saes.names, saes.saes, saes.layers)]),
            "edit": self.edit_text,
            "skip_bos": cfg.skip_bos,
            "selection": cfg.select,
            "config": {f.name: getattr(cfg, f.name) for f in fields(cfg)},
            "timings_s": dict(self.timings),
        }
        if self.refusal is not None:
            r["refusal_check"] = self.refusal.to_dict()
        if self.direction is not None:
            ds = self.direction
            r["splits"] = ds.splits.sizes() if ds.splits is not None else r["splits"]
            r["direction"] = {**ds.direction.to_dict(), "filtering": ds.filtering}
            r["direction_table"] = ds.direction.table
            r["refusal_tokens"] = [int(t) for t in ds.refusal_tokens]
            r["refusal_tokens_text"] = list(self.refusal_tokens_text)
        if self.candidates is not None:
            cs = self.candidates
            r["candidates"] = [[*([self.name(g)] if len(saes) == 1 else self.name(g)), s] for g, s in cs.candidates]
            r["candidate_method"] = cfg.candidate_method
            r["prefilter"] = None if cs.prefiltered is None else {"per_sae": cs.prefiltered, "sign": cfg.prefilter_sign}
            r["candidate_pool"] = cs.pool_steps
            if cfg.top_k:
                r["top_k"] = [[*([self.name(g)] if len(saes) == 1 else self.name(g)), a] for g, a in cs.top_k]
                r["top_k_per_prompt"] = [{"prompt": p, "features": self.names(f)}
                                         for p, f in zip(self.splits.held, cs.top_k_per_prompt)]
        if self.search is not None:
            ms = copy.deepcopy(self.search.pooled.to_dict())
            ms["features"] = self.names(ms["features"])
            ms["steps"] = [[self.name(g), *rest] for g, *rest in ms["steps"]]
            r["minimal_set"] = ms["features"]
            r["minimal_set_search"] = ms
        if self.interactions is not None:
            it = copy.deepcopy(self.interactions.to_dict())  # renamed here: the stage's own stay flat ids
            it["features"], it["added"] = self.names(it["features"]), self.names(it["added"])
            it["pairs"] = [[self.name(i), self.name(j), w] for i, j, w in it["pairs"]]
            for v in it["verified"]:
                v["i"], v["j"] = self.name(v["i"]), self.name(v["j"])
            r["interactions"] = it["pairs"]
            r["interactions_detail"] = it
        if self.verification is not None:
            vs = self.verification
            r["direction"]["generation"] = asdict(vs.direction_generation)
            r["capability"] = None if vs.capability is None else asdict(vs.capability)
            r["minimal_set_heldout_flip_rate"] = vs.minimal_set_heldout_flip_rate
            r["per_prompt_sets"] = [{**asdict(pp), "features": self.names(pp.features), "score_minimal": self.names(pp.score_minimal)}
                                    for pp in vs.per_prompt]
            r["asr"] = vs.asr.to_dict()
            r["asr_curve"] = vs.curve
            r["examples"] = [{"prompt": p, "unsteered": a, "minimal_set_ablated": b}
                             for p, a, b in list(zip(self.splits.held, vs.base_replies, vs.minimal_set_replies))[:6]]
        if self.amplify is not None:
            a = self.amplify
            r["amplify"] = {"features": self.names(a.features), "cosines": a.cosines, "values": a.values,
                            "spec": "amplify_spec.json" if a.features else None}
        if self.trigger is not None:
            r["trigger"] = self.trigger.to_dict(len(saes) > 1)
        if "dormant" in self.stages_done:
            r["dormant_downstream"] = self.dormant_downstream
        r["valid"], r["warnings"] = result_warnings(self)
        return r


@dataclass
class DiscoverResult:
    """What :func:`~saesteer.refusal.discover.discover` returns: the results (typed, and ``results``
    the dict results.json holds), the direction and the spec (None when discover stopped early)."""

    results: dict
    direction: torch.Tensor | None
    spec: SteeringSpec | None
    reference: torch.Tensor | None = None  # affine ablation's harmless mean at (layer, position)
    typed: DiscoverResults | None = None
    amplify_spec: SteeringSpec | None = None


def result_warnings(res: DiscoverResults) -> tuple[bool, list[str]]:
    """``(valid, warnings)`` for discover's results so far: ``valid`` is False when the results are
    not meaningful (the model barely refuses the held-out harmful prompts unsteered, or the refusal
    direction failed its filters); ``warnings`` says why, those first, then the prompt filter's
    splits that kept nothing, a search without prompts of its own, and the chat-template fallback
    when it was used (which change the numbers but do not void them)."""
    out = []
    if res.refusal is not None:
        refusal, n = res.refusal.n_refused / max(res.refusal.n, 1), res.refusal.n
        if refusal < MIN_REFUSAL_RATE:
            out.append(f"baseline refusal is {refusal:.0%} on the {n} held-out harmful prompts "
                       f"(below {MIN_REFUSAL_RATE:.0%}): the model does not refuse, so ASR, flip rates and the minimal "
                       "set are not meaningful")
    ds = res.direction
    if ds is not None and not ds.direction.passed_filters:
        d = ds.direction
        out.append(f"the refusal direction (layer {d.layer}, position {d.position}) failed its selection filters "
                   "(no layer and position before the last layers both induces refusal when added and keeps the harmless "
                   "KL within its bound when ablated): "
                   "the direction, its tokens and everything ranked from it are not meaningful")
    valid = not out
    for name, c in (ds.filtering if ds is not None else {}).items():
        if c.get("unfiltered"):
            which = "harmful prompts the model refuses" if not name.startswith("harmless") else "harmless prompts the model answers"
            out.append(f"the prompt filter found no {which} among the {c['n']} of the {name!r} split; the whole split was used")
    sp = res.splits
    if sp.search_from != "search":
        out.append(f"too few harmful prompts for a search split of their own: the search ran on the {sp.search_from} "
                   f"prompts ({len(sp.search)}), which also chose the direction, so its flip rates are not held out")
    if res.chat_template == "fallback":
        out.append("the tokenizer has no chat template; prompts used the fallback 'User: ...\\nAssistant:' format")
    return valid, out
