"""discover's prompt splits: held-out, direction, selection and search prompts, and Arditi et al.'s
filter of them (the harmful prompts the model refuses, the harmless ones it answers)."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Sequence

from ..direction import filter_by_refusal
from .config import DiscoverConfig

__all__ = ["PromptSplits", "split_prompts", "filter_splits"]


@dataclass
class PromptSplits:
    """Harmful prompts: ``held`` (judged by generation, never searched), ``direction``, ``val``
    (direction selection), ``search``; harmless: ``harmless_direction``, ``harmless_val``,
    ``harmless_held`` (judged by generation; ``harmless_held_out`` is False when there were too
    few harmless prompts to hold any out, and they are the selection's)."""

    held: list[str]
    direction: list[str]
    val: list[str]
    search: list[str]
    harmless_direction: list[str]
    harmless_val: list[str]
    harmless_held: list[str]
    harmless_held_out: bool = True
    search_from: str = "search"  # "val" or "direction" when too few prompts were left for a search split

    def sizes(self) -> dict:
        """Prompts per split, and where the search's came from."""
        names = ("held", "direction", "val", "search", "harmless_direction", "harmless_val", "harmless_held")
        return {**{n: len(getattr(self, n)) for n in names}, "search_from": self.search_from,
                "harmless_held_out": self.harmless_held_out}

    def prompts(self) -> dict:
        """Every split's prompts (eval checks its prompts against them)."""
        names = ("held", "direction", "val", "search", "harmless_direction", "harmless_val", "harmless_held")
        return {n: list(getattr(self, n)) for n in names}

    @property
    def selection(self) -> list[str]:
        """Harmful prompts for the refusal tokens, direction selection and attribution."""
        return self.val or self.direction


def _split(xs: list[str], sizes: Sequence[int], seed: int) -> list[list[str]]:
    xs = list(xs)
    random.Random(seed).shuffle(xs)
    out, i = [], 0
    for n in sizes:
        out.append(xs[i : i + n])
        i += n
    return out


def split_prompts(harmful: Sequence[str], harmless: Sequence[str], cfg: DiscoverConfig,
                  heldout_harmful: Sequence[str] | None = None, heldout_harmless: Sequence[str] | None = None) -> PromptSplits:
    """Held-out prompts first, so the search never sees them (see :func:`discover`)."""
    n_held = 0 if heldout_harmful is not None else cfg.n_heldout
    h_held, h_dir, h_val, h_search = _split(list(harmful), [n_held, cfg.n_direction, cfg.n_val, cfg.n_search], cfg.seed)
    if heldout_harmful is not None:
        h_held = _split(list(heldout_harmful), [cfg.n_heldout], cfg.seed)[0]
    # Harmless prompts are held out like the harmful ones (the direction is selected on
    # harmless_val, so rates judged there would not be held out), when there are enough of them.
    n_held_l = cfg.n_heldout if not heldout_harmless and len(harmless) >= cfg.n_heldout + 2 else 0
    l_held, l_dir, l_val = _split(list(harmless), [n_held_l, cfg.n_direction, cfg.n_val], cfg.seed)
    if not h_held:
        raise ValueError("prompts: too few harmful prompts to hold any out")
    if not h_dir:
        raise ValueError(f"prompts: {len(harmful)} harmful prompts leave none for the direction after the "
                         f"{len(h_held)} held out (n_heldout); give more prompts or a smaller n_heldout")
    search_from = "search" if h_search else "val" if h_val else "direction"
    if not h_search:  # the search reuses the selection's (or the direction's) prompts; results warn
        h_search = h_val or h_dir
    held_out = bool(heldout_harmless) or bool(l_held)
    if heldout_harmless:
        l_held = list(heldout_harmless)
    elif not l_held:
        l_held = l_val or l_dir
    return PromptSplits(h_held, h_dir, h_val, h_search, l_dir, l_val, l_held, held_out, search_from)


def filter_splits(model, tokenizer, splits: PromptSplits, refusal_tokens: Sequence[int], cfg: DiscoverConfig) -> tuple[PromptSplits, dict]:
    """Arditi et al.'s filter on the direction's and its selection's prompts: keep the harmful ones
    the model refuses (refusal score > 0) and the harmless ones it answers (< 0). The search's
    harmful prompts are filtered the same way, so a prompt the model never refused does not count
    as flipped by a feature set. A split the filter would empty is kept whole, and
    ``filtering[...]["unfiltered"]`` says so."""
    out, report = {}, {}
    # A search without prompts of its own reuses the val (or direction) prompts: filtered once.
    own_search = (("search", None),) if splits.search_from == "search" else ()
    for h_name, l_name in (("direction", "harmless_direction"), ("val", "harmless_val"), *own_search):
        harmless = getattr(splits, l_name) if l_name else []
        h, kept_l, counts = filter_by_refusal(model, tokenizer, getattr(splits, h_name), harmless, refusal_tokens, cfg.batch_size)
        pairs = [(h_name, getattr(splits, h_name), h, counts["harmful"])]
        if l_name:
            pairs.append((l_name, harmless, kept_l, counts["harmless"]))
        for name, given, kept, c in pairs:
            c["unfiltered"] = bool(given) and not kept
            out[name] = kept if kept or not given else list(given)
            report[name] = c
    if not own_search:
        out["search"] = out[splits.search_from]
    return replace(splits, **out), report
