"""Serving throughput: what steering costs inside vLLM's continuous batching.

The variants at each concurrency, all greedy with a fixed number of new tokens (eos ignored),
through one :class:`saesteer.vllm.SteeredLLM` engine (prefix caching off, so every round computes
its prompts):

* ``none``     -- requests without a spec;
* ``saesteer`` -- every request carries a spec: one SAE, |S| random features, every position
  (the error-preserving edit through the steering core, |S| encoder columns and decoder rows);
* ``full-sae`` -- no spec; instead every worker runs the whole SAE with the same edit on every token,
  as sae-lens steers with the error term kept (:class:`saesteer.bench.generate.FullSAEHook`),
  installed on the workers by :class:`BaselineWorkerExtension` (build the engine with
  ``worker_extension_cls=BASELINE_EXTENSION``);
* ``when``     -- the ``saesteer`` spec under a prompt-scope condition that always fires (the trigger
  read and the per-request decision on top of the edit);
* ``inspect``  -- requests without an edit that ask for every token's top 16 features.

Concurrency ``c`` submits ``c`` requests at once (vLLM schedules them as one batch when
``max_num_seqs`` allows); ``c = 1`` is one request at a time.

Timing: prefill is a call with ``max_tokens=1`` (the prompt's forward and one sampled token);
generate is the call with ``new_tokens``; decode time is their difference, covering
``new_tokens - 1`` steps, and decode tokens/s = ``c * (new_tokens - 1) / decode time``. The variants
are interleaved: each round times every variant once (order rotated per round), the first round is
a warm-up, and each number is the median over the remaining rounds. Inside the first worker, the
benchmark also times each decode step (the model runner's ``execute_model`` and ``sample_tokens``)
and the edit ops in it (``step_ms``, ``edit_ms``: per step, medians over rounds): what steering adds
to a step, with less of the noise of a shared machine than tokens/s.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Sequence

from ..vllm.worker import WorkerExtension

__all__ = ["VARIANTS", "BASELINE_EXTENSION", "BaselineWorkerExtension", "bench_serve", "check_settings"]

# none: unsteered; saesteer: the clamp; full-sae: the same edit through the whole SAE; when: the
# clamp under a prompt-scope condition on 8 other features that always holds (the read, the per
# request decision and the gated edit); inspect: the top-16 features of every token, no edit
VARIANTS = ("none", "saesteer", "full-sae", "when", "inspect")
BASELINE_EXTENSION = "saesteer.bench.serve.BaselineWorkerExtension"


class BaselineWorkerExtension(WorkerExtension):
    """saesteer's worker extension plus the benchmark's baseline: :meth:`saesteer_full_sae` runs an
    SAE whole on every token instead of the requests' specs."""

    def saesteer_full_sae(self, name: str, spec: dict | None) -> None:
        """Run SAE ``name`` whole on every token with ``spec``'s edit (features, mode, value), as
        sae-lens steers with the error term kept (two full encodes and decodes), ignoring the
        requests' own specs; ``None`` switches it off."""
        from ..steering.spec import parse_specs
        from .generate import FullSAEHook

        if not hasattr(self, "full_sae_hooks"):
            self.full_sae_hooks = {}
        full = self.full_sae_hooks
        if spec is None:
            full.pop(name, None)
            return
        (parsed,) = parse_specs(dict(spec, sae=name), self.saesteer_shapes())
        full[name] = FullSAEHook(self.saesteer_sae(name), parsed.intervention)

    def edit_layer(self, names, hidden, residual, positions):
        t0 = time.perf_counter()
        hooks = getattr(self, "full_sae_hooks", {})
        full = [hooks[n] for n in names if n in hooks]
        if not full:
            y = super().edit_layer(names, hidden, residual, positions)
        else:
            y = hidden if residual is None else hidden + residual
            for hook in full:
                y = hook.steer(y)
        timer = getattr(self, "_bench_timer", None)
        if timer is not None:
            timer.edit += time.perf_counter() - t0
        return y

    def saesteer_bench_timing(self) -> dict:
        """The worker's time since the last call (the first call starts the clock): ``steps`` and
        ``step_s`` (the model runner's ``execute_model`` + ``sample_tokens`` of decode steps: one
        token per request, wall time), ``edit_s`` (the edit ops' wall time in those steps), and the
        same for all steps (``all_*``)."""
        timer = getattr(self, "_bench_timer", None)
        if timer is None:
            timer = self._bench_timer = _StepTimer(self.model_runner)
        return timer.take()


class _StepTimer:
    """Wall time of a model runner's steps and of the edits in them (host work included: on the CPU
    the kernels run in the caller; on a GPU the steps' host time, which is what steering adds)."""

    def __init__(self, runner):
        self.edit = 0.0
        self.totals = dict(steps=0, step_s=0.0, edit_s=0.0, all_steps=0, all_step_s=0.0, all_edit_s=0.0)
        self._t0 = self._decode = None
        run, sample = runner.execute_model, runner.sample_tokens

        def execute_model(scheduler_output, *args, **kwargs):
            self._t0 = time.perf_counter()
            self.edit = 0.0
            n = scheduler_output.num_scheduled_tokens
            self._decode = scheduler_output.total_num_scheduled_tokens == len(n)
            out = run(scheduler_output, *args, **kwargs)
            if out is not None:  # no separate sampling step
                self._close()
            return out

        def sample_tokens(*args, **kwargs):
            out = sample(*args, **kwargs)
            self._close()
            return out

        runner.execute_model, runner.sample_tokens = execute_model, sample_tokens

    def _close(self) -> None:
        if self._t0 is None:
            return
        dt, t = time.perf_counter() - self._t0, self.totals
        t["all_steps"] += 1
        t["all_step_s"] += dt
        t["all_edit_s"] += self.edit
        if self._decode:
            t["steps"] += 1
            t["step_s"] += dt
            t["edit_s"] += self.edit
        self._t0 = None

    def take(self) -> dict:
        out = dict(self.totals)
        for k in self.totals:
            self.totals[k] = 0 if k.endswith("steps") else 0.0
        return out


def _prompts(n: int, length: int, vocab: int, special: set[int], rng: random.Random) -> list[list[int]]:
    pool = [t for t in range(vocab) if t not in special]
    return [[rng.choice(pool) for _ in range(length)] for _ in range(n)]


def check_settings(*, concurrency: Sequence[int], features: int, prompt_len: int, new_tokens: int,
                   variants: Sequence[str], rounds: int) -> None:
    """Refuse settings that cannot be measured, before any engine starts (the message names the argument)."""
    if rounds < 2:
        raise ValueError(f"rounds: expected >= 2 (the first is a warm-up), got {rounds}")
    if new_tokens < 2:
        raise ValueError(f"new_tokens: expected >= 2 (one prefill token and at least one decode step), got {new_tokens}")
    if prompt_len < 1:
        raise ValueError(f"prompt_len: expected >= 1, got {prompt_len}")
    if features < 1:
        raise ValueError(f"features: expected >= 1, got {features}")
    bad = [c for c in concurrency if c < 1]
    if bad or not concurrency:
        raise ValueError(f"concurrency: expected positive request counts, got {list(concurrency)}")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise ValueError(f"variants: unknown {unknown or 'empty list'}; expected some of {', '.join(VARIANTS)}")


def _full_sae(llm, name: str, spec: dict | None) -> None:
    """Switch the full-SAE baseline of SAE ``name`` on every worker (off for ``spec=None``)."""
    llm.llm.collective_rpc("saesteer_full_sae", args=(name, spec))


def bench_serve(llm, sae_name: str, *, concurrency: Sequence[int] = (1, 32), features: int = 32,
                prompt_len: int = 32, new_tokens: int = 32, variants: Sequence[str] = VARIANTS,
                mode: str = "clamp", value: float = 5.0, rounds: int = 4, seed: int = 0,
                progress: bool = True) -> tuple[list[dict], dict]:
    """Time ``variants`` on ``llm`` (a :class:`~saesteer.vllm.SteeredLLM`, prefix caching off) with
    SAE ``sae_name``. Returns one row per (variant, concurrency) and an info dict."""
    import vllm
    from tqdm.auto import tqdm

    check_settings(concurrency=concurrency, features=features, prompt_len=prompt_len, new_tokens=new_tokens,
                   variants=variants, rounds=rounds)
    if sae_name not in llm.saes:
        raise ValueError(f"sae: unknown SAE {sae_name!r}; registered: {sorted(llm.saes)}")
    d_sae = llm.saes[sae_name]
    if not 1 <= features <= d_sae:
        raise ValueError(f"features: expected 1..{d_sae} (the SAE's width), got {features}")

    rng = random.Random(seed)
    feats = sorted(rng.sample(range(d_sae), features))
    spec = {"sae": sae_name, "features": feats, "mode": mode, "positions": "all"}
    if mode != "ablate":
        spec["value"] = value
    trigger = sorted(rng.sample(sorted(set(range(d_sae)) - set(feats)), min(8, d_sae - features))) or feats[:1]
    specs = {"saesteer": spec,
             # activations are >= 0, so a threshold below 0 always fires: the edit is the clamp's
             "when": dict(spec, when={"sae": sae_name, "features": trigger, "threshold": -1.0, "scope": "prompt"}),
             "inspect": {"sae": sae_name, "inspect": {"sae": sae_name, "k": min(16, d_sae), "positions": "all"}}}
    tok = llm.llm.get_tokenizer()
    special = set(getattr(tok, "all_special_ids", []) or [])
    vocab = llm.llm.llm_engine.model_config.get_vocab_size()
    prompts = {c: _prompts(c, prompt_len, vocab, special, rng) for c in concurrency}

    def run(variant: str, c: int, max_tokens: int):
        sp = vllm.SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
        steer = specs.get(variant)
        outs = []
        t0 = time.perf_counter()
        if c == 1:
            for p in prompts[c]:
                outs += llm.generate([p], sp, steer=steer, use_tqdm=False)
        else:
            outs = llm.generate(prompts[c], sp, steer=steer, use_tqdm=False)
        dt = time.perf_counter() - t0
        return dt, [list(o.outputs[0].token_ids) for o in outs]

    times = {(v, c): {"prefill": [], "generate": [], "step": [], "edit": []} for v in variants for c in concurrency}
    tokens: dict[tuple[str, int], list[list[int]]] = {}
    bar = tqdm(total=rounds * len(variants) * len(concurrency), desc="bench serve", disable=not progress)
    try:
        for r in range(rounds):
            order = list(variants[r % len(variants):]) + list(variants[: r % len(variants)])
            for c in concurrency:
                for v in order:
                    _full_sae(llm, sae_name, spec if v == "full-sae" else None)
                    t_p, _ = run(v, c, 1)
                    _timing(llm)  # restart the worker's clock
                    t_g, toks = run(v, c, new_tokens)
                    w = _timing(llm)
                    tokens[(v, c)] = toks
                    if r > 0:
                        times[(v, c)]["prefill"].append(t_p)
                        times[(v, c)]["generate"].append(t_g)
                        if w["steps"]:
                            times[(v, c)]["step"].append(w["step_s"] / w["steps"])
                            times[(v, c)]["edit"].append(w["edit_s"] / w["steps"])
                    bar.update()
    finally:
        _full_sae(llm, sae_name, None)
        bar.close()

    rows = []
    for c in concurrency:
        for v in variants:
            t = times[(v, c)]
            t_p, t_g = statistics.median(t["prefill"]), statistics.median(t["generate"])
            row = dict(variant=v, concurrency=c, prefill_ms=t_p * 1e3, prefill_tok_s=c * prompt_len / t_p,
                       generate_ms=t_g * 1e3, generate_p20_ms=_quantile(t["generate"], 0.2) * 1e3,
                       generate_p80_ms=_quantile(t["generate"], 0.8) * 1e3,
                       decode_tok_s=c * (new_tokens - 1) / max(t_g - t_p, 1e-9), total_tok_s=c * new_tokens / t_g)
            if t["step"]:  # in the worker (rank 0): a decode step's wall time, and its edits' share
                row.update(step_ms=statistics.median(t["step"]) * 1e3, edit_ms=statistics.median(t["edit"]) * 1e3)
            if v != "none" and ("none", c) in tokens:
                row["changed_vs_none"] = 1 - _agree(tokens[(v, c)], tokens[("none", c)])
            if v == "saesteer" and ("full-sae", c) in tokens:
                row["agree_full_sae"] = _agree(tokens[(v, c)], tokens[("full-sae", c)])
            rows.append(row)
    for row in rows:
        base = next((r for r in rows if r["variant"] == "none" and r["concurrency"] == row["concurrency"]), None)
        if base is not None:
            row["decode_vs_none"] = row["decode_tok_s"] / base["decode_tok_s"]
            row["total_vs_none"] = row["total_tok_s"] / base["total_tok_s"]
    info = dict(sae=sae_name, d_sae=d_sae, features=feats, mode=mode, value=None if mode == "ablate" else value,
                prompt_len=prompt_len, new_tokens=new_tokens, rounds=rounds, vllm=vllm.__version__)
    return rows, info


def _timing(llm) -> dict:
    """The first worker's step timing since the last call (:meth:`BaselineWorkerExtension.saesteer_bench_timing`)."""
    return llm.llm.collective_rpc("saesteer_bench_timing")[0]


def _agree(a: list[list[int]], b: list[list[int]]) -> float:
    """The share of generated tokens (position by position) that two runs have in common."""
    return sum(x == y for p, q in zip(a, b) for x, y in zip(p, q)) / sum(len(p) for p in a)


def _quantile(xs: Sequence[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]
