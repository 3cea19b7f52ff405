"""discover's outputs: ``results.json`` (:meth:`~.results.DiscoverResults.to_dict`), the direction,
the specs, and the Markdown report and plots, rendered from the typed results
(:class:`~.results.DiscoverResults` and its stages), read by attribute.

The report is written when discover finishes; it is not re-rendered from a ``results.json`` on disk
(that file is the public record: ``eval``'s held-out check reads its ``split_prompts``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..interactions import CONFIRM_MIN, Interactions
from ..report import cell, markdown_table, write_json
from ..turns import prompt_label
from .results import DiscoverResult, DiscoverResults, result_warnings
from .trigger import TriggerStage
from .verification import PromptSet

__all__ = ["write_discover_outputs", "discover_report", "discover_plots", "per_prompt_lines", "interaction_lines",
           "trigger_lines", "downstream_lines", "top_feature_table", "edit_verb", "summary_lines", "REPORT_STAGES"]

#: The stages the report and plots need: written once discover has verified its selection.
REPORT_STAGES = ("direction", "candidates", "search", "interactions", "verification")


def write_discover_outputs(res: DiscoverResult, out: str | Path, sae_ref: str | None = None) -> list[Path]:
    """Write a :class:`~.results.DiscoverResult` to the directory ``out``: ``results.json``, and
    once discover has a direction and a selection, ``direction.safetensors`` (the direction, and the
    affine ablation's reference when there is one), ``spec.json`` (the selected features, with
    ``sae_ref`` as its SAE), ``amplify_spec.json`` (the refusal feature(s) to clamp high, O'Brien et
    al.), the two plots and ``report.md``. Returns the paths written, each readable as a normal file
    (mode 0666 less the umask)."""
    from safetensors.torch import save_file

    typed = res.typed
    if typed is None:
        raise ValueError("res: expected the DiscoverResult that discover() returns, with its typed results (res.typed)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = [write_json(out / "results.json", res.results)]
    if res.direction is not None:
        d = typed.direction.direction
        tensors = {"direction": res.direction.contiguous()}
        if res.reference is not None:
            tensors["reference"] = res.reference.contiguous()
        save_file(tensors, str(out / "direction.safetensors"),
                  metadata={"layer": str(d.layer), "position": str(d.position), "ablation": d.ablation})
        written.append(out / "direction.safetensors")
    for name, spec in (("spec.json", res.spec), ("amplify_spec.json", res.amplify_spec)):
        if spec is not None:
            spec.sae = sae_ref
            spec.save(out / name)
            written.append(out / name)
    if typed.verification is not None:
        discover_plots(typed, out)
        written += [out / "refusal_score_by_layer_position.png", out / "asr_vs_features.png"]
        (out / "report.md").write_text(discover_report(typed))
        written.append(out / "report.md")
    # safetensors writes through a private temporary file (mode 0600): give it the mode open() would.
    if res.direction is not None:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(out / "direction.safetensors", 0o666 & ~umask)
    return written


def _check_stages(res: DiscoverResults, what: str) -> None:
    missing = [s for s in REPORT_STAGES if getattr(res, s) is None]
    if missing:
        raise ValueError(f"{what}: the results lack the stage(s) {', '.join(missing)} (stages done: "
                         f"{', '.join(res.stages_done) or 'none'}); the report needs every stage through verification")


def _nan(v) -> float:
    # A score not measured (None) is a gap in a plot.
    return float("nan") if v is None else float(v)


def discover_plots(res: DiscoverResults, out: str | Path) -> None:
    """discover's plots: the direction's scores by layer and position
    (``refusal_score_by_layer_position.png``), and the held-out flip rate against the number of
    edited candidates (``asr_vs_features.png``)."""
    _check_stages(res, "discover_plots")
    import matplotlib
    import torch

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    d = res.direction.direction
    tab = [t for t in d.table if t["ablation"] == d.ablation]
    if tab:
        layers = sorted({t["layer"] for t in tab})
        poss = sorted({t["position"] for t in tab})
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
        titles = (f"harmful refusal score, direction ablated ({d.ablation})", "harmless refusal score, direction added",
                  f"harmless KL, direction ablated ({d.ablation})")
        for ax, key, title in zip(axes, ("bypass", "induce", "kl"), titles):
            M = torch.full((len(poss), len(layers)), float("nan"))
            for t in tab:
                M[poss.index(t["position"]), layers.index(t["layer"])] = _nan(t[key])
            im = ax.imshow(M.numpy(), aspect="auto", cmap="viridis")
            ax.set_xticks(range(len(layers)), layers)
            ax.set_yticks(range(len(poss)), poss)
            ax.set_xlabel("layer")
            ax.set_ylabel("position")
            ax.set_title(title, fontsize=9)
            fig.colorbar(im, ax=ax)
        if d.layer in layers and d.position in poss:
            axes[0].scatter([layers.index(d.layer)], [poss.index(d.position)], marker="*", color="red", s=120)
        fig.tight_layout()
        fig.savefig(out / "refusal_score_by_layer_position.png", dpi=110)
        plt.close(fig)
    vs = res.verification
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.plot([p["n"] for p in vs.curve], [p["flip_rate"] for p in vs.curve], "o-", label="top-n candidates ablated")
    ms = len(res.search.pooled.features)
    ax.scatter([ms], [vs.minimal_set_heldout_flip_rate], color="red", zorder=3, label=f"minimal set ({ms})")
    ax.set_xlabel("number of ablated features")
    ax.set_ylabel("held-out harmful prompts flipped\n(refusal score < 0)")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "asr_vs_features.png", dpi=110)
    plt.close(fig)


def _num(v, fmt: str) -> str:
    """``v`` formatted, or ``-`` when it was not measured (None)."""
    return "-" if v is None else format(v, fmt)


def _short_features(features: Sequence[int], text: Callable[[int], str], n: int = 24) -> str:
    """A feature list for a table cell, its size first: ``"3: [1, 2, 3]"``; past ``n`` features the
    first ``n`` and ``...``."""
    shown = ", ".join(map(text, features[:n])) + (", ..." if len(features) > n else "")
    return f"{len(features)}: [{shown}]"


def per_prompt_lines(rows: Sequence[PromptSet], text: Callable[[int], str] = str) -> list[str]:
    """discover's per-prompt table: the set the score search kept and the set generation confirmed,
    each with its size (``text`` writes a feature). When no reply complied, no set was confirmed,
    and the cell says so and how many features were ablated in the last try (the whole search pool)
    instead of listing them."""
    if not rows:
        return []
    out = ["Per-prompt minimal sets (each searched on its own prompt by refusal score, then checked by generation "
           "and extended until the reply complies). Sets are shown as `size: [features]`.", "",
           "| prompt | minimal set by score | set confirmed by generation | complied |", "| --- | --- | --- | --- |"]
    for pp in rows:
        ok = pp.complied_by_generation
        confirmed = (_short_features(pp.features, text) if ok else
                     f"none: still refused with all {len(pp.features)} features tried ablated")
        out.append(f"| {cell(prompt_label(pp.prompt, 60))} | {_short_features(pp.score_minimal, text)} | {confirmed} | {ok} |")
    return out + [""]


def interaction_lines(it: Interactions, text: Callable[[int], str] = str) -> list[str]:
    """discover's interaction section: the FM's held-out fit quality (its in-sample R^2 only with
    the warning that it means nothing when the FM has as many parameters as masks), the verified
    pairs, and a plain statement when none of them was confirmed."""
    out = ["## Interactions (factorization machine, verified by real ablations)"]
    n, n_params = it.n_samples, it.n_params
    fit = (f"held-out R^2 = {cell(it.r2_heldout, 2)} on {it.n_heldout} masks not used for fitting"
           if it.n_heldout else "no held-out R^2 (too few masks)")
    if it.in_sample_meaningless:
        in_sample = f"in-sample R^2 = {it.r2:.2f} (in-sample, not meaningful: {n_params} parameters >= {n} masks)"
    else:
        in_sample = f"in-sample R^2 = {it.r2:.2f} ({n_params} parameters)"
    added = "[" + ", ".join(map(text, it.added)) + "]"
    out += [f"FM fitted on {n} random ablation masks: {fit}; {in_sample}. Features added: {added}.", ""]
    if not it.verified:
        return out + ["No pair was verified."]
    if not it.n_confirmed:
        out += [f"**No interaction was confirmed**: for each pair the FM ranked strongest, the real joint ablation's "
                f"effect differs from the sum of the single effects by less than {CONFIRM_MIN} (or in the other direction "
                "than the FM's); the FM weights below are not findings.", ""]
    out += ["| i | j | FM <v_i,v_j> | e_i | e_j | e_ij | e_ij - e_i - e_j | confirmed |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for v in it.verified:
        out.append(f"| {text(v['i'])} | {text(v['j'])} | {v['fm']:.2f} | {v['e_i']:.2f} | {v['e_j']:.2f} | {v['e_ij']:.2f} | "
                   f"{v['interaction']:.2f} | {cell(v.get('confirmed'), 2)} |")
    return out


def trigger_lines(t: TriggerStage, several: bool = False) -> list[str]:
    """discover's report section on the trigger: the ``when`` in the specs (naming its SAE with
    ``several`` SAEs), and each feature count's rates on the validation prompts that chose it."""
    lines = ["## Trigger for conditional steering (Lee et al.)", ""]
    w = t.spec_when(several)
    if not w:
        return lines + [f"None proposed: {t.skipped or 'no trigger'}."]
    (sel_h, sel_l), (val_h, val_l) = t.n_selection, t.n_validation
    lines += [
        f"The specs carry `when`: features [{', '.join(map(str, w['features']))}]"
        + (f" of `{w['sae']}`" if w.get("sae") else "") + f", their summed activation's {w['reduce']} over the prompt "
        f"> {w['threshold']:.3f} (scope {w['scope']}): the edit applies only to prompts that fire it "
        "(`saesteer eval` runs the spec with and without it).",
        f"Features ranked by Cohen's d on the direction split ({sel_h} refused harmful, {sel_l} answered "
        f"harmless prompts); feature count and threshold chosen on the val split ({val_h} / {val_l}), so "
        "these rates are optimistic:",
        "",
        "| features | threshold | harmful fired (TPR) | harmless fired (FPR) | balanced accuracy |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [f"| {v['n_features']}{' (chosen)' if v['features'] == w['features'] else ''} | {v['threshold']:.3f} | "
              f"{v['tpr']:.0%} | {v['fpr']:.0%} | {v['balanced_accuracy']:.2f} |" for v in t.validation]
    return lines


def downstream_lines(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """discover's downstream dormancy with several SAEs: per (edited SAE, later SAE), the later
    SAE's features that wake when only the earlier SAE's part of the minimal set is edited, on the
    same tokens; with the evidence that the edit reaches the later SAE (its codes' change, the
    features it silences), so that "none found" is a measured absence. ``rows``: the dormant
    stage's (:func:`~saesteer.refusal.dormant.downstream_dormant`'s, per pair)."""
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


def top_feature_table(res: DiscoverResults, n: int = 20) -> list[str]:
    """The top ``n`` candidates as a Markdown table (rank, layer, feature, score), as Yeo et al.
    tabulate their top features; with several SAEs each row names its SAE."""
    saes = res.saes
    if not res.candidates.candidates:
        return []
    rows = []
    for k, (g, score) in enumerate(res.candidates.candidates[:n], 1):
        m = saes.member(g)
        name, local = saes.pair(g)
        rows.append({"rank": k, "layer": saes.layers[m], **({"sae": f"`{name}`"} if len(saes) > 1 else {}),
                     "feature": local, "score": score})
    return [markdown_table(rows)]


def _layer_counts(res: DiscoverResults) -> list[str]:
    """With several SAEs: how many of the candidates and of the minimal set each SAE holds."""
    saes = res.saes
    if len(saes) == 1:
        return []
    cands, minimal = saes.split(res.candidates.ids), saes.split(res.search.pooled.features)
    parts = [f"`{name}` (layer {layer}) {len(c)} candidates, {len(m)} in the minimal set"
             for name, layer, c, m in zip(saes.names, saes.layers, cands, minimal)]
    return ["", "Per SAE: " + "; ".join(parts) + "."]


def edit_verb(edit: str) -> str:
    """``"ablate"`` -> ``"ablated"``, ``"scale:-3"`` -> ``"scaled by -3"``, ``"clamp:5"`` -> ``"clamped to 5"``."""
    mode, _, value = edit.partition(":")
    return {"ablate": "ablated", "scale": f"scaled by {value}", "clamp": f"clamped to {value}"}.get(mode, edit)


def _template_text(kind: str | None) -> str:
    if kind == "fallback":
        return "**none in the tokenizer: the fallback `User: ...\\nAssistant:` was used** (a chat model prompted outside its template refuses differently)"
    return "the tokenizer's" if kind == "tokenizer" else "n/a"


def _warning_lines(valid: bool, warnings: Sequence[str]) -> list[str]:
    """Markdown lines that open a report: whether its results are meaningful, and every warning."""
    if valid and not warnings:
        return []
    head = "**These results are not meaningful.**" if not valid else "**Warnings.**"
    return [head, "", *[f"- {w}" for w in warnings], ""]


def _pct(v) -> str:
    return "n/a" if v is None else f"{v:.0%}"


def _filter_lines(filtering: Mapping[str, Any] | None) -> list[str]:
    """The prompt filter's counts (Arditi et al.: refused harmful, answered harmless prompts kept)."""
    if not filtering:
        return []
    parts = [f"{name} {c['kept']}/{c['n']}" + (" (none passed: all used)" if c.get("unfiltered") else "")
             for name, c in filtering.items()]
    return ["Prompts kept by the filter (harmful refused, harmless answered, by refusal score): " + ", ".join(parts) + ".", ""]


def _sae_line(res: DiscoverResults) -> str:
    """The report's SAE line: one SAE, or each of several with its name and hook point."""
    saes = res.saes
    if len(saes) > 1:
        return "SAEs: " + "; ".join(f"`{n}` at `{s.hook_name}` ({s.architecture}, d_sae={s.d_sae})" for n, s in zip(saes.names, saes.saes))
    s = saes.saes[0]
    return f"SAE: `{s.hook_name}` ({s.architecture}, d_sae={s.d_sae})"


def _direction_lines(res: DiscoverResults) -> list[str]:
    d, g = res.direction.direction, res.verification.direction_generation
    sc = d.scores
    held = ("held-out" if res.splits.harmless_held_out else
            "held-out harmful; the harmless ones are the selection prompts, too few to hold any out")
    return [
        "## Refusal direction (Arditi et al.)",
        f"Selected layer {d.layer}, position {d.position} (passed filters: {d.passed_filters}; ablation: {d.ablation}"
        + ("" if d.ablation == "directional" else
           " -- no candidate passed with directional ablation, so the projection is set to the harmless mean's"
           " (affine concept editing, Marshall et al. 2024); see direction_table for both") + ").",
        f"Harmful refusal score {_num(sc.get('harmful_refusal_score'), '.2f')} -> {_num(sc.get('bypass'), '.2f')} when ablated; "
        f"harmless {_num(sc.get('harmless_refusal_score'), '.2f')} -> {_num(sc.get('induce'), '.2f')} when added; "
        f"KL {_num(sc.get('kl'), '.3f')}.",
        "",
        f"By generation ({held}): harmful refused {g.harmful_refusal:.0%} -> {g.harmful_refusal_ablated:.0%} with the direction "
        f"ablated; harmless refused {g.harmless_refusal:.0%} -> {g.harmless_refusal_added:.0%} with it added "
        f"(at the prompt's positions only: {g.harmless_refusal_added_prompt:.0%}).",
        "",
        *_filter_lines(res.direction.filtering),
        "![scores](refusal_score_by_layer_position.png)",
        "",
    ]


def _asr_lines(res: DiscoverResults, ed: str) -> list[str]:
    a = res.verification.asr
    k = len(res.candidates.top_k)
    labels = {"baseline": "unsteered", "minimal_set": f"minimal set {ed}",
              "with_interactions": f"minimal set + FM-added features {ed}", "top_k": f"top {k} by attribution {ed}",
              "top_k_per_prompt": f"each prompt's own top {k} {ed} (Yeo et al.)"}
    return [
        f"| held-out harmful prompts (generation of {a.max_new_tokens} tokens + substring judge) | not refused (ASR) | complied | degenerate |",
        "| --- | --- | --- | --- |",
        *[f"| {labels[c]} | {r.asr:.0%} | {_pct(r.complied)} | {_pct(r.degenerate)} |" for c, r in a.conditions.items()],
        "",
        "Degenerate: empty or repetitive replies (no refusal phrase, but no answer either); ASR = complied + degenerate.",
        "",
    ]


def _feature_lines(res: DiscoverResults, ed: str) -> list[str]:
    cfg, cs, ms, vs = res.cfg, res.candidates, res.search.pooled, res.verification
    text, cap = res.feature_text, vs.capability
    return [
        "## Features",
        f"Search edit: {res.edit_text}" + ("" if cfg.skip_bos else " (the BOS token edited too)") + ".",
        "",
        f"Top candidates by {cfg.candidate_method}: " + ", ".join(f"{text(g)} ({s:.2f})" for g, s in cs.candidates[:10]),
        "",
        *top_feature_table(res),
        *_layer_counts(res),
        "",
        "Candidate pool (top n ablated together: flip rate of the search prompts): "
        + ", ".join(f"{c['n']}: {c['full_flip_rate']:.0%}" for c in cs.pool_steps) + ".",
        "",
        f"**Minimal set** ({len(ms.features)} features): [{', '.join(map(text, ms.features))}] — flips "
        f"{ms.flip_rate:.0%} of the search prompts, {vs.minimal_set_heldout_flip_rate:.0%} of held-out ones (refusal score < 0).",
        "",
        *_asr_lines(res, ed),
        *([f"Capability ({cap.task}, n={cap.n}): {cap.unsteered:.0%} unsteered, "
           f"{cap.minimal_set_ablated:.0%} with the minimal set {ed}.", ""] if cap is not None else []),
        "![asr](asr_vs_features.png)",
        "",
        *per_prompt_lines(vs.per_prompt, text),
        *interaction_lines(res.interactions, text),
    ]


def _amplify_lines(res: DiscoverResults) -> list[str]:
    am = res.amplify
    lines = ["", "## Refusal feature(s) to amplify (O'Brien et al.)", ""]
    if not am.features:
        return lines + ["None: no feature of the minimal set points along the refusal direction."]
    return lines + ["Clamped high these make the model refuse (amplify_spec.json, e.g. `saesteer eval --steer "
                    "OUT/amplify_spec.json`): " + ", ".join(f"{res.feature_text(f)} (cosine {c:.2f} to the direction at its "
                    f"hook point, clamp value {v:.2f})" for f, c, v in zip(am.features, am.cosines, am.values)) + "."]


def discover_report(res: DiscoverResults) -> str:
    """discover's ``report.md`` (Markdown) from its typed results (every stage through verification)."""
    _check_stages(res, "discover_report")
    ed = edit_verb(res.edit_text)
    vs = res.verification
    lines = [
        "# saesteer discover",
        "",
        *_warning_lines(*result_warnings(res)),
        _sae_line(res) + f"; refusal tokens {res.refusal_tokens_text}.",
        f"Chat template: {_template_text(res.chat_template)}.",
        "",
        *_direction_lines(res),
        *_feature_lines(res, ed),
    ]
    if res.amplify is not None:
        lines += _amplify_lines(res)
    if res.trigger is not None:
        lines += ["", *trigger_lines(res.trigger, len(res.saes) > 1)]
    if res.dormant_downstream is not None:
        lines += ["", "## Dormant features", "", *downstream_lines(res.dormant_downstream)]
    lines += ["", "## Examples (held-out harmful prompts)", ""]
    for p, before, after in list(zip(res.splits.held, vs.base_replies, vs.minimal_set_replies))[:4]:
        lines += [f"- **{prompt_label(p)}**", f"  - unsteered: {before!r}", f"  - minimal set {ed}: {after!r}"]
    lines += ["", f"Total time {res.timings['total']:.0f} s."]
    return "\n".join(lines) + "\n"


def summary_lines(res: DiscoverResults) -> list[str]:
    """What ``saesteer discover`` prints when it finishes: the warnings, the unsteered refusal, the
    direction, the selected features, the trigger, the ASR of each condition and the features to
    amplify (every stage through verification)."""
    _check_stages(res, "summary_lines")
    valid, warnings = result_warnings(res)
    text, rc, d = res.feature_text, res.refusal, res.direction.direction
    ms, cs, a = res.search.pooled.features, res.candidates, res.verification.asr
    out = [] if valid else ["WARNING: these results are not meaningful:"]
    out += [f"WARNING: {w}" for w in warnings]
    out += [f"unsteered: {rc.n_refused}/{rc.n} held-out harmful prompts refused",
            f"direction: layer {d.layer} position {d.position}",
            f"minimal set ({len(ms)}): [{', '.join(map(text, ms))}]"]
    if cs.top_k:
        out.append(f"top {len(cs.top_k)} by attribution (spec.json): [{', '.join(text(g) for g, _ in cs.top_k)}]")
    tw = res.trigger.when if res.trigger is not None else None
    if tw:
        ch = res.trigger.chosen
        out.append(f"trigger (spec's when): features [{', '.join(map(str, tw['features']))}], {tw['reduce']} over the prompt > "
                   f"{tw['threshold']:.3f}; on the val split {ch['tpr']:.0%} of harmful and {ch['fpr']:.0%} of harmless prompts fire")
    c = a.conditions
    topk = f"; top k {c['top_k'].asr:.0%}, each prompt's own top k {c['top_k_per_prompt'].asr:.0%}" if "top_k" in c else ""
    out.append(f"ASR baseline {c['baseline'].asr:.0%} -> minimal set {c['minimal_set'].asr:.0%} -> with interactions "
               f"{c['with_interactions'].asr:.0%}{topk} ({a.max_new_tokens} new tokens, substring judge)")
    out.append(f"  of which degenerate replies: {c['baseline'].degenerate:.0%} -> {c['minimal_set'].degenerate:.0%} -> "
               f"{c['with_interactions'].degenerate:.0%}")
    if res.amplify is not None and res.amplify.features:
        am = res.amplify
        out.append(f"refusal feature(s) to amplify: [{', '.join(map(text, am.features))}] "
                   f"(clamp values {', '.join(f'{v:.2f}' for v in am.values)}; amplify_spec.json)")
    for x in res.dormant_downstream or []:
        out.append(f"dormant downstream: {len(x['dormant'])} features of {x['read']} wake with {x['edited']}'s part edited "
                   f"(its codes change {x['mean_abs_change']:.0%}, {x['n_silenced']} features silenced)")
    return out
