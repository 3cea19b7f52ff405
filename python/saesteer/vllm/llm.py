"""``SteeredLLM``: ``vllm.LLM`` with saesteer's per-request SAE edits.

    >>> from saesteer.vllm import SteeredLLM
    >>> llm = SteeredLLM("path/to/model", saes={"jumprelu": "path/to/sae_dir"}, dtype="float32")
    >>> outs = llm.generate(["..."], SamplingParams(max_tokens=32, temperature=0),
    ...                     steer=[{"sae": "jumprelu", "features": [12, 40], "mode": "ablate"}])

A request carries its spec in ``SamplingParams.extra_args["saesteer"]`` (validated here, before any
request runs) and a ``cache_salt`` of its spec, so prefix caching never shares KV blocks between
different specs. A spec with a ``when`` or an ``inspect`` is reported back: each
``CompletionOutput`` of ``generate`` gets a ``saesteer`` attribute, ``{"when": [...], "inspect":
[...]}`` (see :mod:`saesteer.vllm.reports`). The engine runs saesteer's scheduler
(:mod:`saesteer.vllm.scheduling`): a spec that edits the prompt by a decision read on it gets its
prompt in one step.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from ..steering.spec import SpecError, from_spec_file, parse_specs, spec_salt
from .graphs import cuda_graph_settings
from .overrides import steered_overrides
from .reports import TAG
from .scheduling import check_scheduler_cls, guard_prompt_budget, mark, step_budget
from .sources import sae_site, site_layer, source_dir
from .worker import EXTENSION

__all__ = ["SteeredLLM", "SteeringFailed", "failed_request"]


class SteeredLLM:
    """``vllm.LLM`` with saesteer's per-request SAE edits.

    ``saes``: name -> source (an sae-lens directory, or ``organism:NAME``); default on the organism:
    its SAEs. Other keyword arguments go to ``vllm.LLM``.
    """

    def __init__(self, model: str, saes: dict[str, str] | None = None, **llm_kwargs):
        from vllm import LLM

        if saes is None:
            saes = _organism_saes(model)
        if not saes:
            raise SpecError("saes: register at least one SAE (name -> directory)")
        #: name -> the decoder layer the SAE reads (a spec's ``layer`` must match it)
        self.layers = {name: site_layer(name, sae_site(src)[1]) for name, src in saes.items()}
        # vLLM builds the model as its SAESteered class, with the edit in the (compiled) graph
        self.hf_overrides = llm_kwargs["hf_overrides"] = steered_overrides(
            model, list(self.layers.values()), llm_kwargs.get("hf_overrides"), llm_kwargs.get("trust_remote_code", False))
        llm_kwargs.setdefault("worker_extension_cls", EXTENSION)
        llm_kwargs["scheduler_cls"] = check_scheduler_cls(llm_kwargs.get("scheduler_cls"))
        cuda_graph_settings(llm_kwargs)
        self.llm = LLM(model=model, **llm_kwargs)
        engine = self.llm.llm_engine
        guard_prompt_budget(engine.input_processor, step_budget(engine.vllm_config))
        shapes = self.llm.collective_rpc("saesteer_install", args=(dict(saes),))
        self.saes = shapes[0]
        #: name -> the largest sum of a spec's value magnitudes whose edit stays finite (the workers')
        self.limits = self.llm.collective_rpc("saesteer_value_limits")[0]
        self.sources = dict(saes)

    def from_spec_file(self, spec):
        """Request specs from a steering spec file's contents (discover's ``spec.json``, one SAE or
        several), its SAEs matched to this engine's by reference or directory
        (:func:`saesteer.steering.spec.from_spec_file`); pass the result as ``steer``."""
        return from_spec_file(spec, self.sources, where="spec", resolve=source_dir)

    def shutdown(self) -> None:
        """Stop the engine core process and free its KV cache (the object is unusable afterwards)."""
        self.llm.llm_engine.engine_core.shutdown()

    def stats(self, reset: bool = False) -> dict[str, dict[str, int]]:
        """The layer hooks' counts on the first worker (see :meth:`WorkerExtension.saesteer_stats`)."""
        return self.llm.collective_rpc("saesteer_stats", args=(reset,))[0]

    def _requests(self, prompts, sampling_params, steer):
        from vllm import SamplingParams

        n = len(prompts)
        if steer is None or isinstance(steer, (dict, str)):
            steer = [steer] * n  # one spec (or none) for every prompt
        steer = list(steer)
        if len(steer) != n:
            raise SpecError(f"steer: expected one spec per prompt ({n}), got {len(steer)}")
        parsed = [parse_specs(s, self.saes, self.layers, self.limits) for s in steer]  # every spec checked before any request runs
        sp = sampling_params or SamplingParams()
        reqs, params, tags = [], [], []
        for p, specs in zip(prompts, parsed):
            if isinstance(p, str):
                prompt = {"prompt": p}
            elif isinstance(p, dict):
                prompt = dict(p)
            else:
                prompt = {"prompt_token_ids": list(p)}
            q = sp.clone()
            tag = None
            if specs:
                q.extra_args = mark(dict(q.extra_args or {}, saesteer=[sp_.to_dict() for sp_ in specs]), specs)
                prompt["cache_salt"] = spec_salt(specs)
                if any(s.reports for s in specs):
                    # A report needs every prompt token read: a salt of its own keeps the prefix
                    # cache from handing it blocks computed for another request.
                    tag = q.extra_args[TAG] = uuid.uuid4().hex
                    prompt["cache_salt"] = f"{prompt['cache_salt']}-{tag}"
            reqs.append(prompt)
            params.append(q)
            tags.append(tag)
        return reqs, params, tags

    def generate(self, prompts, sampling_params=None, steer=None, **kwargs):
        """``vllm.LLM.generate`` where prompt ``i`` is steered by ``steer[i]`` (a spec, a list of specs,
        or None; one spec for all prompts also works). Prompts are strings or token-id lists.

        A request whose spec has a ``when`` or an ``inspect`` gets its report in each of its
        ``CompletionOutput``'s ``saesteer`` attribute (see :mod:`saesteer.vllm.reports`).

        Raises :class:`SteeringFailed` (with every output in ``.outputs``) when a request's edit
        produced non-finite hidden states: the workers stopped that edit, so no other request was
        touched, and that request's output is not the steered one."""
        reqs, params, tags = self._requests(list(prompts), sampling_params, steer)
        outs = self.llm.generate(reqs, params, **kwargs)
        asked = [t for t in tags if t is not None]
        if asked:  # the reports of the requests with a when or an inspect
            reports = self.llm.collective_rpc("saesteer_reports", args=(asked,))[0]
            for out, tag in zip(outs, tags):
                if tag is not None:
                    reps = reports.get(tag, [])
                    for comp in out.outputs:
                        comp.saesteer = reps[comp.index] if comp.index < len(reps) else None
        failures = self.llm.collective_rpc("saesteer_failures")[0]
        if failures:
            bad = [i for i, o in enumerate(outs) if any(failed_request(rid, o.request_id) for rid in failures)]
            raise SteeringFailed(f"steer: the edit of prompt(s) {bad} produced non-finite hidden states and was "
                                 f"stopped ({next(iter(failures.values()))}); their outputs are not steered", outs, bad)
        return outs


def failed_request(engine_id: str, request_id: str) -> bool:
    """The engine's request id ``engine_id`` is the front end's ``request_id`` (vLLM adds a suffix
    of its own, and a server a per-choice index)."""
    return engine_id == request_id or engine_id.startswith(request_id + "-")


class SteeringFailed(RuntimeError):
    """A request's edit produced non-finite hidden states (``outputs``: every output of the call;
    ``failed``: the indices of the requests whose edit was stopped)."""

    def __init__(self, msg: str, outputs, failed: list[int]):
        super().__init__(msg)
        self.outputs, self.failed = outputs, failed


def _organism_saes(model: str) -> dict[str, str]:
    """The organism's SAEs when ``model`` is the shipped organism's model directory, else none."""
    from ..organism import read_manifest

    root, manifest, dirs = read_manifest()
    if Path(model).resolve() != (root / manifest.get("model_dir", "model")).resolve():
        return {}
    return {name: str(p) for name, p in dirs.items()}
