"""``saesteer info``: how the extension was built and which backends are available."""

from __future__ import annotations

import json

__all__ = ["register"]


def _info(args) -> int:
    import saesteer

    print(json.dumps(saesteer.build_info(), indent=2))
    return 0


def register(sub) -> None:
    p = sub.add_parser("info", help="how the extension was built and which backends are available")
    p.set_defaults(func=_info)
