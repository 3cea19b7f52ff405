"""``saesteer discover``: find the refusal direction, the refusal features and minimal jailbreak sets
(:func:`saesteer.refusal.discover.discover`), and write its outputs.

On the built-in organism (no ``--model``, no prompt files) the direction, its selection and the
search run on fresh prompts from the organism's training distribution, the shipped prompt sets are
all held out, and the organism's capability task is checked with the minimal set ablated.
"""

from __future__ import annotations

from .common import (add_model_args, check_output, check_run_args, expand_sae_refs, load_model, load_model_saes,
                     organism_capability_task, organism_search_prompts)

__all__ = ["register", "config_from_args", "search_inputs", "read_config_file", "RECIPES"]

#: On the built-in organism (no ``--model``) the direction's sample sizes are its own, smaller than
#: the 128 / 32 per class real models get, and its candidates come from zero-ablation attribution:
#: measured with --quick, its minimal set jailbroke 75% of held-out prompts (88% with
#: interactions), integrated gradients' 62% (75%).
ORGANISM = {"n_direction": 64, "n_val": 24, "attribution": "zero"}

#: ``--quick``: small sample sizes for tests and smoke runs.
QUICK = {"n_direction": 16, "n_val": 8, "n_search": 6, "n_heldout": 8, "n_candidates": 12, "fm_samples": 48,
         "per_prompt": 1, "max_new_tokens": 12, "max_candidates": 48}


#: Options of a config file that are the run's, not the search's: a file may set them where the
#: command line does not.
RUN_OPTIONS = ("model", "sae", "harmful", "harmless", "out", "field", "recipe", "limit")

#: ``--recipe``: each paper's defaults (docs/recipes.md says what each differs in and why). A
#: recipe sets these before ``--config`` and the flags, which still win.
RECIPES = {
    # Arditi et al.: the refusal direction (difference in means over 128 / 32 prompts per class,
    # selected by bypass / induce / KL, every candidate's three scores for the paper's heatmap);
    # the features are saesteer's default, attribution.
    "arditi": {"n_direction": 128, "n_val": 32, "score_all_directions": True},
    # Yeo et al.: integrated gradients towards the direction-ablated codes, each layer's SAE
    # pre-filtered to its 10 features of largest positive cosine, the top 20 by attribution steered
    # by negative scaling (their Gemma setting).
    "yeo": {"method": "attribution", "attribution": "ig", "prefilter": 10, "prefilter_sign": "positive",
            "select": "topk:20", "edit": "scale:-3"},
    # Prakash et al.: candidates are the SAE features nearest the refusal direction (cosine), the
    # greedy minimal set, and a factorization machine over it and more of the active features.
    "prakash": {"method": "cosine", "select": "minimal", "fm_extra": 64},
    # O'Brien et al.: the refusal feature(s) to clamp high (amplify_spec.json), found from the
    # cosine candidates the minimal set is searched among.
    "obrien": {"method": "cosine", "select": "minimal"},
}


def read_config_file(path) -> dict:
    """The options a ``--config`` file (JSON, YAML or TOML; optionally under a ``discover`` key)
    sets, each checked against its :class:`~saesteer.refusal.discover.DiscoverConfig` field's type;
    raises ValueError naming ``--config``, the file and the option."""
    import json
    from dataclasses import fields
    from pathlib import Path

    from ..refusal.discover import DiscoverConfig

    p = Path(path).expanduser()
    if not p.is_file():
        raise ValueError(f"--config: {str(path)!r} is not a file (expected a YAML, TOML or JSON file of options)")
    try:
        text = p.read_text()
    except OSError as e:
        raise ValueError(f"--config: cannot read {p} ({e.strerror or e})") from None
    try:
        if p.suffix.lower() in (".yaml", ".yml"):
            import yaml

            d = yaml.safe_load(text) or {}
        elif p.suffix.lower() == ".toml":
            import tomllib

            d = tomllib.loads(text)
        else:
            d = json.loads(text)
    except Exception as e:  # json, yaml and toml each raise their own error type
        raise ValueError(f"--config: {p}: not valid {p.suffix.lstrip('.').upper() or 'JSON'} ({e})") from None
    if isinstance(d, dict) and isinstance(d.get("discover"), dict):
        d = d["discover"]
    if not isinstance(d, dict):
        raise ValueError(f"--config: {p}: expected a mapping of options, got {type(d).__name__}")
    defaults = DiscoverConfig()
    types = {f.name: type(getattr(defaults, f.name)) for f in fields(DiscoverConfig)}
    unknown = set(d) - set(types) - set(RUN_OPTIONS)
    if unknown:
        raise ValueError(f"--config: {p}: unknown options {sorted(unknown)}")
    for k, v in d.items():
        want = types.get(k)
        if k in ("layer", "prefilter"):
            ok, what = v is None or (isinstance(v, int) and not isinstance(v, bool)), "an integer or null"
        elif k == "limit":
            ok, what = isinstance(v, int) and not isinstance(v, bool) and v >= 1, "an integer >= 1"
        elif k in RUN_OPTIONS:
            ok, what = isinstance(v, str) or (k == "sae" and isinstance(v, list) and all(isinstance(x, str) for x in v)), "a string"
        elif want is bool:
            ok, what = isinstance(v, bool), "true or false"
        elif want is int:
            ok, what = isinstance(v, int) and not isinstance(v, bool), "an integer"
        elif want is float:
            ok, what = isinstance(v, (int, float)) and not isinstance(v, bool), "a number"
        else:
            ok, what = isinstance(v, str), "a string"
        if not ok:
            raise ValueError(f"--config: {p}: {k}: expected {what}, got {v!r}")
        if k == "recipe" and v not in RECIPES:
            raise ValueError(f"--config: {p}: recipe: expected one of {', '.join(RECIPES)}, got {v!r}")
    return {k: (float(v) if types.get(k) is float else v) for k, v in d.items()}


def config_from_args(args):
    """The :class:`~saesteer.refusal.discover.DiscoverConfig` of the defaults (the organism's own
    sizes without ``--model``, ``--quick``'s small sizes), then the recipe's (``--recipe``), then
    what ``--config`` sets, then the flags: what is given explicitly always wins."""
    from dataclasses import fields

    from ..refusal.discover import DiscoverConfig

    _check_flags(args)
    cfg = DiscoverConfig()
    opts = read_config_file(args.config) if args.config else {}
    layers = []
    if getattr(args, "model", None) is None:
        layers.append(ORGANISM)
    if args.quick:
        layers.append(QUICK)
    recipe = getattr(args, "recipe", None) or opts.get("recipe")
    if recipe:
        layers.append(RECIPES[recipe])
    names = {f.name for f in fields(DiscoverConfig)}
    layers.append({k: v for k, v in opts.items() if k in names})  # every option the file names, a default value too
    for layer in layers:
        for k, v in layer.items():
            setattr(cfg, k, v)
    for name in ("n_candidates", "method", "seed", "layer", "max_new_tokens", "ablation", "attribution", "ig_steps", "edit",
                 "prefilter", "prefilter_sign", "select"):
        v = getattr(args, name, None)
        if v is not None:
            setattr(cfg, name, v)
    if getattr(args, "force", False):
        cfg.force = True
    if args.backend != "auto":
        cfg.backend = args.backend
    if getattr(args, "skip_bos", None) is False:
        cfg.skip_bos = False
    if getattr(args, "trigger", None) is False:
        cfg.trigger = False
    if getattr(args, "score_all_directions", False):
        cfg.score_all_directions = True
    cfg.validate()  # before anything loads
    return cfg


def config_run_options(args) -> None:
    """Fill the run's flags (``--model``, ``--sae``, ``--harmful``, ``--harmless``, ``--out``,
    ``--field``, ``--recipe``, ``--limit``) from ``--config`` where the command line does not give them."""
    if args.config:
        opts = read_config_file(args.config)
        for k in RUN_OPTIONS:
            if k in opts and getattr(args, k, None) in (None, []):
                setattr(args, k, [opts[k]] if k == "sae" and isinstance(opts[k], str) else opts[k])
    if args.out is None:
        raise ValueError("--out: required (the output directory, on the command line or as out in --config)")


def _check_flags(args) -> None:
    """``--edit`` parsed and ``--ig-steps`` >= 1, each failing with one line naming the flag (an
    argparse ``type`` would print the whole usage block first)."""
    from ..refusal.search import parse_edit

    if getattr(args, "edit", None) is not None:
        try:
            args.edit = str(parse_edit(args.edit))
        except ValueError as e:
            raise ValueError(f"--edit: {str(e).removeprefix('edit: ')}") from None
    for flag in ("ig_steps", "limit"):
        v = getattr(args, flag, None)
        if v is not None and v < 1:
            raise ValueError(f"--{flag.replace('_', '-')}: expected an integer >= 1, got {v}")


def search_inputs(args, cfg) -> tuple[list[str], list[str], list[str] | None, list[str] | None]:
    """``(harmful, harmless, heldout_harmful, heldout_harmless)`` that discover runs on: the prompt
    files (or the shipped sets), or on the organism without files, the organism's search prompts
    with the shipped sets held out."""
    from ..refusal.data import load_prompts, shipped_prompts

    harmful = load_prompts(args.harmful, args.field) if args.harmful else shipped_prompts("harmful")
    harmless = load_prompts(args.harmless, args.field) if args.harmless else shipped_prompts("harmless")
    limit = getattr(args, "limit", None)
    if limit:  # a seeded sample across each file, not its first rows
        import random

        harmful, harmless = (xs if len(xs) <= limit else random.Random(cfg.seed).sample(list(xs), limit)
                             for xs in (harmful, harmless))
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
    from ..refusal.discover import summary_lines, write_discover_outputs
    from ..refusal.report import write_json
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

    def checkpoint(partial) -> None:  # results.json grows as each stage finishes
        write_json(out / "results.json", partial.results)

    res = discover(model, tok, sae, harmful, harmless, cfg, capability=capability,
                   heldout_harmful=held_h, heldout_harmless=held_l, progress=not args.quiet, on_stage=checkpoint)
    typed = res.typed
    if typed.stopped:
        write_json(out / "results.json", res.results)
        print(f"{typed.stopped}; wrote {out / 'results.json'} (valid: false; --force runs every stage anyway)")
        return 1
    # spec.json names the model and SAE absolutely, so eval / generate find them from any directory.
    model_ref = absolute_ref(args.model) if args.model else "organism"
    for spec in (res.spec, res.amplify_spec):
        if spec is not None:
            spec.model = model_ref
    sae_ref = None if len(refs) > 1 else (absolute_ref(args.sae) if args.sae else "organism")
    written = write_discover_outputs(res, out, sae_ref)
    for line in summary_lines(typed):
        print(line)
    print(f"wrote {', '.join(str(p) for p in written)} ({typed.timings['total']:.0f} s)")
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
    p.add_argument("--recipe", choices=tuple(RECIPES),
                   help="a paper's defaults (docs/recipes.md): arditi, yeo (IG, 10 per layer by positive cosine, top 20, "
                        "scale:-3), prakash (cosine candidates, minimal set), obrien (the refusal feature to amplify); "
                        "--config and the flags override it")
    p.add_argument("--limit", type=int,
                   help="use at most N prompts of each of --harmful / --harmless, a seeded sample across the file")
    p.add_argument("--select",
                   help="what spec.json holds: minimal (the greedy minimal set, Prakash et al.; default) or topk:K "
                        "(Yeo et al.'s top K by attribution, e.g. topk:20; the ASR is also measured with each held-out "
                        "prompt's own top K)")
    p.add_argument("--prefilter-sign", dest="prefilter_sign", choices=("abs", "positive"),
                   help="the pre-filter ranks decoder rows by |cosine| (default) or by cosine (positive; Yeo et al.)")
    p.add_argument("--force", action="store_true",
                   help="run every stage even when the model refuses fewer than 10%% of the held-out harmful prompts "
                        "(by default discover stops there: nothing to jailbreak)")
    p.add_argument("--n-candidates", dest="n_candidates", type=int,
                   help="candidate features the greedy search starts from, best ranked first (default 48; --quick 12)")
    p.add_argument("--method", choices=("attribution", "cosine"),
                   help="candidate features: attribution patching (default) or cosine to the direction")
    p.add_argument("--attribution", choices=("ig", "zero"),
                   help="attribution: integrated gradients from the clean SAE codes to those with the refusal "
                        "direction ablated (Yeo et al.; the default with --model) or the first-order effect of "
                        "zero-ablating each feature (the default on the built-in organism)")
    p.add_argument("--prefilter", type=int,
                   help="each SAE's candidates are first its N features of largest cosine (see --prefilter-sign) to the "
                        "refusal direction at its own layer (default: 256 with several --sae, none with one; 0: none)")
    p.add_argument("--ig-steps", dest="ig_steps", type=int, help="integrated-gradient steps (default 10)")
    p.add_argument("--edit",
                   help="what the search, the interactions and the ASR do to a feature set: ablate (default), "
                        "scale:FACTOR (e.g. scale:-3, Yeo et al.'s negative scaling) or clamp:VALUE; spec.json records it")
    p.add_argument("--no-skip-bos", dest="skip_bos", action="store_false", default=None,
                   help="edit the BOS token too (by default every SAE edit leaves each sequence's BOS unedited; "
                        "spec.json records it)")
    p.add_argument("--no-trigger", dest="trigger", action="store_false", default=None,
                   help="propose no trigger: spec.json gets no 'when' (default: the features separating refused harmful "
                        "from answered harmless prompts, threshold chosen on the val split)")
    p.add_argument("--ablation", choices=("auto", "directional", "affine"),
                   help="direction ablation: Arditi's directional, Marshall's affine, or auto (directional, "
                        "affine only if no candidate passes the filters; default)")
    p.add_argument("--score-all-directions", dest="score_all_directions", action="store_true",
                   help="every direction candidate's bypass / induce / KL in results.json's direction_table and its plot "
                        "(default: only the scores the selection needs; the same direction is selected)")
    p.add_argument("--seed", type=int, help="seed of the prompt splits and the interaction samples (default 0)")
    p.add_argument("--max-new-tokens", dest="max_new_tokens", type=int,
                   help="new tokens of the replies the held-out attack success rate is judged on (default 24; --quick 12; "
                        "short replies miss refusals that start later: the papers judge 256-512)")
    p.add_argument("--capability", type=int, default=48, help="organism capability questions checked with the set ablated (0: skip)")
    p.add_argument("--quick", action="store_true", help="small sample sizes (tests, smoke runs)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run)
