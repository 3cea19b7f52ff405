"""Conditional steering (``when``) in the HF hooks: per-row decisions over a mixed, left-padded
batch in cached generation, token scope, monitors, probes, triggers at another SAE, bad input.

A conditional edit must equal the unconditional edit on the rows where its condition holds and leave
the other rows bit for bit unsteered.
"""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import saesteer
from helpers import assert_close_dtype, make_sae
from saesteer import Intervention, reference

pytestmark = pytest.mark.filterwarnings("ignore:saesteer. backend:RuntimeWarning")

D, V, D_SAE, L = 32, 128, 64, 1
TRIG = [3, 5, 11]
IV = Intervention([0, 1, 2, 7], "clamp", 6.0)


def tiny_llama(dtype=torch.float32):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=V, hidden_size=D, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0, bos_token_id=None, eos_token_id=None)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        model.get_input_embeddings().weight.normal_()
    return model.eval().to(dtype)


def left_padded(prompts):
    T = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), T, dtype=torch.long)
    attn = torch.zeros(len(prompts), T, dtype=torch.long)
    for r, p in enumerate(prompts):
        ids[r, T - len(p):], attn[r, T - len(p):] = p, 1
    return ids, attn


def prompts(n=4):
    g = torch.Generator().manual_seed(7)
    return [torch.randint(1, V, (int(torch.randint(3, 8, (1,), generator=g)),), generator=g) for _ in range(n)]


def token_scores(model, sae, ids, attn=None, layer=L):
    """The trigger score of every token (the reference's subset encode, summed), unsteered."""
    with torch.no_grad(), saesteer.capture(model, sae) as rec:
        model(ids, attention_mask=attn)
    return reference.feature_acts(rec[sae.hook_name][0].float(), sae, TRIG).float().sum(-1)


def split_threshold(scores):
    """A threshold between the middle two of ``scores`` (so that some rows fire and some do not)."""
    s = scores.sort().values
    mid = len(s) // 2
    return float((s[mid - 1] + s[mid]) / 2)


GEN = dict(max_new_tokens=5, do_sample=False, output_logits=True, return_dict_in_generate=True)


@pytest.mark.parametrize("reduce", ["max", "mean", "last"])
def test_prompt_scope_mixed_batch_cached_generation_left_padding(reduce):
    model = tiny_llama()
    sae = make_sae("jumprelu", d_in=D, d_sae=D_SAE, hook_name=f"blocks.{L}.hook_resid_post")
    ps = prompts(4)
    per_prompt = []
    for p in ps:
        s = token_scores(model, sae, p[None])[0]
        per_prompt.append({"max": s.max(), "mean": s.mean(), "last": s[-1]}[reduce])
    per_prompt = torch.stack(per_prompt)
    thr = split_threshold(per_prompt)
    want_fired = per_prompt > thr
    assert 0 < int(want_fired.sum()) < len(ps)
    ids, attn = left_padded(ps)
    when = {"features": TRIG, "threshold": thr, "reduce": reduce, "scope": "prompt"}
    with torch.no_grad():
        plain = model.generate(ids, attention_mask=attn, **GEN)
        with saesteer.steer(model, sae, {"features": IV.features, "mode": "clamp", "value": 6.0, "when": when}) as h:
            got = model.generate(ids, attention_mask=attn, **GEN)
        trig = h.conditions[0]
        assert torch.equal(trig.fired.cpu(), want_fired)
        torch.testing.assert_close(trig.score.cpu(), per_prompt, atol=1e-5, rtol=1e-5)
        T = ids.shape[1]
        for r, p in enumerate(ps):
            if want_fired[r]:
                with saesteer.steer(model, sae, IV):
                    single = model.generate(p[None], **GEN)
                assert torch.equal(got.sequences[r, T:], single.sequences[0, len(p):])
                for a, b in zip(got.logits, single.logits):
                    assert_close_dtype(a[r], b[0])
            else:  # bit for bit unsteered, through every cached decode step
                assert torch.equal(got.sequences[r], plain.sequences[r])
                for a, b in zip(got.logits, plain.logits):
                    assert torch.equal(a[r], b[r])
        assert any(not torch.equal(a[want_fired], b[want_fired]) for a, b in zip(got.logits, plain.logits))


def test_conditional_equals_unconditional_when_every_row_fires():
    model = tiny_llama()
    sae = make_sae("jumprelu", d_in=D, d_sae=D_SAE, hook_name=f"blocks.{L}.hook_resid_post")
    ids, attn = left_padded(prompts(3))
    with torch.no_grad():
        with saesteer.steer(model, sae, IV):
            want = model(ids, attention_mask=attn).logits
        with saesteer.steer(model, sae, IV, when={"features": TRIG, "threshold": -1e9}):
            got = model(ids, attention_mask=attn).logits
    assert torch.equal(got, want)


def test_token_scope_edits_exactly_the_tokens_over_threshold():
    model = tiny_llama()
    sae = make_sae("jumprelu", d_in=D, d_sae=D_SAE, hook_name=f"blocks.{L}.hook_resid_post")
    ids, attn = left_padded(prompts(3))
    s = token_scores(model, sae, ids, attn)
    real = attn.bool()
    thr = float(s[real].median())
    fired = (s > thr) & real
    layer = model.model.layers[L]
    seen = {}
    with torch.no_grad():
        with saesteer.capture(model, sae) as rec:
            model(ids, attention_mask=attn)
        x = rec[sae.hook_name][0]
        with saesteer.steer(model, sae, IV, when={"features": TRIG, "threshold": thr, "scope": "token"}) as h:
            hk = layer.register_forward_hook(lambda m, a, o: seen.__setitem__("y", o[0] if isinstance(o, tuple) else o))
            model(ids, attention_mask=attn)
            hk.remove()
    y = seen["y"]
    assert torch.equal(h.conditions[0].fired.cpu(), fired)
    assert torch.equal(y[~fired], x[~fired])
    assert_close_dtype(y[fired], reference.steer(x, sae, IV)[fired])
    assert int(h.conditions[0].fired_tokens.sum()) == int(fired.sum())


def test_monitor_edits_nothing_and_reports():
    model = tiny_llama()
    sae = make_sae("jumprelu", d_in=D, d_sae=D_SAE, hook_name=f"blocks.{L}.hook_resid_post")
    ids, attn = left_padded(prompts(4))
    s = token_scores(model, sae, ids, attn)
    want = torch.where(attn.bool(), s, float("-inf")).amax(-1)
    thr = split_threshold(want)
    with torch.no_grad():
        plain = model.generate(ids, attention_mask=attn, **GEN)
        with saesteer.steer(model, sae, {"when": {"features": TRIG, "threshold": thr}}) as h:
            got = model.generate(ids, attention_mask=attn, **GEN)
    assert torch.equal(got.sequences, plain.sequences)
    for a, b in zip(got.logits, plain.logits):
        assert torch.equal(a, b)
    torch.testing.assert_close(h.conditions[0].score.cpu(), want, atol=1e-5, rtol=1e-5)
    assert h.conditions[0].report()["fired"] == (want > thr).tolist()


def test_probe_form_folds_weights_and_bias():
    model = tiny_llama()
    sae = make_sae("jumprelu", d_in=D, d_sae=D_SAE, hook_name=f"blocks.{L}.hook_resid_post")
    ids, attn = left_padded(prompts(4))
    w = [0.5, -2.0, 1.5]
    with torch.no_grad(), saesteer.capture(model, sae) as rec:
        model(ids, attention_mask=attn)
    f = reference.feature_acts(rec[sae.hook_name][0].float(), sae, TRIG).float()
    want = (f @ torch.tensor(w))[:, -1] + 0.25  # left padding: the last column is every row's last token
    when = {"features": TRIG, "weights": w, "bias": 0.25, "reduce": "last"}
    with torch.no_grad(), saesteer.steer(model, sae, None, when=when) as h:
        model(ids, attention_mask=attn)
    torch.testing.assert_close(h.conditions[0].score.cpu(), want, atol=1e-5, rtol=1e-5)
    assert torch.equal(h.conditions[0].fired.cpu(), want > 0)


def test_trigger_at_an_earlier_sae_and_later_is_refused():
    model = tiny_llama()
    edit_sae = make_sae("jumprelu", d_in=D, d_sae=D_SAE, seed=1, hook_name="blocks.2.hook_resid_post")
    trig_sae = make_sae("jumprelu", d_in=D, d_sae=D_SAE, hook_name=f"blocks.{L}.hook_resid_post")
    ps = prompts(4)
    ids, attn = left_padded(ps)
    s = token_scores(model, trig_sae, ids, attn)
    m = torch.where(attn.bool(), s, float("-inf")).amax(-1)
    thr = split_threshold(m)
    with torch.no_grad():
        plain = model(ids, attention_mask=attn).logits
        with saesteer.steer(model, edit_sae, IV):
            full = model(ids, attention_mask=attn).logits
        with saesteer.steer(model, edit_sae, IV, when={"sae": trig_sae, "features": TRIG, "threshold": thr}) as h:
            got = model(ids, attention_mask=attn).logits
    fired = h.conditions[0].fired.cpu()
    assert torch.equal(fired, m > thr)
    assert torch.equal(got[~fired], plain[~fired])
    assert torch.equal(got[fired], full[fired])
    with pytest.raises(ValueError, match=r"when\.sae: the condition reads blocks\.2\.hook_resid_post, after the edit"):
        saesteer.attach(model, trig_sae, IV, when={"sae": edit_sae, "features": TRIG, "threshold": 0.0})
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_bf16_model_unfired_rows_bit_for_bit():
    model = tiny_llama(torch.bfloat16)
    sae = make_sae("jumprelu", d_in=D, d_sae=D_SAE, hook_name=f"blocks.{L}.hook_resid_post")
    ids, attn = left_padded(prompts(4))
    s = token_scores(model, sae, ids, attn)
    m = torch.where(attn.bool(), s, float("-inf")).amax(-1)
    thr = split_threshold(m)
    with torch.no_grad():
        plain = model.generate(ids, attention_mask=attn, **GEN)
        with saesteer.steer(model, sae, IV, when={"features": TRIG, "threshold": thr}) as h:
            got = model.generate(ids, attention_mask=attn, **GEN)
    fired = h.conditions[0].fired.cpu()
    assert 0 < int(fired.sum()) < 4
    for a, b in zip(got.logits, plain.logits):
        assert torch.equal(a[~fired], b[~fired])


@pytest.mark.parametrize("when, match", [
    ({"features": TRIG}, r"when\.threshold: required"),
    ({"features": TRIG, "threshold": "high"}, r"when\.threshold: expected a finite number"),
    ({"features": [], "threshold": 1.0}, r"when\.features: expected a non-empty list"),
    ({"features": [1, 999], "threshold": 1.0}, r"when\.features: id 999 is out of range"),
    ({"features": TRIG, "threshold": 1.0, "reduce": "min"}, r"when\.reduce: expected one of max, mean, last"),
    ({"features": TRIG, "threshold": 1.0, "scope": "all"}, r"when\.scope: expected one of prompt, token"),
    ({"features": TRIG, "weights": [1.0], "bias": 0.0}, r"when\.weights: expected one number per feature \(3\)"),
    ({"features": TRIG, "weights": [1, 1, 1], "threshold": 1.0}, r"when\.threshold: give either"),
    ({"features": TRIG, "threshold": 1.0, "sae": "jumprelu"}, r"when\.sae: in the HF hooks pass the SAE object"),
    ({"features": TRIG, "threshold": 1.0, "colour": 1}, r"when\.colour: unknown field"),
])
def test_bad_when_is_a_named_error_and_registers_nothing(when, match):
    model = tiny_llama()
    sae = make_sae("jumprelu", d_in=D, d_sae=D_SAE, hook_name=f"blocks.{L}.hook_resid_post")
    with pytest.raises(ValueError, match=match):
        saesteer.attach(model, sae, IV, when=when)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_feature_probe_saved_as_when_scores_like_the_probe():
    from saesteer.refusal.probes import fit_logistic_probe
    from saesteer.steering.condition import parse_when

    model = tiny_llama()
    sae = make_sae("jumprelu", d_in=D, d_sae=D_SAE, hook_name=f"blocks.{L}.hook_resid_post")
    ids, attn = left_padded(prompts(8))
    with torch.no_grad(), saesteer.capture(model, sae) as rec:
        model(ids, attention_mask=attn)
    X = reference.feature_acts(rec[sae.hook_name][0][:, -1].float(), sae, TRIG).float()
    y = (X.sum(-1) > X.sum(-1).median()).long()
    probe = fit_logistic_probe(X, y)
    when = probe.as_when(TRIG)
    assert parse_when(when).is_probe
    with torch.no_grad(), saesteer.steer(model, sae, None, when=when) as h:
        model(ids, attention_mask=attn)
    torch.testing.assert_close(h.conditions[0].score.cpu().double(), probe.logits(X), atol=1e-4, rtol=1e-4)
    assert torch.equal(h.conditions[0].fired.cpu(), probe.predict(X))


def test_spec_file_carries_when(tmp_path):
    from saesteer.refusal.spec import SteeringSpec

    model = tiny_llama()
    sae = make_sae("jumprelu", d_in=D, d_sae=D_SAE, hook_name=f"blocks.{L}.hook_resid_post")
    ids, attn = left_padded(prompts(4))
    s = token_scores(model, sae, ids, attn)
    thr = split_threshold(torch.where(attn.bool(), s, float("-inf")).amax(-1))
    when = {"features": TRIG, "threshold": thr, "reduce": "max", "scope": "prompt"}
    path = SteeringSpec(list(IV.features), "clamp", 6.0, when=when).save(tmp_path / "spec.json")
    spec = SteeringSpec.load(path)
    assert spec.when == when
    with torch.no_grad():
        with spec.context(model, sae):
            got = model(ids, attention_mask=attn).logits
        with saesteer.steer(model, sae, IV, when=when):
            want = model(ids, attention_mask=attn).logits
    assert torch.equal(got, want)
    bad = tmp_path / "bad.json"
    bad.write_text('{"features": [1], "mode": "ablate", "when": {"features": [1], "threshold": 1, "scope": "all"}}')
    with pytest.raises(ValueError, match=r"bad\.json: when\.scope: expected one of prompt, token"):
        SteeringSpec.load(bad)


def test_without_kv_cache_the_decision_is_the_same():
    model = tiny_llama()
    sae = make_sae("jumprelu", d_in=D, d_sae=D_SAE, hook_name=f"blocks.{L}.hook_resid_post")
    ids, attn = left_padded(prompts(4))
    s = token_scores(model, sae, ids, attn)
    thr = split_threshold(torch.where(attn.bool(), s, float("-inf")).amax(-1))
    when = {"features": TRIG, "threshold": thr}
    with torch.no_grad():
        with saesteer.steer(model, sae, IV, when=when) as h:
            cached = model.generate(ids, attention_mask=attn, **GEN)
            fired_cached = h.conditions[0].fired.clone()
            uncached = model.generate(ids, attention_mask=attn, use_cache=False, **GEN)
    assert torch.equal(h.conditions[0].fired, fired_cached)
    assert torch.equal(cached.sequences, uncached.sequences)
    for a, b in zip(cached.logits, uncached.logits):
        assert_close_dtype(a, b)


# ------------------------------------------------------------------------------------------------
# torch.compile
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("compiler", ["eager", pytest.param("aot_eager", marks=pytest.mark.slow), pytest.param("inductor", marks=pytest.mark.slow)])
@pytest.mark.parametrize("scope", ["prompt", "token"])
def test_conditional_steer_under_torch_compile_equals_eager(scope, compiler):
    # The trigger read (ops.trigger_score, the compiled CPU op and its fake), the per-row or
    # per-token decision and the masked edit, traced by Dynamo (graph breaks allowed): the same
    # decisions and logits as the eager model, and an edit that changes the fired rows.
    import torch._dynamo

    torch._dynamo.reset()
    model = tiny_llama()
    sae = make_sae("jumprelu", d_in=D, d_sae=D_SAE, hook_name=f"blocks.{L}.hook_resid_post")
    ids, attn = left_padded(prompts(4))
    s = token_scores(model, sae, ids, attn)
    real = attn.bool()
    if scope == "prompt":
        thr = split_threshold(torch.where(real, s, float("-inf")).amax(-1))
        when = {"features": TRIG, "threshold": thr, "reduce": "max", "scope": "prompt"}
    else:
        when = {"features": TRIG, "threshold": float(s[real].median()), "scope": "token"}
    spec = {"features": IV.features, "mode": "clamp", "value": 6.0, "when": when}
    with torch.no_grad():
        plain = model(ids, attention_mask=attn).logits
        with saesteer.steer(model, sae, spec) as h:
            want = model(ids, attention_mask=attn).logits
        want_fired = h.conditions[0].fired.cpu().clone()
        compiled = torch.compile(model, backend=compiler)
        with saesteer.steer(model, sae, spec) as h:
            got = compiled(ids, attention_mask=attn).logits
        fired = h.conditions[0].fired.cpu().clone()
    torch._dynamo.reset()
    assert 0 < int(want_fired.sum()) < want_fired.numel()
    assert torch.equal(fired, want_fired)
    assert_close_dtype(got, want)
    rows = fired if scope == "prompt" else fired.any(-1)
    assert not torch.allclose(got[rows], plain[rows])
    assert torch.equal(got[~rows], plain[~rows]) or compiler == "inductor"  # inductor may fuse differently
