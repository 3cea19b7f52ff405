"""eval's held-out check reads the split prompts discover writes into results.json."""

from saesteer.refusal.discover.splits import PromptSplits
from saesteer.refusal.heldout import chosen_prompts, overlap


def test_chosen_prompts_reads_discovers_split_prompts():
    splits = PromptSplits(held=["h1"], direction=["d1", "d2"], val=["v1"], search=["s1"],
                          harmless_direction=["n1"], harmless_val=[], harmless_held=["m1"])
    results = {"splits": splits.sizes(), "split_prompts": splits.prompts()}
    found, counts_only = chosen_prompts(results)
    assert counts_only == []
    assert found["direction"] == ["d1", "d2"] and found["search"] == ["s1"] and "held" not in found
    assert overlap(["d2", "s1 ", "h1"], found) == {"direction": 1, "search": 1}
