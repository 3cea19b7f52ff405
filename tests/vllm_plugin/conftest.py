"""Fixtures of the vLLM tests: the organism (HF, the reference) and its chat prompts; and saesteer's
``vllm.general_plugins`` entry point, installed for the session.

saesteer runs from the checkout in the vLLM venv, without installed metadata, so vLLM's plugin
loader would not find the entry point that registers the ``SAESteered`` architectures in every
process vLLM starts. A dist-info carrying pyproject.toml's entry points, as pip writes it on
install, goes on ``sys.path`` and ``PYTHONPATH`` (for the engine and server processes) here.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest
import tomllib

import helpers

ROOT = Path(__file__).resolve().parents[2]


def write_plugin_dist(where: Path) -> Path:
    """A dist-info under ``where`` with pyproject.toml's entry points; returns ``where``."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    info = where / "saesteer_checkout-0.0.0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: saesteer-checkout\nVersion: 0.0.0\n")
    lines = []
    for group, entries in project.get("entry-points", {}).items():
        lines.append(f"[{group}]")
        lines += [f"{name} = {target}" for name, target in entries.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    return where


PLUGIN_SITE = write_plugin_dist(Path(tempfile.mkdtemp(prefix="saesteer-plugin-")))
sys.path.insert(0, str(PLUGIN_SITE))
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(PLUGIN_SITE), str(ROOT / "python"),
                                                        os.environ.get("PYTHONPATH", "")) if p)


@pytest.fixture(scope="session")
def plugin_site() -> Path:
    """The directory holding saesteer's entry-point dist-info (see the module doc)."""
    return PLUGIN_SITE


@pytest.fixture(scope="session")
def org():
    from saesteer import organism

    return organism.load()


@pytest.fixture(scope="session")
def prompts(org):
    """Three harmful and three harmless chat-formatted prompts (token ids), harmful first."""
    return helpers.organism_prompt_ids(org, 3, 3)
