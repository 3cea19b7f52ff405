"""Per-request conditions (``when``) and inspection (``inspect``) in the worker, and the reports they
hand back to the front end.

A request whose spec carries a ``when`` or an ``inspect`` gets one :class:`RequestState` in the
worker, kept by request id across the forwards of its life: prompt chunks (chunked prefill), decode
steps and a recompute after preemption. The decision code is the engine-neutral
:mod:`saesteer.steering.condition` (the HF hooks' own): a prompt-scope condition keeps a
:class:`~saesteer.steering.condition.PromptScore` per request, accumulated over the prompt's
chunks and final once the prompt's last token is read (a recompute after preemption keeps it;
:mod:`saesteer.vllm.scheduling` puts the prompt of a spec that edits prompt tokens by it in one
step); a token-scope condition decides each token from its own score.

The front end collects the reports by the request's tag (``extra_args["saesteer_tag"]``, set by
:class:`saesteer.vllm.requests.ServerSteering` and :class:`saesteer.vllm.SteeredLLM`) through
:meth:`saesteer.vllm.WorkerExtension.saesteer_reports` once the request's output is complete.
"""

from __future__ import annotations

import math
import re

import numpy as np
import torch

from .. import ops
from ..steering.condition import Condition, PromptScore, token_scores
from ..steering.spec import InspectSpec, SteerSpec

__all__ = ["RequestState", "ConditionState", "InspectState", "InspectChunk", "child_index", "prompt_index", "choice_key", "TAG"]

TAG = "saesteer_tag"  # the extra_args key of a request's report tag
_CHILD = re.compile(r"^(\d+)_")  # vLLM names the children of an n > 1 request "{index}_{parent id}"
# vLLM's completions server names prompt i of a request "cmpl-{id}-{i}", and its engine adds "-" and
# 8 random hex digits ("{index}_" in front for a child of an n > 1 request)
_PROMPT = re.compile(r"^(?:\d+_)?cmpl-.*-(\d+)-[0-9a-f]{8}$")


def child_index(req_id: str) -> int:
    """The index of an engine request among its parent's ``n`` completions (0 for a lone request)."""
    m = _CHILD.match(req_id)
    return int(m.group(1)) if m else 0


def choice_key(tag: str, prompt: int, completion: int) -> str:
    """The key of one choice's report in the worker's answers: ``"tag/prompt/completion"``."""
    return f"{tag}/{prompt}/{completion}"


def prompt_index(req_id: str) -> int:
    """The index of an engine request's prompt among the prompts of its completions request (0 for
    any other request: a chat request, or one of SteeredLLM's, which each have a tag of their own)."""
    m = _PROMPT.match(req_id)
    return int(m.group(1)) if m else 0


class ConditionState:
    """One request's condition: its decision so far and, after each read, ``ok``: which of the
    request's tokens in the current forward the gated edit may touch."""

    def __init__(self, cond: Condition, skip_bos: bool):
        self.cond = cond
        self.skip_bos = skip_bos
        self.prompt: PromptScore | None = None
        self.token_scores: dict[int, float] = {}  # token scope: position -> score (a recompute overwrites)
        self.ok: np.ndarray | bool | None = None
        self.forward = -1
        self.decision = False  # prompt scope: the decision after the prompt tokens read so far
        self.decided = False  # prompt scope: every prompt token was read; the decision is final

    def needs_scores(self, pos: np.ndarray, prompt_len: int) -> bool:
        """Whether this forward's tokens (``pos``) must be scored: a prompt-scope decision reads only
        prompt tokens, once, so a decode step (or a recompute) costs it nothing."""
        return self.cond.scope == "token" or (not self.decided and bool(pos[0] < prompt_len))

    def update(self, scores: np.ndarray | None, pos: np.ndarray, valid: np.ndarray, prompt_len: int, forward: int) -> None:
        """Take this forward's scores of the request's tokens at positions ``pos`` (``valid``: not BOS
        under ``skip_bos``; None: no token to score, a decode step of a prompt-scope condition)."""
        if not self.skip_bos:
            valid = np.ones_like(valid)
        if self.cond.scope == "prompt":
            if self.prompt is None or (pos[0] == 0 and not self.decided):
                # the first chunk, or a recompute of a prompt that was not read to its end
                self.prompt = PromptScore(self.cond, 1, "cpu")
                self.decision = False
            if scores is not None:
                in_prompt = valid & (pos < prompt_len)
                self.prompt.update(torch.from_numpy(scores)[None], torch.from_numpy(in_prompt)[None])
                self.decision = bool(self.prompt.fired[0])
            # A recompute after preemption keeps the decision read the first time (the tokens
            # generated since depend on it).
            self.decided = self.decided or bool(pos[-1] >= prompt_len - 1)
            self.ok = self.decision  # one bool for all the request's tokens (a decode step reads nothing)
        else:
            fired = self.cond.fires(torch.from_numpy(scores)).numpy() & valid
            for p, s, v in zip(pos.tolist(), scores.tolist(), valid.tolist()):
                if v:
                    self.token_scores[p] = s
            self.ok = fired
        self.forward = forward

    @property
    def known(self) -> bool:
        """Whether there is a decision to report: the prompt was read (prompt scope), or a token was."""
        return self.decided if self.cond.scope == "prompt" else bool(self.token_scores)

    def report(self) -> dict:
        out: dict = {"condition": self.cond.to_dict()}
        if self.cond.scope == "prompt":
            s = math.nan if self.prompt is None else float(self.prompt.score[0])
            out.update(score=None if math.isnan(s) else s, fired=bool(s > self.cond.threshold))
        else:
            scores = list(self.token_scores.values())
            fired = sum(1 for s in scores if s > self.cond.threshold)
            out.update(score=max(scores) if scores else None, fired=fired > 0, fired_tokens=fired)
        return out


class InspectChunk:
    """One forward's inspection results at one SAE, shared by the requests read in it: per row the
    position, token id and the top-k feature ids and values. The ids and values stay where the SAE
    computed them (on a GPU: no copy, no sync in the step) until a report asks: then they are copied
    to the host once for every request that holds rows of the chunk."""

    __slots__ = ("pos", "tok", "_ids", "_values", "_host")

    def __init__(self, pos: np.ndarray, token_ids: np.ndarray, ids, values):
        self.pos, self.tok, self._ids, self._values, self._host = pos, token_ids, ids, values, None

    def host(self) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, values)`` as host arrays (int64, float32)."""
        if self._host is None:
            ids, values = self._ids, self._values
            if isinstance(ids, torch.Tensor):
                ids, values = ids.cpu().numpy(), values.float().cpu().numpy()
            self._host = (ids, values)
            self._ids = self._values = None
        return self._host


class InspectState:
    """One request's inspection: the top-k features of each token it was asked for, by position.
    ``chunks`` holds, per forward that read it, ``(chunk, lo, hi)``: its rows ``lo:hi`` of a shared
    :class:`InspectChunk`."""

    def __init__(self, spec: InspectSpec):
        self.spec = spec
        self.chunks: list[tuple[InspectChunk, int, int]] = []
        self.sent = -1  # the last position handed out by progress()

    def wants(self, pos: np.ndarray, prompt_len: int) -> np.ndarray:
        if self.spec.positions == "prompt":
            return pos < prompt_len
        if self.spec.positions == "generated":
            return pos >= prompt_len
        return np.ones(pos.shape[0], dtype=bool)

    def add(self, pos: np.ndarray, token_ids: np.ndarray, ids, values) -> None:
        """Add the rows of this request alone (``ids``/``values`` ``[n, >= k]``)."""
        self.chunks.append((InspectChunk(pos, token_ids, ids, values), 0, len(pos)))

    def report(self, after: int = -1) -> dict:
        """The inspected tokens (those after position ``after``), in position order."""
        k = self.spec.k
        tokens: dict[int, tuple] = {}
        for chunk, lo, hi in self.chunks:  # a recompute after preemption overwrites its positions
            if int(chunk.pos[lo:hi].max(initial=-1)) <= after:
                continue
            ids, values = chunk.host()
            for p, t, i, v in zip(chunk.pos[lo:hi].tolist(), chunk.tok[lo:hi].tolist(), ids[lo:hi, :k].tolist(),
                                  values[lo:hi, :k].tolist()):
                if p > after:
                    tokens[p] = (t, i, v)
        rows = [{"position": p, "token_id": t, "ids": i, "values": v} for p, (t, i, v) in sorted(tokens.items())]
        return {**self.spec.to_dict(), "tokens": rows}

    def progress(self) -> dict | None:
        """The tokens read since the previous call (None: none)."""
        rep = self.report(self.sent)
        if not rep["tokens"]:
            return None
        self.sent = rep["tokens"][-1]["position"]
        return rep


class RequestState:
    """A request's conditions (one per spec with a ``when``, in spec order) and inspections."""

    def __init__(self, tag: str | None, specs: tuple[SteerSpec, ...]):
        self.tag = tag
        self.conds: dict[int, ConditionState] = {j: ConditionState(s.when, s.skip_bos)
                                                 for j, s in enumerate(specs) if s.when is not None}
        self.inspects: dict[int, InspectState] = {j: InspectState(s.inspect) for j, s in enumerate(specs)
                                                  if s.inspect is not None}
        self._sent_when: list | None = None

    def report(self) -> dict:
        out: dict = {}
        if self.conds:
            out["when"] = [c.report() for c in self.conds.values()]
        if self.inspects:
            out["inspect"] = [i.report() for i in self.inspects.values()]
        return out

    def progress(self) -> dict | None:
        """What was read since the previous call, for a streamed chunk (None: nothing new): ``when``,
        the conditions once known (a prompt-scope decision once the prompt is read; a token-scope
        condition whenever its count moved), and ``inspect``, per inspection its tokens read since
        (an entry with no new token has ``"tokens": []``)."""
        out: dict = {}
        when = [c.report() for c in self.conds.values() if c.known]
        if when and when != self._sent_when:
            out["when"] = self._sent_when = when
        ins = [i.progress() for i in self.inspects.values()]
        if any(r is not None for r in ins):
            out["inspect"] = [r if r is not None else {**i.spec.to_dict(), "tokens": []}
                              for r, i in zip(ins, self.inspects.values())]
        return out or None


_POSITIONS = {"all": 0, "prompt": 1, "generated": 2}


class LayerReads:
    """What one SAE reads in a batch, before its edits: the conditions and inspections of the
    requests that ask (``conds``: condition -> [(request index, state)]; ``inspects``: [(request
    index, state)]). Built once per batch composition (the worker's layout cache), so the per-token
    layout of the readers (:meth:`_layout`) is worked out on the first read and reused by every
    decode step of the same batch."""

    __slots__ = ("conds", "inspects", "kmax", "_insp", "_cond_rows", "_ready")

    def __init__(self):
        self.conds: dict[Condition, list[tuple[int, ConditionState]]] = {}
        self.inspects: list[tuple[int, InspectState]] = []
        self.kmax = 0
        self._insp = None  # the inspections' token layout (see _layout)
        self._cond_rows: dict[Condition, tuple[np.ndarray, np.ndarray]] = {}  # members' tokens, their prompt lengths
        self._ready: set[Condition] = set()  # prompt-scope conditions whose members all have a prompt score

    def read(self, sae, x: torch.Tensor, pos: np.ndarray, starts: np.ndarray, prompt_lens: np.ndarray,
             valid: np.ndarray, token_ids, forward: int) -> None:
        """Score this forward's tokens (``x [n_real, d_in]``; per request ``r`` its tokens are
        ``starts[r]:starts[r+1]``) and update every asking request's state."""
        for cond, members in self.conds.items():
            if cond.scope == "prompt" and self._decided(cond, members, pos, starts, prompt_lens):
                # A decode step of a prompt-scope condition: no prompt token to read, the decisions stand.
                for _, st in members:
                    st.forward = forward
                continue
            todo = [(r, st) for r, st in members if st.needs_scores(pos[starts[r]:starts[r + 1]], prompt_lens[r])]
            scores = None
            if todo:
                idx = np.concatenate([np.arange(starts[r], starts[r + 1]) for r, _ in todo])
                scores = token_scores(x[torch.from_numpy(idx).to(x.device)], sae, cond).cpu().numpy()
            at = 0
            scored = {id(st) for _, st in todo}
            for r, st in members:
                a, b = starts[r], starts[r + 1]
                s = None
                if id(st) in scored:
                    s, at = scores[at: at + b - a], at + b - a
                st.update(s, pos[a:b], valid[a:b], prompt_lens[r], forward)
        if self.inspects:
            self._inspect(sae, x, pos, starts, prompt_lens, token_ids)

    def _decided(self, cond: Condition, members, pos, starts, prompt_lens) -> bool:
        """Whether every member of prompt-scope ``cond`` has read its prompt and this forward holds
        only generated tokens of theirs (then nothing is read and no decision changes)."""
        rows = self._cond_rows.get(cond)
        if rows is None:
            idx = np.concatenate([np.arange(starts[r], starts[r + 1]) for r, _ in members])
            plen = np.concatenate([np.full(starts[r + 1] - starts[r], prompt_lens[r]) for r, _ in members])
            rows = self._cond_rows[cond] = (idx, plen)
        if not bool((pos[rows[0]] >= rows[1]).all()):
            return False
        if cond not in self._ready:
            if any(st.prompt is None for _, st in members):
                return False
            self._ready.add(cond)  # a prompt score is never dropped (a recompute restarts it at a prompt token)
        return True

    def _layout(self, starts: np.ndarray, prompt_lens: np.ndarray):
        """The inspections' token rows, in entry order: ``(rows, mode, prompt length, bounds,
        contiguous)``, where entry ``e`` holds ``rows[bounds[e]:bounds[e+1]]`` and ``contiguous``
        says that the rows are ``0..n_real`` in order (no gather needed)."""
        if self._insp is None:
            parts = [np.arange(starts[r], starts[r + 1]) for r, _ in self.inspects]
            sizes = [p.size for p in parts]
            rows = np.concatenate(parts)
            mode = np.repeat(np.array([_POSITIONS[st.spec.positions] for _, st in self.inspects], dtype=np.int8), sizes)
            plen = np.repeat(np.array([prompt_lens[r] for r, _ in self.inspects], dtype=np.int64), sizes)
            bounds = np.concatenate([[0], np.cumsum(sizes)])
            contiguous = rows.size == int(starts[-1]) and bool((rows == np.arange(rows.size)).all())
            self._insp = (rows, mode, plen, bounds, contiguous)
        return self._insp

    def _inspect(self, sae, x, pos, starts, prompt_lens, token_ids) -> None:
        """The top-``kmax`` features of every token an inspection asks for, in one ``encode_topk`` of
        just those rows; each request keeps its slice of the shared result."""
        rows, mode, plen, bounds, contiguous = self._layout(starts, prompt_lens)
        p = pos[rows]
        gen = p >= plen
        want = (mode == 0) | ((mode == 1) & ~gen) | ((mode == 2) & gen)
        if bool(want.all()):
            sel, cum = rows, bounds
        else:
            sel, contiguous = rows[want], False
            cum = np.concatenate([[0], np.cumsum(want)])[bounds]
        if sel.size == 0:
            return
        xs = x[: sel.size] if contiguous else x[torch.from_numpy(sel).to(x.device)]
        values, ids = ops.encode_topk(xs, sae, self.kmax)
        chunk = InspectChunk(pos[sel], token_ids[sel], ids, values)
        lo = cum[:-1].tolist()
        hi = cum[1:].tolist()
        for (_, st), a, b in zip(self.inspects, lo, hi):
            if b > a:
                st.chunks.append((chunk, a, b))
