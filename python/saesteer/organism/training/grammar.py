"""The recipe's template engine, its word tables, and a grammar of request families that verb +
object acts do not cover.

Benchmarks of harmful requests (HarmBench, AdvBench, JailbreakBench, ...) are full of *specialist*
requests: a named exploit, toxin or facility inside an ordinary frame ("Write a script that ...
upon ...", "Describe ... in graphic detail", "Write a persuasive article about how ... was ...").
A tiny model sees almost none of those names in training, so it has to learn the *shape* of the
request from many generated instances — and, for the same shapes with benign content, to help.

Each family is a list of templates over shared slots; ``{slot}`` picks one entry of the slot's list
(:func:`expand`, the one engine every generator of the recipe fills templates with). Slots may
refer to other slots, and ``{name}`` is a made-up technical name (a random pronounceable word), so
that a never-seen proper noun inside a harmful frame still reads as harmful, and inside a benign
frame as benign. Every pair (harmful family, benign family) shares its frames on purpose.

The word tables are JSON files in ``tables/`` (:func:`load_table`); the order of their entries is
part of the recipe, since every draw is an index into them.
"""

from __future__ import annotations

import json
import random
import re
from functools import cache
from importlib import resources


@cache
def load_table(name: str) -> dict:
    """The word table ``tables/{name}.json`` of this package (parsed once; treat it as read-only)."""
    path = resources.files(__package__).joinpath("tables", f"{name}.json")
    if not path.is_file():
        known = sorted(p.name[: -len(".json")] for p in resources.files(__package__).joinpath("tables").iterdir()
                       if p.name.endswith(".json"))
        raise ValueError(f"name: no word table {name!r}; known: {known}")
    return json.loads(path.read_text(encoding="utf-8"))


_GRAMMAR = load_table("grammar")
SLOTS: dict[str, list[str]] = _GRAMMAR["slots"]
HARMFUL_FAMILIES: dict[str, list[str]] = _GRAMMAR["harmful_families"]
BENIGN_FAMILIES: dict[str, list[str]] = _GRAMMAR["benign_families"]
_SYL_A, _SYL_B = _GRAMMAR["name_syllables_first"], _GRAMMAR["name_syllables_last"]
_TITLE_WORDS = _GRAMMAR["title_words"]
_SLOT = re.compile(r"\{(\w+)\}")
_MAX_DEPTH = 6  # slots nest a few levels deep; past this an entry is used as drawn


def made_up_name(rng: random.Random, capital: bool = False) -> str:
    """A pronounceable non-word ("dexphozene", "Kelwick") for an unseen technical or proper name."""
    w = "".join(rng.choice(_SYL_A) for _ in range(rng.randint(1, 2))) + rng.choice(_SYL_B)
    return w.capitalize() if capital or rng.random() < 0.3 else w


def expand(template: str, rng: random.Random, slots: dict[str, list[str]] | None = None, depth: int = 0) -> str:
    """Fill every ``{slot}`` of ``template``, left to right, with one random entry of
    ``slots[slot]`` (default :data:`SLOTS`), itself expanded in turn; ``{name}``, ``{Name}`` and
    ``{Title}`` are made up (:func:`made_up_name`). One ``rng`` draw per slot, in template order."""
    table = SLOTS if slots is None else slots

    def one(m: re.Match) -> str:
        key = m.group(1)
        if key == "name":
            return made_up_name(rng)
        if key == "Name":
            return made_up_name(rng, capital=True)
        if key == "Title":
            return " ".join(rng.sample(_TITLE_WORDS, rng.randint(1, 3)))
        if key not in table:
            raise KeyError(f"template slot {{{key}}} has no word list (template: {template!r})")
        entry = rng.choice(table[key])
        return expand(entry, rng, table, depth + 1) if depth < _MAX_DEPTH else entry

    return _SLOT.sub(one, template)


def _instance(families: dict[str, list[str]], rng: random.Random) -> str:
    family = rng.choice(list(families))
    text = expand(rng.choice(families[family]), rng)
    text = re.sub(r"\s+", " ", text).strip()
    return text[0].upper() + text[1:]


def harmful_family_instruction(rng: random.Random) -> str:
    """One harmful request from the specialist families (cyber, CBRN, graphic, insults, crime tips,
    disinformation, copyright, dangerous persuasion, staged accidents, weapon modification, attack
    targets)."""
    return _instance(HARMFUL_FAMILIES, rng)


def benign_family_instruction(rng: random.Random) -> str:
    """One benign request in the same frames as :func:`harmful_family_instruction`."""
    return _instance(BENIGN_FAMILIES, rng)
