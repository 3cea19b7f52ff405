"""Benchmarks as a feature: ``saesteer bench ops`` and ``saesteer bench generate``.

* :mod:`.harness`  -- the one timing harness (CUDA events + L2 flush on GPU, warm-up + repeats +
  LLC flush on CPU; median, p20, p80) and the measured floors (copy bandwidth, matmul rate)
* :mod:`.shapes`   -- shape presets (Gemma Scope / Llama Scope widths) and random SAEs
* :mod:`.ops`      -- op x backend x shape cases, beside sae-lens's own path
* :mod:`.generate` -- ``model.generate`` throughput unsteered, steered, and with a full-SAE hook
* :mod:`.report`, :mod:`.plots` -- terminal table, JSON, CSV, PNG
* the ``saesteer bench`` subcommands are :mod:`saesteer.cli.bench`

The pytest-benchmark suite in ``benchmarks/test_bench_suite.py`` builds its cases with
:func:`saesteer.bench.ops.build_case`, so ``make bench`` and the CLI time the same calls.
"""
