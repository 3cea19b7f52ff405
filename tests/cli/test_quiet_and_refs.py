"""``--quiet`` silences transformers' loading bars in a real CLI process, and a bad
``--sae organism:NAME`` fails in one line before the organism's model loads."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import saesteer.organism
from saesteer.cli import main


def _eval(tmp_path, *extra):
    cmd = [sys.executable, "-m", "saesteer.cli", "eval", "--features", "1", "--mode", "ablate", "--limit", "1",
           "--capability", "0", "--no-probes", "--max-new-tokens", "1", "--device", "cpu", "--out",
           str(tmp_path / ("q" if extra else "loud")), *extra]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)


@pytest.mark.slow
def test_quiet_removes_transformers_loading_bars(tmp_path):
    loud = _eval(tmp_path)
    assert loud.returncode == 0, loud.stderr
    assert "Loading weights" in loud.stderr  # the organism's from_pretrained bar, shown by default
    quiet = _eval(tmp_path, "--quiet")
    assert quiet.returncode == 0, quiet.stderr
    assert "Loading weights" not in quiet.stderr


@pytest.mark.parametrize("command", [
    ["generate", "hi", "--features", "1", "--mode", "ablate"],
    ["eval", "--features", "1", "--mode", "ablate", "--no-probes", "--out", "out"],
])
def test_unknown_organism_sae_fails_before_the_organism_loads(command, capsys, monkeypatch, tmp_path):
    def no_load(*args, **kwargs):
        raise AssertionError("the organism's model was loaded before --sae was checked")

    monkeypatch.setattr(saesteer.organism, "load", no_load)
    monkeypatch.chdir(tmp_path)
    rc = main([*command, "--sae", "organism:nope", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"saesteer {command[0]}: error: --sae: the organism has no SAE 'nope'"), lines[0]
    _, _, sae_paths = saesteer.organism.read_manifest()
    for name in sae_paths:
        assert name in lines[0]
