"""``saesteer discover``: find the refusal direction, the refusal features and minimal jailbreak sets
(:func:`saesteer.refusal.discover.discover`), and write its outputs.

On the built-in organism (no ``--model``, no prompt files) the direction, its selection and the
search run on fresh prompts from the organism's training distribution, the shipped prompt sets are
all held out, and the organism's capability task is checked with the minimal set ablated.
"""

from __future__ import annotations

from .common import (add_model_args, check_output, check_run_args, expand_sae_refs, load_model, load_model_saes,
                     organism_capability_task, organism_search_prompts)

__all__ = ["register", "config_from_args", "search_inputs"]

#: On the built-in organism (no ``--model``) the direction's sample sizes are its own, smaller than
#: the 128 / 32 per class real models get, and its candidates come from zero-ablation attribution:
#: measured with --quick, its minimal set jailbroke 75% of held-out prompts (88% with
#: interactions), integrated gradients' 62% (75%).
ORGANISM = {"n_direction": 64, "n_val": 24, "attribution": "zero"}

#: ``--quick``: small sample sizes for tests and smoke runs.
QUICK = {"n_direction": 16, "n_val": 8, "n_search": 6, "n_heldout": 8, "n_candidates": 12, "fm_samples": 48,
         "per_prompt": 1, "max_new_tokens": 12, "max_candidates": 48}


def config_from_args(args):
    """The :class:`~saesteer.refusal.discover.DiscoverConfig` of the defaults (``--quick``'s small
    sizes, else the config's own), then what ``--config`` sets, then the flags: what is given
    explicitly always wins over ``--quick``."""
    from dataclasses import fields

    from ..refusal.discover import DiscoverConfig

    cfg = DiscoverConfig()
    if getattr(args, "model", None) is None:
        for k, v in ORGANISM.items():
            setattr(cfg, k, v)
    if args.quick:
        for k, v in QUICK.items():
            setattr(cfg, k, v)
    if args.config:  # every option the file names, a default value too
        names = {f.name for f in fields(DiscoverConfig)}
        for k, v in DiscoverConfig.read_options(args.config).items():
            if k in names:
                setattr(cfg, k, v)
    for name in ("n_candidates", "method", "seed", "layer", "max_new_tokens", "ablation", "attribution", "ig_steps", "edit",
                 "prefilter"):
        v = getattr(args, name, None)
        if v is not None:
            setattr(cfg, name, v)
    if args.backend != "auto":
        cfg.backend = args.backend
    if getattr(args, "skip_bos", None) is False:
        cfg.skip_bos = False
    cfg.validate()  # before anything loads
    return cfg


def config_run_options(args) -> None:
    """Fill the run's flags (``--model``, ``--sae``, ``--harmful``, ``--harmless``, ``--out``,
    ``--field``) from ``--config`` where the command line does not give them."""
    if args.config:
        from ..refusal.discover import DiscoverConfig

        opts = DiscoverConfig.read_options(args.config)
        for k in DiscoverConfig.RUN_OPTIONS:
            if k in opts and getattr(args, k, None) in (None, []):
                setattr(args, k, [opts[k]] if k == "sae" and isinstance(opts[k], str) else opts[k])
    if args.out is None:
        raise ValueError("--out: required (the output directory, on the command line or as out in --config)")


def _edit(text: str) -> str:
    """argparse type of ``--edit``: the text, once it parses."""
    import argparse

    from ..refusal.search import parse_edit

    try:
        return str(parse_edit(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("edit: ")) from None


def _positive_int(text: str) -> int:
    import argparse

    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return v


def search_inputs(args, cfg) -> tuple[list[str], list[str], list[str] | None, list[str] | None]:
    """``(harmful, harmless, heldout_harmful, heldout_harmless)`` that discover runs on: the prompt
    files (or the shipped sets), or on the organism without files, the organism's search prompts
    with the shipped sets held out."""
    from ..refusal.data import load_prompts, shipped_prompts

    harmful = load_prompts(args.harmful, args.field) if args.harmful else shipped_prompts("harmful")
    harmless = load_prompts(args.harmless, args.field) if args.harmless else shipped_prompts("harmless")
    if args.model is None and not args.harmful and not args.harmless:
        n_harmful = cfg.n_direction + cfg.n_val + cfg.n_search
        n_harmless = cfg.n_direction + cfg.n_val
        search_h, search_l = organism_search_prompts(n_harmful, n_harmless, seed=cfg.seed + 1)
        return search_h, search_l, harmful, harmless
    # The harmful prompts are split into cfg.n_heldout held out for the judged ASR first, then the
    # direction's and its selection's prompts: fewer than one of each cannot run.
    for flag, prompts, need, what in (
        ("--harmful", harmful, cfg.n_heldout + 2, f"{cfg.n_heldout} held out for the attack success rate, 1 for the direction, 1 to select it"),
        ("--harmless", harmless, 1, "1 for the direction"),
    ):
        if len(prompts) < need:
            full = cfg.n_heldout + cfg.n_direction + cfg.n_val + cfg.n_search if flag == "--harmful" else cfg.n_direction + cfg.n_val
            raise ValueError(f"{flag}: {getattr(args, flag[2:]) or 'the shipped set'} holds {len(prompts)} prompt"
                             f"{'s' if len(prompts) != 1 else ''}; discover needs at least {need} ({what}), "
                             f"and {full} for this configuration's full sample sizes")
    return harmful, harmless, None, None


def _run(args) -> int:
    from ..refusal.discover import discover
    from ..refusal.report import feature_text, write_discover_outputs
    from ..refusal.saeset import SAESet
    from ..refusal.spec import absolute_ref

    # Cheap checks first: flags, the SAE references, the output directory, prompt files, then the
    # SAE/model shapes, before any heavy work.
    config_run_options(args)
    check_run_args(args)
    refs = expand_sae_refs(args.sae)
    out = check_output(args.out, "--out")
    cfg = config_from_args(args)
    harmful, harmless, held_h, held_l = search_inputs(args, cfg)
    if len(refs) > 1:
        # Checks every SAE against the model's config (width, layer) before loading the weights.
        model, tok, saes, layers, _ = load_model_saes(args, refs)
        sae = SAESet(refs, saes, layers)
    else:
        args.sae = refs[0] if refs else None
        model, tok, sae, _, _ = load_model(args)
    capability = organism_capability_task(args.capability) if args.model is None and args.capability else None
    res = discover(model, tok, sae, harmful, harmless, cfg, capability=capability,
                   heldout_harmful=held_h, heldout_harmless=held_l, progress=not args.quiet)
    # spec.json names the model and SAE absolutely, so eval / generate find them from any directory.
    res.spec.model = absolute_ref(args.model) if args.model else "organism"
    sae_ref = None if len(refs) > 1 else (absolute_ref(args.sae) if args.sae else "organism")
    write_discover_outputs(res, out, sae_ref)
    r = res.results
    if not r["valid"]:
        print("WARNING: these results are not meaningful:")
    for w in r["warnings"]:
        print(f"WARNING: {w}")
    print(f"direction: layer {r['direction']['layer']} position {r['direction']['position']}")
    print(f"minimal set ({len(r['minimal_set'])}): [{', '.join(map(feature_text, r['minimal_set']))}]")
    print(f"ASR baseline {r['asr']['baseline']:.0%} -> minimal set {r['asr']['minimal_set']:.0%} -> with interactions {r['asr']['with_interactions']:.0%}")
    dg = r["asr"]["degenerate"]
    print(f"  of which degenerate replies: {dg['baseline']:.0%} -> {dg['minimal_set']:.0%} -> {dg['with_interactions']:.0%}")
    for x in r.get("dormant_downstream") or []:
        print(f"dormant downstream: {len(x['dormant'])} features of {x['read']} wake with {x['edited']}'s part edited "
              f"(its codes change {x['mean_abs_change']:.0%}, {x['n_silenced']} features silenced)")
    print(f"wrote {out / 'results.json'}, {out / 'report.md'} ({r['timings_s']['total']:.0f} s)")
    return 0


def register(sub) -> None:
    p = sub.add_parser("discover", help="find the refusal direction, refusal features and minimal jailbreak sets",
                       description="The refusal direction (Arditi et al.), candidate SAE features, greedy minimal "
                                   "ablation sets (Prakash et al.), their attack success rate by generation on held-out "
                                   "prompts, verified feature interactions and dormant features. Writes OUT/results.json, "
                                   "OUT/spec.json (for eval / generate), OUT/report.md and plots.")
    add_model_args(p, several_saes=True)
    p.add_argument("--harmful", help="harmful prompts: JSON/JSONL/CSV file or HF dataset name, strings or conversations "
                                     "(lists of turns) (default: shipped set)")
    p.add_argument("--harmless", help="harmless prompts (default: shipped set)")
    p.add_argument("--field", help="the prompt field in the files, text or a list of turns (default: instruction, prompt, "
                                   "messages, conversation or turns)")
    p.add_argument("--out", help="output directory (required here or in --config)")
    p.add_argument("--config", help="YAML/TOML/JSON file with any option; flags override it")
    p.add_argument("--n-candidates", dest="n_candidates", type=int)
    p.add_argument("--method", choices=("attribution", "cosine"),
                   help="candidate features: attribution patching (default) or cosine to the direction")
    p.add_argument("--attribution", choices=("ig", "zero"),
                   help="attribution: integrated gradients from the clean SAE codes to those with the refusal "
                        "direction ablated (Yeo et al.; default) or the first-order effect of zero-ablating each feature")
    p.add_argument("--prefilter", type=int,
                   help="with several --sae: each SAE's candidates are first its N features of largest |cosine| to the "
                        "refusal direction at its own layer (default 256; 0: all)")
    p.add_argument("--ig-steps", dest="ig_steps", type=_positive_int, help="integrated-gradient steps (default 10)")
    p.add_argument("--edit", type=_edit,
                   help="what the search, the interactions and the ASR do to a feature set: ablate (default), "
                        "scale:FACTOR (e.g. scale:-3, Yeo et al.'s negative scaling) or clamp:VALUE; spec.json records it")
    p.add_argument("--no-skip-bos", dest="skip_bos", action="store_false", default=None,
                   help="edit the BOS token too (by default every SAE edit leaves each sequence's BOS unedited; "
                        "spec.json records it)")
    p.add_argument("--ablation", choices=("auto", "directional", "affine"),
                   help="direction ablation: Arditi's directional, Marshall's affine, or auto (directional, "
                        "affine only if no candidate passes the filters; default)")
    p.add_argument("--seed", type=int)
    p.add_argument("--max-new-tokens", dest="max_new_tokens", type=int)
    p.add_argument("--capability", type=int, default=48, help="organism capability questions checked with the set ablated (0: skip)")
    p.add_argument("--quick", action="store_true", help="small sample sizes (tests, smoke runs)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run)
