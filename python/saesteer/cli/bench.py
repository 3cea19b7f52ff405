"""``saesteer bench ops`` and ``saesteer bench generate``: the benchmark package's own command
definitions (:mod:`saesteer.bench.cli`), registered here like every other subcommand."""

from __future__ import annotations

from ..bench.cli import register

__all__ = ["register"]
