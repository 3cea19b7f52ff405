"""A request spec's fields are checked by type before use, and its values must keep the edit finite:
every bad spec is a SpecError whose message (and the server's ``param``) names the field."""

from __future__ import annotations

import pytest

from saesteer.steering.spec import FLOAT32_MAX, SpecError, parse_specs

SAES = {"jumprelu": 64, "topk": 32}


@pytest.mark.parametrize("sae", [["jumprelu"], {"name": "jumprelu"}, 3, True])
def test_an_sae_that_is_not_a_string_names_saesteer_sae(sae):
    with pytest.raises(SpecError, match=r"^saesteer\.sae: expected the name of a registered SAE \(a string\)"):
        parse_specs({"sae": sae, "features": [1]}, SAES)


@pytest.mark.parametrize("value", ["abc", "8", True, None.__class__, {"v": 1}, [1.0, "2"]])
def test_values_must_be_json_numbers(value):
    if value is type(None):
        value = [None]
    with pytest.raises(SpecError, match=r"^saesteer\.value: expected a number or a list of numbers \(JSON numbers\)"):
        parse_specs({"sae": "jumprelu", "features": [1, 2], "mode": "clamp", "value": value}, SAES)
    with pytest.raises(SpecError, match=r"^saesteer\.values: expected a number"):
        parse_specs({"sae": "jumprelu", "features": [1, 2], "mode": "clamp", "values": value}, SAES)


@pytest.mark.parametrize("features", ["12", {"12": 1}, 1.5, True])
def test_features_must_be_a_list_of_ids(features):
    with pytest.raises(SpecError, match=r"^saesteer\.features: expected a list of feature ids"):
        parse_specs({"sae": "jumprelu", "features": features}, SAES)


@pytest.mark.parametrize("value", [1e39, -1e39, 3.5e38, [1.0, 1e39]])
def test_a_value_that_is_inf_in_float32_is_refused(value):
    # finite as a Python float, inf once the kernels take it as float32
    with pytest.raises(SpecError, match=r"^saesteer\.value: .* too large for SAE 'jumprelu'"):
        parse_specs({"sae": "jumprelu", "features": [1, 2], "mode": "clamp", "value": value}, SAES)


def test_values_are_bounded_by_the_engines_limit_summed_over_features():
    spec = {"sae": "jumprelu", "features": [1, 2, 3], "mode": "clamp", "value": 10.0}
    assert parse_specs(spec, SAES, limits={"jumprelu": 30.0})  # 3 x 10 = the limit
    with pytest.raises(SpecError, match=r"^saesteer\.value: 10\.0 is too large .* sum to at most 29"):
        parse_specs(spec, SAES, limits={"jumprelu": 29.0})
    with pytest.raises(SpecError, match=r"^saesteer\.value: \[20\.0, -15\.0\] is too large"):
        parse_specs({"sae": "jumprelu", "features": [1, 2], "mode": "add", "value": [20.0, -15.0]}, SAES,
                    limits={"jumprelu": 30.0})
    assert parse_specs({"sae": "topk", "features": [1], "mode": "clamp", "value": 1e30}, SAES,
                       limits={"jumprelu": 30.0})  # another SAE: the float32 bound
    assert FLOAT32_MAX == float.fromhex("0x1.fffffep+127")


def test_nan_and_inf_are_still_named():
    with pytest.raises(SpecError, match=r"^saesteer\.value: .*NaN"):
        parse_specs({"sae": "jumprelu", "features": [1], "mode": "clamp", "value": float("nan")}, SAES)


def test_value_and_values_together_are_refused():
    with pytest.raises(SpecError, match=r"^saesteer\.value: give 'value' or 'values', not both"):
        parse_specs({"sae": "jumprelu", "features": [1], "mode": "clamp", "value": 1.0, "values": [1.0]}, SAES)


def test_several_specs_on_one_sae_are_all_kept_in_order():
    a = {"sae": "jumprelu", "features": [1], "mode": "clamp", "value": 2.0}
    b = {"sae": "jumprelu", "features": [1, 5], "mode": "scale", "value": 3.0}
    got = parse_specs([a, b], SAES)
    assert [s.intervention.mode for s in got] == ["clamp", "scale"] and all(s.sae == "jumprelu" for s in got)


@pytest.mark.parametrize("sae, match", [
    (["jumprelu"], r"\.sae: expected the name of a registered SAE \(a string\), got a list"),
    ("nope", r"\.sae: unknown SAE 'nope' \(registered: jumprelu, topk\)"),
])
def test_a_specs_sae_and_its_whens_sae_are_checked_alike(sae, match):
    """One resolver for both fields: the same message, the field named where it is."""
    from saesteer.steering.condition import ConditionError, parse_when

    with pytest.raises(SpecError, match=r"^saesteer" + match):
        parse_specs({"sae": sae, "features": [1]}, SAES)
    with pytest.raises(SpecError, match=r"^saesteer\.when" + match):
        parse_specs({"sae": "jumprelu", "features": [1], "when": {"sae": sae, "features": [2], "threshold": 1}}, SAES)
    with pytest.raises(ConditionError, match=r"^when" + match):
        parse_when({"sae": sae, "features": [2], "threshold": 1}, SAES)
    with pytest.raises(SpecError, match=r"^saesteer\.sae: required \(registered SAEs: jumprelu, topk\)"):
        parse_specs({"features": [1]}, SAES)
    with pytest.raises(ConditionError, match=r"^when\.sae: required \(registered SAEs: jumprelu, topk\)"):
        parse_when({"features": [2], "threshold": 1}, SAES)
