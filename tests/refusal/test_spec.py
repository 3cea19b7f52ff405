"""Steering spec files: portable paths (absolute on save, relative to the spec file on load), the
model they were made for, and errors that name the file."""

from __future__ import annotations

import json
import os

import pytest

from saesteer.refusal.spec import SteeringSpec, absolute_ref, resolve_sae, same_model


def test_save_writes_local_paths_absolute_and_keeps_ids(tmp_path, monkeypatch):
    (tmp_path / "saes" / "mine").mkdir(parents=True)
    (tmp_path / "model").mkdir()
    monkeypatch.chdir(tmp_path)
    SteeringSpec(features=[1, 2], sae="saes/mine", model="model", layer=3).save("spec.json")
    d = json.loads((tmp_path / "spec.json").read_text())
    assert d["sae"] == str((tmp_path / "saes" / "mine").resolve())
    assert d["model"] == str((tmp_path / "model").resolve())
    SteeringSpec(features=[1], sae="gemma-scope-2b-pt-res:layer_3/width_16k", model="google/gemma-2-2b").save("ids.json")
    d = json.loads((tmp_path / "ids.json").read_text())
    assert d["sae"] == "gemma-scope-2b-pt-res:layer_3/width_16k" and d["model"] == "google/gemma-2-2b"
    # organism references are names, even with a directory called "organism" in the cwd
    (tmp_path / "organism").mkdir()
    assert absolute_ref("organism") == "organism" and absolute_ref("organism:topk") == "organism:topk"


def test_load_resolves_paths_relative_to_the_spec_file_from_any_cwd(tmp_path, monkeypatch):
    run = tmp_path / "runs" / "discover"
    (run / "sae").mkdir(parents=True)
    (run / "spec.json").write_text(json.dumps({"features": [4], "sae": "sae", "model": "google/gemma-2-2b"}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    spec = SteeringSpec.load(run / "spec.json")
    assert spec.sae == str((run / "sae").resolve())
    assert spec.model == "google/gemma-2-2b"  # a hub id is not a path under the spec's directory


def test_old_spec_without_model_loads_and_round_trips(tmp_path):
    p = tmp_path / "old.json"
    p.write_text(json.dumps({"sae": "organism", "layer": 3, "features": [5, 9], "mode": "ablate", "values": None,
                             "hook": None, "positions": "all", "notes": {"source": "saesteer discover"}}))
    spec = SteeringSpec.load(p)
    assert spec.model is None and spec.features == [5, 9] and spec.sae == "organism"
    assert "model" not in spec.to_dict()
    spec.model = "organism"
    spec.save(tmp_path / "new.json")
    assert SteeringSpec.load(tmp_path / "new.json").model == "organism"


@pytest.mark.parametrize("name, text, match", [
    ("garbage.json", "\x00\x01 this is not json", r"garbage\.json: not valid JSON \(line 1 column 1"),
    ("two.json", '{"features": [1],\n  "mode": }', r"two\.json: not valid JSON \(line 2 column"),
    ("bad.yaml", "features: [1\nmode: : :", r"bad\.yaml: not valid YAML"),
    ("list.json", "[1, 2]", r"list\.json: expected an object with 'features'"),
    ("ablate.json", '{"features": [1], "mode": "ablate", "values": 3}', r"ablate\.json: .*takes no value"),
])
def test_bad_spec_files_name_the_file(tmp_path, name, text, match):
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(ValueError, match=match):
        SteeringSpec.load(p)


def test_binary_spec_file_names_the_file(tmp_path):
    p = tmp_path / "blob.json"
    p.write_bytes(os.urandom(64) + b"\xff\xfe")
    with pytest.raises(ValueError, match=r"blob\.json: not"):
        SteeringSpec.load(p)


def test_same_model_compares_directories_by_their_real_path(tmp_path, monkeypatch):
    (tmp_path / "m").mkdir()
    monkeypatch.chdir(tmp_path)
    assert same_model("m", str(tmp_path / "m")) and same_model("org/x", "org/x")
    assert not same_model("org/x", "org/y") and not same_model("m", "org/m")


def test_pickle_only_sae_directory_says_what_it_found_and_expects(tmp_path):
    d = tmp_path / "sae"
    d.mkdir()
    (d / "cfg.json").write_text(json.dumps({"architecture": "jumprelu", "d_in": 4, "d_sae": 8}))
    (d / "sae_weights.pt").write_bytes(b"not really a pickle")
    with pytest.raises(FileNotFoundError, match=r"holds cfg\.json, sae_weights\.pt; expected sae-lens's format, cfg\.json "
                                                r"and sae_weights\.safetensors; sae_weights\.pt is a pickled checkpoint"):
        resolve_sae(str(d))
