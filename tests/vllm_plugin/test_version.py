"""The ``[vllm]`` extra is bounded to the vLLM versions the plugin is tested with, and a vLLM outside
them is named (with the tested range) when vLLM loads the plugin, not deep inside an engine."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomllib

from saesteer.vllm.version import TESTED, version_problem

ROOT = Path(__file__).resolve().parents[2]


def test_the_extra_pins_the_tested_range():
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["vllm"]
    assert extra == [f"vllm{TESTED}"]


@pytest.mark.parametrize("version, ok", [("0.32.0", True), ("0.32.5", True), ("0.33.0", False), ("0.31.2", False),
                                         ("0.32.0+cpu", True), ("garbage", False)])
def test_versions_outside_the_tested_range_are_named(version, ok):
    msg = version_problem(version)
    assert (msg is None) == ok
    if not ok:
        assert f"vllm{TESTED}" in msg and version in msg


def test_loading_the_plugin_under_another_vllm_warns_naming_both(monkeypatch):
    vllm = pytest.importorskip("vllm", reason="vLLM is not installed (make venv-vllm; make test-vllm)")
    from saesteer.vllm.model import register

    monkeypatch.setattr(vllm, "__version__", "0.33.0")
    with pytest.warns(RuntimeWarning, match=r"tested with vllm>=0\.32,<0\.33 and this is vLLM 0\.33\.0"):
        register()
