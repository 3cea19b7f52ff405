"""``saesteer eval``: the refusal, over-refusal and capability cost of a steering spec (with an
optional amplification sweep and the feature-vs-residual probes)."""

from __future__ import annotations

import json
import sys
from dataclasses import replace

from .common import (
    add_model_args,
    add_steering_args,
    check_feature_ids,
    check_output,
    check_run_args,
    default_device,
    load_model,
    number_list,
    organism_capability_task,
    steering_spec,
)

__all__ = ["register"]

_SWEEP_COLUMNS = ("condition", "value", "harmful_refusal", "harmless_refusal", "harmful_degenerate", "harmless_degenerate",
                  "harmful_attack_success",
                  "capability_accuracy", "mc_accuracy", "mmlu_accuracy", "gsm8k_accuracy",
                  "kl_first", "kl_reply", "loss", "perplexity", "refusal_score_harmful", "refusal_score_harmless",
                  "trigger_rate_harmful", "trigger_rate_harmless")
#: The sweep plot's rate / accuracy lines (each present in the rows).
_SWEEP_PLOTTED = ("harmful_refusal", "harmless_refusal", "capability_accuracy", "mc_accuracy", "mmlu_accuracy", "gsm8k_accuracy")


def _eval(args) -> int:
    import torch

    from ..refusal import evaluate as ev
    from ..refusal.data import load_prompts, shipped_prompts
    from ..refusal.heldout import results_next_to
    from ..refusal.judges import load_model_judge
    from ..refusal.report import plot_lines, warning_section, write_json, write_markdown_report
    from ..refusal.turns import prompt_label
    from ..refusal.validity import MIN_REFUSAL_RATE, nothing_to_jailbreak

    # Everything that can be wrong with the inputs fails here, before a model loads.
    check_run_args(args)
    out = check_output(args.out, "--out")
    sweep = number_list(args.sweep, "--sweep") if args.sweep else None
    templates = _template_names(args.templates, "--templates") if args.templates is not None else None
    wrappers = _template_names(args.wrap, "--wrap") if args.wrap is not None else None
    harmful = load_prompts(args.harmful, field=args.field, limit=args.limit) if args.harmful else shipped_prompts("harmful")[: args.limit]
    harmless = load_prompts(args.harmless, field=args.field, limit=args.limit) if args.harmless else shipped_prompts("harmless")[: args.limit]
    mc = ev.load_mc(args.mc, limit=args.limit) if args.mc else None
    from ..refusal.capability import load_gsm8k, load_mmlu

    tasks = ([load_mmlu(args.mmlu, limit=args.limit, seed=args.seed)] if args.mmlu else []) + \
        ([load_gsm8k(args.gsm8k, limit=args.limit)] if args.gsm8k else [])
    if sweep is not None and args.mode == "ablate":
        raise ValueError("--sweep: sweeps the value of clamp/scale/add; --mode ablate takes no value")
    direction = None
    if args.direction:
        from ..hf import load_direction

        direction = load_direction(args.direction)
    # With --direction a feature spec is optional: the direction's rows are evaluated on their own.
    spec = steering_spec(args, required=direction is None, values_given=sweep is not None)
    if spec is None and sweep is not None:
        raise ValueError("--sweep: sweeps a feature spec's value; pass --steer SPEC or --features IDS with it")
    # The prompts that chose the spec or the direction (discover's splits, in the results.json
    # beside them) are not the prompts they are judged on.
    chosen_by = args.steer or args.direction
    discovered = results_next_to(chosen_by) if chosen_by else None
    early_warnings = _held_out_warnings(discovered, harmful, harmless, args.allow_overlap, chosen_by)
    plain_harmful = harmful  # the probes train on plain prompts and measure the templates themselves
    if wrappers:
        from ..refusal.jailbreak import transform

        # O'Brien et al. measure refusal on jailbreak attempts: each harmful prompt (a conversation:
        # its last user turn) in each template.
        harmful = [w for name in wrappers for w in transform(harmful, name)]
    probe_features = _probe_features(args.probe_features, spec, discovered) if args.probe_features else None
    for w in early_warnings:
        print(f"WARNING: {w}", file=sys.stderr)
    # The sweep steps the spec's features through --sweep's values in the spec's mode, or clamps
    # them when the spec ablates (a discovered set); the spec itself is the "steered" condition
    # when it is complete (ablate, or a --value / values of its own).
    sweep_mode = "clamp" if spec is None or spec.mode == "ablate" else spec.mode
    has_steered = spec is not None and (spec.mode == "ablate" or spec.values is not None)
    n_cap = args.capability if args.capability is not None else (64 if args.model is None else 0)
    capability = organism_capability_task(n_cap) if n_cap > 0 else None

    torch.set_grad_enabled(False)
    if args.judge_max_new_tokens is not None and args.judge_max_new_tokens < 1:
        raise ValueError(f"--judge-max-new-tokens: expected a positive integer, got {args.judge_max_new_tokens}")
    # The model judge answers harmful compliance (attack success) on the harmful set; refusal and
    # over-refusal stay with the substring judge.
    harm_judge = None
    if args.judge not in (None, "substring"):
        harm_judge = load_model_judge(args.judge, device=default_device(args.device), trust_remote_code=args.trust_remote_code,
                                      **({"reply_tokens": args.judge_max_new_tokens} if args.judge_max_new_tokens else {}))
    model, tok, sae, layer, name = load_model(args, spec)
    for sae_name, feats in (probe_features or {}).items():
        target = sae if sae_name is None else sae.get(sae_name)
        if target is None:
            raise ValueError(f"--probe-features: the ranked candidates name the SAE {sae_name!r}, which the spec does not edit")
        check_feature_ids(feats, target.d_sae, "--probe-features")
    data = ev.EvalData(harmful, harmless, mc=mc, capability=capability, tasks=tasks)
    kw = dict(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, progress=not args.quiet, harm_judge=harm_judge)
    if direction is not None:
        from ..hf import hidden_size

        width = hidden_size(model) or next(iter(sae.values() if isinstance(sae, dict) else [sae])).d_in
        if direction["direction"].shape[0] != width:
            raise ValueError(f"--direction: length {direction['direction'].shape[0]} but the model's hidden size is {width}")
    steering = ev.Steering(model, sae, spec, args.backend) if spec is not None else None
    # A spec with a `when` runs as given ("steered", the edit only where its trigger fires) and
    # without it ("steered_unconditional"), side by side; its sweep likewise, every value both ways.
    conditional = spec is not None and spec.when is not None
    steered_conds = {}
    if has_steered:
        steered_conds["steered"] = steering
        if conditional:
            steered_conds["steered_unconditional"] = ev.Steering(model, sae, replace(spec, when=None), args.backend)
    direction_conds = ev.direction_conditions(model, direction) if direction is not None else {}
    sweep_conds, when_sweep = {}, {}
    if sweep is not None:
        swept = replace(spec, mode=sweep_mode)
        sweep_conds = ev.sweep_conditions(ev.Steering(model, sae, replace(swept, when=None), args.backend), sweep)
        if conditional:
            when_sweep = {f"{k} (when)": s for k, s in ev.sweep_conditions(ev.Steering(model, sae, swept, args.backend), sweep).items()}
            sweep_conds.update(when_sweep)
    # One pass over every condition, so the unsteered baseline runs once for the comparison and the sweep.
    conds = {**steered_conds, **direction_conds, **sweep_conds}
    result = ev.evaluate_conditions(model, tok, data, conds, **kw)
    all_rows = result["rows"]
    for r in all_rows:
        if r["condition"] in steered_conds or r["condition"] in sweep_conds:
            r["conditional"] = r["condition"] == "steered" and conditional or r["condition"] in when_sweep
    compared = ("unsteered", *steered_conds, *direction_conds)
    result["rows"] = [r for r in all_rows if r["condition"] in compared]
    report = {
        "model": name,
        # a spec over several SAEs: each edit's SAE and layer (the spec has no single one)
        "sae": ([e["sae"] for e in spec.edits] if spec is not None and spec.edits
                else (spec.sae if spec is not None else args.sae) or "organism"),
        "layer": sorted({e["layer"] for e in spec.edits if e.get("layer") is not None}) if spec is not None and spec.edits else layer,
        "spec": spec.to_dict() if spec is not None else None,
        "direction": ({"file": str(args.direction), "layer": direction["layer"], "position": direction["position"],
                       "ablation": direction["ablation"], "conditions": list(direction_conds)} if direction is not None else None),
        "n": {"harmful": len(harmful), "harmless": len(harmless), "mc": len(mc or []), "capability": n_cap,
              **{t.name: len(t.questions) for t in tasks}},
        "max_new_tokens": result["max_new_tokens"],
        "judge": result["judge"],
        "judges": result["judges"],
        "chat_template": result["chat_template"],
        "refusal_tokens": result["refusal_tokens"],
        "conditions": result["rows"],
        "examples": result["examples"],
    }
    sections = [
        ("Setup", _setup_text(args, name, spec, report, direction_conds, result, wrappers, tasks)),
        ("Unsteered vs steered" + (" with and without its trigger (when)" if conditional else "")
         + (" vs direction edits" if direction_conds else ""),
         _conditional_note(spec) + [[{k: r.get(k) for k in _SWEEP_COLUMNS if k != "value"} for r in result["rows"]]]),
    ]
    if sweep is not None:
        sweep_rows = [dict(all_rows[0], value=None)] + [dict(r, value=sweep_conds[r["condition"]].spec.values)
                                                        for r in all_rows if r["condition"] in sweep_conds]
        report["sweep"] = sweep_rows
        report["sweep_plot"] = plot = _sweep_plot(sweep_rows[1:], conditional)
        n_feat = sum(len(e["features"]) for e in spec.edits) if spec.edits else len(spec.features)
        plot_lines(out / "sweep.png", plot["x"], plot["series"], xlabel=f"{sweep_mode} value", ylabel="rate / accuracy",
                   title=f"{sweep_mode} sweep, {n_feat} feature{'s' if n_feat != 1 else ''}"
                   + (", unconditional and conditional (when)" if conditional else ""),
                   secondary=plot["secondary"], secondary_label="KL(unsteered || steered)", ylim=(-0.02, 1.02))
        sections.append(("Refusal amplification sweep", [
            f"`{sweep_mode}` of {_features_text(spec)} swept over {sweep} (O'Brien et al.)"
            + (", each value unconditional and gated by the spec's `when` (rows marked `(when)`)" if conditional else "")
            + ". The first row is the unsteered model.",
            [{k: r.get(k) for k in ("condition", "conditional", *_SWEEP_COLUMNS[1:]) if k != "conditional" or conditional}
             for r in sweep_rows],
            "![sweep](sweep.png)",
        ]))
    if not args.no_probes and spec is not None:
        from ..refusal.probes import compare_probes

        # A spec over several SAEs: the feature probe reads each edit's features from its SAE at
        # that SAE's hook point, side by side.
        by_sae = probe_features if probe_features is not None else (
            {None: spec.features} if not spec.edits else {e["sae"]: e["features"] for e in spec.edits})
        probe_sae, probe_feats = ((sae, by_sae[None]) if None in by_sae
                                  else ([(sae[name], feats) for name, feats in by_sae.items()], None))
        # The wrapped prompts are labelled by the harmful-compliance judge when one is given (Yeo
        # et al.: jailbroken as HarmBench's classifier confirms), else by the substring judge.
        pr = compare_probes(model, tok, probe_sae, probe_feats, plain_harmful, harmless, layer=layer, batch_size=args.batch_size,
                            templates=templates, judge=harm_judge, max_new_tokens=args.max_new_tokens, seed=args.seed,
                            progress=not args.quiet)
        pr["judge"] = result["judges"]["harmful_compliance"] or result["judges"]["refusal"]
        report["probes"] = pr
        sections.append(("Refusal-feature probes (Yeo et al.)", _probe_section(pr)))
    ex_lines = []
    for cond in compared:  # every condition's examples are in eval.json
        for kind, pairs in result["examples"].get(cond, {}).items():
            for p, r in pairs:
                # The report shows a conversation's last user turn; eval.json keeps every turn.
                ex_lines.append({"condition": cond, "set": kind, "prompt": prompt_label(p), "reply": r})
    sections.append(("Example replies", ex_lines))
    # Results that are not meaningful (a model with nothing to jailbreak, probes at chance) and the
    # other warnings (overlap allowed, the chat-template fallback) open the report.
    base = result["rows"][0]
    n_refused = round(base["harmful_refusal"] * len(harmful))
    jailbreak_valid = not (_lowers_refusal(spec, direction_conds) and nothing_to_jailbreak(n_refused, len(harmful)))
    jailbreak_warning = [] if jailbreak_valid else [
        f"the model refuses {n_refused}/{len(harmful)} harmful prompts unsteered (below {MIN_REFUSAL_RATE:.0%}): nothing "
        "to jailbreak, so attack success and the drop in refusal are not meaningful"]
    report["valid"] = jailbreak_valid and report.get("probes", {}).get("valid", True)
    report["warnings"] = jailbreak_warning + early_warnings + result["warnings"] + report.get("probes", {}).get("warnings", [])
    sections[:0] = warning_section(report["valid"], report["warnings"])
    write_json(out / "eval.json", report)
    write_markdown_report(out / "report.md", "saesteer eval", sections)
    rows = result["rows"]
    # The warnings come before the results; the ones printed before the run are not repeated.
    for w in ([] if report["valid"] else ["these results are not meaningful:"]) + [w for w in report["warnings"] if w not in early_warnings]:
        print(f"WARNING: {w}", file=sys.stderr)
    print(json.dumps({r["condition"]: {k: round(v, 4) if isinstance(v, float) else v for k, v in r.items() if k != "condition"} for r in rows}, indent=1))
    print(f"wrote {out / 'eval.json'}, {out / 'report.md'}" + (f", {out / 'sweep.png'}" if sweep is not None else ""), file=sys.stderr)
    return 0


def _conditional_note(spec) -> list[str]:
    """The comparison's note for a spec with a ``when``: what the two steered rows are."""
    if spec is None or spec.when is None:
        return []
    w = spec.when
    gate = (f"its {w.get('reduce', 'max')} over the prompt > {w['threshold']:g}" if "threshold" in w
            else "the probe's score > 0")
    return [f"`steered` edits only where the spec's trigger fires (features {list(w['features'])}, {gate}, scope "
            f"{w.get('scope', 'prompt')}); `steered_unconditional` is the same edit on every prompt. trigger_rate_*: the "
            "fraction of prompts the trigger fires on."]


def _sweep_plot(rows: list[dict], conditional: bool) -> dict:
    """What sweep.png draws, from the sweep's steered rows: ``x`` (the values), ``series`` (rates and
    accuracies by value) and ``secondary`` (KL); with a ``when`` each line twice, unconditional
    and conditional (``"... (when)"``), over the same values."""
    groups = [("", [r for r in rows if not r.get("conditional")])]
    if conditional:
        groups.append((" (when)", [r for r in rows if r.get("conditional")]))
    series, secondary = {}, {}
    for suffix, rs in groups:
        series.update({k + suffix: [r[k] for r in rs] for k in _SWEEP_PLOTTED if k in rs[0]})
        secondary["KL (reply)" + suffix] = [r["kl_reply"] for r in rs]
    return {"x": [r["value"] for r in groups[0][1]], "series": series, "secondary": secondary}


def _setup_text(args, name, spec, report, direction_conds, result, wrappers, tasks) -> str:
    """The report's Setup line: what was steered, on which prompts, and the reply length and judge
    every number used."""
    n, mnt, judges = report["n"], result["max_new_tokens"], result["judges"]
    steering = json.dumps(spec.to_dict()) if spec is not None else "none"
    direction = f"; direction {args.direction} ({', '.join(direction_conds)})" if direction_conds else ""
    wrapped = f" (each wrapped in {', '.join(wrappers)})" if wrappers else ""
    task_lengths = "".join(f"; {t.name} {len(t.questions)} questions at {t.max_new_tokens or mnt['harmless']} new tokens"
                           + (f" (sampled across subjects, seed {args.seed})" if t.name == "mmlu" else "") for t in tasks)
    return (f"model `{name}`, {_sae_text(spec, report)}; steering `{steering}`{direction}; "
            f"{n['harmful']} harmful prompts{wrapped} / {n['harmless']} harmless prompts, {n['mc']} multiple-choice items, "
            f"{n['capability']} capability questions{task_lengths}; greedy replies of {mnt['harmful']} new tokens on harmful "
            f"prompts and {mnt['harmless']} on harmless ones; refusal and over-refusal judged by {judges['refusal']}, "
            f"attack success by {judges['harmful_compliance'] or 'none'}; chat template: {result['chat_template']}.")


def _sae_text(spec, report) -> str:
    """The Setup line's SAE part: one SAE at its layer, or every SAE of a several-SAE spec at its own."""
    if spec is not None and spec.edits:
        return "SAEs " + ", ".join(f"`{e['sae']}` (layer {e.get('layer')})" for e in spec.edits)
    return f"SAE `{report['sae']}` at layer {report['layer']}"


def _features_text(spec) -> str:
    """The swept features: the spec's, or each edit's on its SAE."""
    if spec.edits:
        return "; ".join(f"features {list(e['features'])} of `{e['sae']}`" for e in spec.edits)
    return f"features {list(spec.features)}"


def _template_names(text: str, flag: str) -> list[str]:
    """``--templates`` / ``--wrap``'s names, each checked against the OOD sets saesteer has."""
    from ..refusal.jailbreak import OOD_NAMES

    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in names if t not in OOD_NAMES]
    if not names or bad:
        raise ValueError(f"{flag}: expected comma-separated names from {list(OOD_NAMES)}, got {text!r}")
    return names


def _lowers_refusal(spec, direction_conds) -> bool:
    """Whether the evaluation holds a jailbreak: the spec ablates or scales its features down, or a
    direction edit removes refusal (ablation, subtraction, affine ablation)."""
    lowering = {"direction_ablation", "direction_subtraction", "affine_ablation"}
    if lowering & set(direction_conds):
        return True
    if spec is None:
        return False
    if spec.mode == "ablate":
        return True
    vals = spec.values if isinstance(spec.values, (list, tuple)) else [spec.values]
    return spec.mode == "scale" and any(v is not None and v < 1 for v in vals)


def _held_out_warnings(results, harmful, harmless, allow: bool, steer) -> list[str]:
    """Refuse (``allow``: warn about) evaluated prompts among the prompts that chose the spec or
    direction file ``steer``, as discover's ``results`` next to it record them; warn when they are
    recorded as counts only."""
    if results is None:
        return []
    from ..refusal.heldout import chosen_prompts, overlap

    chosen, counts_only = chosen_prompts(results)
    found = []
    for flag, prompts, names in (("--harmful", harmful, ("direction", "val", "search")),
                                 ("--harmless", harmless, ("harmless_direction", "harmless_val"))):
        mine = {k: v for k, v in chosen.items() if k in names}
        ov = overlap(prompts, mine)
        if ov:
            found.append((flag, prompts, ov, overlap(prompts, {"all": [p for v in mine.values() for p in v]})["all"]))
    out = []
    for flag, prompts, ov, n in found:
        msg = (f"{flag}: {n} of the {len(prompts)} prompts chose {steer} (discover's "
               + ", ".join(f"{k} split: {n}" for k, n in ov.items()) + ")")
        if not allow:
            raise ValueError(msg + "; evaluate on held-out prompts, or pass --allow-overlap to evaluate anyway with a warning")
        out.append(msg + "; its numbers are not held out")
    if counts_only and not chosen:
        out.append(f"the results.json next to {steer} records its splits as counts only, so overlap between the evaluated "
                   "prompts and the prompts that chose the spec was not checked")
    return out


def _probe_features(text: str, spec, results) -> dict:
    """``--probe-features``: ``{SAE name (None: the spec's one SAE): features}`` from comma-separated
    ids, or ``top:N``: the N best-ranked candidates of discover's results next to the spec (Yeo et
    al. probe their top features by attribution, not a minimal ablation set)."""
    if not text.startswith("top:"):
        if spec is not None and spec.edits:
            raise ValueError("--probe-features: the spec edits several SAEs; use top:N (each feature names its SAE there)")
        return {None: number_list(text, "--probe-features", int)}
    try:
        n = int(text[4:])
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"--probe-features: expected comma-separated feature ids or top:N with N >= 1, got {text!r}")
    cands = (results or {}).get("candidates")
    if not cands:
        raise ValueError("--probe-features: top:N reads the ranked candidates of discover's results.json next to the spec "
                         "(--steer DIR/spec.json); none found")
    out: dict = {}
    for feat, _ in cands[:n]:
        name, fid = (feat[0], feat[1]) if isinstance(feat, (list, tuple)) else (None, feat)
        out.setdefault(name, []).append(int(fid))
    if (None in out) != (spec is None or not spec.edits):
        raise ValueError("--probe-features: the candidates in the results.json next to the spec are for "
                         + ("one SAE, but the spec edits several" if None in out else "several SAEs, but the spec edits one"))
    return out


def _probe_section(pr: dict) -> list:
    """The report's probe section: setup, the residual probe's layer curve, the measured OOD
    templates, the OOD verdict (or why there is none) and the accuracy rows."""
    curve = pr["residual_layers"]
    body = [
        f"Logistic probes on the last prompt token, trained on plain prompts ({pr['n_train']}; {pr['n_val']} for validation; "
        f"{pr['n_per_class']['harmful']} harmful and {pr['n_per_class']['harmless']} harmless prompts in all"
        f"{', the larger class subsampled' if pr['balanced'] else ''}): "
        f"the feature probe reads features {pr['features']} at {', '.join(pr['feature_sites'])}, the residual probe the full "
        f"residual stream at layer {pr['residual_layer']}, the most accurate on the validation split among layers "
        f"{[r['layer'] for r in curve]}. Label 1 is the refusal class, 0 the compliance class.",
        [{k: r[k] for k in ("layer", "train_accuracy", "val_accuracy", "val_loss")} for r in curve],
    ]
    t = pr.get("templates")
    if t is not None:
        body += [
            f"OOD templates measured on the model ({pr['template_max_new_tokens']} new tokens, judge {pr['judge']}): refusal "
            f"rate of the {t['plain']['n']} harmful prompts plain vs wrapped "
            "(over replies that refused or complied; degenerate ones counted apart); a template is kept when the drop "
            "reaches the bar (two binomial standard errors, at least 0.05). Kept templates wrap the held-out prompts "
            "(harmless prompts get the same wrapper, label 0); a wrapped harmful prompt is labelled by the reply: "
            "refused 1, complied 0, degenerate left out.",
            [{k: r[k] for k in ("template", "n", "plain_refusal", "wrapped_refusal", "drop", "bar", "degenerate", "kept")}
             for r in t["templates"]],
        ]
        if not t["kept"]:
            from ..refusal.probes import NO_JAILBREAK

            body.append(NO_JAILBREAK[:1].upper() + NO_JAILBREAK[1:] + ".")
    m = pr["ood_mean"]
    if any(r["set"] not in ("train (plain)", "validation (plain)", "held-out (plain)") for r in pr["rows"]):
        verdict = ("matches or beats" if m["feature_probe"] >= m["residual_probe"] else "is below")
        body.append(f"Mean OOD accuracy: feature probe {m['feature_probe']:.3f}, residual probe {m['residual_probe']:.3f}, "
                    f"majority baseline {m['majority']:.3f} (the feature probe {verdict} the residual probe by "
                    f"{abs(m['feature_probe'] - m['residual_probe']):.3f}).")
    body.append(pr["rows"])
    return body


def register(sub) -> None:
    """Add ``eval`` to the main CLI's subparsers."""
    e = sub.add_parser("eval", help="refusal, over-refusal and capability cost of a steering spec (+ sweep, probes)",
                       description="Unsteered vs steered: refusal on harmful and harmless prompts, multiple-choice and "
                                   "capability accuracy, loss and KL on harmless replies; optional clamp sweep; feature vs "
                                   "residual probes. Writes OUT/eval.json, OUT/report.md and plots.")
    add_model_args(e)
    add_steering_args(e)
    e.add_argument("--harmful", help="harmful prompts: JSON/JSONL/CSV file or HF dataset, strings or conversations "
                                     "(lists of turns) (default: the shipped set)")
    e.add_argument("--harmless", help="harmless prompts (default: the shipped set)")
    e.add_argument("--field", help="text or conversation field of the prompt files (default: instruction, prompt, "
                                   "messages, conversation or turns)")
    e.add_argument("--mc", help="multiple-choice file, JSONL of {question, choices, answer}")
    e.add_argument("--mmlu", help="MMLU, 5-shot (lm-evaluation-harness's prompt): a JSON/JSONL/CSV file (its first 5 rows "
                                  "are the shots) or a Hub id such as cais/mmlu (needs `datasets`)")
    e.add_argument("--gsm8k", help="GSM8K ('#### N' answers; 256 new tokens): a JSON/JSONL file or a Hub id such as openai/gsm8k")
    e.add_argument("--capability", type=int, help="number of organism capability questions (default: 64 on the organism, else 0)")
    e.add_argument("--sweep", help="comma-separated values for a refusal-amplification sweep, e.g. 0,2,4,8: the spec's "
                                   "features at each value in its mode, or clamped when it ablates (no --value needed)")
    e.add_argument("--judge", help="harmful-compliance judge for attack success on the harmful set: a LlamaGuard / "
                                   "HarmBench-classifier id or directory (refusal and over-refusal use the substring judge; "
                                   "'substring' or none: no attack-success column)")
    e.add_argument("--judge-max-new-tokens", type=int, help="new tokens of the harmful replies the --judge reads (default 512, "
                                                             "HarmBench's length; --max-new-tokens if larger)")
    e.add_argument("--direction", help="discover's direction.safetensors: adds directional ablation, activation addition, "
                                       "activation subtraction (and affine ablation when it holds a reference) rows; a "
                                       "feature spec is then optional")
    e.add_argument("--no-probes", action="store_true", help="skip the feature-vs-residual probe comparison")
    e.add_argument("--templates", help="comma-separated OOD sets the probes measure and keep by effect: jailbreak template "
                                       "names and past_tense (default: all of saesteer.refusal.jailbreak.OOD_NAMES)")
    e.add_argument("--wrap", help="comma-separated jailbreak templates (names as --templates) to wrap every harmful prompt "
                                  "in, each prompt once per template; a conversation's last user turn is wrapped (O'Brien "
                                  "et al. measure refusal on jailbreak attempts)")
    e.add_argument("--probe-features", help="the features the feature probe reads: comma-separated ids, or top:N, the N "
                                            "best-ranked candidates of discover's results.json next to --steer (Yeo et "
                                            "al.'s top features; default: the spec's features)")
    e.add_argument("--allow-overlap", action="store_true",
                   help="evaluate on prompts that chose the spec or direction (discover's direction, selection and search "
                        "splits, read from the results.json next to --steer / --direction) with a warning, instead of refusing")
    e.add_argument("--limit", type=int, help="use the first N items of every prompt/mc file and GSM8K; MMLU: N questions "
                                             "sampled across its subjects with --seed")
    e.add_argument("--seed", type=int, default=0, help="seed of the MMLU sample and the probes' splits (default 0)")
    e.add_argument("--max-new-tokens", type=int, default=32,
                   help="new tokens per reply, greedy (default 32; Arditi et al. judge 512, Yeo et al. 256): a refusal "
                        "that starts later is missed")
    e.add_argument("--batch-size", type=int, default=16, help="prompts per forward pass (default 16)")
    e.add_argument("--quiet", action="store_true", help="no progress bars")
    e.add_argument("--out", required=True, help="output directory")
    e.set_defaults(func=_eval)
