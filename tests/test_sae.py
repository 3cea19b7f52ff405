"""saesteer.SAE and saesteer.reference against sae-lens itself (issue: foundation)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from helpers import ARCH_CONFIGS, assert_close_dtype, make_sae_lens_sae

import saesteer
from saesteer import SAE, Intervention, reference

ARCHS = list(ARCH_CONFIGS)
SHAPES = [(1, 37, 1001), (13, 37, 1001), (7, 64, 256)]  # (tokens, d_in, d_sae): 1 token, odd d_in, odd d_sae


def _pair(name, d_in, d_sae, dtype=torch.float32, seed=0):
    arch, cfg = ARCH_CONFIGS[name]
    ref = make_sae_lens_sae(arch, d_in, d_sae, seed=seed, dtype=dtype, **cfg)
    return ref, SAE.from_sae_lens(ref)


def _sae_lens_error_path(ref, x, edit):
    """sae-lens's use_error_term path: decode(f') + (x - decode(f)).

    sae-lens's run-time normalizations keep state from the last encode, so encode before each decode.
    """
    f = ref.encode(x)
    x_hat = ref.decode(f)
    ref.encode(x)
    return ref.decode(edit(f.clone())) + (x.to(x_hat.dtype) - x_hat)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", ARCHS)
def test_encode_decode_match_sae_lens(name, shape, dtype):
    T, d_in, d_sae = shape
    ref, sae = _pair(name, d_in, d_sae, dtype)
    x = torch.randn(T, d_in).to(dtype)
    f_ref = ref.encode(x)
    f = sae.encode(x)
    assert f.shape == (T, d_sae)
    fired = (f_ref > 0).float().mean().item()
    if name.startswith("topk"):
        assert ((f_ref > 0).sum(-1) <= ARCH_CONFIGS[name][1]["k"]).all()
    else:
        assert 0.1 < fired < 0.9, f"test SAE should fire on a good share of features, got {fired:.2f}"
    if dtype == torch.float32:
        assert_close_dtype(f, f_ref, dtype)
        assert_close_dtype(sae(x), ref(x), dtype)
        return
    # In bf16, sae-lens rounds every intermediate to bf16 while we accumulate in fp32. Rule (as in
    # flash-attention): our error against the fp64 truth is at most 2x sae-lens's own bf16 error.
    truth = copy.deepcopy(ref).to(torch.float64)  # the same (bf16-rounded) weights, exact arithmetic
    for ours, theirs, exact in ((f, f_ref, truth.encode(x.double())), (sae(x), ref(x), truth(x.double()))):
        # Mean error: a near-tie at a jumprelu threshold or the top-k boundary can flip one feature
        # either way in either implementation.
        err_ours = (ours.double() - exact).abs().mean().item()
        err_theirs = (theirs.double() - exact).abs().mean().item()
        assert err_ours <= 2 * err_theirs + 1e-3, (err_ours, err_theirs)


@pytest.mark.parametrize("name", ARCHS)
def test_decode_matches_sae_lens(name):
    ref, sae = _pair(name, 37, 1001)
    if ref.cfg.normalize_activations != "none":
        pytest.skip("sae-lens's decode needs the state of a previous encode for run-time norms")
    f = torch.relu(torch.randn(5, 1001))
    assert_close_dtype(sae.decode(f), ref.decode(f), torch.float32)


@pytest.mark.parametrize("mode,value", [("ablate", None), ("scale", 2.5), ("clamp", 3.0), ("add", -0.7)])
@pytest.mark.parametrize("name", ARCHS)
def test_reference_steer_equals_sae_lens_error_term_path(name, mode, value):
    ref, sae = _pair(name, 37, 1001, seed=1)
    x = torch.randn(2, 9, 37)
    f = ref.encode(x)
    active = (f[0, 0] > 0).nonzero().flatten()[:4].tolist()
    feats = active + [i for i in (3, 500, 1000) if i not in active]  # active and inactive features
    iv = Intervention(feats, mode, value)

    def edit(fe):
        cols = torch.tensor(feats)
        if mode == "ablate":
            fe[..., cols] = 0
        elif mode == "scale":
            fe[..., cols] *= value
        elif mode == "clamp":
            fe[..., cols] = value
        else:
            fe[..., cols] += value
        return fe

    y = reference.steer(x, sae, iv)
    assert_close_dtype(y, _sae_lens_error_path(ref, x, edit), torch.float32)
    assert not torch.equal(y, x)


@pytest.mark.parametrize("name", ARCHS)
def test_noop_steer_returns_x_bit_for_bit(name):
    _, sae = _pair(name, 37, 1001)
    x = torch.randn(4, 37)
    x[0, 0] = -0.0
    for iv in (Intervention([], "ablate"), Intervention([1, 2, 3], "scale", 1.0), Intervention([5, 7], "add", 0.0)):
        y = reference.steer(x, sae, iv)
        assert torch.equal(y, x) and torch.equal(y.signbit(), x.signbit())
    # Ablating features that are inactive everywhere changes nothing either.
    f = sae.encode(x)
    dead = (f == 0).all(0).nonzero().flatten()[:5].tolist()
    assert dead
    assert torch.equal(reference.steer(x, sae, Intervention(dead, "ablate")), x)


def test_token_mask_leaves_masked_tokens_untouched():
    _, sae = _pair("jumprelu", 37, 1001)
    x = torch.randn(3, 5, 37)
    mask = torch.zeros(3, 5, dtype=torch.bool)
    mask[:, 2:] = True
    y = reference.steer(x, sae, Intervention([0, 1, 2], "clamp", 4.0), token_mask=mask)
    assert torch.equal(y[~mask], x[~mask])
    assert not torch.equal(y[mask], x[mask])


def test_encode_topk_and_decode_sparse_reference():
    _, sae = _pair("jumprelu", 37, 1001)
    x = torch.randn(6, 37)
    f = sae.encode(x)
    vals, idx = reference.encode_topk(x, sae, 16)
    assert idx.dtype == torch.int64 and vals.shape == (6, 16)
    torch.testing.assert_close(vals, f.topk(16).values)
    dense = torch.zeros_like(f).scatter_(-1, idx, vals)
    torch.testing.assert_close(reference.decode_sparse(vals, idx, sae), sae.decode(dense))


def test_round_trip_through_sae_lens_format(tmp_path):
    ref, _ = _pair("jumprelu", 37, 1001, seed=3)
    ref.cfg.metadata.hook_name = "blocks.1.hook_resid_post"
    ref.save_model(tmp_path / "sae")
    assert (tmp_path / "sae" / "sae_weights.safetensors").is_file()
    sae = saesteer.load_sae(tmp_path / "sae")
    assert sae.architecture == "jumprelu" and sae.hook_name == "blocks.1.hook_resid_post" and sae.hook_layer == 1
    x = torch.randn(4, 37)
    torch.testing.assert_close(sae.encode(x), ref.encode(x))


def test_attributes_and_to():
    _, sae = _pair("jumprelu", 37, 1001)
    assert (sae.d_in, sae.d_sae, sae.architecture, sae.dtype) == (37, 1001, "jumprelu", torch.float32)
    assert sae.device == torch.device("cpu")
    sae.to(dtype=torch.bfloat16)
    assert sae.dtype == torch.bfloat16 and sae.W_enc.dtype == torch.bfloat16
    assert sae.threshold.dtype == torch.float32, "the jumprelu threshold stays float32"
    assert sae.W_enc_T.dtype == torch.bfloat16 and sae.W_enc_T.is_contiguous()
    with pytest.raises(ValueError, match="dtype"):
        sae.to(dtype=torch.int32)


def test_feature_params_follow_in_place_weight_edits():
    _, sae = _pair("jumprelu", 37, 101)
    before = sae.feature_params[1].clone()
    sae.threshold.add_(1.0)
    torch.testing.assert_close(sae.feature_params[1], before + 1.0)


# ------------------------------------------------------------------------------------------------
# bad input: a clear error that names the problem, inputs unmodified
# ------------------------------------------------------------------------------------------------
def test_bad_x():
    _, sae = _pair("jumprelu", 37, 101)
    x = torch.randn(3, 36)
    x0 = x.clone()
    with pytest.raises(ValueError, match="d_in=37"):
        sae.encode(x)
    with pytest.raises(ValueError, match="d_in=37"):
        saesteer.ops.steer(x, sae, Intervention([1], "ablate"))
    assert torch.equal(x, x0)
    xi = torch.ones(3, 37, dtype=torch.int64)
    with pytest.raises(ValueError, match="x: expected"):
        sae.encode(xi)
    with pytest.raises(ValueError, match="x: expected"):
        saesteer.ops.steer(xi, sae, Intervention([1], "ablate"))
    assert torch.equal(xi, torch.ones(3, 37, dtype=torch.int64))


@pytest.mark.parametrize(
    "args,match",
    [
        (([1, 1, 2], "ablate"), "duplicate"),
        (([-1], "ablate"), ">= 0"),
        (([1], "zap"), "mode"),
        (([1, 2], "clamp"), "needs a value"),
        (([1, 2], "clamp", [1.0]), "one value per feature"),
        (([1, 2], "scale", [1.0, float("nan")]), "NaN"),
        (([1], "clamp", float("inf")), "inf value for features \\[1\\]"),
        (([1, 2], "add", [1.0, float("-inf")]), "must be finite"),
        (([3], "clamp", torch.tensor([float("inf")])), "inf"),
        (([1], "ablate", 2.0), "takes no value"),
        (([1.5], "ablate"), "integer"),
    ],
)
def test_intervention_validation(args, match):
    with pytest.raises(ValueError, match=match):
        Intervention(*args)


@pytest.mark.parametrize(
    "d,match",
    [
        ({"mode": "ablate"}, "no 'features' key"),
        ({"features": [1], "mode": "ablate", "valu": 3}, "unknown keys \\['valu'\\]"),
        ({"features": [1], "mode": "clamp", "value": 1.0, "values": [1.0]}, "not both"),
        ({"features": [1], "mode": "clamp"}, "needs a value"),
    ],
)
def test_intervention_dict_errors_name_the_key(d, match):
    with pytest.raises(ValueError, match=match):
        Intervention.from_dict(d)
    assert Intervention.from_dict({"features": [1], "mode": "clamp", "values": [2.0]}).values == (2.0,)


def test_intervention_ids_out_of_range():
    _, sae = _pair("jumprelu", 37, 101)
    with pytest.raises(ValueError, match=r"outside \[0, 101\)"):
        Intervention([5, 101], "ablate", d_sae=101)
    x = torch.randn(2, 37)
    x0 = x.clone()
    with pytest.raises(ValueError, match=r"outside \[0, 101\)"):
        reference.steer(x, sae, Intervention([5, 200], "ablate"))
    assert torch.equal(x, x0)


def test_unsupported_architecture(tmp_path):
    from sae_lens.saes import StandardSAE, StandardSAEConfig

    ref = StandardSAE(StandardSAEConfig(d_in=8, d_sae=16))
    ref.save_model(tmp_path / "s")
    cfg = json.loads((tmp_path / "s" / "cfg.json").read_text())
    cfg["architecture"] = "matching_pursuit"
    (tmp_path / "s" / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(NotImplementedError, match="matching_pursuit.*standard, jumprelu, gated, topk"):
        saesteer.load_sae(tmp_path / "s")
    with pytest.raises(NotImplementedError, match="supported"):
        SAE(architecture="batchtopk", W_enc=torch.zeros(8, 16), W_dec=torch.zeros(16, 8))


def test_import_and_build_info():
    info = saesteer.build_info()
    assert info["torch"] == torch.__version__
    assert "torch" in info["backends"]
    assert {"with_cuda", "cuda_archs"} <= set(info) or not info["native"]
