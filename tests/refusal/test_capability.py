"""MMLU (5-shot, lm-evaluation-harness's prompt) and GSM8K capability tasks from local files."""

from __future__ import annotations

from pathlib import Path

import pytest

from saesteer.refusal import capability as cap
from saesteer.refusal import evaluate as ev
from saesteer.refusal.data import shipped_prompts

DATA = Path(__file__).resolve().parents[1] / "data"


def test_mmlu_prompt_is_lm_eval_harness_five_shot():
    task = cap.load_mmlu(DATA / "mmlu_tiny.jsonl", n_shot=5)
    assert task.name == "mmlu" and len(task.questions) == 3  # the first 5 rows are the shots
    q = task.questions[0]
    assert q.startswith("The following are multiple choice questions (with answers) about elementary mathematics.\n\n")
    assert q.count("Answer:") == 6 and q.endswith("What is 7 + 1?\nA. 8\nB. 9\nC. 6\nD. 71\nAnswer:")
    assert "What is 2 + 3?\nA. 4\nB. 5\nC. 6\nD. 7\nAnswer: B\n\nWhich number is even?" in q
    assert "about miscellaneous." in task.questions[2]  # its own subject in the header
    assert task.check(0, "A") and task.check(0, " (A) 8") and task.check(0, "The answer is A.") and not task.check(0, "B")
    assert not task.check(0, "I'm sorry, I can't help.")
    assert [cap.mmlu_choice(r) for r in ("C. 6", "answer: d", "I think B is right", "none")] == [2, 3, 1, None]


def test_mmlu_csv_subjects_and_errors(tmp_path):
    task = cap.load_mmlu(DATA / "mmlu_tiny.csv", n_shot=1)
    assert len(task.questions) == 1 and task.questions[0].startswith("The following are multiple choice questions (with answers).\n\n")
    assert task.check(0, "C")
    shots = cap.load_mmlu(DATA / "mmlu_tiny.jsonl", n_shot=2, shots=DATA / "mmlu_tiny.csv", subject="miscellaneous")
    assert len(shots.questions) == 1 and "Answer: C\n\nWhat colour" in shots.questions[0]
    with pytest.raises(ValueError, match="3 shots asked for, 2 available"):
        cap.load_mmlu(DATA / "mmlu_tiny.jsonl", n_shot=3, shots=DATA / "mmlu_tiny.csv")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "choices": ["a", "b"], "answer": 0}\n')
    with pytest.raises(ValueError, match="row 0: 'choices' must be 4 strings"):
        cap.load_mmlu(bad, n_shot=0)
    with pytest.raises(FileNotFoundError, match="is not a file"):
        cap.load_mmlu(tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="n_shot"):
        cap.load_mmlu(DATA / "mmlu_tiny.jsonl", n_shot=-1)
    # quoted cells keep their newlines: choices "1\n2" and "12" stay apart
    code = tmp_path / "code.csv"
    code.write_text('"What does this print?\nprint(1)\nprint(2)",0,1,12,"1\n2",D\n', newline="")
    (q,) = cap.load_mmlu(code, n_shot=0).questions
    assert "print?\nprint(1)\nprint(2)" in q and "C. 12\nD. 1\n2\n" in q


def test_gsm8k_targets_and_answer_extraction(tmp_path):
    task = cap.load_gsm8k(DATA / "gsm8k_tiny.json")
    assert task.name == "gsm8k" and len(task.questions) == 3 and task.max_new_tokens == 256
    assert cap.gsm8k_target("so 5 + 2 = 7\n#### 1,200") == 1200.0
    assert task.check(0, "He has 3 + 4 = 7 apples.") and task.check(0, "3 + 4\n#### 7") and not task.check(0, "7 apples, no 8")
    assert task.check(1, "That makes 1,200 pens.") and task.check(2, "She has $6.5 left.") and not task.check(2, "I can't tell.")
    assert task.check(0, "#### 7 (not 9)")  # the '####' answer wins over the last number
    assert cap.gsm8k_answer("no number") is None
    bad = tmp_path / "g.jsonl"
    bad.write_text('{"question": "q", "answer": "no final line"}\n')
    with pytest.raises(ValueError, match="row 0: gsm8k: answer has no '#### N'"):
        cap.load_gsm8k(bad)


def test_capability_tasks_are_evaluated_per_condition(tiny_chat):
    model, tok, sae, _ = tiny_chat
    mmlu = cap.load_mmlu(DATA / "mmlu_tiny.jsonl", n_shot=1, limit=2)
    gsm = cap.load_gsm8k(DATA / "gsm8k_tiny.json", limit=2, max_new_tokens=5)
    data = ev.EvalData(shipped_prompts("harmful")[:2], shipped_prompts("harmless")[:2], tasks=[mmlu, gsm])
    spec = ev.SteeringSpec(features=[3, 7], mode="clamp", values=5.0)
    out = ev.evaluate_conditions(model, tok, data, {"steered": ev.Steering(model, sae, spec)}, max_new_tokens=3, progress=False)
    for row in out["rows"]:
        assert 0.0 <= row["mmlu_accuracy"] <= 1.0 and 0.0 <= row["gsm8k_accuracy"] <= 1.0
    ex = out["examples"]["unsteered"]
    assert [q for q, _ in ex["mmlu"]] == mmlu.questions and [q for q, _ in ex["gsm8k"]] == gsm.questions
    # The task's own reply length is used: the replies match generation at that length.
    from saesteer.refusal.chat import generate

    assert [r for _, r in ex["gsm8k"]] == generate(model, tok, gsm.questions, max_new_tokens=5, progress=False)


def test_cli_eval_reports_mmlu_and_gsm8k(tiny_chat, capsys, tmp_path):
    import json

    from saesteer.cli import main

    _, _, _, d = tiny_chat
    rc = main(["eval", "--model", str(d), "--sae", str(d / "sae"), "--features", "3", "--mode", "ablate", "--limit", "2",
               "--mmlu", str(DATA / "mmlu_tiny.jsonl"), "--gsm8k", str(DATA / "gsm8k_tiny.json"), "--no-probes",
               "--max-new-tokens", "3", "--device", "cpu", "--quiet", "--out", str(tmp_path / "o")])
    _, err = capsys.readouterr()
    assert rc == 0, err
    res = json.loads((tmp_path / "o" / "eval.json").read_text())
    assert res["n"]["mmlu"] == 2 and res["n"]["gsm8k"] == 2
    assert all("mmlu_accuracy" in c and "gsm8k_accuracy" in c for c in res["conditions"])
    assert "mmlu_accuracy" in (tmp_path / "o" / "report.md").read_text()
    rc = main(["eval", "--model", str(d), "--sae", str(d / "sae"), "--features", "3", "--mmlu", str(tmp_path / "no.jsonl"),
               "--out", str(tmp_path / "bad")])
    _, err = capsys.readouterr()
    assert rc == 2 and "mmlu:" in err and not (tmp_path / "bad").exists()


def test_mmlu_limit_samples_across_subjects_with_a_seed(tmp_path):
    import json

    # MMLU's test split is sorted by subject: the first rows are one or two subjects only.
    subjects = ["abstract_algebra", "anatomy", "astronomy", "virology"]
    rows = [{"question": f"{s} q{i}?", "choices": ["a", "b", "c", "d"], "answer": i % 4, "subject": s}
            for s in subjects for i in range(10)]
    p = tmp_path / "mmlu.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    shots = tmp_path / "dev.jsonl"
    shots.write_text("".join(json.dumps(dict(r, question="shot " + r["question"])) + "\n" for r in rows[::10]))
    task = cap.load_mmlu(p, shots=shots, n_shot=1, limit=8, seed=0)
    asked = [q.rsplit("\n\n", 1)[1].split("\n")[0] for q in task.questions]
    assert len(asked) == 8 and len(set(asked)) == 8
    assert {a.split(" q")[0] for a in asked} == set(subjects)  # two of each subject, not the first 8 rows
    assert asked == [q.rsplit("\n\n", 1)[1].split("\n")[0] for q in cap.load_mmlu(p, shots=shots, n_shot=1, limit=8, seed=0).questions]
    other = cap.load_mmlu(p, shots=shots, n_shot=1, limit=8, seed=1).questions
    assert [q.rsplit("\n\n", 1)[1].split("\n")[0] for q in other] != asked
    # The sampler itself: without a limit (or one past the end) every row, in order.
    assert cap.sample_across_subjects(rows, None) == rows and cap.sample_across_subjects(rows, 99) == rows
    picked = cap.sample_across_subjects(rows, 5, seed=3)
    assert len({r["subject"] for r in picked}) == 4 and all(r in rows for r in picked)
