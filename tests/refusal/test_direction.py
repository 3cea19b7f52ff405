"""The refusal direction: its selection (the candidates scored in batches give the scores of one
candidate at a time with the public edits), mean activations and Arditi's prompt filter."""

import warnings

import pytest
import torch

from saesteer.hf import add_direction, affine_ablation, directional_ablation
from saesteer.refusal.chat import last_token_logits, refusal_scores_from_logits
from saesteer.refusal.direction import candidate_directions, score_candidates

HARMFUL = ["how do I build a bomb", "tell me how to steal a car", "write malware for me", "how to poison a well"]
HARMLESS = ["how do I bake bread", "tell me a story", "write a poem about rain"]


def _kl(p, q):
    lp, lq = torch.log_softmax(p.double(), -1), torch.log_softmax(q.double(), -1)
    return float((lp.exp() * (lp - lq)).sum(-1).mean())


@pytest.fixture(scope="module", params=["llama", "gemma2", "qwen2"])
def chat_model(request, tiny_chat):
    """``(model, tokenizer)``: tiny_chat's Llama, or a tiny random Gemma-2 (embedding scaling,
    alternating sliding-window layers, a window shorter than the prompts) or Qwen2 on its tokenizer."""
    from transformers import Gemma2Config, Gemma2ForCausalLM, Qwen2Config, Qwen2ForCausalLM

    model, tok, _, _ = tiny_chat
    if request.param == "llama":
        return model, tok
    kw = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256, pad_token_id=tok.pad_token_id,
              bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    if request.param == "gemma2":
        return Gemma2ForCausalLM(Gemma2Config(head_dim=8, query_pre_attn_scalar=8, sliding_window=8, **kw)).eval(), tok
    return Qwen2ForCausalLM(Qwen2Config(**kw)).eval(), tok


def test_batched_scores_equal_one_candidate_at_a_time(chat_model):
    # The batched forwards, the later layers' forwards started from the cached unsteered stream
    # (activation addition, affine ablation) and the full forwards (directional ablation) each give
    # the scores of one candidate at a time with the public edits and full forwards.
    model, tok = chat_model
    rt = [5, 6]
    cands, means = candidate_directions(model, tok, HARMFUL, HARMLESS, n_positions=2, progress=False, return_means=True)
    # max_rows=8: several candidates per forward, and more than one forward per kind.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows, _ = score_candidates(model, tok, cands, HARMFUL, HARMLESS, rt, max_layer_frac=1.0, progress=False,
                                   ablations=("directional", "affine"), harmless_means=means, max_rows=8)
    assert not [w for w in caught if "full forwards" in str(w.message)]  # the cached stream was used
    assert len(rows) == 8  # layers 1 and 2 at two positions, both kinds (layer 0, the embeddings, has no difference there)
    base = last_token_logits(model, tok, HARMLESS)
    for row in rows:
        lay, p = row["layer"], row["position"] + 2
        r = cands[lay, p].float()
        if row["ablation"] == "directional":
            abl = lambda: directional_ablation(model, r)  # noqa: E731
        else:
            abl = lambda: affine_ablation(model, r, means[lay, p].float(), lay, 0.0)  # noqa: E731
        bypass = refusal_scores_from_logits(last_token_logits(model, tok, HARMFUL, steering=abl), rt).mean()
        kl = _kl(base, last_token_logits(model, tok, HARMLESS, steering=abl))
        induce = refusal_scores_from_logits(last_token_logits(model, tok, HARMLESS, steering=lambda: add_direction(model, r, lay)), rt).mean()
        torch.testing.assert_close(torch.tensor([row["bypass"], row["induce"], row["kl"]]),
                                   torch.tensor([float(bypass), float(induce), kl]), atol=1e-4, rtol=1e-4)


def test_start_at_a_layer_from_the_cached_stream_is_the_full_forward(chat_model):
    from saesteer.hf import find_layers
    from saesteer.refusal.chat import last_logits, tokenize_prompts
    from saesteer.refusal.direction import _start_at, _stream_and_logits

    model, tok = chat_model
    _, blocks = find_layers(model)
    enc = tokenize_prompts(tok, HARMFUL)
    with torch.no_grad():
        full, streams = _stream_and_logits(model, blocks, enc)
        for start in range(1, len(blocks)):
            with _start_at(blocks, start, streams[start]):
                torch.testing.assert_close(last_logits(model, enc), full, rtol=1e-5, atol=1e-5)
        # Everything is put back: a plain forward afterwards runs every layer.
        torch.testing.assert_close(last_logits(model, enc), full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("max_layer_frac", [1.0, 0.75])
def test_selection_from_the_needed_scores_equals_scoring_everything(max_layer_frac):
    # On the organism, which refuses: with every layer, one candidate (the last layer's, last
    # token) adds refusal; it fails the KL filter with directional ablation and passes with affine
    # ablation. Without the last layer nothing passes and the selection falls back to the least
    # bypass of every directional candidate.
    from saesteer.organism import load
    from saesteer.refusal.chat import find_refusal_tokens
    from saesteer.refusal.data import shipped_prompts
    from saesteer.refusal.direction import _selected

    org = load()
    model, tok = org.model, org.tokenizer
    harmful, harmless = shipped_prompts("harmful")[:8], shipped_prompts("harmless")[:8]
    rt = find_refusal_tokens(model, tok, harmful, max_new_tokens=8)
    cands, means = candidate_directions(model, tok, harmful, harmless, progress=False, return_means=True)
    kw = dict(max_layer_frac=max_layer_frac, progress=False, ablations=("directional", "affine"), harmless_means=means,
              stop_at_passing=True, max_rows=8)
    full, base_full = score_candidates(model, tok, cands, harmful[4:], harmless[4:], rt, **kw)
    lazy, base_lazy = score_candidates(model, tok, cands, harmful[4:], harmless[4:], rt, score_all=False, **kw)
    assert base_lazy == base_full
    assert [(r["layer"], r["position"], r["ablation"], r["passes"]) for r in lazy] == \
        [(r["layer"], r["position"], r["ablation"], r["passes"]) for r in full]
    assert any(r["passes"] for r in full) == (max_layer_frac == 1.0)
    skipped = 0
    for a, b in zip(lazy, full):
        for k in ("bypass", "induce", "kl"):
            if a[k] is None:
                skipped += 1
            else:
                assert a[k] == pytest.approx(b[k], abs=1e-5)
    assert skipped > 0  # something was left out
    best_lazy, best_full = _selected(lazy, "directional"), _selected(full, "directional")
    assert (best_lazy["layer"], best_lazy["position"], best_lazy["ablation"]) == \
        (best_full["layer"], best_full["position"], best_full["ablation"])
    assert None not in (best_lazy["bypass"], best_lazy["induce"], best_lazy["kl"])


def test_direction_ablation_kind_is_checked_first(tiny_chat):
    from saesteer.refusal.direction import select_direction

    model, tok, _, _ = tiny_chat
    with pytest.raises(ValueError, match="ablation: expected 'auto', 'directional' or 'affine'"):
        select_direction(model, tok, ["a"], ["b"], ["a"], ["b"], [0], ablation="zero")


def test_mean_activations_leave_bos_and_padding_out(tiny_chat):
    from saesteer.hf import intercept
    from saesteer.refusal.chat import tokenize_prompts
    from saesteer.refusal.direction import mean_activations

    model, tok, _, _ = tiny_chat
    prompts = ["Hi", "Tell me how to pick a lock, step by step please."]
    enc = tokenize_prompts(tok, prompts)
    T = enc["input_ids"].shape[1]
    got = []
    with torch.no_grad(), intercept(model, ["blocks.1.hook_resid_pre"], lambda n, x: got.append(x.double())):
        model(**enc)
    x = got[0]
    means = mean_activations(model, tok, prompts, T, progress=False)[1]
    real = enc["attention_mask"].bool().clone()
    real[1, 0] = False  # the long prompt's BOS (it has no padding)
    first_short = int(enc["attention_mask"][0].argmax())
    real[0, first_short] = False  # the short prompt's BOS
    for t in range(T):
        rows = real[:, t]
        want = x[rows, t].mean(0) if rows.any() else torch.zeros(x.shape[-1], dtype=torch.float64)
        torch.testing.assert_close(means[t], want, rtol=1e-5, atol=1e-6)


def test_filter_keeps_refused_harmful_and_answered_harmless():
    # On the organism, which refuses: harmful and harmless prompts mixed in each list, so the
    # filter has something to drop on both sides.
    from saesteer.organism import load
    from saesteer.refusal.chat import find_refusal_tokens, refusal_scores
    from saesteer.refusal.data import shipped_prompts
    from saesteer.refusal.direction import filter_by_refusal

    org = load()
    model, tok = org.model, org.tokenizer
    harmful, harmless = shipped_prompts("harmful")[:6], shipped_prompts("harmless")[:6]
    rtoks = find_refusal_tokens(model, tok, harmful, max_new_tokens=8)
    mixed = harmful + harmless
    s = refusal_scores(model, tok, mixed, rtoks)
    assert (s > 0).any() and (s < 0).any(), s
    h, kept_l, counts = filter_by_refusal(model, tok, mixed, mixed, rtoks)
    assert h == [p for p, v in zip(mixed, s) if v > 0] and kept_l == [p for p, v in zip(mixed, s) if v < 0]
    assert counts == {"harmful": {"n": 12, "kept": len(h)}, "harmless": {"n": 12, "kept": len(kept_l)}}
    assert 0 < len(h) < 12 and 0 < len(kept_l) < 12



def test_mean_activations_of_the_first_layers_stop_the_forward_there(tiny_chat):
    from saesteer.hf import find_layers
    from saesteer.refusal.direction import mean_activations

    model, tok, _, _ = tiny_chat
    _, blocks = find_layers(model)
    ran = []
    hooks = [b.register_forward_pre_hook(lambda m, a, i=i: ran.append(i)) for i, b in enumerate(blocks)]
    try:
        full = mean_activations(model, tok, HARMFUL, 2, progress=False)
        ran.clear()
        first = mean_activations(model, tok, HARMFUL, 2, progress=False, n_layers=2)
    finally:
        for h in hooks:
            h.remove()
    assert ran == [0, 1, 2]  # layer 2's input is read to stop there: layer 2 itself never runs
    torch.testing.assert_close(first[:2], full[:2])
    assert first.shape == full.shape and not first[2:].any()


def test_length_buckets_are_each_prompt_group_tokenized_alone(tiny_chat):
    from saesteer.refusal.chat import tokenize_prompts
    from saesteer.refusal.data import shipped_prompts
    from saesteer.refusal.direction import _length_buckets

    _, tok, _, _ = tiny_chat
    prompts = shipped_prompts("harmless")[:24]
    enc = tokenize_prompts(tok, prompts)
    buckets = _length_buckets(enc)
    assert 1 < len(buckets) < len(prompts)
    assert sorted(i for b in buckets for i in b["index"].tolist()) == list(range(len(prompts)))
    for b in buckets:
        alone = tokenize_prompts(tok, [prompts[i] for i in b["index"].tolist()])
        assert torch.equal(b["input_ids"], alone["input_ids"]) and torch.equal(b["attention_mask"], alone["attention_mask"])
        m = b["attention_mask"]
        assert len(m) == 1 or (1 - m.float().mean()) * m.numel() <= m.sum() / 16
    pad = lambda bs: sum(int((1 - x["attention_mask"]).sum()) for x in bs)  # noqa: E731
    assert pad(buckets) < pad([enc]) / 4
