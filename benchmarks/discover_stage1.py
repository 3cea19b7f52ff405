"""Time ``saesteer discover``'s stage 1 (refusal tokens, Arditi's prompt filter, and scoring every
(layer, position) candidate direction by bypass / induce / KL) on a model of SmolLM2-135M's shape
built from its config with random weights, with a 2048-feature sae-lens SAE (the SAE does not enter
stage 1; it is built so the run's inputs are discover's).

    PYTHONPATH=python python benchmarks/discover_stage1.py [--n-direction 32] [--n-val 16]

Prints one JSON line: the seconds of stage 1 (wall clock, and the CPU seconds of all the process's
threads, which a shared machine disturbs less), the multiply-adds of every ``nn.Linear`` call in it
(``linear_gmac``: the model's projections and LM head, nearly all of a forward's arithmetic; a count
no other process disturbs), the number of candidates scored, and the versions.
Random weights refuse nothing, so the prompt filter keeps every prompt (it falls back to the whole
split) and the timing is the cost of the scoring itself.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch


def build(seed: int = 0):
    """``(model, tokenizer, sae)``: SmolLM2-135M's shape, random weights; a BPE tokenizer with a chat
    template trained on the shipped prompts; a random 2048-feature JumpReLU SAE at layer 15."""
    from sae_lens.saes import JumpReLUSAE, JumpReLUSAEConfig
    from transformers import LlamaConfig, LlamaForCausalLM

    import saesteer
    from saesteer.organism.training.tokenizer import train_tokenizer
    from saesteer.refusal.data import shipped_prompts

    texts = shipped_prompts("harmful") + shipped_prompts("harmless") + ["I'm sorry, but I can't help with that."]
    tok = train_tokenizer(texts * 4, vocab_size=2048)
    cfg = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                      num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    c = JumpReLUSAEConfig(d_in=576, d_sae=2048, dtype="float32")
    c.metadata.hook_name = "blocks.15.hook_resid_post"
    sl = JumpReLUSAE(c)
    with torch.no_grad():
        for _, p in sl.named_parameters():
            p.copy_(torch.randn(p.shape) * 576 ** -0.5)
    return model, tok, saesteer.SAE.from_sae_lens(sl)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-direction", type=int, default=32, help="prompts per class for the difference in means")
    ap.add_argument("--n-val", type=int, default=16, help="prompts per class the candidates are scored on")
    ap.add_argument("--max-layer-frac", type=float, default=0.8,
                    help="score the candidates of the first FRAC of the layers (discover's default 0.8)")
    ap.add_argument("--score-all", action="store_true",
                    help="score every candidate by all three scores (discover --score-all-directions)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)

    import saesteer
    import transformers
    from saesteer.refusal.data import shipped_prompts
    from saesteer.refusal.discover import DiscoverConfig, direction_stage, split_prompts

    model, tok, _ = build()
    cfg = DiscoverConfig(n_direction=a.n_direction, n_val=a.n_val, n_search=0, n_heldout=1,
                          max_layer_frac=a.max_layer_frac)
    if a.score_all:
        cfg.score_all_directions = True
    splits = split_prompts(shipped_prompts("harmful"), shipped_prompts("harmless"), cfg)
    macs = [0]

    def count(module, args, output):
        macs[0] += args[0].numel() // module.in_features * module.in_features * module.out_features

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    # The scoring of the candidates (bypass / induce / KL) timed on its own too.
    import saesteer.refusal.direction as direction

    scoring = {"s": 0.0, "cpu_s": 0.0, "gmac": 0.0}
    score_candidates = direction.score_candidates

    def timed(*args, **kwargs):
        t, c, m = time.perf_counter(), time.process_time(), macs[0]
        try:
            return score_candidates(*args, **kwargs)
        finally:
            scoring["s"] += time.perf_counter() - t
            scoring["cpu_s"] += time.process_time() - c
            scoring["gmac"] += (macs[0] - m) / 1e9

    direction.score_candidates = timed
    t0, c0 = time.perf_counter(), time.process_time()
    ds = direction_stage(model, tok, splits, cfg, progress=False)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    for h in hooks:
        h.remove()
    direction.score_candidates = score_candidates
    n_cands = len({(r["layer"], r["position"]) for r in ds.direction.table})
    out = {"stage1_s": round(dt, 1), "stage1_cpu_s": round(cpu, 1), "linear_gmac": round(macs[0] / 1e9, 1),
           "scoring_s": round(scoring["s"], 1), "scoring_cpu_s": round(scoring["cpu_s"], 1),
           "scoring_gmac": round(scoring["gmac"], 1), "load_avg_1min": round(os.getloadavg()[0], 1),
           "candidates": n_cands, "table_rows": len(ds.direction.table),
           "selected": [ds.direction.layer, ds.direction.position, ds.direction.ablation], "n_direction": a.n_direction,
           "n_val": a.n_val, "max_layer_frac": a.max_layer_frac, "threads": torch.get_num_threads(), "torch": torch.__version__,
           "transformers": transformers.__version__, "saesteer": saesteer.__version__, "machine": platform.machine(),
           "python": platform.python_version()}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
