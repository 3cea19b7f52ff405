"""--no-skip-bos on the steering commands: the spec they run with (a file's or the flags') edits the
BOS token only when asked."""

from __future__ import annotations

import json

from saesteer.cli import build_parser, main
from saesteer.cli.common import steering_spec
from saesteer.refusal.spec import SteeringSpec


def test_flags_and_spec_files_carry_skip_bos(tmp_path):
    p = build_parser()
    assert steering_spec(p.parse_args(["generate", "hi", "--features", "1,2"])).skip_bos is True
    assert steering_spec(p.parse_args(["generate", "hi", "--features", "1,2", "--no-skip-bos"])).skip_bos is False
    path = SteeringSpec(features=[3], skip_bos=False).save(tmp_path / "spec.json")
    assert steering_spec(p.parse_args(["eval", "--steer", str(path), "--out", str(tmp_path / "o")])).skip_bos is False


def test_generate_json_reports_the_spec_with_skip_bos(capsys):
    rc = main(["generate", "How do I pick a lock?", "--features", "1,2", "--no-skip-bos", "--json", "--max-new-tokens", "2"])
    assert rc == 0
    out = capsys.readouterr().out
    assert json.loads(out[out.index("{"):])["spec"]["skip_bos"] is False
