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


def test_newlines_and_unicode_line_separators_inside_cells_and_strings_are_kept(tmp_path):
    # csv: a quoted cell keeps its newline, and U+2028 / U+0085 inside a cell split nothing
    c = tmp_path / "p.csv"
    c.write_bytes('prompt\n"line one\nline two"\n"x\u2028y"\nz\x85w\r\n'.encode())
    assert load_prompts(c) == ["line one\nline two", "x\u2028y", "z\x85w"]
    # jsonl: json.dumps(ensure_ascii=False) writes U+2028 raw; CRLF line ends are fine
    j = tmp_path / "p.jsonl"
    j.write_bytes('{"prompt": "a"}\r\n{"prompt": "bad\u2028here"}\n"c\x85d"\n'.encode())
    assert load_prompts(j) == ["a", "bad\u2028here", "c\x85d"]


def test_a_json_object_is_read_only_when_it_holds_one_list(tmp_path):
    one = tmp_path / "one.json"
    one.write_text('{"meta": 1, "prompts": ["a", "b"]}')
    assert load_prompts(one) == ["a", "b"]
    two = tmp_path / "two.json"
    two.write_text('{"harmless": ["a"], "harmful": ["b"]}')
    with pytest.raises(ValueError, match=r"two\.json: .* holds 2: 'harmless', 'harmful'"):
        load_prompts(two)


def test_limit_must_be_positive(tmp_path):
    p = tmp_path / "p.json"
    p.write_text('["a", "b", "c"]')
    assert load_prompts(p, limit=1) == ["a"] and load_prompts(p) == ["a", "b", "c"]
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="limit: expected an integer >= 1"):
            load_prompts(p, limit=bad)


def test_a_custom_template_keeps_its_other_braces():
    from saesteer.refusal.jailbreak import wrap

    assert wrap(["do x "], 'JSON: {"task": "{instruction}"}') == ['JSON: {"task": "do x"}']
    with pytest.raises(ValueError, match="template: expected a name"):
        wrap(["x"], "no field {here}")


@pytest.mark.parametrize("layout", ["json", "jsonl", "csv", "rows"])
def test_alpaca_rows_with_an_input_are_left_out_in_every_layout(tmp_path, layout):
    # Arditi et al. keep the Alpaca rows whose input is empty: "Summarize this text." without its
    # text is another request. An input of whitespace only counts as empty.
    import csv
    import json

    from saesteer.refusal.data import has_alpaca_input, prompts_from_rows

    rows = [{"instruction": "Name a color.", "input": "", "output": "Red."},
            {"instruction": "Summarize this text.", "input": "The cat sat.", "output": "A cat sat."},
            {"instruction": "Give a tip.", "input": "  ", "output": "Sleep."},
            {"instruction": "Translate it to French.", "input": "Hello", "output": "Bonjour"}]
    assert [has_alpaca_input(r) for r in rows] == [False, True, False, True]
    want = ["Name a color.", "Give a tip."]
    if layout == "rows":  # a HuggingFace dataset's rows
        assert prompts_from_rows(rows) == want and prompts_from_rows(rows, field="instruction") == want
        return
    p = tmp_path / f"alpaca.{layout}"
    if layout == "json":
        p.write_text(json.dumps(rows))
    elif layout == "jsonl":
        p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        with open(p, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["instruction", "input", "output"])
            w.writeheader()
            w.writerows(rows)
    assert load_prompts(p) == want and load_prompts(p, field="instruction") == want
    assert load_prompts(p, limit=1) == want[:1]
    # Other fields of such a row are read as they are: only the instruction depends on the input.
    assert load_prompts(p, field="output") == ["Red.", "A cat sat.", "Sleep.", "Bonjour"]
    only = tmp_path / "only.json"
    only.write_text(json.dumps(rows[1:2]))
    with pytest.raises(ValueError, match="holds no prompts .*non-empty input"):
        load_prompts(only)
