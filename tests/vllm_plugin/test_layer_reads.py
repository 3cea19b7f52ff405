"""The worker's per-step reads without vLLM: one SAE's inspections over a flattened batch are one
``encode_topk`` of the rows asked for, shared by the requests, and equal each request's own encode;
a prompt-scope condition reads nothing in a decode step and keeps its decision."""

from __future__ import annotations

import numpy as np
import torch

from helpers import make_sae
from saesteer import ops
from saesteer.steering.condition import parse_when
from saesteer.steering.spec import InspectSpec
from saesteer.vllm import reports
from saesteer.vllm.reports import ConditionState, InspectState, LayerReads


def _inspect(positions: str, k: int) -> InspectState:
    return InspectState(InspectSpec(sae="s", k=k, positions=positions))


def _batch(counts, computed, prompt_lens):
    """starts, and per token its position, for requests with ``counts`` tokens this step after
    ``computed`` tokens already in the cache."""
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    pos = np.concatenate([np.arange(c, c + n) for c, n in zip(computed, counts)]).astype(np.int64)
    return starts, pos, np.array(prompt_lens, dtype=np.int64)


def test_inspections_of_a_mixed_batch_equal_each_requests_own_encode():
    sae = make_sae("jumprelu", d_in=24, d_sae=96, seed=3)
    states = [_inspect("all", 4), _inspect("prompt", 6), _inspect("generated", 3)]
    lr = LayerReads()
    lr.inspects = [(0, states[0]), (2, states[1]), (3, states[2])]  # request 1 inspects nothing
    lr.kmax = 6
    g = torch.Generator().manual_seed(0)
    expect: dict[int, dict[int, tuple]] = {0: {}, 1: {}, 2: {}}
    last = None
    # a prefill chunk of every request, then (a new layout) a step that ends request 2's prompt, then decode steps
    for counts, computed in (([3, 2, 4, 3], [0, 0, 0, 0]), ([2, 1, 3, 2], [3, 2, 4, 3]), ([1, 1, 1, 1], [5, 3, 7, 5]),
                             ([1, 1, 1, 1], [6, 4, 8, 6])):
        if counts != last:  # the worker builds a new layout when the token counts change
            kept = lr.inspects, lr.kmax
            lr = LayerReads()
            lr.inspects, lr.kmax = kept
        last = counts
        starts, pos, plens = _batch(counts, computed, [4, 3, 6, 4])
        x = torch.randn(int(starts[-1]), 24, generator=g)
        tok = 100 + pos * 10 + np.repeat(np.arange(4), counts)
        lr.read(sae, x, pos, starts, plens, np.ones(pos.size, bool), tok, 1)
        for e, (r, st) in enumerate(lr.inspects):
            a, b = starts[r], starts[r + 1]
            want = st.wants(pos[a:b], plens[r])
            rows = np.arange(a, b)[want]
            if rows.size:
                v, i = ops.encode_topk(x[torch.from_numpy(rows)], sae, st.spec.k)
                for p, t, ii, vv in zip(pos[rows].tolist(), tok[rows].tolist(), i.tolist(), v.tolist()):
                    expect[e][p] = (t, ii, vv)
    for e, (_, st) in enumerate(lr.inspects):
        got = st.report()["tokens"]
        assert [row["position"] for row in got] == sorted(expect[e])
        for row in got:
            t, ids, vals = expect[e][row["position"]]
            assert row["token_id"] == t and len(row["ids"]) == st.spec.k
            np.testing.assert_allclose(row["values"], vals, rtol=1e-5, atol=1e-6)
            # ties among equal activations may order ids differently: compare the id sets of distinct values
            assert set(row["ids"]) == set(ids) or row["values"][-1] == row["values"][-2]
    assert {row["position"] for row in states[1].report()["tokens"]} == {0, 1, 2, 3, 4, 5}  # request 2's prompt
    assert {row["position"] for row in states[2].report()["tokens"]} == {4, 5, 6}  # request 3's generated tokens


def test_one_encode_per_step_and_no_gather_when_every_row_is_inspected(monkeypatch):
    sae = make_sae("jumprelu", d_in=16, d_sae=64, seed=1)
    lr = LayerReads()
    lr.inspects = [(r, _inspect("all", 5)) for r in range(3)]
    lr.kmax = 5
    seen = []
    real = ops.encode_topk

    def counting(x, sae_, k, backend="auto"):
        seen.append((x.shape[0], x.data_ptr()))
        return real(x, sae_, k, backend)

    monkeypatch.setattr(reports.ops, "encode_topk", counting)
    starts, pos, plens = _batch([1, 1, 1], [4, 5, 6], [4, 4, 4])
    x = torch.randn(4, 16)  # a padded batch: 3 real tokens
    lr.read(sae, x, pos, starts, plens, np.ones(3, bool), pos * 0 + 7, 1)
    assert seen == [(3, x.data_ptr())]  # one encode, of the real rows, read in place
    assert all(len(st.chunks) == 1 for _, st in lr.inspects)
    assert len({id(st.chunks[0][0]) for _, st in lr.inspects}) == 1  # one shared chunk


def test_a_decode_step_of_a_decided_prompt_condition_reads_nothing(monkeypatch):
    sae = make_sae("jumprelu", d_in=16, d_sae=64, seed=2)
    cond = parse_when({"features": [1, 2], "threshold": -1.0}, {"s": 64}, default_sae="s")
    sts = [ConditionState(cond, skip_bos=False) for _ in range(2)]
    lr = LayerReads()
    lr.conds = {cond: [(0, sts[0]), (1, sts[1])]}
    starts, pos, plens = _batch([3, 2], [0, 0], [3, 2])
    lr.read(sae, torch.randn(5, 16), pos, starts, plens, np.ones(5, bool), None, 1)
    assert all(st.ok is True and st.forward == 1 for st in sts)
    calls = []
    monkeypatch.setattr(reports, "token_scores", lambda *a, **k: calls.append(a) or torch.zeros(0))
    decode = LayerReads()
    decode.conds = lr.conds
    starts, pos, plens = _batch([1, 1], [3, 2], [3, 2])
    for fwd in (2, 3):
        decode.read(sae, torch.randn(2, 16), pos + fwd - 2, starts, plens, np.ones(2, bool), None, fwd)
        assert not calls and all(st.ok is True and st.forward == fwd for st in sts)
    recompute = LayerReads()  # request 0 preempted and recomputed from position 0: read anew
    recompute.conds = {cond: [(0, sts[0])]}
    starts, pos, plens = _batch([3], [0], [3])
    monkeypatch.undo()
    recompute.read(sae, torch.randn(3, 16), pos, starts, plens, np.ones(3, bool), None, 4)
    assert sts[0].forward == 4 and sts[0].prompt is not None
