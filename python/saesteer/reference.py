"""Pure-PyTorch reference of every saesteer op: the oracle for the kernels and ``backend="torch"``.

Everything here is written for clarity, computed in float32 (or float64 when the inputs are
float64), and checked against sae-lens itself in ``tests/test_sae.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .intervention import MODES, Intervention, as_intervention
from .packed import LAYER_NORM_EPS, PackedSAE, as_packed

__all__ = [
    "encode",
    "decode",
    "reconstruct",
    "encode_topk",
    "decode_sparse",
    "steer",
    "steer_rows",
    "feature_acts",
    "normalize_input",
    "denormalize",
    "encode_columns",
    "edit",
    "row_edit",
    "apply_delta",
    "check_token_mask",
    "trigger_score",
    "trigger_tensors",
    "trigger_from_tensors",
]

# Every function takes a saesteer.SAE or its kernel view (saesteer.packed.PackedSAE); the math
# reads the view.


def _compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    out = torch.float32
    for d in dtypes:
        out = torch.promote_types(out, d)
    return out


def normalize_input(x: torch.Tensor, sae):
    """``(x', scale, shift)`` with ``x' = norm(x) - b_dec * apply_b_dec``; ``denorm(y) = y * scale + shift``.

    ``scale``/``shift`` are ``[..., 1]`` tensors, or None for the identity.
    """
    sae = as_packed(sae)
    scale = shift = None
    if sae.normalize_activations == "constant_norm_rescale":
        coeff = (sae.d_in**0.5) / x.norm(dim=-1, keepdim=True)
        x = x * coeff
        scale = 1.0 / coeff
    elif sae.normalize_activations == "layer_norm":
        mu = x.mean(dim=-1, keepdim=True)
        x = x - mu
        std = x.std(dim=-1, keepdim=True)
        x = x / (std + LAYER_NORM_EPS)
        scale, shift = std, mu
    if sae.apply_b_dec_to_input:
        x = x - sae.b_dec.to(x.dtype)
    return x, scale, shift


def denormalize(y: torch.Tensor, scale: torch.Tensor | None, shift: torch.Tensor | None) -> torch.Tensor:
    """``y * scale + shift`` with the ``(scale, shift)`` of :func:`normalize_input` (None: identity)."""
    if scale is not None:
        y = y * scale
    if shift is not None:
        y = y + shift
    return y


def _acts_from_pre(pre: torch.Tensor, sae, cols: torch.Tensor | None) -> torch.Tensor:
    """Activation of the non-topk architectures, from ``pre = x' @ W_enc[:, cols]`` (no bias yet)."""
    p = sae.params if cols is None else sae.params[:, cols]
    p = p.to(pre.dtype)
    bias, thr, mag_scale, mag_bias = p[0], p[1], p[2], p[3]
    if sae.architecture == "gated":
        gate = (pre + bias) > 0
        return torch.where(gate, torch.relu(pre * mag_scale + mag_bias), torch.zeros_like(pre))
    h = pre + bias
    if sae.architecture == "jumprelu":
        return torch.where(h > thr, torch.relu(h), torch.zeros_like(h))
    return torch.relu(h)


def _topk_acts(xp: torch.Tensor, sae) -> torch.Tensor:
    p = sae.params.to(xp.dtype)
    score = (xp @ sae.W_enc.to(xp.dtype) + p[0]) * p[2]
    vals, idx = torch.topk(score, sae.k, dim=-1, sorted=False)
    return torch.zeros_like(score).scatter_(-1, idx, torch.relu(vals))


def encode_columns(x: torch.Tensor, sae, cols: torch.Tensor | None = None, dtype: torch.dtype | None = None):
    """Activations ``(f [..., |cols| or d_sae], scale, shift)`` computed in ``dtype``.

    ``dtype`` defaults to the compute dtype (at least float32); pass the SAE's dtype to get sae-lens's
    own low-precision arithmetic.
    """
    sae = as_packed(sae)
    cd = _compute_dtype(x.dtype, sae.dtype) if dtype is None else dtype
    xp, scale, shift = normalize_input(x.to(cd), sae)
    if sae.architecture == "topk":
        f = _topk_acts(xp, sae)
        return (f if cols is None else f[..., cols]), scale, shift
    W = sae.W_enc if cols is None else sae.W_enc_T[cols].t()
    return _acts_from_pre(xp @ W.to(cd), sae, cols), scale, shift


def encode(x: torch.Tensor, sae) -> torch.Tensor:
    """Feature activations ``f [..., d_sae]`` (sae-lens ``SAE.encode``)."""
    sae = as_packed(sae)
    sae.check_input(x)
    f, _, _ = encode_columns(x, sae)
    return f.to(torch.promote_types(x.dtype, sae.dtype))


def feature_acts(x: torch.Tensor, sae, features) -> torch.Tensor:
    """Activations of the listed features only, ``[..., |features|]`` (gathers |S| encoder columns)."""
    sae = as_packed(sae)
    sae.check_input(x)
    cols = torch.as_tensor(features, dtype=torch.long, device=sae.device)
    f, _, _ = encode_columns(x, sae, cols)
    return f.to(torch.promote_types(x.dtype, sae.dtype))


def trigger_tensors(features, weights, d_sae: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Validated ``(features int64 [|T|], weights float32 [|T|])`` on ``device`` for a trigger read.

    ``features``: distinct ids in ``[0, d_sae)`` (a sequence or a 1-D integer tensor);
    ``weights``: None (every weight 1), one float for all, or one finite float per feature.
    """
    feats = Intervention(features, "ablate").check(d_sae).features
    n = len(feats)
    if weights is None:
        w = torch.ones(n, dtype=torch.float32)
    else:
        if isinstance(weights, bool) or not isinstance(weights, (int, float, torch.Tensor)) and not hasattr(weights, "__len__"):
            raise ValueError(f"weights: expected None, a float or one float per feature, got {type(weights).__name__}")
        try:
            w = torch.as_tensor(weights, dtype=torch.float64).detach().cpu()
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"weights: expected None, a float or one float per feature, got {weights!r}") from None
        if w.dim() == 0:
            w = w.expand(n)
        if w.dim() != 1 or w.numel() != n:
            raise ValueError(f"weights: expected one weight per feature ({n}), got shape {tuple(w.shape)}")
        if not torch.isfinite(w).all():
            raise ValueError("weights: values must be finite (got NaN or inf)")
        w = w.float()
    return torch.tensor(feats, dtype=torch.int64, device=device), w.to(device)


def trigger_from_tensors(x: torch.Tensor, sae, features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """:func:`trigger_score` on validated tensors (``features int64 [|T|]``, ``weights f32 [|T|]``)."""
    sae = as_packed(sae)
    f, _, _ = encode_columns(x, sae, features)
    return (f @ weights.to(f.dtype)).float() if features.numel() else x.new_zeros(x.shape[:-1], dtype=torch.float32)


def trigger_score(x: torch.Tensor, sae, features, weights=None) -> torch.Tensor:
    """The trigger read ``score[...] = sum_j weights[j] * f_{features[j]}(x[...])``, float32 ``[...]``.

    ``f`` are the SAE's activations (sae-lens ``encode``), computed in float32 (float64 for float64
    inputs) from the |T| encoder columns of the features alone for standard, jumprelu and gated
    SAEs (the subset encode of :func:`steer`); topk needs the full encode. ``weights`` default to 1.
    """
    sae = as_packed(sae)
    sae.check_input(x)
    feats, w = trigger_tensors(features, weights, sae.d_sae, sae.device)
    return trigger_from_tensors(x, sae, feats, w)


def decode(f: torch.Tensor, sae) -> torch.Tensor:
    """``f * dec_scale @ W_dec + b_dec`` (sae-lens ``decode`` without the run-time denorm)."""
    sae = as_packed(sae)
    if f.shape[-1] != sae.d_sae:
        raise ValueError(f"f: expected last dimension d_sae={sae.d_sae}, got shape {tuple(f.shape)}")
    cd = _compute_dtype(f.dtype, sae.dtype)
    p = sae.params.to(cd)
    out = (f.to(cd) * p[4]) @ sae.W_dec.to(cd) + sae.b_dec.to(cd)
    return out.to(torch.promote_types(f.dtype, sae.dtype))


def reconstruct(x: torch.Tensor, sae) -> torch.Tensor:
    """``denorm(decode(encode(x)))`` — sae-lens ``SAE.forward`` without the error term."""
    sae = as_packed(sae)
    sae.check_input(x)
    f, scale, shift = encode_columns(x, sae)
    cd = f.dtype
    p = sae.params.to(cd)
    out = denormalize((f * p[4]) @ sae.W_dec.to(cd) + sae.b_dec.to(cd), scale, shift)
    return out.to(torch.promote_types(x.dtype, sae.dtype))


def encode_topk(x: torch.Tensor, sae, k: int):
    """``(values [..., k], indices int64 [..., k])``: the k largest activations per row, descending.

    Ties (in particular among zero activations) are broken arbitrarily.
    """
    sae = as_packed(sae)
    sae.check_input(x)
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= sae.d_sae:
        raise ValueError(f"k: expected an int in [1, d_sae={sae.d_sae}], got {k!r}")
    f, _, _ = encode_columns(x, sae)
    vals, idx = torch.topk(f, k, dim=-1, sorted=True)
    return vals.to(torch.promote_types(x.dtype, sae.dtype)), idx


def decode_sparse(values: torch.Tensor, indices: torch.Tensor, sae) -> torch.Tensor:
    """``sum_j values[..., j] * dec_scale[i_j] * W_dec[i_j] + b_dec`` with ``i_j = indices[..., j]``."""
    sae = as_packed(sae)
    if values.shape != indices.shape:
        raise ValueError(f"values/indices: shapes differ, {tuple(values.shape)} vs {tuple(indices.shape)}")
    cd = _compute_dtype(values.dtype, sae.dtype)
    lead = values.shape[:-1]
    k = values.shape[-1]
    idx = indices.reshape(-1, k).long()
    w = values.reshape(-1, k).to(cd) * sae.params[4].to(cd)[idx]
    out = F.embedding_bag(idx, sae.W_dec.to(cd), per_sample_weights=w, mode="sum") + sae.b_dec.to(cd)
    return out.reshape(*lead, sae.d_in).to(values.dtype)


def edit(f: torch.Tensor, mode: str, v: torch.Tensor) -> torch.Tensor:
    """The edited activations ``f'`` of ``f`` under ``mode`` with values ``v`` (broadcast to ``f``)."""
    if mode == "ablate":
        return torch.zeros_like(f)
    if mode == "scale":
        return f * v
    if mode == "clamp":
        return v.expand_as(f).clone()
    if mode == "add":
        return f + v
    raise ValueError(f"mode: expected one of {', '.join(MODES)}, got {mode!r}")


def apply_delta(x, sae, feats, coef_fn, token_mask):
    """``y = x + s * ((f' - f) * dec_scale) @ W_dec[S]`` with ``f'= coef_fn(f)``, the activations
    ``f`` of the features ``feats`` (int64 tensor ``[|S|]``) of ``x [..., d_in]``; tokens where
    ``token_mask`` is False, or whose features do not change, are ``x`` bit for bit."""
    sae = as_packed(sae)
    cd = _compute_dtype(x.dtype, sae.dtype)
    f, scale, _ = encode_columns(x, sae, feats)
    coef = (coef_fn(f) - f) * sae.params[4, feats].to(cd)
    if scale is not None:
        coef = coef * scale
    delta = coef @ sae.W_dec[feats].to(cd)
    # A token whose features did not change keeps x bit for bit (x + 0.0 would turn -0.0 into +0.0).
    changed = (coef != 0).any(dim=-1, keepdim=True)
    if token_mask is not None:
        changed = changed & token_mask.unsqueeze(-1)
    return torch.where(changed, (x.to(cd) + delta).to(x.dtype), x)


def check_token_mask(token_mask, lead, device):
    """Validate ``token_mask`` (None, or a bool tensor of shape ``lead`` on ``device``); return it."""
    if token_mask is None:
        return None
    if not isinstance(token_mask, torch.Tensor) or token_mask.dtype != torch.bool:
        raise ValueError(
            f"token_mask: expected a bool tensor of shape {tuple(lead)}, got "
            f"{getattr(token_mask, 'dtype', type(token_mask).__name__)}"
        )
    if tuple(token_mask.shape) != tuple(lead):
        raise ValueError(f"token_mask: expected shape {tuple(lead)} (x's leading dims), got {tuple(token_mask.shape)}")
    if token_mask.device != device:
        raise ValueError(f"token_mask: on {token_mask.device} but x is on {device}")
    return token_mask


def steer(x: torch.Tensor, sae, intervention: Intervention, token_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Error-preserving steer of ``x [..., d_in]``.

    ``y = x + s * sum_{i in S} (f'_i - f_i) * W_dec[i]`` where ``f' = edit(f)`` (see
    :class:`saesteer.Intervention`) and ``s`` is the per-token denormalization scale. Equal to
    sae-lens's ``decode(f') + (x - decode(f))`` up to rounding; tokens where ``token_mask`` is False,
    or where nothing changes, are returned bit for bit.
    """
    sae = as_packed(sae)
    sae.check_input(x)
    iv = as_intervention(intervention, sae.d_sae)
    mask = check_token_mask(token_mask, x.shape[:-1], x.device)
    if not iv.features:
        return x.clone()
    feats, vals = iv.tensors(sae.device)
    return apply_delta(x, sae, feats, lambda f: edit(f, iv.mode, vals.to(f.dtype)), mask)


def steer_rows(
    x: torch.Tensor,
    sae,
    features,
    values: torch.Tensor,
    mode: str,
    token_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-row steer: row ``r`` of ``x [R, T, d_in]`` gets its own intervention on ``features [|S|]``.

    ``values [R, |S|]``: for ``ablate`` a 0/1 mask (1 = ablate that feature in that row), else the
    per-row values of ``scale``/``clamp``/``add``.
    """
    sae = as_packed(sae)
    sae.check_input(x)
    if x.dim() != 3:
        raise ValueError(f"x: steer_rows expects [R, T, d_in], got shape {tuple(x.shape)}")
    iv = Intervention(features, "ablate").check(sae.d_sae)  # validates the ids
    R, S = x.shape[0], len(iv.features)
    if not isinstance(values, torch.Tensor) or tuple(values.shape) != (R, S):
        raise ValueError(f"values: expected a tensor of shape [R={R}, |S|={S}], got {tuple(getattr(values, 'shape', ())) or type(values).__name__}")
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {', '.join(MODES)}, got {mode!r}")
    mask = check_token_mask(token_mask, x.shape[:-1], x.device)
    if S == 0:
        return x.clone()
    feats, _ = iv.tensors(sae.device)
    return apply_delta(x, sae, feats, row_edit(values, mode), mask)


def row_edit(values: torch.Tensor, mode: str):
    """The per-row edit of :func:`steer_rows` as a function of ``f [R, T, |S|]``: row ``r`` takes
    ``values[r]`` (for ``ablate`` a 0/1 mask, 1 = ablate)."""

    def fn(f):
        v = values.to(device=f.device, dtype=f.dtype)[:, None, :]
        if mode == "ablate":
            return f * (1 - v)
        return edit(f, mode, v)

    return fn
