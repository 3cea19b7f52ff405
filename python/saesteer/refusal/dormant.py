"""Dormant ("redundant") features (Prakash et al.): inactive before, firing once the minimal set is ablated.

:func:`downstream_dormant` measures the effect where it can exist: ablate features of the SAE at
layer ``L`` and read SAEs at later hook points on the *same* token sequences, with and without the
edit; a feature is dormant when it is silent on every unsteered token and fires with the edit.

:func:`dormant_features` (below) compares the edited SAE's own features on the unsteered and the
steered replies. At the edited hook point the activations depend on the tokens only, so what it
reports comes from the different reply text, not from the ablation waking features up.

Generate with the minimal set ablated, then re-encode the SAE's hook point over the steered token
sequences and compare with the unsteered ones. The activations of layer ``L`` at a position depend on
the tokens only through layers ``<= L``, so a plain forward over the steered tokens gives exactly the
pre-edit activations the SAE saw during the steered generation.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..sae import SAE
from .chat import format_prompts
from ..hf import capture, steer
from .features import capture_site, site
from .search import parse_edit

__all__ = ["site_activations", "dormant_features", "downstream_dormant"]


@torch.no_grad()
def site_activations(model, tokenizer, sae: SAE, texts: Sequence[str], layer: int | None = None) -> list[tuple[list[str], torch.Tensor]]:
    """Per text: ``(tokens, f [T, d_sae])`` at the SAE's hook point, unsteered."""
    device = next(model.parameters()).device
    out = []
    with capture_site(model, sae, layer) as got:
        for t in texts:
            enc = tokenizer(t, return_tensors="pt", add_special_tokens=False).to(device)
            model(**enc)
            f = sae.encode(got["x"][0].to(sae.device, sae.dtype)).float().cpu()
            out.append((tokenizer.convert_ids_to_tokens(enc["input_ids"][0]), f))
    return out


def dormant_features(
    model,
    tokenizer,
    sae: SAE,
    prompts: Sequence[str],
    replies_before: Sequence[str],
    replies_after: Sequence[str],
    ablated: Sequence[int],
    *,
    layer: int | None = None,
    top: int = 10,
) -> list[dict]:
    """Features silent on every unsteered (prompt + reply) sequence that fire on the steered ones.

    Returns ``[{feature, n_tokens, max_act, tokens: [...]}]``, most widespread first (ablated features
    excluded).
    """
    fmt = format_prompts(tokenizer, prompts)
    before = site_activations(model, tokenizer, sae, [p + r for p, r in zip(fmt, replies_before)], layer)
    after = site_activations(model, tokenizer, sae, [p + r for p, r in zip(fmt, replies_after)], layer)
    return _new_features([f for _, f in before], [f for _, f in after], [t for t, _ in after], top, exclude=ablated)


def _stream_index(layer: int, kind: str) -> int:
    """Position in the residual stream: ``resid_pre`` of layer ``L`` is ``L``, ``resid_post`` is
    ``L + 1`` (the next layer's input)."""
    return layer + (kind == "resid_post")


def _new_features(before: list[torch.Tensor], after: list[torch.Tensor], toks: list[list[str]], top: int, exclude: Sequence[int] = ()) -> list[dict]:
    """Features silent on every ``before`` token (and not in ``exclude``) that fire on ``after``
    tokens: ``[{feature, n_tokens, max_act, tokens (up to 5)}]``, most widespread first."""
    d_sae = before[0].shape[-1]
    fired = torch.zeros(d_sae, dtype=torch.bool)
    for f in before:
        fired |= (f > 0).any(0)
    fired[list(exclude)] = True
    count = torch.zeros(d_sae, dtype=torch.long)
    peak = torch.zeros(d_sae)
    where: dict[int, list[str]] = {}
    for tk, f in zip(toks, after):
        new = (f > 0) & ~fired
        count += new.sum(0)
        peak = torch.maximum(peak, torch.where(new, f, torch.zeros_like(f)).max(0).values)
        for t, i in new.nonzero().tolist():
            lst = where.setdefault(i, [])
            if len(lst) < 5:
                lst.append(tk[t])
    idx = [int(i) for i in count.argsort(descending=True)[:top] if count[i] > 0]
    return [{"feature": i, "n_tokens": int(count[i]), "max_act": float(peak[i]), "tokens": where.get(i, [])} for i in idx]


@torch.no_grad()
def downstream_dormant(
    model,
    tokenizer,
    sae: SAE,
    ablated: Sequence[int],
    read_saes,
    texts: Sequence[str],
    *,
    layer: int | None = None,
    edit="ablate",
    skip_bos: bool = True,
    top: int = 10,
) -> dict[str, dict]:
    """Features of later SAEs that wake up when ``ablated`` features of ``sae`` are edited.

    ``texts`` are tokenized as they are (format them first, e.g. prompt + reply); each one is run
    twice, unsteered and with ``edit`` (default ablation) of ``ablated`` at ``sae``'s hook point
    (``layer`` overrides its layer), and every SAE in ``read_saes`` (a dict ``name -> SAE`` or a
    list) is read at its own hook point, which must lie after the edited one. Returns
    ``{name: {"hook": (layer, kind), "n_tokens": N, "dormant": [{feature, n_tokens, max_act,
    tokens}], "mean_abs_change", "n_silenced"}}``: features silent on every unsteered token that
    fire on a steered one, most widespread first, and how much the edit moved that SAE's codes.
    """
    read = dict(read_saes) if isinstance(read_saes, dict) else {str(i): s for i, s in enumerate(read_saes)}
    if not read:
        raise ValueError("read_saes: expected at least one SAE to read after the edit")
    if not list(ablated):
        raise ValueError("ablated: expected at least one feature to edit")
    bad = [int(i) for i in ablated if not 0 <= int(i) < sae.d_sae]
    if bad:
        raise ValueError(f"ablated: features {bad} are out of range for the SAE's d_sae={sae.d_sae}")
    e_layer, e_kind = site(model, sae, layer)
    hooks = {}
    for name, r in read.items():
        r_layer, r_kind = site(model, r)
        if _stream_index(r_layer, r_kind) <= _stream_index(e_layer, e_kind):
            raise ValueError(
                f"read_saes: {name!r} reads blocks.{r_layer}.hook_{r_kind}, not after the edited "
                f"blocks.{e_layer}.hook_{e_kind}; a downstream effect needs a later hook point"
            )
        hooks[name] = (r_layer, r_kind)
    iv = parse_edit(edit).intervention([int(i) for i in ablated])
    device = next(model.parameters()).device
    encs = [tokenizer(t, return_tensors="pt", add_special_tokens=False).to(device) for t in texts]
    toks = [tokenizer.convert_ids_to_tokens(e["input_ids"][0]) for e in encs]
    names = {n: f"blocks.{l}.hook_{k}" for n, (l, k) in hooks.items()}

    def run(steered: bool) -> dict[str, list[torch.Tensor]]:
        with capture(model, list(dict.fromkeys(hooks.values()))) as rec:
            for e in encs:
                if steered:
                    with steer(model, sae, iv, layer=e_layer, skip_bos=skip_bos):
                        model(**e)
                else:
                    model(**e)
        return {n: [read[n].encode(x[0].to(read[n].device, read[n].dtype)).float().cpu() for x in rec[names[n]]] for n in read}

    before, after = run(False), run(True)
    n_tok = sum(len(t) for t in toks)
    return {
        n: {"hook": list(hooks[n]), "n_tokens": n_tok, "dormant": _new_features(before[n], after[n], toks, top),
            **_change(before[n], after[n])}
        for n in read
    }


def _change(before: list[torch.Tensor], after: list[torch.Tensor]) -> dict:
    """How much an edit moved a read SAE's codes over the same tokens: ``mean_abs_change``
    (``sum |f' - f| / sum |f|``) and ``n_silenced`` (features firing on some unsteered token and
    on no steered one). When no feature wakes, these show whether the edit reached the SAE at all."""
    b, a = torch.cat(before), torch.cat(after)
    fired_b, fired_a = (b > 0).any(0), (a > 0).any(0)
    return {"mean_abs_change": float((a - b).abs().sum() / b.abs().sum().clamp_min(1e-12)),
            "n_silenced": int((fired_b & ~fired_a).sum())}
