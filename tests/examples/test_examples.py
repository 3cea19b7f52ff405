"""The shipped examples run as a user runs them, and do what they say."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str) -> str:
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "steer_generation.py"), *args],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_steer_generation_runs_on_the_organism_and_ablation_lowers_refusal():
    out = run("--max-new-tokens", "12")
    assert "no built-in organism" not in out
    rates = {m.group(1): int(m.group(2)) for m in re.finditer(r"^== (.+?): refusal rate (\d+)/4$", out, re.M)}
    assert set(rates) >= {"harmful, unsteered", "harmful, features ablated", "harmless, unsteered"}, out
    assert rates["harmful, unsteered"] >= 3
    assert rates["harmful, features ablated"] < rates["harmful, unsteered"]


def test_steer_generation_random_model_steers_the_token_ids():
    out = run("--random", "--max-new-tokens", "6")
    blocks = re.split(r"^== ", out, flags=re.M)[1:]
    rows = {b.splitlines()[0]: [ln.strip() for ln in b.splitlines()[1:] if ln.strip()] for b in blocks}
    unsteered = rows.pop("unsteered")
    assert len(unsteered) == 3 and len(rows) == 3
    ablate = next(v for k, v in rows.items() if k.startswith("ablate"))
    per_row = next(v for k, v in rows.items() if k.startswith("per row"))
    assert ablate != unsteered
    assert per_row[0] == unsteered[0]  # row 0 is unsteered in the per-row batch
    assert per_row[1] == ablate[1]  # row 1 gets the same ablation as the whole-batch run
