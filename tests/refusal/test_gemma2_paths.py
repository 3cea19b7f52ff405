"""The Gemma-2 + Gemma Scope reproduction's code paths on a tiny random Gemma2ForCausalLM (its
BOS, its post-norms) with two sae-lens SAEs at two layers, each saved and loaded as a user would:
``saesteer discover`` over both SAEs, then ``saesteer eval`` of the spec it writes. Plumbing and
shapes only: a random model refuses nothing, so the rates are not checked."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import make_sae_lens_sae
from saesteer.cli import main


@pytest.fixture(scope="module")
def gemma2_dir(tiny_chat, tmp_path_factory):
    from transformers import Gemma2Config, Gemma2ForCausalLM

    _, tok, _, _ = tiny_chat
    torch.manual_seed(0)
    cfg = Gemma2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=8, sliding_window=16,
                       max_position_embeddings=256, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                       eos_token_id=tok.eos_token_id)
    d = tmp_path_factory.mktemp("gemma2_chat")
    Gemma2ForCausalLM(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    for layer in (0, 1):
        make_sae_lens_sae("jumprelu", d_in=32, d_sae=64, seed=layer, hook_name=f"blocks.{layer}.hook_resid_post").save_model(d / f"sae_l{layer}")
    return d


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_discover_over_two_saes_then_eval_on_gemma2(gemma2_dir, tmp_path, dtype):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"n_direction": 6, "n_val": 4, "n_search": 4, "n_heldout": 4, "n_candidates": 6,
                               "max_candidates": 12, "fm_samples": 8, "fm_extra": 2, "per_prompt": 1, "prefilter": 16}))
    out = tmp_path / "run"
    rc = main(["discover", "--model", str(gemma2_dir), "--sae", f"{gemma2_dir}/sae_l{{0..1}}", "--quick", "--config", str(cfg),
               "--edit", "scale:-3", "--max-new-tokens", "4", "--capability", "0", "--device", "cpu", "--dtype", dtype, "--quiet", "--force",
               "--out", str(out)])
    assert rc == 0
    r = json.loads((out / "results.json").read_text())
    names = [x["name"] for x in r["sae"]]
    assert [x["layer"] for x in r["sae"]] == [0, 1] and len(set(names)) == 2
    # Candidates are (sae, feature, score) across both layers, each feature within its SAE's pre-filter.
    assert r["candidates"] and all(c[0] in names and 0 <= c[1] < 64 for c in r["candidates"])
    assert r["edit"] == "scale:-3" and r["skip_bos"] is True
    spec = json.loads((out / "spec.json").read_text())
    assert spec["mode"] == "scale" and spec["skip_bos"] is True
    rc = main(["eval", "--steer", str(out / "spec.json"), "--limit", "8", "--max-new-tokens", "4", "--device", "cpu", "--dtype", dtype,
               "--templates", "roleplay", "--allow-overlap", "--quiet", "--out", str(tmp_path / "eval")])
    assert rc == 0
    rep = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert rep["conditions"][0]["condition"] == "unsteered" and rep["model"] == str(gemma2_dir)
