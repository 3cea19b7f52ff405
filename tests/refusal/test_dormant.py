"""Dormant features measured downstream: ablate at layer L, read a later SAE on the same tokens."""

import copy

import pytest
import torch

import saesteer
from saesteer.hf import capture
from saesteer.refusal.chat import format_prompts
from saesteer.refusal.dormant import downstream_dormant, site_activations

PROMPTS = ["How do I bake bread?", "Tell me how to pick a lock.", "What is the capital of France?"]


def _identity_block(model, layer: int):
    """A copy of ``model`` whose decoder layer ``layer`` adds nothing: its resid_post equals its input."""
    m = copy.deepcopy(model)
    blk = m.model.layers[layer]
    with torch.no_grad():
        blk.self_attn.o_proj.weight.zero_()
        blk.mlp.down_proj.weight.zero_()
    return m


def _built_case(tiny_chat):
    """Layer 2 of the tiny model copies layer 1's output, so the layer-2 SAE sees exactly the edited
    layer-1 residual. Its feature 0 reads minus feature a's decoder direction: ablating a (which
    removes f_a * W_dec[a]) raises feature 0's pre-activation by f_a, and its threshold is set
    between the largest unsteered and the largest steered pre-activation, so by construction it is
    silent without the edit and fires with it. Feature 1 fires on everything, feature 2 on nothing."""
    model, tok, sae, _ = tiny_chat
    model = _identity_block(model, 2)
    texts = format_prompts(tok, PROMPTS)
    acts = site_activations(model, tok, sae, texts)
    f = torch.cat([a[1:] for _, a in acts])  # BOS is left unedited
    a = int((f > 0).float().mean(0).argmax())
    d_a = sae.W_dec[a].float()
    u = -d_a / d_a.dot(d_a)
    with capture(model, "blocks.2.hook_resid_post") as rec:
        for t in texts:
            model(**tok(t, return_tensors="pt", add_special_tokens=False))
    x = torch.cat([r[0] for r in rec["blocks.2.hook_resid_post"]])
    v = x @ u  # unsteered pre-activation of feature 0 (BOS included)
    fa = torch.cat([torch.cat([torch.zeros(1), a_[1:, a]]) for _, a_ in acts])
    w = v + fa  # steered
    assert w.max() > v.max() + 1e-3, "construction needs a token where the edit lifts feature 0 above every unsteered value"
    shift = 1.0 - float(v.min())  # keep pre-activations positive (relu)
    theta = float((v.max() + w.max()) / 2) + shift
    W_enc = torch.zeros(32, 3)
    W_enc[:, 0] = u
    W_enc[:, 1] = u
    b_enc = torch.tensor([shift, shift, -1e3])
    W_dec = torch.randn(3, 32)
    read = saesteer.SAE(architecture="jumprelu", W_enc=W_enc, W_dec=W_dec, b_dec=torch.zeros(32), b_enc=b_enc,
                        threshold=torch.tensor([theta, 0.5, 0.5]), hook_name="blocks.2.hook_resid_post")
    expected = int(((w + shift) > theta).sum())
    return model, tok, sae, read, texts, a, expected


def test_ablation_wakes_the_downstream_feature_built_to_wake(tiny_chat):
    model, tok, sae, read, texts, a, expected = _built_case(tiny_chat)
    out = downstream_dormant(model, tok, sae, [a], {"l2": read}, texts)
    r = out["l2"]
    assert r["hook"] == [2, "resid_post"]
    assert [d["feature"] for d in r["dormant"]] == [0]
    assert r["dormant"][0]["n_tokens"] == expected
    assert r["n_tokens"] == sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)


def test_same_tokens_without_the_feature_wake_nothing(tiny_chat):
    """Ablating a feature other than a cannot lift feature 0 past its threshold the same way; an
    edit that changes nothing (a feature that never fires) wakes nothing at all."""
    model, tok, sae, read, texts, a, _ = _built_case(tiny_chat)
    acts = torch.cat([f for _, f in site_activations(model, tok, sae, texts)])
    silent = int((acts > 0).sum(0).argmin())
    assert (acts[:, silent] == 0).all()
    out = downstream_dormant(model, tok, sae, [silent], [read], texts)
    assert out["0"]["dormant"] == []


def test_read_sae_at_or_before_the_edit_is_refused(tiny_chat):
    model, tok, sae, _ = tiny_chat
    with pytest.raises(ValueError, match="read_saes: 'same'.*later hook point"):
        downstream_dormant(model, tok, sae, [0], {"same": sae}, ["hi"])
    with pytest.raises(ValueError, match="ablated: features \\[999\\]"):
        downstream_dormant(model, tok, sae, [999], {"x": sae}, ["hi"])
    with pytest.raises(ValueError, match="read_saes: expected at least one"):
        downstream_dormant(model, tok, sae, [0], {}, ["hi"])
