"""The ``saesteer`` command line: ``saesteer {info,demo,generate,inspect,eval,discover,bench,organism,...}``.

One module per subcommand, each with a ``register(subparsers)`` function; this file only assembles
them. A new subcommand is a module in this package plus one line in :data:`SUBCOMMANDS`. The CLI is
the layer that knows about the built-in organism: it resolves ``organism`` / ``organism:NAME`` and
the organism's prompts and capability task (see :mod:`saesteer.cli.common`), so the science in
:mod:`saesteer.refusal` takes models, prompts and SAEs as plain arguments.
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: Modules whose ``register(subparsers)`` adds a subcommand, in help order. A module that is not
#: installed in this build (an optional part of the library) is skipped.
SUBCOMMANDS = (
    "saesteer.cli.info",
    "saesteer.cli.demo",
    "saesteer.cli.generate",
    "saesteer.cli.inspect",
    "saesteer.cli.eval",
    "saesteer.cli.discover",
    "saesteer.cli.bench",
    "saesteer.cli.organism",
    "saesteer.cli.serve",
)

__all__ = ["SUBCOMMANDS", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="saesteer",
        description="Find and steer the SAE features that make chat models refuse.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for mod in SUBCOMMANDS:
        try:
            module = importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith("saesteer"):
                continue  # that part of the library is not installed in this build
            raise
        module.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "pass_through", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra  # a pass-through subcommand (serve) hands these to the engine's own parser
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    import torch

    try:
        # Inference only; stages that need gradients (attribution, the FM fit) enable them locally.
        # The context also restores the caller's grad mode if a command changes it.
        with torch.no_grad():
            return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, NotImplementedError) as e:
        # User errors: one clear line, no traceback.
        print(f"saesteer {args.command}: error: {e}", file=sys.stderr)
        return 2
