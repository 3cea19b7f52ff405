"""The Triton backend against saesteer.reference, under TRITON_INTERPRET=1 on CPU tensors.

Small odd shapes (the interpreter is slow): d_in 37/64, d_sae 101/257, T 1/13 (and 70 for the
prefill tiling), |S| 0/1/7. Run with ``make test-triton``.
"""

import os

import pytest
import torch

import saesteer
from saesteer import Intervention, ops, reference
from helpers import assert_close_dtype, make_sae

pytestmark = [
    pytest.mark.triton_interpret,
    pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="needs TRITON_INTERPRET=1 (CPU tensors)"),
]

B = "triton"


def _x(shape, seed, dtype=torch.float32):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)
    x.view(-1)[::7] = -0.0  # a -0.0 in every row: an untouched token must keep it bit for bit
    return x


def _iv(mode, feats):
    return Intervention(feats, mode) if mode == "ablate" else Intervention(feats, mode, [1.5 - 0.5 * j for j in range(len(feats))])


# (arch config, d_in, d_sae, tokens shape, features, mode)
STEER_CASES = [
    ("standard", 37, 101, (13,), [0, 5, 17, 40, 63, 88, 100], "ablate"),
    ("jumprelu", 64, 257, (2, 13), [3, 200, 256], "clamp"),
    ("gated", 37, 257, (1,), [7], "scale"),
    ("topk", 64, 101, (13,), [1, 2, 3, 50, 60, 70, 99], "ablate"),
    ("topk_rescale", 37, 257, (1, 13), [11, 250], "add"),
    ("standard_layer_norm", 64, 101, (13,), [4, 9, 90], "clamp"),
    ("jumprelu_const_norm", 37, 101, (1,), [0, 1, 2, 3, 4, 5, 6], "add"),
    ("jumprelu", 37, 101, (70,), [8, 9, 10, 30, 31, 32, 33], "ablate"),  # N >= 64: the tl.dot tiling
]


@pytest.mark.parametrize("arch,d_in,d_sae,lead,feats,mode", STEER_CASES, ids=[f"{c[0]}-{c[5]}-{len(c[4])}" for c in STEER_CASES])
def test_steer_matches_reference(arch, d_in, d_sae, lead, feats, mode):
    sae = make_sae(arch, d_in, d_sae, seed=3)
    x = _x((*lead, d_in), seed=4)
    mask = torch.rand(lead, generator=torch.Generator().manual_seed(5)) > 0.3
    iv = _iv(mode, feats)
    for m in (None, mask):
        y = ops.steer(x, sae, iv, token_mask=m, backend=B)
        ref = reference.steer(x, sae, iv, m)
        assert y.shape == x.shape and y.dtype == x.dtype
        assert_close_dtype(y, ref, torch.float32)
        assert not torch.equal(y, x), "the edit changed nothing: the test would not see a broken kernel"
    off = ~mask
    assert torch.equal(y[off].view(torch.int32), x[off].view(torch.int32)), "masked-out tokens must be x bit for bit"


def test_steer_no_op_is_bit_exact():
    sae = make_sae("jumprelu", 37, 101, seed=1)
    x = _x((13, 37), seed=2)
    for iv in (Intervention([1, 2, 3], "scale", 1.0), Intervention([4, 5], "add", 0.0), Intervention([], "ablate")):
        y = ops.steer(x, sae, iv, backend=B)
        assert torch.equal(y.view(torch.int32), x.view(torch.int32))
    y = ops.steer(x, sae, Intervention([1, 2, 3], "clamp", 5.0), token_mask=torch.zeros(13, dtype=torch.bool), backend=B)
    assert torch.equal(y.view(torch.int32), x.view(torch.int32))


def test_steer_bfloat16_and_strided_input():
    sae = make_sae("gated", 64, 101, seed=6).to(torch.bfloat16)
    x = _x((13, 128), seed=7, dtype=torch.bfloat16)[:, ::2]  # non-unit column stride
    iv = Intervention([0, 10, 20, 30, 40, 50, 60], "clamp", 3.0)
    y = ops.steer(x, sae, iv, backend=B)
    assert y.dtype == torch.bfloat16
    assert_close_dtype(y, reference.steer(x, sae, iv), torch.bfloat16)


@pytest.mark.parametrize("mode", ["ablate", "clamp"])
def test_steer_rows_matches_reference(mode):
    sae = make_sae("standard_layer_norm", 37, 101, seed=8)
    R, T, feats = 3, 5, [2, 30, 31, 70, 99]
    x = _x((R, T, 37), seed=9)
    g = torch.Generator().manual_seed(10)
    vals = (torch.rand(R, len(feats), generator=g) > 0.5).float() if mode == "ablate" else torch.randn(R, len(feats), generator=g)
    mask = torch.rand(R, T, generator=g) > 0.3
    y = ops.steer_rows(x, sae, feats, vals, mode, token_mask=mask, backend=B)
    assert_close_dtype(y, reference.steer_rows(x, sae, feats, vals, mode, mask), torch.float32)
    assert torch.equal(y[~mask].view(torch.int32), x[~mask].view(torch.int32))
    if mode == "ablate":  # a row with nothing ablated is untouched
        vals[1] = 0
        y = ops.steer_rows(x, sae, feats, vals, mode, backend=B)
        assert torch.equal(y[1].view(torch.int32), x[1].view(torch.int32))


def _check_topk(x, sae, k, v, i, dtype):
    """Tie-robust: values match the reference's sorted values, and each index holds its value."""
    rv, _ = reference.encode_topk(x, sae, k)
    assert v.shape == rv.shape and i.dtype == torch.int64
    assert_close_dtype(v, rv, dtype)
    dense = reference.encode(x, sae)
    assert_close_dtype(dense.gather(-1, i), v, dtype)
    assert (i.sort(-1).values.diff(dim=-1) > 0).all(), "indices within a row must be distinct"


@pytest.mark.parametrize(
    "arch,d_in,d_sae,lead,k",
    [
        ("standard", 37, 257, (13,), 7),
        ("jumprelu", 64, 101, (1,), 16),
        ("gated", 37, 101, (2, 13), 1),
        ("topk", 37, 257, (13,), 5),  # k < the SAE's k (8)
        ("topk_rescale", 64, 101, (13,), 12),  # k > the SAE's k: the tail is zeros
        ("jumprelu_const_norm", 37, 257, (13,), 257),  # k > 256: the dense fallback
    ],
)
def test_encode_topk_matches_reference(arch, d_in, d_sae, lead, k):
    sae = make_sae(arch, d_in, d_sae, seed=11)
    x = _x((*lead, d_in), seed=12)
    v, i = ops.encode_topk(x, sae, k, backend=B)
    assert v.shape == (*lead, k)
    _check_topk(x, sae, k, v, i, torch.float32)


def test_encode_topk_bfloat16():
    sae = make_sae("standard", 64, 257, seed=13).to(torch.bfloat16)
    x = _x((13, 64), seed=14, dtype=torch.bfloat16)
    v, i = ops.encode_topk(x, sae, 9, backend=B)
    assert v.dtype == torch.bfloat16
    _check_topk(x, sae, 9, v, i, torch.bfloat16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("arch", ["jumprelu", "topk_rescale"])
def test_decode_sparse_matches_reference(arch, dtype):
    sae = make_sae(arch, 37, 101, seed=15).to(dtype)
    g = torch.Generator().manual_seed(16)
    idx = torch.stack([torch.randperm(101, generator=g)[:19] for _ in range(13)])
    vals = torch.rand(13, 19, generator=g).to(dtype)
    out = ops.decode_sparse(vals, idx, sae, backend=B)
    assert out.dtype == dtype and out.shape == (13, 37)
    assert_close_dtype(out, reference.decode_sparse(vals, idx, sae), dtype)


# (arch config, d_in, d_sae, tokens shape, features, dtype): every architecture, both tilings
TRIGGER_CASES = [
    ("standard", 37, 101, (13,), [0, 5, 17, 40, 63, 88, 100], torch.float32),
    ("jumprelu", 64, 257, (2, 13), [3, 200, 256], torch.float32),
    ("gated", 37, 257, (1,), [7], torch.float32),
    ("topk", 64, 101, (13,), [1, 2, 3, 50, 60, 70, 99], torch.float32),
    ("topk_rescale", 37, 257, (70,), [11, 250], torch.float32),
    ("standard_layer_norm", 64, 101, (70,), list(range(0, 101, 3)), torch.float32),  # N >= 64, |S| > BLOCK_S
    ("jumprelu_const_norm", 37, 101, (1,), [0, 1, 2, 3, 4, 5, 6], torch.float32),
    ("jumprelu", 64, 101, (13,), [8, 9, 10, 30], torch.bfloat16),
]


@pytest.mark.parametrize("arch,d_in,d_sae,lead,feats,dtype", TRIGGER_CASES, ids=[f"{c[0]}-{len(c[4])}-{c[5]}" for c in TRIGGER_CASES])
def test_trigger_score_matches_reference(arch, d_in, d_sae, lead, feats, dtype):
    sae = make_sae(arch, d_in, d_sae, seed=3).to(dtype)
    x = _x((*lead, d_in), seed=4, dtype=dtype)
    w = torch.randn(len(feats), generator=torch.Generator().manual_seed(5))
    for wt in (None, w):
        s = ops.trigger_score(x, sae, feats, wt, backend=B)
        ref = reference.trigger_score(x, sae, feats, wt)
        assert s.shape == lead and s.dtype == torch.float32
        assert_close_dtype(s, ref, dtype, atol=tol_abs(dtype) * max(1.0, float(ref.abs().max())))
    assert (ref != 0).any(), "every score is 0: the test would not see a broken kernel"


def tol_abs(dtype):
    return {torch.float32: 1e-4, torch.bfloat16: 3e-2}[dtype]


def test_backend_registered_as_triton_ops():
    assert "triton" in ops.available_backends("cpu", "steer")
    if hasattr(torch.library, "triton_op"):
        assert hasattr(torch.ops.saesteer_triton, "steer")
        assert hasattr(torch.ops.saesteer_triton, "encode_topk")
        assert hasattr(torch.ops.saesteer_triton, "decode_sparse")
        assert hasattr(torch.ops.saesteer_triton, "trigger_score")
    assert saesteer.triton.supports(torch.device("cpu"))
