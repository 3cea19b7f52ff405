"""``saesteer demo`` (what ``make demo`` runs): the whole method on the built-in refusal organism.

1. The organism refuses harmful requests and helps with harmless ones.
2. ``saesteer discover`` (small sample sizes) finds the refusal direction, the SAE features near it
   and a minimal set whose ablation flips refusal.
3. Steering with those features: ablating them jailbreaks harmful prompts; clamping them high makes
   harmless prompts refused.

Without the organism's weights (a source checkout that has not trained one) it falls back to a
real end-to-end steer on a small random Llama built from a config.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm.auto import tqdm

__all__ = ["run_demo", "register"]


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows])


def _short(s: str, n: int = 60) -> str:
    s = " ".join(s.split())
    return s if len(s) <= n else s[: n - 3] + "..."


def _organism_demo(n_show: int, out: Path | None) -> int:
    from .. import organism
    from ..hf import steer
    from ..intervention import Intervention
    from ..refusal.chat import generate
    from ..refusal.data import shipped_prompts
    from ..refusal.discover import DiscoverConfig, discover
    from ..refusal.judges import SubstringJudge, refusal_rate
    from ..refusal.discover import write_discover_outputs
    from .common import organism_search_prompts, resolve_sae

    steps = tqdm(total=4, desc="saesteer demo")
    org = organism.load()
    sae = resolve_sae("organism", organism=org)
    model, tok = org.model, org.tokenizer
    harmful, harmless = shipped_prompts("harmful"), shipped_prompts("harmless")
    steps.update()

    h_show, l_show = harmful[-n_show:], harmless[-n_show:]
    base_h = generate(model, tok, h_show, max_new_tokens=24, progress=False)
    base_l = generate(model, tok, l_show, max_new_tokens=24, progress=False)
    print("\n== 1. The organism, unsteered ==")
    print(_table([[_short(p, 48), _short(r)] for p, r in zip(h_show + l_show, base_h + base_l)], ["prompt", "reply"]))
    steps.update()

    cfg = DiscoverConfig(n_direction=24, n_val=8, n_search=6, n_heldout=10, n_candidates=16, fm_samples=64, per_prompt=1, max_new_tokens=16)
    # The direction and the search run on fresh generated prompts; the shipped ones are held out
    # (the shown ones are not used by discover at all).
    search_h, search_l = organism_search_prompts(cfg.n_direction + cfg.n_val + cfg.n_search, cfg.n_direction + cfg.n_val, seed=cfg.seed + 1)
    res = discover(model, tok, sae, search_h, search_l, cfg, heldout_harmful=harmful[:-n_show],
                   heldout_harmless=harmless[:-n_show], progress=False)
    r = res.results
    if out is not None:
        res.spec.model = "organism"
        write_discover_outputs(res, out, "organism")
    steps.update()

    feats = r["minimal_set"]
    top = [c[0] for c in r["candidates"][:4]]  # the four top-ranked refusal features
    ablate = lambda: steer(model, sae, Intervention(feats, "ablate"))  # noqa: E731
    # Clamp the top refusal features high (O'Brien et al.): the smallest multiple of their typical
    # activation on harmful prompts that makes the shown harmless prompts refused; too high a clamp
    # breaks the model instead (the capability cost that `saesteer eval --sweep` measures).
    from ..refusal.chat import format_prompts
    from ..refusal.dormant import site_activations

    acts = torch.cat([a for _, a in site_activations(model, tok, sae, format_prompts(tok, harmful[:16]))])
    typical = float(acts[:, top].max(0).values.mean().clamp_min(1.0))
    judge = SubstringJudge()
    for mult in (1.0, 1.5, 2.0, 3.0):
        clamp_value = mult * typical
        clamp = lambda: steer(model, sae, Intervention(top, "clamp", clamp_value), positions="prompt")  # noqa: E731
        clamp_l = generate(model, tok, l_show, max_new_tokens=24, steering=clamp, progress=False)
        if refusal_rate(clamp_l, judge) >= 0.5:
            break
    abl_h = generate(model, tok, h_show, max_new_tokens=24, steering=ablate, progress=False)
    steps.update()
    steps.close()

    d = r["direction"]
    print(f"\n== 2. saesteer discover ({r['timings_s']['total']:.0f} s) ==")
    g = d["generation"]
    print(f"refusal direction: layer {d['layer']}, position {d['position']}; harmful prompts refused "
          f"{g['harmful_refusal']:.0%} -> {g['harmful_refusal_ablated']:.0%} with it ablated ({d['ablation']}), "
          f"harmless {g['harmless_refusal']:.0%} -> {g['harmless_refusal_added']:.0%} with it added "
          f"({g['harmless_refusal_added_prompt']:.0%} added at the prompt only)")
    print(f"SAE {r['sae']['hook_name']} ({r['sae']['architecture']}, {r['sae']['d_sae']} features); "
          f"top candidates by {r['candidate_method']}: {[c[0] for c in r['candidates'][:8]]}")
    print(f"minimal jailbreak set: {feats}; attack success on held-out harmful prompts "
          f"{r['asr']['baseline']:.0%} -> {r['asr']['minimal_set']:.0%} (with FM-added features {r['asr']['with_interactions']:.0%})")

    print("\n== 3. Steering with the refusal features ==")
    rows = [[_short(p, 40), _short(a, 44), _short(b, 44)] for p, a, b in zip(h_show, base_h, abl_h)]
    print(_table(rows, ["harmful prompt", "unsteered", f"ablate the {len(feats)} features"]))
    rows = [[_short(p, 40), _short(a, 44), _short(b, 44)] for p, a, b in zip(l_show, base_l, clamp_l)]
    print(_table(rows, ["harmless prompt", "unsteered", f"clamp {top} = {clamp_value:.1f} on the prompt"]))
    summary = [
        ["harmful refused", f"{refusal_rate(base_h, judge):.0%}", f"{refusal_rate(abl_h, judge):.0%} (ablated)"],
        ["harmless refused", f"{refusal_rate(base_l, judge):.0%}", f"{refusal_rate(clamp_l, judge):.0%} (clamped high)"],
    ]
    print()
    print(_table(summary, ["", "unsteered", "steered"]))
    if out is not None:
        print(f"\nfull results: {out / 'report.md'}")
    return 0


def _config_model_demo() -> int:
    """Fallback without organism weights: a real steer on a small random Llama from a config."""
    import saesteer
    from transformers import LlamaConfig, LlamaForCausalLM

    print("The organism's weights are not in this checkout (train them with `saesteer organism train`);")
    print("showing a real end-to-end steer on a small random Llama built from a config instead.\n")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2)
    model = LlamaForCausalLM(cfg).eval()
    d_sae = 512
    W_dec = torch.nn.functional.normalize(torch.randn(d_sae, 64), dim=-1)
    sae = saesteer.SAE(architecture="jumprelu", W_enc=W_dec.t().clone() * 20, W_dec=W_dec, b_enc=torch.zeros(d_sae),
                       threshold=torch.full((d_sae,), 0.05), hook_name="blocks.1.hook_resid_post")
    ids = torch.randint(0, 256, (2, 12))
    with torch.no_grad():
        kw = dict(attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False, pad_token_id=0)
        base = model.generate(ids, **kw)
        with saesteer.steer(model, sae, saesteer.Intervention(list(range(8)), "clamp", 50.0)):
            steered = model.generate(ids, **kw)
    print("unsteered tokens:", base[:, 12:].tolist())
    print("steered tokens:  ", steered[:, 12:].tolist())
    print("changed:", not torch.equal(base, steered), "| backend:", saesteer.ops.resolve_backend("steer", torch.device("cpu")))
    return 0


def run_demo(n_show: int = 4, out: str | Path | None = None) -> int:
    from .. import organism

    try:
        organism.read_manifest()  # the weights are there (a file read: the model loads once, in the demo)
    except FileNotFoundError:
        return _config_model_demo()
    return _organism_demo(n_show, Path(out) if out else None)


def register(sub) -> None:
    p = sub.add_parser("demo", help="the whole method on the built-in refusal organism (a few minutes on a 2-core CPU)",
                       description="The built-in organism unsteered, then discover with small sample sizes, then "
                                   "steering with the features it finds: ablating them jailbreaks harmful prompts, "
                                   "clamping them high makes harmless prompts refused.")
    p.add_argument("--show", type=int, default=4, help="prompts of each kind to show")
    p.add_argument("--out", help="also write the discover outputs (results.json, report.md, plots) here")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from .common import check_output

    if args.out:
        check_output(args.out, "--out")  # before the minutes of work, not after
    return run_demo(args.show, args.out)
