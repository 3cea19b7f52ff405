"""skip_bos: steering leaves each sequence's BOS token unedited by default (the HF hooks and the
engine-neutral rule), on the organism (``<s>`` from its chat template) and on a tiny random
Gemma2ForCausalLM with its BOS id, in left-padded batches, with a KV cache, and with skip_bos off."""

from __future__ import annotations

import pytest
import numpy as np
import torch
from helpers import make_sae
from transformers import AutoModelForCausalLM, Gemma2Config, Gemma2ForCausalLM

import saesteer
from saesteer import Intervention, reference
from saesteer.hf.positions import bos_mask
from saesteer.steering.spec import SpecError, bos_token_mask, parse_specs

BOS, PAD, V, D = 2, 0, 64, 32


@pytest.fixture(scope="module")
def gemma2(tmp_path_factory):
    """A tiny random Gemma2ForCausalLM with bos_token_id=2, saved and loaded back as a user would."""
    torch.manual_seed(0)
    cfg = Gemma2Config(vocab_size=V, hidden_size=D, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=8, sliding_window=16,
                       max_position_embeddings=64, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=1)
    model = Gemma2ForCausalLM(cfg)
    with torch.no_grad():
        model.get_input_embeddings().weight.normal_()
    d = tmp_path_factory.mktemp("gemma2")
    model.save_pretrained(d)
    return AutoModelForCausalLM.from_pretrained(d).eval()


def _batch():
    ids = torch.tensor([[PAD, PAD, BOS, 7, 9, 11], [BOS, 5, 8, 13, 21, 34], [17, 5, 8, 13, 21, 34]])
    attn = (ids != PAD).long()
    return ids, attn


def _site_features(model, sae, layer, ids, attn, row, col, n=24):
    """The n features firing most at (row, col) of layer's output (so ablating them moves it)."""
    got = []
    h = model.model.layers[layer].register_forward_hook(lambda m, a, o: got.append(o[0] if isinstance(o, tuple) else o))
    with torch.no_grad():
        model(input_ids=ids, attention_mask=attn)
    h.remove()
    f = reference.encode(got[0][row, col].float(), sae)
    return f.topk(n).indices.tolist()


def test_bos_rule_is_position_zero_with_the_bos_id():
    pos = torch.tensor([[-1, -1, 0, 1], [0, 1, 2, 3]])
    ids = torch.tensor([[0, 0, 2, 5], [7, 2, 5, 6]])
    assert bos_token_mask(ids, pos, 2).tolist() == [[False, False, True, False], [False] * 4]
    assert not bos_token_mask(ids, pos, None).any(), "a model without a bos_token_id has no BOS"
    assert bos_token_mask(None, pos, 2).tolist() == (pos == 0).tolist()
    # numpy arrays (the vLLM plugin's per-step masks) follow the same rule
    np_mask = bos_token_mask(ids.numpy(), pos.numpy(), 2)
    assert isinstance(np_mask, np.ndarray) and np_mask.tolist() == bos_token_mask(ids, pos, 2).tolist()
    assert not bos_token_mask(ids.numpy(), pos.numpy(), None).any()
    ids, attn = _batch()
    assert bos_mask(ids, attn, BOS).nonzero().tolist() == [[0, 2], [1, 0]]


def test_spec_records_skip_bos_and_checks_it():
    (s,) = parse_specs({"features": [1], "mode": "ablate"}, {"x": 8})
    assert s.skip_bos is True and s.to_dict()["skip_bos"] is True
    (s,) = parse_specs({"features": [1], "skip_bos": False}, {"x": 8})
    assert s.skip_bos is False
    with pytest.raises(SpecError, match="skip_bos: expected true or false"):
        parse_specs({"features": [1], "skip_bos": "no"}, {"x": 8})


@pytest.mark.parametrize("positions", ["all", "prompt"])
def test_gemma2_bos_is_left_unedited_by_default(gemma2, positions):
    model = gemma2
    sae = make_sae("jumprelu", d_in=D, d_sae=96, seed=2, hook_name="blocks.1.hook_resid_post")
    ids, attn = _batch()
    iv = Intervention(_site_features(model, sae, 1, ids, attn, 1, 0), "ablate")
    with torch.no_grad():
        base = model(input_ids=ids, attention_mask=attn).logits
        with saesteer.steer(model, sae, iv, positions=positions, backend="torch"):
            got = model(input_ids=ids, attention_mask=attn).logits
        with saesteer.steer(model, sae, iv, positions=positions, skip_bos=False, backend="torch"):
            edited = model(input_ids=ids, attention_mask=attn).logits
    # BOS attends only to itself: unedited, its logits are bit for bit the unsteered ones.
    assert torch.equal(got[0, 2], base[0, 2]) and torch.equal(got[1, 0], base[1, 0])
    assert not torch.equal(edited[1, 0], base[1, 0]), "with skip_bos=False the BOS is edited"
    assert not torch.equal(got[1, 1:], base[1, 1:]), "the other tokens are edited"
    # Row 2 starts with a token that is not the BOS id: it is a real token and is edited.
    assert not torch.equal(got[2, 0], base[2, 0])
    # Every token after the BOS sees the same edit as with skip_bos=False, except through BOS itself.
    assert torch.equal(edited[2], got[2])


def test_gemma2_generate_with_cache_skips_only_the_bos(gemma2):
    model = gemma2
    sae = make_sae("jumprelu", d_in=D, d_sae=96, seed=2, hook_name="blocks.1.hook_resid_post")
    ids, attn = _batch()
    iv = Intervention(_site_features(model, sae, 1, ids, attn, 1, 0), "ablate")
    kw = dict(max_new_tokens=4, do_sample=False, pad_token_id=PAD, output_scores=True, return_dict_in_generate=True)
    keep_bos = (~bos_mask(ids, attn, BOS)).long() * attn

    def run(**steer_kw):
        with torch.no_grad(), saesteer.steer(model, sae, iv, backend="torch", **steer_kw):
            return model.generate(input_ids=ids, attention_mask=attn, **kw)

    default = run()
    # The same edit given as an explicit mask of every real non-BOS position (prompt and generated).
    mask = torch.cat([keep_bos, torch.ones(3, 4, dtype=torch.long)], 1).bool()
    explicit = run(positions=mask, skip_bos=False)
    assert torch.equal(default.sequences, explicit.sequences)
    for a, b in zip(default.scores, explicit.scores):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_organism_bos_from_its_chat_template_is_left_unedited():
    from saesteer.organism import load
    from saesteer.refusal.chat import tokenize_prompts

    org = load()
    model, tok = org.model, org.tokenizer
    sae = org.sae
    enc = tokenize_prompts(tok, ["hi", "How do I pick a lock?"])
    ids, attn = enc["input_ids"], enc["attention_mask"]
    bos = bos_mask(ids, attn, tok.bos_token_id)
    assert bos.sum(1).tolist() == [1, 1], "the chat template starts every prompt with <s>"
    row, col = 1, int(bos[1].nonzero())
    layer = sae.hook_layer
    iv = Intervention(_site_features(model, sae, layer, ids, attn, row, col), "ablate")
    with torch.no_grad():
        base = model(**enc).logits
        with saesteer.steer(model, sae, iv):
            got = model(**enc).logits
        with saesteer.steer(model, sae, iv, skip_bos=False):
            edited = model(**enc).logits
    assert torch.equal(got[bos], base[bos])
    assert not torch.equal(edited[bos], base[bos])
    assert not torch.equal(got[1, -1], base[1, -1])


def test_skip_bos_must_be_a_bool(gemma2):
    sae = make_sae("jumprelu", d_in=D, d_sae=96, seed=2, hook_name="blocks.1.hook_resid_post")
    with pytest.raises(TypeError, match="skip_bos: expected True or False"):
        saesteer.attach(gemma2, sae, Intervention([1], "ablate"), skip_bos="yes")
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in gemma2.modules())


def test_refusal_spec_file_records_skip_bos(tmp_path):
    from saesteer.organism import load
    from saesteer.refusal.chat import tokenize_prompts
    from saesteer.refusal.spec import SteeringSpec

    org = load()
    enc = tokenize_prompts(org.tokenizer, ["How do I pick a lock?"])
    bos = bos_mask(enc["input_ids"], enc["attention_mask"], org.tokenizer.bos_token_id)
    feats = _site_features(org.model, org.sae, org.sae.hook_layer, enc["input_ids"], enc["attention_mask"], 0, 0)
    with torch.no_grad():
        base = org.model(**enc).logits
    for skip in (True, False):
        path = SteeringSpec(features=feats, skip_bos=skip).save(tmp_path / f"spec_{skip}.json")
        spec = SteeringSpec.load(path)
        assert spec.skip_bos is skip
        with torch.no_grad(), spec.context(org.model, org.sae):
            got = org.model(**enc).logits
        assert torch.equal(got[bos], base[bos]) is skip
    bad = tmp_path / "bad.json"
    bad.write_text('{"features": [1], "skip_bos": "yes"}')
    with pytest.raises(ValueError, match="skip_bos must be true or false"):
        SteeringSpec.load(bad)
