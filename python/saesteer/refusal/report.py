"""Report writers: JSON, Markdown and PNG plots for ``saesteer eval``, and discover's outputs.

The generic part: a report is a title and a list of sections ``(heading, body)``, where a body is
Markdown text, a table (a list of dicts with the same keys), or a list of such pieces. discover's
results (:func:`write_discover_outputs`) have their own fixed report and plots.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from .turns import prompt_label

__all__ = ["feature_text", "write_json", "markdown_table", "write_markdown_report", "plot_lines", "write_discover_outputs", "discover_plots", "discover_report",
           "warning_section", "per_prompt_lines", "interaction_lines", "top_feature_table"]


def _jsonable(o: Any):
    try:
        import torch

        if isinstance(o, torch.Tensor):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "tolist"):  # numpy arrays and scalars
        return o.tolist()
    if hasattr(o, "to_dict"):
        return o.to_dict()
    if isinstance(o, (set, tuple)):
        return list(o)
    raise TypeError(f"{type(o).__name__} is not JSON serializable")


def _finite(o: Any):
    # NaN/inf are not JSON (strict parsers reject them): they become null, i.e. "not measured".
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, Mapping):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    return o


def write_json(path: str | Path, obj: Any) -> Path:
    """``obj`` as indented, strict JSON (tensors, numpy values, paths and objects with ``to_dict``
    allowed; NaN and inf written as null)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    plain = json.loads(json.dumps(obj, default=_jsonable, allow_nan=True))
    p.write_text(json.dumps(_finite(plain), indent=2, allow_nan=False) + "\n")
    return p


def _cell(v: Any, digits: int) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "n/a"
        return f"{v:.{digits}f}"
    if v is None:
        return "n/a"
    if isinstance(v, (list, tuple)):
        return ", ".join(_cell(x, digits) for x in v)
    return str(v).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, digits: int = 3) -> str:
    """A GitHub Markdown table of ``rows`` (floats to ``digits`` places; ``None``/NaN as n/a)."""
    if not rows:
        return "_(no rows)_"
    cols = list(columns) if columns is not None else list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(_cell(r.get(c), digits) for c in cols) + " |")
    return "\n".join(lines)


def _body(body: Any) -> str:
    if isinstance(body, str):
        return body
    if isinstance(body, Sequence) and body and all(isinstance(r, Mapping) for r in body):
        return markdown_table(body)
    if isinstance(body, Sequence):
        return "\n\n".join(_body(b) for b in body)
    raise TypeError(f"section body: expected text, a list of dicts, or a list of those, got {type(body).__name__}")


def warning_section(valid: bool, warnings: Sequence[str]) -> list[tuple[str, Any]]:
    """The section a report opens with when its results are not meaningful or it has warnings
    (``[]`` otherwise), for :func:`write_markdown_report`'s ``sections``."""
    if valid and not warnings:
        return []
    heading = "Warnings" if valid else "These results are not meaningful"
    return [(heading, "\n".join(f"- {w}" for w in warnings))]


def write_markdown_report(path: str | Path, title: str, sections: Sequence[tuple[str, Any]]) -> Path:
    """``# title`` then ``## heading`` + body for each section."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    parts = [f"# {title}"]
    for heading, body in sections:
        parts.append(f"## {heading}\n\n{_body(body)}")
    p.write_text("\n\n".join(parts) + "\n")
    return p


def plot_lines(
    path: str | Path,
    x: Sequence[float],
    series: Mapping[str, Sequence[float]],
    *,
    xlabel: str,
    ylabel: str,
    title: str = "",
    secondary: Mapping[str, Sequence[float]] | None = None,
    secondary_label: str = "",
    ylim: tuple[float, float] | None = None,
) -> Path:
    """A line plot of ``series`` (name -> y values over ``x``) saved as PNG; ``secondary`` series go
    on a right-hand axis (e.g. KL next to rates). Uses matplotlib's Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for name, ys in series.items():
        ax.plot(list(x), list(ys), marker="o", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if secondary:
        ax2 = ax.twinx()
        for name, ys in secondary.items():
            ax2.plot(list(x), list(ys), marker="s", linestyle="--", color="gray", label=name)
        ax2.set_ylabel(secondary_label)
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, loc="best", fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(p)
    plt.close(fig)
    return p


# ------------------------------------------------------------------------------------------------
# saesteer discover's outputs
# ------------------------------------------------------------------------------------------------
def write_discover_outputs(res, out: str | Path, sae_ref: str | None = None) -> list[Path]:
    """Write a :class:`~saesteer.refusal.discover.DiscoverResult` to the directory ``out``:
    ``results.json``, and once discover has a direction and a selection, ``direction.safetensors``
    (the direction, and the affine ablation's reference when there is one), ``spec.json`` (the
    selected features, with ``sae_ref`` as its SAE), ``amplify_spec.json`` (the refusal feature(s)
    to clamp high, O'Brien et al.), the two plots and ``report.md``. Returns the paths written, each readable as a
    normal file (mode 0666 less the umask)."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    r = res.results
    written = [write_json(out / "results.json", r)]
    if res.direction is not None:
        tensors = {"direction": res.direction.contiguous()}
        if res.reference is not None:
            tensors["reference"] = res.reference.contiguous()
        save_file(tensors, str(out / "direction.safetensors"),
                  metadata={"layer": str(r["direction"]["layer"]), "position": str(r["direction"]["position"]),
                            "ablation": r["direction"]["ablation"]})
        written.append(out / "direction.safetensors")
    for name, spec in (("spec.json", res.spec), ("amplify_spec.json", getattr(res, "amplify_spec", None))):
        if spec is not None:
            spec.sae = sae_ref
            spec.save(out / name)
            written.append(out / name)
    if "verification" in r.get("stages_done", ["verification"]):
        discover_plots(r, out)
        written += [out / "refusal_score_by_layer_position.png", out / "asr_vs_features.png"]
        (out / "report.md").write_text(discover_report(r))
        written.append(out / "report.md")
    # safetensors writes through a private temporary file (mode 0600): give it the mode open() would.
    if res.direction is not None:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(out / "direction.safetensors", 0o666 & ~umask)
    return written


def trigger_lines(t: dict) -> list[str]:
    """discover's report section on the trigger (results.json's ``trigger``): the ``when`` in the
    specs, and each feature count's rates on the validation prompts that chose it."""
    lines = ["## Trigger for conditional steering (Lee et al.)", ""]
    w = t.get("when")
    if not w:
        return lines + [f"None proposed: {t.get('skipped') or 'no trigger'}."]
    sel, val = t["n_selection"], t["n_validation"]
    lines += [
        f"The specs carry `when`: features [{', '.join(map(str, w['features']))}]"
        + (f" of `{w['sae']}`" if w.get("sae") else "") + f", their summed activation's {w['reduce']} over the prompt "
        f"> {w['threshold']:.3f} (scope {w['scope']}): the edit applies only to prompts that fire it "
        "(`saesteer eval` runs the spec with and without it).",
        f"Features ranked by Cohen's d on the direction split ({sel['harmful']} refused harmful, {sel['harmless']} answered "
        f"harmless prompts); feature count and threshold chosen on the val split ({val['harmful']} / {val['harmless']}), so "
        "these rates are optimistic:",
        "",
        "| features | threshold | harmful fired (TPR) | harmless fired (FPR) | balanced accuracy |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [f"| {v['n_features']}{' (chosen)' if v['features'] == w['features'] else ''} | {v['threshold']:.3f} | "
              f"{v['tpr']:.0%} | {v['fpr']:.0%} | {v['balanced_accuracy']:.2f} |" for v in t["validation"]]
    return lines


def discover_plots(r: dict, out: str | Path) -> None:
    """discover's plots from its results dict ``r``: the direction's scores by layer and position,
    and the held-out flip rate against the number of ablated candidates."""
    import matplotlib
    import torch

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    kind = r["direction"]["ablation"]
    tab = [t for t in r["direction_table"] if t["ablation"] == kind]
    if tab:
        layers = sorted({t["layer"] for t in tab})
        poss = sorted({t["position"] for t in tab})
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
        for ax, key, title in zip(axes, ("bypass", "induce", "kl"), (f"harmful refusal score, direction ablated ({kind})", "harmless refusal score, direction added", f"harmless KL, direction ablated ({kind})")):
            M = torch.full((len(poss), len(layers)), float("nan"))
            for t in tab:
                if t[key] is not None:  # a score the selection did not need is null
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


def feature_text(f) -> str:
    """A feature for the report: its id, or ``ID@SAE`` for an ``[sae name, id]`` pair (several SAEs)."""
    return f"{f[1]}@{f[0]}" if isinstance(f, (list, tuple)) else str(f)


def _short_features(features: list, n: int = 24) -> str:
    """A feature list for a table cell, its size first: ``"3: [1, 2, 3]"``; past ``n`` features the
    first ``n`` and ``...``."""
    shown = ", ".join(map(feature_text, features[:n])) + (", ..." if len(features) > n else "")
    return f"{len(features)}: [{shown}]"


def per_prompt_lines(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """discover's per-prompt table: the set the score search kept and the set generation confirmed,
    each with its size. When no reply complied, no set was confirmed, and the cell says so and how
    many features were ablated in the last try (the whole search pool) instead of listing them."""
    if not rows:
        return []
    out = ["Per-prompt minimal sets (each searched on its own prompt by refusal score, then checked by generation "
           "and extended until the reply complies). Sets are shown as `size: [features]`.", "",
           "| prompt | minimal set by score | set confirmed by generation | complied |", "| --- | --- | --- | --- |"]
    for pp in rows:
        ok = pp["complied_by_generation"]
        confirmed = (_short_features(pp["features"]) if ok else
                     f"none: still refused with all {len(pp['features'])} features tried ablated")
        out.append(f"| {_cell(prompt_label(pp['prompt'], 60), 3)} | {_short_features(pp['score_minimal'])} | {confirmed} | {ok} |")
    return out + [""]


def interaction_lines(it: Mapping[str, Any]) -> list[str]:
    """discover's interaction section: the FM's held-out fit quality (its in-sample R^2 only with
    the warning that it means nothing when the FM has as many parameters as masks), the verified
    pairs, and a plain statement when none of them was confirmed."""
    from .interactions import CONFIRM_MIN

    out = ["## Interactions (factorization machine, verified by real ablations)"]
    n, n_params = it["n_samples"], it.get("n_params")
    held = it.get("r2_heldout")
    fit = (f"held-out R^2 = {_cell(held, 2)} on {it.get('n_heldout', 0)} masks not used for fitting"
           if it.get("n_heldout") else "no held-out R^2 (too few masks)")
    if n_params is None:
        in_sample = f"in-sample R^2 = {it['r2']:.2f}"
    elif n_params >= n:
        in_sample = f"in-sample R^2 = {it['r2']:.2f} (in-sample, not meaningful: {n_params} parameters >= {n} masks)"
    else:
        in_sample = f"in-sample R^2 = {it['r2']:.2f} ({n_params} parameters)"
    added = "[" + ", ".join(map(feature_text, it["added"])) + "]"
    out += [f"FM fitted on {n} random ablation masks: {fit}; {in_sample}. Features added: {added}.", ""]
    verified = it["verified"]
    if not verified:
        return out + ["No pair was verified."]
    if not any(v.get("confirmed") for v in verified):
        out += [f"**No interaction was confirmed**: for each pair the FM ranked strongest, the real joint ablation's "
                f"effect differs from the sum of the single effects by less than {CONFIRM_MIN} (or in the other direction "
                "than the FM's); the FM weights below are not findings.", ""]
    out += ["| i | j | FM <v_i,v_j> | e_i | e_j | e_ij | e_ij - e_i - e_j | confirmed |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for v in verified:
        out.append(f"| {feature_text(v['i'])} | {feature_text(v['j'])} | {v['fm']:.2f} | {v['e_i']:.2f} | {v['e_j']:.2f} | {v['e_ij']:.2f} | "
                   f"{v['interaction']:.2f} | {_cell(v.get('confirmed'), 2)} |")
    return out


def _template_text(kind: str | None) -> str:
    if kind == "fallback":
        return "**none in the tokenizer: the fallback `User: ...\\nAssistant:` was used** (a chat model prompted outside its template refuses differently)"
    return "the tokenizer's" if kind == "tokenizer" else "n/a"


def _warning_lines(r: Mapping[str, Any]) -> list[str]:
    """Markdown lines that open a report: whether its results are meaningful, and every warning."""
    warns = list(r.get("warnings") or [])
    if r.get("valid", True) and not warns:
        return []
    head = ("**These results are not meaningful.**" if not r.get("valid", True) else "**Warnings.**")
    return [head, "", *[f"- {w}" for w in warns], ""]


def _pct(v) -> str:
    return "n/a" if v is None else f"{v:.0%}"


def _filter_lines(filtering: Mapping[str, Any] | None) -> list[str]:
    """The prompt filter's counts (Arditi et al.: refused harmful, answered harmless prompts kept)."""
    if not filtering:
        return []
    parts = [f"{name} {c['kept']}/{c['n']}" + (" (none passed: all used)" if c.get("unfiltered") else "")
             for name, c in filtering.items()]
    return ["Prompts kept by the filter (harmful refused, harmless answered, by refusal score): " + ", ".join(parts) + ".", ""]


def edit_verb(edit: str) -> str:
    """``"ablate"`` -> ``"ablated"``, ``"scale:-3"`` -> ``"scaled by -3"``, ``"clamp:5"`` -> ``"clamped to 5"``."""
    mode, _, value = edit.partition(":")
    return {"ablate": "ablated", "scale": f"scaled by {value}", "clamp": f"clamped to {value}"}.get(mode, edit)


def _sae_line(sae) -> str:
    """The report's SAE line: one SAE, or each of several with its name and hook point."""
    if isinstance(sae, list):
        return "SAEs: " + "; ".join(f"`{x['name']}` at `{x['hook_name']}` ({x['architecture']}, d_sae={x['d_sae']})" for x in sae)
    return f"SAE: `{sae['hook_name']}` ({sae['architecture']}, d_sae={sae['d_sae']})"


def top_feature_table(r: Mapping[str, Any], n: int = 20) -> list[str]:
    """The top ``n`` candidates as a Markdown table (rank, layer, feature, score), as Yeo et al.
    tabulate their top features; with several SAEs each row names its SAE."""
    if not r["candidates"]:
        return []
    if isinstance(r["sae"], list):
        layer_of = {x["name"]: x["layer"] for x in r["sae"]}
        rows = [{"rank": k, "layer": layer_of[c[0]], "sae": f"`{c[0]}`", "feature": c[1], "score": c[-1]}
                for k, c in enumerate(r["candidates"][:n], 1)]
    else:
        rows = [{"rank": k, "layer": r["sae"]["layer"], "feature": c[0], "score": c[-1]}
                for k, c in enumerate(r["candidates"][:n], 1)]
    return [markdown_table(rows)]


def _layer_counts(r: Mapping[str, Any]) -> list[str]:
    """With several SAEs: how many of the candidates and of the minimal set each SAE holds."""
    if not isinstance(r["sae"], list):
        return []
    parts = []
    for x in r["sae"]:
        nc = sum(1 for c in r["candidates"] if c[0] == x["name"])
        nm = sum(1 for f in r["minimal_set"] if f[0] == x["name"])
        parts.append(f"`{x['name']}` (layer {x['layer']}) {nc} candidates, {nm} in the minimal set")
    return ["", "Per SAE: " + "; ".join(parts) + "."]


def downstream_lines(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """discover's downstream dormancy with several SAEs: per (edited SAE, later SAE), the later
    SAE's features that wake when only the earlier SAE's part of the minimal set is edited, on the
    same tokens; with the evidence that the edit reaches the later SAE (its codes' change, the
    features it silences), so that "none found" is a measured absence."""
    out = ["### Downstream (the earlier SAE's part of the minimal set edited, a later SAE read on the same tokens)", ""]
    if not rows:
        return out + ["Not measured: no SAE holding part of the minimal set has a later SAE among those given."]
    for x in rows:
        head = (f"`{x['read']}` (blocks.{x['hook'][0]}.hook_{x['hook'][1]}) with the {len(x['edited_features'])} features of "
                f"`{x['edited']}` edited, over {x['n_tokens']} tokens: the edit changes its codes by "
                f"{x['mean_abs_change']:.1%} (mean |f' - f| / mean |f|) and silences {x['n_silenced']} features that fired.")
        out += [head, ""]
        if x["dormant"]:
            out += ["| feature | tokens fired on | max act | examples |", "| --- | --- | --- | --- |"]
            out += [f"| {d['feature']} | {d['n_tokens']} | {d['max_act']:.2f} | {' '.join(map(repr, d['tokens']))} |" for d in x["dormant"]]
        else:
            out.append(f"**No dormant feature**: none of `{x['read']}`'s features silent on every unsteered token fires with the edit.")
        out.append("")
    return out


def discover_report(r: dict) -> str:
    """discover's ``report.md`` (Markdown) from its results dict ``r``."""
    d, a = r["direction"], r["asr"]
    ed = edit_verb(r.get("edit", "ablate"))
    lines = [
        "# saesteer discover",
        "",
        *_warning_lines(r),
        _sae_line(r["sae"]) + f"; refusal tokens {r['refusal_tokens_text']}.",
        f"Chat template: {_template_text(r.get('chat_template'))}.",
        "",
        "## Refusal direction (Arditi et al.)",
        f"Selected layer {d['layer']}, position {d['position']} (passed filters: {d['passed_filters']}; ablation: {d['ablation']}"
        + ("" if d["ablation"] == "directional" else
           " -- no candidate passed with directional ablation, so the projection is set to the harmless mean's"
           " (affine concept editing, Marshall et al. 2024); see direction_table for both") + ").",
        f"Harmful refusal score {d['scores']['harmful_refusal_score']:.2f} -> {d['scores']['bypass']:.2f} when ablated; "
        f"harmless {d['scores']['harmless_refusal_score']:.2f} -> {d['scores']['induce']:.2f} when added; KL {d['scores']['kl']:.3f}.",
        "",
        f"By generation ({'held-out' if (r.get('splits') or {}).get('harmless_held_out', True) else 'held-out harmful; the harmless ones are the selection prompts, too few to hold any out'}): harmful refused {d['generation']['harmful_refusal']:.0%} -> {d['generation']['harmful_refusal_ablated']:.0%} with the direction ablated; "
        f"harmless refused {d['generation']['harmless_refusal']:.0%} -> {d['generation']['harmless_refusal_added']:.0%} with it added "
        f"(at the prompt's positions only: {d['generation']['harmless_refusal_added_prompt']:.0%}).",
        "",
        *_filter_lines(d.get("filtering")),
        "![scores](refusal_score_by_layer_position.png)",
        "",
        "## Features",
        f"Search edit: {r.get('edit', 'ablate')}"
        + ("" if r.get("skip_bos", True) else " (the BOS token edited too)") + ".",
        "",
        f"Top candidates by {r['candidate_method']}: " + ", ".join(f"{feature_text(c[:-1] if len(c) > 2 else c[0])} ({c[-1]:.2f})"
                                                            for c in r["candidates"][:10]),
        "",
        *top_feature_table(r),
        *_layer_counts(r),
        "",
        "Candidate pool (top n ablated together: flip rate of the search prompts): "
        + ", ".join(f"{c['n']}: {c['full_flip_rate']:.0%}" for c in r.get("candidate_pool", [])) + ".",
        "",
        f"**Minimal set** ({len(r['minimal_set'])} features): [{', '.join(map(feature_text, r['minimal_set']))}] — flips "
        f"{r['minimal_set_search']['flip_rate']:.0%} of the search prompts, {r['minimal_set_heldout_flip_rate']:.0%} of held-out ones (refusal score < 0).",
        "",
        f"| held-out harmful prompts (generation of {a.get('max_new_tokens', 'n/a')} tokens + substring judge) | not refused (ASR) | complied | degenerate |",
        "| --- | --- | --- | --- |",
        *[f"| {label} | {a[k]:.0%} | {_pct(a.get('complied', {}).get(k))} | {_pct(a.get('degenerate', {}).get(k))} |"
          for label, k in (("unsteered", "baseline"), (f"minimal set {ed}", "minimal_set"),
                           (f"minimal set + FM-added features {ed}", "with_interactions"),
                           (f"top {len(r.get('top_k') or [])} by attribution {ed}", "top_k"),
                           (f"each prompt's own top {len(r.get('top_k') or [])} {ed} (Yeo et al.)", "top_k_per_prompt"))
          if k in a],
        "",
        "Degenerate: empty or repetitive replies (no refusal phrase, but no answer either); ASR = complied + degenerate.",
        "",
        *( [f"Capability ({r['capability']['task']}, n={r['capability']['n']}): {r['capability']['unsteered']:.0%} unsteered, "
            f"{r['capability']['minimal_set_ablated']:.0%} with the minimal set {ed}.", ""] if r.get("capability") else [] ),
        "![asr](asr_vs_features.png)",
        "",
        *per_prompt_lines(r.get("per_prompt_sets") or []),
        *interaction_lines(r["interactions_detail"]),
    ]
    if r.get("amplify"):
        am = r["amplify"]
        lines += ["", "## Refusal feature(s) to amplify (O'Brien et al.)", ""]
        if am["features"]:
            lines.append("Clamped high these make the model refuse (amplify_spec.json, e.g. `saesteer eval --steer "
                         "OUT/amplify_spec.json`): " + ", ".join(f"{feature_text(f)} (cosine {c:.2f} to the direction at its "
                         f"hook point, clamp value {v:.2f})" for f, c, v in zip(am["features"], am["cosines"], am["values"])) + ".")
        else:
            lines.append("None: no feature of the minimal set points along the refusal direction.")
    if r.get("trigger"):
        lines += ["", *trigger_lines(r["trigger"])]
    if r.get("dormant_downstream") is not None:
        lines += ["", "## Dormant features", "", *downstream_lines(r["dormant_downstream"])]
    lines += ["", "## Examples (held-out harmful prompts)", ""]
    for e in r["examples"][:4]:
        lines += [f"- **{prompt_label(e['prompt'])}**", f"  - unsteered: {e['unsteered']!r}", f"  - minimal set {ed}: {e['minimal_set_ablated']!r}"]
    lines += ["", f"Total time {r['timings_s']['total']:.0f} s."]
    return "\n".join(lines) + "\n"
