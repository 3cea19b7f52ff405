"""Chat-templated prompts, batched generation, and the refusal score (no generation needed).

Every function that takes ``instructions`` takes strings (one user turn each) and conversations
(lists of turns ending with a user turn, :mod:`.turns`), mixed freely.

Refusal score (Arditi et al.): the log-odds, at the last prompt position, of the refusal tokens
``R`` -- ``log p(R) - log(1 - p(R))`` with ``p(R) = sum_{t in R} p(t)``. ``R`` is found from the
model's own refusals: the first tokens of its replies that the judge calls refusals.
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from collections import Counter
from typing import Callable, ContextManager, Sequence

import torch
from tqdm.auto import tqdm

from .inputs import model_device, pad_token_id, tokenize_texts
from .judges import SubstringJudge
from .turns import PLAIN_FORMAT, Prompt, as_prompt, plain_format

__all__ = [
    "format_prompts",
    "chat_template_kind",
    "check_chat_template",
    "post_instruction_positions",
    "tokenize_texts",
    "tokenize_prompts",
    "generate",
    "find_refusal_tokens",
    "refusal_tokens_from_replies",
    "refusal_scores",
    "last_token_logits",
    "pad_token_id",
    "model_device",
]

def chat_template_kind(tokenizer) -> str:
    """``"tokenizer"`` when the tokenizer has a chat template, ``"fallback"`` when prompts are
    formatted as ``User: ...\\nAssistant:`` instead (:func:`~.turns.plain_format`)."""
    return "tokenizer" if getattr(tokenizer, "chat_template", None) else "fallback"


def check_chat_template(tokenizer) -> str | None:
    """Warn (``warnings.warn``) and return the message when the tokenizer has no chat template, so
    the plain fallback is used; None when it has one. A chat model prompted outside its own template
    refuses differently, so every refusal number depends on this."""
    if chat_template_kind(tokenizer) == "tokenizer":
        return None
    msg = (f"the tokenizer has no chat template; prompts are formatted as '{PLAIN_FORMAT}' (one 'Role: ...' line per turn) "
           "instead, which changes every refusal number (give a tokenizer with a chat template)")
    warnings.warn(msg, UserWarning, stacklevel=2)
    return msg


def format_prompts(tokenizer, instructions: Sequence[Prompt]) -> list[str]:
    """Apply the tokenizer's chat template with a generation prompt (a plain template if it has none,
    see :func:`check_chat_template`).

    A string is one user turn, ``[{"role": "user", "content": s}]``; a conversation (a list of turns
    ending with a user turn, or of alternating user / assistant strings, see :mod:`.turns`) goes to
    ``tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)`` as it is,
    system turns included. Without a template, :func:`~.turns.plain_format`: one ``Role: content``
    line per turn, then ``Assistant:``. Raises ``ValueError`` naming ``instructions[i]`` for a
    malformed conversation, or one the tokenizer's template rejects (some refuse a system turn).
    """
    prompts = [as_prompt(p, f"instructions[{i}]") for i, p in enumerate(instructions)]
    if chat_template_kind(tokenizer) != "tokenizer":
        return [plain_format(p) for p in prompts]
    from jinja2.exceptions import TemplateError

    out = []
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            out.append(tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True))
            continue
        try:
            out.append(tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True))
        except TemplateError as e:
            raise ValueError(f"instructions[{i}]: the tokenizer's chat template rejects this conversation ({e}); "
                             f"roles {[t['role'] for t in p]}") from None
    return out


def post_instruction_positions(tokenizer) -> int:
    """How many tokens the chat template puts after the user's text (Arditi's post-instruction tokens).

    Found by formatting a marker instruction and counting the tokens that start after it.
    """
    marker = "zq marker text"
    text = format_prompts(tokenizer, [marker])[0]
    end = text.index(marker) + len(marker)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    n = sum(1 for (s, e) in enc["offset_mapping"] if s >= end and e > s)
    return max(n, 1)


def tokenize_prompts(tokenizer, instructions: Sequence[Prompt], device=None):
    """Left-padded batch of chat-formatted prompts: ``{input_ids, attention_mask}``."""
    return tokenize_texts(tokenizer, format_prompts(tokenizer, instructions), device)


SteeringFactory = Callable[[], ContextManager]


@torch.no_grad()
def generate(
    model,
    tokenizer,
    instructions: Sequence[Prompt],
    *,
    max_new_tokens: int = 32,
    batch_size: int = 16,
    steering: SteeringFactory | Sequence[SteeringFactory] | None = None,
    progress: bool = True,
    desc: str = "generate",
    **generate_kwargs,
) -> list[str]:
    """Greedy (by default) batched generation of replies to chat-templated ``instructions``.

    ``steering``: a zero-argument callable returning a context manager (e.g.
    ``lambda: saesteer.steer(model, sae, iv)``) applied around every batch, or one such callable per
    instruction (rows with the same callable are batched together).
    """
    instructions = list(instructions)
    per_row = isinstance(steering, (list, tuple))
    if per_row and len(steering) != len(instructions):
        raise ValueError(f"steering: expected one entry per instruction ({len(instructions)}), got {len(steering)}")
    groups: dict[int, list[int]] = {}
    factories: dict[int, SteeringFactory | None] = {}
    for i in range(len(instructions)):
        f = steering[i] if per_row else steering
        groups.setdefault(id(f), []).append(i)
        factories[id(f)] = f
    # Formatted up front, so a malformed conversation is named by its index in ``instructions``.
    formatted = format_prompts(tokenizer, instructions)
    replies: list[str | None] = [None] * len(instructions)
    kw = dict(do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=pad_token_id(tokenizer))
    kw.update(generate_kwargs)
    bar = tqdm(total=len(instructions), desc=desc, disable=not progress, leave=False)
    for key, rows in groups.items():
        factory = factories[key]
        for b in range(0, len(rows), batch_size):
            idx = rows[b : b + batch_size]
            enc = tokenize_texts(tokenizer, [formatted[i] for i in idx], model_device(model))
            ctx = factory() if factory is not None else contextlib.nullcontext()
            with ctx:
                out = model.generate(**enc, **kw)
            texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            for i, t in zip(idx, texts):
                replies[i] = t.strip()
            bar.update(len(idx))
    bar.close()
    return replies  # type: ignore[return-value]


@torch.no_grad()
def last_logits(model, enc) -> torch.Tensor:
    """Logits ``[B, vocab]`` at the last position of the batch ``enc``; only that position goes
    through the LM head when the model takes ``logits_to_keep`` (HF causal LMs do), which on a
    small model with a large vocabulary is most of a forward's cost."""
    if "logits_to_keep" in inspect.signature(model.forward).parameters:
        return model(**enc, logits_to_keep=1).logits[:, -1]
    return model(**enc).logits[:, -1]


def last_token_logits(model, tokenizer, instructions: Sequence[Prompt], batch_size: int = 32, steering: SteeringFactory | None = None) -> torch.Tensor:
    """Logits ``[N, vocab]`` (float32) at the last prompt position of each chat-formatted instruction."""
    texts = format_prompts(tokenizer, instructions)  # errors name the index in ``instructions``
    outs = []
    for b in range(0, len(texts), batch_size):
        enc = tokenize_texts(tokenizer, texts[b : b + batch_size], model_device(model))
        ctx = steering() if steering is not None else contextlib.nullcontext()
        with ctx:
            outs.append(last_logits(model, enc).float().cpu())
    return torch.cat(outs) if outs else torch.empty(0)


def refusal_tokens_from_replies(tokenizer, replies: Sequence[str], labels: Sequence[bool], top: int = 2) -> list[int]:
    """The ``top`` most common first tokens of the replies labelled refusals; the first token of
    "I'm sorry" / "I cannot" when none is."""
    firsts: Counter = Counter()
    for r, y in zip(replies, labels):
        ids = tokenizer(r, add_special_tokens=False)["input_ids"] if y and r else []
        if ids:
            firsts[ids[0]] += 1
    if not firsts:
        for s in ("I'm sorry", "I cannot"):
            ids = tokenizer(s, add_special_tokens=False)["input_ids"]
            if ids:
                firsts[ids[0]] += 1
    return [t for t, _ in firsts.most_common(top)]


def find_refusal_tokens(model, tokenizer, harmful: Sequence[Prompt], max_new_tokens: int = 16, top: int = 2, judge=None) -> list[int]:
    """The refusal tokens ``R``: most common first tokens of the model's own refusals."""
    judge = judge or SubstringJudge()
    replies = generate(model, tokenizer, harmful, max_new_tokens=max_new_tokens, progress=False)
    return refusal_tokens_from_replies(tokenizer, replies, judge(harmful, replies), top)


def refusal_scores_from_logits(logits: torch.Tensor, refusal_tokens: Sequence[int]) -> torch.Tensor:
    """``log p(R) - log(1 - p(R))`` per row of ``logits [N, vocab]`` (differentiable)."""
    logp = torch.log_softmax(logits.double(), dim=-1)
    lp_r = torch.logsumexp(logp[:, list(refusal_tokens)], dim=-1)
    # log(1 - p) computed stably from log p.
    lp_not = torch.log((-torch.expm1(lp_r)).clamp_min(1e-300))
    return (lp_r - lp_not).float()


def refusal_scores(model, tokenizer, instructions: Sequence[Prompt], refusal_tokens: Sequence[int], steering: SteeringFactory | None = None, batch_size: int = 32) -> torch.Tensor:
    """Refusal score (log-odds of ``R`` at the last prompt position) of each instruction, ``[N]``."""
    return refusal_scores_from_logits(last_token_logits(model, tokenizer, instructions, batch_size, steering), refusal_tokens)
