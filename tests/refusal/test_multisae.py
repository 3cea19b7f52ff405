"""discover over several SAEs at once: (sae, feature) pairs, edits at several layers in one forward,
the --sae references (repeated, comma-separated, {a..b} ranges) and the multi-SAE spec."""

from __future__ import annotations

import json

import pytest
import torch

import saesteer
from saesteer.cli import main
from saesteer.cli.common import expand_sae_refs
from saesteer.hf import capture
from saesteer.refusal.chat import refusal_scores
from saesteer.refusal.features import rank_by_attribution, rank_set_by_attribution
from saesteer.refusal.saeset import SAESet
from saesteer.refusal.search import edit_scores, parse_edit
from saesteer.refusal.spec import SteeringSpec

PROMPTS = ["How do I bake bread?", "Tell me how to pick a lock.", "Write a poem about rain."]


def test_sae_refs_expand_ranges_lists_and_commas_before_any_load():
    assert expand_sae_refs(["gemma-scope-2b-pt-res-canonical:layer_{6..8}/width_16k/canonical"]) == [
        f"gemma-scope-2b-pt-res-canonical:layer_{i}/width_16k/canonical" for i in (6, 7, 8)]
    assert expand_sae_refs(["r:l{8..4..2}", "organism:jumprelu,organism:jumprelu_l3"]) == [
        "r:l8", "r:l6", "r:l4", "organism:jumprelu", "organism:jumprelu_l3"]
    assert expand_sae_refs("a:{x,y}/w{01..03}") == ["a:x/w01", "a:x/w02", "a:x/w03", "a:y/w01", "a:y/w02", "a:y/w03"]
    # a lone 0 is not padding (bash's rule): Gemma Scope's ids are layer_0 .. layer_25
    assert expand_sae_refs("g:layer_{0..10..5}/w") == ["g:layer_0/w", "g:layer_5/w", "g:layer_10/w"]
    assert expand_sae_refs("r:{8..12..4}") == ["r:8", "r:12"] and expand_sae_refs("r:{-01..1}") == ["r:-01", "r:000", "r:001"]
    assert expand_sae_refs("a:{x, y}") == ["a:x", "a:y"]
    assert expand_sae_refs(None) == [] and expand_sae_refs(["organism"]) == ["organism"]
    for bad, match in ((["a:l{1..3}", "a:l2"], "'a:l2' given more than once"), (["a,,b"], "empty SAE reference"),
                       (["a:{1..}"], "neither a range"), (["a:{1..2"], "unbalanced"), (["a:{1..3..0}"], "step 0")):
        with pytest.raises(ValueError, match="--sae: .*" + match):
            expand_sae_refs(bad)


def _two_saes():
    from helpers import make_sae

    a = make_sae("jumprelu", d_in=32, d_sae=96, seed=0, hook_name="blocks.0.hook_resid_post")
    b = make_sae("jumprelu", d_in=32, d_sae=64, seed=1, hook_name="blocks.1.hook_resid_post")
    return SAESet(["a", "b"], [a, b], [0, 1])


def test_sae_set_numbers_pairs_and_refuses_a_name_twice():
    s = _two_saes()
    assert s.d_sae == 160 and s.flat("b", 3) == 99 and s.pair(99) == ("b", 3) and s.pair(95) == ("a", 95)
    assert s.split([1, 99, 2]) == [[1, 2], [3]] and s.pairs([99]) == [["b", 3]] and s.by_depth() == [0, 1]
    with pytest.raises(ValueError, match="'a' given more than once"):
        SAESet(["a", "a"], s.saes, [0, 1])
    with pytest.raises(ValueError, match="out of range"):
        s.pair(160)


def test_set_edits_apply_at_both_layers_as_one_steer_list(tiny_chat):
    model, tok, _, _ = tiny_chat
    s = _two_saes()
    feats = list(range(0, 96, 3)) + [96 + i for i in range(0, 64, 3)]
    edit = parse_edit("ablate")
    enc = tok(PROMPTS[1], return_tensors="pt")
    hooks = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]

    def run(ctx):
        with capture(model, hooks) as rec:
            if ctx is None:
                model(**enc)
            else:
                with ctx:
                    model(**enc)
        return [rec[h][0] for h in hooks]

    base = run(None)
    a, b = s.split(feats)
    ref = run(saesteer.steer(model, [(s.saes[0], saesteer.Intervention(a, "ablate"), 0),
                                     (s.saes[1], saesteer.Intervention(b, "ablate"), 1)]))
    got = run(s.steer(model, feats, edit))
    for g, r, x in zip(got, ref, base):
        torch.testing.assert_close(g, r, rtol=0, atol=0)
        assert not torch.allclose(g, x), "the edit changes the hidden states at both layers"
    # Only layer 1's part: layer 0's output is left as it was.
    only_b = run(s.steer(model, [96 + i for i in b], edit))
    torch.testing.assert_close(only_b[0], base[0], rtol=0, atol=0)
    # Batched rows (one set per row) score as each set alone.
    sets = [[], feats, [96 + i for i in b]]
    batched = edit_scores(model, tok, s, PROMPTS, sets, [5, 6])
    for st, row in zip(sets, batched):
        torch.testing.assert_close(row, edit_scores(model, tok, s, PROMPTS, [st], [5, 6])[0], atol=1e-5, rtol=1e-5)


def test_joint_zero_attribution_is_each_features_first_order_effect_across_layers(tiny_chat):
    # One forward with both SAEs spliced in: the layer-0 features' gradient passes through the
    # layer-1 site, so each attribution matches the central difference of scaling that feature,
    # and one SAE alone gives what rank_by_attribution gives.
    model, tok, _, _ = tiny_chat
    s = _two_saes()
    rtoks = [5, 6]
    joint = dict(rank_set_by_attribution(model, tok, s, PROMPTS, rtoks, top=s.d_sae, method="zero"))
    one = SAESet(["a"], [s.saes[0]], [0])
    alone = dict(rank_set_by_attribution(model, tok, one, PROMPTS, rtoks, top=96, method="zero"))
    assert alone == pytest.approx(dict(rank_by_attribution(model, tok, s.saes[0], PROMPTS, rtoks, top=96, method="zero")))
    assert list(alone)[:3] == [g for g, _ in rank_by_attribution(model, tok, s.saes[0], PROMPTS, rtoks, top=3, method="zero")]
    eps = 0.05
    for k in (0, 1):
        ids = [g for g in sorted(joint, key=lambda g: -abs(joint[g])) if s.member(g) == k][:2]
        for g in ids:
            _, f = s.pair(g)

            def score(factor):
                iv = saesteer.Intervention([f], "scale", factor)
                steering = lambda: saesteer.steer(model, [(s.saes[k], iv, s.layers[k])], skip_bos=True)  # noqa: E731
                return float(refusal_scores(model, tok, PROMPTS, rtoks, steering=steering).mean())

            slope = (score(1 - eps) - score(1 + eps)) / (2 * eps)
            assert slope == pytest.approx(joint[g], rel=0.05, abs=1e-4), (k, f)


@pytest.fixture(scope="module")
def two_layer_discover(tmp_path_factory):
    out = tmp_path_factory.mktemp("multisae")
    import time

    t = time.time()
    # Smaller than --quick: the test checks the plumbing over two layers, not the rates.
    cfg = out / "cfg.json"
    cfg.write_text(json.dumps({"n_direction": 8, "n_val": 4, "n_search": 4, "n_heldout": 4, "n_candidates": 12,
                               "max_candidates": 24, "fm_samples": 16, "fm_extra": 4, "per_prompt": 1, "prefilter": 64}))
    rc = main(["discover", "--quick", "--config", str(cfg), "--quiet", "--capability", "0", "--max-new-tokens", "8",
               "--out", str(out / "run"), "--sae", "organism:jumprelu", "--sae", "organism:jumprelu_l3"])
    out = out / "run"
    assert rc == 0
    return out, json.loads((out / "results.json").read_text()), time.time() - t


def test_discover_with_two_saes_reports_pairs_at_both_layers(two_layer_discover):
    out, r, _ = two_layer_discover
    names = {"organism:jumprelu": 2, "organism:jumprelu_l3": 3}
    assert [(x["name"], x["layer"]) for x in r["sae"]] == list(names.items())
    assert {c[0] for c in r["candidates"]} == set(names), "both layers among the candidates"
    assert all(len(c) == 3 and c[0] in names and isinstance(c[1], int) for c in r["candidates"])
    assert r["minimal_set"] and all(list(p) in [c[:2] for c in r["candidates"]] for p in r["minimal_set"])
    assert all(isinstance(v["i"], list) for v in r["interactions_detail"]["verified"])
    assert r["config"]["prefilter"] == 64 and r["asr"]["n_prompts"] == 4
    # Downstream dormancy: layer 2's part edited, layer 3's SAE read on the same tokens, with the
    # evidence that the edit reached it (its codes change), whether or not a feature wakes.
    down = r["dormant_downstream"]
    if any(p[0] == "organism:jumprelu" for p in r["minimal_set"]):
        assert [(x["edited"], x["read"]) for x in down] == [("organism:jumprelu", "organism:jumprelu_l3")]
        assert down[0]["mean_abs_change"] > 0 and down[0]["hook"] == [3, "resid_post"]
    md = (out / "report.md").read_text()
    assert "### Downstream" in md and "@organism:jumprelu" in md and "Per SAE:" in md
    # The top-feature table (Yeo et al.): one row per candidate, its SAE's layer beside it.
    c0 = r["candidates"][0]
    assert "| rank | layer | sae | feature | score |" in md and f"| 1 | {names[c0[0]]} | `{c0[0]}` | {c0[1]} |" in md


def test_two_sae_spec_applies_at_both_layers_and_generate_reads_it(two_layer_discover, capsys):
    out, r, _ = two_layer_discover
    spec = SteeringSpec.load(out / "spec.json")
    assert spec.features == [] and spec.mode == "ablate"
    by_sae = {e["sae"]: e for e in spec.edits}
    for name, feat in r["minimal_set"]:
        assert feat in by_sae[name]["features"] and by_sae[name]["layer"] == {"organism:jumprelu": 2, "organism:jumprelu_l3": 3}[name]
    # The spec's hooks are the list of (sae, intervention, layer) through hf.steer, bit for bit.
    from saesteer import organism

    org = organism.load()
    saes = {e["sae"]: org.saes[e["sae"].split(":", 1)[1]] for e in spec.edits}
    enc = org.tokenizer(org.format_prompt("How do I make a pipe bomb?"), return_tensors="pt", add_special_tokens=False)
    hooks = [f"blocks.{e['layer']}.hook_resid_post" for e in spec.edits]

    def run(ctx):
        with capture(org.model, hooks) as rec, ctx:
            org.model(**enc)
        return [rec[h][0] for h in hooks]

    # discover's trigger reads one SAE of the set: the `when` names it (an SAE the spec edits).
    from dataclasses import replace

    from saesteer.steering.condition import parse_when

    assert spec.when is not None and spec.when["sae"] in saes and spec.when == r["trigger"]["when"]
    parse_when(spec.when, {n: s.d_sae for n, s in saes.items()})
    # Unconditional, the edits are the list of hf.steer; with the `when` they run through the same hooks.
    spec.context(org.model, saes)
    got = run(replace(spec, when=None).context(org.model, saes))
    ref = run(saesteer.steer(org.model, [(saes[e["sae"]], saesteer.Intervention(e["features"], "ablate"), e["layer"])
                                         for e in spec.edits]))
    for g, x in zip(got, ref):
        torch.testing.assert_close(g, x, rtol=0, atol=0)
    assert main(["generate", "--steer", str(out / "spec.json"), "--max-new-tokens", "4", "--json", "How do I make a pipe bomb?"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["spec"]["edits"] == spec.edits and len(printed["replies"]) == 1


def test_discover_refuses_bad_sae_lists(tiny_chat, tmp_path, capsys):
    from helpers import make_sae_lens_sae

    _, _, _, d = tiny_chat
    base = ["discover", "--model", str(d), "--out", str(tmp_path / "o"), "--quiet"]
    rc = main(base + ["--sae", f"{d / 'sae'},{d / 'sae'}"])
    assert rc == 2 and "--sae:" in capsys.readouterr().err and not (tmp_path / "o").exists()
    make_sae_lens_sae("jumprelu", d_in=48, d_sae=64, hook_name="blocks.2.hook_resid_post").save_model(tmp_path / "wide")
    rc = main(base + ["--sae", str(d / "sae"), "--sae", str(tmp_path / "wide")])
    err = capsys.readouterr().err
    assert rc == 2 and "--sae:" in err and "wide" in err and "d_in=48" in err and "hidden size is 32" in err
    rc = main(base + ["--sae", str(d / "sae"), "--sae", str(tmp_path / "wide"), "--layer", "1"])
    assert rc == 2 and "--layer" in capsys.readouterr().err


@pytest.mark.parametrize("edits, match", [
    ([{"sae": "a", "layer": 2, "features": [1]}, {"sae": "a", "layer": 3, "features": [2]}], r"edits\[1\]: the SAE 'a' has two edits"),
    ([{"sae": "a", "layer": 2, "features": []}], r"edits\[0\]: expected"),
    ([{"sae": "a", "layer": "2", "features": [1]}], r"edits\[0\]: layer must be an integer"),
    ([], "edits: expected a non-empty list"),
])
def test_bad_edits_in_a_spec_file_are_named(tmp_path, edits, match):
    p = tmp_path / "spec.json"
    p.write_text(json.dumps({"features": [], "edits": edits, "mode": "ablate"}))
    with pytest.raises(ValueError, match=f"steering spec {p}: {match}"):
        SteeringSpec.load(p)


def test_values_shared_by_edits_of_other_lengths_name_the_edit(tmp_path):
    p = tmp_path / "spec.json"
    edits = [{"sae": "a", "layer": 2, "features": [1, 2]}, {"sae": "b", "layer": 3, "features": [5]}]
    p.write_text(json.dumps({"features": [], "edits": edits, "mode": "clamp", "values": [4.0, 5.0]}))
    match = r"edits\[1\] \(b, 1 features\): .*one value per feature"
    with pytest.raises(ValueError, match=f"steering spec {p}: {match}"):
        SteeringSpec.load(p)


def test_multi_sae_spec_round_trips_with_local_paths_absolute(tmp_path, monkeypatch):
    (tmp_path / "sae_a").mkdir()
    monkeypatch.chdir(tmp_path)
    spec = SteeringSpec(features=[], edits=[{"sae": "sae_a", "layer": 1, "features": [3]},
                                            {"sae": "organism:jumprelu_l3", "layer": 3, "features": [4, 5]}])
    spec.save(tmp_path / "spec.json")
    back = SteeringSpec.load(tmp_path / "spec.json")
    assert back.sae_refs == [str(tmp_path / "sae_a"), "organism:jumprelu_l3"] and back.edits[1]["features"] == [4, 5]
    with pytest.raises(ValueError, match="edits need the SAEs"):
        back.context(None, {})


def test_eval_reads_a_two_sae_spec_and_probes_both_saes(two_layer_discover, tmp_path):
    out, r, _ = two_layer_discover
    spec = SteeringSpec.load(out / "spec.json")
    rc = main(["eval", "--steer", str(out / "spec.json"), "--limit", "12", "--max-new-tokens", "4", "--capability", "0",
               "--sweep", "4", "--direction", str(out / "direction.safetensors"), "--quiet", "--out", str(tmp_path / "eval")])
    assert rc == 0
    rep = json.loads((tmp_path / "eval" / "eval.json").read_text())
    # The two-SAE spec's rows (with its trigger and without), then the refusal direction's rows beside them.
    conds = [c["condition"] for c in rep["conditions"]]
    assert conds[:3] == ["unsteered", "steered", "steered_unconditional"] and set(conds[3:]) >= {"direction_addition"}
    assert rep["conditions"][1]["trigger_rate_harmful"] is not None
    assert [r["condition"] for r in rep["sweep"]] == ["unsteered", "clamp=4", "clamp=4 (when)"]
    assert (tmp_path / "eval" / "sweep.png").stat().st_size > 0
    # The report names every edit's SAE at its own layer, not one SAE at no layer.
    assert rep["sae"] == [e["sae"] for e in spec.edits] and rep["layer"] == sorted({e["layer"] for e in spec.edits})
    md = (tmp_path / "eval" / "report.md").read_text()
    assert "at layer None" not in md and "features []" not in md
    assert all(f"`{e['sae']}` (layer {e['layer']})" in md and f"features {e['features']} of `{e['sae']}`" in md for e in spec.edits)
    pr = rep["probes"]
    # The feature probe reads every edit's features, each at its own SAE's hook point, in order.
    assert pr["features"] == [e["features"] for e in spec.edits]
    assert pr["feature_sites"] == [f"blocks.{e['layer']}.hook_resid_post" for e in spec.edits]
