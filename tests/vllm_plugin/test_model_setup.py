"""What SteeredLLM and saesteer serve work out before vLLM starts (runs without vLLM): each SAE's
size and layer from its cfg.json, and the hf_overrides that build the model as its SAESteered class
with the graph hooks on those layers; the graph op itself on plain tensors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from saesteer import organism
from saesteer.steering.spec import SpecError
from saesteer.vllm import model as steered_model
from saesteer.vllm import cuda_graph_settings, read_sae, sae_site, site_layer, steered_overrides


def test_sae_site_reads_the_config_as_the_workers_read_the_sae():
    _, _, dirs = organism.read_manifest()
    for name in dirs:
        sae = read_sae(f"organism:{name}")
        assert sae_site(f"organism:{name}") == (sae.d_sae, sae.hook_name)
        assert sae_site(str(dirs[name])) == (sae.d_sae, sae.hook_name)
        assert site_layer(name, sae.hook_name) == sae.hook_layer


def test_sae_site_and_site_layer_errors_name_the_argument(tmp_path):
    with pytest.raises(SpecError, match="--sae: the organism has no SAE 'nope'"):
        sae_site("organism:nope")
    (tmp_path / "cfg.json").write_text("{}")
    with pytest.raises(SpecError, match="--sae: .* is not an SAE directory"):
        sae_site(str(tmp_path))
    _, _, dirs = organism.read_manifest()
    src = next(iter(dirs.values()))
    bad = tmp_path / "bad"
    shutil.copytree(src, bad)
    cfg = json.loads((bad / "cfg.json").read_text())
    del cfg["d_sae"]
    (bad / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(SpecError, match="has no usable d_sae"):
        sae_site(str(bad))
    with pytest.raises(SpecError, match=r"--sae s: the SAE's hook_name 'blocks.2.hook_resid_pre' is not blocks.L.hook_resid_post"):
        site_layer("s", "blocks.2.hook_resid_pre")


def test_steered_overrides_pick_the_steered_class_and_merge_the_callers():
    pytest.importorskip("vllm", reason="the overrides check that vLLM has the plugin's model classes registered")
    model_dir = str(organism.WEIGHTS_DIR / "model")
    arch = json.loads((organism.WEIGHTS_DIR / "model" / "config.json").read_text())["architectures"][0]
    got = steered_overrides(model_dir, [3, 1, 3])
    assert got == {"architectures": [steered_model.PREFIX + arch], "saesteer_layers": [1, 3]}
    mine = {"rope_theta": 5.0, "saesteer_layers": [0]}
    merged = steered_overrides(model_dir, [2], mine)
    assert merged["rope_theta"] == 5.0 and merged["saesteer_layers"] == [0, 2]
    assert mine == {"rope_theta": 5.0, "saesteer_layers": [0]}  # the caller's dict is not modified
    assert steered_overrides(model_dir, [2], got)["architectures"] == got["architectures"]  # not prefixed twice
    with pytest.raises(SpecError, match="hf_overrides: saesteer needs a dict"):
        steered_overrides(model_dir, [2], lambda cfg: cfg)


def _op(h, r, pos, layer):
    out = torch.full_like(h, float("nan"))  # every element must be written
    torch.ops.saesteer_vllm.edit_layer(h, r, pos, out, layer)
    return out


class _Double:
    def edit(self, hidden, residual, positions):
        return 2 * (hidden + residual)


def test_the_graph_op_adds_the_residual_and_applies_a_registered_edit():
    h, r, pos = torch.randn(5, 8), torch.randn(5, 8), torch.arange(5)
    layer = 10_000  # a layer no other test registers
    assert torch.equal(_op(h, r, pos, layer), h + r)
    steered_model.EDITS[layer] = _Double()
    try:
        assert torch.equal(_op(h, r, pos, layer), 2 * (h + r))
        hook = steered_model._GraphHook(layer)
        y, zero = hook(None, (pos, h, r), (h, r))
        assert torch.equal(y, 2 * (h + r)) and torch.equal(zero, torch.zeros_like(h))

        # traced (as vLLM compiles the decoder stack): the op stays opaque in the graph, writes
        # its out buffer, and still reads the edit at run time
        def layer_fn(a, b, p):
            return hook(None, (p, a, b), (a * 1.0, b))

        f = torch.compile(layer_fn, fullgraph=True)
        y, zero = f(h, r, pos)
        assert torch.equal(y, 2 * (h + r)) and torch.equal(zero, torch.zeros_like(h))
        del steered_model.EDITS[layer]
        assert torch.equal(f(h, r, pos)[0], h + r)
        out = (h, r)
        assert hook(None, (pos, h, r), out) is out  # eager, nothing registered: the layer's own output
    finally:
        steered_model.EDITS.pop(layer, None)


def test_split_at_the_op_the_next_piece_reads_the_buffer_the_piece_before_allocated():
    """What piecewise CUDA graphs need of a splitting op (vLLM's own graph split, on the CPU): the op
    is a piece of its own, the buffer it writes comes from the piece before (captured, so the same
    memory at every replay), and the piece after reads that buffer, not a tensor the op returned."""
    pytest.importorskip("vllm", reason="vLLM is not installed (make venv-vllm; make test-vllm)")
    from vllm.compilation.backends import split_graph

    layer = 10_001
    hook = steered_model._GraphHook(layer)
    w1, w2 = torch.randn(8, 8), torch.randn(8, 8)

    def two_layers(x, pos):  # a decoder layer's (hidden, residual), the hook, the next layer's add
        y, res = hook(None, (pos, x @ w1, x), (x @ w1, x))
        return torch.relu((y + res) @ w2)

    seen = {}

    def backend(gm, example_inputs):
        split_gm, items = split_graph(gm, [steered_model.OP])
        seen["items"], seen["gm"] = items, split_gm
        return split_gm

    x, pos = torch.randn(6, 8), torch.arange(6)
    steered_model.EDITS[layer] = _Double()
    try:
        got = torch.compile(two_layers, backend=backend, fullgraph=True)(x, pos)
        y = 2 * (x @ w1 + x)
        assert torch.allclose(got, torch.relu(y @ w2), atol=1e-5)  # the edit reached the next piece
    finally:
        steered_model.EDITS.pop(layer, None)
    items = seen["items"]
    splits = [it for it in items if it.is_splitting_graph]
    assert len(splits) == 1 and len(items) == 3, [(it.submod_name, it.is_splitting_graph) for it in items]
    (op_node,) = [n for n in splits[0].graph.graph.nodes if n.op == "call_function"]
    t = op_node.target  # an OpOverloadPacket in dynamo's graph
    assert getattr(t, "_qualified_op_name", None) == steered_model.OP  # the op is alone in its piece
    calls = {n.target: n for n in seen["gm"].graph.nodes if n.op == "call_module"}
    before, op_call, after = (calls[it.submod_name] for it in items)
    out_arg = op_call.args[3]  # (hidden, residual, positions, out): out is made by the piece before
    assert out_arg.op == "call_function" and out_arg.args[0] is before, out_arg
    assert out_arg in after.all_input_nodes  # and read by the piece after: the same buffer
    assert not list(op_call.users) or all(u.op == "output" for u in op_call.users)  # nothing returned is used


def test_cuda_graphs_default_off_piecewise_splits_at_the_op_and_full_graphs_are_refused():
    kw = {}
    cuda_graph_settings(kw)
    assert kw == {"compilation_config": {"cudagraph_mode": "NONE"}}
    mine = {"mode": 3}
    kw = {"compilation_config": mine}
    cuda_graph_settings(kw)
    assert kw["compilation_config"] == {"mode": 3, "cudagraph_mode": "NONE"} and mine == {"mode": 3}
    for full in ("FULL", "FULL_AND_PIECEWISE", "full_decode_only"):
        kw = {"compilation_config": {"cudagraph_mode": full}}
        with pytest.raises(SpecError, match=r"compilation_config.cudagraph_mode: .* PIECEWISE .* or NONE"):
            cuda_graph_settings(kw)
        assert kw == {"compilation_config": {"cudagraph_mode": full}}  # left as it was
    with pytest.raises(SpecError, match=r"compilation_config.cudagraph_mode: expected NONE or PIECEWISE"):
        cuda_graph_settings({"compilation_config": {"cudagraph_mode": "SOMETIMES"}})
    ops = ["vllm::unified_attention_with_output"]
    kw = {"compilation_config": {"cudagraph_mode": "PIECEWISE", "splitting_ops": ops}}
    cuda_graph_settings(kw)
    assert kw["compilation_config"]["splitting_ops"] == ops + [steered_model.OP] and len(ops) == 1
    cuda_graph_settings(kw)  # once is enough
    assert kw["compilation_config"]["splitting_ops"].count(steered_model.OP) == 1


def test_piecewise_keeps_vllms_own_splitting_ops():
    vllm_config = pytest.importorskip("vllm.config", reason="vLLM is not installed (make venv-vllm; make test-vllm)")
    kw = {"compilation_config": {"cudagraph_mode": "PIECEWISE"}}
    cuda_graph_settings(kw)
    got = kw["compilation_config"]["splitting_ops"]
    assert set(vllm_config.CompilationConfig._attention_ops) < set(got) and got[-1] == steered_model.OP
    assert "vllm::unified_kv_cache_update" in got
    # vLLM's own CompilationConfig (what --compilation-config gives saesteer serve) is set in place
    cc = vllm_config.CompilationConfig(cudagraph_mode="PIECEWISE")
    cuda_graph_settings({"compilation_config": cc})
    assert steered_model.OP in cc.splitting_ops
    cc = vllm_config.CompilationConfig()
    cuda_graph_settings({"compilation_config": cc})
    assert cc.cudagraph_mode == vllm_config.CUDAGraphMode.NONE


def test_breakable_cuda_graphs_are_refused(monkeypatch):
    """vLLM's breakable CUDA graphs end a capture only at ops it decorates, never at saesteer's."""
    pytest.importorskip("vllm", reason="vLLM is not installed (make venv-vllm; make test-vllm)")
    monkeypatch.setenv("VLLM_USE_BREAKABLE_CUDAGRAPH", "1")
    kw = {"compilation_config": {"cudagraph_mode": "PIECEWISE"}}
    with pytest.raises(SpecError, match="VLLM_USE_BREAKABLE_CUDAGRAPH: .* unset it"):
        cuda_graph_settings(kw)
    assert kw == {"compilation_config": {"cudagraph_mode": "PIECEWISE"}}
    cuda_graph_settings(kw := {})  # without CUDA graphs it does not matter
    assert kw["compilation_config"]["cudagraph_mode"] == "NONE"


def test_an_sae_lens_release_id_is_read_through_sae_lens(tmp_path, monkeypatch):
    """``--sae NAME=RELEASE:ID`` goes through sae-lens's ``from_pretrained``: here a Hugging Face
    repo id (which sae-lens takes as a release) whose files sit in a local hub cache, offline."""
    pytest.importorskip("sae_lens", reason="sae-lens is not installed")
    from huggingface_hub import constants

    import helpers

    cache, ref = helpers.offline_hub_cache(tmp_path)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    sae = read_sae(ref)
    want = read_sae("organism:jumprelu")
    assert sae.hook_name == want.hook_name == "blocks.2.hook_resid_post"
    for name in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold"):
        assert torch.equal(getattr(sae, name), getattr(want, name)), name
    assert sae_site(ref) == (want.d_sae, "blocks.2.hook_resid_post")
    # An id the release does not hold, and a repo that is not in the cache: named, not a traceback.
    with pytest.raises(SpecError, match=r"--sae: sae-lens could not load 'gemma-scope-2b-pt-res-canonical:layer_99/x': .*not found"):
        read_sae("gemma-scope-2b-pt-res-canonical:layer_99/x")
    with pytest.raises(SpecError, match=r"--sae: sae-lens could not load 'saesteer-test/absent:layer_2/jumprelu'"):
        read_sae("saesteer-test/absent:layer_2/jumprelu")
