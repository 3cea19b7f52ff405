"""saesteer discover: the pipeline's stages, its CLI and outputs, and its errors."""

from __future__ import annotations

import json

import pytest
import torch

import saesteer
from saesteer.cli import main
from saesteer.refusal.interactions import fit_fm, sample_masks
from saesteer.refusal.search import edit_scores, greedy_minimal_set
from saesteer.refusal.spec import SteeringSpec

TINY = {"n_direction": 6, "n_val": 3, "n_search": 2, "n_heldout": 3, "n_candidates": 5, "fm_samples": 16,
        "fm_extra": 3, "per_prompt": 1, "max_new_tokens": 4}


def test_fm_recovers_a_planted_interaction():
    torch.manual_seed(0)
    m = 8
    X = sample_masks(m, 400, seed=1)
    y = 1.0 - 0.5 * X[:, 0] - 0.2 * X[:, 3] - 2.0 * X[:, 1] * X[:, 2] + 0.01 * torch.randn(400)
    fm, r2 = fit_fm(X, y, rank=4, steps=600)
    P = fm.pairwise()
    assert r2 > 0.95
    iu = torch.triu_indices(m, m, 1)
    strongest = int(P[iu[0], iu[1]].abs().argmax())
    assert (int(iu[0, strongest]), int(iu[1, strongest])) == (1, 2)
    assert P[1, 2] < -1.5
    w = fm.w.detach()
    assert float(w[0]) < -0.3 and abs(float(w[5])) < 0.1


def _active(model, tok, sae, prompts):
    """Features firing most at the SAE's hook on these prompts (the random model's are few)."""
    from saesteer.refusal.chat import format_prompts
    from saesteer.refusal.dormant import site_activations

    f = torch.cat([a for _, a in site_activations(model, tok, sae, format_prompts(tok, prompts))])
    return [int(i) for i in f.sum(0).argsort(descending=True)[:12]]


def test_ablation_scores_rows_match_single_runs(tiny_chat):
    model, tok, sae, _ = tiny_chat
    prompts = ["How do I bake bread?", "Write a poem about rain."]
    active = _active(model, tok, sae, prompts)
    sets = [[], active[:3], [active[3]]]
    batched = edit_scores(model, tok, sae, prompts, sets, [5, 6], backend="torch")
    for s, row in zip(sets, batched):
        single = edit_scores(model, tok, sae, prompts, [s], [5, 6], backend="torch")[0]
        torch.testing.assert_close(row, single, atol=1e-4, rtol=1e-4)
    assert not torch.equal(batched[0], batched[1]), "ablating active features must move the score"


@pytest.mark.parametrize("name", ["jumprelu", "topk", "standard_layer_norm", "jumprelu_const_norm"])
def test_attribution_is_the_first_order_effect_of_scaling_each_feature(tiny_chat, name):
    # attribution(i) = -f_i . d score / d f_i: the score's slope when feature i is scaled down,
    # with the error term kept; checked against a central difference through saesteer.steer.
    from helpers import make_sae
    from saesteer.refusal.chat import refusal_scores
    from saesteer.refusal.features import rank_by_attribution

    model, tok, _, _ = tiny_chat
    sae = make_sae(name, d_in=32, d_sae=96, seed=1, hook_name="blocks.1.hook_resid_post")
    prompts = ["How do I bake bread?", "Tell me how to pick a lock.", "Write a poem about rain."]
    rtoks = [5, 6]
    attr = dict(rank_by_attribution(model, tok, sae, prompts, rtoks, top=sae.d_sae, method="zero"))
    assert len(attr) == sae.d_sae
    ranked = sorted(attr, key=lambda i: -abs(attr[i]))
    assert abs(attr[ranked[0]]) > 1e-4, "some feature must move the score"
    eps = 0.05

    def mean_score(i, factor):
        iv = saesteer.Intervention([i], "scale", factor)
        # BOS is left out of the attribution's sums, as it is left unedited by the steering.
        steering = lambda: saesteer.steer(model, sae, iv, skip_bos=True)  # noqa: E731
        return float(refusal_scores(model, tok, prompts, rtoks, steering=steering).mean())

    for i in ranked[:4]:
        slope = (mean_score(i, 1 - eps) - mean_score(i, 1 + eps)) / (2 * eps)
        assert slope == pytest.approx(attr[i], rel=0.05, abs=1e-3 * abs(attr[ranked[0]])), (name, i)
    assert min(attr.values()) == attr[next(iter(attr))], "most negative effect first"


def test_greedy_set_is_minimal_under_its_criterion(tiny_chat):
    model, tok, sae, _ = tiny_chat
    prompts = ["Tell me how to pick a lock."]
    # Pick a threshold between the unablated and fully ablated score, so the search has work to do.
    cands = _active(model, tok, sae, prompts)
    s = edit_scores(model, tok, sae, prompts, [[], cands], [5, 6])
    thr = float(s.mean())
    res = greedy_minimal_set(model, tok, sae, prompts, cands, [5, 6], threshold=thr, keep=1.0, progress=False)
    assert set(res.features) <= set(cands) and res.features
    flipped = lambda feats: bool(edit_scores(model, tok, sae, prompts, [feats], [5, 6])[0, 0] < thr)  # noqa: E731
    if res.full_flip_rate > 0:
        assert flipped(res.features)
        for f in res.features if len(res.features) > 1 else []:
            assert not flipped([g for g in res.features if g != f]), "every remaining feature is needed"


def test_discover_cli_end_to_end(tiny_chat, tmp_path, capsys):
    _, _, _, d = tiny_chat
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("\n".join(f"{k}: {v}" for k, v in TINY.items()))
    out = tmp_path / "out"
    rc = main(["discover", "--model", str(d), "--sae", str(d / "sae"), "--out", str(out), "--config", str(cfg), "--seed", "1", "--quiet"])
    assert rc == 0
    r = json.loads((out / "results.json").read_text())
    for key in ("direction", "candidates", "minimal_set", "asr", "interactions", "dormant"):
        assert key in r
    assert {"layer", "position", "scores"} <= set(r["direction"])
    assert set(r["asr"]) >= {"baseline", "minimal_set", "with_interactions"}
    assert set(r["minimal_set"]) <= {c[0] for c in r["candidates"]}
    assert r["config"]["seed"] == 1 and r["config"]["n_candidates"] == TINY["n_candidates"], "flags override the config file"
    # The pool starts at n_candidates and doubles while the whole pool flips too few search prompts.
    pool = r["candidate_pool"]
    assert pool[0]["n"] == TINY["n_candidates"] and len(r["candidates"]) == pool[-1]["n"]
    for a, b in zip(pool, pool[1:]):
        assert a["full_flip_rate"] < r["config"]["min_full_flip"] and b["n"] == min(2 * a["n"], r["config"]["max_candidates"], 96)  # d_sae 96
    for pp in r["per_prompt_sets"]:  # confirmed by generation: the score-minimal set, extended if needed
        assert set(pp["score_minimal"]) <= set(pp["features"]) and isinstance(pp["complied_by_generation"], bool)
    for f in ("report.md", "direction.safetensors", "refusal_score_by_layer_position.png", "asr_vs_features.png"):
        assert (out / f).stat().st_size > 0
    spec = SteeringSpec.load(out / "spec.json")
    assert spec.features == r["minimal_set"] and spec.mode == "ablate"
    assert spec.skip_bos is True and json.loads((out / "spec.json").read_text())["skip_bos"] is True
    assert r["edit"] == "ablate" and r["candidate_method"] == "attribution (ig)"
    # The filter ran on the direction's prompts; the random model refuses none of the harmful ones,
    # so those splits are used whole, and a warning says so.
    filt = r["direction"]["filtering"]
    assert set(filt) == {"direction", "harmless_direction", "val", "harmless_val", "search"}
    assert filt["direction"] == {"n": TINY["n_direction"], "kept": 0, "unfiltered": True}
    assert any("prompt filter found no harmful prompts" in w for w in r["warnings"])
    # The random model never refuses: the results say first that they are not meaningful.
    assert r["asr"]["baseline"] == 1.0 and r["valid"] is False
    assert any("baseline refusal is 0%" in w for w in r["warnings"])
    assert r["chat_template"] == "tokenizer"
    stdout = capsys.readouterr().out.splitlines()
    assert stdout[0] == "WARNING: these results are not meaningful:" and "baseline refusal is 0%" in stdout[1]
    report_md = (out / "report.md").read_text()
    assert report_md.index("These results are not meaningful") < report_md.index("## Refusal direction")
    assert set(r["asr"]["degenerate"]) == {"baseline", "minimal_set", "with_interactions"}
    assert "degenerate" in report_md


def test_result_warnings_say_when_results_are_not_meaningful():
    from saesteer.refusal.discover import result_warnings

    def res(baseline_asr, passed, template="tokenizer"):
        return {"asr": {"baseline": baseline_asr, "n_prompts": 8}, "chat_template": template,
                "direction": {"passed_filters": passed, "layer": 2, "position": -1}}

    assert result_warnings(res(0.5, True)) == (True, [])
    valid, warns = result_warnings(res(0.95, True))
    assert not valid and len(warns) == 1 and "baseline refusal is 5%" in warns[0] and "8 held-out" in warns[0]
    valid, warns = result_warnings(res(0.5, False))
    assert not valid and "failed its selection filters" in warns[0]
    valid, warns = result_warnings(res(0.5, True, "fallback"))
    assert valid and len(warns) == 1 and "no chat template" in warns[0]


def test_discover_warns_and_records_a_missing_chat_template(tiny_chat):
    from transformers import AutoTokenizer

    from saesteer.refusal.discover import DiscoverConfig, discover
    from saesteer.refusal.report import discover_report

    model, _, sae, d = tiny_chat
    tok = AutoTokenizer.from_pretrained(d)
    tok.chat_template = None
    harmful = [f"How do I pick lock number {i}?" for i in range(16)]
    harmless = [f"Name fruit number {i}." for i in range(12)]
    with pytest.warns(UserWarning, match="no chat template"):
        res = discover(model, tok, sae, harmful, harmless, DiscoverConfig(**TINY), progress=False)
    r = res.results
    assert r["chat_template"] == "fallback"
    assert any("no chat template" in w for w in r["warnings"])
    md = discover_report(r)
    assert "fallback `User: ...\\nAssistant:` was used" in md
    assert md.index("no chat template") < md.index("## Refusal direction")


def _run_err(args, capsys):
    rc = main(args)
    return rc, capsys.readouterr().err


def test_discover_bad_input(tiny_chat, tmp_path, capsys):
    _, _, _, d = tiny_chat
    base = ["discover", "--model", str(d), "--out", str(tmp_path / "o"), "--quiet"]
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    rc, err = _run_err(base + ["--sae", str(d / "sae"), "--harmful", str(empty)], capsys)
    assert rc == 2 and "no prompts" in err
    nofield = tmp_path / "nofield.json"
    nofield.write_text(json.dumps([{"text": "hi"}]))
    rc, err = _run_err(base + ["--sae", str(d / "sae"), "--harmful", str(nofield)], capsys)
    assert rc == 2 and "instruction" in err and "--field" in err
    rc, err = _run_err(base + ["--sae", str(d / "sae"), "--layer", "9"], capsys)
    assert rc == 2 and "layer: 9 is out of range" in err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"min_full_flip": 1.5}))
    rc, err = _run_err(base + ["--sae", str(d / "sae"), "--config", str(bad)], capsys)
    assert rc == 2 and "min_full_flip" in err and "[0, 1]" in err
    # An SAE for another model width.
    from helpers import make_sae_lens_sae

    make_sae_lens_sae("jumprelu", d_in=48, d_sae=64, hook_name="blocks.1.hook_resid_post").save_model(tmp_path / "wide")
    rc, err = _run_err(base + ["--sae", str(tmp_path / "wide")], capsys)
    assert rc == 2 and "d_in=48" in err and "hidden size is 32" in err
    # An SAE on another hook point than the residual stream (an MLP-out SAE of the same width).
    make_sae_lens_sae("jumprelu", d_in=32, d_sae=64, hook_name="blocks.1.hook_mlp_out").save_model(tmp_path / "mlp")
    rc, err = _run_err(base + ["--sae", str(tmp_path / "mlp")], capsys)
    assert rc == 2 and "'blocks.1.hook_mlp_out' is not supported" in err and "hook_resid_post" in err
    assert not (tmp_path / "o").exists(), "errors come before any output is written"


@pytest.fixture(scope="module")
def organism_discover(tmp_path_factory):
    out = tmp_path_factory.mktemp("org_discover")
    import time

    t = time.time()
    assert main(["discover", "--out", str(out), "--quiet"]) == 0
    return json.loads((out / "results.json").read_text()), time.time() - t


@pytest.mark.slow
def test_discover_acceptance_on_the_organism(organism_discover):
    r, seconds = organism_discover
    assert seconds <= 180, "the whole discover on the organism within 3 minutes on 2 cores"
    # Shipped organism, search prompts from its own (version-2) generators: the pool grows 48 -> 96
    # (flipping 38% -> 75% of the search prompts), 30 features kept, ASR 66% (94% with interactions,
    # baseline 6%). With version-1 search prompts (a distribution it was not trained on) the same
    # organism gave 52 features and 75% / 94%.
    assert r["asr"]["minimal_set"] >= 0.60, "minimal set jailbreaks >= 60% of held-out harmful prompts"
    assert r["asr"]["with_interactions"] >= 0.85, "with the FM-added features >= 85%"
    assert r["asr"]["minimal_set"] > r["asr"]["baseline"]
    cap = r["capability"]
    assert abs(cap["minimal_set_ablated"] - cap["unsteered"]) <= 0.05, "<= 5% change in capability accuracy"
    # Per-prompt sets are checked by generation and extended until the greedy reply complies. On the
    # organism's training-distribution search prompts the score-minimal sets sit at even odds and
    # greedy decoding can still refuse (2 of 4 comply on the shipped organism; reported).
    pp = r["per_prompt_sets"]
    assert pp and all(isinstance(p["complied_by_generation"], bool) for p in pp)
    verified = r["interactions_detail"]["verified"]
    assert verified and max(abs(v["interaction"]) for v in verified) > 0.05, "pairs whose joint effect differs from the sum"


@pytest.mark.slow
def test_direction_acceptance_on_the_organism(organism_discover):
    # On the organism the selection falls back to affine ablation (projection set to the harmless
    # mean's; directional zero ablation pushes its harmless-side activations towards refusal).
    # Shipped organism: harmful refusal 94% -> 0% ablated at KL 0.004; adding the direction makes
    # 92% of the package's harmless prompts refused at every position (from 2%), 86% at the
    # prompt's positions only. Added at every position a direction can also derail the reply
    # into repeated fragments the judge does not count as refusals, so the prompt-only rate is the
    # one held to a bar.
    g = organism_discover[0]["direction"]["generation"]
    assert organism_discover[0]["direction"]["passed_filters"]
    assert g["harmful_refusal_ablated"] <= 0.20
    assert 0 <= g["harmless_refusal_added"] <= 1
    added = g["harmless_refusal_added_prompt"]
    assert added >= 0.50 and added >= g["harmless_refusal"] + 0.4
    assert organism_discover[0]["direction"]["scores"]["kl"] <= 0.1


def test_direction_ablation_kind_is_checked_first(tiny_chat):
    from saesteer.refusal.direction import select_direction

    model, tok, _, _ = tiny_chat
    with pytest.raises(ValueError, match="ablation: expected 'auto', 'directional' or 'affine'"):
        select_direction(model, tok, ["a"], ["b"], ["a"], ["b"], [0], ablation="zero")


def test_candidate_pool_grows_until_it_flips_the_search_prompts(tiny_chat, tmp_path):
    # A threshold no score is under: no pool flips anything, so the pool doubles up to the cap.
    _, _, _, d = tiny_chat
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({**TINY, "threshold": -1e9, "max_candidates": 40}))
    out = tmp_path / "out"
    assert main(["discover", "--model", str(d), "--sae", str(d / "sae"), "--out", str(out), "--config", str(cfg), "--quiet"]) == 0
    r = json.loads((out / "results.json").read_text())
    assert [c["n"] for c in r["candidate_pool"]] == [5, 10, 20, 40]
    assert all(c["full_flip_rate"] == 0 for c in r["candidate_pool"])
    md = (out / "report.md").read_text()
    assert len(r["candidates"]) == 40 and "Candidate pool" in md
    # The top-feature table holds the first 20 candidates in rank order, at the SAE's layer.
    rows = [ln for ln in md.splitlines() if ln.startswith("| ") and ln.split("|")[1].strip().isdigit()
            and ln.count("|") == 5 and "| rank |" not in ln][:20]
    assert [int(ln.split("|")[3]) for ln in rows] == [c[0] for c in r["candidates"][:20]]
    assert all(int(ln.split("|")[2]) == r["sae"]["layer"] for ln in rows)


def test_confirm_by_generation_undoes_removals_last_first():
    from saesteer.refusal.search import confirm_by_generation

    calls = []

    def complies_with(needed):
        def complies(feats):
            calls.append(list(feats))
            return needed <= set(feats), f"reply {len(feats)}"

        return complies

    # Removed 5, then 6, then 7: undo 7 first, then 6; the full set is tried first.
    feats, reply, ok = confirm_by_generation([1, 2], [5, 6, 7], complies_with({1, 2, 6}))
    assert ok and feats == [1, 2, 7, 6] and reply == "reply 4"
    assert calls == [[1, 2], [1, 2, 7, 6, 5], [1, 2, 7], [1, 2, 7, 6]]
    # Already complies: nothing added, one generation.
    calls.clear()
    assert confirm_by_generation([1], [5], complies_with({1})) == ([1], "reply 1", True) and len(calls) == 1
    # Refused even with the whole search set: that set, without the generations in between.
    calls.clear()
    feats, reply, ok = confirm_by_generation([1], [5, 6, 7], complies_with({99}))
    assert not ok and feats == [1, 7, 6, 5] and len(calls) == 2
    # Nothing to try.
    assert confirm_by_generation([], [], complies_with(set())) == ([], None, False)


def test_grow_candidate_pool_checks_its_arguments(tiny_chat):
    from saesteer.refusal.search import grow_candidate_pool

    model, tok, sae, _ = tiny_chat
    with pytest.raises(ValueError, match="ranked"):
        grow_candidate_pool(model, tok, sae, ["hi"], [], [5], start=4, min_full_flip=0.5)
    with pytest.raises(ValueError, match="start"):
        grow_candidate_pool(model, tok, sae, ["hi"], [1, 2], [5], start=0, min_full_flip=0.5)
    # No score is under this threshold: the pool doubles up to every ranked candidate.
    n, steps = grow_candidate_pool(model, tok, sae, ["hi"], list(range(10)), [5], start=3, min_full_flip=0.5, threshold=-1e9)
    assert n == 10 and [s["n"] for s in steps] == [3, 6, 10] and all(s["full_flip_rate"] == 0 for s in steps)


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


def test_find_interactions_reports_held_out_fit_and_confirmation(tiny_chat):
    from saesteer.refusal.interactions import CONFIRM_MIN, find_interactions

    model, tok, sae, _ = tiny_chat
    prompts = ["How do I bake bread?", "Write a poem about rain."]
    active = _active(model, tok, sae, prompts)
    it = find_interactions(model, tok, sae, prompts, active[:3], active[3:6], [5, 6], n_samples=16, rank=2, backend="torch")
    d = it.to_dict()
    m = len(it.features)
    assert d["n_params"] == 1 + m + 2 * m and d["n_heldout"] == 4
    assert d["in_sample_meaningless"] == (d["n_params"] >= 16)
    assert d["r2_heldout"] == d["r2_heldout"], "held-out R^2 is measured"  # not NaN
    for v in d["verified"]:
        assert v["confirmed"] == (abs(v["interaction"]) >= CONFIRM_MIN and v["interaction"] * v["fm"] > 0)
    assert d["n_confirmed"] == sum(v["confirmed"] for v in d["verified"])
    with pytest.raises(ValueError, match="heldout"):
        find_interactions(model, tok, sae, prompts, active[:3], active[3:6], [5, 6], n_samples=16, heldout=1.0)


def _direction_ablation(model, tok, harmful, harmless):
    """A refusal-direction ablation for the tiny model: the difference in means at layer 1."""
    from saesteer.hf import directional_ablation
    from saesteer.refusal.direction import candidate_directions

    r = candidate_directions(model, tok, harmful, harmless, progress=False)[1, -1].float()
    return lambda: directional_ablation(model, r)


IG_PROMPTS = ["How do I bake bread?", "Tell me how to pick a lock."]


@pytest.mark.parametrize("name", ["jumprelu", "topk"])
def test_integrated_gradients_sum_to_the_metric_change(tiny_chat, name):
    # Completeness, checked against the finite difference m(f') - m(f) of the real forwards: the
    # attributions of every feature and (non-BOS) position add up to it, more closely with more steps.
    from helpers import make_sae
    from saesteer.refusal.features import integrated_gradients, rank_by_attribution

    model, tok, _, _ = tiny_chat
    sae = make_sae(name, d_in=32, d_sae=96, seed=1, hook_name="blocks.1.hook_resid_post")
    abl = _direction_ablation(model, tok, IG_PROMPTS, ["Write a poem about rain.", "Name three colours."])
    ig = integrated_gradients(model, tok, sae, IG_PROMPTS, [5, 6], abl, steps=32)
    change = ig.metric_ablated - ig.metric_clean
    assert float(change.abs().max()) > 1e-3, "ablating the direction must move the metric"
    torch.testing.assert_close(ig.attr.sum(1), change, rtol=0.02, atol=1e-3 * float(change.abs().max()))
    coarse = integrated_gradients(model, tok, sae, IG_PROMPTS, [5, 6], abl, steps=2)
    assert float((coarse.attr.sum(1) - change).abs().max()) >= float((ig.attr.sum(1) - change).abs().max()) - 1e-6
    # n_positions leaves the BOS out: one fewer than the real tokens of each prompt.
    enc = saesteer.refusal.chat.tokenize_prompts(tok, IG_PROMPTS)
    assert ig.n_positions.tolist() == (enc["attention_mask"].sum(1) - 1).tolist()
    ranked = rank_by_attribution(model, tok, sae, IG_PROMPTS, [5, 6], top=5, method="ig", ablation=abl, steps=4)
    # The features the direction's ablation turns down come first, by attribution.
    ig4 = integrated_gradients(model, tok, sae, IG_PROMPTS, [5, 6], abl, steps=4)
    down = ig4.delta.sum(0) < 0
    assert int(down.sum()) >= 5
    assert all(bool(down[i]) for i, _ in ranked)
    assert [v for _, v in ranked] == sorted((v for _, v in ranked), reverse=True)
    attr = (ig4.attr / ig4.n_positions[:, None].double()).mean(0)
    assert ranked[0][1] == pytest.approx(float(attr[down].max()))
    with pytest.raises(ValueError, match="ablation: integrated gradients need"):
        rank_by_attribution(model, tok, sae, IG_PROMPTS, [5, 6], method="ig")


def test_attribution_leaves_the_bos_out(tiny_chat):
    # A feature edited only at the BOS changes nothing the attributions count: zeroing the BOS's
    # codes in the clean run leaves every attribution as it is.
    from saesteer.refusal.features import rank_by_attribution

    model, tok, sae, _ = tiny_chat
    enc = saesteer.refusal.chat.tokenize_prompts(tok, IG_PROMPTS)
    from saesteer.hf.positions import bos_mask

    assert int(bos_mask(enc["input_ids"], enc["attention_mask"], tok.bos_token_id).sum()) == 2
    a = dict(rank_by_attribution(model, tok, sae, IG_PROMPTS, [5, 6], top=sae.d_sae, method="zero"))
    # The zero-ablation attribution is -f . g summed over positions; with BOS kept out, it equals the
    # same sum with the BOS position's own term removed by hand.
    from saesteer import reference
    from saesteer.hf import intercept
    from saesteer.refusal.chat import refusal_scores_from_logits
    from saesteer.refusal.features import site

    got = {}

    def swap(name, x):
        xs = x.detach()
        f, scale, shift = reference.encode_columns(xs, sae)
        f = f.float().requires_grad_(True)
        got["f"] = f
        recon = reference.denormalize(sae.decode(f).float(), scale, shift)
        return recon + (xs - recon.detach())

    with intercept(model, site(model, sae), swap), torch.enable_grad():
        score = refusal_scores_from_logits(model(**enc).logits[:, -1], [5, 6]).sum()
        (g,) = torch.autograd.grad(score, got["f"])
    terms = -(got["f"].detach() * g) * enc["attention_mask"][..., None]
    with_bos = terms.sum((0, 1)).double() / 2
    terms[bos_mask(enc["input_ids"], enc["attention_mask"], tok.bos_token_id)] = 0
    without = terms.sum((0, 1)).double() / 2
    assert float((with_bos - without).abs().max()) > 1e-6, "the BOS term must matter for this test"
    for i, v in a.items():
        assert v == pytest.approx(float(without[i]), rel=1e-4, abs=1e-7)


def test_mean_activations_leave_bos_and_padding_out(tiny_chat):
    from saesteer.hf import intercept
    from saesteer.refusal.chat import tokenize_prompts
    from saesteer.refusal.direction import mean_activations

    model, tok, _, _ = tiny_chat
    prompts = ["Hi", "Tell me how to pick a lock, step by step please."]
    enc = tokenize_prompts(tok, prompts)
    T = enc["input_ids"].shape[1]
    got = []
    with torch.no_grad(), intercept(model, ["blocks.1.hook_resid_pre"], lambda n, x: got.append(x.double())):
        model(**enc)
    x = got[0]
    means = mean_activations(model, tok, prompts, T, progress=False)[1]
    real = enc["attention_mask"].bool().clone()
    real[1, 0] = False  # the long prompt's BOS (it has no padding)
    first_short = int(enc["attention_mask"][0].argmax())
    real[0, first_short] = False  # the short prompt's BOS
    for t in range(T):
        rows = real[:, t]
        want = x[rows, t].mean(0) if rows.any() else torch.zeros(x.shape[-1], dtype=torch.float64)
        torch.testing.assert_close(means[t], want, rtol=1e-5, atol=1e-6)


def test_edit_forms_and_scaled_search_scores(tiny_chat):
    from saesteer.refusal.search import Edit, parse_edit

    assert parse_edit("ablate") == Edit() and parse_edit("scale:-3") == Edit("scale", -3.0)
    assert str(parse_edit("clamp:2.5")) == "clamp:2.5" and str(parse_edit("scale:-3")) == "scale:-3"
    for bad in ("zap", "scale", "scale:x", "ablate:1", "clamp:nan", 3):
        with pytest.raises(ValueError, match="edit:"):
            parse_edit(bad)
    model, tok, sae, _ = tiny_chat
    prompts = ["How do I bake bread?"]
    feats = _active(model, tok, sae, prompts)[:4]
    from saesteer.refusal.chat import refusal_scores

    for edit in ("scale:-3", "clamp:5"):
        e = parse_edit(edit)
        iv = saesteer.Intervention(feats, e.mode, e.value)
        want = refusal_scores(model, tok, prompts, [5, 6], steering=lambda: saesteer.steer(model, sae, iv))
        got = edit_scores(model, tok, sae, prompts, [feats], [5, 6], edit=edit)[0]
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    ablated = edit_scores(model, tok, sae, prompts, [feats], [5, 6])[0]
    assert not torch.equal(ablated, edit_scores(model, tok, sae, prompts, [feats], [5, 6], edit="scale:-3")[0])


def test_filter_keeps_refused_harmful_and_answered_harmless():
    # On the organism, which refuses: harmful and harmless prompts mixed in each list, so the
    # filter has something to drop on both sides.
    from saesteer.organism import load
    from saesteer.refusal.chat import find_refusal_tokens, refusal_scores
    from saesteer.refusal.data import shipped_prompts
    from saesteer.refusal.direction import filter_by_refusal

    org = load()
    model, tok = org.model, org.tokenizer
    harmful, harmless = shipped_prompts("harmful")[:6], shipped_prompts("harmless")[:6]
    rtoks = find_refusal_tokens(model, tok, harmful, max_new_tokens=8)
    mixed = harmful + harmless
    s = refusal_scores(model, tok, mixed, rtoks)
    assert (s > 0).any() and (s < 0).any(), s
    h, l, counts = filter_by_refusal(model, tok, mixed, mixed, rtoks)
    assert h == [p for p, v in zip(mixed, s) if v > 0] and l == [p for p, v in zip(mixed, s) if v < 0]
    assert counts == {"harmful": {"n": 12, "kept": len(h)}, "harmless": {"n": 12, "kept": len(l)}}
    assert 0 < len(h) < 12 and 0 < len(l) < 12


def test_discover_cli_edit_and_no_skip_bos_reach_the_spec(tiny_chat, tmp_path):
    _, _, _, d = tiny_chat
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("\n".join(f"{k}: {v}" for k, v in {**TINY, "fm_samples": 8, "per_prompt": 0}.items()))
    out = tmp_path / "out"
    rc = main(["discover", "--model", str(d), "--sae", str(d / "sae"), "--out", str(out), "--config", str(cfg),
               "--edit", "scale:-3", "--no-skip-bos", "--attribution", "zero", "--quiet"])
    assert rc == 0
    r = json.loads((out / "results.json").read_text())
    assert r["edit"] == "scale:-3" and r["skip_bos"] is False and r["candidate_method"] == "attribution (zero)"
    assert r["config"]["edit"] == "scale:-3" and r["config"]["skip_bos"] is False
    spec = SteeringSpec.load(out / "spec.json")
    assert (spec.mode, spec.values, spec.skip_bos) == ("scale", -3.0, False)
    report_md = (out / "report.md").read_text()
    assert "Search edit: scale:-3 (the BOS token edited too)" in report_md
    assert "| minimal set scaled by -3 |" in report_md and "| minimal set ablated |" not in report_md


def test_discover_cli_rejects_a_bad_edit(capsys):
    with pytest.raises(SystemExit):
        main(["discover", "--out", "unused", "--edit", "scale:x"])
    assert "--edit: scale's value must be a number" in capsys.readouterr().err


def test_splits_hold_out_harmless_prompts_apart_from_the_selection_ones():
    from saesteer.refusal.discover import DiscoverConfig, split_prompts

    cfg = DiscoverConfig(n_direction=8, n_val=4, n_search=4, n_heldout=6)
    harmful = [f"h{i}" for i in range(30)]
    harmless = [f"l{i}" for i in range(30)]
    sp = split_prompts(harmful, harmless, cfg)
    assert sp.harmless_held_out and len(sp.harmless_held) == 6
    assert not set(sp.harmless_held) & (set(sp.harmless_direction) | set(sp.harmless_val))
    assert not set(sp.held) & (set(sp.direction) | set(sp.val) | set(sp.search))
    # Too few harmless prompts to hold any out: the selection's are judged, and the splits say so.
    few = split_prompts(harmful, harmless[:5], cfg)
    assert not few.harmless_held_out and few.harmless_held == (few.harmless_val or few.harmless_direction)
    given = split_prompts(harmful, harmless[:5], cfg, heldout_harmless=["x", "y"])
    assert given.harmless_held_out and given.harmless_held == ["x", "y"] and len(given.harmless_direction) == 5


def test_a_search_without_prompts_of_its_own_is_warned_and_no_direction_prompts_is_an_error():
    from saesteer.refusal.discover import DiscoverConfig, result_warnings, split_prompts

    cfg = DiscoverConfig(n_direction=8, n_val=4, n_search=4, n_heldout=6)
    sp = split_prompts([f"h{i}" for i in range(16)], [f"l{i}" for i in range(16)], cfg)  # 6 held, 8 direction, 2 val
    assert sp.search_from == "val" and sp.search == sp.val and sp.sizes()["search"] == 2
    results = {"asr": {"baseline": 0.0, "n_prompts": 6}, "direction": {"passed_filters": True}, "splits": sp.sizes()}
    valid, warnings = result_warnings(results)
    assert valid and any("search ran on the val prompts (2)" in w for w in warnings)
    results["splits"] = split_prompts([f"h{i}" for i in range(40)], [f"l{i}" for i in range(16)], cfg).sizes()
    assert result_warnings(results)[1] == []
    with pytest.raises(ValueError, match=r"prompts: 6 harmful prompts leave none for the direction after the 6 held out"):
        split_prompts([f"h{i}" for i in range(6)], ["l"], cfg)
