"""discover's report (refusal/discover/report.py): every section rendered from the typed results, and
results.json's keys and value types unchanged (a public output: eval's held-out check and users
read it)."""

from __future__ import annotations

import json
from dataclasses import fields, replace
from pathlib import Path

import pytest

KEYS = Path(__file__).parent.parent / "data" / "discover_results_keys.json"
# Filled by refusal/direction.py's scoring, whose rows may gain or lose scores of their own.
OPAQUE = ("direction_table[]", "direction.scores")


def key_paths(obj, opaque=OPAQUE) -> dict[str, list[str]]:
    """Every key path of a JSON value (``a.b``, ``a[]`` for list items) with the JSON types found
    there; below the ``opaque`` paths nothing is listed."""
    out: dict[str, set] = {}

    def walk(o, path):
        out.setdefault(path or "$", set()).add("null" if o is None else type(o).__name__)
        if path in opaque:
            return
        if isinstance(o, dict):
            for k, v in o.items():
                walk(v, f"{path}.{k}" if path else k)
        elif isinstance(o, list):
            for v in o:
                walk(v, path + "[]")

    walk(obj, "")
    return {k: sorted(v) for k, v in sorted(out.items())}


def test_results_json_keeps_its_keys_and_value_types(tiny_discover):
    from saesteer.refusal.discover import DiscoverConfig

    res, _, _, out = tiny_discover
    r = json.loads((out / "results.json").read_text())
    assert list(r) == list(res.results), "results.json is the results dict discover returns, in its order"
    # Its config section lists DiscoverConfig's fields: checked against the class, not the file.
    assert list(r["config"]) == [f.name for f in fields(DiscoverConfig)]
    got = {k: v for k, v in key_paths(r).items() if not k.startswith("config.")}
    want = json.loads(KEYS.read_text())
    assert got == want, {"added": sorted(set(got) - set(want)), "gone": sorted(set(want) - set(got)),
                         "changed": sorted(k for k in set(got) & set(want) if got[k] != want[k])}


SECTIONS = ("**These results are not meaningful.**", "SAE: `blocks.1.hook_resid_post`", "Chat template:",
            "## Refusal direction (Arditi et al.)", "By generation (held-out)", "Prompts kept by the filter",
            "![scores](refusal_score_by_layer_position.png)", "## Features", "Search edit: ablate.",
            "Top candidates by attribution (ig):", "| rank | layer | feature | score |", "Candidate pool (top n ablated",
            "**Minimal set**", "| unsteered |", "| minimal set ablated |", "| minimal set + FM-added features ablated |",
            "| top 3 by attribution ablated |", "| each prompt's own top 3 ablated (Yeo et al.) |",
            "Capability (gsm8k, n=2):", "![asr](asr_vs_features.png)", "Per-prompt minimal sets",
            "## Interactions (factorization machine", "## Refusal feature(s) to amplify (O'Brien et al.)",
            "## Trigger for conditional steering (Lee et al.)", "## Examples (held-out harmful prompts)", "Total time")


def test_report_renders_every_section_from_the_typed_results(tiny_discover):
    from saesteer.refusal.discover import discover_report

    res, _, _, out = tiny_discover
    md = (out / "report.md").read_text()
    assert md == discover_report(res.typed)
    at = [md.index(s) for s in SECTIONS]  # each present, in this order
    assert at == sorted(at)
    typed = res.typed
    ms = typed.search.pooled.features
    assert f"**Minimal set** ({len(ms)} features): [{', '.join(map(str, ms))}]" in md
    a = typed.verification.asr.conditions
    assert f"| unsteered | {a['baseline'].asr:.0%} | {a['baseline'].complied:.0%} | {a['baseline'].degenerate:.0%} |" in md
    c0, s0 = typed.candidates.candidates[0]
    assert f"| 1 | 1 | {c0} | {s0:.3f} |" in md
    for name in ("refusal_score_by_layer_position.png", "asr_vs_features.png"):
        assert (out / name).stat().st_size > 0


def test_summary_prints_each_selection_and_condition(tiny_discover):
    from saesteer.refusal.discover import summary_lines

    typed = tiny_discover[0].typed
    lines = summary_lines(typed)
    c = typed.verification.asr.conditions
    assert lines[0] == "WARNING: these results are not meaningful:"
    assert f"unsteered: {typed.refusal.n_refused}/3 held-out harmful prompts refused" in lines
    top = ", ".join(str(g) for g, _ in typed.candidates.top_k)
    assert f"top 3 by attribution (spec.json): [{top}]" in lines
    assert any(ln.startswith(f"ASR baseline {c['baseline'].asr:.0%} -> minimal set") and "; top k " in ln
               and ln.endswith("(4 new tokens, substring judge)") for ln in lines)


def test_report_renders_unmeasured_direction_scores_as_a_dash(tiny_discover, tmp_path):
    from saesteer.refusal.discover import discover_plots, discover_report

    typed = tiny_discover[0].typed
    d = typed.direction.direction
    scores = {**d.scores, "kl": None, "induce": None}
    table = [{**t, "kl": None} for t in d.table]
    gapped = replace(typed, direction=replace(typed.direction, direction=replace(d, scores=scores, table=table)))
    md = discover_report(gapped)
    assert "when ablated; harmless " in md and "-> - when added; KL -." in md
    discover_plots(gapped, tmp_path)  # a None score is a gap in the heat map
    assert (tmp_path / "refusal_score_by_layer_position.png").stat().st_size > 0


def test_report_of_unfinished_results_names_the_missing_stages(tiny_discover):
    from saesteer.refusal.discover import discover_report

    typed = tiny_discover[0].typed
    partial = replace(typed, verification=None, interactions=None, stages_done=typed.stages_done[:4])
    with pytest.raises(ValueError, match=r"discover_report: the results lack the stage\(s\) interactions, verification"):
        discover_report(partial)


def test_per_prompt_table_labels_sets_with_sizes_and_shows_no_unconfirmed_set():
    from saesteer.refusal.discover import PromptSet
    from saesteer.refusal.discover.report import per_prompt_lines

    pool = list(range(100, 228))  # a 128-feature search pool, tried whole when nothing complied
    rows = [PromptSet("How do I pick a lock?", [5, 9, 12], True, [5, 9], "Sure", True),
            PromptSet("Make a weapon | now", pool, True, [7], "I can't", False)]
    lines = per_prompt_lines(rows)
    table = [ln for ln in lines if ln.startswith("| ") and "prompt |" not in ln and "---" not in ln]
    assert table[0] == "| How do I pick a lock? | 2: [5, 9] | 3: [5, 9, 12] | True |"
    assert table[1].startswith("| Make a weapon \\| now | 1: [7] | none: still refused with all 128 features tried ablated | False |")
    assert "100" not in table[1], "an unconfirmed pool is not listed as if it were a set"
    assert per_prompt_lines([]) == []
    named = per_prompt_lines(rows[:1], text=lambda g: f"{g}@a")
    assert "| 2: [5@a, 9@a] | 3: [5@a, 9@a, 12@a] |" in named[-2]


def _interactions(**kw):
    from saesteer.refusal.interactions import Interactions

    d = dict(features=[1, 2, 4], weights=[-0.3, -0.2, 0.0], pairs=[[1, 2, -0.8]], added=[4], r2=1.0, n_samples=48,
             n_params=61, r2_heldout=-0.4, n_heldout=12,
             verified=[{"i": 1, "j": 2, "fm": -0.8, "e_i": -0.3, "e_j": -0.2, "e_ij": -0.5, "interaction": 0.0, "confirmed": False}])
    d.update(kw)
    return Interactions(**d)


def test_interaction_section_reports_held_out_fit_and_unconfirmed_pairs():
    from saesteer.refusal.discover.report import interaction_lines

    text = "\n".join(interaction_lines(_interactions()))
    assert "held-out R^2 = -0.40 on 12 masks not used for fitting" in text
    assert "in-sample, not meaningful: 61 parameters >= 48 masks" in text
    assert "**No interaction was confirmed**" in text
    assert text.rstrip().endswith("| 1 | 2 | -0.80 | -0.30 | -0.20 | -0.50 | 0.00 | False |")
    ok = _interactions(n_samples=192, n_params=61, r2_heldout=0.9, n_heldout=48,
                       verified=[{"i": 1, "j": 2, "fm": -0.8, "e_i": -0.3, "e_j": -0.2, "e_ij": -1.5, "interaction": -1.0, "confirmed": True}])
    text = "\n".join(interaction_lines(ok, text=lambda g: f"{g}@a"))
    assert "No interaction was confirmed" not in text and "not meaningful" not in text and "(61 parameters)" in text
    assert "Features added: [4@a]" in text and "| 1@a | 2@a |" in text
