"""The engine-neutral steering core: one SAE's error-preserving edits on a batch of hidden states.

An engine (the HF hooks, the vLLM plugin) hands over hidden states ``x [N, d_in]`` and says, per
token, which of a list of interventions applies (a row index per token, -1 for none). The core
plans the edits once per list and applies them through :mod:`saesteer.ops`, gathering only the
|S| encoder columns and decoder rows the interventions name::

    st = SAESteerer(sae)                       # once: the SAE's kernel view, the backend
    plan = st.plan([iv_a, None, iv_b])         # per set of interventions (cache it)
    y = st.apply(x, plan, rows=rows)           # per forward: rows [N] int64 in {-1, 0, 1, 2}

Rows that share a mode run as one ``steer_rows`` call (per token: the row's values are gathered
to the token); ``clamp`` rows are grouped by feature set too, since no clamp value leaves a
feature unchanged, while ablate/scale/add have one (0/1/0) for features outside a row's set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .. import ops
from ..intervention import MODES, Intervention, as_intervention
from ..sae import SAE

__all__ = ["SAESteerer", "EditPlan", "BoundPlan", "as_sae"]


def as_sae(obj):
    """A ``saesteer.SAE`` for ``obj`` (a ``saesteer.SAE`` as it is, or an ``sae_lens`` SAE wrapped)."""
    if isinstance(obj, SAE):
        return obj
    if hasattr(obj, "cfg") and hasattr(obj, "W_dec"):  # an sae_lens.SAE
        return SAE.from_sae_lens(obj)
    raise TypeError(f"sae: expected a saesteer.SAE or an sae_lens SAE, got {type(obj).__name__}")


@dataclass
class _Group:
    features: torch.Tensor  # int64 [S] on the device
    mode: int
    values: torch.Tensor  # float32 [S] (a single intervention) or [R, S] (one row per intervention)
    in_group: torch.Tensor | None  # bool [R]: rows of this group; None = every row
    # A single intervention's values as steer_rows takes them (ablate is a 0/1 mask there, 1 =
    # ablate; steer takes ablate's 0 values): the same tensor as ``values`` for the other modes.
    row_values: torch.Tensor | None = None


class EditPlan:
    """A list of interventions for one SAE, laid out for the ops. Built by :meth:`SAESteerer.plan`.

    ``rows`` is how many interventions the list had (``None`` entries included); ``single`` is True
    for a plan made from exactly one intervention, which :meth:`SAESteerer.apply` may apply to
    every token without a row index.
    """

    __slots__ = ("groups", "keys", "rows", "single")

    def __init__(self, groups: list[_Group], keys: list[tuple], rows: int, single: bool):
        self.groups = groups
        self.keys = keys
        self.rows = rows
        self.single = single

    @property
    def is_noop(self) -> bool:
        """True when no token can change (every intervention is None or empty)."""
        return not self.groups

    def __repr__(self) -> str:
        return f"EditPlan(rows={self.rows}, groups={[(MODES[k[1]], len(k[0])) for k in self.keys]})"


class BoundPlan:
    """An :class:`EditPlan` bound to the tokens of a batch by :meth:`SAESteerer.bind`."""

    __slots__ = ("groups", "n")

    def __init__(self, groups: list[tuple], n: int):
        self.groups = groups  # (features [S], mode, values [N, S], edited bool [N, 1]) per group
        self.n = n

    def __repr__(self) -> str:
        return f"BoundPlan(n={self.n}, groups={len(self.groups)})"


class SAESteerer:
    """One SAE's error-preserving edits, ``y = x + s * sum_{i in S} (f'_i - f_i) W_dec[i]``.

    Parameters
    ----------
    sae : saesteer.SAE or sae_lens SAE
    device : where the edit runs (default: the SAE's device). The SAE's kernel view is built there
        once; the caller's SAE is not moved.
    backend : passed to :func:`saesteer.ops.kernel` ("auto", "cuda", "triton", "cpu", "torch").
        float64 inputs or SAEs always run the float64 reference.
    """

    def __init__(self, sae, device: torch.device | str | None = None, backend: str = "auto"):
        self.sae = as_sae(sae)
        self.device = self.sae.device if device is None else torch.device(device)
        self.view = self.sae.packed(self.device)
        self.d_in, self.d_sae, self.dtype = self.view.d_in, self.view.d_sae, self.view.dtype
        self._steer = ops.kernel("steer", self.device, backend, self.dtype)
        self._steer_rows = ops.kernel("steer_rows", self.device, backend, self.dtype)
        self.backend = getattr(self._steer, "backend", "torch")

    # -- planning (once per set of interventions) --------------------------------------------------
    def plan(self, interventions: Sequence) -> EditPlan:
        """Lay out ``interventions`` (a list of ``Intervention``, dict ``{features, mode, value}``, or
        None per row) for :meth:`apply`. Every id is checked against the SAE's ``d_sae``."""
        if isinstance(interventions, (Intervention, dict)):
            raise TypeError("interventions: expected a list (one entry per row); wrap a single one as [iv]")
        ivs = [None if iv is None else as_intervention(iv, self.d_sae) for iv in interventions]
        if not ivs:
            raise ValueError("interventions: an empty list (give one entry per row, None for an unedited row)")
        dev = self.device
        if len(ivs) == 1:
            iv = ivs[0]
            if iv is None or not iv.features:
                return EditPlan([], [], 1, True)
            f, v = iv.tensors("cpu")
            v = v.clone().to(dev)
            group = _Group(f.to(dev), iv.mode_id, v, None, torch.ones_like(v) if iv.mode == "ablate" else v)
            return EditPlan([group], [(iv.features, iv.mode_id)], 1, True)
        R = len(ivs)
        buckets: dict[tuple, list[int]] = {}
        for r, iv in enumerate(ivs):
            if iv is None or not iv.features:
                continue
            buckets.setdefault((iv.mode, iv.features if iv.mode == "clamp" else None), []).append(r)
        groups, keys = [], []
        for (mode, _), members in buckets.items():
            feats = tuple(sorted({i for r in members for i in ivs[r].features}))
            col = {i: j for j, i in enumerate(feats)}
            vals = torch.full((R, len(feats)), 1.0 if mode == "scale" else 0.0, dtype=torch.float32)
            for r in members:
                idx = [col[i] for i in ivs[r].features]
                vals[r, idx] = 1.0 if mode == "ablate" else torch.tensor(ivs[r].values, dtype=torch.float32)
            in_group = None
            if len(members) < R:
                in_group = torch.zeros(R, dtype=torch.bool)
                in_group[members] = True
                in_group = in_group.to(dev)
            groups.append(_Group(torch.tensor(feats, dtype=torch.int64, device=dev), MODES.index(mode), vals.to(dev), in_group))
            keys.append((feats, MODES.index(mode), tuple(members), R))
        return EditPlan(groups, keys, R, False)

    def update(self, plan: EditPlan, interventions: Sequence) -> EditPlan:
        """Re-plan ``plan`` for ``interventions``. When the features, modes and rows are unchanged the
        value tensors are written in place (a compiled graph that reads them sees the new values
        without recompiling) and ``plan`` itself is returned; otherwise a new plan."""
        new = self.plan(interventions)
        if new.keys == plan.keys and new.single == plan.single:
            for old, g in zip(plan.groups, new.groups):
                old.values.copy_(g.values)
            return plan
        return new

    # -- applying (per forward) --------------------------------------------------------------------
    def apply(
        self,
        x: torch.Tensor,
        plan: EditPlan,
        rows: torch.Tensor | None = None,
        token_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The steered ``x [N, d_in]``: token ``n`` gets intervention ``rows[n]`` of the plan.

        ``rows`` int64 ``[N]`` (-1: unedited), or None for a plan of one intervention applied to every
        token. ``token_mask`` bool ``[N]``: where False the token is unedited. ``x`` may be of any float
        dtype and on any device: the edit runs in the SAE's dtype on the steerer's device and is cast
        back. ``x`` is not modified; unedited tokens are returned bit for bit.
        """
        if x.dim() != 2 or x.shape[1] != self.d_in:
            raise ValueError(f"x: expected [N, d_in={self.d_in}], got shape {tuple(x.shape)}")
        N = x.shape[0]
        if rows is None:
            if not plan.single:
                raise ValueError(f"rows: required for a plan of {plan.rows} interventions (one row index per token)")
        elif rows.shape != (N,) or rows.dtype != torch.int64:
            raise ValueError(f"rows: expected an int64 tensor of shape ({N},), got {rows.dtype} {tuple(rows.shape)}")
        if token_mask is not None and (token_mask.shape != (N,) or token_mask.dtype != torch.bool):
            raise ValueError(f"token_mask: expected a bool tensor of shape ({N},), got {token_mask.dtype} {tuple(token_mask.shape)}")
        if plan.is_noop:
            return x.clone()
        if rows is None:
            xs, _, token_mask = self._to_sae(x, None, token_mask)
            g = plan.groups[0]
            ys = self._steer(xs, self.view, g.features, g.mode, g.values, token_mask)
            return _cast_back(x, xs, ys)
        return self.apply_bound(x, self.bind(plan, rows), token_mask)

    def bind(self, plan: EditPlan, rows: torch.Tensor) -> "BoundPlan":
        """``plan`` laid out per token for ``rows`` (int64 ``[N]``, -1: unedited): each group's values
        gathered to the tokens and which tokens it edits. An engine whose batch keeps its token ->
        intervention assignment over many forwards (vLLM's decode steps) binds once and calls
        :meth:`apply_bound` per forward; :meth:`apply` binds on every call."""
        if rows.dim() != 1 or rows.dtype != torch.int64:
            raise ValueError(f"rows: expected a 1-D int64 tensor, got {rows.dtype} {tuple(rows.shape)}")
        N = rows.shape[0]
        rows = rows.to(self.device)
        r = rows.clamp(min=0)
        edited = rows >= 0
        groups = []
        for g in plan.groups:
            vals = g.row_values.unsqueeze(0).expand(N, -1) if plan.single else g.values.index_select(0, r)
            m = edited if g.in_group is None else edited & g.in_group.index_select(0, r)
            groups.append((g.features, g.mode, vals, m.view(N, 1)))
        return BoundPlan(groups, N)

    def apply_bound(self, x: torch.Tensor, bound: "BoundPlan", token_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The steered ``x [N, d_in]`` for a plan bound to its tokens by :meth:`bind`; ``token_mask``
        bool ``[N]`` (False: unedited) narrows it further. Same contract as :meth:`apply`."""
        if x.dim() != 2 or x.shape[1] != self.d_in or x.shape[0] != bound.n:
            raise ValueError(f"x: expected [N={bound.n}, d_in={self.d_in}], got shape {tuple(x.shape)}")
        N = bound.n
        if token_mask is not None and (token_mask.shape != (N,) or token_mask.dtype != torch.bool):
            raise ValueError(f"token_mask: expected a bool tensor of shape ({N},), got {token_mask.dtype} {tuple(token_mask.shape)}")
        if not bound.groups:
            return x.clone()
        xs, _, token_mask = self._to_sae(x, None, token_mask)
        ys = xs
        tm = None if token_mask is None else token_mask.view(N, 1)
        for features, mode, vals, m in bound.groups:
            if tm is not None:
                m = m & tm
            ys = self._steer_rows(ys.view(N, 1, self.d_in), self.view, features, mode, vals, m).view(N, self.d_in)
        return _cast_back(x, xs, ys)

    def apply_rows(self, x: torch.Tensor, plan: EditPlan, token_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The steered ``x [R, T, d_in]`` where batch row ``r`` gets intervention ``r`` of the plan
        (``plan.rows == R``); ``token_mask`` bool ``[R, T]``. The per-row form of :meth:`apply`,
        without a per-token gather (what ``generate`` over a batch of prompts needs). When the plan
        changes nothing, ``x`` itself is returned."""
        if x.dim() != 3 or x.shape[2] != self.d_in:
            raise ValueError(f"x: expected [R, T, d_in={self.d_in}], got shape {tuple(x.shape)}")
        B, T = x.shape[0], x.shape[1]
        if plan.is_noop:
            return x
        if plan.single:
            m = None if token_mask is None else token_mask.reshape(-1)
            return self.apply(x.reshape(-1, self.d_in), plan, None, m).view(x.shape)
        if B != plan.rows:
            raise ValueError(
                f"intervention: {plan.rows} per-row interventions but the batch has {B} rows "
                "(num_return_sequences and beam search multiply the rows; give one intervention per row)"
            )
        xs, _, token_mask = self._to_sae(x, None, token_mask)
        ys = xs
        for g in plan.groups:
            m = token_mask
            if g.in_group is not None:
                m = g.in_group[:, None].expand(B, T) if m is None else m & g.in_group[:, None]
            ys = self._steer_rows(ys, self.view, g.features, g.mode, g.values, m)
        if ys is xs:
            return x
        return _cast_back(x, xs, ys)

    def _to_sae(self, x, rows, token_mask):
        if x.device == self.device and x.dtype == self.dtype:
            return x, rows, token_mask
        xs = x.to(device=self.device, dtype=self.dtype)
        if rows is not None:
            rows = rows.to(self.device)
        if token_mask is not None:
            token_mask = token_mask.to(self.device)
        return xs, rows, token_mask

    def __repr__(self) -> str:
        return f"SAESteerer(d_in={self.d_in}, d_sae={self.d_sae}, dtype={self.dtype}, device={self.device}, backend={self.backend!r})"


def _cast_back(x: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """The SAE's result ``ys`` (computed on ``xs``, x in the SAE's dtype/device) in x's dtype/device.

    When the SAE's dtype is at least as precise as x's, x -> xs is exact and one rounding of ys
    suffices. Otherwise only the edit ``ys - xs`` is carried back, so x's own precision survives,
    and unedited elements are x bit for bit."""
    if xs is x:
        return ys
    if torch.promote_types(x.dtype, xs.dtype) == xs.dtype:
        return ys.to(device=x.device, dtype=x.dtype)
    delta = ys.to(x.dtype) - xs.to(x.dtype)
    return torch.where(ys == xs, x.to(ys.device), x.to(ys.device) + delta).to(x.device)
