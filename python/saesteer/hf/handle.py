"""Steering hooks on a HuggingFace model: :func:`attach` / :func:`steer` and their :class:`SteeringHandle`.

Each ``(sae, intervention)`` pair becomes an :class:`SAEEdit`, an adapter on the engine-neutral
:class:`saesteer.steering.SAESteerer`: the hooks only find the module, the tokens (a
:class:`~saesteer.hf.positions.PositionTracker`) and the batch row of each token; the edit itself
is the core's.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..steering import SAESteerer, as_sae
from .capture import input_hook, output_hook
from .conditions import Trigger, parse_hf_when, split_when
from .layers import find_layers, hidden_size, hook_name, hook_point, module_device
from .positions import PositionTracker

__all__ = ["attach", "steer", "SteeringHandle", "SAEEdit", "bos_token_id"]


class SAEEdit:
    """One SAE's error-preserving edit at one hook point: a single intervention, or a list with one
    per batch row. Called on the hook point's ``[B, T, d]`` hidden states and ``[B, T]`` token mask."""

    def __init__(self, sae, intervention, device: torch.device, backend: str, trigger: Trigger | None = None):
        self.steerer = SAESteerer(sae, device, backend)
        self.trigger = trigger  # a condition (when): the edit applies only where it fires
        self.backend = self.steerer.backend
        self.per_row = isinstance(intervention, (list, tuple))
        self.rows = len(intervention) if self.per_row else 1
        self.plan = self.steerer.plan(self._as_list(intervention))

    def _as_list(self, intervention) -> list:
        if not self.per_row:
            return [intervention]
        if not intervention:
            raise ValueError("intervention: an empty list of per-row interventions")
        return list(intervention)

    def set(self, intervention) -> None:
        """Install ``intervention``; when its features and mode are unchanged the value tensors are
        updated in place (what a compiled graph reads), else the plan is rebuilt."""
        if isinstance(intervention, (list, tuple)) != self.per_row:
            raise ValueError("update: cannot switch between one intervention and per-row interventions")
        ivs = self._as_list(intervention)
        if len(ivs) != self.rows:
            raise ValueError(f"update: {len(ivs)} per-row interventions, but this edit was attached with {self.rows}")
        self.plan = self.steerer.update(self.plan, ivs)

    def __call__(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if self.per_row and x.shape[0] != self.rows:
            raise ValueError(
                f"intervention: {self.rows} per-row interventions but the batch has {x.shape[0]} rows "
                "(num_return_sequences and beam search multiply the rows; give one intervention per row)"
            )
        if self.trigger is not None:
            if self.plan.is_noop:
                return x  # a monitor
            fired = self.trigger.mask(x.device)
            mask = fired if mask is None else mask & fired
        return self.steerer.apply_rows(x, self.plan, mask)


class Site:
    """Every edit of one handle at one module, as one forward (pre-)hook."""

    def __init__(self, handle: "SteeringHandle", module: nn.Module, pre: bool, flag: torch.Tensor):
        self.handle = handle
        self.module = module
        self.pre = pre
        self.edits: list = []
        self.triggers: list[Trigger] = []  # conditions read here, on the stream before this site's edits
        self.flag = flag

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        pos = self.handle.positions
        if self.triggers and self.handle.enabled:
            for t in self.triggers:
                t.read(x)
        if pos.active:
            if pos.skip:
                return x
            mask = pos.mask
        elif pos.kind == "all":
            mask = None  # the layer was called on its own: edit every token
        else:
            raise RuntimeError(
                f"saesteer: positions={pos.kind!r} needs the model's forward to see the prompt; call the "
                "model, not the layer"
            )
        if mask is not None and mask.device != x.device:  # layers spread over devices (device_map)
            mask = mask.to(x.device, non_blocking=True)
        if torch.compiler.is_compiling():
            # The flag is a tensor: the compiled graph reads it, so toggling never recompiles.
            mask = self.flag.expand(x.shape[0], x.shape[1]) if mask is None else mask & self.flag
        elif not self.handle.enabled:
            return x
        for edit in self.edits:
            x = edit(x, mask)
        return x


class SteeringHandle:
    """Steering hooks on one model. A context manager: leaving the ``with`` block removes them.

    Attributes
    ----------
    enabled : bool
        Switch every edit of the handle off and on without touching the hooks (also inside a
        ``torch.compile``-d model, without recompiling).
    edits : list
        One entry per ``(sae, intervention)`` pair (or direction edit), in the order given.
    hook_points : list of (layer index, "resid_pre" | "resid_post")
        Where each entry of ``edits`` applies.

    Built by :func:`attach` and the direction edits: :meth:`add` each edit, then :meth:`register`.
    """

    def __init__(self, model: nn.Module, owner: nn.Module, positions, coeff: torch.Tensor | None = None,
                 skip_bos: bool = False):
        self.model = model
        self.positions = PositionTracker(positions, owner, skip_bos, bos_token_id(model))
        self._owner = owner
        self._enabled = True
        self._flags: dict[torch.device, torch.Tensor] = {}
        self._sites: dict[tuple[int, bool], Site] = {}
        self._removables: list = []
        self.edits: list = []
        self.hook_points: list[tuple[int, str]] = []
        self._coeff = coeff
        self.conditions: list[Trigger | None] = []  # per entry of edits: its condition (when), or None

    # -- building (everything is validated before any hook is registered) ----------------------
    def add(self, module: nn.Module, pre: bool, device: torch.device, edit, where: tuple[int, str] | None = None) -> None:
        """Run ``edit(x [B, T, d], mask [B, T] | None)`` on ``module``'s input (``pre``) or output.
        ``where`` (a layer index and hook point) lists the edit in :attr:`edits`."""
        self._site(module, pre, device).edits.append(edit)
        if where is not None:
            self.edits.append(edit)
            self.hook_points.append(where)
            self.conditions.append(getattr(edit, "trigger", None))

    def add_trigger(self, module: nn.Module, pre: bool, device: torch.device, trigger: Trigger) -> None:
        """Read ``trigger``'s condition on ``module``'s input (``pre``) or output, before the edits there."""
        self._site(module, pre, device).triggers.append(trigger)
        self.positions.track_prompt = True

    def _site(self, module: nn.Module, pre: bool, device: torch.device) -> "Site":
        key = (id(module), pre)
        if key not in self._sites:
            if device not in self._flags:
                self._flags[device] = torch.tensor(self._enabled, device=device)
            self._sites[key] = Site(self, module, pre, self._flags[device])
        return self._sites[key]

    def register(self) -> "SteeringHandle":
        """Register the hooks (all or none)."""
        try:
            pos = self.positions
            self._removables.append(self._owner.register_forward_pre_hook(pos.begin, with_kwargs=True, prepend=True))
            self._removables.append(self._owner.register_forward_hook(pos.end, with_kwargs=True, always_call=True))
            for site in self._sites.values():
                if site.pre:
                    self._removables.append(site.module.register_forward_pre_hook(input_hook(site.apply), with_kwargs=True))
                else:
                    self._removables.append(site.module.register_forward_hook(output_hook(site.apply)))
        except BaseException:
            self.remove()
            raise
        return self

    # -- public ---------------------------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        return self._enabled

    @enabled.setter
    def enabled(self, value: bool) -> None:
        self._enabled = bool(value)
        for t in self._flags.values():
            t.fill_(self._enabled)

    @property
    def active(self) -> bool:
        """True while the hooks are registered."""
        return bool(self._removables)

    def update(self, intervention, index: int = 0) -> None:
        """Replace the intervention of pair ``index`` (a single intervention, or a per-row list).

        Same features and mode: the values are written in place, so a compiled model picks them up
        without recompiling. Otherwise the edit is rebuilt (a compiled model then recompiles)."""
        edit = self.edits[index]
        if not isinstance(edit, SAEEdit):
            raise TypeError("update: this handle's edits are not SAE interventions")
        edit.set(intervention)

    @property
    def coeff(self) -> float:
        """The coefficient of :func:`~saesteer.hf.add_direction` / :func:`~saesteer.hf.affine_ablation`
        (settable; stored in a tensor)."""
        if self._coeff is None:
            raise AttributeError("coeff: only handles from add_direction or affine_ablation have a coefficient")
        return float(self._coeff)

    @coeff.setter
    def coeff(self, value: float) -> None:
        if self._coeff is None:
            raise AttributeError("coeff: only handles from add_direction or affine_ablation have a coefficient")
        self._coeff.fill_(float(value))

    def reset(self) -> None:
        """Start a new sequence: the next forward's tokens are the prompt (for positions rules)."""
        self.positions.reset()

    def remove(self) -> None:
        """Remove every hook of the handle (idempotent)."""
        while self._removables:
            self._removables.pop().remove()

    def __enter__(self) -> "SteeringHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __repr__(self) -> str:
        pts = ", ".join(f"{k}@{i}" for i, k in self.hook_points)
        return f"SteeringHandle({type(self.model).__name__}, [{pts}], enabled={self._enabled}, active={self.active})"


def bos_token_id(model: nn.Module) -> int | None:
    """The model config's ``bos_token_id`` (None when it has none)."""
    bos = getattr(getattr(model, "config", None), "bos_token_id", None)
    if isinstance(bos, (list, tuple)):
        bos = bos[0] if bos else None
    return None if bos is None else int(bos)


def _pairs(sae, intervention) -> list[tuple]:
    if isinstance(sae, (list, tuple)):
        if intervention is not None:
            raise ValueError(
                "intervention: with a list of (sae, intervention) pairs, leave the intervention argument out"
            )
        out = []
        for p in sae:
            if not isinstance(p, (list, tuple)) or len(p) not in (2, 3):
                raise TypeError(
                    "sae: expected (sae, intervention) or (sae, intervention, layer_or_hook_name) pairs, "
                    f"got {type(p).__name__}"
                )
            out.append(tuple(p) + (None,) * (3 - len(p)))
        if not out:
            raise ValueError("sae: an empty list of (sae, intervention) pairs")
        return out
    if intervention is None:
        raise ValueError("intervention: required (a saesteer.Intervention, a dict, or one per batch row)")
    return [(sae, intervention, None)]


def attach(
    model: nn.Module,
    sae,
    intervention=None,
    *,
    positions="all",
    skip_bos: bool = True,
    layer: int | None = None,
    hook: str | None = None,
    layers=None,
    backend: str = "auto",
    when=None,
) -> SteeringHandle:
    """Steer ``model`` with SAE feature interventions until ``handle.remove()``.

    Parameters
    ----------
    model : a HuggingFace causal LM (Llama, Mistral, Qwen2/3, Gemma2/3, Phi-3, GPT-2, ...) or base model
    sae : saesteer.SAE or sae_lens SAE, or a list of ``(sae, intervention)`` pairs (optionally
        ``(sae, intervention, layer_or_hook_name)``), applied in order; pairs at one hook point chain.
    intervention : saesteer.Intervention or dict, or a list with one per batch row (``None`` for an
        unsteered row). Per-row lists run as one :func:`saesteer.ops.steer_rows` per mode (clamp rows
        also per feature set), so mixed modes work, at one op call per group.
    positions : "all" | "prompt" | "generated" | bool Tensor ``[seq]``/``[batch, seq]`` | callable
        Which tokens are edited. A mask indexes sequence positions (columns of the attention mask,
        padding included); a callable gets ``(pos [T] int64, prompt_length)`` for the tokens of each
        forward and returns a bool ``[T]`` or ``[B, T]``. Padding tokens are never edited.
    skip_bos : leave each sequence's BOS token unedited (default). A token is BOS when it is the
        first non-padding token of its sequence and its id is ``model.config.bos_token_id``
        (:func:`saesteer.steering.spec.bos_token_mask`); a model without one has no BOS. The BOS
        residual of models such as Gemma-2 is an extreme outlier that SAEs do not reconstruct.
    layer, hook : where, when the SAE's ``hook_name`` is missing or to override it: a layer index and
        ``"resid_post"`` (the layer's output, default) or ``"resid_pre"`` (its input), or a full hook
        name ``hook="blocks.3.hook_resid_pre"``.
    layers : the model's decoder layers (``ModuleList``), for models the lookup does not know.
    backend : passed to :mod:`saesteer.ops` ("auto", "cuda", "triton", "cpu", "torch").
    when : a condition (:mod:`saesteer.steering.condition`): ``{"features", "threshold", "reduce",
        "scope"}`` or a linear probe ``{"features", "weights", "bias", ...}``, optionally with
        ``"sae"`` (an SAE object; default: the edit's SAE) read at that SAE's hook point, which must
        not come after the edit's. It may also be the ``"when"`` key of an intervention dict (one per
        pair); an intervention without features (or None) and a ``when`` is a monitor. Each batch row
        is decided on its own; ``scope="prompt"`` decides on the prompt and keeps the decision for
        the generated tokens. Rows where it does not fire are left unsteered bit for bit. The score
        and decision are on ``handle.conditions[i]`` (a :class:`~saesteer.hf.conditions.Trigger`).

    Returns
    -------
    SteeringHandle, also a context manager.
    """
    owner, blocks = find_layers(model, layers)
    n = len(blocks)
    hidden = hidden_size(model)
    handle = SteeringHandle(model, owner, positions, skip_bos=skip_bos)
    model_device = module_device(model, torch.device("cpu"))
    if isinstance(sae, (list, tuple)):
        if when is not None:
            raise ValueError("when: with a list of (sae, intervention) pairs, put each pair's when in its intervention dict")
        pairs = [(s, *split_when(iv, None), where) for s, iv, where in _pairs(sae, intervention)]
    else:
        iv, cond = split_when(intervention, when)
        pairs = [(s, iv, cond, where) for s, iv, where in _pairs(sae, iv)]
    for k, (s, iv, cond, where) in enumerate(pairs):
        s = as_sae(s)
        p_layer, p_hook = layer, hook
        if isinstance(where, int) and not isinstance(where, bool):
            p_layer = where
        elif isinstance(where, str):
            p_hook = where
        idx, kind = hook_point(s, n, p_layer, p_hook)
        if hidden is not None and s.d_in != hidden:
            raise ValueError(f"sae: d_in={s.d_in} but the model's hidden size is {hidden} (hook {hook_name(idx, kind)})")
        device = module_device(blocks[idx], model_device)
        trigger = None
        if cond is not None:
            label = "when" if len(pairs) == 1 else f"sae[{k}].when"
            trigger = _trigger(handle, blocks, s, (idx, kind), cond, model_device, backend, label)
        handle.add(blocks[idx], kind == "resid_pre", device, SAEEdit(s, iv, device, backend, trigger), (idx, kind))
    return handle.register()


def _trigger(handle: SteeringHandle, blocks, edit_sae, edit_at: tuple[int, str], when, model_device, backend: str, where: str) -> Trigger:
    """The :class:`Trigger` of a condition on the edit at ``edit_at``, registered at its own hook
    point (the edit's when it reads the edit's SAE), which must come no later than the edit's."""
    cond, trig_sae = parse_hf_when(when, edit_sae, where)
    at = edit_at if trig_sae is edit_sae else hook_point(trig_sae, len(blocks))
    order = lambda p: (p[0], p[1] == "resid_post")  # noqa: E731 - resid_pre of L runs before resid_post of L
    if order(at) > order(edit_at):
        raise ValueError(f"{where}.sae: the condition reads {hook_name(*at)}, after the edit at {hook_name(*edit_at)}; "
                         "a condition must be read at or before the point it gates")
    device = module_device(blocks[at[0]], model_device)
    trigger = Trigger(cond, trig_sae, device, backend, handle.positions)
    handle.add_trigger(blocks[at[0]], at[1] == "resid_pre", device, trigger)
    return trigger


def steer(model: nn.Module, sae, intervention=None, **kwargs) -> SteeringHandle:
    """:func:`attach`, meant as a context manager: ``with saesteer.steer(model, sae, iv): ...``.

    The hooks are registered by this call and removed when the ``with`` block exits, also on an
    exception. Takes the same arguments as :func:`attach`.
    """
    return attach(model, sae, intervention, **kwargs)
