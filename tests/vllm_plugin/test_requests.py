"""What the steered server does to a request body before vLLM sees it (runs without vLLM)."""

from __future__ import annotations

import json

import pytest

from saesteer.steering.spec import SpecError, parse_specs, spec_salt
from saesteer.vllm.requests import ServerSteering, error_body

SAES = {"jumprelu": 64, "topk": 32}
SPEC = {"sae": "jumprelu", "features": [3, 1], "mode": "clamp", "value": 2.0}


def test_a_spec_is_canonicalized_into_vllm_xargs_and_salts_the_cache():
    st = ServerSteering(SAES)
    for body in ({"prompt": "hi", "saesteer": SPEC}, {"prompt": "hi", "vllm_xargs": {"saesteer": json.dumps(SPEC)}}):
        before = json.dumps(body, sort_keys=True)
        out = st.prepare(body)
        assert json.dumps(body, sort_keys=True) == before  # the caller's body is not modified
        assert "saesteer" not in out
        assert parse_specs(out["vllm_xargs"]["saesteer"], SAES) == parse_specs(SPEC, SAES)
        assert out["cache_salt"] == spec_salt(parse_specs(SPEC, SAES))
    other = st.prepare({"prompt": "hi", "saesteer": dict(SPEC, value=3.0)})
    assert other["cache_salt"] != out["cache_salt"]


def test_unsteered_requests_pass_unchanged_and_keep_their_own_salt():
    st = ServerSteering(SAES)
    body = {"prompt": "hi", "cache_salt": "mine", "vllm_xargs": {"other": 1}}
    assert st.prepare(body) == body
    steered = st.prepare(dict(body, saesteer=SPEC))
    assert steered["cache_salt"] not in ("mine", spec_salt(parse_specs(SPEC, SAES)))  # both isolate
    assert steered["vllm_xargs"]["other"] == 1


def test_the_default_applies_only_to_requests_that_name_no_spec():
    st = ServerSteering(SAES, default=SPEC)
    assert "saesteer" in st.prepare({"prompt": "hi"})["vllm_xargs"]
    for none in (None, "none", []):
        out = st.prepare({"prompt": "hi", "saesteer": none})
        assert "vllm_xargs" not in out and "cache_salt" not in out
    st.set_default(None)
    assert st.prepare({"prompt": "hi"}) == {"prompt": "hi"}
    assert st.describe()["default"] is None


@pytest.mark.parametrize(
    "body, field",
    [
        ({"saesteer": {"sae": "nope", "features": [1]}}, "saesteer.sae"),
        ({"saesteer": {"sae": "topk", "features": [32]}}, "saesteer.features"),
        ({"saesteer": {"sae": "topk", "features": [1], "mode": "clamp", "value": float("inf")}}, "saesteer.value"),
        ({"vllm_xargs": {"saesteer": "{oops"}}, "saesteer: malformed JSON"),
        ({"saesteer": SPEC, "vllm_xargs": {"saesteer": json.dumps(SPEC)}}, "given both"),
    ],
)
def test_bad_specs_raise_naming_the_field(body, field):
    with pytest.raises(SpecError, match=field.replace(".", r"\.")):
        ServerSteering(SAES).prepare(body)
    msg = json.loads(error_body(SpecError(field + ": x")))["error"]
    assert msg["code"] == 400 and msg["message"].startswith(field)


def test_a_bad_default_leaves_the_old_one():
    st = ServerSteering(SAES, default=SPEC)
    with pytest.raises(SpecError, match="saesteer.features"):
        st.set_default({"sae": "jumprelu", "features": [1, 1]})
    assert st.describe()["default"][0]["features"] == [3, 1]
    with pytest.raises(SpecError, match="--sae"):
        ServerSteering({})
