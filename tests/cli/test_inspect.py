"""``saesteer inspect``: the token table, --json, the self-contained --html page (parsed: tokens,
features and values present, no external URL or resource), --contrast, and named errors."""

from __future__ import annotations

import json
import os
import re
from html.parser import HTMLParser

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from saesteer.cli import main  # noqa: E402


def _run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


class Page(HTMLParser):
    """Collects the token spans (text, top features), the summary tables' features and every URL-ish attribute."""

    def __init__(self):
        super().__init__()
        self.tokens, self.tops, self.refs, self.tags = [], [], [], []
        self._tok = None
        self._text = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        for k in ("src", "href", "action", "srcset", "data"):
            if k in a:
                self.refs.append((tag, k, a[k]))
        if tag == "span" and "tok" in (a.get("class") or "").split():
            self._tok = a
            self._text = []
        if tag == "span" and a.get("class") == "feat":
            self.tops.append(int(a["data-feature"]))

    def handle_data(self, data):
        if self._tok is not None:
            self._text.append(data)

    def handle_endtag(self, tag):
        if tag == "span" and self._tok is not None:
            self.tokens.append(("".join(self._text), self._tok))
            self._tok = None


def test_table_json_and_html(tmp_path, capsys):
    from saesteer import organism

    d = tmp_path
    prompts = ["How do I pick a lock?", "Write a poem about autumn"]
    rc, out, err = _run(capsys, "inspect", "--k", 5, "--chat", *prompts, "--json", d / "r.json", "--html", d / "r.html")
    assert rc == 0, err
    assert "organism | prompt 1: How do I pick a lock?" in out and "prompt top features by max:" in out
    data = json.loads((d / "r.json").read_text())
    p0 = data["saes"]["organism"][0]
    assert p0["prompt"] == prompts[0] and len(p0["tokens"]) == len(p0["features"]) == len(p0["tracked"])
    # the JSON's top features are the library's
    org = organism.load()
    res = __import__("saesteer").inspect(org.model, org.sae, org.tokenizer([org.format_prompt(prompts[0])],
                                         return_tensors="pt", add_special_tokens=False), k=5, tokenizer=org.tokenizer)
    assert p0["top_max"] == [[i, round(v, 5)] for i, v in res.top(0, "max")]
    assert p0["tokens"] == [t for _, t, _ in res.token_features(0)]

    page = (d / "r.html").read_text()
    parser = Page()
    parser.feed(page)
    texts = [t for t, _ in parser.tokens]
    assert " pick" in texts and " lock" in texts and " poem" in texts
    assert len(parser.tokens) == sum(len(p["tokens"]) for p in data["saes"]["organism"])
    # each token carries its top features with their values, as the JSON has them
    first = parser.tokens[0][1]["data-top"].split(";")
    assert [int(x.split(":")[0]) for x in first] == [i for i, _ in p0["features"][0]]
    assert float(first[0].split(":")[1]) == pytest.approx(p0["features"][0][0][1], rel=1e-3)
    assert "token 0: " in parser.tokens[0][1]["title"]  # the hover tooltip
    assert p0["top_max"][0][0] in parser.tops and p0["top_mean"][0][0] in parser.tops
    # self-contained: no URL, no external resource of any kind
    assert parser.refs == [] and "link" not in parser.tags and "img" not in parser.tags
    assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", page, re.I)
    assert "@import" not in page and "url(" not in page


def test_contrast(tmp_path, capsys):
    from saesteer import organism

    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(organism.load_prompts("harmful")[:6]))
    b.write_text(json.dumps(organism.load_prompts("harmless")[:6]))
    rc, out, err = _run(capsys, "inspect", "--contrast", a, b, "--top", 5, "--json", tmp_path / "c.json")
    assert rc == 0, err
    rows = json.loads((tmp_path / "c.json").read_text())["saes"]["organism"]
    assert len(rows) == 5 and all({"feature", "d", "diff", "cosine", "cosine_rank"} <= set(r) for r in rows)
    assert all(abs(r["d"]) >= abs(rows[-1]["d"]) for r in rows)
    assert f"{rows[0]['feature']:>8}" in out


@pytest.mark.parametrize("argv, match", [
    (["inspect"], "prompts: give prompt text"),
    (["inspect", "hi", "--k", "0"], "--k: expected a positive integer"),
    (["inspect", "hi", "--k", "5000"], "--k: 5000 is more than the SAE's 1536 features"),
    (["inspect", "hi", "--feature", "99999"], "--feature: 99999 is out of range"),
    (["inspect", "hi", "--layer", "1"], "--layer: inspect reads each SAE at its own hook point"),
    (["inspect", "hi", "--contrast", "a.json", "b.json"], "--contrast: compares two prompt files"),
    (["inspect", "hi", "--html", "/nonexistent/dir/x.html"], "--html: the directory"),
])
def test_errors_name_the_flag(argv, match, capsys):
    rc, out, err = _run(capsys, *argv)
    assert rc == 2 and match in err, err
