"""The ``vllm.general_plugins`` entry point declared in pyproject.toml: vLLM's own plugin loader,
in a fresh process that never imports saesteer.vllm, registers the SAESteered architectures (what
a headless node of a multi-node run needs before it checks ``--hf-overrides``' architecture)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (make venv-vllm; make test-vllm)")

ROOT = Path(__file__).resolve().parents[2]


def test_vllm_general_plugin_registers_the_steered_architectures(plugin_site):
    code = textwrap.dedent("""
        from vllm import ModelRegistry
        from vllm.plugins import load_general_plugins
        before = "SAESteeredLlamaForCausalLM" in ModelRegistry.get_supported_archs()
        load_general_plugins()
        archs = ModelRegistry.get_supported_archs()
        print(before, "SAESteeredLlamaForCausalLM" in archs, "SAESteeredGemma2ForCausalLM" in archs)
    """)
    env = {k: v for k, v in os.environ.items() if k != "VLLM_PLUGINS"}  # unset: every plugin loads
    env["PYTHONPATH"] = f"{plugin_site}:{ROOT / 'python'}"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[-3:] == ["False", "True", "True"], out.stdout
