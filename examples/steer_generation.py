"""Steer generation with SAE features: unsteered vs ablated vs clamped replies.

    python examples/steer_generation.py            # the built-in refusal organism, if its weights are installed
    python examples/steer_generation.py --random   # a small random Llama (no weights needed)

With the organism, the features are picked the simple way: the SAE features whose mean activation on
the last prompt token differs most between harmful and harmless prompts. Ablating them on harmful
prompts should weaken refusal; clamping them high on harmless prompts should induce it (O'Brien et
al. 2024). The random model only shows the mechanics: the steered token ids differ from the unsteered.
"""

from __future__ import annotations

import argparse

import torch

import saesteer
from saesteer import Intervention


def last_token_features(model, tokenizer, sae, texts):
    """Mean SAE activations ``[d_sae]`` at the last prompt token, read at the SAE's hook point."""
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)  # left padding
    with torch.no_grad(), saesteer.capture(model, sae, transform=lambda x: x[:, -1].float()) as rec:
        model(**enc)
    return sae.encode(rec[sae.hook_name][0]).mean(0)


def organism_demo(k: int, clamp_value: float | None, max_new_tokens: int) -> None:
    from saesteer import organism

    org = organism.load()
    sae = saesteer.SAE.from_sae_lens(org.sae) if not isinstance(org.sae, saesteer.SAE) else org.sae
    harmful, harmless = organism.load_prompts("harmful")[:4], organism.load_prompts("harmless")[:4]
    fmt = [org.format_prompt(p) for p in harmful], [org.format_prompt(p) for p in harmless]
    diff = last_token_features(org.model, org.tokenizer, sae, fmt[0]) - last_token_features(
        org.model, org.tokenizer, sae, fmt[1]
    )
    feats = diff.topk(k).indices.tolist()
    clamp_value = clamp_value or float(diff.max()) * 4
    print(f"SAE at {sae.hook_name or f'blocks.{org.layer}.hook_resid_post'}; refusal-ish features {feats}\n")

    def show(title, prompts, replies):
        print(f"== {title}: refusal rate {sum(map(organism.is_refusal, replies))}/{len(replies)}")
        for p, r in zip(prompts, replies):
            print(f"  {p[:60]!r} -> {r[:90]!r}")

    show("harmful, unsteered", harmful, org.chat(harmful, max_new_tokens=max_new_tokens))
    with saesteer.steer(org.model, sae, Intervention(feats, "ablate"), layer=org.layer):
        show("harmful, features ablated", harmful, org.chat(harmful, max_new_tokens=max_new_tokens))
    show("harmless, unsteered", harmless, org.chat(harmless, max_new_tokens=max_new_tokens))
    with saesteer.steer(org.model, sae, Intervention(feats, "clamp", clamp_value), layer=org.layer,
                        positions="generated"):
        show(f"harmless, features clamped to {clamp_value:.1f} on generated tokens", harmless,
             org.chat(harmless, max_new_tokens=max_new_tokens))


def random_demo(k: int, clamp_value: float | None, max_new_tokens: int) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM
    from sae_lens.saes import JumpReLUSAE, JumpReLUSAEConfig

    torch.manual_seed(0)
    d, layer = 64, 1
    model = LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=d, intermediate_size=128, num_hidden_layers=3,
                                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=0,
                                         bos_token_id=None, eos_token_id=None)).eval()
    with torch.no_grad():
        model.get_input_embeddings().weight.normal_()  # a residual stream the random SAE fires on
    cfg = JumpReLUSAEConfig(d_in=d, d_sae=256)
    cfg.metadata.hook_name = f"blocks.{layer}.hook_resid_post"
    raw = JumpReLUSAE(cfg)
    with torch.no_grad():
        for p in raw.parameters():
            p.copy_(torch.randn(p.shape) * (d**-0.5 if p.dim() == 2 else 0.1))
        raw.threshold.uniform_(0, 0.6)
    sae = saesteer.SAE.from_sae_lens(raw)

    prompts = torch.randint(1, 256, (3, 8))
    attention_mask = torch.ones_like(prompts)
    attention_mask[0, :3] = 0  # row 0 is a shorter, left-padded prompt
    gen = dict(attention_mask=attention_mask, max_new_tokens=max_new_tokens, do_sample=False)

    with torch.no_grad(), saesteer.capture(model, sae) as rec:
        model(prompts, attention_mask=attention_mask)
    feats = (sae.encode(rec[sae.hook_name][0]) > 0).flatten(0, 1).sum(0).topk(k).indices.tolist()  # the most active features
    clamp_value = clamp_value or 20.0

    def show(title, out):
        print(f"== {title}")
        for row in out[:, prompts.shape[1]:].tolist():
            print("  ", row)

    show("unsteered", model.generate(prompts, **gen))
    with saesteer.steer(model, sae, Intervention(feats, "ablate")):
        show(f"ablate {feats}", model.generate(prompts, **gen))
    with saesteer.steer(model, sae, Intervention(feats, "clamp", clamp_value), positions="generated"):
        show(f"clamp {feats} to {clamp_value} on generated tokens", model.generate(prompts, **gen))
    # One batch, one intervention per row: an A/B comparison in a single generate call.
    rows = [None, Intervention(feats, "ablate"), Intervention(feats, "clamp", clamp_value)]
    with saesteer.steer(model, sae, rows):
        show("per row: none / ablate / clamp (all positions)", model.generate(prompts, **gen))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--random", action="store_true", help="use a small random Llama instead of the organism")
    ap.add_argument("-k", type=int, default=8, help="how many features to steer")
    ap.add_argument("--clamp", type=float, default=None, help="clamp value (default: picked from the data)")
    ap.add_argument("--max-new-tokens", type=int, default=24)
    args = ap.parse_args()
    if not args.random:
        try:
            return organism_demo(args.k, args.clamp, args.max_new_tokens)
        except FileNotFoundError as e:  # a source checkout without the shipped weights
            print(f"(no built-in organism weights: {e}; using a small random Llama)\n")
    random_demo(args.k, args.clamp, args.max_new_tokens)


if __name__ == "__main__":
    main()
