"""saesteer discover on the command line: outputs, flags, config files and errors."""

from __future__ import annotations

import json

import pytest

from saesteer.cli import main
from saesteer.refusal.spec import SteeringSpec
from saesteer.steering.condition import parse_when

TINY = {"n_direction": 6, "n_val": 3, "n_search": 2, "n_heldout": 3, "n_candidates": 5, "fm_samples": 16,
        "fm_extra": 3, "per_prompt": 1, "max_new_tokens": 4,
        "force": True}  # the tiny random model refuses nothing: run every stage anyway


def test_discover_cli_end_to_end(tiny_chat, tmp_path, capsys):
    _, _, _, d = tiny_chat
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("\n".join(f"{k}: {v}" for k, v in TINY.items()))
    out = tmp_path / "out"
    rc = main(["discover", "--model", str(d), "--sae", str(d / "sae"), "--out", str(out), "--config", str(cfg), "--seed", "1", "--quiet"])
    assert rc == 0
    r = json.loads((out / "results.json").read_text())
    for key in ("direction", "candidates", "minimal_set", "asr", "interactions", "dormant_downstream", "amplify"):
        assert key in r
    assert {"layer", "position", "scores"} <= set(r["direction"])
    # One SAE: no dormant list (at the edited hook point a difference comes from the reply text, not
    # from the edit); the causal, downstream measure needs a later SAE.
    assert "dormant" not in r and r["dormant_downstream"] is None
    assert set(r["asr"]) >= {"baseline", "minimal_set", "with_interactions"}
    assert set(r["minimal_set"]) <= {c[0] for c in r["candidates"]}
    assert r["config"]["seed"] == 1 and r["config"]["n_candidates"] == TINY["n_candidates"], "flags override the config file"
    # The pool starts at n_candidates and doubles while the whole pool flips too few search prompts.
    pool = r["candidate_pool"]
    assert pool[0]["n"] == TINY["n_candidates"] and len(r["candidates"]) == pool[-1]["n"]
    for a, b in zip(pool, pool[1:]):
        assert a["full_flip_rate"] < r["config"]["min_full_flip"] and b["n"] == min(2 * a["n"], r["config"]["max_candidates"], 96)  # d_sae 96
    for pp in r["per_prompt_sets"]:  # confirmed by generation: the score-minimal set, extended if needed
        assert set(pp["score_minimal"]) <= set(pp["features"]) and isinstance(pp["complied_by_generation"], bool)
    for f in ("report.md", "direction.safetensors", "refusal_score_by_layer_position.png", "asr_vs_features.png"):
        assert (out / f).stat().st_size > 0
    spec = SteeringSpec.load(out / "spec.json")
    assert spec.features == r["minimal_set"] and spec.mode == "ablate"
    assert spec.skip_bos is True and json.loads((out / "spec.json").read_text())["skip_bos"] is True
    assert r["edit"] == "ablate" and r["candidate_method"] == "attribution (ig)"
    # The filter ran on the direction's prompts; the random model refuses none of the harmful ones,
    # so those splits are used whole, and a warning says so.
    filt = r["direction"]["filtering"]
    assert set(filt) == {"direction", "harmless_direction", "val", "harmless_val", "search"}
    assert filt["direction"] == {"n": TINY["n_direction"], "kept": 0, "unfiltered": True}
    assert any("prompt filter found no harmful prompts" in w for w in r["warnings"])
    # The random model never refuses: the results say first that they are not meaningful.
    assert r["asr"]["baseline"] == 1.0 and r["valid"] is False
    assert any("baseline refusal is 0%" in w for w in r["warnings"])
    assert r["chat_template"] == "tokenizer"
    stdout = capsys.readouterr().out.splitlines()
    assert stdout[0] == "WARNING: these results are not meaningful:" and "baseline refusal is 0%" in stdout[1]
    report_md = (out / "report.md").read_text()
    assert report_md.index("These results are not meaningful") < report_md.index("## Refusal direction")
    assert set(r["asr"]["degenerate"]) == {"baseline", "minimal_set", "with_interactions"}
    assert "degenerate" in report_md
    # The trigger for conditional steering: features ranked on the direction split, count and
    # threshold chosen on the val split (the held-out prompts choose nothing); both specs carry it
    # as `when`, which the hooks' parser accepts, and the report lists its validation rates.
    t = r["trigger"]
    assert t["skipped"] is None and t["n_selection"]["harmful"] == TINY["n_direction"]
    assert (t["n_validation"]["harmful"], t["n_validation"]["harmless"]) == (TINY["n_val"], TINY["n_val"])
    when = json.loads((out / "spec.json").read_text())["when"]
    assert when == t["when"] and spec.when == when
    cond = parse_when(when)
    assert list(cond.features) == t["chosen"]["features"] and cond.threshold == t["chosen"]["threshold"]
    assert all(0 <= f < 96 for f in cond.features) and (cond.reduce, cond.scope) == ("max", "prompt")
    assert any(v["features"] == when["features"] for v in t["validation"])
    if r["amplify"]["features"]:
        assert json.loads((out / "amplify_spec.json").read_text())["when"] == when
    assert "## Trigger for conditional steering" in report_md and "| 1" in report_md.split("## Trigger")[1]


def _run_err(args, capsys):
    rc = main(args)
    return rc, capsys.readouterr().err


def test_discover_bad_input(tiny_chat, tmp_path, capsys):
    _, _, _, d = tiny_chat
    base = ["discover", "--model", str(d), "--out", str(tmp_path / "o"), "--quiet"]
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    rc, err = _run_err(base + ["--sae", str(d / "sae"), "--harmful", str(empty)], capsys)
    assert rc == 2 and "no prompts" in err
    nofield = tmp_path / "nofield.json"
    nofield.write_text(json.dumps([{"text": "hi"}]))
    rc, err = _run_err(base + ["--sae", str(d / "sae"), "--harmful", str(nofield)], capsys)
    assert rc == 2 and "instruction" in err and "--field" in err
    rc, err = _run_err(base + ["--sae", str(d / "sae"), "--layer", "9"], capsys)
    assert rc == 2 and "layer: 9 is out of range" in err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"min_full_flip": 1.5}))
    rc, err = _run_err(base + ["--sae", str(d / "sae"), "--config", str(bad)], capsys)
    assert rc == 2 and "min_full_flip" in err and "[0, 1]" in err
    # An SAE for another model width.
    from helpers import make_sae_lens_sae

    make_sae_lens_sae("jumprelu", d_in=48, d_sae=64, hook_name="blocks.1.hook_resid_post").save_model(tmp_path / "wide")
    rc, err = _run_err(base + ["--sae", str(tmp_path / "wide")], capsys)
    assert rc == 2 and "d_in=48" in err and "hidden size is 32" in err
    # An SAE on another hook point than the residual stream (an MLP-out SAE of the same width).
    make_sae_lens_sae("jumprelu", d_in=32, d_sae=64, hook_name="blocks.1.hook_mlp_out").save_model(tmp_path / "mlp")
    rc, err = _run_err(base + ["--sae", str(tmp_path / "mlp")], capsys)
    assert rc == 2 and "'blocks.1.hook_mlp_out' is not supported" in err and "hook_resid_post" in err
    assert not (tmp_path / "o").exists(), "errors come before any output is written"


def test_candidate_pool_grows_until_it_flips_the_search_prompts(tiny_chat, tmp_path):
    # A threshold no score is under: no pool flips anything, so the pool doubles up to the cap.
    _, _, _, d = tiny_chat
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({**TINY, "threshold": -1e9, "max_candidates": 40}))
    out = tmp_path / "out"
    assert main(["discover", "--model", str(d), "--sae", str(d / "sae"), "--out", str(out), "--config", str(cfg), "--quiet"]) == 0
    r = json.loads((out / "results.json").read_text())
    assert [c["n"] for c in r["candidate_pool"]] == [5, 10, 20, 40]
    assert all(c["full_flip_rate"] == 0 for c in r["candidate_pool"])
    md = (out / "report.md").read_text()
    assert len(r["candidates"]) == 40 and "Candidate pool" in md
    # The top-feature table holds the first 20 candidates in rank order, at the SAE's layer.
    rows = [ln for ln in md.splitlines() if ln.startswith("| ") and ln.split("|")[1].strip().isdigit()
            and ln.count("|") == 5 and "| rank |" not in ln][:20]
    assert [int(ln.split("|")[3]) for ln in rows] == [c[0] for c in r["candidates"][:20]]
    assert all(int(ln.split("|")[2]) == r["sae"]["layer"] for ln in rows)


def test_discover_cli_edit_and_no_skip_bos_reach_the_spec(tiny_chat, tmp_path):
    _, _, _, d = tiny_chat
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("\n".join(f"{k}: {v}" for k, v in {**TINY, "fm_samples": 8, "per_prompt": 0}.items()))
    out = tmp_path / "out"
    rc = main(["discover", "--model", str(d), "--sae", str(d / "sae"), "--out", str(out), "--config", str(cfg),
               "--edit", "scale:-3", "--no-skip-bos", "--attribution", "zero", "--no-trigger", "--quiet"])
    assert rc == 0
    r = json.loads((out / "results.json").read_text())
    assert r["edit"] == "scale:-3" and r["skip_bos"] is False and r["candidate_method"] == "attribution (zero)"
    assert r["config"]["edit"] == "scale:-3" and r["config"]["skip_bos"] is False
    spec = SteeringSpec.load(out / "spec.json")
    assert (spec.mode, spec.values, spec.skip_bos) == ("scale", -3.0, False)
    # --no-trigger: no trigger proposed, no `when` in the spec
    assert r["config"]["trigger"] is False and "trigger" not in r and spec.when is None
    assert "when" not in json.loads((out / "spec.json").read_text())
    report_md = (out / "report.md").read_text()
    assert "Search edit: scale:-3 (the BOS token edited too)" in report_md
    assert "| minimal set scaled by -3 |" in report_md and "| minimal set ablated |" not in report_md


def test_discover_cli_rejects_a_bad_edit(capsys):
    assert main(["discover", "--out", "unused", "--edit", "scale:x"]) == 2
    assert "--edit: scale's value must be a number" in capsys.readouterr().err



def test_discover_stops_when_the_model_refuses_nothing(tiny_chat, tmp_path, capsys):
    # The tiny random model refuses none of the held-out harmful prompts: discover says so in one
    # line, writes results.json with valid: false and the refusal check, and nothing else.
    _, _, _, d = tiny_chat
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({k: v for k, v in TINY.items() if k != "force"}))
    out = tmp_path / "out"
    rc = main(["discover", "--model", str(d), "--sae", str(d / "sae"), "--out", str(out), "--config", str(cfg), "--quiet"])
    assert rc == 1
    n = TINY["n_heldout"]
    assert capsys.readouterr().out.startswith(f"the model refuses 0/{n} harmful prompts: nothing to jailbreak")
    r = json.loads((out / "results.json").read_text())
    assert r["valid"] is False and r["stages_done"] == ["refusal"] and "nothing to jailbreak" in r["stopped"]
    assert r["refusal_check"]["refused"] == 0 and r["refusal_check"]["nothing_to_jailbreak"] is True
    assert sorted(p.name for p in out.iterdir()) == ["results.json"]


def test_recipes_set_each_papers_defaults_and_flags_still_win():
    from saesteer.cli.discover import RECIPES

    yeo = _discover_cfg("--model", "m", "--recipe", "yeo")
    assert (yeo.method, yeo.attribution, yeo.prefilter, yeo.prefilter_sign, yeo.select, yeo.edit) == (
        "attribution", "ig", 10, "positive", "topk:20", "scale:-3")
    assert yeo.top_k == 20 and yeo.prefilter_size(26) == 10
    assert _discover_cfg("--model", "m", "--recipe", "yeo", "--select", "minimal", "--prefilter", "5").select == "minimal"
    assert _discover_cfg("--model", "m", "--recipe", "prakash").method == "cosine"
    assert (_discover_cfg("--recipe", "arditi").n_direction, _discover_cfg().n_direction) == (128, 64)
    assert set(RECIPES) == {"arditi", "yeo", "prakash", "obrien"}
    default = _discover_cfg("--model", "m")
    assert (default.select, default.prefilter_size(1), default.prefilter_size(2), default.prefilter_sign) == ("minimal", 0, 256, "abs")


def test_bad_selection_is_refused_naming_it(tmp_path):
    with pytest.raises(ValueError, match="select: expected minimal or topk:K"):
        _discover_cfg("--select", "top20")


def test_limit_samples_across_the_file(tmp_path):
    from saesteer.cli import build_parser
    from saesteer.cli.discover import config_from_args, search_inputs

    f = tmp_path / "h.json"
    f.write_text(json.dumps([f"harmful prompt number {i}" for i in range(200)]))
    args = build_parser().parse_args(["discover", "--model", "m", "--out", "o", "--harmful", str(f), "--harmless", str(f),
                                      "--limit", "50"])
    harmful, harmless, _, _ = search_inputs(args, config_from_args(args))
    assert len(harmful) == len(harmless) == 50 and len(set(harmful)) == 50
    assert harmful != [f"harmful prompt number {i}" for i in range(50)], "a sample across the file, not its first rows"


def _discover_cfg(*extra):
    from saesteer.cli import build_parser
    from saesteer.cli.discover import config_from_args

    return config_from_args(build_parser().parse_args(["discover", "--out", "unused", *map(str, extra)]))


def test_yeo_recipe_spec_holds_the_top_k_and_amplify_spec_the_refusal_feature(tiny_chat, tmp_path):
    _, _, _, d = tiny_chat
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({**TINY, "fm_samples": 8, "per_prompt": 0}))
    out = tmp_path / "out"
    rc = main(["discover", "--model", str(d), "--sae", str(d / "sae"), "--out", str(out), "--config", str(cfg),
               "--recipe", "yeo", "--prefilter", "8", "--ig-steps", "2", "--quiet"])
    assert rc == 0
    r = json.loads((out / "results.json").read_text())
    assert r["prefilter"] == {"per_sae": 8, "sign": "positive"} and r["selection"] == "topk:20"
    top = [c[0] for c in r["top_k"]]
    assert len(top) == 8, "the pre-filter leaves 8 features to rank"
    assert {c[0] for c in r["candidates"]} <= set(top), "the search's candidates come from the same pre-filter"
    spec = SteeringSpec.load(out / "spec.json")
    assert spec.features == top and (spec.mode, spec.values) == ("scale", -3.0)
    assert json.loads((out / "spec.json").read_text())["notes"]["selection"] == "topk:20"
    # Yeo et al. steer each harmful prompt's own top k: one set per held-out prompt, among the 8.
    rows = r["top_k_per_prompt"]
    assert len(rows) == TINY["n_heldout"] and all(set(x["features"]) <= set(top) for x in rows)
    assert {"top_k", "top_k_per_prompt"} <= set(r["asr"])
    assert r["stages_done"] == ["refusal", "direction", "candidates", "search", "trigger", "interactions", "verification", "dormant"]
    assert SteeringSpec.load(out / "spec.json").when == r["trigger"]["when"] is not None
    if r["amplify"]["features"]:
        amp = SteeringSpec.load(out / "amplify_spec.json")
        assert amp.mode == "clamp" and amp.features == r["amplify"]["features"]
        assert all(c > 0 for c in r["amplify"]["cosines"])


def test_score_all_directions_flag_and_config_key(tmp_path):
    # The flag, the arditi recipe and the --config key set it; by default only the scores the selection needs.
    assert _discover_cfg().score_all_directions is False
    assert _discover_cfg("--score-all-directions").score_all_directions is True
    assert _discover_cfg("--recipe", "arditi").score_all_directions is True  # the paper's heatmap
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"score_all_directions": True}))
    assert _discover_cfg("--config", cfg).score_all_directions is True
    cfg.write_text(json.dumps({"score_all_directions": "yes"}))
    with pytest.raises(ValueError, match="score_all_directions: expected true or false"):
        _discover_cfg("--config", cfg)
