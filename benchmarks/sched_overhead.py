"""What saesteer's scheduler (:mod:`saesteer.vllm.scheduling`) costs a request without a
prompt-scope ``when``: the per-call time of the one scheduler method it extends
(``_reserve_prefill_lookahead``, called once per scheduled request per step), vLLM's own against
saesteer's, interleaved (A, B, A, B, ...; medians of 7 rounds of 200,000 calls).

    PYTHONPATH=python .venv-vllm/bin/python benchmarks/sched_overhead.py

The schedulers are built without their engine (only the attribute the method reads is set) and the
requests are plain objects with the three fields the method reads.
"""

import os
import statistics
import time
import types

from vllm import SamplingParams
from vllm.v1.core.sched.scheduler import Scheduler

from saesteer.vllm.scheduling import scheduler_class

Steered = scheduler_class(False)


def bare(cls):
    s = object.__new__(cls)
    s.num_prefill_lookahead = 0
    return s


base, steered = bare(Scheduler), bare(Steered)
sp = SamplingParams(max_tokens=8)
decode = types.SimpleNamespace(num_tokens=101, num_prompt_tokens=80, sampling_params=sp)   # a decode step
prefill = types.SimpleNamespace(num_tokens=80, num_prompt_tokens=80, sampling_params=sp)   # a whole unmarked prompt
chunk = types.SimpleNamespace(num_tokens=80, num_prompt_tokens=80, sampling_params=sp)     # a chunk of an unmarked prompt
N = 200_000


def run(s, req, comp, n):
    f = s._reserve_prefill_lookahead
    t = time.perf_counter_ns()
    for _ in range(N):
        f(req, comp, n)
    return (time.perf_counter_ns() - t) / N


res = {}
for name, req, comp, n in (("decode", decode, 100, 1), ("whole prompt", prefill, 0, 80), ("prompt chunk", chunk, 0, 32)):
    a, b = [], []
    for _ in range(7):
        a.append(run(base, req, comp, n))
        b.append(run(steered, req, comp, n))
    res[name] = (statistics.median(a), statistics.median(b))
    print(f"{name:13s} vLLM {res[name][0]:6.1f} ns  saesteer {res[name][1]:6.1f} ns  "
          f"(+{res[name][1] - res[name][0]:.1f} ns per scheduled request and step)")
print("load average", os.getloadavg())
