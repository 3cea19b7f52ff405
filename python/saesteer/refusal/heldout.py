"""Held-out evaluation: the prompts that chose a steering spec must not be the prompts it is
evaluated on. discover records its splits in ``results.json`` next to ``spec.json``; eval reads them
(:func:`chosen_prompts`) and finds the evaluated prompts among them (:func:`overlap`).

The splits that chose the spec are the direction's, its selection's and the search's prompts
(harmful and harmless); discover's ``held`` / ``harmless_held`` prompts were only judged, so
evaluating on them is held out. ``results["split_prompts"]`` holds, per split name, the list of its
prompts (``{"direction": [...], ...}``; ``results["splits"]`` their counts); a split given only as a
count (older results) cannot be checked, and :func:`chosen_prompts` says so.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

from .turns import Prompt

__all__ = ["CHOOSING_SPLITS", "results_next_to", "chosen_prompts", "prompt_key", "overlap"]

#: discover's splits whose prompts chose the direction, the candidates or the minimal set.
CHOOSING_SPLITS = ("direction", "val", "search", "harmless_direction", "harmless_val")


def results_next_to(spec_path: str | Path) -> dict | None:
    """discover's ``results.json`` in the spec file's directory, or None when there is none."""
    p = Path(spec_path).expanduser().parent / "results.json"
    if not p.is_file():
        return None
    try:
        r = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"--steer: {p} next to the spec is not valid JSON ({e.msg} at line {e.lineno})") from None
    return r if isinstance(r, dict) else None


def chosen_prompts(results: Mapping) -> tuple[dict[str, list[Prompt]], list[str]]:
    """``({split: its prompts}, [splits recorded as counts only])`` of the :data:`CHOOSING_SPLITS`
    in discover's ``results["split_prompts"]`` (counts in ``results["splits"]``)."""
    splits = results.get("splits") or {}
    lists = results.get("split_prompts") if isinstance(results.get("split_prompts"), Mapping) else splits
    found, counts_only = {}, []
    for name in CHOOSING_SPLITS:
        v = lists.get(name, splits.get(name))
        if isinstance(v, list):
            found[name] = v
        elif isinstance(v, int) and not isinstance(v, bool) and v > 0:
            counts_only.append(name)
    return found, counts_only


def prompt_key(p: Prompt) -> str:
    """A prompt compared by content: a string stripped, a conversation as its turns' JSON."""
    if isinstance(p, str):
        return " ".join(p.split())
    return json.dumps(list(p), sort_keys=True)


def overlap(prompts: Sequence[Prompt], chosen: Mapping[str, Sequence[Prompt]]) -> dict[str, int]:
    """Per split of ``chosen``, how many of ``prompts`` are among its prompts (splits with none are left out)."""
    keys = [prompt_key(p) for p in prompts]
    out = {}
    for name, ps in chosen.items():
        s = {prompt_key(p) for p in ps}
        n = sum(k in s for k in keys)
        if n:
            out[name] = n
    return out
