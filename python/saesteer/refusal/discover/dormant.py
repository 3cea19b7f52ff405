"""discover's dormant features, measured causally: per pair (an SAE holding part of the minimal
set, a later SAE), the later SAE's features silent on every unsteered token that fire when only
the earlier SAE's part is edited, on the same tokens (:func:`~saesteer.refusal.dormant.downstream_dormant`).

With one SAE nothing is measured: at the edited hook point the activations depend on the tokens
only, so a difference there would come from different reply text, not from the edit."""

from __future__ import annotations

from typing import Sequence

from ..chat import format_prompts
from ..dormant import downstream_dormant
from ..saeset import SAESet
from .config import DiscoverConfig

__all__ = ["dormant_stage"]


def dormant_stage(model, tokenizer, saes: SAESet, prompts: Sequence[str], before: Sequence[str], after: Sequence[str],
                  found: Sequence[int], cfg: DiscoverConfig) -> list[dict] | None:
    """Rows ``{edited, edited_features, read, ...}`` (None with one SAE: nothing downstream to read).
    ``before`` / ``after``: each prompt's unsteered and steered reply; both are read, so the tokens
    on which the later SAE fires include those the edit produced."""
    if len(saes) == 1:
        return None
    own = saes.split(found)
    fmt = format_prompts(tokenizer, list(prompts))
    texts = [p + r for p, r in zip(fmt, before)] + [p + r for p, r in zip(fmt, after)]
    order = saes.by_depth()
    rows = []
    for a, i in enumerate(order):
        later = {saes.names[j]: saes.saes[j] for j in order[a + 1:] if saes.depth(j) > saes.depth(i)}
        if not own[i] or not later:
            continue
        got = downstream_dormant(model, tokenizer, saes.saes[i], own[i], later, texts, layer=saes.layers[i],
                                 edit=cfg.edit, skip_bos=cfg.skip_bos)
        rows += [{"edited": saes.names[i], "edited_features": own[i], "read": name, **row} for name, row in got.items()]
    return rows
