"""Edits along a direction of the residual stream (Arditi et al. 2024; Marshall et al. 2024), on
the same hooks and handle as the SAE edits: :func:`directional_ablation`, :func:`add_direction`,
:func:`affine_ablation`."""

from __future__ import annotations

import torch
from torch import nn

from .handle import SteeringHandle
from .layers import check_layer, find_layers, hidden_size, module_device

__all__ = ["directional_ablation", "add_direction", "affine_ablation"]


class _Project:
    """``x - (x . r) r`` for a unit direction ``r`` (float32), computed in float32."""

    def __init__(self, direction: torch.Tensor, device: torch.device):
        self.r = direction.to(device=device, dtype=torch.float32)

    def __call__(self, x, mask):
        xf = x.float()
        y = (xf - (xf @ self.r).unsqueeze(-1) * self.r).to(x.dtype)
        return y if mask is None else torch.where(mask.unsqueeze(-1), y, x)


class _Add:
    """``x + coeff * direction``; ``coeff`` is a tensor (updatable under torch.compile)."""

    def __init__(self, direction: torch.Tensor, coeff: torch.Tensor, device: torch.device):
        self.v = direction.to(device=device, dtype=torch.float32)
        self.coeff = coeff

    def __call__(self, x, mask):
        y = (x.float() + self.coeff.to(x.device) * self.v).to(x.dtype)
        return y if mask is None else torch.where(mask.unsqueeze(-1), y, x)


class _Affine:
    """``x - ((x . r) - c) r + coeff * v``: the projection on the unit direction ``r`` set to ``c``
    (affine concept editing), plus ``coeff`` times the raw direction ``v``."""

    def __init__(self, r: torch.Tensor, c: float, v: torch.Tensor, coeff: torch.Tensor, device: torch.device):
        self.r = r.to(device=device, dtype=torch.float32)
        self.c = float(c)
        self.v = v.to(device=device, dtype=torch.float32)
        self.coeff = coeff

    def __call__(self, x, mask):
        xf = x.float()
        y = (xf - ((xf @ self.r) - self.c).unsqueeze(-1) * self.r + self.coeff.to(x.device) * self.v).to(x.dtype)
        return y if mask is None else torch.where(mask.unsqueeze(-1), y, x)


def as_direction(direction, hidden: int | None, name: str = "direction") -> torch.Tensor:
    """``direction`` as a finite float32 vector of the model's ``hidden`` size, or a ValueError naming ``name``."""
    d = torch.as_tensor(direction).detach()
    if not d.is_floating_point() or d.dim() != 1:
        raise ValueError(f"{name}: expected a 1-D float tensor [d_model], got {d.dtype} of shape {tuple(d.shape)}")
    if hidden is not None and d.shape[0] != hidden:
        raise ValueError(f"{name}: length {d.shape[0]} but the model's hidden size is {hidden}")
    d = d.float()
    if not torch.isfinite(d).all():
        raise ValueError(f"{name}: contains NaN or inf")
    return d


def unit_direction(d: torch.Tensor) -> torch.Tensor:
    """``d / ||d||``; the zero vector is a ValueError."""
    norm = d.norm()
    if norm == 0:
        raise ValueError("direction: the zero vector has no direction")
    return d / norm


def residual_writers(block: nn.Module) -> list[nn.Module]:
    """The modules whose outputs are added to the residual stream in one decoder layer."""
    if hasattr(block, "post_feedforward_layernorm") and hasattr(block, "post_attention_layernorm"):
        # Gemma2/3 sandwich norms: what enters the stream is the post-norms' output.
        return [block.post_attention_layernorm, block.post_feedforward_layernorm]
    attn = next((getattr(block, n) for n in ("self_attn", "attn", "attention", "self_attention") if hasattr(block, n)), None)
    mlp = next((getattr(block, n) for n in ("mlp", "feed_forward", "ffn") if hasattr(block, n)), None)
    if attn is None or mlp is None:
        raise ValueError(
            f"directional_ablation: cannot find the attention and MLP modules of {type(block).__name__} "
            "(looked for self_attn/attn and mlp)"
        )
    return [attn, mlp]


def directional_ablation(model: nn.Module, direction, *, positions="all", layers=None) -> SteeringHandle:
    """Project ``direction`` out of the residual stream everywhere (Arditi et al. 2024, sec. 2.4).

    ``x <- x - (x . r) r`` with ``r = direction / ||direction||``, applied to every decoder layer's
    input and to every attention and MLP output (what each layer writes to the stream), so no
    component can write along ``r``. Returns a :class:`SteeringHandle` (a context manager).
    """
    owner, blocks = find_layers(model, layers)
    r = unit_direction(as_direction(direction, hidden_size(model)))
    handle = SteeringHandle(model, owner, positions)
    model_device = module_device(model, torch.device("cpu"))
    writers = [residual_writers(b) for b in blocks]  # validated before anything is registered
    for i, block in enumerate(blocks):
        device = module_device(block, model_device)
        edit = _Project(r, device)
        handle.add(block, True, device, edit, (i, "resid_pre"))
        for m in writers[i]:
            handle.add(m, False, device, edit)
    return handle.register()


def add_direction(
    model: nn.Module, direction, layer: int, coeff: float = 1.0, *, positions="all", layers=None
) -> SteeringHandle:
    """Activation addition (Arditi et al. 2024, sec. 2.4): ``x <- x + coeff * direction`` at the
    input of decoder layer ``layer`` (``blocks.layer.hook_resid_pre``), every edited token.

    ``direction`` is used as given (not normalised): with a difference-in-means vector and
    ``coeff=1`` this is Arditi's "induce refusal"; ``coeff=-1`` subtracts it. ``handle.coeff`` can be
    changed later (also under torch.compile, without recompiling).
    """
    d = as_direction(direction, hidden_size(model))
    return _layer_input_edit(model, layers, layer, coeff, positions, lambda c, dev: _Add(d, c, dev))


def _layer_input_edit(model, layers, layer, coeff: float, positions, make_edit) -> SteeringHandle:
    """One edit at the input of decoder layer ``layer`` with an updatable ``handle.coeff``;
    ``make_edit(coeff_tensor, device)`` builds it."""
    owner, blocks = find_layers(model, layers)
    layer = check_layer(layer, len(blocks), negative=True)
    device = module_device(blocks[layer], module_device(model, torch.device("cpu")))
    coeff_t = torch.tensor(float(coeff), dtype=torch.float32, device=device)
    handle = SteeringHandle(model, owner, positions, coeff=coeff_t)
    handle.add(blocks[layer], True, device, make_edit(coeff_t, device), (layer, "resid_pre"))
    return handle.register()


def affine_ablation(
    model: nn.Module, direction, reference, layer: int, coeff: float = 0.0, *, positions="all", layers=None
) -> SteeringHandle:
    """Affine concept editing (Marshall et al. 2024, "Refusal in LLMs is an affine function") at the
    input of decoder layer ``layer``: ``x <- x - (x . r) r + (reference . r) r + coeff * direction``
    with ``r = direction / ||direction||``.

    Directional ablation (:func:`directional_ablation`) sets the projection on ``r`` to zero; that
    only removes refusal when harmless activations sit near zero along ``r``. Here the projection is
    set to the harmless mean's (``reference``: the mean harmless activation at that layer and
    position), so ``coeff=0`` makes every prompt look harmless along ``r`` and ``coeff=1`` adds the
    difference in means on top (induces refusal). ``handle.coeff`` is updatable like
    :func:`add_direction`'s.
    """
    hidden = hidden_size(model)
    d = as_direction(direction, hidden)
    ref = as_direction(reference, hidden, "reference")
    r = unit_direction(d)
    return _layer_input_edit(model, layers, layer, coeff, positions, lambda c, dev: _Affine(r, float(ref @ r), d, c, dev))
