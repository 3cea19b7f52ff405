"""A steering spec file as ``saesteer discover`` writes it (SAEs named by reference, ``edits`` at
several SAEs) becomes the request specs of a server whose SAEs are registered by name."""

from __future__ import annotations

import json

import pytest

from saesteer.refusal.spec import SteeringSpec
from saesteer.steering.spec import SpecError, from_spec_file, parse_specs


def _file(tmp_path, spec: SteeringSpec) -> dict:
    return json.loads(spec.save(tmp_path / "spec.json").read_text())


def test_a_two_sae_discover_spec_becomes_one_request_spec_per_edit(tmp_path):
    spec = SteeringSpec(features=[], mode="clamp", values=6.0, positions="generated", model="organism",
                        edits=[{"sae": "organism:jumprelu", "layer": 2, "features": [3, 9]},
                               {"sae": "organism:jumprelu_l3", "layer": 3, "features": [1]}])
    d = _file(tmp_path, spec)
    sources = {"l2": "organism:jumprelu", "l3": "organism:jumprelu_l3"}
    got = parse_specs(from_spec_file(d, sources), {"l2": 256, "l3": 256})
    assert [x["layer"] for x in from_spec_file(d, sources)] == [2, 3]
    assert [(s.sae, list(s.intervention.features), s.intervention.mode, s.positions) for s in got] == [
        ("l2", [3, 9], "clamp", "generated"), ("l3", [1], "clamp", "generated")]
    assert all(list(s.intervention.values) == [6.0] * len(s.intervention.features) for s in got)
    assert d["edits"][0]["sae"] == "organism:jumprelu"  # the file's dict is not modified


def test_a_directory_sae_maps_to_the_name_registered_with_the_same_directory(tmp_path, monkeypatch):
    (tmp_path / "saes" / "mine").mkdir(parents=True)
    d = _file(tmp_path, SteeringSpec(features=[4], mode="ablate", sae=str(tmp_path / "saes" / "mine"), skip_bos=False))
    monkeypatch.chdir(tmp_path)
    (s,) = parse_specs(from_spec_file(d, {"mine": "saes/mine"}), {"mine": 16})
    assert s.sae == "mine" and list(s.intervention.features) == [4] and s.skip_bos is False


def test_an_unregistered_sae_or_another_hook_is_named(tmp_path):
    d = _file(tmp_path, SteeringSpec(features=[4], sae="organism:topk"))
    with pytest.raises(SpecError, match=r"--steer.sae: the file's SAE 'organism:topk' is not registered .*jumprelu=organism:jumprelu"):
        from_spec_file(d, {"jumprelu": "organism:jumprelu"})
    d = _file(tmp_path, SteeringSpec(features=[4], sae="organism:jumprelu", hook="blocks.2.hook_mlp_out"))
    with pytest.raises(SpecError, match=r"--steer.hook: the server edits each SAE's own hook point"):
        from_spec_file(d, {"jumprelu": "organism:jumprelu"})


def test_request_specs_pass_through_unchanged():
    req = [{"sae": "l2", "features": [1], "mode": "scale", "value": -3.0}]
    assert from_spec_file(req, {"l2": "x"}) is req
    assert from_spec_file(req[0], {"l2": "x"}) is req[0]


def test_organism_aliases_and_directories_are_the_same_sae(tmp_path):
    """discover on the organism writes ``"sae": "organism"`` (its default SAE); an engine may have
    registered it as ``organism:jumprelu`` or by its directory. A hand-written spec naming an SAE
    by directory (no discover keys) is matched too."""
    from saesteer import organism
    from saesteer.vllm import source_dir

    jumprelu_dir = str(organism.read_manifest()[2]["jumprelu"])
    d = _file(tmp_path, SteeringSpec(features=[4], mode="ablate", sae="organism", model="organism"))
    for sources in ({"j": "organism:jumprelu"}, {"j": jumprelu_dir}):
        (s,) = parse_specs(from_spec_file(d, sources, resolve=source_dir), {"j": 16})
        assert s.sae == "j"
    with pytest.raises(SpecError, match=r"--steer.sae: the file's SAE 'organism' is not registered"):
        from_spec_file(d, {"t": "organism:topk"}, resolve=source_dir)
    hand = {"sae": "organism:jumprelu", "layer": 2, "features": [3], "mode": "clamp", "values": 8.0}
    assert from_spec_file(hand, {"j": jumprelu_dir}, resolve=source_dir) == {
        "sae": "j", "layer": 2, "features": [3], "mode": "clamp", "values": 8.0}
    assert from_spec_file(dict(hand, sae="j"), {"j": jumprelu_dir}) == dict(hand, sae="j")  # already a request spec
