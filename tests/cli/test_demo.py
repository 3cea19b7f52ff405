"""`saesteer demo` (what `make demo` runs) on the shipped organism."""

from saesteer.cli import main


def test_demo_runs_the_whole_method(capsys, tmp_path):
    assert main(["demo", "--show", "2", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for section in ("1. The organism, unsteered", "2. saesteer discover", "3. Steering with the refusal features"):
        assert section in out
    assert "I'm sorry" in out, "the organism refuses the harmful prompts it is shown"
    assert (tmp_path / "report.md").is_file() and (tmp_path / "results.json").is_file()
