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
from saesteer.vllm import no_cuda_graphs, read_sae, sae_site, site_layer, steered_overrides


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


def test_the_graph_op_adds_the_residual_and_applies_a_registered_edit():
    h, r, pos = torch.randn(5, 8), torch.randn(5, 8), torch.arange(5)
    layer = 10_000  # a layer no other test registers
    assert torch.equal(torch.ops.saesteer_vllm.edit_layer(h, r, pos, layer), h + r)

    class Double:
        def edit(self, hidden, residual, positions):
            return 2 * (hidden + residual)

    steered_model.EDITS[layer] = Double()
    try:
        assert torch.equal(torch.ops.saesteer_vllm.edit_layer(h, r, pos, layer), 2 * (h + r))
        hook = steered_model._GraphHook(layer)
        y, zero = hook(None, (pos, h, r), (h, r))
        assert torch.equal(y, 2 * (h + r)) and torch.equal(zero, torch.zeros_like(h))
        # traced: the op stays opaque in the graph and still reads the edit at run time
        f = torch.compile(lambda a, b, p: torch.ops.saesteer_vllm.edit_layer(a, b, p, layer) * 1.0, fullgraph=True)
        assert torch.equal(f(h, r, pos), 2 * (h + r))
        del steered_model.EDITS[layer]
        assert torch.equal(f(h, r, pos), h + r)
        out = (h, r)
        assert hook(None, (pos, h, r), out) is out  # eager, nothing registered: the layer's own output
    finally:
        steered_model.EDITS.pop(layer, None)


def test_cuda_graphs_default_off_and_a_chosen_mode_is_kept():
    kw = {}
    no_cuda_graphs(kw)
    assert kw == {"compilation_config": {"cudagraph_mode": "NONE"}}
    kw = {"compilation_config": {"mode": 3}}
    no_cuda_graphs(kw)
    assert kw["compilation_config"] == {"mode": 3, "cudagraph_mode": "NONE"}
    kw = {"compilation_config": {"cudagraph_mode": "PIECEWISE"}}  # refused later, by saesteer_install
    no_cuda_graphs(kw)
    assert kw["compilation_config"]["cudagraph_mode"] == "PIECEWISE"
