"""discover's report sections."""

from __future__ import annotations


def test_per_prompt_table_labels_sets_with_sizes_and_shows_no_unconfirmed_set():
    from saesteer.refusal.report import per_prompt_lines

    pool = list(range(100, 228))  # a 128-feature search pool, tried whole when nothing complied
    rows = [{"prompt": "How do I pick a lock?", "score_minimal": [5, 9], "features": [5, 9, 12], "complied_by_generation": True},
            {"prompt": "Make a weapon | now", "score_minimal": [7], "features": pool, "complied_by_generation": False}]
    lines = per_prompt_lines(rows)
    table = [ln for ln in lines if ln.startswith("| ") and "prompt |" not in ln and "---" not in ln]
    assert table[0] == "| How do I pick a lock? | 2: [5, 9] | 3: [5, 9, 12] | True |"
    assert table[1].startswith("| Make a weapon \\| now | 1: [7] | none: still refused with all 128 features tried ablated | False |")
    assert "100" not in table[1], "an unconfirmed pool is not listed as if it were a set"
    assert per_prompt_lines([]) == []


def _detail(**kw):
    d = {"n_samples": 48, "n_params": 61, "r2": 1.0, "r2_heldout": -0.4, "n_heldout": 12, "added": [4],
         "verified": [{"i": 1, "j": 2, "fm": -0.8, "e_i": -0.3, "e_j": -0.2, "e_ij": -0.5, "interaction": 0.0, "confirmed": False}]}
    d.update(kw)
    return d


def test_interaction_section_reports_held_out_fit_and_unconfirmed_pairs():
    from saesteer.refusal.report import interaction_lines

    text = "\n".join(interaction_lines(_detail()))
    assert "held-out R^2 = -0.40 on 12 masks not used for fitting" in text
    assert "in-sample, not meaningful: 61 parameters >= 48 masks" in text
    assert "**No interaction was confirmed**" in text
    assert text.rstrip().endswith("| 1 | 2 | -0.80 | -0.30 | -0.20 | -0.50 | 0.00 | False |")
    ok = _detail(n_samples=192, n_params=61, r2_heldout=0.9, n_heldout=48,
                 verified=[{"i": 1, "j": 2, "fm": -0.8, "e_i": -0.3, "e_j": -0.2, "e_ij": -1.5, "interaction": -1.0, "confirmed": True}])
    text = "\n".join(interaction_lines(ok))
    assert "No interaction was confirmed" not in text and "not meaningful" not in text and "(61 parameters)" in text

