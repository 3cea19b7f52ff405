"""Prompt files: errors name the file and the 1-based line of a malformed JSONL row."""

from __future__ import annotations

import pytest

from saesteer.refusal.data import load_prompts


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    p = tmp_path / "prompts.jsonl"
    # line 3 is blank (skipped, still counted), line 4 is broken
    p.write_text('{"prompt": "a"}\n{"prompt": "b"}\n\n{"prompt": c}\n{"prompt": "d"}\n')
    with pytest.raises(ValueError, match=r"prompts\.jsonl: line 4 is not valid JSON \(Expecting value at column 12\)"):
        load_prompts(p)


def test_good_jsonl_still_loads_with_blank_lines(tmp_path):
    p = tmp_path / "ok.jsonl"
    p.write_text('{"prompt": "a"}\n\n"b"\n{"instruction": "c"}\n')
    assert load_prompts(p) == ["a", "b", "c"]
    assert load_prompts(p, limit=2) == ["a", "b"]
