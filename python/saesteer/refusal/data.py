"""Prompt sets: JSON / JSONL / CSV files or a HuggingFace dataset name, and the shipped sets."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Sequence

from .turns import Prompt, as_prompt

__all__ = ["load_prompts", "shipped_prompts", "prompts_from_rows", "has_alpaca_input", "jsonl_rows", "read_json_rows", "PROMPT_FIELDS", "TURN_FIELDS"]

#: Fields read when no field is named: the text fields first, then the conversation fields.
PROMPT_FIELDS = ("instruction", "prompt")
TURN_FIELDS = ("messages", "conversation", "turns")
_FIELDS = PROMPT_FIELDS + TURN_FIELDS


def _json_cell(v, where: str):
    """A CSV cell: text, or the conversation it holds as a JSON list. A cell opening with ``[{``,
    ``["`` or ``[]`` must parse; other text starting with ``[`` ("[INST] ...") stays text."""
    t = v.lstrip() if isinstance(v, str) else ""
    if not (t.startswith("[") and t[1:].lstrip()[:1] in ("{", '"', "]")):
        return v
    try:
        return json.loads(t)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: the cell opens like a JSON list of turns but is not valid JSON ({e.msg} at column {e.colno})") from None


def prompts_from_rows(rows: Sequence, field: str | None = None, source: str = "rows", *, json_cells: bool = False) -> list[Prompt]:
    """The prompt of each row: a string, a conversation (a list of turns, :mod:`.turns`), or an
    object whose ``field`` holds either (default: the first of ``instruction``, ``prompt``,
    ``messages``, ``conversation``, ``turns`` it has). ``json_cells``: string cells that hold a JSON
    list are conversations (CSV). Rows of a HuggingFace dataset are objects, so a column of lists of
    turns works the same. Raises ``ValueError`` naming ``source``, the row and the field."""
    out: list[Prompt] = []
    for n, r in enumerate(rows):
        where = f"{source}: row {n}"
        if isinstance(r, (str, list, tuple)):
            out.append(as_prompt(r, where))
            continue
        if not isinstance(r, dict):
            raise ValueError(f"{where} is a {type(r).__name__}, expected a string, a list of turns or an object with a text field")
        keys = (field,) if field else _FIELDS
        for k in keys:
            v = _json_cell(r[k], f"{where} field {k!r}") if json_cells and k in r else r.get(k)
            if isinstance(v, (str, list, tuple)):
                if k == "instruction" and has_alpaca_input(r):
                    break  # the instruction is about its input, which a lone prompt would drop
                out.append(as_prompt(v, f"{where} field {k!r}"))
                break
            if field and k in r:
                raise ValueError(f"{where} field {k!r} is a {type(v).__name__}; expected a string or a list of turns")
        else:
            if "role" in r and "content" in r:
                raise ValueError(f"{where} is one chat turn; a conversation is one row: a list of turns, or an object "
                                 f"whose {' / '.join(map(repr, TURN_FIELDS))} field is a list of turns")
            want = f"{field!r}" if field else f"of {', '.join(map(repr, _FIELDS))}"
            raise ValueError(f"{where} has no field {want} (fields: {sorted(r)[:8]}); pass --field NAME")
    return out


def has_alpaca_input(row: dict) -> bool:
    """True for an Alpaca-style row (``instruction`` / ``input`` / ``output``) whose ``input`` is not
    empty: its instruction refers to that input ("Summarize this text."), so as a prompt on its own
    it is another request. :func:`prompts_from_rows` leaves such rows out, as Arditi et al. filter
    Alpaca to the rows without an input."""
    v = row.get("input")
    return isinstance(v, str) and bool(v.strip())


def jsonl_rows(text: str, path: Path) -> list:
    """The rows of a JSONL file; a malformed line is named by the file and its 1-based line number."""
    rows = []
    # Lines end at "\n" only: JSON text may hold U+2028, U+0085 and the like raw, which splitlines() splits at.
    for n, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: line {n} is not valid JSON ({e.msg} at column {e.colno})") from None
    return rows


def csv_rows(path: Path, header: bool = True) -> list:
    """The rows of a CSV file (dicts by its header, else lists), read as the csv module reads files:
    a quoted cell keeps its newlines, and only the CSV line ends split rows."""
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f) if header else csv.reader(f))


def read_json_rows(path: Path, what: str) -> list:
    """The rows of a .jsonl file, or the JSON list of any other file; errors name the file."""
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".jsonl":
        return jsonl_rows(text, path)
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(rows, list):
        raise ValueError(f"{path}: expected a list of {what}")
    return rows


def load_prompts(source: str | Path, field: str | None = None, limit: int | None = None, split: str = "train") -> list[Prompt]:
    """Load prompts from a .json (list), .jsonl, .csv file, or a HuggingFace dataset name.

    A prompt is a string (one user turn) or a conversation: a list of turns in the HuggingFace chat
    format, ``[{"role": "system" | "user" | "assistant", "content": str}, ...]`` ending with a user
    turn, or a plain list of strings taken as alternating user / assistant turns starting with the
    user (:mod:`.turns`; conversations come back as lists of ``{"role", "content"}`` dicts).

    Each row (a JSON list item, a JSONL line, a CSV row, a dataset row) is a prompt, or an object
    whose ``field`` holds one (default: the first of ``instruction``, ``prompt``, ``messages``,
    ``conversation``, ``turns`` it has). In a CSV file a cell holding a JSON list of turns is a
    conversation. Raises ``ValueError`` for an empty set, rows without the field, or a malformed
    conversation (unknown role, empty, last turn not the user's, content not a string), naming the
    source, the row and the field.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit: expected an integer >= 1 or None, got {limit!r}")
    p = Path(source)
    if p.is_file():
        suffix = p.suffix.lower()
        text = p.read_text(encoding="utf-8")
        if suffix == ".jsonl":
            rows = jsonl_rows(text, p)
        elif suffix == ".csv":
            rows = csv_rows(p)
        else:
            try:
                rows = json.loads(text)
            except json.JSONDecodeError as e:
                raise ValueError(f"{p}: not valid JSON ({e}); expected a list of objects, or use .jsonl/.csv") from None
            if isinstance(rows, dict):  # an object holding the list: only when there is one list to take
                lists = [k for k, v in rows.items() if isinstance(v, list)]
                if len(lists) != 1:
                    raise ValueError(f"{p}: expected a JSON list of prompts, or an object holding one list"
                                     + (f" (this one holds {len(lists)}: {', '.join(map(repr, lists))})" if lists else ""))
                rows = rows[lists[0]]
        prompts = prompts_from_rows(rows, field, str(p), json_cells=suffix == ".csv")
    elif p.suffix.lower() in (".json", ".jsonl", ".csv") or p.exists():
        raise FileNotFoundError(f"prompts: {str(p)!r} is not a file")
    else:
        try:
            import datasets  # type: ignore
        except ImportError:
            raise FileNotFoundError(
                f"prompts: {str(source)!r} is not a file, and loading it as a HuggingFace dataset needs `pip install datasets`"
            ) from None
        ds = datasets.load_dataset(str(source), split=split)
        prompts = prompts_from_rows(list(ds), field, str(source))
    if not prompts:
        raise ValueError(f"prompts: {source} holds no prompts (Alpaca rows with a non-empty input are left out)")
    return prompts[:limit] if limit is not None else prompts


def shipped_prompts(kind: str) -> list[str]:
    """The small prompt sets shipped with the package (written by the project): harmful|harmless."""
    if kind not in ("harmful", "harmless"):
        raise ValueError(f"kind: expected 'harmful' or 'harmless', got {kind!r}")
    p = Path(__file__).resolve().parents[1] / "organism" / "prompts" / f"{kind}.json"
    return load_prompts(p)
