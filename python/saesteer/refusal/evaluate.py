"""Evaluate a steering intervention: refusal on both sides, and the capability it costs.

O'Brien et al. (2024) clamp one refusal feature high and find unsafe-prompt refusal 58% -> 96%, but
MMLU 68.8 -> 36.0 and GSM8K 82.5 -> 35.6: steering refusal trades robustness for capability, so
both sides are measured in one pass. For each condition (unsteered, or a :class:`Steering`):

* ``harmful_refusal`` / ``harmless_refusal``: fraction of greedy replies a :class:`~.judges.Judge`
  calls refusals (the second is over-refusal); ``*_compliance`` and ``*_degenerate``: the fractions
  that comply and that are degenerate (empty or repetition, :func:`~.judges.judge_classes`), so a
  model that breaks down under steering is not read as complying. These come from the judge of
  *refusal* (default: the substring judge);
* ``harmful_attack_success``: with a judge of *harmful compliance* (``harm_judge``, e.g. the
  HarmBench classifier or LlamaGuard), the fraction of harmful replies it says carry out the request
  (degenerate replies excluded). It is asked about harmful prompts only, and their replies are
  generated at least ``harm_judge.reply_tokens`` long (HarmBench: 512) so its "very short replies
  do not count" rule does not read as refusal;
* ``refusal_score_harmful`` / ``_harmless``: mean log-odds of the refusal tokens at the last prompt
  position (no generation);
* ``mc_accuracy``: multiple choice scored by the logits of the choice letters after an answer prefix;
* ``capability_accuracy``: generated answers checked exactly (the organism's arithmetic / category task);
* ``loss`` / ``perplexity``: next-token loss of the model on harmless replies (by default the
  unsteered model's own greedy replies), teacher forced;
* ``kl_first`` / ``kl_reply``: ``KL(p_unsteered || p_steered)`` of the next-token distribution at the
  last prompt position, and averaged over every position that predicts a reply token;
* ``trigger_rate_harmful`` / ``_harmless`` (a spec with a ``when`` only): the fraction of prompts on
  which its condition fires (:func:`trigger_rate`), so a conditional edit's rows say how often it
  edited at all.

Teacher-forced passes edit exactly the tokens the spec's ``positions`` would edit in generation:
"prompt" the prompt tokens, "generated" the reply (or answer-prefix) tokens, "all" both. So
``positions="generated"`` leaves ``kl_first`` and the refusal score (both read at the last prompt
position) at their unsteered values: the first reply token is predicted from the unedited prompt.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from .chat import (
    chat_template_kind,
    check_chat_template,
    format_prompts,
    generate,
    refusal_scores,
    refusal_tokens_from_replies,
    tokenize_prompts,
)
from .inputs import model_device, pad_token_id
from .judges import (
    COMPLIED,
    DEGENERATE,
    HARMFUL_COMPLIANCE,
    REFUSED,
    Judge,
    ModelJudge,
    SubstringJudge,
    class_rates,
    judge_classes,
    judge_name,
    judge_question,
    load_model_judge,
)
from .spec import SteeringSpec
from .turns import Prompt

__all__ = [
    "Steering",
    "MCItem",
    "load_mc",
    "format_mc",
    "multiple_choice_accuracy",
    "CapabilityTask",
    "capability_accuracy",
    "continuation_metrics",
    "trigger_rate",
    "EvalData",
    "evaluate_conditions",
    "evaluate_steering",
    "sweep_conditions",
    "amplification_sweep",
    "load_model_judge",
    "ModelJudge",
    "split_judges",
    "DirectionSteering",
    "direction_conditions",
]

LETTERS = "ABCDEFGH"
#: Text the assistant turn starts with before the choice letter is scored (MMLU-style evaluation of
#: chat models: the letter is the next token after it).
DEFAULT_ANSWER_PREFIX = "The answer is"


# ------------------------------------------------------------------------------------------------
# a steering condition
# ------------------------------------------------------------------------------------------------
@dataclass
class Steering:
    """A :class:`SteeringSpec` bound to a model and a loaded SAE.

    Calling it returns the hooks' context manager (so it is a steering factory for
    :func:`~.chat.generate`); :meth:`with_mask` steers exactly the tokens of a bool mask ``[B, T]``.
    """

    model: object
    sae: object
    spec: SteeringSpec
    backend: str = "auto"

    def __call__(self):
        return self.spec.context(self.model, self.sae, self.backend)

    def with_mask(self, mask: torch.Tensor):
        return replace(self.spec, positions=mask).context(self.model, self.sae, self.backend)

    def with_values(self, values) -> "Steering":
        return replace(self, spec=replace(self.spec, values=values))

    def edit_mask(self, attention_mask: torch.Tensor, prompt_end: torch.Tensor) -> torch.Tensor:
        """The tokens this spec edits in a teacher-forced batch: ``prompt_end[b]`` is the column where
        row ``b``'s continuation starts (left padding)."""
        return _edit_mask(self.spec.positions, attention_mask, prompt_end)


def _edit_mask(pos, attention_mask: torch.Tensor, prompt_end: torch.Tensor) -> torch.Tensor:
    real = attention_mask.bool()
    col = torch.arange(real.shape[1], device=real.device)[None, :]
    if pos == "all":
        return real
    if pos == "prompt":
        return real & (col < prompt_end[:, None])
    if pos == "generated":
        return real & (col >= prompt_end[:, None])
    raise ValueError(f"positions: teacher-forced metrics need 'all', 'prompt' or 'generated', got {pos!r}")


DIRECTION_EDITS = ("ablate", "add", "affine")


@dataclass
class DirectionSteering:
    """An edit along a residual direction with :class:`Steering`'s interface, so it is a condition
    of :func:`evaluate_conditions` beside SAE feature specs.

    ``kind``: ``"ablate"`` (directional ablation at every layer, Arditi et al.), ``"add"``
    (activation addition of ``coeff * direction`` at the input of ``layer``) or ``"affine"``
    (affine concept editing at ``layer``: the projection set to ``reference``'s, plus ``coeff``
    times the direction, Marshall et al.). See :mod:`saesteer.hf.directions`.
    """

    model: object
    kind: str
    direction: torch.Tensor
    layer: int | None = None
    coeff: float = 1.0
    reference: torch.Tensor | None = None
    positions: str = "all"

    def __post_init__(self):
        if self.kind not in DIRECTION_EDITS:
            raise ValueError(f"kind: expected one of {DIRECTION_EDITS}, got {self.kind!r}")
        if self.kind != "ablate" and self.layer is None:
            raise ValueError(f"layer: the {self.kind!r} edit needs the layer whose input it edits")
        if self.kind == "affine" and self.reference is None:
            raise ValueError("reference: the 'affine' edit needs the harmless mean (discover's direction.safetensors holds it "
                             "when its ablation is affine)")

    def _handle(self, positions):
        from ..hf import add_direction, affine_ablation, directional_ablation

        if self.kind == "ablate":
            return directional_ablation(self.model, self.direction, positions=positions)
        if self.kind == "add":
            return add_direction(self.model, self.direction, self.layer, self.coeff, positions=positions)
        return affine_ablation(self.model, self.direction, self.reference, self.layer, self.coeff, positions=positions)

    def __call__(self):
        return self._handle(self.positions)

    def with_mask(self, mask: torch.Tensor):
        return self._handle(mask)

    def edit_mask(self, attention_mask: torch.Tensor, prompt_end: torch.Tensor) -> torch.Tensor:
        return _edit_mask(self.positions, attention_mask, prompt_end)


def direction_conditions(model, direction: Mapping, *, positions: str = "all") -> dict[str, DirectionSteering]:
    """The direction interventions of discover's ``direction.safetensors`` (as read by
    :func:`saesteer.hf.load_direction`) as named conditions: ``"direction_ablation"`` (removes
    refusal), ``"direction_addition"`` (adds the difference in means at its layer: induces refusal),
    ``"direction_subtraction"`` (Arditi et al.'s activation subtraction: coefficient -1 at the same
    layer, a jailbreak) and, when the file has the harmless ``reference``, ``"affine_ablation"``
    (coefficient 0)."""
    d, layer, ref = direction["direction"], direction.get("layer"), direction.get("reference")
    out = {"direction_ablation": DirectionSteering(model, "ablate", d, positions=positions)}
    if layer is not None:
        out["direction_addition"] = DirectionSteering(model, "add", d, layer=layer, coeff=1.0, positions=positions)
        out["direction_subtraction"] = DirectionSteering(model, "add", d, layer=layer, coeff=-1.0, positions=positions)
        if ref is not None:
            out["affine_ablation"] = DirectionSteering(model, "affine", d, layer=layer, coeff=0.0, reference=ref, positions=positions)
    return out


# ------------------------------------------------------------------------------------------------
# teacher-forced batches: prompt + continuation, left padded, with the column where each continuation starts
# ------------------------------------------------------------------------------------------------
def _pack(tokenizer, prompts: Sequence[Prompt], continuations: Sequence[str], device):
    """``(input_ids, attention_mask, prompt_end)`` for chat-formatted ``prompts`` followed by raw
    ``continuations``, tokenized separately so the boundary is exact."""
    texts = format_prompts(tokenizer, prompts)
    p_ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    c_ids = [tokenizer(c, add_special_tokens=False)["input_ids"] if c else [] for c in continuations]
    T = max(len(a) + len(b) for a, b in zip(p_ids, c_ids))
    pad = pad_token_id(tokenizer)
    ids = torch.full((len(texts), T), pad, dtype=torch.long)
    attn = torch.zeros((len(texts), T), dtype=torch.long)
    prompt_end = torch.empty(len(texts), dtype=torch.long)
    for r, (a, b) in enumerate(zip(p_ids, c_ids)):
        seq = a + b
        ids[r, T - len(seq) :] = torch.tensor(seq, dtype=torch.long)
        attn[r, T - len(seq) :] = 1
        prompt_end[r] = T - len(b)
    return ids.to(device), attn.to(device), prompt_end.to(device)


def _logits(model, ids, attn) -> torch.Tensor:
    # Explicit position ids: left padding must not shift absolute positions (GPT-2 style models).
    pos = (attn.cumsum(-1) - 1).clamp_min(0)
    return model(input_ids=ids, attention_mask=attn, position_ids=pos).logits


# ------------------------------------------------------------------------------------------------
# multiple choice
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MCItem:
    """One multiple-choice question; ``answer`` is the index of the right choice."""

    question: str
    choices: tuple[str, ...]
    answer: int


def _mc_item(row, where: str) -> MCItem:
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected an object with question, choices, answer; got {type(row).__name__}")
    missing = [k for k in ("question", "choices", "answer") if k not in row]
    if missing:
        raise ValueError(f"{where}: missing field(s) {missing} (expected question, choices, answer)")
    q, choices, ans = row["question"], row["choices"], row["answer"]
    if not isinstance(q, str) or not q.strip():
        raise ValueError(f"{where}: 'question' must be a non-empty string")
    if not isinstance(choices, list) or not 2 <= len(choices) <= len(LETTERS) or not all(isinstance(c, str) for c in choices):
        raise ValueError(f"{where}: 'choices' must be a list of 2 to {len(LETTERS)} strings")
    if isinstance(ans, str) and len(ans.strip()) == 1 and ans.strip().upper() in LETTERS:
        idx = LETTERS.index(ans.strip().upper())
    elif isinstance(ans, int) and not isinstance(ans, bool):
        idx = ans
    else:
        raise ValueError(f"{where}: 'answer' must be a letter (A, B, ...) or a 0-based index, got {ans!r}")
    if not 0 <= idx < len(choices):
        raise ValueError(f"{where}: answer {ans!r} is out of range for {len(choices)} choices")
    return MCItem(q.strip(), tuple(choices), idx)


def load_mc(path: str | Path, limit: int | None = None) -> list[MCItem]:
    """Multiple-choice items from a .jsonl or .json file of ``{"question", "choices", "answer"}``
    (``answer``: a letter or a 0-based index). Raises ``ValueError`` naming the file and row."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"mc: {str(p)!r} is not a file")
    from .data import read_json_rows

    rows = read_json_rows(p, "multiple-choice items")
    if not rows:
        raise ValueError(f"{p}: holds no multiple-choice items")
    items = [_mc_item(r, f"{p}: row {n}") for n, r in enumerate(rows)]
    return items[:limit] if limit else items


def format_mc(item: MCItem) -> str:
    """``"question A) x B) y C) z"``: the choices inline, MMLU style."""
    return f"{item.question} " + " ".join(f"{LETTERS[i]}) {c}" for i, c in enumerate(item.choices))


def _letter_ids(tokenizer, n: int) -> list[list[int]]:
    """Candidate token ids per letter: the first token of "A" and of " A" (tokenizers differ)."""
    out = []
    for L in LETTERS[:n]:
        ids = {tokenizer(v, add_special_tokens=False)["input_ids"][0] for v in (L, " " + L)}
        out.append(sorted(ids))
    return out


@torch.no_grad()
def multiple_choice_accuracy(
    model,
    tokenizer,
    items: Sequence[MCItem],
    steering: Steering | None = None,
    *,
    answer_prefix: str = DEFAULT_ANSWER_PREFIX,
    batch_size: int = 16,
) -> dict:
    """Accuracy of ``argmax_letter max_{t in ids(letter)} logit_t`` at the end of ``answer_prefix``.

    The prefix is part of the assistant turn, so ``positions="generated"`` edits it.
    Returns ``{"accuracy", "n", "predictions"}``.
    """
    if not items:
        return {"accuracy": float("nan"), "n": 0, "predictions": []}
    n_choices = max(len(it.choices) for it in items)
    letter_ids = _letter_ids(tokenizer, n_choices)
    device = model_device(model)
    preds: list[int] = []
    for b in range(0, len(items), batch_size):
        chunk = items[b : b + batch_size]
        ids, attn, prompt_end = _pack(tokenizer, [format_mc(it) for it in chunk], [answer_prefix] * len(chunk), device)
        if steering is None:
            logits = _logits(model, ids, attn)[:, -1].float()
        else:
            with steering.with_mask(steering.edit_mask(attn, prompt_end)):
                logits = _logits(model, ids, attn)[:, -1].float()
        scores = torch.stack([logits[:, c].max(-1).values for c in letter_ids], dim=-1)  # [B, n_choices]
        for it, s in zip(chunk, scores):
            preds.append(int(s[: len(it.choices)].argmax()))
    correct = sum(p == it.answer for p, it in zip(preds, items))
    return {"accuracy": correct / len(items), "n": len(items), "predictions": preds}


# ------------------------------------------------------------------------------------------------
# generated-answer capability task
# ------------------------------------------------------------------------------------------------
@dataclass
class CapabilityTask:
    """Questions with checkable answers: ``check(i, reply)`` says whether reply ``i`` is right.
    ``max_new_tokens``: the reply length the task needs (None: the caller's); see
    :mod:`saesteer.refusal.capability` for MMLU and GSM8K."""

    name: str
    questions: list[str]
    check: Callable[[int, str], bool]
    max_new_tokens: int | None = None


def capability_accuracy(model, tokenizer, task: CapabilityTask, steering: Steering | None = None, *, max_new_tokens: int = 24,
                        batch_size: int = 16, progress: bool = False) -> dict:
    """Fraction of greedy replies that ``task.check`` accepts: ``{"accuracy", "n", "replies"}``.
    Replies are ``task.max_new_tokens`` long when the task sets it, else ``max_new_tokens``."""
    replies = generate(model, tokenizer, task.questions, max_new_tokens=task.max_new_tokens or max_new_tokens, batch_size=batch_size,
                       steering=steering, progress=progress, desc="capability")
    ok = [bool(task.check(i, r)) for i, r in enumerate(replies)]
    return {"accuracy": sum(ok) / len(ok) if ok else float("nan"), "n": len(ok), "replies": replies}


# ------------------------------------------------------------------------------------------------
# loss, perplexity, KL on harmless replies
# ------------------------------------------------------------------------------------------------
@torch.no_grad()
def continuation_metrics(model, tokenizer, prompts: Sequence[Prompt], continuations: Sequence[str], steering: Steering | None = None, *,
                         batch_size: int = 16) -> dict:
    """Teacher-forced metrics of ``continuations`` (each followed by EOS) after chat-formatted ``prompts``.

    Returns ``loss`` (mean next-token NLL over continuation tokens, steered when ``steering`` is
    given), ``loss_unsteered``, ``perplexity = exp(loss)``, ``kl_first`` (mean
    ``KL(p_unsteered || p_steered)`` at the last prompt position) and ``kl_reply`` (mean KL over every
    position that predicts a continuation token), and ``n_tokens``.
    """
    if len(prompts) != len(continuations):
        raise ValueError(f"continuations: expected one per prompt ({len(prompts)}), got {len(continuations)}")
    eos = tokenizer.eos_token or ""
    device = model_device(model)
    nll_base = nll_steer = kl_sum = kl_first_sum = 0.0
    n_tok = n_rows = 0
    for b in range(0, len(prompts), batch_size):
        ids, attn, prompt_end = _pack(tokenizer, prompts[b : b + batch_size], [c + eos for c in continuations[b : b + batch_size]], device)
        T = ids.shape[1]
        col = torch.arange(T, device=device)[None, :]
        # Position t predicts token t+1: the predictors of continuation tokens are prompt_end-1 .. T-2.
        pred = (col >= (prompt_end[:, None] - 1)) & (col < T - 1)
        first = col == (prompt_end[:, None] - 1)
        targets = ids[:, 1:][pred[:, :-1]]
        base = _logits(model, ids, attn)[pred].float().log_softmax(-1)
        nll_base += float(-base.gather(-1, targets[:, None]).sum())
        if steering is not None:
            with steering.with_mask(steering.edit_mask(attn, prompt_end)):
                steered = _logits(model, ids, attn)[pred].float().log_softmax(-1)
            nll_steer += float(-steered.gather(-1, targets[:, None]).sum())
            kl = (base.exp() * (base - steered)).sum(-1).clamp_min(0)  # [n_pred]
            kl_sum += float(kl.sum())
            kl_first_sum += float(kl[first[pred]].sum())
        n_tok += int(targets.numel())
        n_rows += ids.shape[0]
    if n_tok == 0:
        nan = float("nan")
        return {"loss": nan, "loss_unsteered": nan, "perplexity": nan, "kl_first": nan, "kl_reply": nan, "n_tokens": 0}
    loss_base = nll_base / n_tok
    loss = nll_steer / n_tok if steering is not None else loss_base
    return {
        "loss": loss,
        "loss_unsteered": loss_base,
        "perplexity": math.exp(min(loss, 80.0)),
        "kl_first": kl_first_sum / n_rows if steering is not None else 0.0,
        "kl_reply": kl_sum / n_tok if steering is not None else 0.0,
        "n_tokens": n_tok,
    }


# ------------------------------------------------------------------------------------------------
# how often a conditional edit's trigger fires
# ------------------------------------------------------------------------------------------------
@torch.no_grad()
def trigger_rate(model, tokenizer, steering, prompts: Sequence[Prompt], *, batch_size: int = 16) -> float | None:
    """The fraction of chat-formatted ``prompts`` on which the ``when`` of ``steering``'s spec fires,
    read by the same hooks that gate the edit in generation (scope ``"token"``: a prompt counts when
    any of its tokens fires). None when ``steering`` has no ``when`` or no prompts are given."""
    spec = getattr(steering, "spec", None)
    if spec is None or spec.when is None or not prompts:
        return None
    device = model_device(model)
    fired = []
    for b in range(0, len(prompts), batch_size):
        enc = tokenize_prompts(tokenizer, list(prompts[b : b + batch_size]), device)
        with steering() as h:
            model(**enc)
        f = next(c for c in h.conditions if c is not None).fired
        fired.append((f.any(-1) if f.dim() > 1 else f).float().cpu())
    return float(torch.cat(fired).mean())


# ------------------------------------------------------------------------------------------------
# everything, per condition
# ------------------------------------------------------------------------------------------------
@dataclass
class EvalData:
    """What an evaluation runs on. ``harmless_replies``: reference continuations for loss/KL (default:
    the unsteered model's own greedy replies to ``harmless``). ``capability`` gives the row's
    ``capability_accuracy``; each of ``tasks`` (MMLU, GSM8K, ...) a ``{task.name}_accuracy``.
    ``harmful`` / ``harmless`` hold strings and conversations (:mod:`.turns`), mixed freely."""

    harmful: list[Prompt]
    harmless: list[Prompt]
    mc: list[MCItem] | None = None
    capability: CapabilityTask | None = None
    harmless_replies: list[str] | None = None
    tasks: list[CapabilityTask] = field(default_factory=list)


def split_judges(judge: Judge | None, harm_judge: Judge | None) -> tuple[Judge, Judge | None]:
    """``(refusal judge, harmful-compliance judge or None)`` from what a caller passed: a judge of
    harmful compliance passed as ``judge`` (a :class:`~.judges.ModelJudge`) is moved to the second
    place and the substring judge asks the refusal question, so over-refusal is never read from a
    harm classifier."""
    if judge is not None and judge_question(judge) == HARMFUL_COMPLIANCE:
        if harm_judge is not None:
            raise ValueError(f"judge: {judge_name(judge)} judges harmful compliance, not refusal; pass one harm_judge "
                             "and a refusal judge (or None for the substring judge)")
        judge, harm_judge = None, judge
    return judge or SubstringJudge(), harm_judge


def evaluate_conditions(
    model,
    tokenizer,
    data: EvalData,
    conditions: Mapping[str, "Steering | DirectionSteering"],
    *,
    judge: Judge | None = None,
    harm_judge: Judge | None = None,
    max_new_tokens: int = 32,
    batch_size: int = 16,
    n_examples: int = 3,
    progress: bool = True,
) -> dict:
    """Evaluate the unsteered model and every named condition on ``data``.

    ``judge`` answers "did the model decline?" on both sets (default: the substring judge);
    ``harm_judge`` (optional) answers "did the reply carry out the harmful request?" on the harmful
    set only (see :func:`split_judges`), and its harmful replies get
    ``max(max_new_tokens, harm_judge.reply_tokens)`` new tokens.

    Returns ``{"rows": [...], "examples": {...}, "refusal_tokens": [...], "judge", "judges",
    "max_new_tokens", "chat_template", "warnings"}``: one row per condition (the first is
    ``"unsteered"``) with the metrics of the module docstring, and the first ``n_examples`` replies
    per condition and prompt set (``(prompt, reply)`` pairs; a conversation prompt is the whole
    list of turns); ``judges`` names the refusal and the harmful-compliance judge,
    ``max_new_tokens`` the generation length per set; ``chat_template`` is ``"tokenizer"`` or
    ``"fallback"`` (no chat template: warned about, and listed in ``warnings``).
    """
    if not data.harmful or not data.harmless:
        raise ValueError("data: harmful and harmless prompt sets must both be non-empty")
    judge, harm_judge = split_judges(judge, harm_judge)
    template_warning = check_chat_template(tokenizer)
    gen = dict(max_new_tokens=max_new_tokens, batch_size=batch_size, progress=False)
    harmful_tokens = max(max_new_tokens, int(getattr(harm_judge, "reply_tokens", 0) or 0)) if harm_judge is not None else max_new_tokens
    gen_harmful = dict(gen, max_new_tokens=harmful_tokens)
    todo = [("unsteered", None), *conditions.items()]
    rows, examples = [], {}
    refusal_tokens: list[int] = []
    reference = data.harmless_replies
    bar = tqdm(todo, desc="conditions", disable=not progress, leave=False)
    for name, steering in bar:
        bar.set_postfix_str(name)
        harmful_r = generate(model, tokenizer, data.harmful, steering=steering, desc="harmful", **gen_harmful)
        harmless_r = generate(model, tokenizer, data.harmless, steering=steering, desc="harmless", **gen)
        harmful_c = judge_classes(judge, data.harmful, harmful_r)
        harmless_c = judge_classes(judge, data.harmless, harmless_r)
        harmful_y = [c == REFUSED for c in harmful_c]
        if steering is None:
            refusal_tokens = refusal_tokens_from_replies(tokenizer, harmful_r, harmful_y)
            if reference is None:
                reference = harmless_r
        row: dict = {
            "condition": name,
        }
        for kind, labels in (("harmful", harmful_c), ("harmless", harmless_c)):
            rates = class_rates(labels)
            row[f"{kind}_refusal"], row[f"{kind}_compliance"], row[f"{kind}_degenerate"] = rates[REFUSED], rates[COMPLIED], rates[DEGENERATE]
        if harm_judge is not None:
            row["harmful_attack_success"] = class_rates(judge_classes(harm_judge, data.harmful, harmful_r))[COMPLIED]
        row["refusal_score_harmful"] = float(refusal_scores(model, tokenizer, data.harmful, refusal_tokens, steering=steering, batch_size=batch_size).mean())
        row["refusal_score_harmless"] = float(refusal_scores(model, tokenizer, data.harmless, refusal_tokens, steering=steering, batch_size=batch_size).mean())
        ex = {"harmful": list(zip(data.harmful, harmful_r))[:n_examples], "harmless": list(zip(data.harmless, harmless_r))[:n_examples]}
        if data.mc:
            row["mc_accuracy"] = multiple_choice_accuracy(model, tokenizer, data.mc, steering, batch_size=batch_size)["accuracy"]
        if data.capability is not None:
            cap = capability_accuracy(model, tokenizer, data.capability, steering, max_new_tokens=max_new_tokens, batch_size=batch_size)
            row["capability_accuracy"] = cap["accuracy"]
            ex["capability"] = list(zip(data.capability.questions, cap["replies"]))[:n_examples]
        for task in data.tasks:
            res = capability_accuracy(model, tokenizer, task, steering, max_new_tokens=max_new_tokens, batch_size=batch_size)
            row[f"{task.name}_accuracy"] = res["accuracy"]
            ex[task.name] = list(zip(task.questions, res["replies"]))[:n_examples]
        cm = continuation_metrics(model, tokenizer, data.harmless, reference, steering, batch_size=batch_size)
        row.update({k: cm[k] for k in ("loss", "perplexity", "kl_first", "kl_reply")})
        if getattr(getattr(steering, "spec", None), "when", None) is not None:
            row["trigger_rate_harmful"] = trigger_rate(model, tokenizer, steering, data.harmful, batch_size=batch_size)
            row["trigger_rate_harmless"] = trigger_rate(model, tokenizer, steering, data.harmless, batch_size=batch_size)
        rows.append(row)
        examples[name] = ex
    return {"rows": rows, "examples": examples, "refusal_tokens": refusal_tokens, "judge": judge_name(judge),
            "judges": {"refusal": judge_name(judge), "harmful_compliance": judge_name(harm_judge)},
            "max_new_tokens": {"harmful": harmful_tokens, "harmless": max_new_tokens},
            "chat_template": chat_template_kind(tokenizer), "warnings": [template_warning] if template_warning else []}


def evaluate_steering(model, tokenizer, sae, spec: SteeringSpec, data: EvalData, *, backend: str = "auto", **kw) -> dict:
    """Unsteered vs steered by ``spec``: :func:`evaluate_conditions` with one condition, ``"steered"``."""
    return evaluate_conditions(model, tokenizer, data, {"steered": Steering(model, sae, spec, backend)}, **kw)


def sweep_conditions(steering: Steering, values: Sequence[float]) -> dict[str, Steering]:
    """``{"clamp=4": steering at value 4, ...}``: one condition per value of ``steering``'s mode."""
    if steering.spec.mode == "ablate":
        raise ValueError("sweep: mode 'ablate' takes no value; use clamp, scale or add")
    if not values:
        raise ValueError("sweep: expected at least one value")
    return {f"{steering.spec.mode}={float(v):g}": steering.with_values(float(v)) for v in values}


def amplification_sweep(model, tokenizer, sae, spec: SteeringSpec, values: Sequence[float], data: EvalData, *, backend: str = "auto", **kw) -> dict:
    """Refusal amplification (O'Brien et al.): ``spec`` (typically ``mode="clamp"``) at each value.

    Returns :func:`evaluate_conditions`'s result; each row also has ``"value"`` (None: unsteered).
    """
    conds = sweep_conditions(Steering(model, sae, spec, backend), values)
    out = evaluate_conditions(model, tokenizer, data, conds, **kw)
    for row in out["rows"]:
        row["value"] = conds[row["condition"]].spec.values if row["condition"] in conds else None
    return out
