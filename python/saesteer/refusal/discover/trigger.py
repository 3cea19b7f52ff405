"""discover's trigger for conditional steering (Lee et al.'s conditional activation steering, on SAE
features): the features that best separate the harmful prompts the model refuses from the harmless
ones it answers, at the spec's SAE, as a ``when`` (:func:`saesteer.refusal.trigger.propose_trigger`).

The features are selected on the direction split (after Arditi's filter: refused harmful, answered
harmless) and the feature count and threshold are chosen on the val split; the held-out prompts
never choose anything. With several SAEs the trigger reads the first SAE of the set that holds a
feature of the selection (its ``when`` names that SAE)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..saeset import SAESet
from ..trigger import propose_trigger
from .config import DiscoverConfig
from .splits import PromptSplits

__all__ = ["TriggerStage", "trigger_stage"]


@dataclass
class TriggerStage:
    """``when`` (the spec's condition, None when no trigger was proposed, ``skipped`` says why),
    the SAE it reads (``sae``: its name in the set, ``k``: its index), the validation rows of each
    feature count tried (``validation``; ``chosen`` is the one ``when`` holds), the prompts per class
    that selected and validated it, and the ranked candidates (local ids with Cohen's d)."""

    when: dict | None = None
    sae: str | None = None
    k: int = 0
    validation: list[dict] = field(default_factory=list)
    chosen: dict | None = None
    n_selection: tuple[int, int] = (0, 0)
    n_validation: tuple[int, int] = (0, 0)
    candidates: list[dict] = field(default_factory=list)
    skipped: str | None = None

    def spec_when(self, several: bool) -> dict | None:
        """The ``when`` a spec carries: with several SAEs it names the SAE it reads."""
        if self.when is None:
            return None
        return {"sae": self.sae, **self.when} if several else dict(self.when)

    def to_dict(self, several: bool) -> dict:
        """results.json's ``trigger`` section."""
        return {
            "when": self.spec_when(several),
            "skipped": self.skipped,
            "chosen": self.chosen,
            "validation": self.validation,
            "n_selection": {"harmful": self.n_selection[0], "harmless": self.n_selection[1], "split": "direction"},
            "n_validation": {"harmful": self.n_validation[0], "harmless": self.n_validation[1], "split": "val"},
            "candidates": [{"feature": r["feature"], "d": r["d"]} for r in self.candidates[:10]],
        }


def trigger_stage(model, tokenizer, saes: SAESet, splits: PromptSplits, features: list[int], cfg: DiscoverConfig) -> TriggerStage:
    """Propose the trigger at the SAE of the first of ``features`` (flat ids: the spec's selection;
    the first SAE when there are none). Skipped, with the reason, when the SAE is read at a layer
    other than its hook's (``cfg.layer``: the hooks read a condition at the SAE's own hook point) or
    a split has fewer than 2 prompts per class."""
    k = saes.member(features[0]) if features else 0
    sae, name = saes.saes[k], saes.names[k]
    if sae.hook_layer is not None and saes.layers[k] != sae.hook_layer:
        return TriggerStage(sae=name, k=k, skipped=f"the SAE is read at layer {saes.layers[k]}, not at its hook's layer "
                                                     f"{sae.hook_layer}, where a condition reads it")
    sets = {"direction": splits.direction, "harmless_direction": splits.harmless_direction,
            "val": splits.val, "harmless_val": splits.harmless_val}
    short = [f"{n} ({len(p)})" for n, p in sets.items() if len(p) < 2]
    if short:
        return TriggerStage(sae=name, k=k, skipped="fewer than 2 prompts in the split(s) " + ", ".join(short))
    try:
        got = propose_trigger(model, tokenizer, sae, splits.direction, splits.harmless_direction,
                              validation=(splits.val, splits.harmless_val), batch_size=cfg.batch_size)
    except ValueError as e:  # no feature is more active on the harmful prompts
        return TriggerStage(sae=name, k=k, skipped=str(e))
    chosen = next(v for v in got["validation"] if v["features"] == got["when"]["features"])
    return TriggerStage(got["when"], name, k, got["validation"], chosen, got["n_selection"], got["n_validation"],
                        got["candidates"])
