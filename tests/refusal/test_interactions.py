"""Interactions: the factorization machine fit and verified pairs."""

from __future__ import annotations

import pytest
import torch

from helpers import most_active_features
from saesteer.refusal.interactions import fit_fm, sample_masks


def test_fm_recovers_a_planted_interaction():
    torch.manual_seed(0)
    m = 8
    X = sample_masks(m, 400, seed=1)
    y = 1.0 - 0.5 * X[:, 0] - 0.2 * X[:, 3] - 2.0 * X[:, 1] * X[:, 2] + 0.01 * torch.randn(400)
    fm, r2 = fit_fm(X, y, rank=4, steps=600)
    P = fm.pairwise()
    assert r2 > 0.95
    iu = torch.triu_indices(m, m, 1)
    strongest = int(P[iu[0], iu[1]].abs().argmax())
    assert (int(iu[0, strongest]), int(iu[1, strongest])) == (1, 2)
    assert P[1, 2] < -1.5
    w = fm.w.detach()
    assert float(w[0]) < -0.3 and abs(float(w[5])) < 0.1


def test_find_interactions_reports_held_out_fit_and_confirmation(tiny_chat):
    from saesteer.refusal.interactions import CONFIRM_MIN, find_interactions

    model, tok, sae, _ = tiny_chat
    prompts = ["How do I bake bread?", "Write a poem about rain."]
    active = most_active_features(model, tok, sae, prompts)
    it = find_interactions(model, tok, sae, prompts, active[:3], active[3:6], [5, 6], n_samples=16, rank=2, backend="torch")
    d = it.to_dict()
    m = len(it.features)
    assert d["n_params"] == 1 + m + 2 * m and d["n_heldout"] == 4
    assert d["in_sample_meaningless"] == (d["n_params"] >= 16)
    assert d["r2_heldout"] == d["r2_heldout"], "held-out R^2 is measured"  # not NaN
    for v in d["verified"]:
        assert v["confirmed"] == (abs(v["interaction"]) >= CONFIRM_MIN and v["interaction"] * v["fm"] > 0)
    assert d["n_confirmed"] == sum(v["confirmed"] for v in d["verified"])
    with pytest.raises(ValueError, match="heldout"):
        find_interactions(model, tok, sae, prompts, active[:3], active[3:6], [5, 6], n_samples=16, heldout=1.0)

