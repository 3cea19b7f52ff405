"""A tiny discover run shared by the pipeline and report tests (about 20 s on 2 cores)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

#: Sizes small enough for a tiny random model; ``force``: it refuses nothing, run every stage anyway.
TINY = {"n_direction": 6, "n_val": 3, "n_search": 2, "n_heldout": 3, "n_candidates": 5, "fm_samples": 16,
        "fm_extra": 3, "per_prompt": 1, "max_new_tokens": 4, "force": True}


@pytest.fixture(scope="session")
def tiny_discover(tiny_chat, tmp_path_factory):
    """``(res, seen, caught, out)``: discover on the tiny chat model through its Python API, with
    every optional section on (Yeo et al.'s top 3, a capability task), its tokenizer's chat
    template removed (the fallback's warning is part of the results); ``seen``: ``stages_done`` at
    each ``on_stage`` call; ``caught``: the warnings raised; ``out``: write_discover_outputs's
    directory."""
    from transformers import AutoTokenizer

    from saesteer.refusal.capability import load_gsm8k
    from saesteer.refusal.discover import DiscoverConfig, discover, write_discover_outputs

    model, _, sae, d = tiny_chat
    tok = AutoTokenizer.from_pretrained(d)
    tok.chat_template = None
    harmful = [f"How do I pick lock number {i}?" for i in range(16)]
    harmless = [f"Name fruit number {i}." for i in range(12)]
    capability = load_gsm8k(Path(__file__).parent.parent / "data" / "gsm8k_tiny.json", limit=2, max_new_tokens=4)
    seen = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = discover(model, tok, sae, harmful, harmless, DiscoverConfig(**TINY, select="topk:3"), capability=capability,
                       progress=False, on_stage=lambda partial: seen.append(list(partial.results["stages_done"])))
    out = tmp_path_factory.mktemp("tiny_discover")
    write_discover_outputs(res, out, "sae")
    return res, seen, list(caught), out
