"""The capability tasks of the refusal-steering papers as :class:`~.evaluate.CapabilityTask`\\ s:
MMLU (5-shot, lm-evaluation-harness's prompt) and GSM8K (the number after "####", else the reply's
last number). O'Brien et al. report both falling when refusal is clamped high (MMLU 68.8 -> 36.0,
GSM8K 82.5 -> 35.6).

Both load from a local file (JSON list, JSONL, or MMLU's original headerless CSV) or, when ``source``
is not a file, a HuggingFace dataset id through ``datasets.load_dataset`` (``cais/mmlu``,
``openai/gsm8k``). The questions go to the model through its chat template, like every prompt in
:mod:`saesteer.refusal`; answers are generated greedily and checked.

MMLU rows: ``{"question", "choices" [4 strings], "answer" (0-based index or letter), "subject"?}``
(cais/mmlu's fields). The 5 shots are the first rows of ``shots`` (a file or split: MMLU's ``dev``),
or, without it, the first ``n_shot`` rows of ``source``, which are then not evaluated. The prompt is
lm-evaluation-harness's: "The following are multiple choice questions (with answers) about
{subject}.", then each shot as question, ``A. ...`` lines and ``Answer: X``, then the question with
``Answer:``. A reply counts as answering X when it starts with the letter X, or says "answer is X",
or else its first standalone capital A-D is X.

GSM8K rows: ``{"question", "answer"}`` with the worked answer ending in ``#### N``.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Sequence

from .evaluate import CapabilityTask

__all__ = ["MMLU_LETTERS", "load_mmlu", "sample_across_subjects", "mmlu_prompt", "mmlu_choice", "load_gsm8k", "gsm8k_target", "gsm8k_answer"]

MMLU_LETTERS = "ABCD"


def _rows(source: str | Path, split: str, name: str | None, what: str) -> list:
    """Rows of a JSON / JSONL / headerless CSV file, or of a HuggingFace dataset split."""
    from .data import csv_rows, read_json_rows

    p = Path(source)
    if p.is_file():
        if p.suffix.lower() == ".csv":  # MMLU's original files: question, A, B, C, D, answer letter; no header
            rows = csv_rows(p, header=False)
            bad = next((n for n, r in enumerate(rows) if r and len(r) < 6), None)
            if bad is not None:
                raise ValueError(f"{p}: row {bad}: expected 6 columns (question, A, B, C, D, answer)")
            return [{"question": r[0], "choices": r[1:5], "answer": r[5]} for r in rows if r]
        return read_json_rows(p, f"{what} rows")
    if p.suffix.lower() in (".json", ".jsonl", ".csv") or p.exists():
        raise FileNotFoundError(f"{what}: {str(p)!r} is not a file")
    try:
        import datasets  # type: ignore
    except ImportError:
        raise FileNotFoundError(f"{what}: {str(source)!r} is not a file, and loading it from the Hub needs `pip install datasets`") from None
    return list(datasets.load_dataset(str(source), name, split=split))


# ------------------------------------------------------------------------------------------------
# MMLU
# ------------------------------------------------------------------------------------------------
def _mmlu_row(r, where: str) -> dict:
    if not isinstance(r, dict) or not all(k in r for k in ("question", "choices", "answer")):
        raise ValueError(f"{where}: expected an object with question, choices, answer")
    choices = list(r["choices"])
    if len(choices) != 4 or not all(isinstance(c, str) for c in choices):
        raise ValueError(f"{where}: 'choices' must be 4 strings, got {choices!r}")
    a = r["answer"]
    if isinstance(a, str) and a.strip().upper() in MMLU_LETTERS and len(a.strip()) == 1:
        a = MMLU_LETTERS.index(a.strip().upper())
    if isinstance(a, bool) or not isinstance(a, int) or not 0 <= a < 4:
        raise ValueError(f"{where}: 'answer' must be a letter A-D or an index 0-3, got {r['answer']!r}")
    return {"question": str(r["question"]).strip(), "choices": choices, "answer": a, "subject": r.get("subject") or ""}


def _subject_text(subject: str) -> str:
    return f" about {subject.replace('_', ' ')}" if subject else ""


def _mmlu_block(row: dict, with_answer: bool) -> str:
    lines = [row["question"], *(f"{L}. {c}" for L, c in zip(MMLU_LETTERS, row["choices"]))]
    lines.append(f"Answer: {MMLU_LETTERS[row['answer']]}" if with_answer else "Answer:")
    return "\n".join(lines)


def mmlu_prompt(row: dict, shots: Sequence[dict]) -> str:
    """lm-evaluation-harness's MMLU prompt: the header, the answered shots, the question."""
    header = f"The following are multiple choice questions (with answers){_subject_text(row.get('subject', ''))}."
    return "\n\n".join([header, *(_mmlu_block(s, True) for s in shots), _mmlu_block(row, False)])


_ANSWER_IS = re.compile(r"answer(?: is|:)?\s*\(?([A-D])\b", re.IGNORECASE)
_LEADING = re.compile(r"^\W*\(?([A-D])\b")
_STANDALONE = re.compile(r"\b([A-D])\b")


def mmlu_choice(reply: str) -> int | None:
    """The choice a reply gives (0-3), or None: a leading letter ("B", "(B) ..."), else "answer is
    B", else the first standalone capital A-D."""
    for pat in (_LEADING, _ANSWER_IS, _STANDALONE):
        m = pat.search(reply)
        if m and m.group(1).upper() in MMLU_LETTERS:
            return MMLU_LETTERS.index(m.group(1).upper())
    return None


def sample_across_subjects(rows: Sequence[dict], limit: int | None, seed: int = 0) -> list[dict]:
    """``limit`` rows spread over the subjects: each subject's rows shuffled with ``seed``, then one
    row of each subject in turn (subjects in a seeded order) until ``limit``. MMLU's test split is
    sorted by subject, so its first 200 rows are abstract algebra and anatomy only. ``limit`` None
    or at least ``len(rows)``: every row, in order."""
    rows = list(rows)
    if limit is None or limit >= len(rows):
        return rows
    rng = random.Random(seed)
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r.get("subject") or "", []).append(r)
    order = list(groups)
    rng.shuffle(order)
    for g in order:
        rng.shuffle(groups[g])
    out: list[dict] = []
    for i in range(max(len(g) for g in groups.values())):
        out += [groups[g][i] for g in order if i < len(groups[g])]
        if len(out) >= limit:
            break
    return out[:limit]


def load_mmlu(source: str | Path, *, subject: str | None = None, n_shot: int = 5, shots: str | Path | None = None,
              limit: int | None = None, seed: int = 0, split: str = "test", max_new_tokens: int = 8) -> CapabilityTask:
    """MMLU as a :class:`CapabilityTask` named ``"mmlu"`` (see the module docstring).

    ``subject``: keep only rows of that subject (a Hub dataset: its config, default ``"all"``);
    ``shots``: where the ``n_shot`` examples come from (a file, or a split of the Hub dataset,
    default ``"dev"`` there); ``limit``: N evaluated questions sampled across the subjects with
    ``seed`` (:func:`sample_across_subjects`).
    """
    if not isinstance(n_shot, int) or n_shot < 0:
        raise ValueError(f"n_shot: expected a non-negative integer, got {n_shot!r}")
    hub = not Path(source).is_file()
    config = (subject or "all") if hub else None
    rows = [_mmlu_row(r, f"{source}: row {i}") for i, r in enumerate(_rows(source, split, config, "mmlu"))]
    if subject and not hub:
        rows = [r for r in rows if r["subject"] == subject]
    if shots is not None or hub:
        shot_rows = [_mmlu_row(r, f"{shots}: row {i}") for i, r in enumerate(
            _rows(shots if shots is not None and Path(shots).is_file() else source, str(shots or "dev"), config, "mmlu shots"))]
    else:
        shot_rows, rows = rows[:n_shot], rows[n_shot:]
    if not rows:
        raise ValueError(f"mmlu: {source} holds no questions to evaluate" + (f" for subject {subject!r}" if subject else "")
                         + (f" after its first {n_shot} rows, used as shots" if shots is None and not hub else ""))
    if len(shot_rows) < n_shot:
        raise ValueError(f"mmlu: {n_shot} shots asked for, {len(shot_rows)} available")
    rows = sample_across_subjects(rows, limit, seed)

    def shots_for(row):
        same = [s for s in shot_rows if s["subject"] == row["subject"]]
        return (same if len(same) >= n_shot else shot_rows)[:n_shot]

    answers = [r["answer"] for r in rows]
    return CapabilityTask("mmlu", [mmlu_prompt(r, shots_for(r)) for r in rows], lambda i, reply: mmlu_choice(reply) == answers[i],
                          max_new_tokens=max_new_tokens)


# ------------------------------------------------------------------------------------------------
# GSM8K
# ------------------------------------------------------------------------------------------------
_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")
_HASHES = re.compile(r"####\s*(-?\$?\d[\d,]*(?:\.\d+)?)")


def _number(s: str) -> float | None:
    try:
        return float(s.replace(",", "").replace("$", ""))
    except ValueError:
        return None


def gsm8k_target(answer: str) -> float:
    """The number after ``####`` in a GSM8K worked answer."""
    m = _HASHES.search(answer)
    if not m or _number(m.group(1)) is None:
        raise ValueError(f"gsm8k: answer has no '#### N' final line: {answer[-80:]!r}")
    return _number(m.group(1))  # type: ignore[return-value]


def gsm8k_answer(reply: str) -> float | None:
    """The number a reply answers: after ``####`` when it has one, else its last number; None if none."""
    m = _HASHES.search(reply)
    if m:
        return _number(m.group(1))
    nums = [n for n in (_number(x.rstrip(".")) for x in _NUMBER.findall(reply)) if n is not None]
    return nums[-1] if nums else None


def load_gsm8k(source: str | Path, *, limit: int | None = None, split: str = "test", max_new_tokens: int = 256) -> CapabilityTask:
    """GSM8K as a :class:`CapabilityTask` named ``"gsm8k"``: a reply is right when its answer
    (:func:`gsm8k_answer`) equals the ``#### N`` target. A Hub id loads config ``"main"``."""
    hub = not Path(source).is_file()
    raw = _rows(source, split, "main" if hub else None, "gsm8k")
    rows = []
    for i, r in enumerate(raw):
        if not isinstance(r, dict) or not isinstance(r.get("question"), str) or not isinstance(r.get("answer"), str):
            raise ValueError(f"{source}: row {i}: expected an object with string question and answer")
        try:
            rows.append((r["question"].strip(), gsm8k_target(r["answer"])))
        except ValueError as e:
            raise ValueError(f"{source}: row {i}: {e}") from None
    if not rows:
        raise ValueError(f"gsm8k: {source} holds no questions")
    rows = rows[:limit] if limit else rows
    targets = [t for _, t in rows]

    def check(i: int, reply: str) -> bool:
        got = gsm8k_answer(reply)
        return got is not None and abs(got - targets[i]) < 1e-6

    return CapabilityTask("gsm8k", [q for q, _ in rows], check, max_new_tokens=max_new_tokens)
