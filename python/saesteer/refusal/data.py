"""Prompt sets: JSON / JSONL / CSV files or a HuggingFace dataset name, and the shipped sets."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Sequence

__all__ = ["load_prompts", "shipped_prompts", "jsonl_rows", "read_json_rows"]

_FIELDS = ("instruction", "prompt")


def _pick(rows: Sequence, field: str | None, source: str) -> list[str]:
    out = []
    for n, r in enumerate(rows):
        if isinstance(r, str):
            out.append(r)
            continue
        if not isinstance(r, dict):
            raise ValueError(f"{source}: row {n} is a {type(r).__name__}, expected an object with a text field")
        keys = (field,) if field else _FIELDS
        for k in keys:
            if k in r and isinstance(r[k], str):
                out.append(r[k])
                break
        else:
            want = f"field {field!r}" if field else f"a field {' or '.join(map(repr, _FIELDS))}"
            raise ValueError(f"{source}: row {n} has no {want} (fields: {sorted(r)[:8]}); pass --field NAME")
    return out


def jsonl_rows(text: str, path: Path) -> list:
    """The rows of a JSONL file; a malformed line is named by the file and its 1-based line number."""
    rows = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: line {n} is not valid JSON ({e.msg} at column {e.colno})") from None
    return rows


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


def load_prompts(source: str | Path, field: str | None = None, limit: int | None = None, split: str = "train") -> list[str]:
    """Load instructions from a .json (list), .jsonl, .csv file, or a HuggingFace dataset name.

    Each row is a string or an object whose ``field`` (default: ``instruction`` or ``prompt``) holds
    the text. Raises ``ValueError`` for an empty set or rows without the field, naming the source.
    """
    p = Path(source)
    if p.is_file():
        suffix = p.suffix.lower()
        text = p.read_text(encoding="utf-8")
        if suffix == ".jsonl":
            rows = jsonl_rows(text, p)
        elif suffix == ".csv":
            rows = list(csv.DictReader(text.splitlines()))
        else:
            try:
                rows = json.loads(text)
            except json.JSONDecodeError as e:
                raise ValueError(f"{p}: not valid JSON ({e}); expected a list of objects, or use .jsonl/.csv") from None
            if isinstance(rows, dict):
                rows = next((v for v in rows.values() if isinstance(v, list)), None)
                if rows is None:
                    raise ValueError(f"{p}: expected a JSON list of prompts")
        prompts = _pick(rows, field, str(p))
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
        prompts = _pick(list(ds), field, str(source))
    if not prompts:
        raise ValueError(f"prompts: {source} holds no prompts")
    return prompts[:limit] if limit else prompts


def shipped_prompts(kind: str) -> list[str]:
    """The small prompt sets shipped with the package (written by the project): harmful|harmless."""
    if kind not in ("harmful", "harmless"):
        raise ValueError(f"kind: expected 'harmful' or 'harmless', got {kind!r}")
    p = Path(__file__).resolve().parents[1] / "organism" / "prompts" / f"{kind}.json"
    return load_prompts(p)
