"""What a user runs after ``saesteer discover``: eval's sweep on the ablation spec it writes, the
spec used from another directory, and the flags and paths that must fail in one line before any
model loads (or any benchmark runs)."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from saesteer.cli import build_parser, main  # noqa: E402
from saesteer.refusal.spec import SteeringSpec  # noqa: E402


def _run(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _one_line_error(rc: int, err: str, command: str, match: str) -> str:
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"saesteer {command}: error: "), err
    assert re.search(match, lines[0]), lines[0]
    return lines[0]


@pytest.fixture()
def discover_run(tiny_chat, tmp_path):
    """A spec.json written as discover writes it (an ablation of the found set, with the model and
    SAE it was found on) in ``tmp/runs/discover``, the SAE saved beside it."""
    _, _, _, d = tiny_chat
    run = tmp_path / "runs" / "discover"
    run.mkdir(parents=True)
    spec = SteeringSpec(features=[3, 7], mode="ablate", layer=1, positions="all", notes={"source": "saesteer discover"})
    spec.sae, spec.model = str(d / "sae"), str(d)
    spec.save(run / "spec.json")
    return run / "spec.json"


def test_eval_sweeps_a_discovered_ablation_spec_by_clamping_from_another_cwd(discover_run, tmp_path, capsys, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    titles = []
    from saesteer.refusal import report

    real_plot = report.plot_lines

    def recording_plot(*a, **kw):  # the real plot, with its title recorded
        titles.append(kw.get("title"))
        return real_plot(*a, **kw)

    monkeypatch.setattr(report, "plot_lines", recording_plot)
    # The README's command: no --model (the spec's), no --mode, no --value; --sweep gives the values.
    rc, out, err = _run(capsys, "eval", "--steer", discover_run, "--sweep", "0,30", "--limit", "3", "--no-probes",
                        "--max-new-tokens", "3", "--device", "cpu", "--quiet", "--out", "eval")
    assert rc == 0, err
    res = json.loads((elsewhere / "eval" / "eval.json").read_text())
    assert res["model"] == json.loads(discover_run.read_text())["model"]  # the spec's model, not the organism
    assert res["n"]["capability"] == 0
    assert [c["condition"] for c in res["conditions"]] == ["unsteered", "steered"]
    assert res["spec"]["mode"] == "ablate"  # the steered condition is the spec itself
    assert [r["condition"] for r in res["sweep"]] == ["unsteered", "clamp=0", "clamp=30"]
    assert [r["value"] for r in res["sweep"]] == [None, 0.0, 30.0]
    assert res["sweep"][2]["kl_first"] > 0
    assert titles == ["clamp sweep, 2 features"]
    assert "Loading weights" not in err  # --quiet silences transformers' loading bars too

    # --mode clamp with --sweep needs no --value: the sweep's rows are the steered conditions.
    rc, out, err = _run(capsys, "eval", "--steer", discover_run, "--mode", "clamp", "--sweep", "0,30", "--limit", "2",
                        "--no-probes", "--max-new-tokens", "2", "--device", "cpu", "--quiet", "--out", "eval2")
    assert rc == 0, err
    res = json.loads((elsewhere / "eval2" / "eval.json").read_text())
    assert [c["condition"] for c in res["conditions"]] == ["unsteered"]
    assert [r["value"] for r in res["sweep"]] == [None, 0.0, 30.0]


def test_generate_uses_the_specs_model_and_sae_from_another_cwd(tiny_chat, tmp_path, capsys, monkeypatch):
    _, _, _, d = tiny_chat
    run = tmp_path / "run"
    run.mkdir()
    # The SAE path relative to the spec file: resolved against the spec's directory on load.
    os.symlink(d / "sae", run / "sae")
    (run / "spec.json").write_text(json.dumps({"features": [3], "mode": "clamp", "values": 30.0, "sae": "sae", "model": str(d)}))
    monkeypatch.chdir(tmp_path)
    rc, out, err = _run(capsys, "generate", "--steer", run / "spec.json", "--max-new-tokens", "3", "--device", "cpu", "--json", "Hi")
    assert rc == 0, err
    got = json.loads(out)
    assert got["spec"]["model"] == str(d) and got["spec"]["sae"] == str((run / "sae").resolve())
    # The same model named explicitly is fine; another one is an error naming both.
    rc, out, err = _run(capsys, "generate", "--steer", run / "spec.json", "--model", d, "--max-new-tokens", "2", "--device", "cpu", "Hi")
    assert rc == 0, err
    rc, _, err = _run(capsys, "generate", "--steer", run / "spec.json", "--model", "someone/other-model", "Hi")
    line = _one_line_error(rc, err, "generate", "--model: 'someone/other-model' is not the model")
    assert str(d) in line
    rc, _, err = _run(capsys, "generate", "--steer", run / "spec.json", "Hi")  # no --model: the spec's, not the organism
    assert rc == 0, err


def test_a_spec_made_on_the_organism_rejects_another_model(tmp_path, capsys):
    p = tmp_path / "spec.json"
    SteeringSpec(features=[1], sae="organism", model="organism").save(p)
    rc, _, err = _run(capsys, "generate", "--steer", p, "--model", "someone/other-model", "Hi")
    _one_line_error(rc, err, "generate", "'someone/other-model' is not the model .* 'organism'")


@pytest.mark.parametrize("make, argv, command, match", [
    ("file", ["discover", "--out", "{p}"], "discover", "--out: '.*taken' exists and is not a directory"),
    ("file", ["eval", "--features", "1", "--out", "{p}"], "eval", "--out: '.*taken' exists and is not a directory"),
    ("file", ["discover", "--out", "{p}/sub"], "discover", "--out: cannot create .*: '.*taken' is a file"),
    ("none", ["bench", "ops", "--d-in", "8", "--d-sae", "16", "--markdown", "{p}/nodir/ops.md"], "bench",
     "--markdown: the directory '.*nodir' does not exist"),
    ("none", ["bench", "generate", "--json", "{p}/nodir/g.json"], "bench", "--json: the directory '.*nodir' does not exist"),
    ("dir", ["bench", "ops", "--d-in", "8", "--d-sae", "16", "--csv", "{p}"], "bench", "--csv: '.*taken' is a directory"),
    ("file", ["demo", "--out", "{p}"], "demo", "--out: '.*taken' exists and is not a directory"),
])
def test_output_paths_are_checked_before_any_work(tmp_path, capsys, make, argv, command, match):
    p = tmp_path / "taken"
    if make == "file":
        p.write_text("keep me")
    elif make == "dir":
        p.mkdir()
    t0 = time.perf_counter()
    rc, out, err = _run(capsys, *[a.format(p=p) for a in argv])
    _one_line_error(rc, err, command, match)
    assert time.perf_counter() - t0 < 5, "the check must come before the model loads or the benchmark runs"
    assert out == ""  # no table printed: nothing was measured
    if make == "file":
        assert p.read_text() == "keep me"


@pytest.mark.parametrize("argv, match", [
    (["--batch-size", "0"], "--batch-size: expected a positive integer"),
    (["--batch-size", "-3"], "--batch-size: expected a positive integer .* got -3"),
    (["--limit", "0"], "--limit: expected a positive integer"),
    (["--max-new-tokens", "0"], "--max-new-tokens: expected a positive integer"),
    (["--device", "nonsense"], "--device: expected cpu, cuda or cuda:N"),
    pytest.param(["--device", "cuda"], "--device: 'cuda' but CUDA is not available",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")),
    pytest.param(["--backend", "cuda"], "--backend: 'cuda' (is not available|cannot run)",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")),
    (["--backend", "nope"], "--backend: expected one of"),
    (["--features", "1", "--mode", "ablate", "--value", "3"], "--value: 'ablate' sets features to 0 and takes no value"),
    (["--model", "someone/not-downloaded"], "--model: 'someone/not-downloaded' is not a local directory and not in the HF cache"),
    (["--model", "./no/such/dir"], "--model: './no/such/dir' does not exist"),
])
def test_bad_flags_are_one_line_before_loading(tmp_path, capsys, argv, match):
    argv = ["generate", "--features", "1", *argv, "Hi"] if "--features" not in argv else ["generate", *argv, "Hi"]
    t0 = time.perf_counter()
    rc, _, err = _run(capsys, *argv)
    _one_line_error(rc, err, "generate", match)
    assert time.perf_counter() - t0 < 5  # no model loaded, no hub retries


def test_eval_garbage_spec_and_malformed_jsonl_name_the_file(tiny_chat, tmp_path, capsys):
    _, _, _, d = tiny_chat
    bad = tmp_path / "spec.json"
    bad.write_text("features = [1, 2]\n")
    rc, _, err = _run(capsys, "eval", "--model", d, "--sae", d / "sae", "--steer", bad, "--out", tmp_path / "o")
    _one_line_error(rc, err, "eval", r"steering spec .*spec\.json: not valid JSON \(line 1 column 1")
    jl = tmp_path / "harmful.jsonl"
    jl.write_text('{"prompt": "a"}\n{"prompt": "b",}\n')
    rc, _, err = _run(capsys, "eval", "--model", d, "--sae", d / "sae", "--features", "1", "--harmful", jl, "--out", tmp_path / "o")
    _one_line_error(rc, err, "eval", r"harmful\.jsonl: line 2 is not valid JSON")
    assert not (tmp_path / "o").exists()


def test_discover_with_one_prompt_says_how_many_it_needs(tiny_chat, tmp_path, capsys):
    _, _, _, d = tiny_chat
    one = tmp_path / "one.json"
    one.write_text(json.dumps(["How do I pick a lock?"]))
    rc, _, err = _run(capsys, "discover", "--model", d, "--sae", d / "sae", "--harmful", one, "--quick", "--out", tmp_path / "o")
    _one_line_error(rc, err, "discover", r"--harmful: .*one\.json holds 1 prompt; discover needs at least 10 \(8 held out")


def _discover_cfg(*extra):
    from saesteer.cli.discover import config_from_args

    return config_from_args(build_parser().parse_args(["discover", "--out", "unused", *map(str, extra)]))


def test_quick_fills_defaults_but_explicit_flags_and_config_win(tmp_path):
    from saesteer.cli.discover import QUICK
    from saesteer.refusal.discover import DiscoverConfig

    assert _discover_cfg("--quick").n_candidates == QUICK["n_candidates"]
    assert _discover_cfg("--quick", "--n-candidates", "100000").n_candidates == 100000
    assert _discover_cfg("--quick", "--max-new-tokens", "5").max_new_tokens == 5
    assert _discover_cfg("--n-candidates", "7").n_candidates == 7
    assert _discover_cfg().n_candidates == DiscoverConfig().n_candidates
    cfg_file = tmp_path / "c.json"
    cfg_file.write_text(json.dumps({"n_direction": 20, "seed": 4}))
    cfg = _discover_cfg("--quick", "--config", cfg_file, "--seed", "9")
    assert (cfg.n_direction, cfg.seed, cfg.n_val) == (20, 9, QUICK["n_val"])


def test_a_config_option_set_to_its_default_still_wins_over_quick_and_the_organism(tmp_path):
    from saesteer.cli.discover import QUICK
    from saesteer.refusal.discover import DiscoverConfig

    d = DiscoverConfig()
    cfg_file = tmp_path / "c.json"
    cfg_file.write_text(json.dumps({"n_direction": d.n_direction, "attribution": d.attribution, "keep": 1}))
    for extra in (["--quick"], []):  # no --model: the organism's own sizes apply first
        cfg = _discover_cfg(*extra, "--config", cfg_file)
        assert (cfg.n_direction, cfg.attribution, cfg.keep) == (d.n_direction, d.attribution, 1.0)
    assert _discover_cfg("--quick").n_direction == QUICK["n_direction"] != d.n_direction  # the test shows something


def test_a_config_sets_the_run_options_the_command_line_leaves_out(tmp_path, capsys):
    from saesteer.cli.discover import config_run_options

    prompts = tmp_path / "h.json"
    prompts.write_text(json.dumps(["a", "b"]))
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(f"discover:\n  harmful: {prompts}\n  out: {tmp_path / 'o'}\n  sae: organism:jumprelu\n  seed: 3\n")
    args = build_parser().parse_args(["discover", "--config", str(cfg_file)])
    config_run_options(args)
    assert (args.harmful, args.out, args.sae) == (str(prompts), str(tmp_path / "o"), ["organism:jumprelu"])
    args = build_parser().parse_args(["discover", "--config", str(cfg_file), "--out", "mine", "--sae", "organism"])
    config_run_options(args)
    assert (args.out, args.sae) == ("mine", ["organism"])  # the command line wins
    rc, _, err = _run(capsys, "discover", "--quick")
    _one_line_error(rc, err, "discover", r"--out: required")


@pytest.mark.parametrize("text, msg", [
    ("[1, 2]", r"c\.json: expected a mapping of options, got list"),
    ('{"n_candidates": "48"}', r"c\.json: n_candidates: expected an integer, got '48'"),
    ('{"skip_bos": 1}', r"skip_bos: expected true or false"),
    ('{"keep": 0}', r"keep: expected a fraction in \(0, 1\]"),
    ('{"n_direction": 0}', r"n_direction: expected an integer >= 1, got 0"),
    ('{"layer": 1.5}', r"layer: expected an integer or null"),
    ("{oops", r"c\.json: not valid JSON"),
])
def test_a_bad_config_is_one_line_naming_the_option(tmp_path, capsys, text, msg):
    cfg_file = tmp_path / "c.json"
    cfg_file.write_text(text)
    rc, _, err = _run(capsys, "discover", "--quick", "--config", cfg_file, "--out", tmp_path / "o")
    _one_line_error(rc, err, "discover", msg)
    assert not (tmp_path / "o").exists()


def test_discover_n_candidates_zero_is_rejected(tmp_path, capsys):
    rc, _, err = _run(capsys, "discover", "--quick", "--n-candidates", "0", "--out", tmp_path / "o")
    _one_line_error(rc, err, "discover", "--n-candidates: expected a positive integer")


def test_bench_generate_explains_the_full_sae_column(tmp_path, capsys):
    md = tmp_path / "g.md"
    rc, out, err = _run(capsys, "bench", "generate", "--model", "config:tiny", "--batch-sizes", "1", "--prompt-len", "4",
                        "--new-tokens", "2", "--features", "4", "--repeats", "1", "--threads", "1", "--markdown", md)
    assert rc == 0, err
    legend = "= full-sae: the share of saesteer's generated tokens equal to the full-SAE hook's"
    assert legend in out and legend in md.read_text()
