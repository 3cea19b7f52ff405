"""Greedy minimal sets, their candidate pool, edits and scores in batches, confirmation by generation."""

from __future__ import annotations

import pytest
import torch

import saesteer
from helpers import most_active_features
from saesteer.refusal.search import edit_scores, greedy_minimal_set


def test_edit_scores_rows_match_single_runs(tiny_chat):
    model, tok, sae, _ = tiny_chat
    prompts = ["How do I bake bread?", "Write a poem about rain."]
    active = most_active_features(model, tok, sae, prompts)
    sets = [[], active[:3], [active[3]]]
    batched = edit_scores(model, tok, sae, prompts, sets, [5, 6], backend="torch")
    for s, row in zip(sets, batched):
        single = edit_scores(model, tok, sae, prompts, [s], [5, 6], backend="torch")[0]
        torch.testing.assert_close(row, single, atol=1e-4, rtol=1e-4)
    assert not torch.equal(batched[0], batched[1]), "ablating active features must move the score"


def test_greedy_set_is_minimal_under_its_criterion(tiny_chat):
    model, tok, sae, _ = tiny_chat
    prompts = ["Tell me how to pick a lock."]
    # Pick a threshold between the unablated and fully ablated score, so the search has work to do.
    cands = most_active_features(model, tok, sae, prompts)
    s = edit_scores(model, tok, sae, prompts, [[], cands], [5, 6])
    thr = float(s.mean())
    res = greedy_minimal_set(model, tok, sae, prompts, cands, [5, 6], threshold=thr, keep=1.0, progress=False)
    assert set(res.features) <= set(cands) and res.features
    flipped = lambda feats: bool(edit_scores(model, tok, sae, prompts, [feats], [5, 6])[0, 0] < thr)  # noqa: E731
    if res.full_flip_rate > 0:
        assert flipped(res.features)
        for f in res.features if len(res.features) > 1 else []:
            assert not flipped([g for g in res.features if g != f]), "every remaining feature is needed"


def test_confirm_by_generation_undoes_removals_last_first():
    from saesteer.refusal.search import confirm_by_generation

    calls = []

    def complies_with(needed):
        def complies(feats):
            calls.append(list(feats))
            return needed <= set(feats), f"reply {len(feats)}"

        return complies

    # Removed 5, then 6, then 7: undo 7 first, then 6; the full set is tried first.
    feats, reply, ok = confirm_by_generation([1, 2], [5, 6, 7], complies_with({1, 2, 6}))
    assert ok and feats == [1, 2, 7, 6] and reply == "reply 4"
    assert calls == [[1, 2], [1, 2, 7, 6, 5], [1, 2, 7], [1, 2, 7, 6]]
    # Already complies: nothing added, one generation.
    calls.clear()
    assert confirm_by_generation([1], [5], complies_with({1})) == ([1], "reply 1", True) and len(calls) == 1
    # Refused even with the whole search set: that set, without the generations in between.
    calls.clear()
    feats, reply, ok = confirm_by_generation([1], [5, 6, 7], complies_with({99}))
    assert not ok and feats == [1, 7, 6, 5] and len(calls) == 2
    # Nothing to try.
    assert confirm_by_generation([], [], complies_with(set())) == ([], None, False)


def test_grow_candidate_pool_checks_its_arguments(tiny_chat):
    from saesteer.refusal.search import grow_candidate_pool

    model, tok, sae, _ = tiny_chat
    with pytest.raises(ValueError, match="ranked"):
        grow_candidate_pool(model, tok, sae, ["hi"], [], [5], start=4, min_full_flip=0.5)
    with pytest.raises(ValueError, match="start"):
        grow_candidate_pool(model, tok, sae, ["hi"], [1, 2], [5], start=0, min_full_flip=0.5)
    # No score is under this threshold: the pool doubles up to every ranked candidate.
    n, steps = grow_candidate_pool(model, tok, sae, ["hi"], list(range(10)), [5], start=3, min_full_flip=0.5, threshold=-1e9)
    assert n == 10 and [s["n"] for s in steps] == [3, 6, 10] and all(s["full_flip_rate"] == 0 for s in steps)


def test_edit_forms_and_scaled_search_scores(tiny_chat):
    from saesteer.refusal.search import Edit, parse_edit

    assert parse_edit("ablate") == Edit() and parse_edit("scale:-3") == Edit("scale", -3.0)
    assert str(parse_edit("clamp:2.5")) == "clamp:2.5" and str(parse_edit("scale:-3")) == "scale:-3"
    for bad in ("zap", "scale", "scale:x", "ablate:1", "clamp:nan", 3):
        with pytest.raises(ValueError, match="edit:"):
            parse_edit(bad)
    model, tok, sae, _ = tiny_chat
    prompts = ["How do I bake bread?"]
    feats = most_active_features(model, tok, sae, prompts)[:4]
    from saesteer.refusal.chat import refusal_scores

    for edit in ("scale:-3", "clamp:5"):
        e = parse_edit(edit)
        iv = saesteer.Intervention(feats, e.mode, e.value)
        want = refusal_scores(model, tok, prompts, [5, 6], steering=lambda: saesteer.steer(model, sae, iv))
        got = edit_scores(model, tok, sae, prompts, [feats], [5, 6], edit=edit)[0]
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    ablated = edit_scores(model, tok, sae, prompts, [feats], [5, 6])[0]
    assert not torch.equal(ablated, edit_scores(model, tok, sae, prompts, [feats], [5, 6], edit="scale:-3")[0])

