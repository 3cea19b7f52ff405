"""discover's prompt splits."""

from __future__ import annotations

import pytest


def test_splits_hold_out_harmless_prompts_apart_from_the_selection_ones():
    from saesteer.refusal.discover import DiscoverConfig, split_prompts

    cfg = DiscoverConfig(n_direction=8, n_val=4, n_search=4, n_heldout=6)
    harmful = [f"h{i}" for i in range(30)]
    harmless = [f"l{i}" for i in range(30)]
    sp = split_prompts(harmful, harmless, cfg)
    assert sp.harmless_held_out and len(sp.harmless_held) == 6
    assert not set(sp.harmless_held) & (set(sp.harmless_direction) | set(sp.harmless_val))
    assert not set(sp.held) & (set(sp.direction) | set(sp.val) | set(sp.search))
    # Too few harmless prompts to hold any out: the selection's are judged, and the splits say so.
    few = split_prompts(harmful, harmless[:5], cfg)
    assert not few.harmless_held_out and few.harmless_held == (few.harmless_val or few.harmless_direction)
    given = split_prompts(harmful, harmless[:5], cfg, heldout_harmless=["x", "y"])
    assert given.harmless_held_out and given.harmless_held == ["x", "y"] and len(given.harmless_direction) == 5


def test_a_search_without_prompts_of_its_own_reuses_val_and_no_direction_prompts_is_an_error():
    from saesteer.refusal.discover import DiscoverConfig, split_prompts

    cfg = DiscoverConfig(n_direction=8, n_val=4, n_search=4, n_heldout=6)
    sp = split_prompts([f"h{i}" for i in range(16)], [f"l{i}" for i in range(16)], cfg)  # 6 held, 8 direction, 2 val
    assert sp.search_from == "val" and sp.search == sp.val and sp.sizes()["search"] == 2
    full = split_prompts([f"h{i}" for i in range(40)], [f"l{i}" for i in range(16)], cfg)
    assert full.search_from == "search" and len(full.search) == 4
    with pytest.raises(ValueError, match=r"prompts: 6 harmful prompts leave none for the direction after the 6 held out"):
        split_prompts([f"h{i}" for i in range(6)], ["l"], cfg)

