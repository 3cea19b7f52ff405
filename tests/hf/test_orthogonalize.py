"""Weight orthogonalization: the edited checkpoint gives the directional-ablation hooks' logits."""

from __future__ import annotations

import pytest
import torch

import saesteer.hf as sh


def _tiny(kind: str):
    import transformers as tf

    common = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64)
    if kind == "llama_tied_bias":
        return tf.LlamaForCausalLM(tf.LlamaConfig(**common, tie_word_embeddings=True, attention_bias=True, mlp_bias=True))
    if kind == "qwen2":
        return tf.Qwen2ForCausalLM(tf.Qwen2Config(**common, tie_word_embeddings=False))
    if kind == "gpt2":
        return tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=97, n_embd=32, n_layer=2, n_head=4, n_positions=64))
    if kind == "gemma2":
        return tf.Gemma2ForCausalLM(tf.Gemma2Config(**common, head_dim=8, tie_word_embeddings=True))
    raise KeyError(kind)


def _randomize_biases(model):
    # Fresh models start with zero biases; random ones check that biases are edited too.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("bias"):
                p.normal_(0, 0.5)


@pytest.mark.parametrize("kind", ["llama_tied_bias", "qwen2", "gpt2"])
def test_orthogonalized_checkpoint_matches_the_ablation_hooks(kind, tmp_path):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = _tiny(kind).eval()
    _randomize_biases(model)
    direction = torch.randn(32) * 3
    ids = torch.randint(0, 97, (2, 9))
    with torch.no_grad():
        plain = model(ids).logits
        with sh.directional_ablation(model, direction):
            hooked = model(ids).logits
    assert (hooked - plain).abs().max() > 1e-2  # the ablation changes the model
    sh.save_orthogonalized(model, direction, tmp_path / "ortho")
    edited = AutoModelForCausalLM.from_pretrained(tmp_path / "ortho").eval()
    with torch.no_grad():
        got = edited(ids).logits
    torch.testing.assert_close(got, hooked, atol=2e-4, rtol=1e-4)
    # The unembedding was untied and kept its component along the direction.
    r = direction / direction.norm()
    assert edited.get_output_embeddings().weight.data_ptr() != edited.get_input_embeddings().weight.data_ptr()
    assert float((edited.get_input_embeddings().weight.detach() @ r).abs().max()) < 1e-5
    assert float((edited.get_output_embeddings().weight.detach() @ r).abs().max()) > 1e-2


def test_orthogonalize_refuses_sandwich_norms_and_bad_directions(tmp_path):
    torch.manual_seed(0)
    g = _tiny("gemma2")
    before = {n: p.clone() for n, p in g.named_parameters()}
    with pytest.raises(ValueError, match="normalises what it writes"):
        sh.orthogonalize(g, torch.randn(32))
    assert all(torch.equal(p, before[n]) for n, p in g.named_parameters())  # nothing modified
    llama = _tiny("qwen2")
    with pytest.raises(ValueError, match="hidden size is 32"):
        sh.orthogonalize(llama, torch.randn(31))
    with pytest.raises(ValueError, match="zero vector"):
        sh.orthogonalize(llama, torch.zeros(32))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileExistsError, match="already holds a checkpoint"):
        sh.save_orthogonalized(llama, torch.randn(32), tmp_path)


def test_load_direction_reads_discovers_file(tmp_path):
    from safetensors.torch import save_file

    d, ref = torch.randn(8), torch.randn(8)
    save_file({"direction": d, "reference": ref}, str(tmp_path / "direction.safetensors"), metadata={"layer": "3", "position": "-1", "ablation": "affine"})
    got = sh.load_direction(tmp_path / "direction.safetensors")
    assert torch.equal(got["direction"], d) and torch.equal(got["reference"], ref)
    assert (got["layer"], got["position"], got["ablation"]) == (3, -1, "affine")
    with pytest.raises(FileNotFoundError, match="direction.safetensors"):
        sh.load_direction(tmp_path / "missing.safetensors")
