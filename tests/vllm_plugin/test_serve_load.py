"""``saesteer serve`` as the README starts it (no memory flag: on a CPU the KV cache is sized from
the model), then a bounded load and fault run through HTTP with the ``openai`` client: 200 mixed
requests at concurrency 32 with bad specs mixed in, 10 streams dropped after their first chunk;
every good reply equals the same request sent alone, the bad ones are 400s, and the server is alive
at the end (its RSS growth is reported)."""

from __future__ import annotations

import json
import random
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (make venv-vllm; make test-vllm)")
openai = pytest.importorskip("openai", reason="the openai client is not installed")
psutil = pytest.importorskip("psutil")

import helpers  # noqa: E402

MAX_NEW = 8


@pytest.fixture(scope="module")
def readme_server(tmp_path_factory):
    """The README's command, ``saesteer serve --model organism``, on a free local port."""
    log = tmp_path_factory.mktemp("serve") / "server.log"
    args = ["--model", "organism", "--host", "127.0.0.1", "--port", str(helpers.free_port())]
    with helpers.start_server(args, log, timeout=300) as (proc, base):
        yield proc, base, log


def _rss(proc) -> int:
    """The server's resident memory: its process and every child (the engine core)."""
    p = psutil.Process(proc.pid)
    return sum(q.memory_info().rss for q in [p, *p.children(recursive=True)] if q.is_running())


def test_the_readme_command_starts_and_sizes_the_kv_cache(readme_server):
    _, base, log = readme_server
    text = log.read_text()
    assert "saesteer serve: KV cache" in text and "tokens of" in text, text[-3000:]
    assert "--gpu-memory-utilization" in text  # how to choose another


def test_load_and_faults(readme_server, org):
    proc, base, _ = readme_server
    client = openai.OpenAI(base_url=base + "/v1", api_key="-", max_retries=0, timeout=120)
    prompts = helpers.organism_prompt_ids(org, 2, 2)
    features = helpers.refusal_features(org, prompts, n_harmful=2)
    good = {"none": None,
            "clamp": {"sae": "jumprelu", "features": features, "mode": "clamp", "value": 6.0},
            "ablate": {"sae": "jumprelu", "features": features, "mode": "ablate"}}
    limit = json.loads(__import__("urllib.request").request.urlopen(base + "/v1/saesteer").read())["saes"]["jumprelu"]["value_limit"]
    bad = {"overflow": ({"sae": "jumprelu", "features": [1, 2], "mode": "clamp", "value": 1e39}, "saesteer.value"),
           "sae-list": ({"sae": ["jumprelu"], "features": [1]}, "saesteer.sae"),
           "value-str": ({"sae": "jumprelu", "features": [1], "mode": "clamp", "value": "8"}, "saesteer.value"),
           "non-finite": ({"sae": "jumprelu", "features": [features[0]], "mode": "scale", "value": 0.99 * limit}, "non-finite")}

    def ask(p: int, kind: str):
        spec = good.get(kind, bad.get(kind, (None,))[0])
        extra = {"ignore_eos": True, "return_token_ids": True, **({"saesteer": spec} if spec is not None else {})}
        r = client.completions.create(model="organism", prompt=prompts[p], max_tokens=MAX_NEW, temperature=0,
                                      extra_body=extra)
        return list(r.choices[0].token_ids)

    refs = {(p, k): ask(p, k) for p in range(len(prompts)) for k in good}  # each sent alone
    assert any(refs[(p, "clamp")] != refs[(p, "none")] for p in range(len(prompts))), \
        "the clamp changed no reply: the test shows nothing"
    rss0 = _rss(proc)

    rng = random.Random(0)
    kinds = [rng.choice(list(good)) for _ in range(190)] + [k for k in bad for _ in range(3)][:10]
    rng.shuffle(kinds)
    jobs = [(0 if k == "non-finite" else rng.randrange(len(prompts)), k) for k in kinds]  # its feature is active on 0

    def run(job):
        p, k = job
        try:
            return ask(p, k)
        except openai.BadRequestError as e:
            return e

    def drop_stream(p):
        s = client.completions.create(model="organism", prompt=prompts[p], max_tokens=64, temperature=0, stream=True,
                                      extra_body={"saesteer": good["clamp"], "ignore_eos": True})
        next(iter(s))
        s.response.close()  # the client goes away mid-stream

    t0 = time.time()
    with ThreadPoolExecutor(32) as pool:
        drops = [pool.submit(drop_stream, i % len(prompts)) for i in range(10)]
        results = list(pool.map(run, jobs))
        for d in drops:
            d.result()
    elapsed = time.time() - t0

    wrong = []
    for (p, k), r in zip(jobs, results):
        if k in bad:
            if not isinstance(r, openai.BadRequestError) or bad[k][1] not in (r.body or {}).get("param", "") + r.message:
                wrong.append((p, k, repr(r)[:200]))
        elif r != refs[(p, k)]:
            wrong.append((p, k, r, refs[(p, k)]))
    assert not wrong, wrong[:5]
    # The server is alive and still answers every reference as before.
    assert proc.poll() is None
    assert {key: ask(*key) for key in refs} == refs
    growth = (_rss(proc) - rss0) / 2**20
    print(f"\nload: {len(jobs)} requests at concurrency 32 + 10 dropped streams in {elapsed:.1f} s; "
          f"server RSS {rss0 / 2**20:.0f} MiB -> growth {growth:+.0f} MiB")
    assert growth < 1024
