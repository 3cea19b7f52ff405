"""Refusal-feature probes (Yeo et al. 2025): do a few SAE features detect harmfulness as well as
the whole residual stream, and do they generalize better out of distribution?

Two logistic-regression probes on the last prompt token at the SAE's hook point:

* the **feature probe** reads the activations of the refusal features ``f_S(x)``;
* the **residual probe** reads the full residual stream ``x`` (``d_model`` inputs).

Both are trained on plain harmful (1) vs harmless (0) prompts and tested on a held-out split and on
out-of-distribution sets (jailbreak wrappers and rephrasings, :mod:`.jailbreak`). Fitting is full
batch L-BFGS on standardized inputs with an L2 penalty, in float64 (no scikit-learn needed).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F

from .features import site_residuals
from .jailbreak import ood_sets

__all__ = ["LogisticProbe", "fit_logistic_probe", "last_token_activations", "compare_probes", "probe_warnings", "chance_bar", "CHANCE_MARGIN"]

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


def _feature_acts(sae, resid: torch.Tensor, features: Sequence[int]) -> torch.Tensor:
    f = sae.encode(resid.to(device=sae.device, dtype=sae.dtype))
    return f[:, list(features)].float().cpu()


def compare_probes(
    model,
    tokenizer,
    sae,
    features: Sequence[int],
    harmful: Sequence[str],
    harmless: Sequence[str],
    ood: Mapping[str, tuple[Sequence[str], Sequence[int]]] | None = None,
    *,
    layer: int | None = None,
    test_fraction: float = 0.25,
    l2: float = 1e-2,
    seed: int = 0,
    batch_size: int = 32,
) -> dict:
    """Train the feature probe and the residual probe on plain prompts, test both everywhere.

    ``ood``: name -> (prompts, labels 1 = harmful); default: :func:`.jailbreak.ood_sets` of the
    held-out split (so no OOD prompt wraps a training prompt).
    Returns ``{"features", "n_train", "rows": [{"set", "n", "majority", "feature_probe", "residual_probe",
    "feature_harmful", "residual_harmful", "feature_harmless", "residual_harmless"}, ...], "ood_mean",
    "valid", "warnings"}``: accuracies (overall, on the harmful and on the harmless prompts of the set)
    on the training split, the held-out plain split and each OOD set, with the majority-class
    baseline; ``ood_mean`` averages the overall ones over OOD sets; ``valid`` / ``warnings``: see
    :func:`probe_warnings` (a probe at chance).
    """
    if not features:
        raise ValueError("features: the feature probe needs at least one feature")
    bad = [f for f in features if not 0 <= int(f) < sae.d_sae]
    if bad:
        raise ValueError(f"features: {bad} out of range for an SAE with d_sae={sae.d_sae}")
    rng = random.Random(seed)
    labeled = [(p, 1) for p in harmful] + [(p, 0) for p in harmless]
    rng.shuffle(labeled)
    n_test = int(round(len(labeled) * test_fraction))
    test, train = labeled[:n_test], labeled[n_test:]

    def acts(prompts):
        r = last_token_activations(model, tokenizer, sae, list(prompts), layer=layer, batch_size=batch_size)
        return r, _feature_acts(sae, r, features)

    def split(rows):
        return [p for p, _ in rows], torch.tensor([y for _, y in rows])

    if ood is None:
        if not test:
            raise ValueError("test_fraction: the default OOD sets wrap the held-out split, which is empty")
        ood = ood_sets([p for p, y in test if y == 1], [p for p, y in test if y == 0])
    p_tr, y_tr = split(train)
    r_tr, f_tr = acts(p_tr)
    feat_probe = fit_logistic_probe(f_tr, y_tr, l2=l2)
    resid_probe = fit_logistic_probe(r_tr, y_tr, l2=l2)
    sets = {"train (plain)": (p_tr, y_tr)}
    if test:
        sets["held-out (plain)"] = split(test)
    for name, (prompts, labels) in ood.items():
        sets[name] = (list(prompts), torch.tensor(list(labels)))
    rows = []
    for name, (prompts, y) in sets.items():
        r, f = (r_tr, f_tr) if name == "train (plain)" else acts(prompts)
        pos, neg = y == 1, y == 0
        share = float(y.double().mean()) if len(y) else float("nan")
        rows.append({
            "set": name, "n": len(y), "majority": max(share, 1.0 - share),
            "feature_probe": feat_probe.accuracy(f, y), "residual_probe": resid_probe.accuracy(r, y),
            # per class: harmful caught (recall) and harmless passed (specificity)
            "feature_harmful": feat_probe.accuracy(f[pos], y[pos]), "residual_harmful": resid_probe.accuracy(r[pos], y[pos]),
            "feature_harmless": feat_probe.accuracy(f[neg], y[neg]), "residual_harmless": resid_probe.accuracy(r[neg], y[neg]),
        })
    ood_rows = [r for r in rows if r["set"] in ood]
    mean = {
        k: (sum(r[k] for r in ood_rows) / len(ood_rows) if ood_rows else float("nan"))
        for k in ("feature_probe", "residual_probe", "majority")
    }
    valid, warnings = probe_warnings(rows, mean)
    return {"features": [int(f) for f in features], "n_train": len(train), "rows": rows, "ood_mean": mean,
            "valid": valid, "warnings": warnings}


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
