"""The position rules under vLLM's scheduling: prompts split across steps (chunked prefill, 8
tokens a step) and requests preempted for want of KV blocks and recomputed (six blocks of 32 for
six requests), with steered and unsteered requests mixed. Every request must still give the HF
hooks' greedy tokens, and the edit counts show the recompute happened and was classed right."""

from __future__ import annotations

import pytest

vllm = pytest.importorskip("vllm", reason="vLLM is not installed (make venv-vllm; make test-vllm)")

from saesteer import Intervention  # noqa: E402

import helpers  # noqa: E402

MAX_NEW = 40


@pytest.fixture(scope="module")
def llm():
    llm = helpers.organism_llm(max_model_len=128, enable_prefix_caching=False, enable_chunked_prefill=True,
                       max_num_batched_tokens=8, max_num_seqs=6, num_gpu_blocks_override=6, disable_log_stats=False)
    yield llm
    llm.shutdown()


def preemptions(llm) -> int:
    return int(sum(m.value for m in llm.llm.get_metrics() if m.name == "vllm:num_preemptions"))


def run(org, llm, prompts, steer_mask, positions):
    """Greedy outputs (eos on) of ``prompts``, those in ``steer_mask`` clamped; checked against the
    HF hooks. Returns the edited-token count, the count had no token been recomputed, and the
    preemptions vLLM counted."""
    feats = helpers.refusal_features(org, prompts, n_harmful=3)
    iv = Intervention(feats, "clamp", 6.0)
    d = {"sae": "jumprelu", "features": list(iv.features), "mode": "clamp", "value": list(iv.values),
         "positions": positions}
    steer = [d if m else None for m in steer_mask]
    assert all(len(p) > 8 for p in prompts)  # every prompt takes more than one prefill step
    llm.stats(reset=True)
    before = preemptions(llm)
    sp = vllm.SamplingParams(max_tokens=MAX_NEW, temperature=0)  # both engines stop at eos
    got = [list(o.outputs[0].token_ids) for o in llm.generate(prompts, sp, steer=steer, use_tqdm=False)]
    edited = llm.stats()["jumprelu"]["edited_tokens"]
    want = [helpers.hf_greedy(org, p, MAX_NEW, iv if s else None, positions) for p, s in zip(prompts, steer)]
    assert got == want
    # The tokens each steered request feeds through the model once: its prompt but BOS, and every
    # generated token but the last. A preempted request is recomputed and those tokens are edited again.
    once = {"all": lambda p, g: len(p) - 1 + len(g) - 1, "prompt": lambda p, g: len(p) - 1,
            "generated": lambda p, g: len(g) - 1}[positions]
    fed_once = sum(once(p, g) for p, g, s in zip(prompts, got, steer) if s)
    return edited, fed_once, preemptions(llm) - before


@pytest.mark.parametrize("positions", ["all", "prompt", "generated"])
def test_mixed_batch_under_chunked_prefill_and_preemption_equals_hf(org, llm, prompts, positions):
    # Six requests of 15-27 prompt tokens and up to 40 more need more KV blocks than the six there
    # are: vLLM preempts some and recomputes them, chunked 8 tokens a step.
    edited, fed_once, preempted = run(org, llm, prompts, [False, True] * 3, positions)
    assert preempted > 0, "nothing was preempted: the test does not test what it says"
    assert edited >= fed_once


def test_a_preempted_steered_request_is_recomputed_with_its_edit(org, llm, prompts):
    """All steered, positions all: whichever request is preempted, its recomputed prompt and
    generated tokens are edited again (and the tokens still equal HF's)."""
    edited, fed_once, preempted = run(org, llm, prompts, [True] * 6, "all")
    assert preempted > 0
    assert edited > fed_once, "a preempted request's recomputed tokens were not edited"


def test_a_prompt_scope_decision_persists_across_chunked_prefill_and_preemption(org, llm, prompts):
    """A prompt-scope condition read over 8-token chunks, gating a clamp of the generated tokens, on
    requests that are preempted and recomputed: each one's tokens are the HF hooks' for its own
    decision (half the prompts fire), and its report the HF score."""
    import torch

    import saesteer

    feats = helpers.refusal_features(org, prompts, n_harmful=3)
    scores = []
    for p in prompts:
        with torch.no_grad(), saesteer.steer(org.model, org.sae, {"when": {"features": feats, "threshold": 0.0}}) as h:
            org.model(torch.tensor([p]))
            scores.append(float(h.conditions[0].score[0]))
    thr = sorted(scores)[len(scores) // 2] - 1e-3
    when = {"features": feats, "threshold": thr}
    spec = {"sae": "jumprelu", "features": feats, "mode": "clamp", "value": 6.0, "positions": "generated", "when": when}
    before = preemptions(llm)
    sp = vllm.SamplingParams(max_tokens=MAX_NEW, temperature=0)
    outs = llm.generate(prompts, sp, steer=[spec] * len(prompts), use_tqdm=False)
    assert preemptions(llm) > before, "nothing was preempted: the test does not test what it says"
    iv = {"features": feats, "mode": "clamp", "value": 6.0, "when": when}
    for p, o, s in zip(prompts, outs, scores):
        assert list(o.outputs[0].token_ids) == helpers.hf_greedy(org, p, MAX_NEW, iv, "generated")
        rep = o.outputs[0].saesteer["when"][0]
        assert rep["fired"] is (s > thr) and rep["score"] == pytest.approx(s, abs=1e-4)
    assert 0 < sum(s > thr for s in scores) < len(scores)
