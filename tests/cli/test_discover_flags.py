"""``saesteer discover``'s flags as a newcomer meets them: every bad flag is one line naming it (no
usage block), every flag has help, and the files written are listed and readable."""

from __future__ import annotations

import json
import os
import stat

import pytest

from helpers import run_cli as _run
from saesteer.cli import build_parser


@pytest.mark.parametrize("extra, match", [
    (["--config", "/nonexistent.yaml"], "--config: '/nonexistent.yaml' is not a file"),
    (["--edit", "scale:abc"], "--edit: "),
    (["--edit", "rotate"], "--edit: "),
    (["--ig-steps", "0"], "--ig-steps: expected an integer >= 1, got 0"),
])
def test_a_bad_flag_is_one_line_naming_it_without_the_usage_block(tmp_path, capsys, extra, match):
    rc, _, err = _run(capsys, "discover", "--quick", *extra, "--out", tmp_path / "o")
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"saesteer discover: error: {match}"), err
    assert "usage:" not in err and not (tmp_path / "o").exists()


def _help(command: str) -> dict[str, str]:
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
    return {opt: a.help or "" for a in sub._actions for opt in a.option_strings}


def test_every_flag_has_help_and_the_attribution_default_is_told_per_model():
    for command in ("discover", "eval", "generate"):
        missing = [opt for opt, h in _help(command).items() if not h]
        assert not missing, f"{command}: {missing} have no help text"
    h = _help("discover")
    assert "default with --model" in h["--attribution"] and "default on the built-in organism" in h["--attribution"]
    assert "default 48" in h["--n-candidates"] and "default 24" in h["--max-new-tokens"]


@pytest.mark.slow
def test_discover_lists_every_file_it_writes_and_writes_them_readable(tiny_chat, tmp_path, capsys):
    _, _, _, d = tiny_chat
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"n_direction": 6, "n_val": 3, "n_search": 2, "n_heldout": 3, "n_candidates": 5,
                               "fm_samples": 16, "fm_extra": 3, "per_prompt": 1, "max_new_tokens": 4}))
    out = tmp_path / "out"
    old = os.umask(0o022)
    try:
        rc, stdout, err = _run(capsys, "discover", "--model", d, "--sae", d / "sae", "--config", cfg, "--capability", "0",
                               "--quiet", "--out", out)
    finally:
        os.umask(old)
    assert rc == 0, err
    wrote = next(line for line in stdout.splitlines() if line.startswith("wrote "))
    files = sorted(p.name for p in out.iterdir())
    assert {"results.json", "spec.json", "direction.safetensors", "report.md", "asr_vs_features.png"} <= set(files)
    for name in files:
        assert str(out / name) in wrote, f"{name} is not in {wrote!r}"
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o644, name
