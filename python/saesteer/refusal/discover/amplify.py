"""The refusal feature(s) to amplify (O'Brien et al.: clamping a refusal feature high makes the model
refuse): the features of the minimal set whose decoder rows point furthest along the refusal
direction at their own SAE's hook point, with the largest activation each reaches on the harmful
search prompts' last position (the clamp value)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..features import site_residuals
from ..saeset import SAESet
from .config import DiscoverConfig
from .splits import PromptSplits

__all__ = ["Amplify", "amplify_stage"]


@dataclass
class Amplify:
    """``features`` (flat ids, best first), their ``cosines`` to the site direction and ``values``
    (the clamp value: each feature's largest activation on the harmful search prompts)."""

    features: list[int]
    cosines: list[float]
    values: list[float]


def amplify_stage(model, tokenizer, saes: SAESet, splits: PromptSplits, pool: list[int], site_dirs: list[torch.Tensor],
                  cfg: DiscoverConfig, n: int = 1) -> Amplify:
    """The ``n`` features of ``pool`` (flat ids, e.g. the minimal set) with the largest positive
    cosine between decoder row and the refusal direction at their SAE's hook point."""
    rows = []
    for g in pool:
        k = saes.member(g)
        s, d = saes.saes[k], site_dirs[k]
        w = s.W_dec[g - saes.offsets[k]].float()
        dd = d.float().to(w.device)
        rows.append((float(w @ dd / (w.norm().clamp_min(1e-12) * dd.norm().clamp_min(1e-12))), g))
    rows = sorted((r for r in rows if r[0] > 0), reverse=True)[:n]
    values = []
    for _, g in rows:
        k = saes.member(g)
        s = saes.saes[k]
        x = site_residuals(model, tokenizer, s, splits.search, layer=saes.layers[k], batch_size=cfg.batch_size)
        values.append(float(s.encode(x.to(s.device, s.dtype)).float()[:, g - saes.offsets[k]].max()))
    return Amplify([g for _, g in rows], [c for c, _ in rows], values)
