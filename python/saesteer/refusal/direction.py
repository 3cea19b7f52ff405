"""Refusal direction (Arditi et al. 2024): difference in means, and its selection by three scores.

For every layer ``l`` (the residual stream at the input of decoder layer ``l``, ``blocks.l.hook_resid_pre``)
and every post-instruction position ``p`` (the chat template's tokens after the user's text), the
candidate direction is ``r_{l,p} = mean_harmful x_{l,p} - mean_harmless x_{l,p}``, accumulated in
float64. A candidate is scored on held-out prompts by

* ``bypass``: mean refusal score of harmful prompts under directional ablation of ``r`` (lower is better);
* ``induce``: mean refusal score of harmless prompts with ``r`` added at layer ``l`` (must be > 0);
* ``kl``: KL(unsteered || ablated) of next-token distributions on harmless prompts (<= 0.1),

and layers in the last 20% are excluded. The selected candidate minimises ``bypass`` among those that
pass the filters (or, if none pass, the best by ``bypass`` with a flag saying so).

Ablation comes in two kinds. ``"directional"`` (Arditi et al.) projects ``r`` out of the stream at
every layer, which sets every activation's coordinate on ``r`` to zero: it removes refusal when
harmless activations sit near zero along ``r`` (the case in the papers' chat models). A model whose
harmless activations sit far on the other side (a model trained from scratch to refuse, like the
organism: harmful +22, harmless -43 at the last token) is pushed *towards* refusal by it. ``"affine"``
(Marshall et al. 2024, affine concept editing) sets the coordinate to the harmless mean's instead, at
the candidate's layer. ``select_direction(ablation="auto")`` scores with directional ablation and
falls back to affine ablation only when no candidate passes the filters; the result records which.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import torch
from tqdm.auto import tqdm

from ..hf import affine_ablation, directional_ablation, find_layers, hook_name, intercept
from ..hf.capture import input_hook
from ..hf.directions import residual_writers
from ..hf.handle import SteeringHandle, bos_token_id
from ..hf.positions import bos_mask
from .chat import last_logits, post_instruction_positions, refusal_scores, refusal_scores_from_logits, tokenize_prompts

__all__ = ["mean_activations", "candidate_directions", "score_candidates", "select_direction", "ablation_handle",
           "DirectionResult", "filter_by_refusal"]


class _Stop(Exception):
    """Ends a forward once the layers it was run for have been read."""


@torch.no_grad()
def mean_activations(model, tokenizer, instructions: Sequence[str], n_positions: int, batch_size: int = 32, progress: bool = True,
                     n_layers: int | None = None) -> torch.Tensor:
    """Mean residual stream ``[n_layers, n_positions, d_model]`` (float64) at each layer's input and
    each of the last ``n_positions`` prompt positions (left padding aligns them). Padding and BOS
    tokens are left out of each position's mean (a position no prompt has a real token at is 0).
    With ``n_layers`` only the first ``n_layers`` layers (at least one) are read (the others are 0) and each
    forward stops at the next layer's input."""
    _, layers = find_layers(model)
    n = len(instructions)
    if n == 0:
        raise ValueError("instructions: empty prompt set")
    read = len(layers) if n_layers is None else max(1, min(n_layers, len(layers)))
    sums: list[torch.Tensor | None] = [None] * len(layers)
    count = torch.zeros(n_positions, dtype=torch.float64)
    index = {hook_name(i, "resid_pre"): i for i in range(min(read + 1, len(layers)))}
    bos_id = bos_token_id(model)
    keep: dict = {}

    def accumulate(name, x):
        i = index[name]
        if i == read:
            raise _Stop
        w = keep["w"].to(x.device)
        s = (x[:, -n_positions:].double() * w[..., None]).sum(0).cpu()
        sums[i] = s if sums[i] is None else sums[i] + s

    device = next(model.parameters()).device
    with intercept(model, list(index), accumulate):
        for b in tqdm(range(0, n, batch_size), desc="mean activations", disable=not progress, leave=False):
            enc = tokenize_prompts(tokenizer, instructions[b : b + batch_size], device)
            real = enc["attention_mask"].bool() & ~bos_mask(enc["input_ids"], enc["attention_mask"], bos_id)
            w = real[:, -n_positions:].double()
            if w.shape[1] < n_positions:  # prompts shorter than n_positions: the missing columns count 0
                w = torch.cat([torch.zeros(w.shape[0], n_positions - w.shape[1], dtype=w.dtype, device=w.device), w], 1)
            keep["w"] = w
            count += w.sum(0).cpu()
            try:
                last_logits(model, enc)  # the hooks read the stream; only the last position's logits are computed
            except _Stop:
                pass
    sums = [torch.zeros_like(sums[0]) if s is None else s for s in sums]  # type: ignore[arg-type]
    return torch.stack(sums) / count.clamp_min(1)[None, :, None]


def filter_by_refusal(model, tokenizer, harmful: Sequence[str], harmless: Sequence[str], refusal_tokens: Sequence[int],
                      batch_size: int = 32) -> tuple[list[str], list[str], dict]:
    """Arditi et al.'s filter: the harmful prompts the model refuses (refusal score > 0) and the
    harmless ones it answers (score < 0). Returns ``(harmful, harmless, counts)`` with
    ``counts = {"harmful": {"n", "kept"}, "harmless": {...}}``."""
    kept, counts = [], {}
    for name, prompts, refused in (("harmful", harmful, True), ("harmless", harmless, False)):
        prompts = list(prompts)
        s = refusal_scores(model, tokenizer, prompts, refusal_tokens, batch_size=batch_size) if prompts else torch.empty(0)
        keep = [p for p, v in zip(prompts, s.tolist()) if (v > 0 if refused else v < 0)]
        kept.append(keep)
        counts[name] = {"n": len(prompts), "kept": len(keep)}
    return kept[0], kept[1], counts


def candidate_directions(model, tokenizer, harmful: Sequence[str], harmless: Sequence[str], n_positions: int | None = None, batch_size: int = 32, progress: bool = True, *, return_means: bool = False,
                         n_layers: int | None = None):
    """Difference-in-means candidates ``[n_layers, n_positions, d_model]`` (float64); with
    ``return_means`` also the harmless means (same shape), the references of affine ablation.
    ``n_layers``: only the first ``n_layers`` layers' (the others are 0), from forwards that stop there."""
    if n_positions is None:
        n_positions = post_instruction_positions(tokenizer)
    mh = mean_activations(model, tokenizer, harmful, n_positions, batch_size, progress, n_layers)
    ml = mean_activations(model, tokenizer, harmless, n_positions, batch_size, progress, n_layers)
    return (mh - ml, ml) if return_means else mh - ml


def _kl_rows(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(p || q) of the next-token distributions, one value per row (float64)."""
    lp = torch.log_softmax(p_logits.double(), -1)
    lq = torch.log_softmax(q_logits.double(), -1)
    return (lp.exp() * (lp - lq)).sum(-1)


def _kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> float:
    return float(_kl_rows(p_logits, q_logits).mean())


@dataclass
class DirectionResult:
    layer: int
    position: int  # negative offset from the end of the prompt (-1 = last token)
    direction: torch.Tensor  # [d_model] float32, the raw difference in means
    scores: dict  # bypass, induce, kl of the selected candidate (and the baselines)
    table: list = field(default_factory=list)  # one row per scored candidate (and ablation kind)
    passed_filters: bool = True
    ablation: str = "directional"  # how the scores' ablation was done: "directional" or "affine"
    reference: torch.Tensor | None = None  # [d_model] harmless mean at (layer, position)

    def to_dict(self) -> dict:
        return {
            "layer": self.layer,
            "position": self.position,
            "ablation": self.ablation,
            "scores": self.scores,
            "passed_filters": self.passed_filters,
            "norm": float(self.direction.norm()),
        }

    def ablate(self, model):
        """The selected ablation as a steering handle (a context manager)."""
        return ablation_handle(model, self.ablation, self.direction, self.reference, self.layer)


ABLATIONS = ("directional", "affine")


def ablation_handle(model, kind: str, direction: torch.Tensor, reference: torch.Tensor | None, layer: int):
    """Ablate ``direction``: ``"directional"`` everywhere (Arditi), or ``"affine"`` at the input of
    ``layer`` with the projection set to ``reference``'s (Marshall)."""
    if kind == "affine":
        return affine_ablation(model, direction, reference, layer, 0.0)
    return directional_ablation(model, direction)


class _RowEdit:
    """Per batch row ``b``: ``x - ((x . r_b) - c_b) r_b + v_b`` (a unit ``r_b`` or 0, ``c_b``, ``v_b``
    or 0), computed in float32: directional or affine ablation and activation addition, a
    different candidate direction on each row of one forward."""

    def __init__(self, r: torch.Tensor | None, c: torch.Tensor | None, v: torch.Tensor | None):
        self.r, self.c, self.v = r, c, v

    def __call__(self, x, mask):
        xf = x.float()
        y = xf
        if self.r is not None:
            proj = (xf * self.r[:, None, :]).sum(-1, keepdim=True)
            if self.c is not None:
                proj = proj - self.c[:, None, None]
            y = y - proj * self.r[:, None, :]
        if self.v is not None:
            y = y + self.v[:, None, :]
        y = y.to(x.dtype)
        return y if mask is None else torch.where(mask.unsqueeze(-1), y, x)


@dataclass(frozen=True)
class _Row:
    """One group of batch rows: the prompts of one set under one candidate's edit. ``op``:
    ``"directional"`` (ablated everywhere), ``"affine"`` (at its layer's input) or ``"add"``."""

    layer: int
    position: int
    op: str


def _row_edits(model, rows: Sequence[_Row], n_prompts: int, candidates: torch.Tensor, harmless_means: torch.Tensor | None):
    """One steering handle with every row group's edit on its own ``n_prompts`` batch rows."""
    owner, blocks = find_layers(model)
    device = next(model.parameters()).device
    B, d = len(rows) * n_prompts, candidates.shape[-1]
    zeros = lambda: torch.zeros(B, d, dtype=torch.float32)  # noqa: E731
    r_all = zeros()  # directional ablation: every layer's input and every writer's output
    at_layer: dict[int, list[torch.Tensor]] = {}  # layer -> [r, c, v] at its input only
    for k, row in enumerate(rows):
        sl = slice(k * n_prompts, (k + 1) * n_prompts)
        raw = candidates[row.layer, row.position].float()
        if row.op == "directional":
            r_all[sl] = raw / raw.norm()
            continue
        r, c, v = at_layer.setdefault(row.layer, [zeros(), torch.zeros(B), zeros()])
        if row.op == "add":
            v[sl] = raw
        else:  # affine: the projection on r set to the harmless mean's
            unit = raw / raw.norm()
            r[sl] = unit
            c[sl] = float(harmless_means[row.layer, row.position].float() @ unit)
    handle = SteeringHandle(model, owner, "all")
    any_dir = bool(r_all.abs().sum() > 0)
    r_all = r_all.to(device)
    for i, block in enumerate(blocks):
        if any_dir:
            edit = _RowEdit(r_all, None, None)
            handle.add(block, True, device, edit, (i, "resid_pre"))
            for m in residual_writers(block):
                handle.add(m, False, device, edit)
        if i in at_layer:
            r, c, v = (t.to(device) for t in at_layer[i])
            handle.add(block, True, device, _RowEdit(r, c, v), (i, "resid_pre"))
    return handle.register()


def _fallback_pool(table: list[dict], first_kind: str) -> list[dict]:
    """The rows the selection picks from when none passes the filters: the eligible rows of the
    first ablation kind scored (all rows when none is eligible)."""
    return [r for r in table if r["eligible"] and r["ablation"] == first_kind] or table


def _selected(table: list[dict], first_kind: str) -> dict:
    """The selection rule: least ``bypass`` among the rows that pass the filters; with none passing,
    among the eligible rows of the first ablation kind scored (all rows when none is eligible)."""
    pool = [r for r in table if r["passes"]] or _fallback_pool(table, first_kind)
    return min(pool, key=lambda r: r["bypass"])


def _stream_and_logits(model, blocks, enc) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Unsteered last-position logits ``[n, vocab]`` (float32, CPU) of the batch ``enc`` and the
    residual stream at every decoder layer's input (``[n, T, d]`` each, on the model's device)."""
    streams: list[torch.Tensor | None] = [None] * len(blocks)
    index = {hook_name(i, "resid_pre"): i for i in range(len(blocks))}

    def keep(name, x):
        streams[index[name]] = x.detach().clone()

    with intercept(model, list(index), keep):
        logits = last_logits(model, enc).float().cpu()
    return logits, streams  # type: ignore[return-value]


@contextlib.contextmanager
def _start_at(blocks, start: int, stream: torch.Tensor):
    """Forwards inside the block begin at the input of ``blocks[start]`` with ``stream`` there: the
    earlier decoder layers return their input unchanged (their own forward is not run). With the
    unsteered stream cached at that layer, a forward whose edits all act at ``start`` or later
    gives the full forward's result without recomputing the layers before it."""

    def passthrough(*args, **kwargs):
        return args[0] if args else kwargs["hidden_states"]

    saved = []
    hook = None
    try:
        for block in blocks[:start]:
            saved.append((block, block.__dict__.get("forward")))  # an instance forward (accelerate's) is put back
            block.forward = passthrough
        hook = blocks[start].register_forward_pre_hook(input_hook(lambda x: stream), with_kwargs=True, prepend=True)
        yield
    finally:
        if hook is not None:
            hook.remove()
        for block, fwd in saved:
            if fwd is None:
                del block.forward
            else:
                block.forward = fwd


def _prefix_ok(model, blocks, enc, streams, logits) -> bool:
    """Whether starting at a middle layer from the cached stream reproduces the full forward on the
    batch's first prompt (a model whose decoder layers do not simply chain fails it; its
    candidates are then scored with full forwards)."""
    start = len(blocks) // 2
    if start == 0:
        return True
    one = {k: v[:1] for k, v in enc.items()}
    try:
        with _start_at(blocks, start, streams[start][:1]):
            got = last_logits(model, one).float().cpu()
    except Exception as e:  # noqa: BLE001 -- an unusual layer signature: fall back to full forwards
        warnings.warn(f"saesteer: candidates scored with full forwards (starting at layer {start} failed: {e})", stacklevel=3)
        return False
    want = logits[:1]
    tol = (1e-3 if streams[start].dtype == torch.float32 else 5e-2) * float(want.abs().max().clamp_min(1.0))
    ok = got.shape == want.shape and float((got - want).abs().max()) <= tol
    if not ok:
        warnings.warn(f"saesteer: candidates scored with full forwards (starting at layer {start} from the cached stream "
                      "does not reproduce the full forward on this model)", stacklevel=3)
    return ok


def _length_buckets(enc: dict, pad_frac: float = 1 / 16) -> list[dict]:
    """The left-padded batch ``enc`` split into batches of prompts of similar length, each padded to
    its own longest prompt only (so at most ``pad_frac`` of a bucket's tokens are padding, or it
    holds one prompt); each bucket's ``"index"`` lists its rows of ``enc``. A sub-batch is what
    tokenizing its prompts alone gives: the columns that are padding in all its rows are cut."""
    lengths = enc["attention_mask"].sum(1).tolist()
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    for i in order:
        g = groups[-1] if groups else None
        if g is not None:
            real = sum(lengths[j] for j in g) + lengths[i]
            if (len(g) + 1) * lengths[g[0]] - real <= pad_frac * real:
                g.append(i)
                continue
        groups.append([i])
    T = enc["input_ids"].shape[1]
    out = []
    for g in groups:
        idx = torch.tensor(sorted(g))
        out.append({k: v[idx.to(v.device), T - lengths[g[0]]:] for k, v in enc.items()} | {"index": idx})
    return out


def score_candidates(
    model,
    tokenizer,
    candidates: torch.Tensor,
    harmful_val: Sequence[str],
    harmless_val: Sequence[str],
    refusal_tokens: Sequence[int],
    *,
    max_layer_frac: float = 0.8,
    kl_max: float = 0.1,
    batch_size: int = 32,
    progress: bool = True,
    ablations: Sequence[str] = ("directional",),
    harmless_means: torch.Tensor | None = None,
    stop_at_passing: bool = False,
    max_rows: int | None = None,
    score_all: bool = True,
) -> tuple[list[dict], dict]:
    """Arditi's three scores for every (layer, position) candidate below ``max_layer_frac`` of depth,
    one row per candidate and ablation kind (``"affine"`` needs ``harmless_means``; see the module
    docstring). With ``stop_at_passing`` the next kind is scored only if no candidate passed the
    filters with the previous one. ``induce`` (which no ablation changes) is computed once.

    With ``score_all=False`` only the scores the selection needs are computed, the others are None:
    ``induce`` for every candidate, ``kl`` where ``induce > 0``, ``bypass`` where both filters pass
    (with none passing, ``bypass`` of every eligible candidate of the first kind), and all three of
    the selected candidate. The selected direction is the same as with every score computed.

    Candidates are scored in batches: each prompt set is tokenized once and split into buckets of
    prompts of similar length (each padded to its own longest prompt), and one forward holds
    several candidates' edits, each on its own copy of the prompts (up to ``max_rows`` batch rows,
    default ``4 * batch_size``); only the last position goes through the LM head. The unsteered
    residual stream is cached at every layer's input in the baseline pass, and a forward whose
    edits start at layer ``l`` (activation addition, affine ablation) runs layers ``l`` onwards only."""
    for kind in ablations:
        if kind not in ABLATIONS:
            raise ValueError(f"ablation: expected one of {ABLATIONS}, got {kind!r}")
    if "affine" in ablations and harmless_means is None:
        raise ValueError("harmless_means: affine ablation needs the harmless mean activations")
    n_layers, n_pos, _ = candidates.shape
    _, blocks = find_layers(model)
    device = next(model.parameters()).device
    # Each prompt set in buckets of similar length, each with its unsteered logits and stream.
    sets: dict[str, list[dict]] = {}
    for name, prompts in (("harmful", harmful_val), ("harmless", harmless_val)):
        sets[name] = []
        for enc in _length_buckets(tokenize_prompts(tokenizer, list(prompts), device)):
            index = enc.pop("index")
            logits, streams = _stream_and_logits(model, blocks, enc)
            sets[name].append({"enc": enc, "n": len(index), "streams": streams, "logits": logits})
    first = sets["harmless"][0]
    if not _prefix_ok(model, blocks, first["enc"], first["streams"], first["logits"]):
        for b in sets["harmful"] + sets["harmless"]:
            b["streams"] = None
    baseline = {
        f"{name}_refusal_score": float(refusal_scores_from_logits(torch.cat([b["logits"] for b in sets[name]]), refusal_tokens).mean())
        for name in ("harmful", "harmless")
    }
    max_layer = int(n_layers * max_layer_frac)
    # Layers past max_layer_frac are excluded by the selection anyway: don't pay for scoring them.
    todo = [(l, p) for l in range(min(max_layer, n_layers)) for p in range(n_pos)] or [(0, p) for p in range(n_pos)]
    todo = [(l, p) for l, p in todo if float(candidates[l, p].norm()) != 0.0]
    max_rows = max_rows or 4 * batch_size

    def refusal(logits: torch.Tensor, bucket: dict) -> torch.Tensor:
        return refusal_scores_from_logits(logits.flatten(0, 1), refusal_tokens).view(logits.shape[:2])

    def kl(logits: torch.Tensor, bucket: dict) -> torch.Tensor:
        return _kl_rows(bucket["logits"][None], logits)

    def scores(which: str, op: str, cands: list, per_prompt, what: str) -> dict:
        """``{(layer, position): score}``: the mean over the prompt set ``which`` of ``per_prompt``
        (last-position logits ``[k, n, vocab]`` of ``k`` candidates' rows of a bucket, each under
        its ``op`` edit -> ``[k, n]``). Rows whose edits begin at their layer's input start there
        from the cached stream."""
        values: dict = {c: [] for c in cands}
        bar = tqdm(total=len(cands) * len(sets[which]), desc=f"score directions ({what})", unit="candidate",
                   disable=not progress or not cands, leave=False)
        for bucket in sets[which]:
            enc, n, streams = bucket["enc"], bucket["n"], bucket["streams"]
            per = max(1, max_rows // n)
            starts: dict[int, list] = {}
            for c in cands:
                starts.setdefault(c[0] if op != "directional" and streams is not None else 0, []).append(c)
            for start, group in sorted(starts.items()):
                for b in range(0, len(group), per):
                    chunk = group[b : b + per]
                    batch = {k: v.repeat(len(chunk), 1) for k, v in enc.items()}
                    skip = _start_at(blocks, start, streams[start].repeat(len(chunk), 1, 1)) if start else contextlib.nullcontext()
                    with _row_edits(model, [_Row(l, p, op) for l, p in chunk], n, candidates, harmless_means), skip:
                        logits = last_logits(model, batch).float().cpu().view(len(chunk), n, -1)
                    for c, v in zip(chunk, per_prompt(logits, bucket)):
                        values[c].append(v)
                    bar.update(len(chunk))
        bar.close()
        return {c: float(torch.cat(v).mean()) for c, v in values.items()}

    induce = scores("harmless", "add", todo, refusal, "induce")
    eligible = {c: c[0] < max_layer for c in todo}
    rows: list[dict] = []
    for kind in ablations:
        need_kl = todo if score_all else [c for c in todo if eligible[c] and induce[c] > 0]
        kls = scores("harmless", kind, need_kl, kl, f"{kind} KL")
        passing = [c for c in need_kl if eligible[c] and induce[c] > 0 and kls[c] <= kl_max]
        bypass = scores("harmful", kind, todo if score_all else passing, refusal, f"{kind} bypass")
        rows += [{"layer": l, "position": p - n_pos, "ablation": kind, "bypass": bypass.get((l, p)), "induce": induce[l, p],
                  "kl": kls.get((l, p)), "eligible": eligible[l, p], "passes": (l, p) in passing} for l, p in todo]
        if stop_at_passing and passing:
            break
    if not score_all and rows:
        # No candidate passed: the selection falls back to the least bypass, which needs every one's.
        if not any(r["passes"] for r in rows):
            pool = _fallback_pool(rows, ablations[0])
            for kind in dict.fromkeys(r["ablation"] for r in pool):
                got = scores("harmful", kind, [(r["layer"], r["position"] + n_pos) for r in pool if r["ablation"] == kind],
                             refusal, f"{kind} bypass")
                for r in pool:
                    if r["ablation"] == kind:
                        r["bypass"] = got[r["layer"], r["position"] + n_pos]
        best = _selected(rows, ablations[0])
        if best["kl"] is None:  # the selected direction reports all three scores
            c = (best["layer"], best["position"] + n_pos)
            best["kl"] = scores("harmless", best["ablation"], [c], kl, f"{best['ablation']} KL")[c]
    return rows, baseline


def select_direction(
    model,
    tokenizer,
    harmful_train: Sequence[str],
    harmless_train: Sequence[str],
    harmful_val: Sequence[str],
    harmless_val: Sequence[str],
    refusal_tokens: Sequence[int],
    *,
    n_positions: int | None = None,
    max_layer_frac: float = 0.8,
    kl_max: float = 0.1,
    batch_size: int = 32,
    progress: bool = True,
    ablation: str = "auto",
    score_all: bool = False,
) -> DirectionResult:
    """Candidates from the train prompts, scores on the val prompts, and the selected direction.

    ``ablation``: ``"directional"`` (Arditi et al.), ``"affine"`` (Marshall et al.), or ``"auto"``:
    directional, then affine only if no candidate passes the filters with directional ablation.
    ``score_all``: every candidate's three scores in the table; by default only those the selection
    needs (the others are None; the selected direction is the same, see :func:`score_candidates`).
    """
    if ablation not in ABLATIONS + ("auto",):
        raise ValueError(f"ablation: expected 'auto', 'directional' or 'affine', got {ablation!r}")
    # Only the layers below max_layer_frac are scored (layer 0 when there are none): their means only.
    read = max(int(len(find_layers(model)[1]) * max_layer_frac), 1)
    cands, means = candidate_directions(model, tokenizer, harmful_train, harmless_train, n_positions, batch_size, progress,
                                        return_means=True, n_layers=read)
    kinds = ABLATIONS if ablation == "auto" else (ablation,)
    table, baseline = score_candidates(
        model, tokenizer, cands, harmful_val, harmless_val, refusal_tokens,
        max_layer_frac=max_layer_frac, kl_max=kl_max, batch_size=batch_size, progress=progress,
        ablations=kinds, harmless_means=means, stop_at_passing=True, score_all=score_all,
    )
    passing = [r for r in table if r["passes"]]
    # With no passing candidate under any kind tried, fall back to the first kind's best bypass.
    best = _selected(table, kinds[0])
    n_pos = cands.shape[1]
    direction = cands[best["layer"], best["position"] + n_pos].float()
    reference = means[best["layer"], best["position"] + n_pos].float()
    scores = {k: best[k] for k in ("bypass", "induce", "kl")}
    scores.update(baseline)
    return DirectionResult(best["layer"], best["position"], direction, scores, table, bool(passing), best["ablation"], reference)
