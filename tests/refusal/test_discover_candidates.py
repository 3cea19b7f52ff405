"""discover's candidates: Yeo et al.'s pre-filter (positive cosine) against the default (|cosine|),
and Yeo et al.'s top k by attribution against the ranking the minimal-set search starts from."""

import torch

from helpers import make_sae
from saesteer.refusal.discover.candidates import prefilter
from saesteer.refusal.features import Attribution
from saesteer.refusal.saeset import SAESet


def test_prefilter_positive_keeps_only_rows_along_the_direction():
    sae = make_sae("jumprelu", d_in=16, d_sae=40, seed=3)
    d = torch.randn(16)
    saes = SAESet.of(sae, 0)
    W = sae.W_dec.float()
    cos = (W @ d) / (W.norm(dim=-1) * d.norm())
    (pos,) = prefilter(saes, [d], 5, "positive")
    (both,) = prefilter(saes, [d], 5, "abs")
    assert set(pos) == set(cos.topk(5).indices.tolist())
    assert set(both) == set(cos.abs().topk(5).indices.tolist())
    assert any(cos[i] < 0 for i in both) and all(cos[i] > 0 for i in pos)


def test_top_k_ranks_by_attribution_alone_and_per_prompt():
    # Feature 0 has the largest attribution but the direction's ablation turns it up: the search's
    # ranking puts it after the turned-down ones; Yeo et al.'s top k does not.
    per_prompt = torch.tensor([[5.0, 1.0, 2.0, 0.0], [5.0, 3.0, 0.0, 0.5]], dtype=torch.float64)
    att = Attribution(per_prompt, "ig", turned_down=torch.tensor([False, True, True, True]))
    assert [g for g, _ in att.ranking(2)] == [0, 1]
    assert [g for g, _ in att.ranking(2, down_first=True)] == [1, 2]
    assert att.top_per_prompt(2) == [[0, 2], [0, 1]]
    # "zero": the most negative effect on the refusal score first; an allowed mask limits both.
    z = Attribution(-per_prompt, "zero", allowed=torch.tensor([False, True, True, True]))
    assert [g for g, _ in z.ranking(3)] == [1, 2, 3] and z.top_per_prompt(1) == [[2], [1]]
