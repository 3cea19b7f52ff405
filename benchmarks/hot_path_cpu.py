"""The CPU steer hot path: per-call Python overhead, and ``ops.steer`` against the plain-torch subset.

    python benchmarks/hot_path_cpu.py [--threads 1] [--rounds 40] [--clock thread|wall]

1. **Overhead.** Each wrapper (``ops.steer`` with an SAE and with its kernel view,
   ``SAESteerer.apply``, ``ops.trigger_score``) against the compiled op it calls, at a shape where
   the kernel is cheap (T=8, d_in 64, d_sae 256, |S| 32). Blocks of 200 calls of the op and of the
   wrapper alternate; the overhead is the median over rounds of the difference of the two blocks'
   per-call times. Alternating matters: a wrapper timed alone runs with its data in cache, one
   interleaved with the op pays the cache misses a forward hook pays.
2. **Gemma Scope 16k** (d_in 2304, d_sae 16384, fp32 jumprelu, T=8, |S|=32 clamped to 5.0):
   ``ops.steer``, the op alone, and the plain-torch subset of benchmarks/bench_ops_cpu.py (the |S|
   encoder columns and decoder rows gathered once, outside the timed call; then addmm, relu, the
   jump, addmm), alternating in the same way; medians of per-call times per round.

``--clock thread`` (the default with one thread) times the calling thread's CPU time, which other
processes on a shared machine disturb less than wall time; with several threads only wall time
counts the other threads' work. On a loaded machine a several-thread run waits on descheduled
threads (per-call medians of milliseconds); ``chrt -f 1 python benchmarks/hot_path_cpu.py --threads 2``
(root) runs it at real-time priority for its few seconds, and the ratios of one run stay comparable.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from dataclasses import replace

import torch

import saesteer
from saesteer import SAE, Intervention, ops
from saesteer.bench.ops import SAECache
from saesteer.bench.shapes import PRESETS
from saesteer.steering import SAESteerer


def blocks(fns, rounds: int, n: int, clock):
    """Per round, the per-call time (us) of each fn over a block of n calls; fns alternate."""
    for fn in fns:
        for _ in range(max(10, n // 4)):
            fn()
    out = [[] for _ in fns]
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            t0 = clock()
            for _ in range(n):
                fn()
            out[i].append((clock() - t0) / n / 1e3)
    return out


def overhead(rounds: int, clock) -> None:
    torch.manual_seed(0)
    d_in, d_sae, T, S = 64, 256, 8, 32
    sae = SAE(architecture="jumprelu", W_enc=torch.randn(d_in, d_sae) / 8, W_dec=torch.randn(d_sae, d_in) / 8,
              b_enc=torch.zeros(d_sae), threshold=torch.full((d_sae,), 0.05))
    feats = list(range(0, 2 * S, 2))
    iv = Intervention(feats, "clamp", 5.0)
    x = torch.randn(T, d_in)
    view = sae.packed()
    fe, va = iv.tensors("cpu")
    W_enc_T, W_dec, b_dec, params, arch, norm, apply_b_dec, k = view.native_args()
    steer_op = lambda: torch.ops.saesteer.steer.default(x, W_enc_T, W_dec, b_dec, params, arch, norm, apply_b_dec, k, fe, 2, va, None)  # noqa: E731
    w = torch.ones(S)
    trig_op = lambda: torch.ops.saesteer.trigger_score.default(x, W_enc_T, b_dec, params, arch, norm, apply_b_dec, k, fe, w)  # noqa: E731
    st = SAESteerer(sae)
    plan = st.plan([iv])
    print("| call | op alone us | call us | overhead us |")
    print("|---|---:|---:|---:|")
    for name, base, call in (
        ("ops.steer(x, sae, iv)", steer_op, lambda: ops.steer(x, sae, iv)),
        ("ops.steer(x, sae.packed(), iv)", steer_op, lambda: ops.steer(x, view, iv)),
        ("SAESteerer.apply(x, plan)", steer_op, lambda: st.apply(x, plan)),
        ("ops.trigger_score(x, sae, features)", trig_op, lambda: ops.trigger_score(x, sae, feats)),
    ):
        ta, tb = blocks([base, call], rounds, 200, clock)
        diff = statistics.median(b - a for a, b in zip(ta, tb))
        print(f"| `{name}` | {statistics.median(ta):.2f} | {statistics.median(tb):.2f} | {diff:+.2f} |", flush=True)


def gemma(rounds: int, clock) -> None:
    shape = replace(PRESETS["gemma2-2b-16k"], tokens=8, features=32)
    _, sae = SAECache(seed=0, with_sae_lens=False).get(shape, torch.float32, torch.device("cpu"))
    g = torch.Generator().manual_seed(1)
    iv = Intervention(torch.randperm(shape.d_sae, generator=g)[: shape.features].sort().values.tolist(), "clamp", 5.0)
    x = torch.randn(shape.tokens, shape.d_in, generator=g)
    feats, vals = iv.tensors("cpu")
    W_enc_S = sae.W_enc_T[feats].t().contiguous()
    W_dec_S = sae.W_dec[feats].contiguous()
    p = sae.feature_params[:, feats]
    bias, thr, b_dec = p[0].contiguous(), p[1].contiguous(), sae.b_dec

    def subset():
        pre = torch.addmm(bias, x - b_dec, W_enc_S)
        f = pre.relu_().mul_(pre > thr)
        return torch.addmm(x, vals - f, W_dec_S)

    args = ops.native_args(sae)
    fns = {
        "ops.steer": lambda: ops.steer(x, sae, iv),
        "op alone": lambda: torch.ops.saesteer.steer.default(x, *args, feats, iv.mode_id, vals, None),
        "torch-subset": subset,
    }
    torch.testing.assert_close(fns["ops.steer"](), subset(), atol=1e-4, rtol=1e-4)
    times = blocks(list(fns.values()), rounds, 20, clock)
    med = {name: statistics.median(t) for name, t in zip(fns, times)}
    print(f"\nGemma Scope 16k, T=8, |S|=32: " + ", ".join(f"{k} {v:.1f} us" for k, v in med.items()))
    print(f"torch-subset / ops.steer = {med['torch-subset'] / med['ops.steer']:.2f}x, "
          f"torch-subset / op alone = {med['torch-subset'] / med['op alone']:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--clock", choices=("thread", "wall"), default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    clock_name = a.clock or ("thread" if a.threads == 1 else "wall")
    clock = time.thread_time_ns if clock_name == "thread" else time.perf_counter_ns
    print(f"saesteer {saesteer.__version__}, torch {torch.__version__}, Python {platform.python_version()}, "
          f"{platform.processor() or platform.machine()}, torch threads {a.threads}, clock {clock_name}\n")
    overhead(a.rounds, clock)
    gemma(a.rounds, clock)


if __name__ == "__main__":
    main()
