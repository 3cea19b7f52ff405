"""``steer`` on the CPU at the Gemma Scope 16k shape (d_in 2304, d_sae 16384, fp32, JumpReLU).

    pytest benchmarks/bench_ops_cpu.py --benchmark-only [--benchmark-json FILE]

Four ways to compute the same error-preserving clamp of |S| features, T tokens:

* ``cpu``          -- ``saesteer.ops.steer(..., backend="cpu")``: the wrapper plus the fused kernel
                      (csrc/cpu/kernels.cpp); what a forward hook pays per call.
* ``cpu-op``       -- ``torch.ops.saesteer.steer`` with the arguments the wrapper passes: the kernel
                      and the dispatcher alone (the difference to ``cpu`` is the wrapper's overhead).
* ``torch-subset`` -- the best plain-torch computation: the |S| encoder columns and decoder rows
                      gathered once, contiguous, outside the timed call; then sub, addmm, relu,
                      gt/mul (the jump), sub, addmm: one op per step.
* ``sae-lens``     -- sae-lens's own steering path (``saesteer.bench.ops``): a JumpReLUSAE with
                      ``use_error_term=True`` and the edit in a ``hook_sae_acts_post`` hook: encode,
                      edit, decode, and a second clean encode + decode for the error term.

The cases come from :func:`saesteer.bench.ops.build_case`, as in ``saesteer bench ops``. Each
implementation's output is checked against :func:`saesteer.reference.steer` before it is timed.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

pytest.importorskip("pytest_benchmark")

from saesteer import ops, reference  # noqa: E402
from saesteer.bench.ops import SAECache, Skip, build_case  # noqa: E402
from saesteer.bench.shapes import PRESETS  # noqa: E402

CPU = torch.device("cpu")
SHAPE = PRESETS["gemma2-2b-16k"]
IMPLS = ("cpu", "cpu-op", "torch-subset", "sae-lens")


@pytest.fixture(scope="module")
def saes():
    return SAECache(seed=0, with_sae_lens=True)


def torch_subset(sae, x, iv):
    """The plain-torch subset steer (jumprelu, clamp), with everything input-independent hoisted."""
    feats, vals = iv.tensors(x.device)
    W_enc_S = sae.W_enc_T[feats].t().contiguous()  # [d_in, S]
    W_dec_S = sae.W_dec[feats].contiguous()  # [S, d_in]
    p = sae.feature_params[:, feats]
    bias, thr = p[0].contiguous(), p[1].contiguous()
    b_dec = sae.b_dec

    def call():
        pre = torch.addmm(bias, x - b_dec, W_enc_S)
        f = pre.relu_().mul_(pre > thr)  # relu(h) * (h > thr); thr >= 0
        return torch.addmm(x, vals - f, W_dec_S)

    return call


def cpu_op(sae, x, iv):
    feats, vals = iv.tensors(x.device)
    args = ops.native_args(sae)
    return lambda: torch.ops.saesteer.steer.default(x, *args, feats, iv.mode_id, vals, None)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("features", [1, 32])
@pytest.mark.parametrize("tokens", [1, 8, 64])
def test_steer_cpu(benchmark, saes, tokens, features, impl):
    shape = replace(SHAPE, tokens=tokens, features=features)
    benchmark.group = f"steer {SHAPE.name} T={tokens} |S|={features}"
    try:
        case = build_case("steer", "sae-lens" if impl == "sae-lens" else "cpu", shape, torch.float32, CPU, saes)
    except Skip as e:
        pytest.skip(str(e))
    _, sae = saes.get(shape, torch.float32, CPU)
    x = case.inputs[0]
    iv = case_intervention(case)
    fn = {"cpu": lambda: case.fn, "sae-lens": lambda: case.fn, "cpu-op": lambda: cpu_op(sae, x, iv),
          "torch-subset": lambda: torch_subset(sae, x, iv)}[impl]()
    with torch.no_grad():
        expected = reference.steer(x, sae, iv)
        torch.testing.assert_close(fn(), expected, atol=2e-4, rtol=2e-4)  # what is timed is right
        slow = impl == "sae-lens"
        benchmark.extra_info.update(d_in=SHAPE.d_in, d_sae=SHAPE.d_sae, threads=torch.get_num_threads())
        benchmark.pedantic(fn, rounds=7 if slow else 2000, warmup_rounds=1 if slow else 50, iterations=1)


def case_intervention(case):
    """The Intervention build_case timed (it is bound in case.fn; rebuild it from the same seed)."""
    from saesteer.bench.ops import _intervention

    return _intervention(case.shape, case.mode, 5.0, 0)
