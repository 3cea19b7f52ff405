"""``saesteer generate`` and ``saesteer eval`` (``discover`` registers here too).

Without ``--model``/``--sae`` both run on the built-in refusal organism. Inputs are validated
(files, fields, SAE width against the model's hidden size, layer range) before any model loads;
``saesteer.cli.main`` turns the ``ValueError``/``FileNotFoundError`` raised here into one line.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import textwrap
from pathlib import Path

__all__ = ["register", "add_model_args", "add_steering_args", "load_model", "steering_spec"]


# ------------------------------------------------------------------------------------------------
# shared arguments and loading (generate, eval, discover)
# ------------------------------------------------------------------------------------------------
def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", help="HF model id or directory (default: the built-in organism)")
    g.add_argument("--sae", help="SAE: sae-lens directory, RELEASE:SAE_ID, or organism[:NAME] (default: the spec's, else the organism's)")
    g.add_argument("--layer", type=int, help="decoder layer the SAE reads (default: from the SAE's hook_name)")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    g.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"), help="model dtype")
    g.add_argument("--trust-remote-code", action="store_true", help="allow the model repo's own code (off by default)")
    g.add_argument("--backend", default="auto", help="saesteer op backend: auto, cuda, triton, cpu, torch")


def add_steering_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("steering (a SPEC file, or the flags)")
    g.add_argument("--steer", metavar="SPEC", help="steering spec, JSON or YAML (sae, layer, features, mode, values, positions)")
    g.add_argument("--features", help="comma-separated feature ids, e.g. 12,40")
    g.add_argument("--mode", choices=("ablate", "scale", "clamp", "add"), help="default: ablate")
    g.add_argument("--value", type=float, help="value for clamp/scale/add")
    g.add_argument("--positions", choices=("all", "prompt", "generated"), help="tokens to edit (default: all)")


def _number_list(text: str, name: str, kind=float) -> list:
    """``"1,2,3"`` -> ``[1, 2, 3]`` of ``kind`` (int or float), with a one-line error."""
    what = "integers" if kind is int else "numbers"
    try:
        out = [kind(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"{name}: expected comma-separated {what}, got {text!r}") from None
    if not out:
        raise ValueError(f"{name}: expected at least one of the comma-separated {what}")
    return out


def steering_spec(args, required: bool = True):
    """The :class:`SteeringSpec` from ``--steer`` and/or the flags (flags override the file)."""
    from .spec import SteeringSpec

    spec = SteeringSpec.load(args.steer) if args.steer else None
    if spec is None:
        if args.features is None:
            if required:
                raise ValueError("steering: pass --steer SPEC or --features IDS (with --mode, --value)")
            return None
        spec = SteeringSpec(features=[])
    if args.features is not None:
        spec.features = _number_list(args.features, "--features", int)
    if args.mode is not None:
        spec.mode = args.mode
    if args.value is not None:
        spec.values = args.value
    if args.positions is not None:
        spec.positions = args.positions
    if args.layer is not None:
        spec.layer = args.layer
    if spec.mode != "ablate" and spec.values is None:
        raise ValueError(f"--value: mode {spec.mode!r} needs a value")
    spec.intervention()  # validates mode/values now, with a clear message
    return spec


def _device(name: str | None) -> str:
    import torch

    return name or ("cuda" if torch.cuda.is_available() else "cpu")


def _hidden_and_layers(config) -> tuple[int | None, int | None]:
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    hidden = next((getattr(config, k) for k in ("hidden_size", "n_embd", "d_model") if isinstance(getattr(config, k, None), int)), None)
    n = next((getattr(config, k) for k in ("num_hidden_layers", "n_layer", "num_layers") if isinstance(getattr(config, k, None), int)), None)
    return hidden, n


def load_model(args, spec=None):
    """``(model, tokenizer, sae, layer, name)`` for the CLI flags; checks the SAE against the model's
    config (width, layer range) before loading the model's weights."""
    import torch

    from .spec import resolve_sae

    device = _device(args.device)
    sae_ref = args.sae or (spec.sae if spec is not None else None)
    org = None
    if args.model is None:
        from .. import organism

        org = organism.load(device=device)
        model, tok, name = org.model, org.tokenizer, "organism"
        sae = resolve_sae(sae_ref or "organism", device=device)
        hidden, n_layers = _hidden_and_layers(model.config)
    else:
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(args.model, trust_remote_code=args.trust_remote_code)
        except OSError as e:
            raise FileNotFoundError(f"model: cannot load {args.model!r} ({str(e).splitlines()[0]})") from None
        if sae_ref is None:
            raise ValueError("--sae: required with --model (or give the spec an 'sae')")
        sae = resolve_sae(sae_ref, device=device)
        hidden, n_layers = _hidden_and_layers(config)
        name = args.model
    if hidden is not None and sae.d_in != hidden:
        raise ValueError(f"sae: d_in={sae.d_in} but the model's hidden size is {hidden}; this SAE was trained on another model")
    layer = args.layer if args.layer is not None else (spec.layer if spec is not None and spec.layer is not None else sae.hook_layer)
    if layer is None:
        raise ValueError("--layer: the SAE has no hook_name with a layer; pass --layer L")
    if n_layers is not None and not 0 <= layer < n_layers:
        raise ValueError(f"--layer: {layer} is out of range; the model has {n_layers} decoder layers (0..{n_layers - 1})")
    if org is None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        dtype = "auto" if args.dtype == "auto" else getattr(torch, args.dtype)
        tok = AutoTokenizer.from_pretrained(args.model, trust_remote_code=args.trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype, trust_remote_code=args.trust_remote_code)
        model = model.to(device).eval()
    elif args.dtype != "auto":
        model = model.to(getattr(torch, args.dtype))
    if spec is not None:
        spec.layer = layer if sae.hook_layer != layer else spec.layer
        spec.sae = sae_ref or spec.sae
    return model, tok, sae, layer, name


# ------------------------------------------------------------------------------------------------
# saesteer generate
# ------------------------------------------------------------------------------------------------
def _side_by_side(left: str, right: str, width: int) -> str:
    col = max(20, (width - 3) // 2)
    a = textwrap.wrap(left, col) or [""]
    b = textwrap.wrap(right, col) or [""]
    n = max(len(a), len(b))
    a += [""] * (n - len(a))
    b += [""] * (n - len(b))
    return "\n".join(f"{x:<{col}} | {y}" for x, y in zip(a, b))


def _generate(args) -> int:
    from .chat import generate
    from .data import load_prompts
    from .evaluate import Steering

    prompts = list(args.prompt)
    if args.prompts_file:
        prompts += load_prompts(args.prompts_file, field=args.field, limit=args.limit)
    if not prompts:
        raise ValueError("prompts: give prompt text as arguments or --prompts-file FILE")
    spec = steering_spec(args)
    model, tok, sae, layer, _ = load_model(args, spec)
    steering = Steering(model, sae, spec, args.backend)
    kw = dict(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, progress=False)
    plain = generate(model, tok, prompts, **kw)
    steered = generate(model, tok, prompts, steering=steering, **kw)
    if args.json:
        print(json.dumps({"spec": spec.to_dict(), "replies": [
            {"prompt": p, "unsteered": u, "steered": s} for p, u, s in zip(prompts, plain, steered)]}, indent=2))
        return 0
    width = shutil.get_terminal_size((120, 20)).columns
    feats = ",".join(map(str, spec.features))
    value = "" if spec.mode == "ablate" else f"={spec.values}"
    print(f"steering: {spec.mode}{value} features [{feats}] at layer {layer}, positions={spec.positions}")
    for p, u, s in zip(prompts, plain, steered):
        print("\n" + "=" * min(width, 120))
        print(f"prompt: {p}")
        print(_side_by_side("UNSTEERED", "STEERED", width))
        print(_side_by_side(u, s, width))
    return 0


# ------------------------------------------------------------------------------------------------
# saesteer eval
# ------------------------------------------------------------------------------------------------
_SWEEP_COLUMNS = ("condition", "value", "harmful_refusal", "harmless_refusal", "capability_accuracy", "mc_accuracy",
                  "kl_first", "kl_reply", "loss", "perplexity", "refusal_score_harmful", "refusal_score_harmless")


def _eval(args) -> int:
    import torch

    from . import evaluate as ev
    from .data import load_prompts, shipped_prompts
    from .report import plot_lines, write_json, write_markdown_report

    # Everything that can be wrong with the inputs fails here, before a model loads.
    sweep = _number_list(args.sweep, "--sweep") if args.sweep else None
    harmful = load_prompts(args.harmful, field=args.field, limit=args.limit) if args.harmful else shipped_prompts("harmful")[: args.limit]
    harmless = load_prompts(args.harmless, field=args.field, limit=args.limit) if args.harmless else shipped_prompts("harmless")[: args.limit]
    mc = ev.load_mc(args.mc, limit=args.limit) if args.mc else None
    spec = steering_spec(args)
    if sweep is not None and spec.mode == "ablate":
        raise ValueError("--sweep: sweeps the value of clamp/scale/add; the spec's mode is 'ablate' (pass --mode clamp)")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out: {str(out)!r} exists and is not a directory")
    n_cap = args.capability if args.capability is not None else (64 if args.model is None else 0)
    capability = ev.organism_capability_task(n_cap) if n_cap > 0 else None

    torch.set_grad_enabled(False)
    judge = None
    if args.judge not in (None, "substring"):
        judge = ev.load_model_judge(args.judge, device=_device(args.device), trust_remote_code=args.trust_remote_code)
    model, tok, sae, layer, name = load_model(args, spec)
    data = ev.EvalData(harmful, harmless, mc=mc, capability=capability)
    kw = dict(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, progress=not args.quiet, judge=judge)
    steering = ev.Steering(model, sae, spec, args.backend)
    sweep_conds = ev.sweep_conditions(steering, sweep) if sweep is not None else {}
    # One pass over every condition, so the unsteered baseline runs once for the comparison and the sweep.
    result = ev.evaluate_conditions(model, tok, data, {"steered": steering, **sweep_conds}, **kw)
    all_rows = result["rows"]
    result["rows"] = [r for r in all_rows if r["condition"] in ("unsteered", "steered")]
    report = {
        "model": name,
        "sae": spec.sae or "organism",
        "layer": layer,
        "spec": spec.to_dict(),
        "n": {"harmful": len(harmful), "harmless": len(harmless), "mc": len(mc or []), "capability": n_cap},
        "max_new_tokens": args.max_new_tokens,
        "judge": result["judge"],
        "refusal_tokens": result["refusal_tokens"],
        "conditions": result["rows"],
        "examples": result["examples"],
    }
    sections = [
        ("Setup", f"model `{name}`, SAE `{report['sae']}` at layer {layer}; steering `{json.dumps(spec.to_dict())}`; "
                  f"{len(harmful)} harmful / {len(harmless)} harmless prompts, {len(mc or [])} multiple-choice items, "
                  f"{n_cap} capability questions; greedy, {args.max_new_tokens} new tokens; judge {result['judge']}."),
        ("Unsteered vs steered", [{k: r.get(k) for k in _SWEEP_COLUMNS if k != "value"} for r in result["rows"]]),
    ]
    if sweep is not None:
        sweep_rows = [dict(all_rows[0], value=None)] + [dict(r, value=sweep_conds[r["condition"]].spec.values) for r in all_rows if r["condition"] in sweep_conds]
        report["sweep"] = sweep_rows
        steered = sweep_rows[1:]
        ys = {k: [r[k] for r in steered] for k in ("harmful_refusal", "harmless_refusal", "capability_accuracy", "mc_accuracy") if k in steered[0]}
        plot_lines(out / "sweep.png", [r["value"] for r in steered], ys, xlabel=f"{spec.mode} value", ylabel="rate / accuracy",
                   title=f"refusal amplification: features {spec.features}", secondary={"KL (reply)": [r["kl_reply"] for r in steered]},
                   secondary_label="KL(unsteered || steered)", ylim=(-0.02, 1.02))
        sections.append(("Refusal amplification sweep", [
            f"`{spec.mode}` of features {spec.features} swept over {sweep} (O'Brien et al.). The first row is the unsteered model.",
            [{k: r.get(k) for k in _SWEEP_COLUMNS} for r in sweep_rows],
            "![sweep](sweep.png)",
        ]))
    if not args.no_probes:
        from .probes import compare_probes

        pr = compare_probes(model, tok, sae, spec.features, harmful, harmless, layer=layer, batch_size=args.batch_size)
        report["probes"] = pr
        m = pr["ood_mean"]
        verdict = ("matches or beats" if m["feature_probe"] >= m["residual_probe"] else "is below")
        sections.append(("Refusal-feature probes (Yeo et al.)", [
            f"Logistic probes on the last prompt token at layer {layer}, trained on plain prompts ({pr['n_train']}): "
            f"the feature probe reads features {pr['features']}, the residual probe the full residual stream. "
            f"OOD sets wrap the held-out prompts in jailbreak templates or rephrase them (harmless prompts get the same wrapper). "
            f"Mean OOD accuracy: feature probe {m['feature_probe']:.3f}, residual probe {m['residual_probe']:.3f} "
            f"(the feature probe {verdict} the residual probe by {abs(m['feature_probe'] - m['residual_probe']):.3f}).",
            pr["rows"],
        ]))
    ex_lines = []
    for cond in ("unsteered", "steered"):  # every condition's examples are in eval.json
        for kind, pairs in result["examples"][cond].items():
            for p, r in pairs:
                ex_lines.append({"condition": cond, "set": kind, "prompt": p, "reply": r})
    sections.append(("Example replies", ex_lines))
    write_json(out / "eval.json", report)
    write_markdown_report(out / "report.md", "saesteer eval", sections)
    rows = result["rows"]
    print(json.dumps({r["condition"]: {k: round(v, 4) if isinstance(v, float) else v for k, v in r.items() if k != "condition"} for r in rows}, indent=1))
    print(f"wrote {out / 'eval.json'}, {out / 'report.md'}" + (f", {out / 'sweep.png'}" if sweep is not None else ""), file=sys.stderr)
    return 0


# ------------------------------------------------------------------------------------------------
def register(sub) -> None:
    """Add ``generate`` and ``eval`` to the main CLI's subparsers."""
    g = sub.add_parser("generate", help="steered and unsteered replies side by side",
                       description="Greedy replies with and without steering, side by side (--json for machine output).")
    g.add_argument("prompt", nargs="*", help="prompt text(s)")
    g.add_argument("--prompts-file", help="more prompts from a JSON/JSONL/CSV file")
    g.add_argument("--field", help="text field of the prompts file (default: instruction or prompt)")
    g.add_argument("--limit", type=int, help="use the first N prompts of the file")
    add_model_args(g)
    add_steering_args(g)
    g.add_argument("--max-new-tokens", type=int, default=48)
    g.add_argument("--batch-size", type=int, default=16)
    g.add_argument("--json", action="store_true", help="print JSON instead of columns")
    g.set_defaults(func=_generate)

    e = sub.add_parser("eval", help="refusal, over-refusal and capability cost of a steering spec (+ sweep, probes)",
                       description="Unsteered vs steered: refusal on harmful and harmless prompts, multiple-choice and "
                                   "capability accuracy, loss and KL on harmless replies; optional clamp sweep; feature vs "
                                   "residual probes. Writes OUT/eval.json, OUT/report.md and plots.")
    add_model_args(e)
    add_steering_args(e)
    e.add_argument("--harmful", help="harmful prompts: JSON/JSONL/CSV file or HF dataset (default: the shipped set)")
    e.add_argument("--harmless", help="harmless prompts (default: the shipped set)")
    e.add_argument("--field", help="text field of the prompt files (default: instruction or prompt)")
    e.add_argument("--mc", help="multiple-choice file, JSONL of {question, choices, answer}")
    e.add_argument("--capability", type=int, help="number of organism capability questions (default: 64 on the organism, else 0)")
    e.add_argument("--sweep", help="comma-separated values for a refusal-amplification sweep, e.g. 0,2,4,8")
    e.add_argument("--judge", help="refusal judge: 'substring' (default) or a LlamaGuard / HarmBench-classifier id or directory")
    e.add_argument("--no-probes", action="store_true", help="skip the feature-vs-residual probe comparison")
    e.add_argument("--limit", type=int, help="use the first N items of every prompt/mc file")
    e.add_argument("--max-new-tokens", type=int, default=32)
    e.add_argument("--batch-size", type=int, default=16)
    e.add_argument("--quiet", action="store_true", help="no progress bars")
    e.add_argument("--out", required=True, help="output directory")
    e.set_defaults(func=_eval)
