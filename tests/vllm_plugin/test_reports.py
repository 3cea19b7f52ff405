"""The reporting side of ``when`` / ``inspect`` without vLLM: request tagging, the response rewrite
(JSON and server-sent events) and the worker's per-request condition state across chunks."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from saesteer.steering.condition import parse_when
from saesteer.steering.spec import SpecError, parse_specs
from saesteer.vllm.reports import TAG, ConditionState, child_index
from saesteer.vllm.requests import ServerSteering, SSEReports, add_reports, report_tag

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
    with pytest.raises(SpecError, match=r"^prompt: .* takes one prompt"):
        st.prepare({"prompt": ["a", "b"], "saesteer": {"inspect": {"sae": "topk"}}})
    assert report_tag(st.prepare({"prompt": [1, 2, 3], "saesteer": {"inspect": {"sae": "topk", "k": 2}}}))


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
    st.update(np.array([9.0, 0.0, 0.0, 0.0, 0.0, 0.0], np.float32), np.arange(6), np.r_[False, np.ones(5, bool)], 5, 4)
    assert st.ok is False and st.report()["score"] == 0.0  # recomputed after preemption: read anew
    assert child_index("3_cmpl-1-abc") == 3 and child_index("cmpl-1-abc") == 0
