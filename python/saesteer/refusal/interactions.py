"""Feature interactions (Prakash et al. stage 3): a second-order factorization machine over ablation masks.

Inputs ``x in {0,1}^m`` say which of ``m`` features (the minimal set plus the other most active
features) are ablated; the target is the refusal score. The FM

    y = w0 + sum_i w_i x_i + sum_{i<j} <v_i, v_j> x_i x_j

is fitted in torch on random masks; ``<v_i, v_j>`` is the pairwise interaction: negative means that
ablating both lowers refusal more than the two single effects add up to. The strongest pairs are then
checked by real ablations (``e_ij - e_i - e_j``, each effect relative to no ablation); a pair is
confirmed when that real interaction is at least :data:`CONFIRM_MIN` in size and has the FM's sign.

The FM has ``1 + m + m * rank`` parameters, often more than there are masks, so its in-sample R^2
says nothing. Its fit quality is the held-out R^2 of a second FM fitted on the first
``1 - heldout`` of the masks and scored on the rest (the same targets, no extra ablations).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from ..sae import SAE
from .search import Edit, edit_scores, parse_edit

__all__ = ["FactorizationMachine", "fit_fm", "fm_r2", "sample_masks", "find_interactions", "Interactions", "CONFIRM_MIN"]

#: A verified pair counts as a confirmed interaction when ``|e_ij - e_i - e_j|`` is at least this
#: (refusal-score log-odds) and has the sign of the FM's ``<v_i, v_j>``.
CONFIRM_MIN = 0.05


class FactorizationMachine(torch.nn.Module):
    """``y = w0 + x @ w + 1/2 * sum_f ((x @ V)_f^2 - (x^2 @ V^2)_f)`` (Rendle 2010), ``V [m, rank]``."""

    def __init__(self, m: int, rank: int = 4, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w0 = torch.nn.Parameter(torch.zeros(()))
        self.w = torch.nn.Parameter(torch.zeros(m))
        self.V = torch.nn.Parameter(torch.randn(m, rank, generator=g) * 0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xv = x @ self.V
        pair = 0.5 * (xv.pow(2) - (x * x) @ self.V.pow(2)).sum(-1)
        return self.w0 + x @ self.w + pair

    def pairwise(self) -> torch.Tensor:
        """``[m, m]`` matrix of ``<v_i, v_j>`` (diagonal zeroed)."""
        P = self.V @ self.V.t()
        return P - torch.diag(torch.diag(P))


def sample_masks(m: int, n: int, seed: int = 0, p_range=(0.05, 0.5)) -> torch.Tensor:
    """``n`` random 0/1 masks over ``m`` features; each mask's ablation probability ~ U(p_range), so
    both sparse and dense ablations are seen (dense ones alone would saturate the target)."""
    g = torch.Generator().manual_seed(seed)
    p = torch.empty(n, 1).uniform_(*p_range, generator=g)
    return (torch.rand(n, m, generator=g) < p).float()


def fit_fm(X: torch.Tensor, y: torch.Tensor, rank: int = 4, steps: int = 800, lr: float = 0.05, l2: float = 1e-3, seed: int = 0) -> tuple[FactorizationMachine, float]:
    """Fit an FM by Adam on mean squared error (+ L2 on w and V); returns ``(fm, R^2 on the fit data)``."""
    # Hundreds of tiny steps: one thread is ~30x faster than two contending ones (measured on the
    # 2-core CI machine: 800 steps 30 s with 2 threads under load, 0.9 s/300 steps with 1).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.enable_grad():  # callers often run under no_grad / inference_mode
            return _fit_fm(X, y, rank, steps, lr, l2, seed)
    finally:
        torch.set_num_threads(threads)


def _fit_fm(X, y, rank, steps, lr, l2, seed):
    fm = FactorizationMachine(X.shape[1], rank, seed)
    with torch.no_grad():
        fm.w0.fill_(float(y.mean()))
    opt = torch.optim.Adam(fm.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = (fm(X) - y).pow(2).mean() + l2 * (fm.w.pow(2).sum() + fm.V.pow(2).sum())
        loss.backward()
        opt.step()
    return fm, fm_r2(fm, X, y)


def fm_r2(fm: FactorizationMachine, X: torch.Tensor, y: torch.Tensor) -> float:
    """``1 - MSE / Var(y)`` of ``fm`` on ``(X, y)`` (NaN for fewer than two targets)."""
    if len(y) < 2:
        return float("nan")
    with torch.no_grad():
        return 1 - float((fm(X) - y).pow(2).mean() / y.var().clamp_min(1e-12))


@dataclass
class Interactions:
    features: list[int]  # the m features the FM sees
    weights: list[float]  # w_i: single effect of ablating feature i on the refusal score
    pairs: list  # [i, j, <v_i, v_j>] strongest first
    verified: list  # [{i, j, e_i, e_j, e_ij, interaction, fm}] from real ablations
    added: list[int]  # features the FM adds to the jailbreak set
    r2: float  # in-sample, on all n_samples masks
    n_samples: int
    r2_heldout: float = float("nan")  # of an FM fitted on the other masks, on n_heldout masks
    n_heldout: int = 0
    n_params: int = 0  # the FM's parameter count, 1 + m + m * rank
    extra: dict = field(default_factory=dict)

    @property
    def in_sample_meaningless(self) -> bool:
        """True when the FM has at least as many parameters as it was fitted on masks."""
        return self.n_params >= self.n_samples

    @property
    def n_confirmed(self) -> int:
        return sum(1 for v in self.verified if v.get("confirmed"))

    def to_dict(self) -> dict:
        return {
            "features": self.features,
            "weights": self.weights,
            "pairs": self.pairs,
            "verified": self.verified,
            "added": self.added,
            "r2": self.r2,
            "n_samples": self.n_samples,
            "r2_heldout": self.r2_heldout,
            "n_heldout": self.n_heldout,
            "n_params": self.n_params,
            "in_sample_meaningless": self.in_sample_meaningless,
            "n_confirmed": self.n_confirmed,
        }


def active_features(sae: SAE, acts: torch.Tensor, exclude: Sequence[int], top: int) -> list[int]:
    """The ``top`` features with the largest mean activation over ``acts [N, d_in]``, minus ``exclude``."""
    f = sae.encode(acts.to(sae.device, sae.dtype)).float().mean(0)
    f[list(exclude)] = -1
    return [int(i) for i in f.topk(min(top, sae.d_sae)).indices.tolist() if f[i] > 0]


def find_interactions(
    model,
    tokenizer,
    sae: SAE,
    prompts: Sequence[str],
    minimal_set: Sequence[int],
    other_features: Sequence[int],
    refusal_tokens: Sequence[int],
    *,
    n_samples: int = 192,
    rank: int = 4,
    top_pairs: int = 10,
    verify: int = 5,
    heldout: float = 0.25,
    layer: int | None = None,
    seed: int = 0,
    backend: str = "auto",
    edit: Edit | str = "ablate",
    skip_bos: bool = True,
) -> Interactions:
    """Fit the FM on random ablations (or ``edit``-s) of ``minimal_set + other_features``; verify
    the top pairs the same way.

    ``heldout``: the fraction of masks a second FM does not see, for the held-out R^2."""
    kw = dict(layer=layer, backend=backend, edit=parse_edit(edit), skip_bos=skip_bos)
    if not 0.0 < heldout < 1.0:
        raise ValueError(f"heldout: expected a fraction in (0, 1), got {heldout!r}")
    feats = list(dict.fromkeys([*map(int, minimal_set), *map(int, other_features)]))
    m = len(feats)
    if m < 2:
        raise ValueError("interactions: need at least two features")
    X = sample_masks(m, n_samples, seed)
    sets = [[feats[j] for j in range(m) if X[n, j] > 0] for n in range(n_samples)]
    y = edit_scores(model, tokenizer, sae, prompts, sets, refusal_tokens, **kw).mean(1)
    fm, r2 = fit_fm(X, y, rank=rank, seed=seed)
    n_held = max(1, int(round(n_samples * heldout))) if n_samples >= 4 else 0
    r2_held = float("nan")
    if n_held:
        fm_cv, _ = fit_fm(X[:-n_held], y[:-n_held], rank=rank, seed=seed)
        r2_held = fm_r2(fm_cv, X[-n_held:], y[-n_held:])
    P = fm.pairwise().detach()
    iu = torch.triu_indices(m, m, offset=1)
    vals = P[iu[0], iu[1]]
    order = vals.abs().argsort(descending=True)[:top_pairs]
    pairs = [[feats[int(iu[0, k])], feats[int(iu[1, k])], float(vals[k])] for k in order]

    # Real ablations of the strongest pairs: singles, pair, and the unablated baseline in one batch.
    check = pairs[:verify]
    singles = sorted({f for i, j, _ in check for f in (i, j)})
    trial_sets = [[]] + [[f] for f in singles] + [[i, j] for i, j, _ in check]
    s = edit_scores(model, tokenizer, sae, prompts, trial_sets, refusal_tokens, **kw).mean(1)
    base = float(s[0])
    eff = {f: float(s[1 + k]) - base for k, f in enumerate(singles)}
    verified = []
    for n, (i, j, w) in enumerate(check):
        e_ij = float(s[1 + len(singles) + n]) - base
        inter = e_ij - eff[i] - eff[j]
        confirmed = abs(inter) >= CONFIRM_MIN and inter * w > 0
        verified.append({"i": i, "j": j, "e_i": eff[i], "e_j": eff[j], "e_ij": e_ij, "interaction": inter, "fm": w, "confirmed": confirmed})

    # Features the FM adds to the jailbreak set: outside the set, ablation lowers refusal on its own
    # (w_i < 0) or together with a set member (negative pair weight), strongest first.
    in_set = set(map(int, minimal_set))
    w = fm.w.detach()
    score = {}
    for k, f in enumerate(feats):
        if f in in_set:
            continue
        partner = min((float(P[k, feats.index(g)]) for g in in_set if g in feats), default=0.0)
        score[f] = float(w[k]) + min(partner, 0.0)
    added = [f for f, v in sorted(score.items(), key=lambda t: t[1]) if v < 0][:max(1, len(in_set) // 2)]
    n_params = sum(p.numel() for p in fm.parameters())
    return Interactions(feats, [float(v) for v in w.tolist()], pairs, verified, added, r2, n_samples, r2_held, n_held, n_params)
