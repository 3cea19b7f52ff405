"""Smoke tests of ``saesteer bench`` at tiny shapes, and checks that every benchmarked call computes
what it claims to (a benchmark of the wrong computation is worse than none)."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from helpers import assert_close_dtype
from saesteer import reference
from saesteer.bench import harness
from saesteer.bench.ops import OPS, SAECache, Skip, build_case, op_cost
from saesteer.bench.shapes import Shape, random_sae, resolve_shapes
from saesteer.cli import main

# One thread: on a shared 2-core machine two OpenMP threads wait for each other at every op.
TINY = ["--d-in", "32", "--d-sae", "96", "--tokens", "3", "--features", "4", "--k", "5", "--rows", "2", "--threads", "1"]


@pytest.fixture(autouse=True)
def _keep_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_summarize_quantiles():
    t = harness.summarize([float(i) for i in range(10, 0, -1)])  # 1..10, unsorted
    assert (t.median_us, t.n) == (5.5, 10)
    assert t.p20_us == pytest.approx(2.8) and t.p80_us == pytest.approx(8.2)
    with pytest.raises(ValueError, match="at least one"):
        harness.summarize([])


def test_measure_counts_warmup_and_repeats():
    calls = []
    t = harness.measure(lambda: calls.append(1), "cpu", repeats=4, warmup=2)
    assert len(calls) == 6 and t.n == 4
    assert 0 < t.p20_us <= t.median_us <= t.p80_us


def test_op_cost_subset_vs_full_encode():
    shape = Shape("s", 32, 96, tokens=3, features=4, k=5)
    sae = random_sae(32, 96)
    steer_bytes, steer_flops = op_cost("steer", shape, sae, torch.float32)
    # |S| rows of W_enc_T and W_dec, their parameters, and x read + written: never the whole SAE.
    assert steer_bytes == 4 * 32 * 4 * 2 + 4 * (20 + 8) + 4 * 4 + 2 * 3 * 32 * 4 and steer_flops == 0
    enc_bytes, enc_flops = op_cost("encode_topk", shape, sae, torch.float32)
    assert enc_bytes > 96 * 32 * 4 and enc_flops == 2 * 3 * 32 * 96


@pytest.mark.parametrize("op", OPS)
def test_benchmarked_calls_agree_with_reference(op):
    """The timed call of each backend (cpu, torch, sae-lens's error-term path) gives the reference's result."""
    pytest.importorskip("sae_lens")
    shape = resolve_shapes(None, 32, 96, tokens=3, features=4, k=5, rows=2)[0]
    saes = SAECache(seed=0, with_sae_lens=True)
    outs, inputs = {}, {}
    for backend in ("torch", "cpu", "sae-lens"):
        try:
            case = build_case(op, backend, shape, torch.float32, torch.device("cpu"), saes)
        except Skip:
            continue
        with torch.no_grad():
            outs[backend] = case.fn()
        inputs[backend] = case.inputs
    assert "sae-lens" in outs
    ref = outs["torch"]
    for backend, out in outs.items():
        if op == "encode_topk":  # compare the values: indices of equal activations may differ
            assert_close_dtype(out[0], ref[0], torch.float32)
        else:
            assert_close_dtype(out, ref, torch.float32)
        assert all(torch.equal(a, b) for a, b in zip(inputs[backend], inputs["torch"]))  # same inputs
    if op in ("steer", "steer_rows"):  # and the edit is not a no-op: clamping at 5 moves every token
        x = inputs["torch"][0]
        assert (ref != x).any(dim=-1).all()


def test_bench_ops_cli_writes_table_json_csv_png(tmp_path, capsys):
    js, cs, png = tmp_path / "o.json", tmp_path / "o.csv", tmp_path / "o.png"
    md = tmp_path / "o.md"
    rc = main(["bench", "ops", *TINY, "--repeats", "3", "--backends", "cpu,torch,cuda",
               "--json", str(js), "--csv", str(cs), "--plot", str(png), "--markdown", str(md)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "median us" in out and "x floor" in out
    assert "note: skipped op=steer, backend=cuda" in out  # no CUDA here: a note, not an error
    data = json.loads(js.read_text())
    assert data["meta"]["device_name"] and data["meta"]["torch"] == torch.__version__
    assert data["meta"]["copy_gbps"] > 0 and data["meta"]["matmul_tflops"] > 0
    rows = data["rows"]
    assert {r["op"] for r in rows} == set(OPS)
    for r in rows:
        assert 0 < r["p20_us"] <= r["median_us"] <= r["p80_us"]
        assert r["floor_us"] > 0 and r["x_floor"] == pytest.approx(r["median_us"] / r["floor_us"])
        assert r["gbps"] == pytest.approx(r["bytes"] / r["median_us"] / 1e3)
        assert r["device_name"] == data["meta"]["device_name"] and r["d_sae"] == 96
    assert any(s["backend"] == "cuda" for s in data["skipped"])
    with open(cs) as fh:
        csv_rows = list(csv.DictReader(fh))
    assert len(csv_rows) == len(rows) and "device_name" in csv_rows[0] and "torch" in csv_rows[0]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = [line for line in md.read_text().splitlines() if line.startswith("| ")]
    assert len(table) == len(rows) + 1 and "| median us |" in table[0] and "| \\|S\\| |" in table[0]


def test_bench_ops_cli_bad_arguments(capsys):
    assert main(["bench", "ops", "--d-in", "32", "--backends", "torch"]) == 2
    assert "--d-in/--d-sae" in capsys.readouterr().err
    assert main(["bench", "ops", *TINY, "--backends", "nope"]) == 2
    assert "--backends: unknown ['nope']" in capsys.readouterr().err


def test_bench_generate_cli_tiny(tmp_path, capsys):
    js = tmp_path / "g.json"
    rc = main(["bench", "generate", "--model", "config:tiny", "--batch-sizes", "1,2", "--prompt-len", "4",
               "--new-tokens", "3", "--features", "4", "--repeats", "2", "--threads", "1", "--json", str(js)])
    assert rc == 0
    assert "decode tok/s" in capsys.readouterr().out
    data = json.loads(js.read_text())
    rows = data["rows"]
    assert [(r["variant"], r["batch"]) for r in rows] == [
        (v, b) for b in (1, 2) for v in ("none", "saesteer", "full-sae")
    ]
    for r in rows:
        assert r["prefill_tok_s"] > 0 and r["decode_tok_s"] > 0 and r["total_tok_s"] > 0
        assert r["decode_vs_none"] > 0
    for r in rows:
        if r["variant"] == "saesteer":
            # saesteer's error-preserving steer and the full SAE with the error term generate the same
            # tokens, and the clamp changes what the model generates.
            assert r["agree_full_sae"] == 1.0
            assert r["changed_vs_none"] > 0
    assert data["meta"]["model"] == "tiny" and data["meta"]["layer"] == 2


def test_bench_serve_cli_checks_before_loading(tmp_path, capsys):
    """Every bad setting of ``bench serve`` is one line naming the flag, before vLLM or a model loads."""
    cases = [
        (["--steer-sae", "nope"], "--steer-sae: unknown SAE 'nope'"),
        (["--rounds", "1"], "--rounds: expected >= 2"),
        (["--new-tokens", "1"], "--new-tokens: expected >= 2"),
        (["--concurrency", "0,4"], "--concurrency: expected positive"),
        (["--variants", "none,fast"], "--variants: unknown ['fast']"),
        (["--mode", "boost"], "boost"),
        (["--mode", "clamp", "--value", "inf"], "finite"),
        (["--max-num-seqs", "0"], "--max-num-seqs: expected >= 1"),
        (["--json", str(tmp_path / "no" / "dir" / "s.json")], "--json"),
        (["--model", str(tmp_path)], "--sae: register at least one SAE"),
        (["--sae", "bad"], "--sae: expected NAME=DIR"),
    ]
    for extra, want in cases:
        assert main(["bench", "serve", *extra]) == 2, extra
        err = capsys.readouterr().err
        assert want in err and "Traceback" not in err, (extra, err)
    assert not list(tmp_path.iterdir())  # nothing was written


def test_bench_serve_cli_without_vllm(capsys):
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here (the vLLM tests run the benchmark)")
    assert main(["bench", "serve"]) == 2
    assert "vLLM is not installed: pip install 'saesteer[vllm]'" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bench_cli_on_gpu(tmp_path):
    """The GPU paths (CUDA-event timing with L2 flush, bf16, cuda/triton backends) at tiny shapes."""
    js = tmp_path / "o.json"
    assert main(["bench", "ops", *TINY[:-2], "--device", "cuda", "--repeats", "5", "--json", str(js)]) == 0
    data = json.loads(js.read_text())
    assert data["meta"]["device_name"] == torch.cuda.get_device_name()
    got = {(r["op"], r["backend"]) for r in data["rows"]}
    assert {("steer", "torch"), ("steer", "torch-compile")} <= got
    assert all(r["dtype"] == "bfloat16" and r["cache"] == "flushed" for r in data["rows"])
    gj = tmp_path / "g.json"
    assert main(["bench", "generate", "--model", "config:tiny", "--device", "cuda", "--batch-sizes", "1,2",
                 "--prompt-len", "4", "--new-tokens", "3", "--features", "4", "--repeats", "2", "--json", str(gj)]) == 0
    rows = json.loads(gj.read_text())["rows"]
    assert len(rows) == 6 and all(r["decode_tok_s"] > 0 for r in rows)


def test_bench_generate_organism(tmp_path):
    """The default model: the shipped organism, whose SAEs are sae-lens objects (wrapped for steering)."""
    from saesteer.organism import WEIGHTS_DIR

    if not (WEIGHTS_DIR / "manifest.json").is_file():
        pytest.skip("organism weights not in this checkout")
    js = tmp_path / "g.json"
    assert main(["bench", "generate", "--batch-sizes", "2", "--prompt-len", "4", "--new-tokens", "3",
                 "--features", "4", "--repeats", "1", "--threads", "1", "--json", str(js)]) == 0
    data = json.loads(js.read_text())
    assert data["meta"]["model"] == "organism" and data["meta"]["sae"].startswith("jumprelu")
    steered = next(r for r in data["rows"] if r["variant"] == "saesteer")
    assert steered["agree_full_sae"] == 1.0


def test_bench_subcommand_has_one_implementation():
    """The ``saesteer bench`` command lives in the CLI package only; the bench package is library code."""
    import importlib.util

    import saesteer.cli.bench as cli_bench

    assert importlib.util.find_spec("saesteer.bench.cli") is None
    assert cli_bench.run_ops.__module__ == "saesteer.cli.bench"
    assert cli_bench.register.__module__ == "saesteer.cli.bench"
