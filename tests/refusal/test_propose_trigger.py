"""propose_trigger: the features that separate harmful from harmless prompts at the SAE, with a
threshold chosen on validation prompts, returned as a usable ``when``."""

from __future__ import annotations

import pytest
import torch

from saesteer import organism
from saesteer.refusal.trigger import propose_trigger, trigger_scores
from saesteer.steering.condition import parse_when

pytestmark = pytest.mark.filterwarnings("ignore:saesteer. backend:RuntimeWarning")


@pytest.mark.slow
def test_proposed_trigger_separates_held_out_organism_prompts():
    org = organism.load()
    H, L = organism.search_prompts(24, 24, seed=5)
    res = propose_trigger(org.model, org.tokenizer, org.sae, H, L, n_features=(1, 3), seed=0)
    when = res["when"]
    cond = parse_when(when, {"organism": org.sae.d_sae}, default_sae="organism")
    assert cond.reduce == "max" and cond.scope == "prompt" and len(cond.features) in (1, 3)
    assert res["n_selection"] == (12, 12) and res["n_validation"] == (12, 12)
    chosen = next(v for v in res["validation"] if v["features"] == when["features"])
    assert chosen["threshold"] == when["threshold"] and chosen["balanced_accuracy"] >= 0.9
    assert all(r["d"] > 0 for r in res["candidates"])
    # on the shipped prompts, which the trigger never saw, it separates the classes less well (the
    # organism's shipped prompts are worded differently from its generators; 12 prompts per class
    # chose this trigger): 56% caught, none of the harmless ones, when this was written
    s_h = trigger_scores(org.model, org.tokenizer, org.sae, organism.load_prompts("harmful")[:16], when)
    s_l = trigger_scores(org.model, org.tokenizer, org.sae, organism.load_prompts("harmless")[:16], when)
    tpr, fpr = float((s_h > when["threshold"]).float().mean()), float((s_l > when["threshold"]).float().mean())
    assert tpr - fpr > 0.3, (tpr, fpr)


@pytest.mark.parametrize("kw, match", [
    (dict(reduce="last"), "reduce: expected 'max' or 'mean'"),
    (dict(val_fraction=1.5), "val_fraction"),
    (dict(n_features=(0,)), "n_features"),
])
def test_bad_arguments(kw, match):
    org = organism.load()
    with pytest.raises(ValueError, match=match):
        propose_trigger(org.model, org.tokenizer, org.sae, ["a"] * 4, ["b"] * 4, **kw)
    with pytest.raises(ValueError, match="harmful: a trigger needs at least 4 prompts"):
        propose_trigger(org.model, org.tokenizer, org.sae, ["a"] * 3, ["b"] * 4)
    # given validation prompts: every given prompt selects, at least 2 per class each
    with pytest.raises(ValueError, match=r"validation\[1\]: a trigger needs at least 2 prompts"):
        propose_trigger(org.model, org.tokenizer, org.sae, ["a"] * 2, ["b"] * 2, validation=(["c"] * 2, ["d"]))


def test_given_validation_prompts_choose_the_threshold():
    org = organism.load()
    H, L = organism.search_prompts(8, 8, seed=5)
    res = propose_trigger(org.model, org.tokenizer, org.sae, H[:5], L[:5], validation=(H[5:], L[5:]), n_features=(1, 2))
    assert res["n_selection"] == (5, 5) and res["n_validation"] == (3, 3)
    parse_when(res["when"])
    # the chosen threshold is the best cut of the validation prompts' own scores
    s_h = trigger_scores(org.model, org.tokenizer, org.sae, H[5:], res["when"])
    s_l = trigger_scores(org.model, org.tokenizer, org.sae, L[5:], res["when"])
    chosen = next(v for v in res["validation"] if v["features"] == res["when"]["features"])
    assert chosen["tpr"] == float((s_h > res["when"]["threshold"]).float().mean())
    assert chosen["fpr"] == float((s_l > res["when"]["threshold"]).float().mean())


def test_target_recall_keeps_the_highest_threshold_that_catches_that_share():
    org = organism.load()
    H, L = organism.search_prompts(8, 8, seed=5)
    kw = dict(validation=(H[4:], L[4:]), n_features=(1, 2))
    bal = propose_trigger(org.model, org.tokenizer, org.sae, H[:4], L[:4], **kw)
    full = propose_trigger(org.model, org.tokenizer, org.sae, H[:4], L[:4], target_recall=1.0, **kw)
    assert [v["features"] for v in full["validation"]] == [v["features"] for v in bal["validation"]]
    for v in full["validation"]:
        s_h = trigger_scores(org.model, org.tokenizer, org.sae, H[4:], {**full["when"], "features": v["features"]})
        s_l = trigger_scores(org.model, org.tokenizer, org.sae, L[4:], {**full["when"], "features": v["features"]})
        # every validation harmful prompt is caught, and no higher cut of the scores would still catch them all
        assert v["tpr"] == 1.0 and bool((s_h > v["threshold"]).all())
        below = torch.cat([s_h, s_l])
        below = below[below < s_h.min()]
        expected = float((s_h.min() + below.max()) / 2) if below.numel() else float(s_h.min() - 1.0)
        assert v["threshold"] == pytest.approx(expected, abs=1e-5)
        assert v["fpr"] == float((s_l > v["threshold"]).float().mean())
    # the count kept is the one with the best balanced accuracy at that recall
    chosen = next(v for v in full["validation"] if v["features"] == full["when"]["features"])
    assert chosen["balanced_accuracy"] == max(v["balanced_accuracy"] for v in full["validation"])
    assert chosen["threshold"] == full["when"]["threshold"]


@pytest.mark.parametrize("recall", [0.0, 1.5, -0.1, True, "0.9"])
def test_bad_target_recall(recall):
    org = organism.load()
    with pytest.raises(ValueError, match=r"target_recall: expected a share in \(0, 1\]"):
        propose_trigger(org.model, org.tokenizer, org.sae, ["a"] * 4, ["b"] * 4, target_recall=recall)
