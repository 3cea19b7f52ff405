"""`saesteer demo` (what `make demo` runs) on the shipped organism."""

import saesteer.organism
from saesteer.cli import main


def test_demo_runs_the_whole_method(capsys, tmp_path, monkeypatch):
    loads = []
    real_load = saesteer.organism.load

    def counting_load(*args, **kwargs):
        loads.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(saesteer.organism, "load", counting_load)
    assert main(["demo", "--show", "2", "--out", str(tmp_path)]) == 0
    assert len(loads) == 1, f"the demo loads the organism once, not {len(loads)} times"
    out = capsys.readouterr().out
    for section in ("1. The organism, unsteered", "2. saesteer discover", "3. Steering with the refusal features"):
        assert section in out
    assert "I'm sorry" in out, "the organism refuses the harmful prompts it is shown"
    assert (tmp_path / "report.md").is_file() and (tmp_path / "results.json").is_file()
