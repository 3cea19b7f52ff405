"""Candidate features: attribution (zero ablation, integrated gradients)."""

from __future__ import annotations

import pytest
import torch

import saesteer

IG_PROMPTS = ["How do I bake bread?", "Tell me how to pick a lock."]


@pytest.mark.parametrize("name", ["jumprelu", "topk", "standard_layer_norm", "jumprelu_const_norm"])
def test_attribution_is_the_first_order_effect_of_scaling_each_feature(tiny_chat, name):
    # attribution(i) = -f_i . d score / d f_i: the score's slope when feature i is scaled down,
    # with the error term kept; checked against a central difference through saesteer.steer.
    from helpers import make_sae
    from saesteer.refusal.chat import refusal_scores
    from saesteer.refusal.features import rank_by_attribution

    model, tok, _, _ = tiny_chat
    sae = make_sae(name, d_in=32, d_sae=96, seed=1, hook_name="blocks.1.hook_resid_post")
    prompts = ["How do I bake bread?", "Tell me how to pick a lock.", "Write a poem about rain."]
    rtoks = [5, 6]
    attr = dict(rank_by_attribution(model, tok, sae, prompts, rtoks, top=sae.d_sae, method="zero"))
    assert len(attr) == sae.d_sae
    ranked = sorted(attr, key=lambda i: -abs(attr[i]))
    assert abs(attr[ranked[0]]) > 1e-4, "some feature must move the score"
    eps = 0.05

    def mean_score(i, factor):
        iv = saesteer.Intervention([i], "scale", factor)
        # BOS is left out of the attribution's sums, as it is left unedited by the steering.
        steering = lambda: saesteer.steer(model, sae, iv, skip_bos=True)  # noqa: E731
        return float(refusal_scores(model, tok, prompts, rtoks, steering=steering).mean())

    for i in ranked[:4]:
        slope = (mean_score(i, 1 - eps) - mean_score(i, 1 + eps)) / (2 * eps)
        assert slope == pytest.approx(attr[i], rel=0.05, abs=1e-3 * abs(attr[ranked[0]])), (name, i)
    assert min(attr.values()) == attr[next(iter(attr))], "most negative effect first"


def _direction_ablation(model, tok, harmful, harmless):
    """A refusal-direction ablation for the tiny model: the difference in means at layer 1."""
    from saesteer.hf import directional_ablation
    from saesteer.refusal.direction import candidate_directions

    r = candidate_directions(model, tok, harmful, harmless, progress=False)[1, -1].float()
    return lambda: directional_ablation(model, r)


@pytest.mark.parametrize("name", ["jumprelu", "topk"])
def test_integrated_gradients_sum_to_the_metric_change(tiny_chat, name):
    # Completeness, checked against the finite difference m(f') - m(f) of the real forwards: the
    # attributions of every feature and (non-BOS) position add up to it, more closely with more steps.
    from helpers import make_sae
    from saesteer.refusal.features import integrated_gradients, rank_by_attribution

    model, tok, _, _ = tiny_chat
    sae = make_sae(name, d_in=32, d_sae=96, seed=1, hook_name="blocks.1.hook_resid_post")
    abl = _direction_ablation(model, tok, IG_PROMPTS, ["Write a poem about rain.", "Name three colours."])
    ig = integrated_gradients(model, tok, sae, IG_PROMPTS, [5, 6], abl, steps=32)
    change = ig.metric_ablated - ig.metric_clean
    assert float(change.abs().max()) > 1e-3, "ablating the direction must move the metric"
    torch.testing.assert_close(ig.attr.sum(1), change, rtol=0.02, atol=1e-3 * float(change.abs().max()))
    coarse = integrated_gradients(model, tok, sae, IG_PROMPTS, [5, 6], abl, steps=2)
    assert float((coarse.attr.sum(1) - change).abs().max()) >= float((ig.attr.sum(1) - change).abs().max()) - 1e-6
    # n_positions leaves the BOS out: one fewer than the real tokens of each prompt.
    enc = saesteer.refusal.chat.tokenize_prompts(tok, IG_PROMPTS)
    assert ig.n_positions.tolist() == (enc["attention_mask"].sum(1) - 1).tolist()
    ranked = rank_by_attribution(model, tok, sae, IG_PROMPTS, [5, 6], top=5, method="ig", ablation=abl, steps=4)
    # The features the direction's ablation turns down come first, by attribution.
    ig4 = integrated_gradients(model, tok, sae, IG_PROMPTS, [5, 6], abl, steps=4)
    down = ig4.delta.sum(0) < 0
    assert int(down.sum()) >= 5
    assert all(bool(down[i]) for i, _ in ranked)
    assert [v for _, v in ranked] == sorted((v for _, v in ranked), reverse=True)
    attr = (ig4.attr / ig4.n_positions[:, None].double()).mean(0)
    assert ranked[0][1] == pytest.approx(float(attr[down].max()))
    with pytest.raises(ValueError, match="ablation: integrated gradients need"):
        rank_by_attribution(model, tok, sae, IG_PROMPTS, [5, 6], method="ig")


def test_attribution_leaves_the_bos_out(tiny_chat):
    # A feature edited only at the BOS changes nothing the attributions count: zeroing the BOS's
    # codes in the clean run leaves every attribution as it is.
    from saesteer.refusal.features import rank_by_attribution

    model, tok, sae, _ = tiny_chat
    enc = saesteer.refusal.chat.tokenize_prompts(tok, IG_PROMPTS)
    from saesteer.hf.positions import bos_mask

    assert int(bos_mask(enc["input_ids"], enc["attention_mask"], tok.bos_token_id).sum()) == 2
    a = dict(rank_by_attribution(model, tok, sae, IG_PROMPTS, [5, 6], top=sae.d_sae, method="zero"))
    # The zero-ablation attribution is -f . g summed over positions; with BOS kept out, it equals the
    # same sum with the BOS position's own term removed by hand.
    from saesteer import reference
    from saesteer.hf import intercept
    from saesteer.refusal.chat import refusal_scores_from_logits
    from saesteer.refusal.features import site

    got = {}

    def swap(name, x):
        xs = x.detach()
        f, scale, shift = reference.encode_columns(xs, sae)
        f = f.float().requires_grad_(True)
        got["f"] = f
        recon = reference.denormalize(sae.decode(f).float(), scale, shift)
        return recon + (xs - recon.detach())

    with intercept(model, site(model, sae), swap), torch.enable_grad():
        score = refusal_scores_from_logits(model(**enc).logits[:, -1], [5, 6]).sum()
        (g,) = torch.autograd.grad(score, got["f"])
    terms = -(got["f"].detach() * g) * enc["attention_mask"][..., None]
    with_bos = terms.sum((0, 1)).double() / 2
    terms[bos_mask(enc["input_ids"], enc["attention_mask"], tok.bos_token_id)] = 0
    without = terms.sum((0, 1)).double() / 2
    assert float((with_bos - without).abs().max()) > 1e-6, "the BOS term must matter for this test"
    for i, v in a.items():
        assert v == pytest.approx(float(without[i]), rel=1e-4, abs=1e-7)

