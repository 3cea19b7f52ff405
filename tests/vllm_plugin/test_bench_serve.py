"""``saesteer bench serve`` on the organism through vLLM: every (variant, concurrency) row is timed,
saesteer's per-request edit generates the same tokens as the whole SAE with the same edit, and the
edit changes the output."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (make venv-vllm; make test-vllm)")

from saesteer.cli import main  # noqa: E402


def test_bench_serve_organism(tmp_path, capsys):
    js, png, md = tmp_path / "s.json", tmp_path / "s.png", tmp_path / "s.md"
    rc = main(["bench", "serve", "--concurrency", "1,3", "--prompt-len", "6", "--new-tokens", "4",
               "--features", "32", "--rounds", "2", "--gpu-memory-utilization", "0.2",
               "--json", str(js), "--plot", str(png), "--markdown", str(md)])
    assert rc == 0
    assert "decode tok/s" in capsys.readouterr().out
    data = json.loads(js.read_text())
    rows = data["rows"]
    assert [(r["variant"], r["concurrency"]) for r in rows] == [
        (v, c) for c in (1, 3) for v in ("none", "saesteer", "full-sae", "when", "inspect")
    ]
    for r in rows:
        assert r["prefill_tok_s"] > 0 and r["decode_tok_s"] > 0 and r["total_tok_s"] > 0
        assert r["generate_p20_ms"] <= r["generate_p80_ms"]
        assert r["decode_vs_none"] > 0 and r["device_name"] == data["meta"]["device_name"]
        assert 0 < r["edit_ms"] < r["step_ms"]  # the worker's decode step, and the edit ops' part of it
    for r in rows:
        if r["variant"] == "saesteer":
            assert r["agree_full_sae"] == 1.0  # the error-preserving edit = the full SAE's edit
            assert r["changed_vs_none"] > 0  # and the clamp takes effect
    meta = data["meta"]
    assert meta["sae"] == "jumprelu" and len(meta["features"]) == 32 and meta["vllm"]
    assert meta["engine"]["enable_prefix_caching"] is False and meta["engine"]["max_num_seqs"] == 3
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| decode tok/s |" in md.read_text()
