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


def test_a_spec_layer_must_be_the_sae_layer():
    st = ServerSteering(SAES, layers={"jumprelu": 2, "topk": 3})
    assert st.describe()["saes"]["topk"] == {"d_sae": 32, "layer": 3}
    ok = st.prepare({"prompt": "hi", "saesteer": [dict(SPEC, layer=2), {"sae": "topk", "features": [1], "layer": 3}]})
    assert "layer" not in ok["vllm_xargs"]["saesteer"]  # checked, then dropped: the SAE fixes the layer
    for bad, msg in (([SPEC, {"sae": "topk", "features": [1], "layer": 2}], r"saesteer\[1\]\.layer: .*'topk', which reads layer 3"),
                     (dict(SPEC, layer="2"), r"saesteer\.layer: expected an integer"),
                     (dict(SPEC, layer=True), r"saesteer\.layer: expected an integer")):
        body = {"prompt": "hi", "saesteer": bad}
        before = json.dumps(body, sort_keys=True)
        with pytest.raises(SpecError, match=msg):
            st.prepare(body)
        assert json.dumps(body, sort_keys=True) == before
    with pytest.raises(SpecError, match=r"saesteer\.layer"):
        st.set_default(dict(SPEC, layer=5))
    assert st.default == ()  # a refused default leaves the old one
    # Without the SAEs' layers (an engine-neutral parse) a layer is only type-checked.
    assert parse_specs(dict(SPEC, layer=7), SAES) == parse_specs(SPEC, SAES)


@pytest.mark.parametrize("raw, message", [
    (b'"hello"', "saesteer: expected a spec (an object), a list of specs, or null; got the JSON string 'hello'"),
    (b"42", "saesteer: expected a spec (an object), a list of specs, or null; got 42"),
    (b"{not json", "saesteer: malformed JSON"),
    (b'{"sae": ["jumprelu"], "features": [1]}', "saesteer.sae: expected the name of a registered SAE"),
    (b'{"sae": "jumprelu", "features": [1], "mode": "clamp", "value": "8"}', "saesteer.value: expected a number"),
    (b'{"sae": "jumprelu", "features": [1], "mode": "clamp", "value": 1e39}', "saesteer.value: 1e+39 is too large"),
])
def test_put_default_bodies_that_are_not_specs_name_what_was_expected(raw, message):
    st = ServerSteering(SAES, default=SPEC)
    before = st.default
    with pytest.raises(SpecError) as e:
        st.set_default_json(raw)
    assert str(e.value).startswith(message)
    assert st.default == before  # left as it was
    field = message.split(":", 1)[0]
    assert json.loads(error_body(e.value))["error"]["param"] == field


@pytest.mark.parametrize("raw", [b"", b"null", b'"none"', b"[]"])
def test_put_default_null_none_or_empty_switches_the_edit_off(raw):
    st = ServerSteering(SAES, default=SPEC)
    assert st.set_default_json(raw) == () and st.default == ()


@pytest.mark.parametrize("bad, field", [
    ({"sae": ["jumprelu"], "features": [1]}, "saesteer.sae"),
    ({"sae": {"n": 1}, "features": [1]}, "saesteer.sae"),
    ({"sae": "jumprelu", "features": [1], "mode": "clamp", "value": "abc"}, "saesteer.value"),
    ({"sae": "jumprelu", "features": [1], "mode": "clamp", "value": "8"}, "saesteer.value"),
    ({"sae": "jumprelu", "features": [1], "mode": "clamp", "value": 1e39}, "saesteer.value"),
])
def test_request_specs_of_the_wrong_type_are_400_naming_the_field(bad, field):
    st = ServerSteering(SAES)
    for body in ({"prompt": "hi", "saesteer": bad}, {"prompt": "hi", "vllm_xargs": {"saesteer": json.dumps(bad)}}):
        with pytest.raises(SpecError) as e:
            st.prepare(body)
        assert json.loads(error_body(e.value))["error"]["param"] == field


def test_the_workers_value_limits_bound_request_specs_and_the_default():
    st = ServerSteering(SAES, layers=None, limits={"jumprelu": 100.0})
    ok = {"sae": "jumprelu", "features": [1, 2], "mode": "clamp", "value": 50.0}
    assert st.prepare({"prompt": "hi", "saesteer": ok})
    with pytest.raises(SpecError, match=r"^saesteer\.value: 51\.0 is too large"):
        st.prepare({"prompt": "hi", "saesteer": dict(ok, value=51.0)})
    with pytest.raises(SpecError, match=r"^saesteer\.value"):
        st.set_default(dict(ok, value=51.0))
