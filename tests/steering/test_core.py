"""The engine-neutral steering core on ``[N, d]`` hidden states with per-token assignments: every
token's result equals the reference steer of that token with its own intervention."""

from __future__ import annotations

import pytest
import torch
from helpers import ARCH_CONFIGS, assert_close_dtype, make_sae

from saesteer import Intervention, reference
from saesteer.steering import SAESteerer

pytestmark = pytest.mark.filterwarnings("ignore:saesteer. backend:RuntimeWarning")

D, D_SAE = 37, 101


def _expected(x, sae, ivs, rows, mask=None):
    """Token by token with the reference: the oracle of a per-token assignment."""
    out = x.clone()
    for n in range(x.shape[0]):
        r = int(rows[n])
        if r < 0 or ivs[r] is None or (mask is not None and not mask[n]):
            continue
        out[n] = reference.steer(x[n : n + 1], sae, ivs[r])[0]
    return out


def _interventions():
    return [
        Intervention([3, 17, 40], "ablate"),
        None,
        Intervention([5, 17], "clamp", [2.5, -1.0]),
        Intervention([5, 17], "clamp", 4.0),  # same features as row 2: one clamp group
        Intervention([8, 90], "clamp", 1.5),  # another clamp feature set: its own group
        Intervention([3, 60], "scale", [3.0, -2.0]),
        Intervention([1, 2, 3], "add", 0.75),
        Intervention([], "ablate"),
    ]


@pytest.mark.parametrize("arch", list(ARCH_CONFIGS))
@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_per_token_assignment_matches_reference(arch, backend):
    sae = make_sae(arch, D, D_SAE)
    ivs = _interventions()
    st = SAESteerer(sae, backend=backend)
    plan = st.plan(ivs)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(41, D, generator=g) * 2
    rows = torch.randint(-1, len(ivs), (41,), generator=g)
    y = st.apply(x, plan, rows=rows)
    assert_close_dtype(y, _expected(x, sae, ivs, rows))
    # unedited tokens are x bit for bit
    untouched = (rows == -1) | (rows == 1) | (rows == 7)
    assert torch.equal(y[untouched], x[untouched])
    assert not torch.equal(y, x)


def test_token_mask_and_single_plan():
    sae = make_sae("jumprelu", D, D_SAE)
    iv = Intervention([4, 9, 33], "clamp", 3.0)
    st = SAESteerer(sae)
    plan = st.plan([iv])
    x = torch.randn(13, D) * 2
    mask = torch.rand(13) > 0.4
    y = st.apply(x, plan, token_mask=mask)
    assert_close_dtype(y, reference.steer(x, sae, iv, mask))
    assert torch.equal(y[~mask], x[~mask])
    # the same plan with a row index per token: -1 rows stay as they are
    rows = torch.where(mask, 0, -1)
    assert_close_dtype(st.apply(x, plan, rows=rows), y)


@pytest.mark.parametrize("backend", ["auto", "torch"])
@pytest.mark.parametrize(
    "iv",
    [Intervention(list(range(0, 101, 3)), "ablate"), Intervention([2, 7, 30], "scale", -3.0),
     Intervention([2, 7, 30], "clamp", 5.0), Intervention([2, 7], "add", [1.0, -2.0])],
    ids=lambda iv: iv.mode,
)
def test_single_plan_with_a_row_per_token_every_mode(iv, backend):
    """One intervention given with a row index per token (what an engine with one steered request
    in its batch passes): each mode, ablate included, equals the reference on the rows it names."""
    sae = make_sae("jumprelu", D, D_SAE)
    st = SAESteerer(sae, backend=backend)
    x = torch.randn(11, D, generator=torch.Generator().manual_seed(3)) * 2
    rows = torch.tensor([0, -1, 0, 0, -1, 0, 0, 0, -1, 0, 0])
    y = st.apply(x, st.plan([iv]), rows=rows)
    assert_close_dtype(y, _expected(x, sae, [iv], rows))
    assert torch.equal(y[rows < 0], x[rows < 0])
    assert not torch.equal(y[rows == 0], x[rows == 0])


def test_apply_rows_matches_per_token():
    sae = make_sae("standard", D, D_SAE)
    ivs = [Intervention([2, 7], "ablate"), None, Intervention([7, 11], "clamp", 2.0)]
    st = SAESteerer(sae)
    plan = st.plan(ivs)
    x = torch.randn(3, 5, D) * 2
    y = st.apply_rows(x, plan)
    rows = torch.arange(3).repeat_interleave(5)
    assert_close_dtype(y.reshape(-1, D), st.apply(x.reshape(-1, D), plan, rows=rows))
    assert torch.equal(y[1], x[1])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_other_dtypes_are_cast_to_the_sae_and_back(dtype):
    sae = make_sae("jumprelu", D, D_SAE)
    ivs = [Intervention([1, 5], "clamp", 2.0), None]
    st = SAESteerer(sae)
    plan = st.plan(ivs)
    x = (torch.randn(9, D) * 2).to(dtype)
    rows = torch.tensor([0, 1, 0, -1, 0, 1, 1, 0, 0])
    y = st.apply(x, plan, rows=rows)
    assert y.dtype == dtype
    keep = rows != 0
    assert torch.equal(y[keep], x[keep])
    # The edit is computed in the SAE's float32, so a float64 input carries float32 error.
    tol_dtype = torch.float32 if dtype == torch.float64 else dtype
    assert_close_dtype(y.float(), _expected(x.float(), sae, ivs, rows), dtype=tol_dtype)


def test_float64_sae_runs_the_reference():
    """A float64 SAE must never reach the compiled CPU op (which takes float32/bf16/fp16 only)."""
    sae = make_sae("jumprelu", D, D_SAE, dtype=torch.float64)
    iv = Intervention([3, 8], "clamp", 2.0)
    st = SAESteerer(sae, backend="auto")
    x = torch.randn(6, D, dtype=torch.float64)
    y = st.apply(x, st.plan([iv]))
    torch.testing.assert_close(y, reference.steer(x, sae, iv), atol=1e-12, rtol=1e-12)
    rows = torch.tensor([0, 1, -1, 0, 1, 0])
    y2 = st.apply(x, st.plan([iv, Intervention([5], "ablate")]), rows=rows)
    assert y2.dtype == torch.float64


def test_update_in_place_keeps_the_plan():
    sae = make_sae("jumprelu", D, D_SAE)
    st = SAESteerer(sae)
    plan = st.plan([Intervention([1, 2], "clamp", 1.0), None])
    same = st.update(plan, [Intervention([1, 2], "clamp", 5.0), None])
    assert same is plan
    x = torch.randn(4, D)
    rows = torch.tensor([0, 0, 1, -1])
    assert_close_dtype(st.apply(x, plan, rows=rows), _expected(x, sae, [Intervention([1, 2], "clamp", 5.0), None], rows))
    other = st.update(plan, [Intervention([1, 3], "clamp", 5.0), None])
    assert other is not plan


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_bound_plan_reused_over_forwards(backend):
    """bind once, apply_bound on many inputs (an engine's decode steps): each equals apply."""
    sae = make_sae("jumprelu", D, D_SAE)
    ivs = _interventions()
    st = SAESteerer(sae, backend=backend)
    plan = st.plan(ivs)
    g = torch.Generator().manual_seed(3)
    rows = torch.randint(-1, len(ivs), (19,), generator=g)
    bound = st.bind(plan, rows)
    for step in range(3):
        x = torch.randn(19, D, generator=g) * 2
        mask = None if step == 0 else torch.rand(19, generator=g) > 0.3
        y = st.apply_bound(x, bound, token_mask=mask)
        assert torch.equal(y, st.apply(x, plan, rows=rows, token_mask=mask))
        assert_close_dtype(y, _expected(x, sae, ivs, rows, mask))
    single = st.plan([ivs[0]])
    x = torch.randn(19, D, generator=g)
    assert torch.equal(st.apply_bound(x, st.bind(single, rows)), st.apply(x, single, rows=rows))
    with pytest.raises(ValueError, match=r"x: expected \[N=19, d_in=37\]"):
        st.apply_bound(torch.randn(18, D), bound)
    with pytest.raises(ValueError, match="rows: expected a 1-D int64"):
        st.bind(plan, rows.int())
    with pytest.raises(ValueError, match="token_mask"):
        st.apply_bound(x, bound, token_mask=torch.ones(19))


def test_bad_input_names_the_argument():
    sae = make_sae("jumprelu", D, D_SAE)
    st = SAESteerer(sae)
    plan = st.plan([Intervention([1], "ablate"), None])
    x = torch.randn(4, D)
    with pytest.raises(ValueError, match="rows: required"):
        st.apply(x, plan)
    with pytest.raises(ValueError, match="rows: expected an int64"):
        st.apply(x, plan, rows=torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="token_mask"):
        st.apply(x, plan, rows=torch.zeros(4, dtype=torch.int64), token_mask=torch.ones(4))
    with pytest.raises(ValueError, match=r"x: expected \[N, d_in=37\]"):
        st.apply(torch.randn(4, D + 1), plan, rows=torch.zeros(4, dtype=torch.int64))
    with pytest.raises(ValueError, match="features: ids"):
        st.plan([Intervention([D_SAE], "ablate")])
    with pytest.raises(ValueError, match="interventions: an empty list"):
        st.plan([])
    with pytest.raises(TypeError, match="interventions: expected a list"):
        st.plan(Intervention([1], "ablate"))
    with pytest.raises(TypeError, match="sae: expected"):
        SAESteerer(object())
    before = x.clone()
    st.apply(x, plan, rows=torch.zeros(4, dtype=torch.int64))
    assert torch.equal(x, before)  # x is never modified
