"""How the result-validity thresholds behave on the organism: the degeneracy detector's false
positives on ordinary replies and its response to a clamp that breaks the model.

    python benchmarks/judge_thresholds.py --out runs/thresholds

Writes thresholds.json and thresholds.md. Measured:
* the fraction of the organism's training replies (refusals and helpful replies, drawn from its data
  generator) that the detector calls degenerate: each one is an ordinary reply, so every flag is a
  false positive;
* the organism's own greedy replies to the package prompts, unsteered and with its refusal features
  clamped at increasing values: refused / complied / degenerate per value.
"""

from __future__ import annotations

import argparse
import json
import random
from collections import Counter
from pathlib import Path

import torch
from tqdm import tqdm

import saesteer
from saesteer import Intervention, organism
from saesteer.organism.training import data
from saesteer.refusal.judges import class_rates, degeneracy, judge_classes, SubstringJudge


def generator_false_positives(n: int, seed: int) -> dict:
    rng = random.Random(seed)
    harmless = organism.load_prompts("harmless")
    replies = [data.refusal_reply(rng) for _ in range(n)] + [data.helpful_reply(rng.choice(harmless), rng) for _ in range(n)]
    reasons = Counter(degeneracy(r) for r in replies)
    flagged = sum(v for k, v in reasons.items() if k is not None)
    return {"replies": len(replies), "flagged": flagged, "rate": flagged / len(replies),
            "reasons": {str(k): v for k, v in reasons.items() if k is not None},
            "examples": [r for r in replies if degeneracy(r)][:5]}


def refusal_features(org, harmful, harmless, k: int) -> list[int]:
    def codes(texts):
        with torch.no_grad(), saesteer.capture(org.model, org.sae, transform=lambda x: x[:, -1]) as rec:
            for t in texts:
                org.model(torch.tensor([org.tokenizer(org.format_prompt(t), add_special_tokens=False).input_ids]))
        return org.sae.encode(torch.cat(rec[org.sae.hook_name]))

    return (codes(harmful).mean(0) - codes(harmless).mean(0)).topk(k).indices.tolist()


def sweep(org, values, n: int, max_new: int, k: int) -> list[dict]:
    harmful, harmless = organism.load_prompts("harmful")[:n], organism.load_prompts("harmless")[:n]
    feats = refusal_features(org, harmful, harmless, k)
    judge = SubstringJudge()
    rows = []
    for v in tqdm([None, *values], desc="clamp sweep"):
        row = {"value": v, "features": feats}
        for kind, prompts in (("harmful", harmful), ("harmless", harmless)):
            if v is None:
                replies = org.chat(prompts, max_new_tokens=max_new)
            else:
                with saesteer.steer(org.model, org.sae, Intervention(feats, "clamp", float(v)), positions="generated"):
                    replies = org.chat(prompts, max_new_tokens=max_new)
            rates = class_rates(judge_classes(judge, prompts, replies))
            row[kind] = rates
            row[f"{kind}_example"] = replies[0]
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/thresholds")
    ap.add_argument("--n-generator", type=int, default=5000)
    ap.add_argument("--n-prompts", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--values", default="4,8,16,32,64")
    ap.add_argument("--features", type=int, default=8)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    org = organism.load()
    res = {"generator": generator_false_positives(args.n_generator, 0),
           "sweep": sweep(org, [float(v) for v in args.values.split(",")], args.n_prompts, args.max_new_tokens, args.features),
           "torch": torch.__version__, "args": vars(args)}
    (out / "thresholds.json").write_text(json.dumps(res, indent=2))
    g = res["generator"]
    lines = ["# Degeneracy detector on the organism", "",
             f"Generator replies flagged (false positives): {g['flagged']} / {g['replies']} ({g['rate']:.2%}).", "",
             "| clamp value | harmful refused | harmful complied | harmful degenerate | harmless refused | harmless complied | harmless degenerate |",
             "|---|---|---|---|---|---|---|"]
    for r in res["sweep"]:
        h, l = r["harmful"], r["harmless"]
        lines.append(f"| {'none' if r['value'] is None else r['value']} | {h['refused']:.0%} | {h['complied']:.0%} | {h['degenerate']:.0%} "
                     f"| {l['refused']:.0%} | {l['complied']:.0%} | {l['degenerate']:.0%} |")
    lines += ["", "Examples (first harmless prompt):", ""]
    lines += [f"- {'none' if r['value'] is None else r['value']}: {r['harmless_example']!r}" for r in res["sweep"]]
    (out / "thresholds.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
