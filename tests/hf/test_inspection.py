"""saesteer.inspect: the per-token top-k features (the fused encode + top-k at the SAE's hook point,
one forward) equal sae-lens's ``encode`` + ``torch.topk`` on the captured residual, on the organism
and on tiny random Llama, Gemma2 and GPT-2 models, in float32 and bfloat16; padding is marked; the
per-prompt summary and the contrast of two prompt sets.
"""

from __future__ import annotations

import pytest
import torch
from transformers import Gemma2Config, Gemma2ForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

import saesteer
from helpers import make_sae_lens_sae, tol

pytestmark = pytest.mark.filterwarnings("ignore:saesteer. backend:RuntimeWarning")

D, V, D_SAE, K = 32, 128, 64, 8


def tiny_model(arch: str, dtype=torch.float32):
    torch.manual_seed(0)
    common = dict(vocab_size=V, pad_token_id=0, bos_token_id=None, eos_token_id=None)
    if arch == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(n_embd=D, n_layer=3, n_head=4, n_positions=64, **common))
    else:
        kw = dict(hidden_size=D, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=64, **common)
        if arch == "gemma2":
            model = Gemma2ForCausalLM(Gemma2Config(head_dim=8, query_pre_attn_scalar=8, sliding_window=16, **kw))
        else:
            model = LlamaForCausalLM(LlamaConfig(**kw))
    with torch.no_grad():
        model.get_input_embeddings().weight.normal_()
    return model.eval().to(dtype)


def left_padded(lengths, seed=3):
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    ids = torch.zeros(len(lengths), T, dtype=torch.long)
    attn = torch.zeros(len(lengths), T, dtype=torch.long)
    for r, n in enumerate(lengths):
        ids[r, T - n:] = torch.randint(1, V, (n,), generator=g)
        attn[r, T - n:] = 1
    return {"input_ids": ids, "attention_mask": attn}


def check_against_sae_lens(res, sl_sae, x, mask, dtype):
    """Our top-k equals sae-lens's encode + topk (ties aside): the same values, and sae-lens's
    activation of each id we return is the value we return. A bfloat16 SAE is compared in float32
    arithmetic on the same (exactly representable) weights and inputs, as the kernels accumulate:
    sae-lens's bfloat16 arithmetic moves JumpReLU activations across their thresholds."""
    import copy

    ref = copy.deepcopy(sl_sae).float()
    with torch.no_grad():
        f = ref.encode(x.float()).float()
    want_v, _ = f.topk(res.k, dim=-1)
    m = mask.bool()
    t = tol(dtype)
    torch.testing.assert_close(res.values[m], want_v[m], **t)
    torch.testing.assert_close(f[m].gather(-1, res.ids[m]), res.values[m], **t)
    assert (res.ids[~m] == -1).all() and (res.values[~m] == 0).all()
    # the summary: each feature's max and mean over the real tokens
    for r in range(x.shape[0]):
        fr = f[r][m[r]]
        torch.testing.assert_close(res.max_acts[r], fr.amax(0).clamp_min(0), **t)
        torch.testing.assert_close(res.mean_acts[r], fr.mean(0), **t)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("arch", ["llama", "gemma2", "gpt2"])
def test_equals_sae_lens_encode_topk_on_tiny_models(arch, dtype):
    model = tiny_model(arch, dtype)
    sl = make_sae_lens_sae("jumprelu", d_in=D, d_sae=D_SAE, hook_name="blocks.1.hook_resid_post", dtype=dtype)
    enc = left_padded([4, 7, 2])
    res = saesteer.inspect(model, sl, enc, k=K)
    with torch.no_grad(), saesteer.capture(model, "blocks.1.hook_resid_post") as rec:
        model(**enc)
    assert res.ids.shape == (3, 7, K) and res.values.dtype == torch.float32
    check_against_sae_lens(res, sl, rec["blocks.1.hook_resid_post"][0], enc["attention_mask"], dtype)
    assert res.tokens[0][0] is None and res.tokens[1][0] == str(int(enc["input_ids"][1, 0]))


def test_several_saes_one_forward_and_sae_architectures():
    model = tiny_model("llama")
    saes = {"pre1": make_sae_lens_sae("standard", d_in=D, d_sae=D_SAE, hook_name="blocks.1.hook_resid_pre"),
            "post2": make_sae_lens_sae("topk", d_in=D, d_sae=D_SAE, k=8, hook_name="blocks.2.hook_resid_post"),
            "post0": make_sae_lens_sae("gated", d_in=D, d_sae=D_SAE, hook_name="blocks.0.hook_resid_post")}
    enc = left_padded([5, 3])
    calls = []
    h = model.model.layers[2].register_forward_hook(lambda *a: calls.append(1))
    h_last = model.lm_head.register_forward_hook(lambda *a: calls.append("head"))
    res = saesteer.inspect(model, saes, enc, k=4)
    h.remove()
    h_last.remove()
    assert calls == [1], "one forward, stopped after the deepest hook point"
    with torch.no_grad(), saesteer.capture(model, [s.cfg.metadata.hook_name for s in saes.values()]) as rec:
        model(**enc)
    for name, sl in saes.items():
        check_against_sae_lens(res[name], sl, rec[sl.cfg.metadata.hook_name][0], enc["attention_mask"], torch.float32)


def test_organism_equals_sae_lens():
    from sae_lens import SAE as SaeLensSAE

    from saesteer import organism

    org = organism.load()
    sl = SaeLensSAE.load_from_disk(str(organism.WEIGHTS_DIR / "sae_jumprelu"))
    texts = organism.load_prompts("harmful")[:2] + organism.load_prompts("harmless")[:2]
    enc = org.tokenizer([org.format_prompt(t) for t in texts], return_tensors="pt", padding=True)
    res = saesteer.inspect(org.model, org.sae, enc, k=16, tokenizer=org.tokenizer)
    with torch.no_grad(), saesteer.capture(org.model, org.sae) as rec:
        org.model(**enc)
    x = rec[org.sae.hook_name][0]
    m = enc["attention_mask"].bool()
    with torch.no_grad():
        f = sl.encode(x).float()
    torch.testing.assert_close(res.values[m], f.topk(16, -1).values[m], **tol(torch.float32))
    torch.testing.assert_close(f[m].gather(-1, res.ids[m]), res.values[m], **tol(torch.float32))
    # the BOS token is left out of the summary by default
    keep = m.clone()
    keep[torch.arange(4), m.long().argmax(1)] = False
    for r in range(4):
        torch.testing.assert_close(res.max_acts[r], f[r][keep[r]].amax(0).clamp_min(0), **tol(torch.float32))
    top = res.top(0, "max", 5)
    assert [i for i, _ in top] == res.max_acts[0].topk(5).indices.tolist()
    row = res.token_features(0)
    assert "".join(tok for _, tok, _ in row) == org.tokenizer.decode(enc["input_ids"][0][m[0]])
    d = res.to_dict()
    assert d["prompts"][0]["tokens"] == [tok for _, tok, _ in row] and len(d["prompts"][0]["tracked"][0]) == len(d["tracked"])


def test_contrast_ranks_the_separating_feature_first():
    model = tiny_model("llama")
    sl = make_sae_lens_sae("jumprelu", d_in=D, d_sae=D_SAE, hook_name="blocks.1.hook_resid_post")
    a = saesteer.inspect(model, sl, left_padded([5, 6, 4, 5], seed=1), k=4)
    b = saesteer.inspect(model, sl, left_padded([5, 6, 4, 5], seed=2), k=4)
    b.mean_acts[:, 7] = a.mean_acts[:, 7] + 3.0  # plant a large, consistent difference on feature 7
    rows = saesteer.hf.contrast(a, b, top=5)
    assert rows[0]["feature"] == 7 and rows[0]["d"] < 0 and rows[0]["diff"] == pytest.approx(-3.0, abs=1e-5)
    assert all(abs(r["d"]) >= abs(rows[-1]["d"]) for r in rows)
    with pytest.raises(ValueError, match="at least 2 prompts"):
        saesteer.hf.contrast(saesteer.inspect(model, sl, left_padded([3]), k=2), b)


@pytest.mark.parametrize("kw, match", [
    (dict(k=0), r"k: expected an int in \[1, d_sae=64\]"),
    (dict(k=65), r"k: expected an int"),
    (dict(inputs=["text"]), r"inputs: text needs tokenizer="),
    (dict(inputs=torch.randn(2, 3)), r"inputs: expected token ids"),
])
def test_bad_arguments_are_named(kw, match):
    model = tiny_model("llama")
    sl = make_sae_lens_sae("jumprelu", d_in=D, d_sae=D_SAE, hook_name="blocks.1.hook_resid_post")
    args = dict(inputs=left_padded([3]), k=4) | kw
    with pytest.raises(ValueError, match=match):
        saesteer.inspect(model, sl, args.pop("inputs"), **args)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
