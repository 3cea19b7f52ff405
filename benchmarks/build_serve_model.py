"""A model of a real model's shape for ``saesteer bench serve``: SmolLM2-135M-Instruct's config with
random weights, and a random 16k JumpReLU SAE at layer 12, both saved the way a user's would be.

    python benchmarks/build_serve_model.py OUT [--layer 12] [--d-sae 16384] [--seed 0]

writes ``OUT/model`` (``LlamaForCausalLM.save_pretrained``: hidden 576, 30 layers, 9 heads / 3 KV
heads, intermediate 1536, vocab 49152, tied embeddings; and a word-level tokenizer with one token per
id of the vocabulary, so every id the random model samples decodes) and ``OUT/sae`` (sae-lens's
``JumpReLUSAE.save_model`` on ``blocks.{layer}.hook_resid_post``). No download: the weights are
random, so the benchmark measures the serving path at that shape, not the model's text. Then:

    saesteer bench serve --model OUT/model --sae smol=OUT/sae --concurrency 32 --new-tokens 32 \\
        --variants none,saesteer --no-enforce-eager --rounds 16
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

#: SmolLM2-135M-Instruct's architecture (its config.json), without its weights.
SMOLLM2_135M = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, vocab_size=49152, max_position_embeddings=8192, rms_norm_eps=1e-5,
                    rope_theta=100000.0, tie_word_embeddings=True, hidden_act="silu")


def word_tokenizer(vocab_size: int):
    """A fast tokenizer with exactly ``vocab_size`` ids (``<bos>`` 0, ``<eos>`` 1, ``<pad>`` 2, then
    ``w3`` ...): a random model samples every id, and each must decode."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<bos>", "<eos>", "<pad>"]
    vocab = {t: i for i, t in enumerate(specials)}
    vocab.update({f"w{i}": i for i in range(len(specials), vocab_size)})
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")


def build(out: str | Path, layer: int = 12, d_sae: int = 16384, seed: int = 0) -> tuple[Path, Path]:
    """Write the model and the SAE under ``out``; returns their directories."""
    from sae_lens.saes import JumpReLUSAE, JumpReLUSAEConfig
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out)
    tok = word_tokenizer(SMOLLM2_135M["vocab_size"])
    cfg = LlamaConfig(**SMOLLM2_135M, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, torch_dtype="float32")
    if not 0 <= layer < cfg.num_hidden_layers:
        raise ValueError(f"--layer: expected 0..{cfg.num_hidden_layers - 1}, got {layer}")
    if d_sae < 1:
        raise ValueError(f"--d-sae: expected >= 1, got {d_sae}")
    torch.manual_seed(seed)
    model_dir, sae_dir = out / "model", out / "sae"
    LlamaForCausalLM(cfg).eval().save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    d_in = cfg.hidden_size
    c = JumpReLUSAEConfig(d_in=d_in, d_sae=d_sae, dtype="float32")
    c.metadata.hook_name = f"blocks.{layer}.hook_resid_post"
    sae = JumpReLUSAE(c)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (d_in ** -0.5 if name in ("W_enc", "W_dec") else 0.1))
        sae.threshold.copy_(torch.rand(d_sae, generator=g) * 0.6)
    sae.save_model(sae_dir)
    return model_dir, sae_dir


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="directory to write model/ and sae/ into")
    ap.add_argument("--layer", type=int, default=12, help="the SAE's layer (default 12)")
    ap.add_argument("--d-sae", type=int, default=16384, help="the SAE's width (default 16384)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    model_dir, sae_dir = build(a.out, a.layer, a.d_sae, a.seed)
    print(f"model: {model_dir}\nsae:   {sae_dir}")


if __name__ == "__main__":
    main()
