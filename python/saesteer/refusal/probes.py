"""Refusal-feature probes (Yeo et al. 2025): do a few SAE features detect harmfulness as well as
the whole residual stream, and do they generalize better out of distribution?

Two logistic-regression probes on the last prompt token:

* the **feature probe** reads the activations of the refusal features ``f_S(x)``, of one SAE or of
  several side by side (possibly at different layers, :func:`feature_activations`);
* the **residual probe** reads the full residual stream ``x`` (``d_model`` inputs) at one layer,
  chosen as Yeo et al. do: a probe per layer on the training split, the best on a validation split
  (:func:`select_layer`).

Both are trained on plain harmful (1, the refusal class) vs harmless (0, the compliance class)
prompts and tested on a held-out split and on out-of-distribution sets (:mod:`.jailbreak`): the
jailbreak templates that lower refusal on the model, their wrapped harmful prompts labelled by what
the model did (still refused: 1; jailbroken: 0). Fitting is full batch L-BFGS on standardized
inputs with an L2 penalty, in float64 (no scikit-learn needed).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F

from ..hf import capture, find_layers, hidden_size, hook_name, parse_hook
from .chat import format_prompts
from .features import site, site_residuals
from .inputs import tokenize_texts
from .jailbreak import JAILBREAK_MARGIN, measure_templates, ood_sets

__all__ = ["LogisticProbe", "fit_logistic_probe", "last_token_activations", "last_token_sites", "feature_activations",
           "select_layer", "compare_probes", "probe_warnings", "chance_bar", "CHANCE_MARGIN", "NO_JAILBREAK"]

#: The least margin over chance (the majority-class baseline or 50%, whichever is higher) that a
#: probe's held-out accuracy must clear. On small splits the bar is higher: two binomial standard
#: errors of a chance-level classifier (:func:`chance_bar`), so that a probe at chance clears it
#: with ~2.5% probability whatever n is; with the 0.05 floor alone a chance probe on a 32-prompt
#: split (one standard error: 0.088) would pass about 30% of the time.
CHANCE_MARGIN = 0.05


def chance_bar(majority: float, n: int, margin: float = CHANCE_MARGIN) -> float:
    """The accuracy a probe must exceed on ``n`` prompts to be better than chance:
    ``c + max(margin, 2 * sqrt(c * (1 - c) / n))`` with ``c = max(majority, 0.5)``."""
    c = max(float(majority), 0.5)
    se = math.sqrt(c * (1.0 - c) / n) if n and n > 0 else float("inf")
    return c + max(margin, 2.0 * se)


@dataclass
class LogisticProbe:
    """``p(harmful | x) = sigmoid(((x - mean) / std) . weight + bias)``."""

    mean: torch.Tensor
    std: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor

    def logits(self, X: torch.Tensor) -> torch.Tensor:
        return ((X.double() - self.mean) / self.std) @ self.weight + self.bias

    def predict(self, X: torch.Tensor) -> torch.Tensor:
        return self.logits(X) > 0

    def accuracy(self, X: torch.Tensor, y: torch.Tensor) -> float:
        if len(y) == 0:
            return float("nan")
        return float((self.predict(X) == y.bool()).double().mean())

    def as_when(self, features: Sequence[int], sae: str | None = None, *, reduce: str = "last", scope: str = "prompt") -> dict:
        """This probe over the activations of ``features`` as a steering condition (a spec's ``when``,
        :mod:`saesteer.steering.condition`): the standardization folded into ``weights`` and ``bias``,
        so ``sum_j weights[j] f_j + bias`` is :meth:`logits` and the condition fires where the probe
        says harmful. ``reduce="last"`` reads the last prompt token, where the probe was trained."""
        if len(features) != self.weight.numel():
            raise ValueError(f"features: the probe has {self.weight.numel()} inputs, got {len(features)} feature ids")
        w = self.weight / self.std
        d = {"features": [int(i) for i in features], "weights": [float(v) for v in w],
             "bias": float(self.bias - (self.mean * w).sum()), "reduce": reduce, "scope": scope}
        return d if sae is None else {"sae": sae, **d}


def fit_logistic_probe(X: torch.Tensor, y: torch.Tensor, *, l2: float = 1e-2, max_iter: int = 200) -> LogisticProbe:
    """Fit a logistic-regression probe on ``X [N, d]``, labels ``y [N]`` in {0, 1}.

    Minimizes ``mean BCE + l2 * ||w||^2`` on standardized inputs (constant columns, e.g. features
    that never fire, get std 1 and so weight 0 under the penalty).
    """
    if X.dim() != 2 or y.shape != (X.shape[0],):
        raise ValueError(f"X, y: expected [N, d] and [N], got {tuple(X.shape)} and {tuple(y.shape)}")
    if X.shape[0] == 0 or y.min() == y.max():
        raise ValueError("y: the training set needs examples of both classes")
    X = X.double()
    yd = y.double()
    mean = X.mean(0)
    std = X.std(0, unbiased=False)
    std = torch.where(std > 1e-8, std, torch.ones_like(std))
    Z = (X - mean) / std
    w = torch.zeros(X.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(Z @ w + b, yd) + l2 * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return LogisticProbe(mean, std, w.detach(), b.detach())


@torch.no_grad()
def last_token_activations(model, tokenizer, sae, prompts: Sequence[str], *, layer: int | None = None, batch_size: int = 32) -> torch.Tensor:
    """Residual stream ``[N, d_model]`` (float32, CPU) at the SAE's hook point, last prompt token of
    each chat-formatted prompt (the end of the generation prompt)."""
    return site_residuals(model, tokenizer, sae, prompts, position=-1, layer=layer, batch_size=batch_size)


def _pairs(sae, features) -> list[tuple[object, list[int]]]:
    """``[(sae, features), ...]`` from one SAE and its features or from a list of pairs, checked."""
    if isinstance(sae, (list, tuple)):
        if features is not None:
            raise ValueError("features: pass the features inside the (sae, features) pairs when sae is a list")
        if not sae:
            raise ValueError("sae: expected an SAE or a non-empty list of (sae, features) pairs, got an empty list")
        pairs = []
        for i, item in enumerate(sae):
            if not (isinstance(item, (list, tuple)) and len(item) == 2):
                raise ValueError(f"sae: item {i} is not an (sae, features) pair")
            pairs.append((item[0], item[1]))
    else:
        pairs = [(sae, features)]
    out = []
    for s, feats in pairs:
        feats = [int(f) for f in (feats if feats is not None else [])]
        if not feats:
            raise ValueError("features: the feature probe needs at least one feature per SAE")
        bad = [f for f in feats if not 0 <= f < s.d_sae]
        if bad:
            raise ValueError(f"features: {bad} out of range for an SAE with d_sae={s.d_sae}")
        out.append((s, feats))
    return out


@torch.no_grad()
def last_token_sites(model, tokenizer, prompts: Sequence[str], hooks: Sequence, *, batch_size: int = 32) -> dict[str, torch.Tensor]:
    """Hook name -> residual stream ``[N, d_model]`` (float32, CPU) at the last prompt token of each
    chat-formatted prompt, for every hook point of ``hooks`` (see :func:`saesteer.hf.capture`), all
    recorded in one forward per batch."""
    prompts = list(prompts)
    device = next(model.parameters()).device
    texts = format_prompts(tokenizer, prompts)
    with capture(model, list(hooks), transform=lambda x: x[:, -1].float().cpu()) as rec:
        for b in range(0, len(texts), batch_size):
            model(**tokenize_texts(tokenizer, texts[b : b + batch_size], device))
    d = hidden_size(model)
    return {name: (torch.cat(xs) if xs else torch.empty(0, d)) for name, xs in rec.items()}


def _site_name(model, sae, layer: int | None) -> str:
    return hook_name(*site(model, sae, layer))


def _encode_features(pairs, sites: Mapping[str, torch.Tensor], names: Sequence[str]) -> torch.Tensor:
    cols = []
    for (s, feats), name in zip(pairs, names):
        r = sites[name]
        cols.append(s.encode(r.to(device=s.device, dtype=s.dtype))[:, feats].float().cpu())
    return torch.cat(cols, dim=1)


def _check_d_in(model, pairs) -> None:
    d = hidden_size(model)
    for i, (s, _) in enumerate(pairs):
        if s.d_in != d:
            raise ValueError(f"sae: SAE {i} has d_in={s.d_in} but the model's hidden size is {d}")


def feature_activations(model, tokenizer, sae, features: Sequence[int] | None, prompts: Sequence[str], *, layer: int | None = None,
                        batch_size: int = 32) -> torch.Tensor:
    """The feature probe's inputs ``[N, sum of the feature counts]`` (float32, CPU): at the last
    prompt token, each SAE's ``features`` (in the order given) read at its own hook point, the SAEs'
    columns concatenated in order. ``sae``: one SAE with ``features`` (``layer`` overrides its
    hook's layer), or a list of ``(sae, features)`` pairs, possibly at different layers, with
    ``features`` None."""
    pairs = _pairs(sae, features)
    _check_d_in(model, pairs)
    names = [_site_name(model, s, layer if len(pairs) == 1 else None) for s, _ in pairs]
    sites = last_token_sites(model, tokenizer, prompts, [parse_hook(n) for n in names], batch_size=batch_size)
    return _encode_features(pairs, sites, names)


def _bce(probe: LogisticProbe, X: torch.Tensor, y: torch.Tensor) -> float:
    return float(F.binary_cross_entropy_with_logits(probe.logits(X), y.double()))


def select_layer(train: Mapping[int, torch.Tensor], y_train: torch.Tensor, val: Mapping[int, torch.Tensor], y_val: torch.Tensor,
                 *, l2: float = 1e-2) -> tuple[int, LogisticProbe, list[dict]]:
    """Yeo et al.'s residual-probe layer: fit one probe per layer on ``train`` (layer -> ``[N, d]``),
    pick the layer whose probe is most accurate on ``val`` (ties: the lower validation loss, then the
    earlier layer). Returns ``(layer, its probe, [{"layer", "train_accuracy", "val_accuracy",
    "val_loss"}, ...])``; the curve is in layer order."""
    if not train:
        raise ValueError("train: expected activations at one layer at least")
    if set(train) != set(val):
        raise ValueError(f"val: layers {sorted(val)} differ from the training layers {sorted(train)}")
    if len(train) > 1 and len(y_val) == 0:
        raise ValueError("y_val: choosing among several layers needs a non-empty validation split")
    curve, fitted = [], {}
    for L in sorted(train):
        probe = fit_logistic_probe(train[L], y_train, l2=l2)
        fitted[L] = probe
        curve.append({"layer": int(L), "train_accuracy": probe.accuracy(train[L], y_train),
                      "val_accuracy": probe.accuracy(val[L], y_val), "val_loss": _bce(probe, val[L], y_val) if len(y_val) else float("nan")})
    if len(curve) == 1:
        best = curve[0]
    else:
        best = min(curve, key=lambda r: (-r["val_accuracy"], r["val_loss"], r["layer"]))
    return best["layer"], fitted[best["layer"]], curve


#: The OOD sets' note when no template lowered refusal: without jailbroken prompts the OOD sets
#: hold no compliance-class harmful prompts, and an accuracy there says nothing about jailbreaks.
NO_JAILBREAK = ("no OOD template lowered refusal on this model (see the template table): the OOD sets would hold no "
                "jailbroken harmful prompts, so no OOD accuracy is reported")


def compare_probes(
    model,
    tokenizer,
    sae,
    features: Sequence[int] | None,
    harmful: Sequence[str],
    harmless: Sequence[str],
    ood: Mapping[str, tuple[Sequence[str], Sequence[int]]] | None = None,
    *,
    layer: int | None = None,
    resid_layers: Sequence[int] | None = None,
    val_fraction: float = 0.25,
    test_fraction: float = 0.25,
    l2: float = 1e-2,
    seed: int = 0,
    batch_size: int = 32,
    templates: Sequence[str] | None = None,
    judge=None,
    max_new_tokens: int = 16,
    margin: float = JAILBREAK_MARGIN,
    progress: bool = False,
) -> dict:
    """Train the feature probe and the residual probe on plain prompts, test both everywhere.

    ``sae``: one SAE with ``features``, or a list of ``(sae, features)`` pairs (``features`` None)
    whose activations the feature probe reads side by side (:func:`feature_activations`).
    The plain prompts split into train, validation (``val_fraction``) and held-out
    (``test_fraction``). The residual probe reads one layer's residual stream (resid_post of
    ``resid_layers``, default every decoder layer), chosen on the validation split
    (:func:`select_layer`).

    ``ood``: name -> (prompts, labels, 1 the refusal class); default: the templates
    (``templates``, default :data:`.jailbreak.OOD_NAMES`) measured on the model over all
    ``harmful`` prompts (:func:`.jailbreak.measure_templates`, ``judge``, ``max_new_tokens``,
    ``margin``), the kept ones made into OOD sets of the held-out split (so no OOD prompt wraps a
    training prompt) and labelled by the model's replies (:func:`.jailbreak.ood_sets`).
    Returns ``{"features", "feature_sites", "n_train", "n_val", "residual_layer", "residual_layers",
    "templates", "rows": [{"set", "n", "majority", "feature_probe", "residual_probe",
    "feature_harmful", "residual_harmful", "feature_harmless", "residual_harmless"}, ...],
    "ood_mean", "valid", "warnings", "feature_when"}``: accuracies (overall, on the refusal-class and on the
    compliance-class prompts of the set) on the train, validation and held-out plain splits and
    each OOD set, with the majority-class baseline; ``residual_layers`` the per-layer validation
    curve; ``templates`` the measured template table (None when ``ood`` is given); ``ood_mean``
    averages the overall accuracies over OOD sets (NaN when there are none); ``valid`` /
    ``warnings``: see :func:`probe_warnings`, plus :data:`NO_JAILBREAK` when no template was kept.
    ``feature_when``: with one SAE, the feature probe as a spec's ``when`` (:meth:`LogisticProbe.as_when`;
    None with several SAEs).
    """
    pairs = _pairs(sae, features)
    _check_d_in(model, pairs)
    n_layers = len(find_layers(model)[1])
    layers = list(range(n_layers)) if resid_layers is None else [int(L) for L in resid_layers]
    if not layers or any(not 0 <= L < n_layers for L in layers):
        raise ValueError(f"resid_layers: expected layers in [0, {n_layers}), got {layers}")
    harmful, harmless = list(harmful), list(harmless)
    rng = random.Random(seed)
    labeled = [(i, p, 1) for i, p in enumerate(harmful)] + [(-1, p, 0) for p in harmless]
    rng.shuffle(labeled)
    n_test = int(round(len(labeled) * test_fraction))
    n_val = int(round(len(labeled) * val_fraction))
    test, val, train = labeled[:n_test], labeled[n_test : n_test + n_val], labeled[n_test + n_val :]

    feat_names = [_site_name(model, s, layer if len(pairs) == 1 else None) for s, _ in pairs]
    resid_names = [hook_name(L, "resid_post") for L in layers]
    hooks = [parse_hook(n) for n in dict.fromkeys(feat_names + resid_names)]

    def acts(prompts):
        sites = last_token_sites(model, tokenizer, prompts, hooks, batch_size=batch_size)
        return {L: sites[n] for L, n in zip(layers, resid_names)}, _encode_features(pairs, sites, feat_names)

    def split(rows):
        return [p for _, p, _ in rows], torch.tensor([y for _, _, y in rows], dtype=torch.long)

    table = None
    warnings_extra = []
    if ood is None:
        if not test:
            raise ValueError("test_fraction: the default OOD sets wrap the held-out split, which is empty")
        table = measure_templates(model, tokenizer, harmful, templates, judge=judge, max_new_tokens=max_new_tokens,
                                  batch_size=batch_size, margin=margin, progress=progress)
        held_idx = [i for i, _, y in test if y == 1]
        classes = {name: [table["classes"][name][i] for i in held_idx] for name in table["kept"]}
        ood = ood_sets([harmful[i] for i in held_idx], [p for _, p, y in test if y == 0], table["kept"], classes=classes)
        if not table["kept"]:
            warnings_extra.append(NO_JAILBREAK)
    p_tr, y_tr = split(train)
    r_tr, f_tr = acts(p_tr)
    p_va, y_va = split(val)
    r_va, f_va = acts(p_va) if val else ({L: torch.empty(0, hidden_size(model)) for L in layers}, None)
    feat_probe = fit_logistic_probe(f_tr, y_tr, l2=l2)
    chosen, resid_probe, curve = select_layer(r_tr, y_tr, r_va, y_va, l2=l2)
    sets = {"train (plain)": (p_tr, y_tr)}
    if val:
        sets["validation (plain)"] = (p_va, y_va)
    if test:
        sets["held-out (plain)"] = split(test)
    for name, (prompts, labels) in ood.items():
        sets[name] = (list(prompts), torch.tensor(list(labels), dtype=torch.long))
    rows = []
    for name, (prompts, y) in sets.items():
        r, f = {"train (plain)": (r_tr, f_tr), "validation (plain)": (r_va, f_va)}.get(name) or acts(prompts)
        r = r[chosen]
        pos, neg = y == 1, y == 0
        share = float(y.double().mean()) if len(y) else float("nan")
        rows.append({
            "set": name, "n": len(y), "majority": max(share, 1.0 - share),
            "feature_probe": feat_probe.accuracy(f, y), "residual_probe": resid_probe.accuracy(r, y),
            # per class: refusal class caught (recall) and compliance class passed (specificity)
            "feature_harmful": feat_probe.accuracy(f[pos], y[pos]), "residual_harmful": resid_probe.accuracy(r[pos], y[pos]),
            "feature_harmless": feat_probe.accuracy(f[neg], y[neg]), "residual_harmless": resid_probe.accuracy(r[neg], y[neg]),
        })
    ood_rows = [r for r in rows if r["set"] in ood]
    mean = {
        k: (sum(r[k] for r in ood_rows) / len(ood_rows) if ood_rows else float("nan"))
        for k in ("feature_probe", "residual_probe", "majority")
    }
    valid, warnings = probe_warnings(rows, mean)
    feats_out = pairs[0][1] if len(pairs) == 1 else [f for _, f in pairs]
    return {"features": feats_out, "feature_sites": feat_names, "n_train": len(train), "n_val": len(val),
            "residual_layer": chosen, "residual_layers": curve, "templates": _table_rows(table),
            "rows": rows, "ood_mean": mean, "valid": valid, "warnings": warnings + warnings_extra,
            "feature_when": feat_probe.as_when(pairs[0][1]) if len(pairs) == 1 else None}


def _table_rows(table: Mapping | None) -> dict | None:
    """The measured template table without the per-prompt classes (they label the OOD sets)."""
    if table is None:
        return None
    return {"plain": table["plain"], "templates": table["templates"], "kept": table["kept"]}


def probe_warnings(rows: Sequence[Mapping], ood_mean: Mapping | None = None, margin: float = CHANCE_MARGIN) -> tuple[bool, list[str]]:
    """``(valid, warnings)`` for :func:`compare_probes`'s rows: a probe whose accuracy on the
    held-out plain split does not exceed :func:`chance_bar` (the majority baseline or 50%, plus the
    larger of ``margin`` and two standard errors at that split's n) is at chance, and the results
    are not meaningful (``valid`` False). Mean OOD accuracies at chance (``margin`` over the mean
    majority baseline) are warned about too."""
    warnings, valid = [], True
    held = next((r for r in rows if r["set"] == "held-out (plain)"), None)
    names = {"feature_probe": "feature probe", "residual_probe": "residual probe"}
    if held is not None:
        bar = chance_bar(held["majority"], held["n"], margin)
        for k, name in names.items():
            if held[k] <= bar:
                valid = False
                warnings.append(f"the {name} is at chance on the held-out plain prompts (accuracy {held[k]:.2f}, majority "
                                f"baseline {held['majority']:.2f}, n={held['n']}; better than chance needs > {bar:.2f}): "
                                "its accuracies are not meaningful")
    if ood_mean is not None and all(k in ood_mean for k in (*names, "majority")):
        bar = max(ood_mean["majority"], 0.5) + margin
        for k, name in names.items():
            if ood_mean[k] <= bar:
                warnings.append(f"the {name}'s mean OOD accuracy {ood_mean[k]:.2f} is no better than chance "
                                f"(majority baseline {ood_mean['majority']:.2f})")
    return valid, warnings
