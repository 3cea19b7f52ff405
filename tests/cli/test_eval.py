"""``saesteer eval``'s verdicts and inputs: ``valid`` tells the truth (nothing to jailbreak), the
prompts that chose a discovered spec are not evaluated on, the probe reads a given feature list,
harmful prompts can be jailbreak-wrapped, and bad flags fail before a model loads."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import make_sae_lens_sae
from helpers import run_cli as _run
from saesteer.refusal.data import shipped_prompts
from saesteer.refusal.spec import SteeringSpec


def _base(d, out, *extra):
    return ["eval", "--model", d, "--sae", d / "sae", "--max-new-tokens", "3", "--device", "cpu", "--quiet", "--out", out, *extra]


def _discovered(tmp_path, d, splits: dict, candidates=None) -> str:
    """A spec.json with discover's results.json beside it."""
    run = tmp_path / "run"
    run.mkdir()
    SteeringSpec(features=[3, 7], sae=str(d / "sae"), model=str(d)).save(run / "spec.json")
    (run / "results.json").write_text(json.dumps({"splits": splits, "candidates": candidates or [[3, 0.9], [7, 0.5]]}))
    return str(run / "spec.json")


def test_a_model_that_refuses_nothing_has_nothing_to_jailbreak(tiny_chat, capsys, tmp_path):
    _, _, _, d = tiny_chat
    rc, _, err = _run(capsys, *_base(d, tmp_path / "o", "--features", "3", "--limit", "4", "--no-probes"))
    assert rc == 0, err
    res = json.loads((tmp_path / "o" / "eval.json").read_text())
    assert res["conditions"][0]["harmful_refusal"] == 0.0
    assert res["valid"] is False and "refuses 0/4 harmful prompts unsteered" in res["warnings"][0]
    assert "nothing to jailbreak" in err and err.index("WARNING") < err.index("wrote")
    md = (tmp_path / "o" / "report.md").read_text()
    # One warnings section, first, without a second heading inside it.
    assert md.index("## These results are not meaningful\n\n- the model refuses 0/4") < md.index("## Setup")
    assert md.count("## These results are not meaningful") == 1 and "Warnings" not in md
    # Amplifying refusal (clamping features up) jailbreaks nothing: the rule does not apply.
    rc, _, err = _run(capsys, *_base(d, tmp_path / "up", "--features", "3", "--mode", "clamp", "--value", "4", "--limit", "4",
                                     "--no-probes"))
    assert rc == 0, err
    assert json.loads((tmp_path / "up" / "eval.json").read_text())["valid"] is True


@pytest.mark.parametrize("sweep", ["0,nan", "inf", "1,-inf"])
def test_a_sweep_with_a_value_that_is_not_finite_is_refused_at_once(tiny_chat, capsys, tmp_path, sweep):
    _, _, _, d = tiny_chat
    rc, _, err = _run(capsys, *_base(d, tmp_path / "o", "--features", "3", "--mode", "clamp", "--sweep", sweep))
    assert rc == 2 and err.strip().startswith("saesteer eval: error: --sweep: expected finite numbers")
    assert not (tmp_path / "o").exists()


def test_prompts_that_chose_the_spec_are_refused_or_warned_about(tiny_chat, capsys, tmp_path):
    _, _, _, d = tiny_chat
    harmful = shipped_prompts("harmful")
    spec = _discovered(tmp_path, d, {"held": 2, "direction": harmful[:3], "val": [], "search": harmful[3:5],
                                     "harmless_direction": ["Name a fruit."], "harmless_val": []})
    args = ["--steer", spec, "--limit", "4", "--no-probes"]
    rc, _, err = _run(capsys, *_base(d, tmp_path / "o", *args))
    assert rc == 2 and "--harmful: 4 of the 4 prompts chose " in err and "direction split: 3, search split: 1" in err
    assert "--allow-overlap" in err and not (tmp_path / "o").exists()
    rc, _, err = _run(capsys, *_base(d, tmp_path / "o", *args, "--allow-overlap"))
    assert rc == 0, err
    res = json.loads((tmp_path / "o" / "eval.json").read_text())
    assert any("not held out" in w for w in res["warnings"]) and err.count("not held out") == 1
    # Held-out prompts pass without a warning about overlap.
    held = tmp_path / "held.json"
    held.write_text(json.dumps(harmful[10:14]))
    rc, _, err = _run(capsys, *_base(d, tmp_path / "h", *args, "--harmful", held))
    assert rc == 0, err
    assert not any("chose " in w for w in json.loads((tmp_path / "h" / "eval.json").read_text())["warnings"])


def test_splits_recorded_as_counts_only_are_said_to_be_unchecked(tiny_chat, capsys, tmp_path):
    _, _, _, d = tiny_chat
    spec = _discovered(tmp_path, d, {"held": 8, "direction": 16, "val": 8, "search": 6})
    rc, _, err = _run(capsys, *_base(d, tmp_path / "o", "--steer", spec, "--limit", "3", "--no-probes"))
    assert rc == 0, err
    assert any("counts only" in w for w in json.loads((tmp_path / "o" / "eval.json").read_text())["warnings"])


def test_the_feature_probe_reads_the_top_candidates_and_wrapped_prompts(tiny_chat, capsys, tmp_path):
    _, _, _, d = tiny_chat
    spec = _discovered(tmp_path, d, {}, candidates=[[40, 2.0], [5, 1.0], [3, 0.5], [9, 0.1]])
    held = tmp_path / "held.json"
    held.write_text(json.dumps(shipped_prompts("harmful")[:6]))
    rc, _, err = _run(capsys, *_base(d, tmp_path / "o", "--steer", spec, "--harmful", held, "--limit", "6",
                                     "--probe-features", "top:3", "--templates", "roleplay", "--wrap", "roleplay,story"))
    assert rc == 0, err
    res = json.loads((tmp_path / "o" / "eval.json").read_text())
    assert res["probes"]["features"] == [40, 5, 3] and res["spec"]["features"] == [3, 7]
    # Each harmful prompt once per template, and the classes balanced for the probes.
    assert res["n"]["harmful"] == 12 and res["probes"]["n_per_class"] == {"harmful": 6, "harmless": 6}
    assert res["examples"]["unsteered"]["harmful"][0][0].startswith("Let's play a game.")
    for bad, match in (("top:0", "top:N with N >= 1"), ("1,x", "--probe-features: expected comma-separated integers")):
        rc, _, err = _run(capsys, *_base(d, tmp_path / "bad", "--steer", spec, "--probe-features", bad))
        assert rc == 2 and match in err and not (tmp_path / "bad").exists()
    rc, _, err = _run(capsys, *_base(d, tmp_path / "bad", "--features", "3", "--probe-features", "500"))
    assert rc == 2 and "--probe-features: feature ids [500] are outside [0, 96)" in err
    rc, _, err = _run(capsys, *_base(d, tmp_path / "bad", "--features", "3,96"))
    assert rc == 2 and "--features: feature ids [96] are outside [0, 96)" in err
    rc, _, err = _run(capsys, *_base(d, tmp_path / "bad", "--features", "3", "--probe-features", "top:2"))
    assert rc == 2 and "results.json next to the spec" in err
    rc, _, err = _run(capsys, *_base(d, tmp_path / "bad", "--features", "3", "--wrap", "dan"))
    assert rc == 2 and "--wrap: expected comma-separated names" in err


def test_an_sae_whose_layer_is_out_of_range_is_named_by_its_hook(tiny_chat, capsys, tmp_path):
    _, _, _, d = tiny_chat
    make_sae_lens_sae("jumprelu", 32, 96, seed=0, hook_name="blocks.40.hook_resid_post").save_model(str(tmp_path / "deep"))
    rc, _, err = _run(capsys, "eval", "--model", d, "--sae", tmp_path / "deep", "--features", "3", "--out", tmp_path / "o")
    assert rc == 2 and "its hook_name 'blocks.40.hook_resid_post' reads layer: 40 is out of range" in err
    assert "--layer" not in err and err.count("--sae") == 1
    narrow = tmp_path / "narrow"
    make_sae_lens_sae("jumprelu", 24, 96, seed=0, hook_name="blocks.1.hook_resid_post").save_model(str(narrow))
    rc, _, err = _run(capsys, "eval", "--model", d, "--sae", narrow, "--features", "3", "--out", tmp_path / "o")
    assert rc == 2 and f"error: --sae {str(narrow)!r}: d_in=24" in err


def test_eval_cli_puts_probes_at_chance_first(tiny_chat, tmp_path, capsys):
    from saesteer.cli import main

    _, _, _, d = tiny_chat
    out_dir = tmp_path / "out"
    rc = main(["eval", "--model", str(d), "--sae", str(d / "sae"), "--features", "3,7", "--mode", "clamp", "--value", "5",
               "--sweep", "0,5", "--limit", "6", "--max-new-tokens", "2", "--quiet", "--out", str(out_dir)])
    assert rc == 0
    res = json.loads((out_dir / "eval.json").read_text())
    assert res["chat_template"] == "tokenizer"
    assert res["valid"] is res["probes"]["valid"] and res["warnings"] == res["probes"]["warnings"]
    # On the random tiny model the probe over two random features is at chance on held-out prompts.
    assert res["valid"] is False and any("feature probe is at chance" in w for w in res["warnings"])
    md = (out_dir / "report.md").read_text()
    assert md.index("These results are not meaningful") < md.index("## Setup")
    assert "chat template: tokenizer" in md
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "WARNING: these results are not meaningful:" and "at chance" in err[1]
    assert all({"harmful_degenerate", "harmless_degenerate", "harmful_compliance"} <= set(r) for r in res["sweep"])
    sweep_md = md[md.index("## Refusal amplification sweep"):]
    assert "| harmful_degenerate | harmless_degenerate |" in sweep_md.split("\n\n")[2].splitlines()[0]


def test_cli_eval_direction_rows_without_a_feature_spec(tiny_chat, capsys, tmp_path):
    import json

    from safetensors.torch import save_file

    from saesteer.cli import main

    _, _, _, d = tiny_chat
    torch.manual_seed(2)
    save_file({"direction": torch.randn(32) * 4, "reference": torch.randn(32)}, str(tmp_path / "direction.safetensors"),
              metadata={"layer": "1", "position": "-1", "ablation": "affine"})
    base = ["eval", "--model", str(d), "--sae", str(d / "sae"), "--limit", "3", "--max-new-tokens", "3", "--device", "cpu", "--quiet"]
    rc = main(base + ["--direction", str(tmp_path / "direction.safetensors"), "--out", str(tmp_path / "o")])
    _, err = capsys.readouterr()
    assert rc == 0, err
    res = json.loads((tmp_path / "o" / "eval.json").read_text())
    assert [c["condition"] for c in res["conditions"]] == ["unsteered", "direction_ablation", "direction_addition",
                                                           "direction_subtraction", "affine_ablation"]
    assert res["spec"] is None and res["direction"]["layer"] == 1 and "probes" not in res
    assert all(c["kl_reply"] > 0 for c in res["conditions"][1:])
    assert "## Unsteered vs steered vs direction edits" in (tmp_path / "o" / "report.md").read_text()
    for extra, match in ((["--direction", str(tmp_path / "none.safetensors")], "direction.safetensors"),
                         (["--direction", str(tmp_path / "direction.safetensors"), "--sweep", "0,1"], "--sweep: sweeps a feature spec")):
        rc = main(base + extra + ["--out", str(tmp_path / "bad")])
        _, err = capsys.readouterr()
        assert rc == 2 and match in err and not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_the_paper_eval_commands_run_on_the_organism(tmp_path, capsys):
    """The README's eval commands under "Reproducing the papers", in the same shape on the organism
    (no hub judge offline): discover's outputs, then Arditi's direction rows on held-out prompts at
    a longer reply, Yeo's probe over the top candidates, O'Brien's clamp sweep on jailbreak-wrapped
    and multi-turn prompts with MMLU sampled across subjects."""
    from pathlib import Path

    data = Path(__file__).resolve().parents[1] / "data"
    run = tmp_path / "run"
    rc, _, err = _run(capsys, "discover", "--quick", "--capability", "0", "--quiet", "--out", run)
    assert rc == 0, err
    spec = json.loads((run / "spec.json").read_text())
    top = str(spec["features"][0])
    # The shipped prompts are held out from discover's search prompts on the organism.
    rc, _, err = _run(capsys, "eval", "--limit", "12", "--max-new-tokens", "48", "--direction", run / "direction.safetensors",
                      "--no-probes", "--quiet", "--out", tmp_path / "arditi")
    assert rc == 0, err
    arditi = json.loads((tmp_path / "arditi" / "eval.json").read_text())
    rows = {r["condition"]: r for r in arditi["conditions"]}
    assert {"direction_ablation", "direction_addition", "direction_subtraction"} <= set(rows)
    assert arditi["max_new_tokens"] == {"harmful": 48, "harmless": 48}
    assert rows["direction_subtraction"]["harmful_refusal"] < rows["unsteered"]["harmful_refusal"]
    rc, _, err = _run(capsys, "eval", "--steer", run / "spec.json", "--limit", "24", "--max-new-tokens", "24", "--probe-features", "top:8",
                      "--templates", "roleplay,past_tense", "--quiet", "--out", tmp_path / "yeo")
    assert rc == 0, err
    yeo = json.loads((tmp_path / "yeo" / "eval.json").read_text())
    ranked = json.loads((run / "results.json").read_text())["candidates"]
    assert yeo["probes"]["features"] == [c[0] for c in ranked[:8]] and yeo["probes"]["balanced"]
    for extra in (["--wrap", "roleplay,refusal_suppression", "--mmlu", data / "mmlu_tiny.jsonl", "--seed", "0"],
                  ["--harmful", data / "multiturn_prompts.jsonl"]):
        rc, _, err = _run(capsys, "eval", "--features", top, "--mode", "clamp", "--sweep", "0,8", "--limit", "6", "--max-new-tokens", "16",
                          "--capability", "8", "--no-probes", "--quiet", *extra, "--out", tmp_path / "obrien")
        assert rc == 0, err
        res = json.loads((tmp_path / "obrien" / "eval.json").read_text())
        assert [r["value"] for r in res["sweep"]] == [None, 0.0, 8.0]


def test_eval_runs_a_conditional_spec_with_and_without_its_when_and_sweeps_both(tiny_chat, capsys, tmp_path):
    model, tok, sae, d = tiny_chat
    from saesteer.refusal.trigger import trigger_scores

    harmless = shipped_prompts("harmless")[:4]
    # A threshold between the prompt scores, so the trigger fires on some prompts and not others.
    when = {"features": [5, 33], "reduce": "max", "scope": "prompt", "threshold": 0.0}
    s = trigger_scores(model, tok, sae, harmless, when)
    when["threshold"] = float(s.median())
    spec = tmp_path / "spec.json"
    SteeringSpec(features=[3], mode="clamp", values=30.0, sae=str(d / "sae"), model=str(d), when=when).save(spec)
    out = tmp_path / "o"
    rc, stdout, err = _run(capsys, *_base(d, out, "--steer", spec, "--limit", "4", "--no-probes", "--sweep", "0,30"))
    assert rc == 0, err
    res = json.loads((out / "eval.json").read_text())
    rows = {r["condition"]: r for r in res["conditions"]}
    assert list(rows) == ["unsteered", "steered", "steered_unconditional"]
    assert rows["steered"]["conditional"] is True and rows["steered_unconditional"]["conditional"] is False
    # The trigger fires on some harmless prompts only; the unconditional edit touches every prompt, so
    # it moves the model at least as far from unsteered as the conditional one.
    fired = float((s > when["threshold"]).float().mean())
    assert rows["steered"]["trigger_rate_harmless"] == fired and 0 < fired < 1
    assert "trigger_rate_harmless" not in rows["steered_unconditional"]
    assert rows["steered_unconditional"]["kl_reply"] > rows["steered"]["kl_reply"] > 0
    for k in ("harmful_refusal", "harmless_refusal", "harmless_degenerate", "loss", "kl_first"):
        assert k in rows["steered"] and k in rows["steered_unconditional"]
    # The sweep: every value unconditional and conditional; sweep.png draws both from sweep_plot.
    sweep = [(r["condition"], r["value"], r.get("conditional")) for r in res["sweep"]]
    assert sweep == [("unsteered", None, None), ("clamp=0", 0.0, False), ("clamp=30", 30.0, False),
                     ("clamp=0 (when)", 0.0, True), ("clamp=30 (when)", 30.0, True)]
    plot = res["sweep_plot"]
    assert plot["x"] == [0.0, 30.0]
    by = {r["condition"]: r for r in res["sweep"]}
    assert plot["series"]["harmless_refusal"] == [by["clamp=0"]["harmless_refusal"], by["clamp=30"]["harmless_refusal"]]
    assert plot["series"]["harmless_refusal (when)"] == [by["clamp=0 (when)"]["harmless_refusal"],
                                                         by["clamp=30 (when)"]["harmless_refusal"]]
    assert set(plot["secondary"]) == {"KL (reply)", "KL (reply) (when)"}
    assert (out / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    md = (out / "report.md").read_text()
    assert "## Unsteered vs steered with and without its trigger (when)" in md and "| steered_unconditional |" in md
    assert "| clamp=30 (when) | True |" in md


@pytest.mark.slow
def test_discovered_trigger_gates_the_amplify_spec_on_the_organism(tmp_path, capsys):
    """discover's trigger on the organism, then eval of its amplify spec (the refusal feature clamped
    high, O'Brien et al.) with and without the trigger, on held-out prompts plain and wrapped."""
    from saesteer.steering.condition import parse_when

    run = tmp_path / "run"
    rc, _, err = _run(capsys, "discover", "--quick", "--capability", "0", "--quiet", "--out", run)
    assert rc == 0, err
    r = json.loads((run / "results.json").read_text())
    when = json.loads((run / "amplify_spec.json").read_text())["when"]
    assert when == r["trigger"]["when"] == json.loads((run / "spec.json").read_text())["when"]
    parse_when(when)
    assert r["trigger"]["chosen"]["balanced_accuracy"] >= 0.8, r["trigger"]["validation"]
    for extra in ([], ["--wrap", "roleplay"]):
        out = tmp_path / ("o" + "".join(extra))
        rc, _, err = _run(capsys, "eval", "--steer", run / "amplify_spec.json", "--sweep", "8", "--limit", "12", "--max-new-tokens", "16",
                          "--capability", "8", "--no-probes", "--quiet", *extra, "--out", out)
        assert rc == 0, err
        res = json.loads((out / "eval.json").read_text())
        rows = {c["condition"]: c for c in res["conditions"]}
        cond, uncond = rows["steered"], rows["steered_unconditional"]
        # the shipped prompts were never seen by the trigger: it fires on fewer harmless than harmful ones
        assert cond["trigger_rate_harmless"] <= 0.25 and cond["trigger_rate_harmful"] > cond["trigger_rate_harmless"]
        assert uncond["kl_reply"] >= cond["kl_reply"]
        assert {(x["condition"], x.get("conditional")) for x in res["sweep"][1:]} == {("clamp=8", False), ("clamp=8 (when)", True)}
        assert set(res["sweep_plot"]["series"]) >= {"harmful_refusal", "harmful_refusal (when)"}
