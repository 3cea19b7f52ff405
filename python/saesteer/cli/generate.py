"""``saesteer generate``: greedy replies with and without steering, side by side."""

from __future__ import annotations

import json
import shutil
import textwrap

from .common import add_model_args, add_steering_args, check_run_args, load_model, steering_spec

__all__ = ["register"]


def _side_by_side(left: str, right: str, width: int) -> str:
    col = max(20, (width - 3) // 2)
    a = textwrap.wrap(left, col) or [""]
    b = textwrap.wrap(right, col) or [""]
    n = max(len(a), len(b))
    a += [""] * (n - len(a))
    b += [""] * (n - len(b))
    return "\n".join(f"{x:<{col}} | {y}" for x, y in zip(a, b))


def _generate(args) -> int:
    from ..refusal.chat import generate
    from ..refusal.data import load_prompts
    from ..refusal.evaluate import Steering
    from ..refusal.turns import prompt_label

    check_run_args(args)
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
    value = "" if spec.mode == "ablate" else f"={spec.values}"
    where = ([(e["features"], e.get("layer")) for e in spec.edits] if spec.edits else [(spec.features, layer)])
    sites = "; ".join(f"features [{','.join(map(str, f))}] at layer {lay}" for f, lay in where)
    print(f"steering: {spec.mode}{value} {sites}, positions={spec.positions}")
    for p, u, s in zip(prompts, plain, steered):
        print("\n" + "=" * min(width, 120))
        print(f"prompt: {prompt_label(p)}")
        print(_side_by_side("UNSTEERED", "STEERED", width))
        print(_side_by_side(u, s, width))
    return 0


def register(sub) -> None:
    """Add ``generate`` to the main CLI's subparsers."""
    g = sub.add_parser("generate", help="steered and unsteered replies side by side",
                       description="Greedy replies with and without steering, side by side (--json for machine output).")
    g.add_argument("prompt", nargs="*", help="prompt text(s)")
    g.add_argument("--prompts-file", help="more prompts from a JSON/JSONL/CSV file (strings or conversations)")
    g.add_argument("--field", help="text or conversation field of the prompts file (default: instruction, prompt, "
                                   "messages, conversation or turns)")
    g.add_argument("--limit", type=int, help="use the first N prompts of the file")
    add_model_args(g)
    add_steering_args(g)
    g.add_argument("--max-new-tokens", type=int, default=48, help="new tokens per reply, greedy (default 48)")
    g.add_argument("--batch-size", type=int, default=16, help="prompts per generate call (default 16)")
    g.add_argument("--json", action="store_true", help="print JSON instead of columns")
    g.set_defaults(func=_generate)
