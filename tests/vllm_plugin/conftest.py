"""Fixtures of the vLLM tests: the organism (HF, the reference) and its chat prompts."""

from __future__ import annotations

import pytest

import helpers


@pytest.fixture(scope="session")
def org():
    from saesteer import organism

    return organism.load()


@pytest.fixture(scope="session")
def prompts(org):
    """Three harmful and three harmless chat-formatted prompts (token ids), harmful first."""
    return helpers.organism_prompt_ids(org, 3, 3)
