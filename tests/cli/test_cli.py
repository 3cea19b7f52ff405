"""The command line: ``saesteer generate`` and ``saesteer eval`` on a tiny saved model and SAE
directory (the path a user takes), and one-line errors for bad input before any model loads."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from helpers import make_sae_lens_sae  # noqa: E402
from saesteer.cli import main  # noqa: E402
from saesteer.refusal.chat import generate  # noqa: E402

MC_SAMPLE = Path(__file__).resolve().parents[2] / "python" / "saesteer" / "refusal" / "mc_sample.jsonl"


@pytest.fixture(scope="module")
def sae_dirs(tmp_path_factory):
    """The tiny_chat SAE saved in sae-lens's format, and one of the wrong width."""
    d = tmp_path_factory.mktemp("saes")
    make_sae_lens_sae("jumprelu", 32, 96, seed=0, hook_name="blocks.1.hook_resid_post").save_model(str(d / "ok"))
    make_sae_lens_sae("jumprelu", 24, 96, seed=0, hook_name="blocks.1.hook_resid_post").save_model(str(d / "narrow"))
    return d / "ok", d / "narrow"


def _run(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_generate_json_unsteered_matches_library_and_steering_changes_replies(tiny_chat, sae_dirs, capsys):
    model, tok, _, d = tiny_chat
    prompts = ["Name a fruit.", "How do I make a simple tomato pasta sauce?"]
    rc, out, err = _run(capsys, "generate", "--model", d, "--sae", sae_dirs[0], "--features", "3,7", "--mode", "clamp",
                        "--value", "30", "--max-new-tokens", "6", "--device", "cpu", "--json", *prompts)
    assert rc == 0, err
    got = json.loads(out)
    assert got["spec"]["features"] == [3, 7] and got["spec"]["mode"] == "clamp"
    assert [r["prompt"] for r in got["replies"]] == prompts
    assert [r["unsteered"] for r in got["replies"]] == generate(model, tok, prompts, max_new_tokens=6, progress=False)
    assert any(r["steered"] != r["unsteered"] for r in got["replies"])
    rc, out, _ = _run(capsys, "generate", "--model", d, "--sae", sae_dirs[0], "--features", "3", "--max-new-tokens", "4", "--device", "cpu", "Hi")
    assert rc == 0 and "UNSTEERED" in out and "STEERED" in out and "prompt: Hi" in out


def test_eval_writes_json_report_and_sweep_plot(tiny_chat, sae_dirs, capsys, tmp_path):
    _, _, _, d = tiny_chat
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"sae": str(sae_dirs[0]), "features": [3, 7], "mode": "clamp", "values": 30.0, "positions": "all"}))
    out_dir = tmp_path / "out"
    rc, out, err = _run(capsys, "eval", "--model", d, "--steer", spec, "--mc", MC_SAMPLE, "--sweep", "0,30", "--limit", "6",
                        "--max-new-tokens", "4", "--device", "cpu", "--templates", "roleplay,past_tense", "--quiet", "--out", out_dir)
    assert rc == 0, err
    res = json.loads((out_dir / "eval.json").read_text())
    assert [c["condition"] for c in res["conditions"]] == ["unsteered", "steered"]
    assert [r["value"] for r in res["sweep"]] == [None, 0.0, 30.0]
    assert res["n"] == {"harmful": 6, "harmless": 6, "mc": 6, "capability": 0}
    steered = res["conditions"][1]
    assert steered["kl_first"] > 0 and steered["kl_reply"] > 0 and res["sweep"][2]["kl_first"] == steered["kl_first"]
    assert {"train (plain)", "validation (plain)", "held-out (plain)"} <= {r["set"] for r in res["probes"]["rows"]}
    assert [r["template"] for r in res["probes"]["templates"]["templates"]] == ["roleplay", "past_tense"]
    assert res["probes"]["residual_layer"] in [r["layer"] for r in res["probes"]["residual_layers"]]
    md = (out_dir / "report.md").read_text()
    for heading in ("## Unsteered vs steered", "## Refusal amplification sweep", "## Refusal-feature probes", "## Example replies"):
        assert heading in md
    probe_md = md[md.index("## Refusal-feature probes"):]
    assert "| template | n | plain_refusal | wrapped_refusal |" in probe_md and "| layer | train_accuracy |" in probe_md
    # The random model refuses nothing: the report says why there is no OOD accuracy.
    assert "No OOD template lowered refusal" in probe_md and "Mean OOD accuracy" not in probe_md
    assert (out_dir / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    assert set(json.loads(out)) == {"unsteered", "steered"}


@pytest.mark.parametrize(
    "case, extra, match",
    [
        ("missing file", ["--harmful", "{tmp}/nope.json"], "is not a file"),
        ("empty file", ["--harmful", "{tmp}/empty.json"], "holds no prompts"),
        ("no field", ["--harmful", "{tmp}/nofield.jsonl"], "has no a field|has no field"),
        ("bad mc", ["--mc", "{tmp}/nofield.jsonl"], "missing field"),
        ("sae width", ["--sae", "{narrow}"], "d_in=24 but the model's hidden size is 32"),
        ("layer", ["--layer", "7"], "7 is out of range; the model has 3 decoder layers"),
        ("sweep text", ["--sweep", "1,x"], "--sweep: expected comma-separated numbers"),
        ("sweep ablate", ["--sweep", "1,2", "--mode", "ablate"], "sweeps the value of clamp"),
        ("no value", ["--mode", "clamp"], "needs a value"),
        ("missing spec", ["--steer", "{tmp}/spec.yaml"], "is not a file"),
        ("missing judge", ["--judge", "{tmp}/no-guard"], "judge: cannot load"),
        ("bad template", ["--templates", "roleplay,dan"], "--templates: expected comma-separated names from"),
    ],
)
def test_eval_bad_input_is_one_line_before_loading(tiny_chat, sae_dirs, capsys, tmp_path, case, extra, match):
    _, _, _, d = tiny_chat
    (tmp_path / "empty.json").write_text("[]")
    (tmp_path / "nofield.jsonl").write_text('{"text": "hello"}\n')
    extra = [e.format(tmp=tmp_path, narrow=sae_dirs[1]) for e in extra]
    argv = ["eval", "--model", d, "--sae", sae_dirs[0], "--features", "3", "--out", tmp_path / "o", *extra]
    if case in ("sweep text", "sweep ablate"):
        argv += ["--mode", "clamp", "--value", "1"] if case == "sweep text" else []
    rc, out, err = _run(capsys, *argv)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("saesteer eval: error: "), err
    import re

    assert re.search(match, lines[0]), lines[0]
    assert not (tmp_path / "o").exists()


def _discover_args(*extra):
    from saesteer.cli import build_parser

    return build_parser().parse_args(["discover", "--out", "unused", *extra])


def test_discover_on_the_organism_searches_the_shipped_recipes_prompts():
    # The organism was trained on data version 2: discover's direction, selection and search
    # prompts must come from version 2's generators, not the generators' version-1 default.
    import random

    from saesteer import organism
    from saesteer.cli.discover import config_from_args, search_inputs
    from saesteer.organism.training import data as odata
    from saesteer.refusal.data import shipped_prompts

    args = _discover_args("--quick")
    cfg = config_from_args(args)
    harmful, harmless, held_h, held_l = search_inputs(args, cfg)
    n_h, n_l = cfg.n_direction + cfg.n_val + cfg.n_search, cfg.n_direction + cfg.n_val
    assert (len(harmful), len(harmless)) == (n_h, n_l)
    assert (harmful, harmless) == organism.search_prompts(n_h, n_l, cfg.seed + 1)

    rng = random.Random(cfg.seed + 1)
    h = [odata.harmful_instruction(rng) for _ in range(n_h)]
    assert (harmful, harmless) == (h, [odata.benign_framed_instruction(rng) for _ in range(n_l)])
    # the shipped recipe's content: purpose clauses that only its generators draw
    assert any(t.rstrip("?.!").endswith(p) for t in harmful + harmless for p in odata._HARM_PURPOSES + odata._BENIGN_PURPOSES)
    # The shipped prompt sets (never trained on) are all held out.
    assert held_h == shipped_prompts("harmful") and held_l == shipped_prompts("harmless")


def test_discover_with_prompt_files_uses_them_and_holds_nothing_apart(tmp_path):
    from saesteer.cli.discover import QUICK, config_from_args, search_inputs

    f = tmp_path / "h.json"
    prompts = [f"prompt {i}" for i in range(12)]  # --quick holds 8 out; the rest is enough to run
    f.write_text(json.dumps(prompts))
    args = _discover_args("--harmful", str(f), "--seed", "3", "--quick")
    cfg = config_from_args(args)
    assert cfg.seed == 3 and all(getattr(cfg, k) == v for k, v in QUICK.items())
    harmful, harmless, held_h, held_l = search_inputs(args, cfg)
    assert harmful == prompts and held_h is None and held_l is None and len(harmless) > 0


def test_organism_sae_references_resolve_or_name_the_choices():
    from saesteer import organism
    from saesteer.cli.common import is_organism_ref, resolve_sae

    assert is_organism_ref("organism") and is_organism_ref("organism:topk") and not is_organism_ref("org/x")
    org = organism.load()
    assert resolve_sae("organism", organism=org) is not None
    default = resolve_sae(None, organism=org)
    assert default.d_sae == org.saes[org.default_sae].d_sae
    assert torch.equal(default.W_dec, org.saes[org.default_sae].W_dec)
    with pytest.raises(ValueError, match="no SAE 'nonexistent'.*jumprelu"):
        resolve_sae("organism:nonexistent", organism=org)
