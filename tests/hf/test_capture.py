"""saesteer.hf.capture / intercept: the residual stream at hook points, read and rewritten; the
float64 route of attached SAEs; what ``import saesteer`` exposes."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from helpers import make_sae
from test_hooks import D, D_SAE, LAYERS, ids, tiny_model

import saesteer
from saesteer import Intervention, hf, reference


def hook_count(model) -> int:
    # transformers installs its own output-capturing hooks the first time hidden states are
    # requested, so compare counts rather than expect none.
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_capture_matches_the_models_hidden_states(arch):
    model = tiny_model(arch)
    x = ids(2, 5)
    with torch.no_grad():
        hs = model(x, output_hidden_states=True).hidden_states  # hs[L] is layer L's input
        n_hooks = hook_count(model)
        with hf.capture(model, ["blocks.0.hook_resid_post", "blocks.1.hook_resid_pre", (1, "resid_post")]) as rec:
            model(x)
            model(x[:1])
    assert list(rec) == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_pre", "blocks.1.hook_resid_post"]
    assert [len(v) for v in rec.values()] == [2, 2, 2]
    torch.testing.assert_close(rec["blocks.0.hook_resid_post"][0], hs[1], rtol=0, atol=0)
    torch.testing.assert_close(rec["blocks.1.hook_resid_pre"][0], hs[1], rtol=0, atol=0)
    torch.testing.assert_close(rec["blocks.1.hook_resid_post"][0], hs[2], rtol=0, atol=0)
    assert rec["blocks.1.hook_resid_post"][1].shape == (1, 5, D)
    assert hook_count(model) == n_hooks


def test_capture_by_sae_with_a_transform_and_hf_names():
    model = tiny_model()
    sae = make_sae("jumprelu", D, D_SAE, hook_name="blocks.2.hook_resid_pre")
    x = ids(3, 4)
    with torch.no_grad():
        hs = model(x, output_hidden_states=True).hidden_states
        with hf.capture(model, [sae, "model.layers.0"], transform=lambda t: t[:, -1].double()) as rec:
            model(x)
    assert set(rec) == {"blocks.2.hook_resid_pre", "blocks.0.hook_resid_post"}
    got = rec[sae.hook_name][0]
    assert got.dtype == torch.float64 and got.shape == (3, D)
    torch.testing.assert_close(got, hs[2][:, -1].double(), rtol=0, atol=0)
    torch.testing.assert_close(rec["blocks.0.hook_resid_post"][0], hs[1][:, -1].double(), rtol=0, atol=0)


def test_capture_removes_its_hooks_on_an_exception_and_edits_nothing():
    model = tiny_model()
    x = ids()
    with torch.no_grad():
        before = model(x).logits
        with pytest.raises(RuntimeError, match="boom"):
            with hf.capture(model, "blocks.1.hook_resid_post") as rec:
                after = model(x).logits
                raise RuntimeError("boom")
    assert torch.equal(before, after)
    assert len(rec["blocks.1.hook_resid_post"]) == 1
    assert hook_count(model) == 0


def test_intercept_rewrites_the_stream_downstream():
    model = tiny_model()
    x = ids()
    r = torch.randn(D)
    seen = []

    def fn(name, h):
        seen.append(name)
        return h + r

    with torch.no_grad():
        with hf.capture(model, ["blocks.0.hook_resid_post", "blocks.2.hook_resid_pre"]) as clean:
            clean_logits = model(x).logits
        with hf.intercept(model, "blocks.0.hook_resid_post", fn):
            with hf.capture(model, ["blocks.1.hook_resid_pre", "blocks.2.hook_resid_pre"]) as edited:
                edited_logits = model(x).logits
    assert seen == ["blocks.0.hook_resid_post"]
    torch.testing.assert_close(edited["blocks.1.hook_resid_pre"][0], clean["blocks.0.hook_resid_post"][0] + r)
    assert not torch.allclose(edited["blocks.2.hook_resid_pre"][0], clean["blocks.2.hook_resid_pre"][0])
    assert not torch.allclose(edited_logits, clean_logits)
    assert hook_count(model) == 0


@pytest.mark.parametrize(
    "hooks, match",
    [
        ("blocks.1.hook_attn_out", "hook_resid_pre or blocks.L.hook_resid_post"),
        ("blocks.9.hook_resid_post", f"the model has {LAYERS} decoder layers"),
        ("nonsense", "unknown hook name"),
        ([], "at least one hook"),
        ([3.0], "expected a hook name, an SAE"),
    ],
)
def test_capture_bad_hooks_name_the_argument(hooks, match):
    model = tiny_model()
    with pytest.raises((ValueError, TypeError), match=match):
        with hf.capture(model, hooks):
            pass
    assert hook_count(model) == 0


def test_float64_sae_attached_on_cpu_runs_the_reference():
    """A float64 SAE must not reach the compiled CPU op (float32/bf16/fp16 only) through the hooks."""
    model = tiny_model(dtype=torch.float64)
    sae = make_sae("jumprelu", D, D_SAE, dtype=torch.float64, hook_name="blocks.1.hook_resid_post")
    iv = Intervention([3, 7, 11], "clamp", 2.5)
    x = ids()
    with torch.no_grad():
        with hf.capture(model, sae) as rec:
            clean = model(x).logits
        with saesteer.steer(model, sae, iv, backend="auto") as h:
            steered = model(x).logits
        assert h.edits[0].backend in ("cpu", "torch")

        def manual(name, t):
            return reference.steer(t, sae, iv)

        with hf.intercept(model, sae, manual):
            expected = model(x).logits
    assert not torch.equal(steered, clean)
    torch.testing.assert_close(steered, expected, rtol=1e-12, atol=1e-12)
    assert rec[sae.hook_name][0].dtype == torch.float64


def test_import_saesteer_exposes_the_hooks_and_the_organism():
    code = (
        "import saesteer\n"
        "names = dir(saesteer)\n"
        "assert all(n in names for n in ('steer', 'attach', 'capture', 'hf', 'steering', 'organism')), names\n"
        "assert saesteer.hooks.steer is saesteer.steer is saesteer.hf.steer\n"
        "import sys; assert 'transformers' not in sys.modules\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
