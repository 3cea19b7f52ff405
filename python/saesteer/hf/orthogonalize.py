"""Weight orthogonalization (Arditi et al. 2024, sec. 2.4 "weight editing"): directional ablation
folded into the weights, so the edited model refuses less with no hooks at all.

Every matrix that writes to the residual stream loses its component along the unit direction
``r``: the token (and learned position) embeddings ``E <- E - (E r) r^T``, and each decoder layer's
attention output and MLP down projections ``W_out <- W_out - r (r^T W_out)`` (their biases too).
No layer then writes along ``r``, which is what :func:`~saesteer.hf.directional_ablation` enforces
with hooks at every layer, so the two give the same logits (to float rounding). A tied unembedding
is untied first: the unembedding reads the stream and must keep its ``r`` component.

Models whose layers normalise what they write (Gemma2/3's post-attention and post-feedforward
norms) cannot be edited this way: the norm's output along ``r`` depends on its input, not linearly
on a weight; they are refused with an error.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .directions import as_direction, residual_writers, unit_direction
from .layers import find_layers, hidden_size

__all__ = ["orthogonalize", "save_orthogonalized", "load_direction"]

# The projection that writes a block's output into the residual stream, by module name.
_OUT_PROJ = ("o_proj", "out_proj", "c_proj", "dense", "down_proj", "fc2", "dense_4h_to_h", "w2", "fc_out")


def _out_projection(module: nn.Module, what: str) -> nn.Module:
    for n in _OUT_PROJ:
        m = getattr(module, n, None)
        if m is not None and hasattr(m, "weight"):
            return m
    raise ValueError(f"orthogonalize: cannot find the output projection of {what} {type(module).__name__} "
                     f"(looked for {', '.join(_OUT_PROJ)})")


def _project_out_rows(w: torch.Tensor, r: torch.Tensor) -> None:
    """``w [n, d] <- w - (w r) r^T`` in place (rows live in the residual space)."""
    wf = w.float()
    w.copy_(wf - (wf @ r)[:, None] * r[None, :])


def _project_out_cols(w: torch.Tensor, r: torch.Tensor) -> None:
    """``w [d, n] <- w - r (r^T w)`` in place (columns live in the residual space)."""
    wf = w.float()
    w.copy_(wf - r[:, None] * (r @ wf)[None, :])


def _edit_writer(m: nn.Module, r: torch.Tensor) -> None:
    d = r.shape[0]
    r = r.to(m.weight.device)
    if isinstance(m, nn.Linear) or m.weight.shape[0] == d and m.weight.shape[1] != d:
        _project_out_cols(m.weight.data, r)  # nn.Linear: weight [out = d, in]
    elif type(m).__name__ == "Conv1D" or m.weight.shape[1] == d:
        _project_out_rows(m.weight.data, r)  # GPT-2's Conv1D: weight [in, out = d]
    else:
        raise ValueError(f"orthogonalize: {type(m).__name__} weight {tuple(m.weight.shape)} has no side of size {d}")
    b = getattr(m, "bias", None)
    if b is not None:
        bf = b.data.float()
        b.data.copy_(bf - (bf @ r) * r)


def _check_writers(model: nn.Module) -> list[nn.Module]:
    _, blocks = find_layers(model)
    out = []
    for block in blocks:
        writers = residual_writers(block)
        if any(isinstance(w, nn.Module) and "norm" in type(w).__name__.lower() for w in writers):
            raise ValueError(
                f"orthogonalize: {type(block).__name__} normalises what it writes to the residual stream (post-attention / "
                "post-feedforward norms), so directional ablation cannot be folded into its weights; use the "
                "directional_ablation hooks for this model")
        out += [_out_projection(writers[0], "attention"), _out_projection(writers[1], "MLP")]
    return out


@torch.no_grad()
def orthogonalize(model: nn.Module, direction) -> nn.Module:
    """Fold the directional ablation of ``direction`` into ``model``'s weights, in place; returns it.

    Checks everything (the direction's size and values, that every layer's writers are found and
    can be edited) before any weight changes. A tied unembedding is untied (``lm_head`` gets its own
    copy, ``config.tie_word_embeddings = False``) so it keeps reading the full stream.
    """
    r = unit_direction(as_direction(direction, hidden_size(model)))
    writers = _check_writers(model)
    emb = model.get_input_embeddings()
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and head.weight is emb.weight:
        head.weight = nn.Parameter(emb.weight.detach().clone())
        if getattr(model, "config", None) is not None:
            model.config.tie_word_embeddings = False
            # transformers >= 4.5x also reads the text config of composite models
            if hasattr(model.config, "get_text_config"):
                model.config.get_text_config().tie_word_embeddings = False
    _project_out_rows(emb.weight.data, r.to(emb.weight.device))
    for pos_name in ("wpe", "embed_positions"):  # learned absolute positions (GPT-2, OPT) write to the stream too
        base = getattr(model, getattr(model, "base_model_prefix", ""), model)
        pe = getattr(base, pos_name, None)
        if isinstance(pe, nn.Embedding):
            _project_out_rows(pe.weight.data, r.to(pe.weight.device))
    for m in writers:
        _edit_writer(m, r)
    return model


def load_direction(path: str | Path) -> dict:
    """``{"direction", "reference" (or None), "layer", "position", "ablation"}`` from discover's
    ``direction.safetensors``."""
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"direction: {str(p)!r} is not a file (expected discover's direction.safetensors)")
    with safe_open(str(p), framework="pt") as f:
        keys = set(f.keys())
        if "direction" not in keys:
            raise ValueError(f"direction: {p} holds no 'direction' tensor (has {sorted(keys)})")
        meta = f.metadata() or {}
        out = {"direction": f.get_tensor("direction"), "reference": f.get_tensor("reference") if "reference" in keys else None}
    out["layer"] = int(meta["layer"]) if "layer" in meta else None
    out["position"] = int(meta["position"]) if "position" in meta else None
    out["ablation"] = meta.get("ablation")
    return out


def save_orthogonalized(model: nn.Module, direction, out: str | Path, tokenizer=None) -> Path:
    """:func:`orthogonalize` ``model`` (in place) and save it, with ``tokenizer`` when given, as a new
    HF checkpoint in ``out`` (which must not hold a checkpoint already)."""
    out = Path(out)
    if (out / "config.json").exists():
        raise FileExistsError(f"out: {str(out)!r} already holds a checkpoint; choose a new directory")
    orthogonalize(model, direction)
    model.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out
