"""discover's results: whether they mean anything."""

from __future__ import annotations

from dataclasses import replace


def _results(refused: int = 4, passed: bool = True, template: str = "tokenizer", n_harmful: int = 40):
    """Typed results through the direction stage: ``refused`` of 8 held-out harmful prompts refused
    unsteered, a direction that ``passed`` its filters, splits from ``n_harmful`` harmful prompts."""
    import torch

    from helpers import make_sae
    from saesteer.refusal.direction import DirectionResult
    from saesteer.refusal.discover import DirectionStage, DiscoverConfig, DiscoverResults, RefusalCheck, split_prompts
    from saesteer.refusal.saeset import SAESet

    cfg = DiscoverConfig(n_direction=8, n_val=4, n_search=4, n_heldout=8)
    sp = split_prompts([f"h{i}" for i in range(n_harmful)], [f"l{i}" for i in range(16)], cfg)
    d = DirectionResult(2, -1, torch.ones(8), {}, passed_filters=passed)
    return DiscoverResults(cfg, SAESet.of(make_sae(d_in=8, d_sae=16), layer=2), template, sp,
                           refusal=RefusalCheck(refused, 8, 4), direction=DirectionStage([1], d, sp, {}))


def test_result_warnings_say_when_results_are_not_meaningful():
    from saesteer.refusal.discover import result_warnings

    assert result_warnings(_results()) == (True, [])
    valid, warns = result_warnings(_results(refused=0))
    assert not valid and len(warns) == 1 and "baseline refusal is 0%" in warns[0] and "8 held-out" in warns[0]
    valid, warns = result_warnings(_results(passed=False))
    assert not valid and "failed its selection filters" in warns[0] and "(layer 2, position -1)" in warns[0]
    valid, warns = result_warnings(_results(template="fallback"))
    assert valid and len(warns) == 1 and "no chat template" in warns[0]
    # results.json carries the same verdict
    r = _results(refused=0).to_dict()
    assert not r["valid"] and r["warnings"] == result_warnings(_results(refused=0))[1]


def test_a_search_without_prompts_of_its_own_and_an_unfiltered_split_are_warned():
    from saesteer.refusal.discover import result_warnings

    res = _results(n_harmful=18)  # 8 held, 8 direction, 2 val: the search reuses the val prompts
    assert res.splits.search_from == "val"
    valid, warnings = result_warnings(res)
    assert valid and any("search ran on the val prompts (2)" in w for w in warnings)
    res.direction = replace(res.direction, filtering={"direction": {"n": 8, "kept": 8, "unfiltered": True}})
    valid, warnings = result_warnings(res)
    assert valid and any("found no harmful prompts the model refuses among the 8 of the 'direction' split" in w for w in warnings)
