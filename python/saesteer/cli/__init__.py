"""The ``saesteer`` command line: ``saesteer {demo,generate,eval,discover,bench,organism,info}``.

Each subcommand lives beside the code it drives and registers itself through a ``register(subparsers)``
function; this file only assembles them.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

# (module, attribute) of each subcommand group's register function, in help order.
_GROUPS = (
    ("saesteer.demo", "register"),
    ("saesteer.refusal.cli", "register"),
    ("saesteer.refusal.discover", "register"),
    ("saesteer.bench.cli", "register"),
    ("saesteer.cli.organism", "register"),
)


def _info(args) -> int:
    import saesteer

    print(json.dumps(saesteer.build_info(), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="saesteer",
        description="Find and steer the SAE features that make chat models refuse.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    info = sub.add_parser("info", help="how the extension was built and which backends are available")
    info.set_defaults(func=_info)
    for mod, attr in _GROUPS:
        try:
            register = getattr(importlib.import_module(mod), attr)
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith("saesteer"):
                continue  # that part of the library is not installed in this build
            raise
        register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
