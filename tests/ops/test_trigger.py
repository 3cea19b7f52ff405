"""The trigger read (``trigger_score``): the reference against sae-lens, every backend against the
reference, and its argument checks.

score[...] = sum_j weights[j] * f_{features[j]}(x[...]), float32, with f sae-lens's ``encode``.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch

from helpers import ARCH_CONFIGS, assert_close_dtype, make_sae_lens_sae
from saesteer import SAE, ops, reference

D_IN, D_SAE = 37, 1001
ARCHS = list(ARCH_CONFIGS)
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
CPU = torch.device("cpu")


def backends() -> list:
    avail = ops.available_backends(CPU, "trigger_score")
    # Triton on CPU tensors is the interpreter: its own cases are in tests/ops/test_triton.py.
    return [b for b in ("cpu", "torch") if b in avail]


@functools.lru_cache(maxsize=None)
def pair(arch: str, dtype: torch.dtype):
    name, cfg = ARCH_CONFIGS[arch]
    ref = make_sae_lens_sae(name, D_IN, D_SAE, seed=2, dtype=dtype, **cfg)
    return ref, SAE.from_sae_lens(ref)


def features(size: int, seed: int = 0) -> list[int]:
    return torch.randperm(D_SAE, generator=torch.Generator().manual_seed(seed))[:size].tolist()


def weights(size: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(size, generator=torch.Generator().manual_seed(seed + 1))


# ------------------------------------------------------------------------------------------------
# the reference against sae-lens
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("arch", ARCHS)
def test_reference_equals_sae_lens_encode_indexed(arch, dtype):
    ref, sae = pair(arch, dtype)
    x = torch.randn(3, 13, D_IN, generator=torch.Generator().manual_seed(7)).to(dtype)
    for size in (1, 7, 64):
        feats, w = features(size, seed=size), weights(size, seed=size)
        for wt in (None, w):
            score = reference.trigger_score(x, sae, feats, wt)
            assert score.shape == (3, 13) and score.dtype == torch.float32
            f = ref.encode(x)[..., feats]
            expected = f.float().sum(-1) if wt is None else f.float() @ wt
            if dtype == torch.float32:
                assert_close_dtype(score, expected, torch.float32)
                continue
            # bf16: sae-lens rounds every intermediate to bf16, we accumulate in fp32. Our error against
            # the exact (fp64) encode of the same bf16 weights is at most 2x sae-lens's own (mean error:
            # a near-tie at a threshold or the top-k boundary may flip one feature either way).
            exact_f = copy.deepcopy(ref).to(torch.float64).encode(x.double())[..., feats]
            exact = exact_f.sum(-1) if wt is None else exact_f @ wt.double()
            err_ours = (score.double() - exact).abs().mean().item()
            err_theirs = (expected.double() - exact).abs().mean().item()
            assert err_ours <= 2 * err_theirs + 1e-3, (err_ours, err_theirs)


def test_reference_fires():
    """The test SAEs fire on a good share of features, so the scores above are not all zero."""
    _, sae = pair("jumprelu", torch.float32)
    x = torch.randn(50, D_IN, generator=torch.Generator().manual_seed(1))
    s = reference.trigger_score(x, sae, features(7))
    assert 0.2 < (s > 0).float().mean() <= 1.0


# ------------------------------------------------------------------------------------------------
# every backend against the reference
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("arch", ARCHS)
def test_trigger_score_matches_reference(arch, dtype, backend):
    _, sae = pair(arch, torch.float32)
    sae = copy.deepcopy(sae).to(dtype=dtype)
    for lead in ((1,), (97,), (2, 5)):
        x = torch.randn(*lead, D_IN, generator=torch.Generator().manual_seed(len(lead))).to(dtype)
        for size in (0, 1, 7, 300):
            feats, w = features(size, seed=size), weights(size)
            for wt in (None, w):
                s = ops.trigger_score(x, sae, feats, wt, backend=backend)
                assert s.shape == lead and s.dtype == torch.float32
                expected = reference.trigger_score(x, sae, feats, wt)
                # the score sums up to 300 activations: the tolerance scales with its magnitude
                assert_close_dtype(s, expected, dtype, atol=tol_sum(dtype, expected))


def tol_sum(dtype, expected):
    return {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 3e-3}[dtype] * max(1.0, float(expected.abs().max()))


@pytest.mark.parametrize("backend", backends())
def test_trigger_score_non_contiguous(backend):
    _, sae = pair("gated", torch.float32)
    feats, w = features(7), weights(7)
    for x in (torch.randn(D_IN, 33).t(), torch.randn(33, D_IN + 5)[:, 2 : 2 + D_IN]):
        assert not x.is_contiguous()
        s = ops.trigger_score(x, sae, feats, w, backend=backend)
        assert_close_dtype(s, reference.trigger_score(x.contiguous(), sae, feats, w), torch.float32)


def test_float64_runs_the_reference():
    _, sae = pair("jumprelu", torch.float32)
    x = torch.randn(4, D_IN, dtype=torch.float64)
    s = ops.trigger_score(x, sae, [1, 2, 3])
    assert s.dtype == torch.float32
    torch.testing.assert_close(s, reference.trigger_score(x, sae, [1, 2, 3]))


# ------------------------------------------------------------------------------------------------
# argument checks
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "feats,w,match",
    [
        ([1, 1], None, "features: duplicate"),
        ([-1], None, "features: feature ids must be >= 0"),
        ([D_SAE], None, r"features: ids \[1001\] are outside"),
        ([0.5], None, "features: expected integer"),
        ([1, 2], [1.0], r"weights: expected one weight per feature \(2\)"),
        ([1, 2], [1.0, float("nan")], "weights: values must be finite"),
        ([1, 2], "ab", "weights: expected"),
        ([1, 2], torch.ones(2, 2), "weights: expected one weight per feature"),
    ],
)
def test_bad_arguments_name_the_argument(feats, w, match):
    _, sae = pair("jumprelu", torch.float32)
    x = torch.randn(3, D_IN)
    for fn in (reference.trigger_score, ops.trigger_score):
        with pytest.raises(ValueError, match=match):
            fn(x, sae, feats, w)


def test_bad_x():
    _, sae = pair("jumprelu", torch.float32)
    with pytest.raises(ValueError, match="x: expected last dimension d_in=37"):
        ops.trigger_score(torch.randn(3, 5), sae, [1])
    with pytest.raises(TypeError, match="x: expected a torch.Tensor"):
        ops.trigger_score([1.0] * D_IN, sae, [1])
    with pytest.raises(ValueError, match="x: expected float32"):
        ops.trigger_score(torch.ones(3, D_IN, dtype=torch.int32), sae, [1])


def test_scalar_weight_broadcasts():
    _, sae = pair("standard", torch.float32)
    x = torch.randn(5, D_IN)
    torch.testing.assert_close(ops.trigger_score(x, sae, [3, 4], 2.0), 2 * ops.trigger_score(x, sae, [3, 4]))


def test_cached_tuples_are_found_by_identity_and_values_still_checked():
    # A condition's (features, weights) tuples: validated once, then found by identity. An equal
    # tuple of floats is another object and is still checked (and refused); lists and equal tuples
    # give the same scores.
    _, sae = pair("jumprelu", torch.float32)
    x = torch.randn(4, D_IN)
    feats, w = (3, 7, 11), (0.5, -1.0, 2.0)
    first = ops.trigger_score(x, sae, feats, w)
    assert ops._trigger_tensors(feats, w, D_SAE, x.device) is ops._trigger_tensors(feats, w, D_SAE, x.device)
    torch.testing.assert_close(ops.trigger_score(x, sae, feats, w), first)
    torch.testing.assert_close(ops.trigger_score(x, sae, list(feats), list(w)), first)
    torch.testing.assert_close(ops.trigger_score(x, sae, tuple(list(feats)), tuple(list(w))), first)
    with pytest.raises(ValueError, match="features: expected integer"):
        ops.trigger_score(x, sae, (3.0, 7.0, 11.0), w)
    with pytest.raises(ValueError, match="weights: values must be finite"):
        ops.trigger_score(x, sae, feats, (0.5, float("nan"), 2.0))
