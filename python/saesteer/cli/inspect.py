"""``saesteer inspect``: which SAE features fire on which tokens, as a table, JSON or one HTML page;
``--contrast A B``: the features whose mean activation differs most between two prompt sets."""

from __future__ import annotations

import json
import shutil
import sys

from .common import add_model_args, check_output, check_run_args, expand_sae_refs, load_model, load_model_saes

__all__ = ["register"]


def _batches(model, tok, prompts, chat: bool, batch_size: int):
    """Left-padded batches of ``prompts``: chat-formatted (the tokenizer's template) or raw text
    (the tokenizer's special tokens added)."""
    from ..refusal.chat import format_prompts
    from ..refusal.inputs import model_device, tokenize_texts

    device = model_device(model)
    for b in range(0, len(prompts), batch_size):
        chunk = prompts[b : b + batch_size]
        if chat:
            yield chunk, tokenize_texts(tok, format_prompts(tok, chunk), device)
        else:
            if tok.pad_token is None:
                tok.pad_token = tok.eos_token
            tok.padding_side = "left"
            enc = tok(list(chunk), return_tensors="pt", padding=True)
            yield chunk, {k: v.to(device) for k, v in enc.items()}


def _inspect_all(model, tok, saes: dict, prompts, args):
    """``(labels, {name: [Inspection per batch]})`` over every prompt."""
    from ..hf import inspect
    from ..refusal.turns import prompt_label

    out = {name: [] for name in saes}
    labels = []
    for chunk, enc in _batches(model, tok, prompts, args.chat, args.batch_size):
        res = inspect(model, saes, enc, k=args.k, tokenizer=tok, backend=args.backend, skip_bos=args.skip_bos,
                      track=None if args.feature is None else [args.feature])
        for name in saes:
            out[name].append(res[name])
        labels += [prompt_label(p) for p in chunk]
    return labels, out


def _print_table(name: str, batches, labels, width: int) -> None:
    n = 0
    for res in batches:
        for r in range(len(res)):
            print("=" * min(width, 100))
            print(f"{name} | prompt {n + 1}: {labels[n]}")
            print(f"{'pos':>4}  {'token':<16} top features (id=activation)")
            for t, tok, feats in res.token_features(r):
                shown = json.dumps(tok)[1:-1]
                shown = shown if len(shown) <= 16 else shown[:15] + "\u2026"
                line = "  ".join(f"{i}={v:.2f}" for i, v in feats) or "-"
                print(f"{t:>4}  {shown:<16} {line}")
            for by in ("max", "mean"):
                top = ", ".join(f"{i} ({v:.3g})" for i, v in res.top(r, by))
                print(f"prompt top features by {by}: {top or '-'}")
            n += 1


def _contrast(args, model, tok, saes: dict) -> int:
    """The features separating the two prompt files, per SAE, with Cohen's d, and each one's
    cosine with the difference in means of the residual stream at the SAE's hook point (discover's
    cosine candidates, :func:`saesteer.refusal.features.rank_by_cosine`)."""
    from ..hf import contrast
    from ..refusal.features import rank_by_cosine, site_residuals

    a, b = (_prompt_set(ref, args) for ref in args.contrast)
    args.chat = True  # prompt sets are instructions, read in the chat template as discover reads them
    _, ia = _inspect_all(model, tok, saes, a, args)
    _, ib = _inspect_all(model, tok, saes, b, args)
    report = {"a": args.contrast[0], "b": args.contrast[1], "n_a": len(a), "n_b": len(b), "saes": {}}
    for name, sae in saes.items():
        rows = contrast(ia[name], ib[name], top=args.top)
        kw = dict(batch_size=args.batch_size)
        direction = site_residuals(model, tok, sae, a, **kw).double().mean(0) - site_residuals(model, tok, sae, b, **kw).double().mean(0)
        ranked = rank_by_cosine(sae, direction.float(), top=sae.d_sae)
        cos = {f: (c, rank + 1) for rank, (f, c) in enumerate(ranked)}
        for row in rows:
            row["cosine"], row["cosine_rank"] = cos[row["feature"]]
        report["saes"][name] = rows
        print(f"{name}: features whose mean activation differs most, {args.contrast[0]} (A, n={len(a)}) vs "
              f"{args.contrast[1]} (B, n={len(b)})")
        print(f"{'feature':>8} {'mean A':>9} {'mean B':>9} {'diff':>9} {'d':>7} {'fires A':>8} {'fires B':>8} "
              f"{'cos':>6} {'cos rank':>8}")
        for r in rows:
            print(f"{r['feature']:>8} {r['mean_a']:>9.4f} {r['mean_b']:>9.4f} {r['diff']:>+9.4f} {r['d']:>+7.2f} "
                  f"{r['frac_a']:>8.0%} {r['frac_b']:>8.0%} {r['cosine']:>+6.2f} {r['cosine_rank']:>8}")
    if args.json:
        check_output(args.json, "--json", "file").write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return 0


def _prompt_set(ref: str, args) -> list:
    """A prompt file, or ``organism:harmful`` / ``organism:harmless``: the sets shipped with the package."""
    from ..refusal.data import load_prompts, shipped_prompts

    if ref in ("organism:harmful", "organism:harmless"):
        prompts = shipped_prompts(ref.split(":", 1)[1])
        return prompts[: args.limit] if args.limit else prompts
    return load_prompts(ref, field=args.field, limit=args.limit)


def _inspect(args) -> int:
    from ..hf.inspection_html import render_html
    from ..refusal.data import load_prompts

    check_run_args(args)
    for flag in ("json", "html"):
        if getattr(args, flag):
            check_output(getattr(args, flag), f"--{flag}", "file")
    if args.k < 1:
        raise ValueError(f"--k: expected a positive integer, got {args.k}")
    if args.top < 1:
        raise ValueError(f"--top: expected a positive integer, got {args.top}")
    prompts = list(args.prompt)
    if args.prompts_file:
        prompts += load_prompts(args.prompts_file, field=args.field, limit=args.limit)
    if args.contrast:
        if prompts:
            raise ValueError("--contrast: compares two prompt files; leave out the prompt arguments and --prompts-file")
        if args.html:
            raise ValueError("--html: not with --contrast (use --json for the table)")
    elif not prompts:
        raise ValueError("prompts: give prompt text as arguments or --prompts-file FILE")
    refs = expand_sae_refs(args.sae) if args.sae else [None]
    if args.layer is not None:
        raise ValueError("--layer: inspect reads each SAE at its own hook point (its hook_name)")
    if len(refs) == 1:
        args.sae = refs[0]
        model, tok, sae, _, model_name = load_model(args)
        saes = {refs[0] or "organism": sae}
    else:
        model, tok, loaded, _, model_name = load_model_saes(args, refs)
        saes = dict(zip(refs, loaded))
    for name, sae in saes.items():
        if args.k > sae.d_sae:
            raise ValueError(f"--k: {args.k} is more than the SAE's {sae.d_sae} features ({name})")
        if args.feature is not None and not 0 <= args.feature < sae.d_sae:
            raise ValueError(f"--feature: {args.feature} is out of range for {name} (d_sae={sae.d_sae})")
    if args.contrast:
        return _contrast(args, model, tok, saes)
    labels, results = _inspect_all(model, tok, saes, prompts, args)
    if args.json:
        data = {"model": model_name, "k": args.k, "chat": args.chat, "saes": {
            name: [p for res in batches for p in res.to_dict()["prompts"]] for name, batches in results.items()}}
        for name, batches in results.items():
            for p, label in zip(data["saes"][name], labels):
                p["prompt"] = label
        check_output(args.json, "--json", "file").write_text(json.dumps(data, indent=2))
    if args.html:
        page = render_html({name: _merge(batches) for name, batches in results.items()}, labels,
                           title="saesteer inspect", subtitle=f"model {model_name} \u00b7 {len(prompts)} prompt(s)",
                           feature=args.feature)
        check_output(args.html, "--html", "file").write_text(page, encoding="utf-8")
    if not args.quiet:
        width = shutil.get_terminal_size((120, 20)).columns
        for name, batches in results.items():
            _print_table(name, batches, labels, width)
    for flag in ("json", "html"):
        if getattr(args, flag):
            print(f"wrote {getattr(args, flag)}", file=sys.stderr)
    return 0


def _merge(batches):
    """One Inspection from per-batch ones (padded to the widest batch, padding marked)."""
    import torch

    from ..hf.inspection import Inspection

    if len(batches) == 1:
        return batches[0]
    T = max(b.ids.shape[1] for b in batches)

    def pad(t, fill):
        if t.shape[1] == T:
            return t
        shape = (t.shape[0], T - t.shape[1], *t.shape[2:])
        return torch.cat([torch.full(shape, fill, dtype=t.dtype), t], 1)  # left padding, as the batches are

    tracked = sorted({f for b in batches for f in b.tracked})
    tv = []
    for b in batches:
        cols = [b.tracked.index(f) if f in b.tracked else None for f in tracked]
        v = torch.zeros(*b.ids.shape[:2], len(tracked))
        for j, c in enumerate(cols):
            if c is not None:
                v[..., j] = b.tracked_values[..., c]
        tv.append(pad(v, 0.0))
    return Inspection(batches[0].hook_name, batches[0].k, torch.cat([pad(b.ids, -1) for b in batches]),
                      torch.cat([pad(b.values, 0.0) for b in batches]), torch.cat([pad(b.mask, False) for b in batches]),
                      torch.cat([pad(b.token_ids, 0) for b in batches]),
                      [[None] * (T - len(row)) + row for b in batches for row in b.tokens],
                      torch.cat([b.max_acts for b in batches]), torch.cat([b.mean_acts for b in batches]),
                      torch.cat([pad(b.summary_mask, False) for b in batches]), tracked, torch.cat(tv))


def register(sub) -> None:
    """Add ``inspect`` to the main CLI's subparsers."""
    g = sub.add_parser("inspect", help="which SAE features fire on which tokens (table, JSON, HTML)",
                       description="Per token, the top-k SAE features at the SAE's hook point (one forward, the fused "
                                   "encode + top-k), and each prompt's strongest features by max and mean. --html writes "
                                   "one self-contained page (tokens coloured by a chosen feature, each token's features "
                                   "on hover or click). --contrast A B lists the features whose mean activation differs "
                                   "most between two prompt files, with effect sizes.")
    g.add_argument("prompt", nargs="*", help="prompt text(s)")
    g.add_argument("--prompts-file", help="more prompts from a JSON/JSONL/CSV file (strings or conversations)")
    g.add_argument("--field", help="text or conversation field of the prompt files")
    g.add_argument("--limit", type=int, help="use the first N prompts of each file")
    add_model_args(g, several_saes=True)
    g.add_argument("--k", type=int, default=16, help="features per token (default 16)")
    g.add_argument("--chat", action="store_true", help="format each prompt with the tokenizer's chat template "
                                                       "(as a user turn, with the generation prompt)")
    g.add_argument("--no-skip-bos", dest="skip_bos", action="store_false",
                   help="count the BOS token in each prompt's max and mean (default: left out)")
    g.add_argument("--feature", type=int, help="the feature the HTML page first colours the tokens by "
                                               "(default: the first prompt's strongest)")
    g.add_argument("--json", metavar="FILE", help="write the results as JSON")
    g.add_argument("--html", metavar="FILE", help="write one self-contained HTML page")
    g.add_argument("--contrast", nargs=2, metavar=("A", "B"),
                   help="two prompt files, or organism:harmful / organism:harmless (the shipped sets), read in the chat "
                        "template: the features whose mean activation differs most between them")
    g.add_argument("--top", type=int, default=20, help="rows of --contrast (default 20)")
    g.add_argument("--batch-size", type=int, default=16)
    g.add_argument("--quiet", action="store_true", help="no token table on stdout (with --json / --html)")
    g.set_defaults(func=_inspect)
