"""``saesteer serve`` over HTTP with the official ``openai`` client, on the organism in fp32 (one SAE
registered as an sae-lens RELEASE:ID): steered and unsteered replies equal the HF hooks token for token, streaming and completions work, bad specs
are answered 400 naming the field while the server serves on, and the server's default edit can be
switched at run time."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (make venv-vllm; make test-vllm)")
openai = pytest.importorskip("openai", reason="the openai client is not installed")

from saesteer import Intervention, organism  # noqa: E402

import helpers  # noqa: E402

MAX_NEW = 10
BUDGET = 64  # max_num_batched_tokens: concurrent requests share steps, longer prompts are chunked
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # The jumprelu SAE is registered as an sae-lens RELEASE:ID (a hub repo in a local cache, read
    # offline by sae-lens in the API process and in the worker), the organism's others by name.
    cache, hub_ref = helpers.offline_hub_cache(tmp_path_factory.mktemp("hf"))
    env = dict(os.environ, HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1")
    saes = [f"{n}={hub_ref if n == 'jumprelu' else 'organism:' + n}" for n in organism.read_manifest()[2]]
    args = ["--model", "organism", "--host", "127.0.0.1", "--port", str(helpers.free_port()), "--dtype", "float32",
            "--max-model-len", "256", "--enforce-eager", "--enable-prefix-caching", "--block-size", "32",
            "--enable-chunked-prefill", "--max-num-batched-tokens", str(BUDGET),
            "--gpu-memory-utilization", "0.15", *[a for x in saes for a in ("--sae", x)]]
    with helpers.start_server(args, tmp_path_factory.mktemp("serve") / "server.log", env) as (_, base):
        yield base


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="unused")


@pytest.fixture(scope="module")
def prompt_ids(org):
    return helpers.organism_prompt_ids(org, 2, 1)


@pytest.fixture(scope="module")
def features(org, prompt_ids):
    return helpers.refusal_features(org, prompt_ids, n_harmful=2)


def hf_greedy(org, ids, iv=None):
    return helpers.hf_greedy(org, ids, MAX_NEW, iv)


def served(client, ids, **extra_body):
    r = client.completions.create(model="organism", prompt=ids, max_tokens=MAX_NEW, temperature=0,
                                  extra_body=dict(ignore_eos=True, return_token_ids=True, **extra_body))
    return list(r.choices[0].token_ids)


def _spec(features, mode="ablate", value=None):
    d = {"sae": "jumprelu", "features": list(features), "mode": mode}
    if value is not None:
        d["value"] = value
    return d


def test_steered_and_unsteered_completions_equal_the_hf_hooks(client, org, prompt_ids, features):
    clamp = Intervention(features, "clamp", 6.0)
    for ids in prompt_ids:
        plain = served(client, ids)
        assert plain == hf_greedy(org, ids)
        ablated = served(client, ids, vllm_xargs={"saesteer": json.dumps(_spec(features))})
        assert ablated == hf_greedy(org, ids, Intervention(features, "ablate"))
        clamped = served(client, ids, saesteer=_spec(features, "clamp", 6.0))  # the plain-JSON form
        assert clamped == hf_greedy(org, ids, clamp)
    # Prefix caching is on: the same prompt unsteered after steered still gets the plain reply.
    assert served(client, prompt_ids[0]) == hf_greedy(org, prompt_ids[0])
    assert served(client, prompt_ids[2], saesteer=_spec(features, "clamp", 6.0)) != hf_greedy(org, prompt_ids[2]), \
        "the clamp changed no reply: the test shows nothing"


def test_chat_and_streaming(client, org, features):
    msgs = [{"role": "user", "content": organism.load_prompts("harmful")[0]}]
    spec = {"vllm_xargs": {"saesteer": json.dumps(_spec(features, "clamp", 6.0))}}
    full = client.chat.completions.create(model="organism", messages=msgs, max_tokens=MAX_NEW, temperature=0,
                                          extra_body=spec).choices[0].message.content
    stream = client.chat.completions.create(model="organism", messages=msgs, max_tokens=MAX_NEW, temperature=0,
                                            stream=True, extra_body=spec)
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert streamed == full
    plain = client.chat.completions.create(model="organism", messages=msgs, max_tokens=MAX_NEW,
                                           temperature=0).choices[0].message.content
    assert plain != full
    assert "sorry" in plain.lower() or "can't" in plain.lower(), plain  # the organism refuses it unsteered


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"sae": "nope", "features": [1]}, "saesteer.sae"),
        ({"sae": "jumprelu", "features": [10**6]}, "saesteer.features"),
        ({"sae": "jumprelu", "features": [1, 1]}, "saesteer.features"),
        ({"sae": "jumprelu", "features": [1], "mode": "clamp", "value": float("nan")}, "saesteer.value"),
        ({"sae": "jumprelu", "features": [1], "mode": "zap"}, "saesteer.mode"),
        ({"sae": "jumprelu", "features": [1], "layer": 0}, "saesteer.layer"),
        ("{not json", "saesteer: malformed JSON"),
    ],
)
def test_bad_specs_are_400_naming_the_field_and_the_server_serves_on(client, org, prompt_ids, bad, field):
    text = bad if isinstance(bad, str) else json.dumps(bad)
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="organism", prompt=prompt_ids[0], max_tokens=2,
                                  extra_body={"vllm_xargs": {"saesteer": text}})
    assert e.value.status_code == 400
    assert field in e.value.message
    assert served(client, prompt_ids[1]) == hf_greedy(org, prompt_ids[1])


def _put_default(server, spec):
    req = urllib.request.Request(server + "/v1/saesteer/default", data=json.dumps(spec).encode(), method="PUT",
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_the_default_edit_switches_at_run_time(server, client, org, prompt_ids, features):
    ids = prompt_ids[0]
    with urllib.request.urlopen(server + "/v1/saesteer") as r:
        info = json.loads(r.read())
    jr = info["saes"]["jumprelu"]
    assert (jr["d_sae"], jr["layer"]) == (org.sae.d_sae, 2) and 0 < jr["value_limit"] < 1e20 and info["default"] is None
    status, body = _put_default(server, {"sae": "jumprelu", "features": [1, 1]})
    assert status == 400 and "saesteer.features" in body["error"]["message"]
    try:
        status, body = _put_default(server, _spec(features))
        assert status == 200 and body["default"][0]["features"] == list(features)
        ablated = hf_greedy(org, ids, Intervention(features, "ablate"))
        assert served(client, ids) == ablated  # no spec of its own: the default applies
        assert served(client, ids, saesteer=None) == hf_greedy(org, ids)  # explicitly unsteered
        clamp = _spec(features, "clamp", 6.0)
        assert served(client, ids, saesteer=clamp) == hf_greedy(org, ids, Intervention(features, "clamp", 6.0))
    finally:
        assert _put_default(server, None)[0] == 200
    assert served(client, ids) == hf_greedy(org, ids)


def _get(server, path):
    with urllib.request.urlopen(server + path, timeout=30) as r:
        return json.loads(r.read())


def _put_raw(server, raw: bytes):
    req = urllib.request.Request(server + "/v1/saesteer/default", data=raw, method="PUT",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.parametrize("bad, param", [
    ({"sae": ["jumprelu"], "features": [1]}, "saesteer.sae"),
    ({"sae": {"name": "jumprelu"}, "features": [1]}, "saesteer.sae"),
    ({"sae": "jumprelu", "features": [1], "mode": "clamp", "value": "abc"}, "saesteer.value"),
    ({"sae": "jumprelu", "features": [1], "mode": "clamp", "value": "8"}, "saesteer.value"),
    ({"sae": "jumprelu", "features": [1], "mode": "clamp", "value": 1e39}, "saesteer.value"),
])
def test_specs_of_the_wrong_type_or_too_large_are_400_naming_the_field_in_requests_and_the_default(
        server, client, bad, param, prompt_ids):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="organism", prompt=prompt_ids[0], max_tokens=2, extra_body={"saesteer": bad})
    assert e.value.status_code == 400 and e.value.body["param"] == param, e.value.body
    status, body = _put_raw(server, json.dumps(bad).encode())
    assert status == 400 and body["error"]["param"] == param, body
    assert _get(server, "/v1/saesteer")["default"] is None


def test_put_default_with_a_json_string_names_what_was_expected(server):
    status, body = _put_raw(server, b'"hello"')
    assert status == 400
    assert body["error"]["message"] == ("saesteer: expected a spec (an object), a list of specs, or null; "
                                        "got the JSON string 'hello'")


def test_a_request_whose_edit_goes_non_finite_fails_and_no_other_reply_changes(server, client, org, prompt_ids, features):
    """References alone, the bad requests (a value beyond float32, refused; a scale within the bound
    that overflows inside the engine, failed with an error), the references again: all equal."""
    refs = [served(client, ids) for ids in prompt_ids]
    clamp = _spec(features, "clamp", 6.0)
    steered = [served(client, ids, saesteer=clamp) for ids in prompt_ids]
    with pytest.raises(openai.BadRequestError) as e:
        served(client, prompt_ids[0], saesteer=_spec(features, "clamp", 1e39))
    assert e.value.body["param"] == "saesteer.value"
    assert _get(server, "/v1/saesteer")["saes"]["jumprelu"]["value_limit"] < 1e20
    big = {"sae": "jumprelu", "features": [features[0]], "mode": "scale", "value": 1e30}
    with pytest.raises(openai.BadRequestError) as e:
        served(client, prompt_ids[0], saesteer=big)
    assert "produced non-finite hidden states" in e.value.message
    stream = client.completions.create(model="organism", prompt=prompt_ids[0], max_tokens=MAX_NEW, temperature=0,
                                       stream=True, extra_body={"saesteer": big, "ignore_eos": True})
    with pytest.raises(openai.APIError, match="non-finite hidden states"):
        for _ in stream:
            pass
    for _ in range(2):
        assert [served(client, ids) for ids in prompt_ids] == refs
        assert [served(client, ids, saesteer=clamp) for ids in prompt_ids] == steered


def test_steer_reads_a_two_sae_discover_spec_file(tmp_path):
    """``--steer spec.json`` from discover over two SAEs: its SAE references become the names
    registered with --sae, one default spec per edit, checked against the SAEs before vLLM starts."""
    from saesteer.refusal.spec import SteeringSpec
    from saesteer.vllm.requests import ServerSteering
    from saesteer.vllm.server import build_parser, check_saes, resolve

    path = SteeringSpec(features=[], mode="clamp", values=4.0, model="organism",
                        edits=[{"sae": "organism:jumprelu", "layer": 2, "features": [3, 9]},
                               {"sae": "organism:topk", "layer": 2, "features": [5]}]).save(tmp_path / "spec.json")
    args = build_parser().parse_args(["--model", "organism", "--sae", "a=organism:jumprelu", "--sae", "b=organism:topk",
                                      "--steer", str(path)])
    saes, default = resolve(args)
    assert saes == {"a": "organism:jumprelu", "b": "organism:topk"}
    assert [(d["sae"], d["features"], d["mode"]) for d in default] == [("a", [3, 9], "clamp"), ("b", [5], "clamp")]
    check_saes(args, saes, default)  # the features fit each SAE
    got = ServerSteering({"a": 1536, "b": 1536}, default).describe()["default"]
    assert [(d["sae"], d["features"], d["value"]) for d in got] == [("a", [3, 9], [4.0, 4.0]), ("b", [5], [4.0])]
    args = build_parser().parse_args(["--model", "organism", "--sae", "a=organism:jumprelu", "--steer", str(path)])
    with pytest.raises(Exception, match=r"--steer.sae: the file's SAE 'organism:topk' is not registered"):
        resolve(args)
    # A spec made for another layer than the SAE's is refused, naming both.
    other = SteeringSpec(features=[3], sae="organism:jumprelu", layer=1).save(tmp_path / "l1.json")
    args = build_parser().parse_args(["--model", "organism", "--sae", "a=organism:jumprelu", "--steer", str(other)])
    saes, default = resolve(args)
    with pytest.raises(Exception, match=r"--steer: saesteer.layer: the spec edits layer 1 with SAE 'a', which reads layer 2"):
        check_saes(args, saes, default)


def _hf_when(org, ids, features, when, value=6.0):
    """The HF hooks' greedy tokens and trigger report for a conditional clamp (``when`` without its SAE name)."""
    import torch

    import saesteer

    iv = {"features": list(features), "mode": "clamp", "value": value, "when": {k: v for k, v in when.items() if k != "sae"}}
    x = torch.tensor([ids])
    with torch.no_grad(), saesteer.steer(org.model, org.sae, iv) as h:
        out = org.model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=MAX_NEW, do_sample=False)
        return out[0, len(ids):].tolist(), h.conditions[0].report()


def test_when_and_inspect_over_completions_chat_and_streaming(client, org, prompt_ids, features):
    """The decision, its score and the per-token top-k come back in ``choices[i].saesteer``, which
    the openai client keeps, in completions, chat and streamed chunks; the tokens equal the HF hooks'."""
    _, probe = _hf_when(org, prompt_ids[0], features, {"features": list(features), "threshold": 0.0})
    score = probe["score"][0]
    for thr, fired in ((score - 1.0, True), (score + 1.0, False)):
        when = {"sae": "jumprelu", "features": list(features), "threshold": thr}
        spec = dict(_spec(features, "clamp", 6.0), when=when, inspect={"sae": "jumprelu", "k": 4, "positions": "generated"})
        r = client.completions.create(model="organism", prompt=prompt_ids[0], max_tokens=MAX_NEW, temperature=0,
                                      extra_body=dict(ignore_eos=True, return_token_ids=True, saesteer=spec))
        want, hf_rep = _hf_when(org, prompt_ids[0], features, when)
        assert list(r.choices[0].token_ids) == want
        rep = r.choices[0].saesteer
        assert rep["when"][0]["fired"] is fired is hf_rep["fired"][0]
        assert abs(rep["when"][0]["score"] - score) < 1e-4
        toks = rep["inspect"][0]["tokens"]
        assert [t["position"] for t in toks] == list(range(len(prompt_ids[0]), len(prompt_ids[0]) + MAX_NEW - 1))
        assert all(len(t["ids"]) == 4 and t["values"] == sorted(t["values"], reverse=True) for t in toks)
    msgs = [{"role": "user", "content": organism.load_prompts("harmful")[0]}]
    monitor = {"saesteer": {"sae": "jumprelu", "when": {"features": list(features), "threshold": 0.0},
                            "inspect": {"k": 3, "positions": "prompt"}}}
    full = client.chat.completions.create(model="organism", messages=msgs, max_tokens=MAX_NEW, temperature=0, extra_body=monitor)
    chat_rep = full.choices[0].saesteer
    assert chat_rep["when"][0]["fired"] is True and len(chat_rep["inspect"][0]["tokens"]) > 5
    plain = client.chat.completions.create(model="organism", messages=msgs, max_tokens=MAX_NEW, temperature=0)
    assert full.choices[0].message.content == plain.choices[0].message.content  # a monitor edits nothing
    chunks = list(client.chat.completions.create(model="organism", messages=msgs, max_tokens=MAX_NEW, temperature=0,
                                                 stream=True, extra_body=monitor))
    ends = [c.choices[0] for c in chunks if c.choices and c.choices[0].finish_reason is not None]
    assert len(ends) == 1 and ends[0].saesteer == chat_rep
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == full.choices[0].message.content


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"sae": "jumprelu", "features": [1], "when": {"features": [2]}}, "saesteer.when.threshold"),
        ({"sae": "jumprelu", "features": [1], "when": {"features": [2], "threshold": 1, "reduce": "median"}},
         "saesteer.when.reduce"),
        ({"sae": "jumprelu", "when": {"features": [2], "threshold": 1, "color": 1}}, "saesteer.when.color"),
        ({"inspect": {"sae": "jumprelu", "k": "many"}}, "saesteer.inspect.k"),
        ({"inspect": {"sae": "jumprelu", "positions": "middle"}}, "saesteer.inspect.positions"),
    ],
)
def test_bad_when_and_inspect_fields_are_400s(client, prompt_ids, bad, field):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="organism", prompt=prompt_ids[0], max_tokens=2, extra_body={"saesteer": bad})
    assert e.value.status_code == 400 and field in e.value.message


def _when_spec(features, thr, inspect_positions="all"):
    when = {"sae": "jumprelu", "features": list(features), "threshold": thr}
    return dict(_spec(features, "clamp", 6.0), when=when, inspect={"sae": "jumprelu", "k": 3, "positions": inspect_positions})


def _split(org, prompt_ids, features):
    """A threshold between the prompts' trigger scores (HF), and each prompt's score."""
    scores = [_hf_when(org, p, features, {"features": list(features), "threshold": 0.0})[1]["score"][0] for p in prompt_ids]
    lo, hi = min(scores), max(scores)
    assert hi - lo > 0.5, "the prompts' scores do not differ: the test shows nothing"
    return (lo + hi) / 2, scores


def test_several_prompts_in_one_completions_call_each_get_their_decision_and_report(client, org, prompt_ids, features):
    """choices[p * n + c] is completion c of prompt p: its tokens are the HF hooks' for that prompt
    alone, and its report is that prompt's own decision and inspection."""
    thr, scores = _split(org, prompt_ids, features)
    spec = _when_spec(features, thr)
    r = client.completions.create(model="organism", prompt=prompt_ids, max_tokens=MAX_NEW, temperature=0,
                                  extra_body=dict(ignore_eos=True, return_token_ids=True, saesteer=spec))
    assert [ch.index for ch in r.choices] == list(range(len(prompt_ids)))
    for p, ch in enumerate(r.choices):
        want, hf_rep = _hf_when(org, prompt_ids[p], features, spec["when"])
        assert list(ch.token_ids) == want, p
        rep = ch.saesteer
        assert rep["when"][0]["fired"] is (scores[p] > thr) is hf_rep["fired"][0]
        assert abs(rep["when"][0]["score"] - scores[p]) < 1e-4
        assert [t["token_id"] for t in rep["inspect"][0]["tokens"]] == prompt_ids[p] + want[:-1]
    n = 2  # sampled: each completion's inspection reads its own tokens
    r = client.completions.create(model="organism", prompt=prompt_ids, max_tokens=MAX_NEW, temperature=1.0, n=n, seed=0,
                                  extra_body=dict(ignore_eos=True, return_token_ids=True, saesteer=spec))
    assert sorted(ch.index for ch in r.choices) == list(range(len(prompt_ids) * n))
    for ch in r.choices:
        p, rep = ch.index // n, ch.saesteer
        assert rep["when"][0]["fired"] is (scores[p] > thr) and abs(rep["when"][0]["score"] - scores[p]) < 1e-4
        assert [t["token_id"] for t in rep["inspect"][0]["tokens"]] == prompt_ids[p] + list(ch.token_ids)[:-1]


def _streamed_reports(chunks):
    """Per choice index: the ``saesteer`` field of each of its chunks (None where absent)."""
    out: dict[int, list] = {}
    for c in chunks:
        for ch in c.choices:
            out.setdefault(ch.index, []).append((getattr(ch, "saesteer", None), ch.finish_reason))
    return out


def _check_stream(per_choice, n_prompt_tokens):
    """Each choice's first chunk carries the decision (the prompt is read before the first token),
    its chunks together carry each inspected token once, in order, and its last chunk the whole report."""
    for i, items in per_choice.items():
        (final, reason), parts = items[-1], [r for r, _ in items[:-1] if r is not None]
        assert reason is not None and final is not None, i
        assert items[0][0] is not None and items[0][0]["when"] == final["when"], i
        rows = [t for part in parts for ins in part.get("inspect", []) for t in ins["tokens"]]
        assert [t["position"] for t in rows] == list(range(len(rows))), i
        assert rows == final["inspect"][0]["tokens"][: len(rows)], i
        assert len(rows) >= n_prompt_tokens[i], i  # the prompt, read in the first step


def test_streamed_chunks_carry_the_decision_and_the_inspection_as_read(client, org, prompt_ids, features):
    thr, _ = _split(org, prompt_ids, features)
    spec = _when_spec(features, thr)
    chunks = list(client.completions.create(model="organism", prompt=prompt_ids, max_tokens=MAX_NEW, temperature=0,
                                            stream=True, extra_body=dict(ignore_eos=True, saesteer=spec)))
    per_choice = _streamed_reports(chunks)
    assert sorted(per_choice) == list(range(len(prompt_ids)))
    _check_stream(per_choice, {i: len(p) for i, p in enumerate(prompt_ids)})
    full = client.completions.create(model="organism", prompt=prompt_ids, max_tokens=MAX_NEW, temperature=0,
                                     extra_body=dict(ignore_eos=True, saesteer=spec))
    for ch in full.choices:  # the stream's final reports are the non-streamed ones
        assert per_choice[ch.index][-1][0] == ch.saesteer
    msgs = [{"role": "user", "content": organism.load_prompts("harmful")[0]}]
    chat = list(client.chat.completions.create(model="organism", messages=msgs, max_tokens=MAX_NEW, temperature=0,
                                               stream=True, extra_body={"saesteer": spec}))
    per_choice = _streamed_reports(chat)
    _check_stream(per_choice, {0: 5})


def test_a_prompt_over_the_step_budget_is_a_400_when_its_decision_edits_it(client, prompt_ids, features):
    long = (prompt_ids[0] * 4)[: BUDGET + 6]
    spec = _when_spec(features, 0.0)
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="organism", prompt=long, max_tokens=2, extra_body={"saesteer": spec})
    assert e.value.status_code == 400 and "prompt: 70 tokens, more than the engine's step budget" in e.value.message
    ok = client.completions.create(model="organism", prompt=long, max_tokens=2,
                                   extra_body={"saesteer": dict(spec, positions="generated")})
    assert ok.choices[0].saesteer["when"][0]["score"] is not None
