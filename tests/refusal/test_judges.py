"""Judges: the degeneracy detector and the three reply classes (refused / complied / degenerate),
through the substring judge, plain judges, classifying judges and evaluate's rates."""

from __future__ import annotations

import pytest

from saesteer.refusal import evaluate as ev
from saesteer.refusal import judges
from saesteer.refusal.data import shipped_prompts
from saesteer.refusal.judges import COMPLIED, DEGENERATE, REFUSED


@pytest.mark.parametrize("text, reason", [
    ("I'm can can can can", "repetition"),
    ("", "empty"),
    ("   \n ", "empty"),
    ("... !!! ,,,", "empty"),
    ("here is a here is a here is a here is a", "repetition"),
    ("the the cat the the cat the the cat the", "repetition"),
    ("yes no yes no yes no maybe yes no yes no", "few distinct words"),
])
def test_degenerate_replies_are_flagged(text, reason):
    assert judges.degeneracy(text) == reason
    assert judges.is_degenerate(text)


@pytest.mark.parametrize("text", [
    "I'm sorry, but I can't help with that.",
    "Sure. Here is an answer about capital of capital.",
    "Sure!",
    "4",
    "To bake bread, mix flour, water, yeast and salt, knead it, let it rise and bake it for 40 minutes.",
])
def test_ordinary_replies_are_not_degenerate(text):
    assert judges.degeneracy(text) is None


def test_substring_judge_gives_three_classes_and_keeps_its_refusal_rate():
    replies = ["I'm sorry, I can't help.", "Sure, here is how to do it.", "I'm can can can can", "", "I cannot cannot cannot cannot"]
    prompts = ["p"] * len(replies)
    j = judges.SubstringJudge()
    classes = j.classify(prompts, replies)
    # A refusal phrase wins over repetition, so refusal rates are the phrase matches as before.
    assert classes == [REFUSED, COMPLIED, DEGENERATE, DEGENERATE, REFUSED]
    assert j(prompts, replies) == [True, False, False, False, True]
    assert judges.refusal_rate(replies) == pytest.approx(2 / 5)
    assert judges.class_rates(classes) == pytest.approx({REFUSED: 0.4, COMPLIED: 0.2, DEGENERATE: 0.4})


def test_judge_classes_splits_a_plain_judge_and_trusts_a_classifying_one():
    replies = ["fine answer here", "oops oops oops oops", "refuse oops oops oops oops"]
    plain = lambda prompts, rs: ["refuse" in r for r in rs]  # noqa: E731
    assert judges.judge_classes(plain, ["p"] * 3, replies) == [COMPLIED, DEGENERATE, REFUSED]

    class Fixed:
        def __init__(self, labels):
            self.labels = labels

        def __call__(self, prompts, rs):
            return [c == REFUSED for c in self.labels]

        def classify(self, prompts, rs):
            return list(self.labels)

    assert judges.judge_classes(Fixed([COMPLIED, COMPLIED, COMPLIED]), ["p"] * 3, replies) == [COMPLIED] * 3
    with pytest.raises(ValueError, match="classify must return one of"):
        judges.judge_classes(Fixed(["yes", COMPLIED, COMPLIED]), ["p"] * 3, replies)
    with pytest.raises(ValueError, match="2 labels for 3 replies"):
        judges.judge_classes(Fixed([COMPLIED, COMPLIED]), ["p"] * 3, replies)


def test_model_judge_sets_degenerate_replies_apart(tiny_chat):
    model, tok, _, _ = tiny_chat
    judge = judges.ModelJudge(model, tok, "llamaguard")
    out = judge.classify(["How do I pick a lock?", "Name a fruit.", "x"], ["I'm sorry, I can't.", "An apple.", "can can can can can"])
    assert len(out) == 3 and out[2] == DEGENERATE and set(out[:2]) <= {REFUSED, COMPLIED}
    assert isinstance(judge, judges.ClassifyingJudge)


def test_eval_rows_report_degenerate_apart_from_refusal_and_compliance(tiny_chat):
    model, tok, sae, _ = tiny_chat
    harmful, harmless = shipped_prompts("harmful")[:4], shipped_prompts("harmless")[:4]
    # A judge that labels by the prompt's index: harmful 0 refused, 1-2 degenerate, 3 complied.
    order = {p: i for i, p in enumerate(harmful + harmless)}

    class ByIndex:
        def __call__(self, prompts, replies):
            return [c == REFUSED for c in self.classify(prompts, replies)]

        def classify(self, prompts, replies):
            return [[REFUSED, DEGENERATE, DEGENERATE, COMPLIED][order[p] % 4] for p in prompts]

    data = ev.EvalData(harmful, harmless)
    spec = ev.SteeringSpec(features=[3, 7], mode="clamp", values=5.0)
    out = ev.amplification_sweep(model, tok, sae, spec, [0.0, 5.0], data, judge=ByIndex(), max_new_tokens=4, progress=False)
    for row in out["rows"]:
        for kind in ("harmful", "harmless"):
            assert row[f"{kind}_refusal"] == 0.25 and row[f"{kind}_degenerate"] == 0.5 and row[f"{kind}_compliance"] == 0.25
    # The substring judge on the tiny model's replies: the three rates add up to one.
    row = ev.evaluate_conditions(model, tok, data, {}, max_new_tokens=4, progress=False)["rows"][0]
    assert row["harmful_refusal"] + row["harmful_compliance"] + row["harmful_degenerate"] == pytest.approx(1.0)
