"""Candidate refusal features (Prakash et al. stage 1; Yeo et al.).

* ``cosine``: rank features by the cosine between their decoder row ``W_dec[i]`` and the
  refusal direction taken at the SAE's hook point.
* ``attribution``: attribution patching of the refusal score through the SAE with its error term
  carried (Yeo et al.): the first-order effect of ablating feature ``i`` is ``-f_i * dm/df_i``,
  summed over positions and averaged over harmful prompts; features whose ablation lowers refusal
  the most rank first. ``saesteer discover``'s default.
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import torch

from .. import reference
from ..hf import find_layers, intercept
from ..sae import SAE
from .chat import format_prompts, refusal_scores_from_logits, tokenize_prompts, tokenize_texts

__all__ = ["rank_by_cosine", "rank_by_attribution", "hook_module", "site", "capture_site", "site_residuals"]


def rank_by_cosine(sae: SAE, direction: torch.Tensor, top: int = 32) -> list[tuple[int, float]]:
    """``[(feature, cosine), ...]`` of the ``top`` decoder rows most aligned with ``direction``."""
    if direction.shape[-1] != sae.d_in:
        raise ValueError(f"direction: expected {sae.d_in} dims (the SAE's d_in), got {tuple(direction.shape)}")
    W = sae.W_dec.float()
    r = direction.float().to(W.device)
    cos = (W @ r) / (W.norm(dim=-1).clamp_min(1e-12) * r.norm().clamp_min(1e-12))
    vals, idx = cos.topk(min(top, sae.d_sae))
    return [(int(i), float(v)) for i, v in zip(idx.tolist(), vals.tolist())]


def hook_module(model, sae: SAE, layer: int | None = None):
    """``(module, is_pre)``: the module whose output (resid_post) or input (resid_pre) the SAE reads."""
    _, blocks = find_layers(model)
    hook = sae.hook_name or ""
    if layer is None:
        layer = sae.hook_layer
    if layer is None:
        raise ValueError("layer: the SAE has no hook_name with a layer; pass layer=")
    if not 0 <= layer < len(blocks):
        raise ValueError(f"layer: {layer} is out of range; the model has {len(blocks)} decoder layers")
    return blocks[layer], hook.endswith("hook_resid_pre")


def site(model, sae: SAE, layer: int | None = None) -> tuple[int, str]:
    """``(layer, "resid_pre"|"resid_post")``: the hook point the SAE reads (``layer`` overrides its
    hook's layer), checked against the model's layers."""
    hook_module(model, sae, layer)
    return (sae.hook_layer if layer is None else layer), ("resid_pre" if (sae.hook_name or "").endswith("hook_resid_pre") else "resid_post")


@contextlib.contextmanager
def capture_site(model, sae: SAE, layer: int | None = None):
    """Record the residual stream at the SAE's hook point: yields a dict whose ``"x"`` holds the
    ``[B, T, d_model]`` activations of the latest forward (unedited, read-only)."""
    got: dict = {}

    def record(name, x):
        got["x"] = x.detach()

    with intercept(model, site(model, sae, layer), record):
        yield got


@torch.no_grad()
def site_residuals(model, tokenizer, sae: SAE, prompts: Sequence[str], *, position: int = -1, layer: int | None = None, batch_size: int = 32) -> torch.Tensor:
    """Residual stream ``[N, d_model]`` (float32, CPU) at the SAE's hook point and prompt position
    ``position`` (negative, from the end; left padding aligns them) of each chat-formatted prompt."""
    device = next(model.parameters()).device
    texts = format_prompts(tokenizer, prompts)
    out = []
    with capture_site(model, sae, layer) as got:
        for b in range(0, len(texts), batch_size):
            model(**tokenize_texts(tokenizer, texts[b : b + batch_size], device))
            out.append(got["x"][:, position].float().cpu())
    return torch.cat(out) if out else torch.empty(0, sae.d_in)


def rank_by_attribution(
    model,
    tokenizer,
    sae: SAE,
    harmful: Sequence[str],
    refusal_tokens: Sequence[int],
    *,
    top: int = 32,
    layer: int | None = None,
    batch_size: int = 16,
) -> list[tuple[int, float]]:
    """``[(feature, attribution), ...]``: features whose ablation most lowers the refusal score."""
    hook = site(model, sae, layer)
    device = next(model.parameters()).device
    total = torch.zeros(sae.d_sae, dtype=torch.float64)
    captured = {}

    def swap(x):
        # x -> denorm(decode(f)) + error, with f a leaf that collects the gradient (the run-time
        # normalization's scale and shift depend on x only, so they are constants here).
        xs = x.detach().to(sae.dtype)
        with torch.no_grad():
            f, scale, shift = reference.encode_columns(xs, sae)
        f = f.float().requires_grad_(True)
        captured["f"] = f
        recon = reference.denormalize(sae.decode(f).float(), scale, shift)
        # plus the error term xs - recon: the forward value is xs, the gradient flows through f
        return (recon + (xs.float() - recon.detach())).to(x.dtype)

    with intercept(model, hook, lambda name, x: swap(x)), torch.enable_grad():
        for b in range(0, len(harmful), batch_size):
            enc = tokenize_prompts(tokenizer, harmful[b : b + batch_size], device)
            logits = model(**enc).logits[:, -1]
            score = refusal_scores_from_logits(logits, refusal_tokens).sum()
            (g,) = torch.autograd.grad(score, captured["f"])
            f = captured["f"].detach()
            m = enc["attention_mask"].to(f.device).unsqueeze(-1).to(f.dtype)
            total += (-(f * g) * m).sum(dim=(0, 1)).double().cpu()
    attr = total / max(len(harmful), 1)
    vals, idx = (-attr).topk(min(top, sae.d_sae))  # most negative effect on refusal first
    return [(int(i), float(-v)) for i, v in zip(idx.tolist(), vals.tolist())]
