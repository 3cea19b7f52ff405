"""discover's results: whether they mean anything."""

from __future__ import annotations


def test_result_warnings_say_when_results_are_not_meaningful():
    from saesteer.refusal.discover import result_warnings

    def res(baseline_asr, passed, template="tokenizer"):
        return {"asr": {"baseline": baseline_asr, "n_prompts": 8}, "chat_template": template,
                "direction": {"passed_filters": passed, "layer": 2, "position": -1}}

    assert result_warnings(res(0.5, True)) == (True, [])
    valid, warns = result_warnings(res(0.95, True))
    assert not valid and len(warns) == 1 and "baseline refusal is 5%" in warns[0] and "8 held-out" in warns[0]
    valid, warns = result_warnings(res(0.5, False))
    assert not valid and "failed its selection filters" in warns[0]
    valid, warns = result_warnings(res(0.5, True, "fallback"))
    assert valid and len(warns) == 1 and "no chat template" in warns[0]

