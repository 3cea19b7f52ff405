"""Candidate refusal features (Prakash et al. stage 1; Yeo et al.).

* ``cosine``: rank features by the cosine between their decoder row ``W_dec[i]`` and the
  refusal direction taken at the SAE's hook point.
* ``attribution`` (``saesteer discover``'s default), through the SAE with its error term carried,
  in one of two forms:

  - ``"ig"`` (Yeo et al.): integrated gradients (``steps`` midpoint steps, default 10) on the
    straight path from the clean SAE codes ``f`` to the codes ``f'`` the site holds with the refusal
    direction ablated. The metric ``m`` is the logit of the first token the model gives with the
    direction ablated minus the logit of the refusal token (the refusal token the clean run
    prefers), at the last prompt position. Feature ``i``'s attribution is
    ``(f'_i - f_i) * mean_alpha dm/df_i``, averaged over each prompt's positions and over prompts;
    the features that raise ``m`` the most rank first. Summed over features and positions it is
    ``m(f') - m(f)`` (completeness, up to the Riemann error).
  - ``"zero"``: attribution patching of zero ablation, ``-f_i * d score/d f_i`` on the refusal
    score (log-odds of the refusal tokens), summed over positions and averaged over prompts: its
    first-order effect; the features whose ablation lowers refusal the most rank first.

  Both leave padding and the BOS token out (its codes stay clean along the path): steering leaves
  BOS unedited by default too.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .. import reference
from ..hf import find_layers, hook_name, hook_point, intercept
from ..hf.handle import bos_token_id
from ..hf.positions import bos_mask
from ..sae import SAE
from .saeset import SAESet
from .chat import format_prompts, refusal_scores_from_logits, tokenize_prompts, tokenize_texts

__all__ = [
    "rank_by_cosine",
    "rank_by_attribution",
    "rank_set_by_attribution",
    "attribution",
    "Attribution",
    "hook_module",
    "site",
    "capture_site",
    "site_residuals",
    "integrated_gradients",
    "IGResult",
    "ATTRIBUTIONS",
]

ATTRIBUTIONS = ("ig", "zero")


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
    idx, kind = site(model, sae, layer)
    return blocks[idx], kind == "resid_pre"


def site(model, sae: SAE, layer: int | None = None) -> tuple[int, str]:
    """``(layer, "resid_pre"|"resid_post")``: the hook point the SAE reads (``layer`` overrides its
    hook's layer; an SAE without a hook name reads a layer's output), checked against the model's
    layers by :func:`saesteer.hf.hook_point`."""
    _, blocks = find_layers(model)
    return hook_point(sae, len(blocks), layer, None if sae.hook_name else "resid_post")


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


def _edited_positions(model, enc) -> torch.Tensor:
    """``[B, T]`` bool: the real tokens of a batch that are not its BOS."""
    attn = enc["attention_mask"]
    return attn.bool() & ~bos_mask(enc["input_ids"], attn, bos_token_id(model))


def _codes(x: torch.Tensor, sae: SAE):
    """``(x on the SAE's device in its dtype, f float32, scale, shift)`` at the site, without gradients."""
    xs = x.detach().to(sae.device, sae.dtype)
    with torch.no_grad():
        f, scale, shift = reference.encode_columns(xs, sae)
    return xs, f.float(), scale, shift


def _decode(sae: SAE, f, scale, shift) -> torch.Tensor:
    """The SAE's reconstruction (float32) of the codes ``f`` with the site's normalization; the
    callers add the clean error term ``xs - decode(f_clean)``, so at the clean codes the stream is
    ``xs`` itself and the gradient flows through ``f``."""
    return reference.denormalize(sae.decode(f).float(), scale, shift)


@dataclass
class IGResult:
    """Integrated gradients per prompt: ``attr [N, d_sae]`` summed over each prompt's positions
    (BOS and padding left out), ``n_positions [N]``, and the metric at the path's ends."""

    attr: torch.Tensor
    n_positions: torch.Tensor
    metric_clean: torch.Tensor
    metric_ablated: torch.Tensor
    delta: torch.Tensor  # [N, d_sae] f' - f summed over each prompt's positions (BOS and padding out)


def integrated_gradients(
    model, tokenizer, sae: SAE, prompts: Sequence[str], refusal_tokens: Sequence[int], ablation: Callable[[], contextlib.AbstractContextManager],
    *, steps: int = 10, layer: int | None = None, batch_size: int = 16,
) -> IGResult:
    """Yeo et al.'s integrated gradients from the clean codes to the direction-ablated codes
    (``ablation()``: a steering context that ablates the refusal direction); see the module
    docstring for the metric."""
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps: expected an integer >= 1, got {steps!r}")
    hook = site(model, sae, layer)
    device = next(model.parameters()).device
    rt = torch.tensor(list(refusal_tokens), dtype=torch.long)
    attrs, counts, m0s, m1s, deltas = [], [], [], [], []
    for b in range(0, len(prompts), batch_size):
        enc = tokenize_prompts(tokenizer, prompts[b : b + batch_size], device)
        B = enc["input_ids"].shape[0]
        keep = _edited_positions(model, enc)
        with torch.no_grad():
            with capture_site(model, sae, layer) as got:
                clean_logits = model(**enc).logits[:, -1].float()
            x_clean = got["x"]
            with ablation(), capture_site(model, sae, layer) as got:
                steered_logits = model(**enc).logits[:, -1].float()
            x_abl = got["x"]
        first = steered_logits.argmax(-1).cpu()  # the steered first token
        refusal = rt[clean_logits.cpu()[:, rt].argmax(-1)]  # the refusal token the clean run prefers
        xs, f0, scale, shift = _codes(x_clean, sae)
        _, f1, _, _ = _codes(x_abl, sae)
        w = keep.to(f0.device)[..., None].float()
        delta = (f1 - f0) * w  # BOS and padding keep their clean codes
        with torch.no_grad():
            err = xs.float() - _decode(sae, f0, scale, shift)
        rows = torch.arange(B)
        grad = torch.zeros_like(f0)
        cur = {}

        def replace(name, x):
            return (_decode(sae, cur["f"], scale, shift) + err).to(x.device, x.dtype)

        def metric(logits):
            lg = logits[:, -1].float().cpu()
            return lg[rows, first] - lg[rows, refusal]

        with intercept(model, hook, replace), torch.enable_grad():
            for k in range(steps):
                cur["f"] = (f0 + (k + 0.5) / steps * delta).requires_grad_(True)
                m = metric(model(**enc).logits)
                (g,) = torch.autograd.grad(m.sum(), cur["f"])
                grad += g.detach()
        with torch.no_grad(), intercept(model, hook, replace):
            cur["f"] = f0 + delta
            m1 = metric(model(**enc).logits)
        attrs.append((delta * grad / steps).sum(1).double().cpu())
        counts.append(keep.sum(1).cpu())
        deltas.append(delta.sum(1).double().cpu())
        m0s.append((clean_logits.cpu()[rows, first] - clean_logits.cpu()[rows, refusal]).double())
        m1s.append(m1.detach().double())
    return IGResult(torch.cat(attrs), torch.cat(counts), torch.cat(m0s), torch.cat(m1s), torch.cat(deltas))


@dataclass
class Attribution:
    """Attributions of the features of an :class:`~.saeset.SAESet` (flat ids): ``per_prompt
    [N, d_sae]`` (float64; ``"ig"``: each prompt's rise of the metric towards the steered token,
    averaged over its positions; ``"zero"``: each feature's first-order effect on the refusal score
    when zero-ablated, summed over positions), ``method``, and for ``"ig"`` ``turned_down [d_sae]``:
    the features the direction's ablation lowers. ``allowed``: the flat ids ranked (None: all)."""

    per_prompt: torch.Tensor
    method: str
    turned_down: torch.Tensor | None = None
    allowed: torch.Tensor | None = None

    @property
    def mean(self) -> torch.Tensor:
        """The attribution averaged over prompts, ``[d_sae]``."""
        return self.per_prompt.mean(0)

    def _key(self, attr: torch.Tensor) -> torch.Tensor:
        """Larger is more refusal removed: ig's rise of the metric, zero's fall of the refusal score."""
        key = attr if self.method == "ig" else -attr
        if self.allowed is not None:
            key = torch.where(self.allowed, key, torch.full_like(key, float("-inf")))
        return key

    def ranking(self, top: int, *, down_first: bool = False) -> list[tuple[int, float]]:
        """``[(flat id, attribution), ...]``, the ``top`` features that most move the model from
        refusal. ``down_first`` (ig): the features the direction's ablation turns down rank first (the
        edits that turn features down can use them), the others after them."""
        attr = self.mean
        key = self._key(attr)
        if down_first and self.turned_down is not None:
            finite = key[torch.isfinite(key)]
            shift = (finite.abs().max() * 2 + 1) if finite.numel() else 1.0
            key = torch.where(self.turned_down, key, key - shift)
        n = min(top, int(torch.isfinite(key).sum()))
        _, idx = key.topk(n)
        return [(int(i), float(attr[i])) for i in idx.tolist()]

    def top_per_prompt(self, k: int) -> list[list[int]]:
        """Each prompt's own ``k`` top features by attribution (Yeo et al.'s per-prompt selection)."""
        out = []
        for row in self.per_prompt:
            key = self._key(row)
            n = min(k, int(torch.isfinite(key).sum()))
            out.append([int(i) for i in key.topk(n).indices.tolist()])
        return out


def attribution(
    model,
    tokenizer,
    saes: SAESet,
    harmful: Sequence[str],
    refusal_tokens: Sequence[int],
    *,
    allowed: Sequence[Sequence[int]] | None = None,
    batch_size: int = 16,
    method: str = "ig",
    ablation: Callable[[], contextlib.AbstractContextManager] | None = None,
    steps: int = 10,
) -> Attribution:
    """Per-prompt attributions over every feature of ``saes`` (see :class:`Attribution`).

    ``"zero"``: every SAE spliced in at its hook point in one forward (:func:`_zero_attribution`).
    ``"ig"``: Yeo et al.'s integrated gradients run per SAE (the path from its clean codes to its
    direction-ablated ones, the other sites clean), so each SAE's attributions sum to the metric
    change its own site carries; needs ``ablation``, a factory of the refusal direction's ablation.
    Both are in the metric's units, so SAEs at different layers compare. ``allowed``: per SAE, the
    local ids that may be ranked (None: all)."""
    if method not in ATTRIBUTIONS:
        raise ValueError(f"method: expected one of {', '.join(ATTRIBUTIONS)}, got {method!r}")
    mask = None
    if allowed is not None:
        mask = torch.zeros(saes.d_sae, dtype=torch.bool)
        for k, ids in enumerate(allowed):
            mask[[saes.offsets[k] + int(i) for i in ids]] = True
    if method == "zero":
        per = _zero_attribution(model, tokenizer, list(zip(saes.saes, saes.layers)), harmful, refusal_tokens, batch_size)
        return Attribution(torch.cat(per, 1), method, None, mask)
    if ablation is None:
        raise ValueError("ablation: integrated gradients need the refusal direction's ablation (a steering factory)")
    per, down = [], []
    for k, s in enumerate(saes.saes):
        ig = integrated_gradients(model, tokenizer, s, harmful, refusal_tokens, ablation, steps=steps, layer=saes.layers[k],
                                  batch_size=batch_size)
        per.append(ig.attr / ig.n_positions.clamp_min(1)[:, None].double())
        down.append(ig.delta.sum(0) < 0)
    return Attribution(torch.cat(per, 1), method, torch.cat(down), mask)


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
    method: str = "ig",
    ablation: Callable[[], contextlib.AbstractContextManager] | None = None,
    steps: int = 10,
    down_first: bool = True,
) -> list[tuple[int, float]]:
    """``[(feature, attribution), ...]``, the ``top`` features of one SAE that most move the model
    from refusal (:func:`attribution`, :meth:`Attribution.ranking`): ``method="ig"`` (default; needs
    ``ablation``) or ``"zero"`` (module docstring)."""
    saes = SAESet.of(sae, layer if layer is not None else site(model, sae)[0])
    return attribution(model, tokenizer, saes, harmful, refusal_tokens, batch_size=batch_size, method=method,
                       ablation=ablation, steps=steps).ranking(top, down_first=down_first)


def _zero_attribution(model, tokenizer, saes: Sequence[tuple[SAE, int | None]], harmful: Sequence[str],
                      refusal_tokens: Sequence[int], batch_size: int) -> list[torch.Tensor]:
    """Per ``(sae, layer)``: ``-f_i . d score / d f_i`` summed over the edited positions, per prompt
    (float64 ``[N, d_sae]``), with every SAE spliced in at its hook point in one forward.

    At each site the stream becomes ``decode(f) + (x - decode(f).detach())``: its value is ``x``
    (the error term kept), the gradient reaches the leaf ``f`` and passes through ``x`` unchanged, so
    a site downstream does not cut the gradient of one upstream: each feature's attribution is its
    first-order effect through the whole model. The rows' scores are summed before the gradient:
    a prompt's score depends on its own row only, so each row's gradient is its own."""
    hooks: dict[str, list[int]] = {}
    for k, (s, layer) in enumerate(saes):
        idx, kind = site(model, s, layer)
        hooks.setdefault(hook_name(idx, kind), []).append(k)
    device = next(model.parameters()).device
    rows: list[list[torch.Tensor]] = [[] for _ in saes]
    captured: dict[int, torch.Tensor] = {}

    def swap(name, x):
        for k in hooks[name]:
            s = saes[k][0]
            # The run-time normalization's scale and shift depend on x only: constants here.
            _, f, scale, shift = _codes(x, s)
            f = f.requires_grad_(True)
            captured[k] = f
            recon = _decode(s, f, scale, shift)
            x = (recon + (x.to(s.device, s.dtype).float() - recon.detach())).to(x.device, x.dtype)
        return x

    with intercept(model, list(hooks), swap), torch.enable_grad():
        for b in range(0, len(harmful), batch_size):
            enc = tokenize_prompts(tokenizer, harmful[b : b + batch_size], device)
            logits = model(**enc).logits[:, -1]
            score = refusal_scores_from_logits(logits, refusal_tokens).sum()
            leaves = [captured[k] for k in range(len(saes))]
            grads = torch.autograd.grad(score, leaves, allow_unused=True)
            m = _edited_positions(model, enc).unsqueeze(-1)
            for k, (f, g) in enumerate(zip(leaves, grads)):
                if g is None:
                    rows[k].append(torch.zeros(f.shape[0], f.shape[-1], dtype=torch.float64))
                    continue
                f = f.detach()
                rows[k].append((-(f * g) * m.to(f.device).to(f.dtype)).sum(dim=1).double().cpu())
    return [torch.cat(r) if r else torch.zeros(0, s.d_sae, dtype=torch.float64) for r, (s, _) in zip(rows, saes)]


def rank_set_by_attribution(model, tokenizer, saes: SAESet, harmful: Sequence[str], refusal_tokens: Sequence[int], *,
                            top: int = 32, down_first: bool = True, **kw) -> list[tuple[int, float]]:
    """One ranking over the features of several SAEs: ``[(flat id, attribution), ...]`` (see
    :class:`~.saeset.SAESet`), the ``top`` that most move the model from refusal:
    :func:`attribution` (``kw``: its ``allowed``, ``batch_size``, ``method``, ``ablation``,
    ``steps``) then :meth:`Attribution.ranking`."""
    return attribution(model, tokenizer, saes, harmful, refusal_tokens, **kw).ranking(top, down_first=down_first)
