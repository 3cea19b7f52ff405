"""The worker side of steering: :class:`WorkerExtension` (vLLM's ``worker_extension_cls``), the
per-layer edit it registers (:class:`LayerHook`) and the per-token layout of a batch.

Every worker (every tensor-parallel rank) gets the extension's methods;
:meth:`WorkerExtension.saesteer_install` loads the SAEs there and registers the edit of each
decoder layer an SAE reads. vLLM's decoder layers return ``(hidden, residual)`` and defer the
residual add to the next fused norm, so the edit rebuilds ``x = hidden + residual``, edits it with
:class:`saesteer.steering.SAESteerer` (one row index per token of the flattened batch, from the
model runner's ``query_start_loc`` and its requests), and returns ``(x', 0)``: the next norm reads
``x' + 0``. Positions (``prompt`` / ``generated``) come from each token's absolute position against
its request's prompt length, so they hold across chunked prefill and recompute.

A request whose spec has a ``when`` or an ``inspect`` is read at its SAE's layer before the edits
there (:mod:`saesteer.vllm.reports`: one state per request, its conditions gating its edits here and
downstream); a batch without such requests has no reads and takes the plain path.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

from ..steering import SAESteerer
from ..steering.spec import SpecError, bos_token_mask, parse_specs
from .graphs import check_graph_mode
from .model import EDITS
from .reports import TAG, LayerReads, RequestState, child_index, choice_key, prompt_index
from .sources import read_sae, site_layer

__all__ = ["EXTENSION", "WorkerExtension", "LayerHook"]

EXTENSION = "saesteer.vllm.WorkerExtension"  # the name vLLM imports (re-exported by the package)
_log = logging.getLogger("saesteer.vllm")


class LayerHook:
    """The edit of one decoder layer: every registered SAE at that layer, in order. It runs as the
    body of the graph op of a steered model class (:mod:`saesteer.vllm.model`), or as a plain
    forward hook on an eager model built without it. It talks to its worker through one method,
    :meth:`WorkerExtension.edit_layer`."""

    def __init__(self, worker: "WorkerExtension", names: list[str]):
        self.worker = worker
        self.names = names

    def edit(self, hidden, residual, positions):
        """The edited ``hidden + residual``, or None when nothing in this forward edits this layer."""
        return self.worker.edit_layer(self.names, hidden, residual, positions)

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
        self._saesteer_bos = getattr(runner.model_config.hf_config, "bos_token_id", None)
        self._saesteer_limits: dict[str, float] = {}
        self._saesteer_failed: dict[str, str] = {}  # request id -> why its edit was stopped
        self._saesteer_states: dict[str, RequestState] = {}  # request id -> its conditions / inspections
        self._saesteer_tags: dict[str, list[str]] = {}  # report tag -> its request ids
        self._saesteer_forward = 0
        self._saesteer_fwd_ctx = None
        self._saesteer_layers: dict[str, int] = {}
        model_max = torch.finfo(runner.model_config.dtype).max
        #: an edited row beyond this magnitude (or not finite) fails its request
        self._saesteer_bound = stream_bound(model_max, runner.model_config.get_hidden_size())
        by_layer: dict[int, list[str]] = {}
        shapes = {}
        for name, src in saes.items():
            sae = read_sae(src, device)
            layer = site_layer(name, sae.hook_name)
            if not 0 <= layer < len(layers):
                raise SpecError(f"--sae {name}: layer {layer} is out of range (the model has {len(layers)} layers)")
            self._saesteer[name] = SAESteerer(sae, device)
            self._saesteer_layers[name] = layer
            by_layer.setdefault(layer, []).append(name)
            shapes[name] = sae.d_sae
            self._saesteer_limits[name] = value_limit(sae, model_max)
            self._saesteer_stats[name] = {"forwards": 0, "steered_forwards": 0, "edited_tokens": 0, "nonfinite_tokens": 0}
        check_graph_mode(getattr(runner.vllm_config, "compilation_config", None))
        graph_layers = getattr(model, "saesteer_layers", None)  # set by a SAESteered model class
        if graph_layers is not None:
            missing = sorted(set(by_layer) - set(graph_layers))
            if missing:
                raise SpecError(f"--sae: layers {missing} were not built with saesteer's graph hooks "
                                f"(the model has them on {list(graph_layers)}); pass their SAEs when the engine starts")
            for i, names in by_layer.items():
                EDITS[i] = LayerHook(self, names)
            self._saesteer_handles = []
        else:
            mode = getattr(getattr(runner.vllm_config, "compilation_config", None), "mode", 0)
            if int(mode or 0) != 0:
                raise SpecError("the model was compiled without saesteer's graph hooks, so a hook added now would never "
                                "run: build the engine with SteeredLLM / saesteer serve (they set hf_overrides), or enforce_eager=True")
            self._saesteer_handles = [layers[i].register_forward_hook(LayerHook(self, names)) for i, names in by_layer.items()]
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

    def saesteer_value_limits(self) -> dict[str, float]:
        """Per SAE name: the largest sum of a spec's value magnitudes (one per feature) whose edit
        stays finite in the SAE's and the model's dtypes (:func:`value_limit`); front ends refuse
        larger values (``parse_specs(..., limits=...)``)."""
        return dict(self._saesteer_limits)

    def saesteer_failures(self, pop: bool = True) -> dict[str, str]:
        """Requests whose edit produced non-finite hidden states (request id -> message). Their edit
        was stopped at that step and their tokens carried on unedited, so nothing non-finite entered
        the KV cache; a front end reports each as failed. ``pop`` forgets them after reading."""
        out = dict(self._saesteer_failed)
        if pop:
            self._saesteer_failed.clear()
        return out

    def saesteer_reports(self, tags: list) -> dict:
        """The reports of the requests tagged ``tags`` (their ``extra_args["saesteer_tag"]``): per
        tag, a list with one entry per prompt and completion, in the order of a completions
        response's choices (prompt by prompt; ``n`` > 1: completion index within), each ``{"when":
        [...], "inspect": [...]}`` (see :mod:`saesteer.vllm.reports`). An item ``(tag, prompt,
        completion)`` asks for one choice's report alone (a stream whose other choices go on), keyed
        ``"tag/prompt/completion"``. Reports are forgotten once read."""
        out = {}
        for item in tags:
            tag, want = (item, None) if isinstance(item, str) else (item[0], (int(item[1]), int(item[2])))
            rids = self._saesteer_tags.get(tag, [])
            take = [r for r in rids if want is None or _choice(r) == want]
            rest = [r for r in rids if r not in take]
            if rest:
                self._saesteer_tags[tag] = rest
            else:
                self._saesteer_tags.pop(tag, None)
            states = sorted(((_choice(r), self._saesteer_states.pop(r, None)) for r in take), key=lambda t: t[0])
            reps = [st.report() for _, st in states if st is not None]
            if want is None:
                out[tag] = reps
            else:
                out[choice_key(tag, *want)] = reps[0] if reps else None
        return out

    def saesteer_progress(self, items: list) -> dict:
        """For each ``(tag, prompt, completion)``: what its request read since the previous call
        (:meth:`saesteer.vllm.reports.RequestState.progress`; None: nothing new, or not scheduled
        yet), keyed ``"tag/prompt/completion"``. The report stays for :meth:`saesteer_reports`."""
        out = {}
        for tag, p, c in items:
            want = (int(p), int(c))
            rid = next((r for r in self._saesteer_tags.get(tag, ()) if _choice(r) == want), None)
            st = None if rid is None else self._saesteer_states.get(rid)
            out[choice_key(tag, p, c)] = None if st is None else st.progress()
        return out

    def saesteer_shapes(self) -> dict[str, int]:
        """The installed SAEs: name -> d_sae."""
        return {n: st.d_sae for n, st in self._saesteer.items()}

    def saesteer_sae(self, name: str):
        """The installed SAE ``name`` (a :class:`saesteer.SAE`)."""
        return self._saesteer[name].sae

    def edit_layer(self, names: list[str], hidden, residual, positions):
        """The edit of a decoder layer read by the SAEs ``names`` (in order) in the current forward:
        the edited ``hidden + residual``, or None when no token of the batch is edited there."""
        for name in names:
            self._saesteer_stats[name]["forwards"] += 1
        step = self._step_plan()
        if step is None:
            return None
        edits = any(n in step.per_sae for n in names)
        reads = step.reads and any(n in step.reads for n in names)
        if not edits and not reads:
            return None
        x = hidden if residual is None else hidden + residual
        if reads:  # conditions and inspections read the stream before this layer's edits
            self._read(names, x, step)
            if not edits:
                return None
        y = x
        for name in names:
            y = self._apply(name, y, positions, step)
        if y is x:
            return None
        bad = ~(y[: step.n_real].abs().amax(dim=-1) <= self._saesteer_bound)  # NaN compares False
        if bool(bad.any()):
            y = self._contain(names, x, y, bad.cpu().numpy(), step)
        return y

    def _contain(self, names, x, y, bad, step: "_Batch"):
        """Stop the edit of every request with a non-finite edited token, or one so large that the
        next layer's norm would overflow (``bad``, per real token):
        all its tokens of this forward take the unedited ``x``, it is edited no more, and it is
        recorded as failed. Nothing non-finite reaches the next layers, so none of it is written to
        the KV cache, whose blocks later go to other requests."""
        failed = {step.req_ids[i] for i in np.unique(step.token_req[bad])}
        rows = np.isin(step.token_req, list(failed))
        keep = torch.from_numpy(rows).to(y.device)
        y = y.clone()
        y[: step.n_real][keep] = x[: step.n_real][keep]
        for name in names:
            self._saesteer_stats[name]["nonfinite_tokens"] += int(np.count_nonzero(bad))
        for rid in failed:
            msg = (f"saesteer: the edit of request {rid} on SAE {' / '.join(names)} produced non-finite hidden "
                   "states (a value too large for the model's dtype?); the request was stopped")
            _log.error(msg)
            if len(self._saesteer_failed) > 4096:
                self._saesteer_failed.clear()
            self._saesteer_failed[rid] = msg
            self._saesteer_specs[rid] = ()  # edited no more
        self._saesteer_batches.clear()  # layouts that held its specs
        self._saesteer_step = (None, None)  # the next hooked layer of this forward builds its layout anew
        return y

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
        if self._saesteer_fwd_ctx is not ctx:  # a new forward (not a layout rebuilt within one)
            self._saesteer_fwd_ctx = ctx
            self._saesteer_forward += 1
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
        states = [self._saesteer_states.get(rid) for rid in req_ids]
        reads: dict[str, LayerReads] = {}
        for r, (req_specs, st) in enumerate(zip(specs, states)):
            if st is None:
                continue
            for j, c in st.conds.items():
                reads.setdefault(c.cond.sae, LayerReads()).conds.setdefault(c.cond, []).append((r, c))
            for j, ins in st.inspects.items():
                lr = reads.setdefault(ins.spec.sae, LayerReads())
                lr.inspects.append((r, ins))
                lr.kmax = max(lr.kmax, ins.spec.k)
        per_sae: dict[str, list[_SAEBatch]] = {}
        for name in self._saesteer:
            # A request's k-th edit on this SAE goes to pass k: the passes run in order, each on the
            # previous one's output, as several edits at one hook point chain on HF. Monitors and
            # inspections edit nothing and take no pass.
            mine = [[(j, s) for j, s in enumerate(req_specs) if s.sae == name and s.edits] for req_specs in specs]
            for k in range(max(map(len, mine), default=0)):
                ivs: dict = {}  # distinct interventions of this pass -> plan row
                req_row, req_pos, req_skip, gates = [], [], [], []
                for r, req_specs in enumerate(mine):
                    j, s = req_specs[k] if k < len(req_specs) else (None, None)
                    req_row.append(-1 if s is None else ivs.setdefault(s.intervention, len(ivs)))
                    req_pos.append("all" if s is None else s.positions)
                    req_skip.append(s is not None and s.skip_bos)
                    if s is not None and s.when is not None:
                        gates.append((r, states[r].conds[j]))
                plan_key = (name, tuple(ivs))
                plan = self._saesteer_plans.get(plan_key)
                if plan is None:
                    if len(self._saesteer_plans) > 1024:
                        self._saesteer_plans.clear()
                    plan = self._saesteer_plans[plan_key] = self._saesteer[name].plan(list(ivs))
                in_prompt = np.array([p != "generated" for p in req_pos])[token_req]
                in_generated = np.array([p != "prompt" for p in req_pos])[token_req]
                skip = np.array(req_skip, dtype=bool)[token_req]
                per_sae.setdefault(name, []).append(
                    _SAEBatch(plan, np.array(req_row, dtype=np.int64)[token_req], in_prompt, in_generated, skip, gates))
        if not per_sae and not reads:
            return None
        return _Batch(token_req.shape[0], prompt_lens[token_req], first_ids[token_req], per_sae, req_ids, token_req,
                      reads, np.asarray(qsl, dtype=np.int64).copy(), prompt_lens)

    def _parsed(self, req_id: str, state) -> tuple:
        """The request's parsed specs, parsed once per request (the client validated them already)."""
        got = self._saesteer_specs.get(req_id)
        if got is None:
            if len(self._saesteer_specs) > 4096:  # finished requests: forget them
                self._saesteer_specs.clear()
            extra = getattr(state.sampling_params, "extra_args", None) or {}
            try:
                got = parse_specs(extra.get("saesteer"), self.saesteer_shapes(), self._saesteer_layers,
                                  limits=self._saesteer_limits)
            except SpecError as e:
                # Only a client that bypasses SteeredLLM and saesteer serve (both validate at
                # admission) gets here. Raising would take the engine down with every request in
                # flight, so this request runs unedited and the error is logged.
                _log.error("request %s: its saesteer spec is invalid and was not applied: %s", req_id, e)
                got = ()
            self._saesteer_specs[req_id] = got
            if any(s.reports for s in got):
                self._track(req_id, extra.get(TAG), got)
        return got

    def _track(self, req_id: str, tag, specs) -> None:
        """Keep a request's conditions and inspections (and its report, under ``tag``) by request id."""
        if req_id in self._saesteer_states:
            return
        while len(self._saesteer_states) > 4096:  # reports nobody collected: the oldest go first
            old = next(iter(self._saesteer_states))
            st = self._saesteer_states.pop(old)
            self._saesteer_tags.pop(st.tag, None)
        tag = tag if isinstance(tag, str) else None
        self._saesteer_states[req_id] = RequestState(tag, specs)
        if tag is not None:
            self._saesteer_tags.setdefault(tag, []).append(req_id)

    def _read(self, names: list[str], x: torch.Tensor, step: "_Batch") -> None:
        """Read the conditions and inspections of ``names`` on ``x`` (the stream before the edits
        there). Positions and token ids come from the runner's host-side batch, so no device sync
        is needed to place the tokens."""
        n_real = step.n_real
        if step.forward != self._saesteer_forward:
            batch = self.model_runner.input_batch
            n = len(step.req_ids)
            start = batch.num_computed_tokens_cpu[:n].astype(np.int64)
            offset = np.arange(n_real, dtype=np.int64) - step.starts[step.token_req]
            step.pos = start[step.token_req] + offset
            step.tok = batch.token_ids_cpu[step.token_req, step.pos] if any(r.inspects for r in step.reads.values()) else None
            bos = bos_token_mask(step.first_ids, step.pos, self._saesteer_bos)
            step.valid = ~bos  # conditions leave out BOS under skip_bos, as the HF hooks do
            step.forward = self._saesteer_forward
        xr = x[:n_real]
        for name in names:
            lr = step.reads.get(name)
            if lr is not None:
                lr.read(self._saesteer[name].sae, xr, step.pos, step.starts, step.req_prompt_lens,
                        step.valid, step.tok, self._saesteer_forward)

    def _apply(self, name: str, x: torch.Tensor, positions, step: "_Batch") -> torch.Tensor:
        for sb in step.per_sae.get(name, ()):
            x = self._apply_pass(name, sb, x, positions, step)
        return x

    def _apply_pass(self, name: str, sb: "_SAEBatch", x: torch.Tensor, positions, step: "_Batch") -> torch.Tensor:
        steerer = self._saesteer[name]
        N, n_real = x.shape[0], step.n_real
        bound = sb.bound.get(N)
        if bound is None:  # N > n_real when the engine pads the batch (CUDA graph sizes)
            rows = np.full(N, -1, dtype=np.int64)
            rows[:n_real] = sb.rows
            bound = sb.bound[N] = steerer.bind(sb.plan, torch.from_numpy(rows))
        mask = None
        keep = sb.edited
        read_now = step.forward == self._saesteer_forward  # conditions read in this forward: host positions known
        if sb.needs_mask and (positions is not None or read_now):
            pos = step.pos if read_now else positions[:n_real].cpu().numpy()
            keep = keep & np.where(pos >= step.prompt_lens, sb.in_generated, sb.in_prompt)
            if sb.any_skip:
                keep &= ~(sb.skip & bos_token_mask(step.first_ids, pos, self._saesteer_bos))
            if sb.gates:  # conditions: read earlier in this forward (here or upstream)
                keep &= self._gated(sb, step)
            m = np.zeros(N, dtype=bool)
            m[:n_real] = keep
            mask = torch.from_numpy(m).to(x.device, non_blocking=True)
        stats = self._saesteer_stats[name]
        stats["steered_forwards"] += 1
        stats["edited_tokens"] += int(np.count_nonzero(keep))
        return steerer.apply_bound(x, bound, token_mask=mask)

    def _gated(self, sb: "_SAEBatch", step: "_Batch") -> np.ndarray:
        """Per real token: whether its request's condition lets this pass edit it. A condition not
        read in this forward (which validation rules out) edits nothing: raising here would take the
        engine down with every request in flight."""
        fwd = self._saesteer_forward
        oks = [cs.ok if cs.forward == fwd else False for _, cs in sb.gates]
        if all(type(o) is bool for o in oks):  # prompt scope: one decision per request
            req_ok = np.ones(len(step.req_ids), dtype=bool)
            req_ok[sb.gate_req] = oks
            return req_ok[step.token_req]
        out = np.ones(step.n_real, dtype=bool)
        for (r, _), ok in zip(sb.gates, oks):  # token scope: a decision per token
            out[step.starts[r]:step.starts[r + 1]] &= ok
        return out


def _choice(req_id: str) -> tuple[int, int]:
    """An engine request's place among its front-end request's choices: (prompt, completion)."""
    return prompt_index(req_id), child_index(req_id)


def stream_bound(dtype_max: float, d_model: int) -> float:
    """The largest residual-stream magnitude an edit may leave: the next RMSNorm squares every
    coordinate and sums ``d_model`` of them, which must stay finite (with a margin of 16)."""
    return math.sqrt(dtype_max / d_model) / 4


def value_limit(sae, model_max: float) -> float:
    """The largest sum of value magnitudes ``sum_i |v_i|`` (one per edited feature) for which the
    edit ``sum_i (v_i - f_i) * W_dec[i]`` keeps every coordinate within :func:`stream_bound` of the
    SAE's and the model's dtypes (``model_max``): each coordinate moves by at most
    ``sum_i |v_i| * max|W_dec|`` besides the features' own terms, which the other half covers."""
    w = float(sae.W_dec.detach().abs().max())
    top = stream_bound(min(torch.finfo(sae.W_dec.dtype).max, model_max), sae.d_in) / 2
    return top / max(w, 1e-30)


class _SAEBatch:
    """One SAE's part of a batch layout, per real token: its plan row (-1: none), whether its spec
    edits prompt tokens and generated tokens (``positions``), its ``skip_bos``; and the plan bound
    per padded batch size N."""

    __slots__ = ("plan", "rows", "edited", "in_prompt", "in_generated", "skip", "needs_mask", "any_skip", "bound", "gates",
                 "gate_req")

    def __init__(self, plan, rows, in_prompt, in_generated, skip, gates=()):
        self.plan, self.rows, self.in_prompt, self.in_generated, self.skip = plan, rows, in_prompt, in_generated, skip
        self.edited = rows >= 0
        self.any_skip = bool(skip.any())
        self.gates = list(gates)  # (request index, ConditionState) of the requests whose edit is conditional
        self.gate_req = np.array([r for r, _ in self.gates], dtype=np.int64)
        self.needs_mask = self.any_skip or bool(self.gates) or not bool((in_prompt & in_generated).all())
        self.bound: dict[int, object] = {}


class _Batch:
    """The per-token layout of one batch composition (requests and their token counts); ``per_sae``:
    name -> that SAE's passes (a request's k-th spec on it is in pass k)."""

    __slots__ = ("n_real", "prompt_lens", "first_ids", "per_sae", "req_ids", "token_req", "reads", "starts",
                 "req_prompt_lens", "forward", "pos", "tok", "valid")

    def __init__(self, n_real, prompt_lens, first_ids, per_sae, req_ids, token_req, reads=None, starts=None,
                 req_prompt_lens=None):
        self.n_real, self.prompt_lens, self.first_ids, self.per_sae = n_real, prompt_lens, first_ids, per_sae
        self.req_ids, self.token_req = req_ids, token_req  # the batch's requests; each real token's request
        self.reads = reads or {}  # SAE name -> its conditions and inspections (LayerReads)
        self.starts, self.req_prompt_lens = starts, req_prompt_lens  # per request: first token, prompt length
        self.forward = -1  # the forward whose host-side positions (pos), token ids and BOS-free mask are below
        self.pos = self.tok = self.valid = None
