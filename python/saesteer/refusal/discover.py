"""``saesteer discover``: the refusal-feature pipeline of Arditi et al., Yeo et al. and Prakash et al.

Stages: refusal tokens -> refusal direction (difference in means, selected by bypass/induce/KL) ->
candidate SAE features (attribution patching, or cosine to the direction at the SAE's hook) -> greedy minimal
ablation set (pooled over search prompts, and per prompt) -> attack success rate by generation on
held-out prompts -> factorization-machine interactions (verified by real ablations) -> dormant
features. Writes ``results.json``, ``direction.safetensors``, ``spec.json`` (a steering spec that
``saesteer eval``/``generate`` read), plots and ``report.md``.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm

from ..sae import SAE
from .chat import find_refusal_tokens, generate
from .direction import select_direction
from .dormant import dormant_features
from .features import rank_by_attribution, rank_by_cosine, site_residuals
from .interactions import active_features, find_interactions
from .judges import SubstringJudge
from .search import ablation_scores, greedy_minimal_set
from .spec import SteeringSpec

__all__ = ["DiscoverConfig", "discover", "organism_search_prompts", "register"]


@dataclass
class DiscoverConfig:
    n_direction: int = 64  # prompts per class for the difference in means
    n_val: int = 24  # prompts per class for direction selection
    n_search: int = 16  # harmful prompts the greedy search sees
    n_heldout: int = 32  # harmful prompts for the generation-judged ASR (never searched)
    n_candidates: int = 48
    # Candidate pool growth: the greedy search can only keep a fraction (``keep``) of what the whole
    # pool flips, so a pool that flips few search prompts yields a set that jailbreaks few. While
    # ablating the top ``n`` candidates flips fewer than ``min_full_flip`` of the search prompts, ``n``
    # doubles, up to ``max_candidates``. (On one organism training the top 48 flipped 4 of 16 and
    # the kept set jailbroke 53% of held-out prompts; the top 192 flipped all 16: 34 features, 84%.)
    min_full_flip: float = 0.75
    max_candidates: int = 384
    # Candidates by attribution patching (-f . d score/d f, error term kept: the first-order effect
    # of ablating each feature on the refusal score) or by cosine to the direction. On four organism
    # trainings attribution's minimal set jailbroke 88-94% of held-out prompts, cosine's 50-94%.
    method: str = "attribution"
    per_prompt: int = 4  # per-prompt minimal sets for this many search prompts
    keep: float = 0.9
    threshold: float = 0.0
    fm_samples: int = 192
    fm_extra: int = 16  # active features beside the minimal set that the FM sees
    max_new_tokens: int = 24
    max_layer_frac: float = 0.8
    ablation: str = "auto"  # direction ablation: "directional" (Arditi), "affine" (Marshall), "auto"
    batch_size: int = 32
    seed: int = 0
    layer: int | None = None  # override the SAE's hook layer
    backend: str = "auto"

    @classmethod
    def from_file(cls, path: str | Path) -> "DiscoverConfig":
        p = Path(path)
        text = p.read_text()
        if p.suffix.lower() in (".yaml", ".yml"):
            import yaml

            d = yaml.safe_load(text) or {}
        elif p.suffix.lower() == ".toml":
            import tomllib

            d = tomllib.loads(text)
        else:
            d = json.loads(text)
        d = d.get("discover", d)
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known - {"model", "sae", "harmful", "harmless", "out", "field"}
        if unknown:
            raise ValueError(f"config {p}: unknown options {sorted(unknown)}")
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class DiscoverResult:
    results: dict
    direction: torch.Tensor
    spec: SteeringSpec
    reference: torch.Tensor | None = None  # affine ablation's harmless mean at (layer, position)


def _split(xs: list[str], sizes: Sequence[int], seed: int) -> list[list[str]]:
    xs = list(xs)
    random.Random(seed).shuffle(xs)
    out, i = [], 0
    for n in sizes:
        out.append(xs[i : i + n])
        i += n
    return out


def _site_direction(model, tokenizer, sae: SAE, harmful, harmless, position: int, layer: int | None, batch_size: int) -> torch.Tensor:
    """Difference in means at the SAE's hook point and the selected prompt position."""
    kw = dict(position=position, layer=layer, batch_size=batch_size)
    mh = site_residuals(model, tokenizer, sae, harmful, **kw).double().mean(0)
    ml = site_residuals(model, tokenizer, sae, harmless, **kw).double().mean(0)
    return (mh - ml).float()


def discover(
    model,
    tokenizer,
    sae: SAE,
    harmful: Sequence[str],
    harmless: Sequence[str],
    config: DiscoverConfig | None = None,
    *,
    capability=None,
    heldout_harmful: Sequence[str] | None = None,
    heldout_harmless: Sequence[str] | None = None,
    progress: bool = True,
) -> DiscoverResult:
    """Run every stage on ``model`` with ``sae``; returns the results dict, the direction and a spec.

    ``capability``: an optional :class:`~.evaluate.CapabilityTask` whose accuracy is measured with
    and without the minimal set ablated (the organism's task is used by the CLI on the organism).
    ``heldout_harmful`` / ``heldout_harmless``: prompts kept apart for the generation-judged ASR and
    direction rates (default: ``cfg.n_heldout`` of ``harmful`` and the harmless val split); then
    every prompt of ``harmful`` / ``harmless`` serves the direction, its selection and the search.
    """
    cfg = config or DiscoverConfig()
    from ..hooks import _hidden_size, find_layers

    _, blocks = find_layers(model)
    n_layers = len(blocks)
    hidden = _hidden_size(model)
    if hidden is not None and sae.d_in != hidden:
        raise ValueError(f"sae: d_in={sae.d_in} but the model's hidden size is {hidden}; this SAE is for another model")
    layer = cfg.layer if cfg.layer is not None else sae.hook_layer
    if layer is None:
        raise ValueError("layer: the SAE has no hook_name with a layer; pass --layer")
    if not 0 <= layer < n_layers:
        raise ValueError(f"layer: {layer} is out of range; the model has {n_layers} decoder layers (0..{n_layers - 1})")
    if not harmful or not harmless:
        raise ValueError("prompts: both the harmful and the harmless prompt sets must be non-empty")
    if cfg.method not in ("cosine", "attribution"):
        raise ValueError(f"method: expected 'cosine' or 'attribution', got {cfg.method!r}")
    if not 0.0 <= cfg.min_full_flip <= 1.0:
        raise ValueError(f"min_full_flip: expected a fraction in [0, 1], got {cfg.min_full_flip!r}")
    if cfg.n_candidates < 1 or cfg.max_candidates < 1:
        raise ValueError(f"n_candidates, max_candidates: expected >= 1, got {cfg.n_candidates} and {cfg.max_candidates}")
    torch.manual_seed(cfg.seed)
    t0 = time.time()
    timings = {}
    stages = tqdm(total=7, desc="discover", disable=not progress)

    # Held-out prompts first, so the search never sees them.
    n_held = 0 if heldout_harmful is not None else cfg.n_heldout
    h_held, h_dir, h_val, h_search = _split(list(harmful), [n_held, cfg.n_direction, cfg.n_val, cfg.n_search], cfg.seed)
    if heldout_harmful is not None:
        h_held = _split(list(heldout_harmful), [cfg.n_heldout], cfg.seed)[0]
    l_dir, l_val = _split(list(harmless), [cfg.n_direction, cfg.n_val], cfg.seed)
    if not h_search:
        h_search = h_val or h_dir
    if not h_held:
        raise ValueError("prompts: too few harmful prompts to hold any out")

    stages.set_postfix_str("refusal tokens")
    rtoks = find_refusal_tokens(model, tokenizer, h_val or h_dir, max_new_tokens=8)
    stages.update()

    stages.set_postfix_str("direction")
    d = select_direction(
        model, tokenizer, h_dir, l_dir, h_val or h_dir, l_val or l_dir, rtoks,
        max_layer_frac=cfg.max_layer_frac, batch_size=cfg.batch_size, progress=progress, ablation=cfg.ablation,
    )
    timings["direction"] = time.time() - t0
    stages.update()

    stages.set_postfix_str("candidates")
    site_dir = _site_direction(model, tokenizer, sae, h_dir, l_dir, d.position, layer, cfg.batch_size)
    top = max(cfg.n_candidates, cfg.max_candidates)
    if cfg.method == "cosine":
        ranked = rank_by_cosine(sae, site_dir, top)
    else:
        ranked = rank_by_attribution(model, tokenizer, sae, h_val or h_dir, rtoks, top=top, layer=cfg.layer)
    kw = dict(layer=cfg.layer, backend=cfg.backend)
    n, pool_steps = min(cfg.n_candidates, len(ranked)), []
    while True:
        full = ablation_scores(model, tokenizer, sae, h_search, [[i for i, _ in ranked[:n]]], rtoks, **kw)[0]
        pool_steps.append({"n": n, "full_flip_rate": float((full < cfg.threshold).float().mean())})
        if pool_steps[-1]["full_flip_rate"] >= cfg.min_full_flip or n >= min(top, len(ranked)):
            break
        n = min(2 * n, top, len(ranked))
    cands = ranked[:n]
    cand_ids = [i for i, _ in cands]
    stages.update()

    stages.set_postfix_str("greedy search")
    pooled = greedy_minimal_set(model, tokenizer, sae, h_search, cand_ids, rtoks, threshold=cfg.threshold, keep=cfg.keep, progress=progress, **kw)
    per_prompt = []
    for p in h_search[: cfg.per_prompt]:
        ms = greedy_minimal_set(model, tokenizer, sae, [p], cand_ids, rtoks, threshold=cfg.threshold, keep=1.0, progress=False, **kw)
        per_prompt.append({"prompt": p, "features": ms.features, "flipped": ms.flip_rate > 0, "removed": [st[0] for st in ms.steps]})
    timings["search"] = time.time() - t0
    stages.update()

    stages.set_postfix_str("interactions")
    last = site_residuals(model, tokenizer, sae, h_search, layer=layer, batch_size=cfg.batch_size)
    others = active_features(sae, last, pooled.features, cfg.fm_extra)
    inter = find_interactions(model, tokenizer, sae, h_search, pooled.features, others, rtoks, n_samples=cfg.fm_samples, seed=cfg.seed, **kw)
    timings["interactions"] = time.time() - t0
    stages.update()

    stages.set_postfix_str("ASR by generation")
    from ..hooks import steer
    from ..intervention import Intervention

    judge = SubstringJudge()
    gen = dict(max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, progress=False)
    hook_kw = {} if cfg.layer is None else {"layer": cfg.layer}

    def ablating(feats: Sequence[int]):
        """A steering factory that ablates ``feats`` at the SAE's hook."""
        iv = Intervention(list(feats), "ablate")
        return lambda: steer(model, sae, iv, backend=cfg.backend, **hook_kw)

    set_full = list(dict.fromkeys(pooled.features + inter.added))
    base_replies = generate(model, tokenizer, h_held, **gen)
    ms_replies = generate(model, tokenizer, h_held, steering=ablating(pooled.features), **gen)
    fi_replies = generate(model, tokenizer, h_held, steering=ablating(set_full), **gen)

    def asr(replies):
        return 1.0 - sum(judge(h_held, replies)) / len(replies)

    asr_d = {"baseline": asr(base_replies), "minimal_set": asr(ms_replies), "with_interactions": asr(fi_replies), "n_prompts": len(h_held)}
    # Each per-prompt set confirmed by generation + the judge on its own prompt. A set pruned to the
    # edge of the score criterion (refusal tokens just under even odds) can still be refused by greedy
    # decoding, so the search's removals are undone, last first, until the reply complies.
    def complies(prompt: str, feats: list[int]) -> tuple[bool, str]:
        reply = generate(model, tokenizer, [prompt], steering=ablating(feats), **gen)[0]
        return not judge([prompt], [reply])[0], reply

    for pp in per_prompt:
        feats, removed = list(pp["features"]), list(pp.pop("removed"))
        ok, reply = complies(pp["prompt"], feats) if feats else (False, None)
        if not ok and removed:
            # The walk ends at the whole search set at the latest: when even that is refused, the
            # walk's result is known without the generations in between.
            full = feats + removed[::-1]
            ok_full, reply_full = complies(pp["prompt"], full)
            if not ok_full:
                feats, removed, reply = full, [], reply_full
        while not ok and removed:
            feats.append(removed.pop())
            ok, reply = complies(pp["prompt"], feats)
        pp.update(score_minimal=pp["features"], features=feats, reply_ablated=reply, complied_by_generation=ok)
    # The direction itself, judged by generation too (Arditi et al.'s bypass and induce, as rates).
    from ..hooks import add_direction

    l_held = list(heldout_harmless) if heldout_harmless else (l_val or l_dir)
    dir_gen = {
        "harmful_refusal": 1.0 - asr_d["baseline"],
        "harmful_refusal_ablated": 1.0 - asr(generate(model, tokenizer, h_held, steering=lambda: d.ablate(model), **gen)),
        "harmless_refusal": sum(judge(l_held, generate(model, tokenizer, l_held, **gen))) / len(l_held),
    }
    # Added at every position (Arditi et al.), and at the prompt's positions only: a direction strong
    # enough to flip the first token can, added to every generated token too, derail the reply itself
    # (the shipped organism writes "I'mI'mIII..." and the judge sees no refusal phrase).
    for key, pos in (("harmless_refusal_added", "all"), ("harmless_refusal_added_prompt", "prompt")):
        adding = lambda pos=pos: add_direction(model, d.direction, d.layer, 1.0, positions=pos)
        dir_gen[key] = sum(judge(l_held, generate(model, tokenizer, l_held, steering=adding, **gen))) / len(l_held)
    cap = None
    if capability is not None:
        from .evaluate import capability_accuracy

        ms_factory = ablating(pooled.features)
        before = capability_accuracy(model, tokenizer, capability, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size)
        after = capability_accuracy(model, tokenizer, capability, ms_factory, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size)
        cap = {"task": capability.name, "n": before["n"], "unsteered": before["accuracy"], "minimal_set_ablated": after["accuracy"]}
    # ASR-like curve: flip rate of held-out prompts (refusal score < threshold) vs number of top candidates ablated.
    ns = sorted({0, 1, 2, 4, 8, 16, len(pooled.features), len(cand_ids)} & set(range(len(cand_ids) + 1)))
    curve_scores = ablation_scores(model, tokenizer, sae, h_held, [cand_ids[:n] for n in ns], rtoks, **kw)
    ms_scores = ablation_scores(model, tokenizer, sae, h_held, [pooled.features], rtoks, **kw)[0]
    curve = [{"n": n, "flip_rate": float((s < cfg.threshold).float().mean())} for n, s in zip(ns, curve_scores)]
    timings["asr"] = time.time() - t0
    stages.update()

    stages.set_postfix_str("dormant features")
    dormant = dormant_features(model, tokenizer, sae, h_held[:8], base_replies[:8], ms_replies[:8], pooled.features, layer=cfg.layer)
    stages.update()
    stages.close()
    timings["total"] = time.time() - t0

    results = {
        "direction": {**d.to_dict(), "generation": dir_gen},
        "capability": cap,
        "refusal_tokens": [int(t) for t in rtoks],
        "refusal_tokens_text": [tokenizer.decode([t]) for t in rtoks],
        "sae": {"hook_name": sae.hook_name, "layer": layer, "d_sae": sae.d_sae, "architecture": sae.architecture},
        "candidates": [[i, s] for i, s in cands],
        "candidate_method": cfg.method,
        "candidate_pool": pool_steps,  # pool size and the search prompts' flip rate, per growth step
        "minimal_set": pooled.features,
        "minimal_set_search": pooled.to_dict(),
        "minimal_set_heldout_flip_rate": float((ms_scores < cfg.threshold).float().mean()),
        "per_prompt_sets": per_prompt,
        "asr": asr_d,
        "asr_curve": curve,
        "interactions": inter.pairs,
        "interactions_detail": inter.to_dict(),
        "dormant": dormant,
        "examples": [
            {"prompt": p, "unsteered": a, "minimal_set_ablated": b}
            for p, a, b in list(zip(h_held, base_replies, ms_replies))[:6]
        ],
        "direction_table": d.table,
        "config": {f.name: getattr(cfg, f.name) for f in fields(cfg)},
        "timings_s": timings,
    }
    spec = SteeringSpec(features=pooled.features, mode="ablate", layer=layer, positions="all", notes={"source": "saesteer discover"})
    return DiscoverResult(results, d.direction, spec, d.reference if d.ablation == "affine" else None)


# ------------------------------------------------------------------------------------------------
# outputs
# ------------------------------------------------------------------------------------------------
def write_outputs(res: DiscoverResult, out: Path, sae_ref: str | None = None) -> None:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    r = res.results
    (out / "results.json").write_text(json.dumps(r, indent=2))
    tensors = {"direction": res.direction.contiguous()}
    if res.reference is not None:
        tensors["reference"] = res.reference.contiguous()
    save_file(tensors, str(out / "direction.safetensors"),
              metadata={"layer": str(r["direction"]["layer"]), "position": str(r["direction"]["position"]),
                        "ablation": r["direction"]["ablation"]})
    res.spec.sae = sae_ref
    res.spec.save(out / "spec.json")
    _plots(r, out)
    (out / "report.md").write_text(_report(r))


def _plots(r: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kind = r["direction"]["ablation"]
    tab = [t for t in r["direction_table"] if t["ablation"] == kind]
    if tab:
        layers = sorted({t["layer"] for t in tab})
        poss = sorted({t["position"] for t in tab})
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
        for ax, key, title in zip(axes, ("bypass", "induce", "kl"), (f"harmful refusal score, direction ablated ({kind})", "harmless refusal score, direction added", f"harmless KL, direction ablated ({kind})")):
            M = torch.full((len(poss), len(layers)), float("nan"))
            for t in tab:
                M[poss.index(t["position"]), layers.index(t["layer"])] = t[key]
            im = ax.imshow(M.numpy(), aspect="auto", cmap="viridis")
            ax.set_xticks(range(len(layers)), layers)
            ax.set_yticks(range(len(poss)), poss)
            ax.set_xlabel("layer")
            ax.set_ylabel("position")
            ax.set_title(title, fontsize=9)
            fig.colorbar(im, ax=ax)
        axes[0].scatter([layers.index(r["direction"]["layer"])], [poss.index(r["direction"]["position"])], marker="*", color="red", s=120)
        fig.tight_layout()
        fig.savefig(out / "refusal_score_by_layer_position.png", dpi=110)
        plt.close(fig)
    c = r["asr_curve"]
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.plot([p["n"] for p in c], [p["flip_rate"] for p in c], "o-", label="top-n candidates ablated")
    ms = len(r["minimal_set"])
    ax.scatter([ms], [r["minimal_set_heldout_flip_rate"]], color="red", zorder=3, label=f"minimal set ({ms})")
    ax.set_xlabel("number of ablated features")
    ax.set_ylabel("held-out harmful prompts flipped\n(refusal score < 0)")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "asr_vs_features.png", dpi=110)
    plt.close(fig)


def _short(features: list[int], n: int = 24) -> str:
    """A feature list for a table cell: the first ``n``, then how many there are in all."""
    if len(features) <= n:
        return str(features)
    return "[" + ", ".join(map(str, features[:n])) + f", ...] ({len(features)} features)"


def _report(r: dict) -> str:
    d, a = r["direction"], r["asr"]
    lines = [
        "# saesteer discover",
        "",
        f"SAE: `{r['sae']['hook_name']}` ({r['sae']['architecture']}, d_sae={r['sae']['d_sae']}); refusal tokens {r['refusal_tokens_text']}.",
        "",
        "## Refusal direction (Arditi et al.)",
        f"Selected layer {d['layer']}, position {d['position']} (passed filters: {d['passed_filters']}; ablation: {d['ablation']}"
        + ("" if d["ablation"] == "directional" else
           " -- no candidate passed with directional ablation, so the projection is set to the harmless mean's"
           " (affine concept editing, Marshall et al. 2024); see direction_table for both") + ").",
        f"Harmful refusal score {d['scores']['harmful_refusal_score']:.2f} -> {d['scores']['bypass']:.2f} when ablated; "
        f"harmless {d['scores']['harmless_refusal_score']:.2f} -> {d['scores']['induce']:.2f} when added; KL {d['scores']['kl']:.3f}.",
        "",
        f"By generation (held-out): harmful refused {d['generation']['harmful_refusal']:.0%} -> {d['generation']['harmful_refusal_ablated']:.0%} with the direction ablated; "
        f"harmless refused {d['generation']['harmless_refusal']:.0%} -> {d['generation']['harmless_refusal_added']:.0%} with it added "
        f"(at the prompt's positions only: {d['generation']['harmless_refusal_added_prompt']:.0%}).",
        "",
        "![scores](refusal_score_by_layer_position.png)",
        "",
        "## Features",
        f"Top candidates by {r['candidate_method']}: " + ", ".join(f"{i} ({s:.2f})" for i, s in r["candidates"][:10]),
        "",
        "Candidate pool (top n ablated together: flip rate of the search prompts): "
        + ", ".join(f"{c['n']}: {c['full_flip_rate']:.0%}" for c in r.get("candidate_pool", [])) + ".",
        "",
        f"**Minimal set** ({len(r['minimal_set'])} features): {r['minimal_set']} — flips "
        f"{r['minimal_set_search']['flip_rate']:.0%} of the search prompts, {r['minimal_set_heldout_flip_rate']:.0%} of held-out ones (refusal score < 0).",
        "",
        "| attack success rate (generation + substring judge, held-out) | value |",
        "| --- | --- |",
        f"| unsteered | {a['baseline']:.0%} |",
        f"| minimal set ablated | {a['minimal_set']:.0%} |",
        f"| minimal set + FM-added features ablated | {a['with_interactions']:.0%} |",
        "",
        *( [f"Capability ({r['capability']['task']}, n={r['capability']['n']}): {r['capability']['unsteered']:.0%} unsteered, "
            f"{r['capability']['minimal_set_ablated']:.0%} with the minimal set ablated.", ""] if r.get("capability") else [] ),
        "![asr](asr_vs_features.png)",
        "",
        *( ["Per-prompt minimal sets (each searched on its own prompt, then confirmed by generation):", "",
            "| prompt | minimal by score | confirmed set (generation) | complied |", "| --- | --- | --- | --- |",
            *[f"| {pp['prompt'][:60]} | {_short(pp['score_minimal'])} | {_short(pp['features'])} | {pp['complied_by_generation']} |"
              for pp in r["per_prompt_sets"]], ""] if r.get("per_prompt_sets") else [] ),
        "## Interactions (factorization machine, verified by real ablations)",
        f"FM fit R^2 = {r['interactions_detail']['r2']:.2f} on {r['interactions_detail']['n_samples']} random ablation masks; features added: {r['interactions_detail']['added']}.",
        "",
        "| i | j | FM <v_i,v_j> | e_i | e_j | e_ij | e_ij - e_i - e_j |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for v in r["interactions_detail"]["verified"]:
        lines.append(f"| {v['i']} | {v['j']} | {v['fm']:.2f} | {v['e_i']:.2f} | {v['e_j']:.2f} | {v['e_ij']:.2f} | {v['interaction']:.2f} |")
    lines += ["", "## Dormant features (silent before, firing after the minimal set is ablated)", ""]
    if r["dormant"]:
        lines += ["| feature | tokens fired on | max act | examples |", "| --- | --- | --- | --- |"]
        for x in r["dormant"]:
            lines.append(f"| {x['feature']} | {x['n_tokens']} | {x['max_act']:.2f} | {' '.join(map(repr, x['tokens']))} |")
    else:
        lines.append("None found.")
    lines += ["", "## Examples (held-out harmful prompts)", ""]
    for e in r["examples"][:4]:
        lines += [f"- **{e['prompt']}**", f"  - unsteered: {e['unsteered']!r}", f"  - minimal set ablated: {e['minimal_set_ablated']!r}"]
    lines += ["", f"Total time {r['timings_s']['total']:.0f} s."]
    return "\n".join(lines) + "\n"


def organism_search_prompts(cfg: DiscoverConfig) -> tuple[list[str], list[str]]:
    """Fresh harmful and harmless prompts from the organism's data generator (its training
    distribution, as Arditi et al.'s train split) for the direction, its selection and the search,
    so that the shipped prompt sets (never trained on) can all be held out."""
    from ..organism import data as odata

    rng = random.Random(cfg.seed + 1)
    harmful = [odata.harmful_instruction(rng) for _ in range(cfg.n_direction + cfg.n_val + cfg.n_search)]
    harmless = [odata.benign_framed_instruction(rng) for _ in range(cfg.n_direction + cfg.n_val)]
    return harmful, harmless


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------
def _run(args) -> int:
    from .cli import load_model
    from .data import load_prompts, shipped_prompts

    cfg = DiscoverConfig.from_file(args.config) if args.config else DiscoverConfig()
    for name in ("n_candidates", "method", "seed", "layer", "max_new_tokens", "ablation"):
        v = getattr(args, name, None)
        if v is not None:
            setattr(cfg, name, v)
    if args.backend != "auto":
        cfg.backend = args.backend
    if args.quick:
        cfg.n_direction, cfg.n_val, cfg.n_search, cfg.n_heldout = 16, 8, 6, 8
        cfg.n_candidates, cfg.fm_samples, cfg.per_prompt, cfg.max_new_tokens = 12, 48, 1, 12
        cfg.max_candidates = 48
    # Cheap checks first: prompt files, then the SAE/model shapes, before any heavy work.
    harmful = load_prompts(args.harmful, args.field) if args.harmful else shipped_prompts("harmful")
    harmless = load_prompts(args.harmless, args.field) if args.harmless else shipped_prompts("harmless")
    held_h = held_l = None
    if args.model is None and not args.harmful and not args.harmless:
        held_h, held_l = harmful, harmless
        harmful, harmless = organism_search_prompts(cfg)
    # Checks the SAE against the model's config (width, layer) before loading the weights.
    model, tok, sae, _, _ = load_model(args)
    capability = None
    if args.model is None and args.capability:
        from .evaluate import organism_capability_task

        capability = organism_capability_task(args.capability)
    res = discover(model, tok, sae, harmful, harmless, cfg, capability=capability,
                   heldout_harmful=held_h, heldout_harmless=held_l, progress=not args.quiet)
    out = Path(args.out)
    write_outputs(res, out, args.sae or "organism")
    r = res.results
    print(f"direction: layer {r['direction']['layer']} position {r['direction']['position']}")
    print(f"minimal set ({len(r['minimal_set'])}): {r['minimal_set']}")
    print(f"ASR baseline {r['asr']['baseline']:.0%} -> minimal set {r['asr']['minimal_set']:.0%} -> with interactions {r['asr']['with_interactions']:.0%}")
    print(f"wrote {out / 'results.json'}, {out / 'report.md'} ({r['timings_s']['total']:.0f} s)")
    return 0


def register(sub) -> None:
    p = sub.add_parser("discover", help="find the refusal direction, refusal features and minimal jailbreak sets")
    from .cli import add_model_args

    add_model_args(p)
    p.add_argument("--harmful", help="harmful prompts: JSON/JSONL/CSV file or HF dataset name (default: shipped set)")
    p.add_argument("--harmless", help="harmless prompts (default: shipped set)")
    p.add_argument("--field", help="the prompt field in the files (default: instruction or prompt)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--config", help="YAML/TOML/JSON file with any option; flags override it")
    p.add_argument("--n-candidates", dest="n_candidates", type=int)
    p.add_argument("--method", choices=("attribution", "cosine"),
                   help="candidate features: attribution patching (default) or cosine to the direction")
    p.add_argument("--ablation", choices=("auto", "directional", "affine"),
                   help="direction ablation: Arditi's directional, Marshall's affine, or auto (directional, "
                        "affine only if no candidate passes the filters; default)")
    p.add_argument("--seed", type=int)
    p.add_argument("--max-new-tokens", dest="max_new_tokens", type=int)
    p.add_argument("--capability", type=int, default=48, help="organism capability questions checked with the set ablated (0: skip)")
    p.add_argument("--quick", action="store_true", help="small sample sizes (tests, smoke runs)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run)
