"""Prompts with several turns: a prompt is a string (one user turn) or a conversation.

A conversation is a list of turns in HuggingFace's chat format, ``[{"role": "user" | "assistant" |
"system", "content": str}, ...]``, whose last turn is a user turn: the model's reply comes next
(multi-turn attacks, O'Brien et al.: harmless setup turns, then the request). A plain list of
strings is also a conversation: alternating user / assistant turns starting with the user, so it
has an odd length. :func:`as_prompt` checks one prompt and returns it in the dict form;
:func:`prompt_text` is the text shown for it (its last user turn), :func:`prompt_label` that text
with the number of earlier turns, for reports.

This module imports nothing from the package, so the prompt loaders, the chat helpers, the judges
and the reports can all use it.
"""

from __future__ import annotations

from typing import Callable, Sequence, Union

__all__ = ["ROLES", "Prompt", "Conversation", "is_conversation", "as_prompt", "as_prompts", "prompt_text", "prompt_label", "map_last_user",
           "plain_format", "PLAIN_FORMAT"]

#: The roles a turn may have.
ROLES: tuple[str, ...] = ("system", "user", "assistant")

Conversation = list[dict]
#: One prompt: a user instruction, or a conversation ending with a user turn.
Prompt = Union[str, Conversation]

#: How a prompt is written for a tokenizer without a chat template: one ``Role: content`` line per
#: turn, then the assistant's cue. A string prompt gives ``User: ...\nAssistant:``.
PLAIN_FORMAT = "User: ...\\nAssistant:"
_PLAIN_ROLE = {"system": "System", "user": "User", "assistant": "Assistant"}


def is_conversation(prompt) -> bool:
    """True when ``prompt`` is a list (or tuple) of turns rather than one string."""
    return isinstance(prompt, (list, tuple))


def _kind(x) -> str:
    return "None" if x is None else type(x).__name__


def _turn(t, n: int, where: str) -> dict:
    if not isinstance(t, dict):
        raise ValueError(f"{where}: turn {n} is a {_kind(t)}; expected {{'role': ..., 'content': str}} like the other turns")
    if "role" not in t or "content" not in t:
        raise ValueError(f"{where}: turn {n} has fields {sorted(map(str, t))}; expected 'role' and 'content'")
    if t["role"] not in ROLES:
        raise ValueError(f"{where}: turn {n} has role {t['role']!r}; expected one of {', '.join(map(repr, ROLES))}")
    if not isinstance(t["content"], str):
        raise ValueError(f"{where}: turn {n} ({t['role']}) has content of type {_kind(t['content'])}; expected a string")
    return dict(t)  # a copy: other keys (a turn's "name") go to the chat template unchanged


def as_prompt(prompt, where: str = "prompt") -> Prompt:
    """``prompt`` checked: a string unchanged, a conversation as a new list of new turn dicts (the
    input is never modified; a list of strings becomes alternating user / assistant turns).

    Raises ``ValueError`` starting with ``where`` for anything else: an empty list, a turn that is
    not a ``{"role", "content"}`` dict, an unknown role, content that is not a string, a list mixing
    strings and dicts, or a last turn that is not the user's.
    """
    if isinstance(prompt, str):
        return prompt
    if not is_conversation(prompt):
        raise ValueError(f"{where}: a {_kind(prompt)}; expected a string or a list of turns "
                         "[{'role': 'user', 'content': ...}, ...] ending with a user turn")
    if not prompt:
        raise ValueError(f"{where}: an empty conversation; expected at least one turn, the last one a user turn")
    if all(isinstance(t, str) for t in prompt):
        turns = [{"role": ("user", "assistant")[n % 2], "content": t} for n, t in enumerate(prompt)]
    elif any(isinstance(t, str) for t in prompt):
        raise ValueError(f"{where}: a list mixing strings and turns; expected all strings (alternating user / assistant, "
                         "starting with the user) or all {'role', 'content'} dicts")
    else:
        turns = [_turn(t, n, where) for n, t in enumerate(prompt)]
    if turns[-1]["role"] != "user":
        plain = " (a list of strings alternates user / assistant from the user, so it needs an odd length)" if isinstance(prompt[0], str) else ""
        raise ValueError(f"{where}: the last turn is {turns[-1]['role']!r}; expected a user turn, since the model's "
                         f"reply comes next{plain}")
    return turns


def as_prompts(prompts: Sequence, what: str = "prompts") -> list[Prompt]:
    """Every prompt checked by :func:`as_prompt`, errors naming ``what[i]``."""
    return [as_prompt(p, f"{what}[{i}]") for i, p in enumerate(prompts)]


def prompt_text(prompt: Prompt) -> str:
    """The text shown for a prompt: the string itself, or a conversation's last user turn."""
    if isinstance(prompt, str):
        return prompt
    return next(t["content"] for t in reversed(prompt) if t.get("role") == "user")


def prompt_label(prompt: Prompt, width: int | None = None) -> str:
    """:func:`prompt_text` (its first ``width`` characters when given), and for a conversation how
    many turns came before it, for reports: ``"the request (after 2 earlier turns)"``."""
    text = prompt_text(prompt)[:width]
    if isinstance(prompt, str) or len(prompt) == 1:
        return text
    n = len(prompt) - 1
    return f"{text} (after {n} earlier turn{'s' if n != 1 else ''})"


def map_last_user(prompt: Prompt, fn: Callable[[str], str]) -> Prompt:
    """``fn`` applied to the instruction: the string itself, or a conversation's last user turn (a
    new conversation; the earlier turns are kept as they are)."""
    if isinstance(prompt, str):
        return fn(prompt)
    turns = as_prompt(prompt)
    turns[-1] = dict(turns[-1], content=fn(turns[-1]["content"]))
    return turns


def plain_format(prompt: Prompt) -> str:
    """The prompt for a tokenizer without a chat template: ``System: ...`` / ``User: ...`` /
    ``Assistant: ...`` lines, one per turn, then ``Assistant:``. A string is one user turn:
    ``User: {text}\\nAssistant:``."""
    turns = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    return "".join(f"{_PLAIN_ROLE[t['role']]}: {t['content']}\n" for t in turns) + "Assistant:"
