"""The fused ops (saesteer.ops) on every available backend against saesteer.reference.

Backends: "cpu" (csrc/cpu), "torch" (the reference itself), and "triton" when it is registered for
CPU tensors (TRITON_INTERPRET=1). Shapes are small and odd on purpose: d_in = 37, d_sae = 1001 (no
tile or vector width divides them), T in {1, 97}, |S| in {0, 1, 7, d_sae}.
"""

from __future__ import annotations

import functools

import pytest
import torch

import saesteer
from helpers import ARCH_CONFIGS, assert_close_dtype, make_sae
from saesteer import Intervention, ops, reference

D_IN, D_SAE = 37, 1001
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
ARCHS = list(ARCH_CONFIGS)
MODES = {"ablate": None, "scale": 2.5, "clamp": 1.5, "add": -0.7}
CPU = torch.device("cpu")


def backends(op: str) -> list:
    """The backends that run ``op`` on CPU tensors. Triton does so only in the interpreter
    (TRITON_INTERPRET=1), where this file's sweep takes ~25 min: those cases are marked slow
    (tests/ops/test_triton.py is the interpreter's own, faster sweep)."""
    avail = ops.available_backends(CPU, op)
    return [
        pytest.param(b, marks=pytest.mark.slow) if b == "triton" else b
        for b in ("cpu", "torch", "triton")
        if b in avail
    ]


needs_native = pytest.mark.skipif(
    "cpu" not in ops.available_backends(CPU, "steer"), reason="saesteer._C (the cpu backend) is not built"
)


@functools.lru_cache(maxsize=None)
def sae_for(arch: str, dtype: torch.dtype) -> saesteer.SAE:
    return make_sae(arch, d_in=D_IN, d_sae=D_SAE, seed=1).to(dtype=dtype)


def bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bits of a float tensor (torch.equal alone says -0.0 == +0.0)."""
    return t.view({4: torch.int32, 2: torch.int16}[t.element_size()])


def feature_set(size: int, seed: int = 0) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(D_SAE, generator=g)[:size].tolist()


def intervention(feats: list[int], mode: str, seed: int = 0) -> Intervention:
    if mode == "ablate":
        return Intervention(feats, "ablate")
    g = torch.Generator().manual_seed(seed)
    v = MODES[mode] + 0.5 * torch.randn(len(feats), generator=g)  # one value per feature
    return Intervention(feats, mode, v)


# ------------------------------------------------------------------------------------------------
# steer
# ------------------------------------------------------------------------------------------------
# (T, |S| values) of the steer sweep: one token, and a prime T with |S| from empty to every feature.
STEER_CASES = ((1, (1, 7)), (97, (0, 1, 7, D_SAE)))


@functools.lru_cache(maxsize=None)
def steer_case(arch: str, dtype: torch.dtype, T: int, size: int, mode: str):
    """``(x, intervention, reference output)``, shared by every backend's test."""
    g = torch.Generator().manual_seed(T * 7919 + size)
    x = torch.randn(T, D_IN, generator=g).to(dtype)
    iv = intervention(feature_set(size, seed=size), mode, seed=T)
    return x, iv, reference.steer(x, sae_for(arch, dtype), iv)


@pytest.mark.parametrize("backend", backends("steer"))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("arch", ARCHS)
def test_steer_matches_reference(arch, dtype, backend):
    sae = sae_for(arch, dtype)
    for T, sizes in STEER_CASES:
        for size in sizes:
            for mode in MODES:
                x, iv, expected = steer_case(arch, dtype, T, size, mode)
                y = ops.steer(x, sae, iv, backend=backend)
                assert y.dtype == dtype and y.shape == x.shape
                assert_close_dtype(y, expected, dtype)


@pytest.mark.parametrize("backend", backends("steer"))
@pytest.mark.parametrize("arch", ["jumprelu", "topk", "standard_layer_norm"])
def test_steer_non_contiguous_and_batched(arch, backend):
    sae = sae_for(arch, torch.float32)
    iv = intervention(feature_set(7), "clamp")
    transposed = torch.randn(D_IN, 97).t()  # [97, d_in], strides (1, 97)
    sliced = torch.randn(97, D_IN + 11)[:, 5 : 5 + D_IN]
    for x in (transposed, sliced):
        assert not x.is_contiguous()
        assert_close_dtype(ops.steer(x, sae, iv, backend=backend), reference.steer(x.contiguous(), sae, iv), x.dtype)
    xb = torch.randn(3, 5, D_IN)
    mask = torch.rand(3, 5) > 0.4
    y = ops.steer(xb, sae, iv, token_mask=mask, backend=backend)
    assert y.shape == xb.shape
    assert_close_dtype(y, reference.steer(xb, sae, iv, token_mask=mask), torch.float32)
    assert torch.equal(y[~mask], xb[~mask])


@pytest.fixture(params=[2, 3], ids=lambda n: f"{n}threads")
def threads(request):
    """torch's (and so the kernels') thread count for the test."""
    n = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(n)


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("arch", ["gated", "jumprelu_const_norm"])
def test_steer_few_tokens_many_features(arch, dtype, threads):
    # 1-16 tokens x |S| * d_in >= 2^17 with several threads: the cpu kernel splits the tokens' x',
    # then the encoder rows (|S| not a multiple of the 3-row tile or of the thread count), then the
    # output columns (d_in = 257: one 256-column chunk and a 1-column one) across the threads.
    sae = make_sae(arch, d_in=257, d_sae=1001, seed=4).to(dtype=dtype)
    for T, size in ((1, 600), (3, 1001), (5, 301), (8, 32), (8, 1001), (13, 517), (16, 260)):
        x = torch.randn(T, 257, generator=torch.Generator().manual_seed(T)).to(dtype)
        for mode in ("ablate", "clamp"):
            iv = intervention(feature_set(size, seed=T), mode)
            y = ops.steer(x, sae, iv, backend="cpu")
            assert_close_dtype(y, reference.steer(x, sae, iv), dtype)
            mask = torch.tensor([False] + [True] * (T - 1))
            ym = ops.steer(x, sae, iv, token_mask=mask, backend="cpu")
            assert torch.equal(bits(ym[0]), bits(x[0]))
            assert_close_dtype(ym, reference.steer(x, sae, iv, token_mask=mask), dtype)


@pytest.mark.parametrize("backend", backends("steer"))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("arch", ["standard", "jumprelu", "gated", "topk_rescale", "jumprelu_const_norm"])
def test_steer_noop_and_masked_tokens_are_bit_exact(arch, dtype, backend):
    sae = sae_for(arch, dtype)
    x = torch.randn(2, 13, D_IN).to(dtype)
    x[0, 0, :5] = -0.0  # x + 0.0 would turn these into +0.0
    feats = feature_set(7)
    for iv in (Intervention(feats, "scale", 1.0), Intervention(feats, "add", 0.0), Intervention([], "ablate")):
        y = ops.steer(x, sae, iv, backend=backend)
        assert torch.equal(bits(y), bits(x)) and y.data_ptr() != x.data_ptr(), iv
    mask = torch.zeros(2, 13, dtype=torch.bool)
    mask[1, 3:9] = True
    y = ops.steer(x, sae, Intervention(feats, "clamp", 4.0), token_mask=mask, backend=backend)
    assert torch.equal(bits(y[~mask]), bits(x[~mask]))
    assert not torch.equal(y[mask], x[mask])  # clamping 7 features to 4.0 changes every token
    none = torch.zeros_like(mask)
    assert torch.equal(ops.steer(x, sae, Intervention(feats, "clamp", 4.0), token_mask=none, backend=backend), x)


# ------------------------------------------------------------------------------------------------
# steer_rows
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", backends("steer_rows"))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("arch", ARCHS)
def test_steer_rows_matches_reference(arch, dtype, backend):
    sae = sae_for(arch, dtype)
    R, T = 5, 7
    x = torch.randn(R, T, D_IN).to(dtype)
    mask = torch.rand(R, T) > 0.3
    for size in (1, 7):
        feats = feature_set(size, seed=3)
        for mode in MODES:
            if mode == "ablate":
                vals = (torch.rand(R, size) > 0.5).float()
                vals[0] = 0.0  # row 0 ablates nothing: it must come back bit for bit
            else:
                vals = MODES[mode] + torch.randn(R, size)
            for m in (None, mask):
                y = ops.steer_rows(x, sae, feats, vals, mode, token_mask=m, backend=backend)
                assert y.shape == x.shape and y.dtype == dtype
                assert_close_dtype(y, reference.steer_rows(x, sae, feats, vals, mode, token_mask=m), dtype)
                if mode == "ablate":
                    assert torch.equal(y[0], x[0])
                if m is not None:
                    assert torch.equal(y[~m], x[~m])


@pytest.mark.parametrize("backend", backends("steer_rows"))
def test_steer_rows_equals_per_row_steer(backend):
    # One call over R rows == R calls of steer, each with that row's intervention.
    sae = sae_for("gated", torch.float32)
    feats = feature_set(7, seed=5)
    vals = torch.randn(4, 7)
    x = torch.randn(4, 9, D_IN)
    y = ops.steer_rows(x, sae, feats, vals, "clamp", backend=backend)
    for r in range(4):
        yr = ops.steer(x[r], sae, Intervention(feats, "clamp", vals[r]), backend=backend)
        assert_close_dtype(y[r], yr, torch.float32)


# ------------------------------------------------------------------------------------------------
# encode_topk / decode_sparse
# ------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def encode_case(arch: str, dtype: torch.dtype):
    """``(x [97, d_in], reference activations f [97, d_sae] in fp32)``, shared by every backend's test."""
    x = torch.randn(97, D_IN, generator=torch.Generator().manual_seed(11)).to(dtype)
    return x, reference.encode(x, sae_for(arch, dtype)).float()


@pytest.mark.parametrize("backend", backends("encode_topk"))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("arch", ARCHS)
def test_encode_topk_matches_reference(arch, dtype, backend):
    sae = sae_for(arch, dtype)
    x, f = encode_case(arch, dtype)
    for k in (1, 16, D_SAE):
        v, i = ops.encode_topk(x, sae, k, backend=backend)
        assert v.shape == i.shape == (97, k) and i.dtype == torch.int64 and v.dtype == dtype
        # reference.encode_topk is torch.topk of reference.encode: values against it, indices by what
        # they point at (the order among equal activations, zeros above all, is arbitrary).
        assert_close_dtype(v, f.topk(k, dim=-1).values, dtype)
        assert_close_dtype(torch.gather(f, -1, i), v.float(), dtype)
        assert (v[..., :-1] >= v[..., 1:]).all(), "values must be descending"
        assert (i.sort(-1).values.diff(dim=-1) > 0).all(), "indices must be distinct"


# Shapes at the edges of the CPU encode's blocking (csrc/cpu/kernels.cpp, encode_blocking): tiles of
# 4 tokens x 3 features; for more than 8 tokens d_in in chunks of at most 1024 columns; blocks of nb
# features; the features cut in parts (4 per thread) with a top-k heap each, merged. (T, d_in, d_sae):
ENCODE_EDGE_CASES = (
    (1, 37, 1001),  # a 1-token tile; d_in not a multiple of the 8-float vector (the scalar tail)
    (6, 64, 10),  # token tiles of 4 + 2 (the few-token loop order); d_sae = 3 tiles of 3 + 1
    (9, 40, 101),  # 4 + 4 + 1 tokens (the many-token loop order)
    (70, 1500, 1001),  # chunks of 752 + 748 columns (the second with a tail); blocks of 63 features,
    # 8 parts of 2 blocks, the last 63 + 56 features (18 tiles + 2)
)


@pytest.fixture
def two_threads():
    """torch's (and so the kernels') thread count set to 2 for the test: the features are split in parts."""
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(n)


def assert_ties_to_lower_index(v: torch.Tensor, i: torch.Tensor):
    tied = v[..., :-1] == v[..., 1:]
    assert (i[..., :-1] < i[..., 1:])[tied].all(), "equal values must come lower feature id first"


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("arch", ["jumprelu", "gated", "topk"])
@pytest.mark.parametrize("T,d_in,d_sae", ENCODE_EDGE_CASES)
def test_encode_topk_cpu_blocking_edges(T, d_in, d_sae, arch, dtype, two_threads):
    sae = make_sae(arch, d_in=d_in, d_sae=d_sae, seed=5).to(dtype=dtype)
    x = torch.randn(T, d_in, generator=torch.Generator().manual_seed(T)).to(dtype)
    f = reference.encode(x, sae).float()
    # k = d_sae is more than the active features (zeros included; for the topk SAE, k > its own k)
    for k in sorted({1, min(16, d_sae), d_sae}):
        v, i = ops.encode_topk(x, sae, k, backend="cpu")
        assert v.shape == i.shape == (T, k)
        assert_close_dtype(v, f.topk(k, dim=-1).values, dtype)
        assert_close_dtype(torch.gather(f, -1, i), v.float(), dtype)
        assert (v[..., :-1] >= v[..., 1:]).all() and (i.sort(-1).values.diff(dim=-1) > 0).all()
        if dtype == torch.float32:  # bf16 outputs: distinct fp32 activations may round to one value
            assert_ties_to_lower_index(v, i)


@needs_native
def test_encode_topk_cpu_ties_go_to_the_lower_index(two_threads):
    # Features with the same encoder column and parameters have bit-equal activations wherever they
    # are computed: in one tile (3, 4, 5), another block (200), other parts, whichever thread takes
    # them (700, 1000), so their order comes from the merge of the parts' heaps.
    from helpers import make_sae_lens_sae

    lens = make_sae_lens_sae("jumprelu", d_in=1001, d_sae=1001, seed=6)
    dup = [3, 4, 5, 200, 700, 1000]
    with torch.no_grad():
        lens.b_enc[3] = 10.0  # far above every other feature's activation
        for j in dup[1:]:
            lens.W_enc[:, j] = lens.W_enc[:, 3]
            lens.b_enc[j] = lens.b_enc[3]
            lens.threshold[j] = lens.threshold[3]
    sae = saesteer.SAE.from_sae_lens(lens)
    x = torch.randn(70, 1001, generator=torch.Generator().manual_seed(0))
    v, i = ops.encode_topk(x, sae, 8, backend="cpu")
    assert (i[:, :6] == torch.tensor(dup)).all()
    assert (v[:, :6] == v[:, :1]).all() and (v[:, 6] < v[:, 5]).all()
    assert_close_dtype(v, reference.encode_topk(x, sae, 8)[0], torch.float32)


def test_encode_topk_leading_dims_and_reference_api():
    sae = sae_for("jumprelu", torch.float32)
    x = torch.randn(2, 5, D_IN)
    for backend in ("cpu", "torch"):
        if backend not in ops.available_backends(CPU, "encode_topk"):
            continue
        v, i = ops.encode_topk(x, sae, 9, backend=backend)
        rv, _ = reference.encode_topk(x, sae, 9)
        assert v.shape == i.shape == (2, 5, 9)
        assert_close_dtype(v, rv, torch.float32)


@pytest.mark.parametrize("backend", backends("decode_sparse"))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("arch", ["jumprelu", "topk_rescale"])
def test_decode_sparse_matches_reference(arch, dtype, backend):
    sae = sae_for(arch, dtype)
    g = torch.Generator().manual_seed(0)
    for n, k in ((1, 1), (97, 7), (3, D_SAE)):
        idx = torch.stack([torch.randperm(D_SAE, generator=g)[:k] for _ in range(n)])
        vals = torch.randn(n, k, generator=g).relu().to(dtype)  # zeros included
        out = ops.decode_sparse(vals, idx, sae, backend=backend)
        assert out.shape == (n, D_IN) and out.dtype == dtype
        assert_close_dtype(out, reference.decode_sparse(vals, idx, sae), dtype)


@pytest.mark.parametrize("backend", backends("encode_topk"))
def test_encode_topk_then_decode_sparse_reconstructs(backend):
    # A topk SAE's own k activations decode to its reconstruction (no run-time norm here).
    sae = sae_for("topk_rescale", torch.float32)
    x = torch.randn(11, D_IN)
    v, i = ops.encode_topk(x, sae, sae.k, backend=backend)
    assert_close_dtype(ops.decode_sparse(v, i, sae, backend=backend), sae(x), torch.float32)


# ------------------------------------------------------------------------------------------------
# the op layer: opcheck, torch.compile, bad input
# ------------------------------------------------------------------------------------------------
def _op_args(sae: saesteer.SAE):
    return ops.native_args(sae)


@needs_native
@pytest.mark.parametrize("arch", ["jumprelu", "topk"])
def test_opcheck(arch):
    sae = make_sae(arch, d_in=D_IN, d_sae=67, seed=2)
    W_enc_T, W_dec, b_dec, params, a, norm, apply_b_dec, k = _op_args(sae)
    x = torch.randn(5, D_IN)
    feats = torch.tensor([0, 3, 66])
    vals = torch.tensor([1.0, 2.0, 3.0])
    mask = torch.tensor([True, False, True, True, False])
    torch.library.opcheck(
        torch.ops.saesteer.steer.default, (x, W_enc_T, W_dec, b_dec, params, a, norm, apply_b_dec, k, feats, 2, vals, mask)
    )
    xr = torch.randn(2, 3, D_IN)
    torch.library.opcheck(
        torch.ops.saesteer.steer_rows.default,
        (xr, W_enc_T, W_dec, b_dec, params, a, norm, apply_b_dec, k, feats, 0, torch.ones(2, 3), None),
    )
    torch.library.opcheck(torch.ops.saesteer.encode_topk.default, (x, W_enc_T, b_dec, params, a, norm, apply_b_dec, k, 4))
    v, i = torch.ops.saesteer.encode_topk(x, W_enc_T, b_dec, params, a, norm, apply_b_dec, k, 4)
    torch.library.opcheck(torch.ops.saesteer.decode_sparse.default, (v, i, W_dec, b_dec, params))


@needs_native
@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
def test_torch_compile_fullgraph(warm):
    # The wrapper traces without a graph break; the op enters the graph through its fake kernel
    # (ops.py). "warm": an eager call filled the wrapper's per-SAE cache first (dynamo cannot compare
    # its version-counter key). aot_eager: fake tensors and AOT tracing, without inductor's C++
    # compile of the surrounding pointwise ops.
    sae = make_sae("jumprelu", d_in=D_IN, d_sae=67, seed=3)
    iv = Intervention([0, 5, 66], "clamp", 2.0)
    x = torch.randn(9, D_IN)
    if warm:
        ops.steer(x, sae, iv, backend="cpu")

    def block(h):
        return ops.steer(torch.tanh(h) * 2, sae, iv, backend="cpu") + 1

    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    assert_close_dtype(compiled(x), reference.steer(torch.tanh(x) * 2, sae, iv) + 1, torch.float32)


@needs_native
def test_bad_input_raises_and_writes_nothing():
    sae = sae_for("jumprelu", torch.float32)
    W_enc_T, W_dec, b_dec, params, a, norm, apply_b_dec, k = _op_args(sae)
    iv = Intervention([1, 2], "clamp", 1.0)
    feats, vals = iv.tensors(CPU)
    x = torch.randn(4, D_IN)
    x0 = x.clone()

    def op_steer(x, feats=feats, vals=vals, mask=None):
        return torch.ops.saesteer.steer(x, W_enc_T, W_dec, b_dec, params, a, norm, apply_b_dec, k, feats, 2, vals, mask)

    # wrong last dim
    with pytest.raises(ValueError, match=r"x: expected last dimension d_in=37"):
        ops.steer(x[:, :36], sae, iv, backend="cpu")
    with pytest.raises(RuntimeError, match=r"x: expected last dimension d_in=37"):
        op_steer(x[:, :36])
    # mismatched devices (no second device here: meta)
    with pytest.raises(ValueError, match=r"x: on meta but the SAE is on cpu"):
        ops.steer(x.to("meta"), sae, iv, backend="cpu")
    with pytest.raises(ValueError, match=r"token_mask: on meta"):
        ops.steer(x, sae, iv, token_mask=torch.ones(4, dtype=torch.bool, device="meta"), backend="cpu")
    # integer x
    with pytest.raises(ValueError, match=r"x: expected float32, bfloat16 or float16"):
        ops.steer(x.long(), sae, iv, backend="cpu")
    with pytest.raises(RuntimeError, match=r"x: expected float32, bfloat16 or float16"):
        op_steer(x.int())
    # feature ids and values
    with pytest.raises(RuntimeError, match=r"features: id 1001 is outside \[0, d_sae=1001\)"):
        op_steer(x, feats=torch.tensor([0, 1001]))
    with pytest.raises(RuntimeError, match=r"values: expected shape \[2\]"):
        op_steer(x, vals=torch.ones(3))
    with pytest.raises(RuntimeError, match=r"token_mask: expected shape \[4\]"):
        op_steer(x, mask=torch.ones(5, dtype=torch.bool))
    # k out of range
    for bad_k in (0, D_SAE + 1):
        with pytest.raises(ValueError, match=r"k: expected an int in \[1, d_sae=1001\]"):
            ops.encode_topk(x, sae, bad_k, backend="cpu")
        with pytest.raises(RuntimeError, match=r"k: expected an int in \[1, d_sae=1001\]"):
            torch.ops.saesteer.encode_topk(x, W_enc_T, b_dec, params, a, norm, apply_b_dec, k, bad_k)
    # steer_rows with the wrong number of rows
    xr = torch.randn(3, 2, D_IN)
    xr0 = xr.clone()
    with pytest.raises(ValueError, match=r"values: expected shape \[R=3, \|S\|=2\]"):
        ops.steer_rows(xr, sae, [1, 2], torch.ones(4, 2), "ablate", backend="cpu")
    with pytest.raises(RuntimeError, match=r"values: expected shape \[3, 2\]"):
        torch.ops.saesteer.steer_rows(xr, W_enc_T, W_dec, b_dec, params, a, norm, apply_b_dec, k, feats, 0,
                                      torch.ones(4, 2), None)
    # decode_sparse indices
    with pytest.raises(RuntimeError, match=r"indices: id -1 is outside"):
        torch.ops.saesteer.decode_sparse(torch.ones(1, 2), torch.tensor([[0, -1]]), W_dec, b_dec, params)
    assert torch.equal(x, x0) and torch.equal(xr, xr0), "an input was written"
    assert torch.equal(_op_args(sae)[0], W_enc_T)


def test_named_backend_and_fallback():
    with pytest.raises(ValueError, match=r"backend: expected one of"):
        ops.resolve_backend("steer", CPU, "tpu")
    with pytest.raises(RuntimeError, match=r"backend: 'cuda'"):
        ops.resolve_backend("steer", CPU, "cuda")
    assert ops.resolve_backend("steer", CPU, "auto") == ops.available_backends(CPU, "steer")[0]


def test_float64_runs_the_reference():
    sae = make_sae("jumprelu", d_in=D_IN, d_sae=D_SAE, seed=1).to(dtype=torch.float64)
    x = torch.randn(3, D_IN, dtype=torch.float64)
    iv = intervention(feature_set(7), "clamp")
    y = ops.steer(x, sae, iv)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, reference.steer(x, sae, iv), **{"atol": 0, "rtol": 0})
