"""The reporting side of ``when`` / ``inspect`` without vLLM: request tagging, the response rewrite
(JSON and server-sent events) and the worker's per-request condition state across chunks."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from saesteer.steering.condition import parse_when
from saesteer.steering.spec import SpecError, parse_specs
from saesteer.vllm.reports import TAG, ConditionState, InspectState, RequestState, child_index, prompt_index
from saesteer.vllm.requests import ServerSteering, SSEReports, add_reports, report_tag
from saesteer.vllm.scheduling import WHOLE

SAES = {"jumprelu": 64, "topk": 32}
LAYERS = {"jumprelu": 2, "topk": 1}
WHEN = {"features": [4, 5], "threshold": 1.5}


def test_reporting_requests_get_a_tag_and_a_salt_of_their_own():
    st = ServerSteering(SAES, layers=LAYERS)
    spec = {"sae": "jumprelu", "features": [1], "mode": "clamp", "value": 2.0, "when": WHEN}
    a, b = st.prepare({"prompt": "hi", "saesteer": spec}), st.prepare({"prompt": "hi", "saesteer": spec})
    assert report_tag(a) and report_tag(a) != report_tag(b) and a["cache_salt"] != b["cache_salt"]
    plain = st.prepare({"prompt": "hi", "saesteer": {"sae": "jumprelu", "features": [1]},
                        "vllm_xargs": {TAG: "forged"}})
    assert report_tag(plain) is None  # only the server tags
    many = st.prepare({"prompt": ["a", "b"], "saesteer": {"inspect": {"sae": "topk"}}})
    assert report_tag(many)  # several prompts: one tag, a report per prompt
    assert report_tag(st.prepare({"prompt": [1, 2, 3], "saesteer": {"inspect": {"sae": "topk", "k": 2}}}))


def test_a_spec_that_edits_the_prompt_by_its_decision_is_marked_for_the_scheduler():
    st = ServerSteering(SAES, layers=LAYERS)
    edit = {"sae": "jumprelu", "features": [1], "mode": "clamp", "value": 2.0}
    marked = [dict(edit, when=WHEN), dict(edit, when=WHEN, positions="prompt"), [edit, dict(edit, when=WHEN)]]
    unmarked = [edit, dict(edit, when=WHEN, positions="generated"), dict(edit, when=dict(WHEN, scope="token")),
                {"sae": "jumprelu", "when": WHEN}, {"inspect": {"sae": "topk"}}]
    for spec in marked:
        assert st.prepare({"prompt": "hi", "saesteer": spec})["vllm_xargs"][WHOLE] is True, spec
    for spec in unmarked:
        assert WHOLE not in st.prepare({"prompt": "hi", "saesteer": spec})["vllm_xargs"], spec
    forged = st.prepare({"prompt": "hi", "saesteer": edit, "vllm_xargs": {WHOLE: True}})
    assert WHOLE not in forged["vllm_xargs"]  # only the server marks


def test_choices_are_placed_by_prompt_and_completion():
    assert prompt_index("cmpl-abc-3-0f1e2d3c") == 3 and child_index("cmpl-abc-3-0f1e2d3c") == 0
    assert (prompt_index("2_cmpl-x-y-12-deadbeef"), child_index("2_cmpl-x-y-12-deadbeef")) == (12, 2)
    assert prompt_index("chatcmpl-req-5-0f1e2d3c") == 0  # a chat request has one prompt
    assert prompt_index("7-0f1e2d3c") == 0  # SteeredLLM's


def test_spec_fields():
    (s,) = parse_specs({"sae": "topk", "when": WHEN}, SAES, LAYERS)
    assert not s.edits and s.reports and s.when.sae == "topk"  # a monitor
    (s,) = parse_specs({"inspect": {"sae": "topk", "k": 3}}, SAES, LAYERS)
    assert s.sae == "topk" and s.inspect.k == 3 and not s.edits
    (s,) = parse_specs({"sae": "jumprelu", "features": [1], "when": dict(WHEN, sae="topk")}, SAES, LAYERS)
    assert s.when.sae == "topk" and parse_specs(json.dumps([s.to_dict()]), SAES, LAYERS) == (s,)
    with pytest.raises(SpecError, match=r"saesteer\.when\.sae: .* reads layer 2, after the edit's layer 1"):
        parse_specs({"sae": "topk", "features": [1], "when": dict(WHEN, sae="jumprelu")}, SAES, LAYERS)
    with pytest.raises(SpecError, match=r"saesteer\[1\]\.inspect\.k"):
        parse_specs([{"sae": "topk", "features": [1]}, {"inspect": {"sae": "topk", "k": 33}}], SAES, LAYERS)


def test_json_and_stream_responses_carry_each_choices_report():
    payload = {"choices": [{"index": 0, "text": "a"}, {"index": 1, "text": "b"}]}
    assert [c["saesteer"] for c in add_reports(payload, [{"r": 0}, {"r": 1}])["choices"]] == [{"r": 0}, {"r": 1}]

    async def fetch(i):
        return {"r": i}

    events = [{"choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": None}]},
              {"choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "length"}]}]
    raw = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"

    async def stream():
        sse, out = SSEReports(fetch), b""
        for i in range(0, len(raw), 7):  # events split across body messages
            out += await sse.feed(raw[i:i + 7], i + 7 >= len(raw))
        return out

    out = asyncio.run(stream())
    got = [json.loads(e[6:]) for e in out.split(b"\n\n") if e.startswith(b"data: {")]
    assert "saesteer" not in got[0]["choices"][0] and got[1]["choices"][0]["saesteer"] == {"r": 0}
    assert out.endswith(b"data: [DONE]\n\n")

    async def progress(i):
        return {"p": i}

    async def streamed():
        return await SSEReports(fetch, progress).feed(raw, True)

    got = [json.loads(e[6:]) for e in asyncio.run(streamed()).split(b"\n\n") if e.startswith(b"data: {")]
    assert got[0]["choices"][0]["saesteer"] == {"p": 0} and got[1]["choices"][0]["saesteer"] == {"r": 0}


def test_progress_hands_out_each_token_once_and_the_decision_once_known():
    (spec,) = parse_specs({"sae": "topk", "features": [1], "mode": "clamp", "value": 1.0, "when": WHEN,
                           "inspect": {"sae": "topk", "k": 2}}, SAES, LAYERS)
    st = RequestState("t", (spec,))
    assert st.progress() is None
    cs, ins = st.conds[0], st.inspects[0]
    ids, vals = np.array([[3, 4]] * 3), np.ones((3, 2), np.float32)
    cs.update(np.array([0.0, 2.0, 0.0], np.float32), np.arange(3), np.ones(3, bool), 5, 1)  # a first chunk
    ins.add(np.arange(3), np.arange(3), ids, vals)
    p = st.progress()
    assert "when" not in p and [t["position"] for t in p["inspect"][0]["tokens"]] == [0, 1, 2]
    cs.update(np.array([0.0, 0.0], np.float32), np.arange(3, 5), np.ones(2, bool), 5, 2)  # the prompt's end
    ins.add(np.arange(3, 5), np.arange(3, 5), ids[:2], vals[:2])
    p = st.progress()
    assert p["when"][0]["fired"] is True and p["when"][0]["score"] == 2.0
    assert [t["position"] for t in p["inspect"][0]["tokens"]] == [3, 4]
    assert st.progress() is None  # nothing new
    ins.add(np.array([5]), np.array([9]), ids[:1], vals[:1])
    p = st.progress()
    assert "when" not in p and [t["token_id"] for t in p["inspect"][0]["tokens"]] == [9]
    assert [t["position"] for t in st.report()["inspect"][0]["tokens"]] == list(range(6))  # the summary keeps all
    assert isinstance(InspectState(spec.inspect).progress(), type(None))


def test_a_prompt_decision_accumulates_over_chunks_and_restarts_on_recompute():
    cond = parse_when(dict(WHEN, reduce="mean"), {"s": 64}, default_sae="s")
    st = ConditionState(cond, skip_bos=True)
    valid = np.array([False, True, True])  # BOS out
    st.update(np.array([9.0, 1.0, 1.0], np.float32), np.arange(3), valid, 5, 1)
    assert st.ok is False and st.report()["score"] == 1.0
    st.update(np.array([3.0, 7.0], np.float32), np.arange(3, 5), np.ones(2, bool), 5, 2)  # the prompt's last chunk
    assert st.ok is True and st.report()["score"] == 3.0 and st.report()["fired"]
    st.update(None, np.array([5]), np.ones(1, bool), 5, 3)  # a decode step: nothing read, the decision kept
    assert st.ok is True
    assert not st.needs_scores(np.arange(6), 5)  # recomputed after preemption: the decision is kept, nothing read
    st.update(None, np.arange(6), np.ones(6, bool), 5, 4)
    assert st.ok is True and st.report()["score"] == 3.0
    part = ConditionState(cond, skip_bos=True)  # preempted before its prompt's end: read anew
    part.update(np.array([9.0, 9.0], np.float32), np.arange(2), np.array([False, True]), 5, 1)
    part.update(np.array([9.0, 1.0, 1.0, 1.0, 1.0], np.float32), np.arange(5), np.r_[False, np.ones(4, bool)], 5, 2)
    assert part.report()["score"] == 1.0 and part.ok is False
    assert child_index("3_cmpl-1-abc") == 3 and child_index("cmpl-1-abc") == 0
