"""``saesteer organism ...`` subcommands. The main CLI calls :func:`register`."""

from __future__ import annotations

import argparse


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``organism`` (with ``train``) to the main CLI's ``subparsers``."""
    p = subparsers.add_parser("organism", help="the refusal organism: a small chat model with its SAEs")
    sub = p.add_subparsers(dest="organism_command", required=True)
    t = sub.add_parser("train", help="train the organism (tokenizer, model, gates, SAEs, manifest)")
    t.add_argument("--harmful", required=True, help="harmful instructions (JSON list / JSONL)")
    t.add_argument("--harmless", required=True, help="harmless instructions (JSON list / JSONL)")
    t.add_argument("--out", required=True, help="output directory")
    t.add_argument("--harmful-val", help="held-out harmful instructions: model selection and gates only")
    t.add_argument("--harmless-val", help="held-out harmless instructions: model selection and gates only")
    t.add_argument("--quick", action="store_true", help="tiny model in under a minute (for tests)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--steps", type=int, help="override the number of training steps")
    t.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    t.add_argument("--max-minutes", type=float, help="wall-clock cap for the model stage in minutes (default 26; quick 0.5)")
    t.add_argument("--resume", action="store_true", help="reuse OUT/model when its training already finished")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a TrainConfig setting, e.g. --set hidden_size=192 (repeatable)")
    t.set_defaults(func=_train)
    g = sub.add_parser("gates", help="re-run the quality gates on a trained organism and update its manifest")
    g.add_argument("--dir", required=True, help="organism directory (with manifest.json)")
    g.add_argument("--harmful-val", help="held-out harmful instructions")
    g.add_argument("--harmless-val", help="held-out harmless instructions")
    g.add_argument("--threads", type=int, default=2)
    g.set_defaults(func=_gates)
    return p


def _gates(args) -> int:
    from ..organism.training.train import regate

    gates = regate(args.dir, args.harmful_val, args.harmless_val, threads=args.threads)
    return 0 if gates["all_passed"] else 1


def _train(args) -> int:
    from ..organism.training.train import train_organism

    manifest = train_organism(
        harmful=args.harmful, harmless=args.harmless, out=args.out, harmful_val=args.harmful_val,
        harmless_val=args.harmless_val, quick=args.quick, seed=args.seed, steps=args.steps,
        threads=args.threads, max_minutes=args.max_minutes, resume=args.resume,
        overrides=dict(kv.split("=", 1) for kv in args.set),
    )
    gates = manifest["gates"]
    return 0 if (args.quick or gates.get("all_passed")) else 1


def main(argv=None) -> int:
    """Standalone entry: ``python -m saesteer.cli.organism organism train ...``."""
    parser = argparse.ArgumentParser(prog="saesteer")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
