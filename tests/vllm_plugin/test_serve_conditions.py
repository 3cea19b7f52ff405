"""Conditional steering (``when``) and inspection (``inspect``) inside vLLM, on the organism in fp32,
with chunked prefill (a 32-token step budget splits the prompts across steps) and mixed concurrent
batches: the decision, the score and the edited tokens equal the HF hooks', requests whose condition
does not hold are bit for bit unsteered, and inspection equals sae-lens's encode + top-k."""

from __future__ import annotations

import contextlib

import pytest

vllm = pytest.importorskip("vllm", reason="vLLM is not installed (make venv-vllm; make test-vllm)")

import torch  # noqa: E402

import helpers  # noqa: E402
import saesteer  # noqa: E402
from saesteer.steering.spec import SpecError  # noqa: E402

MAX_NEW = 8
BUDGET = 32  # max_num_batched_tokens: the six prompts (121 tokens) take several chunked steps


@pytest.fixture(scope="module")
def llm():
    llm = helpers.organism_llm(max_model_len=256, enable_chunked_prefill=True, max_num_batched_tokens=BUDGET)
    yield llm
    llm.shutdown()


@pytest.fixture(scope="module")
def feats(org, prompts):
    return helpers.refusal_features(org, prompts, n_harmful=3)


def prompt_scores(org, ids, trig, reduce="max"):
    """The prompt's trigger score (``reduce`` over its tokens, BOS out), read by the HF hooks' monitor."""
    with torch.no_grad(), saesteer.steer(org.model, org.sae, {"when": {"features": trig, "threshold": 0.0, "reduce": reduce}}) as h:
        org.model(torch.tensor([ids]))
        return float(h.conditions[0].score[0])


def hf_iv(spec):
    """A request spec as the HF hooks take it: its SAE names dropped (they take the SAE object)."""
    if spec is None:
        return None
    iv = {k: v for k, v in spec.items() if k not in ("sae", "positions")}
    if "when" in iv:
        iv["when"] = {k: v for k, v in iv["when"].items() if k != "sae"}
    return iv


def hf_greedy(org, ids, iv=None, positions="all"):
    """Greedy tokens and (with a ``when``) the HF trigger's report; ``iv``: a request spec."""
    x = torch.tensor([ids])
    iv = hf_iv(iv)
    edit = contextlib.nullcontext() if iv is None else saesteer.steer(org.model, org.sae, iv, positions=positions)
    with torch.no_grad(), edit as h:
        out = org.model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=MAX_NEW, do_sample=False)
        rep = h.conditions[0].report() if h is not None and h.conditions and h.conditions[0] is not None else None
    return out[0, len(ids):].tolist(), rep


def hf_logprobs(org, ids, iv=None, positions="all"):
    """The log-probabilities of HF's greedy tokens (cached generation, the HF hooks' edit)."""
    x = torch.tensor([ids])
    iv = hf_iv(iv)
    edit = contextlib.nullcontext() if iv is None else saesteer.steer(org.model, org.sae, iv, positions=positions)
    with torch.no_grad(), edit:
        out = org.model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=MAX_NEW, do_sample=False,
                                 output_logits=True, return_dict_in_generate=True)
    toks = out.sequences[0, len(ids):]
    return [float(torch.log_softmax(lg[0].float(), -1)[t]) for lg, t in zip(out.logits, toks.tolist())]


def run(llm, prompts, steer, logprobs=False):
    sp = vllm.SamplingParams(max_tokens=MAX_NEW, temperature=0, ignore_eos=True, logprobs=0 if logprobs else None)
    outs = llm.generate(prompts, sp, steer=steer, use_tqdm=False)
    got = [list(o.outputs[0].token_ids) for o in outs], [getattr(o.outputs[0], "saesteer", None) for o in outs]
    if logprobs:
        got += ([[lp[t].logprob for lp, t in zip(o.outputs[0].logprobs, o.outputs[0].token_ids)] for o in outs],)
    return got


def split(scores):
    s = sorted(scores)
    return (s[len(s) // 2 - 1] + s[len(s) // 2]) / 2


def clamp(feats, when=None, positions="all", value=6.0):
    d = {"sae": "jumprelu", "features": feats, "mode": "clamp", "value": value, "positions": positions}
    if when is not None:
        d["when"] = when
    return d


def test_prompt_scope_in_a_mixed_chunked_batch_equals_the_hf_hooks(org, llm, prompts, feats):
    """Six requests at once over chunked prefill: conditional edits (on the generated tokens, where
    the decision is the whole prompt's whatever the chunking), an unconditional edit, a monitor and
    a plain request. Fired rows equal the unconditional edit, the others are unsteered bit for bit."""
    assert sum(map(len, prompts)) > 2 * BUDGET
    scores = [prompt_scores(org, p, feats) for p in prompts]
    thr = split(scores)
    when = {"sae": "jumprelu", "features": feats, "threshold": thr, "reduce": "max", "scope": "prompt"}
    cond = clamp(feats, when, "generated")
    steer = [cond, cond, cond, cond, clamp(feats, None, "generated"), {"sae": "jumprelu", "when": when}]
    got, reps = run(llm, prompts, steer)
    plain = [hf_greedy(org, p)[0] for p in prompts]
    edited = [hf_greedy(org, p, clamp(feats), "generated")[0] for p in prompts]
    fired = [s > thr for s in scores]
    assert any(fired[:4]) and not all(fired[:4]), "the threshold splits nothing: the test shows nothing"
    for i in range(4):
        assert got[i] == (edited[i] if fired[i] else plain[i]), i
        hf_tokens, hf_rep = hf_greedy(org, prompts[i], {**clamp(feats), "when": when}, "generated")
        assert got[i] == hf_tokens
        (w,) = reps[i]["when"]
        assert w["fired"] == fired[i] == hf_rep["fired"][0]
        assert w["score"] == pytest.approx(scores[i], abs=1e-4)
    assert got[4] == edited[4] and reps[4] is None
    assert got[5] == plain[5]  # a monitor edits nothing
    assert reps[5]["when"][0]["fired"] == fired[5] and reps[5]["when"][0]["score"] == pytest.approx(scores[5], abs=1e-4)


@pytest.mark.parametrize("positions", ["all", "prompt"])
def test_prompt_scope_editing_prompt_tokens_in_a_mixed_chunked_batch_equals_the_hf_hooks(org, llm, prompts, feats, positions):
    """The decision is read on the whole prompt and edits its tokens too, while the 32-token budget
    chunks the batch: saesteer's scheduler gives each such prompt one step, so fired rows equal the
    unconditional edit and the others are unsteered bit for bit, as on HF (one forward)."""
    # reduce "last": the score of a prompt's last token, which a chunk's own last token would not give
    scores = [prompt_scores(org, p, feats, "last") for p in prompts]
    thr = split(scores)
    when = {"sae": "jumprelu", "features": feats, "threshold": thr, "reduce": "last", "scope": "prompt"}
    edit = clamp(feats, None, positions, 12.0)
    cond = {**edit, "when": when}
    # the plain and unconditional requests first: they take the step budget, so the conditional
    # prompts behind them would be split without the whole-prompt rule
    order = [1, 4, 0, 2, 3, 5]
    steer = {1: None, 4: clamp(feats, None, "generated")}
    got, reps, lps = run(llm, [prompts[i] for i in order], [steer.get(i, cond) for i in order], logprobs=True)
    got, reps, lps = dict(zip(order, got)), dict(zip(order, reps)), dict(zip(order, lps))
    fired = [s > thr for s in scores]
    conditional = [0, 2, 3, 5]
    assert any(fired[i] for i in conditional) and not all(fired[i] for i in conditional)
    for i in conditional:
        plain = hf_greedy(org, prompts[i])[0]
        edited = hf_greedy(org, prompts[i], edit, positions)[0]
        assert got[i] == (edited if fired[i] else plain), i
        hf_tokens, hf_rep = hf_greedy(org, prompts[i], cond, positions)
        assert got[i] == hf_tokens
        # the log-probabilities see an edit of any prompt token, even where the tokens do not change
        want = hf_logprobs(org, prompts[i], edit if fired[i] else None, positions)
        assert lps[i] == pytest.approx(want, abs=2e-3), i
        (w,) = reps[i]["when"]
        assert w["fired"] == fired[i] == hf_rep["fired"][0]
        assert w["score"] == pytest.approx(scores[i], abs=1e-4)
    assert got[1] == hf_greedy(org, prompts[1])[0]
    assert got[4] == hf_greedy(org, prompts[4], clamp(feats), "generated")[0]


def test_a_prompt_over_the_step_budget_is_refused_when_its_decision_edits_it(llm, prompts, feats):
    """Such a prompt could never be scheduled in one step: refused, naming prompt, before it runs;
    the same prompt whose edit waits for the generated tokens runs (chunked)."""
    long = (prompts[0] * 3)[: BUDGET + 8]
    when = {"features": feats, "threshold": 0.0}
    with pytest.raises(ValueError, match=r"^prompt: 40 tokens, more than the engine's step budget \(max_num_batched_tokens=32\)"):
        run(llm, [long], [clamp(feats, when)])
    got, reps = run(llm, [long, long], [clamp(feats, when, "generated"), {"sae": "jumprelu", "when": when}])
    assert len(got[0]) == MAX_NEW and reps[1]["when"][0]["score"] is not None


@pytest.mark.parametrize("fire", [True, False])
def test_prompt_scope_on_every_position_equals_the_hf_hooks(org, llm, prompts, feats, fire):
    """A prompt in one step (shorter than the budget): the decision covers its prompt tokens too."""
    p = prompts[2]
    s = prompt_scores(org, p, feats)
    when = {"features": feats, "threshold": s - 1.0 if fire else s + 1.0}
    got, reps = run(llm, [p], [clamp(feats, when)])
    want = hf_greedy(org, p, clamp(feats))[0] if fire else hf_greedy(org, p)[0]
    assert got[0] == want == hf_greedy(org, p, {**clamp(feats), "when": when})[0]
    assert reps[0]["when"][0]["fired"] is fire


def test_token_scope_in_a_mixed_chunked_batch_equals_the_hf_hooks(org, llm, prompts, feats):
    """Token scope decides each token from its own score, so chunking changes nothing."""
    when = {"features": feats, "threshold": 1.0, "scope": "token"}
    steer = [clamp(feats, when), None] * 3
    got, reps = run(llm, prompts, steer)
    for i, p in enumerate(prompts):
        want, rep = hf_greedy(org, p, None if steer[i] is None else {**clamp(feats), "when": when})
        assert got[i] == want, i
        if steer[i] is not None:
            assert reps[i]["when"][0]["fired_tokens"] == int(rep["fired_tokens"][0])
    assert any(r["when"][0]["fired_tokens"] for r in reps[::2])


@pytest.mark.parametrize("positions", ["all", "generated"])
def test_inspect_equals_sae_lens_encode_and_topk(org, llm, prompts, feats, positions):
    k = 5
    spec = [clamp(feats), {"inspect": {"sae": "jumprelu", "k": k, "positions": positions}}]
    got, reps = run(llm, prompts[:2], [spec, {"inspect": {"sae": "jumprelu", "k": k, "positions": positions}}])
    for i, p in enumerate(prompts[:2]):
        iv = clamp(feats) if i == 0 else None
        assert got[i] == hf_greedy(org, p, iv)[0]  # inspection changes nothing
        ids = torch.tensor([p + got[i][:-1]])  # every token the model read
        # Inspection reads the stream at the SAE's hook point before the edits there; the clamp
        # edits that same point, so (no edit upstream) it is the unsteered model's on these tokens.
        with torch.no_grad(), saesteer.capture(org.model, org.sae) as rec:
            org.model(ids)
        acts = org.sae.encode(rec[org.sae.hook_name][0][0])
        want_v, _ = acts.topk(k, dim=-1)
        (ins,) = reps[i]["inspect"]
        first = len(p) if positions == "generated" else 0
        assert [t["position"] for t in ins["tokens"]] == list(range(first, ids.shape[1]))
        assert [t["token_id"] for t in ins["tokens"]] == ids[0, first:].tolist()
        v = torch.tensor([t["values"] for t in ins["tokens"]])
        torch.testing.assert_close(v, want_v[first:], atol=1e-4, rtol=1e-4)
        for t in ins["tokens"]:  # the ids name features with those activations (ties aside)
            torch.testing.assert_close(acts[t["position"], t["ids"]], torch.tensor(t["values"]), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"sae": "jumprelu", "features": [1], "when": {"features": [2]}}, r"saesteer\.when\.threshold: required"),
        ({"sae": "jumprelu", "features": [1], "when": {"features": [2], "threshold": "x"}}, r"saesteer\.when\.threshold"),
        ({"sae": "jumprelu", "features": [1], "when": {"features": [2], "threshold": 1, "scope": "x"}}, r"saesteer\.when\.scope"),
        ({"sae": "jumprelu", "features": [1], "when": {"features": [10**7], "threshold": 1}}, r"saesteer\.when\.features"),
        ({"inspect": {"sae": "jumprelu", "k": 0}}, r"saesteer\.inspect\.k"),
        ({"inspect": {"sae": "nope"}}, r"saesteer\.inspect\.sae"),
        ({"inspect": {"sae": "jumprelu", "positions": "x"}}, r"saesteer\.inspect\.positions"),
    ],
)
def test_bad_when_and_inspect_fields_are_named(llm, prompts, bad, match):
    with pytest.raises(SpecError, match=match):
        llm.generate([prompts[0]], vllm.SamplingParams(max_tokens=2), steer=[bad])
