"""Interventions on SAE features: which features, how, and by how much.

An intervention ``(S, mode, v)`` replaces the activations ``f_i`` of the features ``i in S``:

====== ==========================================================
mode   edited activation
====== ==========================================================
ablate ``f'_i = 0``
scale  ``f'_i = v_i * f_i``
clamp  ``f'_i = v_i``  (everywhere, even where ``f_i == 0``)
add    ``f'_i = f_i + v_i``
====== ==========================================================

Steering keeps the SAE's reconstruction error, so only the edit enters the residual stream:
``y = x + s * sum_{i in S} (f'_i - f_i) * W_dec[i]`` (see ``saesteer.reference.steer``).
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch

__all__ = ["Intervention", "MODES", "mode_id"]

#: Mode names, in the order of their integer ids in the native op schemas.
MODES = ("ablate", "scale", "clamp", "add")
_MODE_IDS = {m: i for i, m in enumerate(MODES)}  # read per op call (a tuple's index() is ~2x slower)


def mode_id(mode: str) -> int:
    """The integer id of ``mode`` used by the native ops."""
    try:
        return MODES.index(mode)
    except ValueError:
        raise ValueError(f"mode: expected one of {', '.join(MODES)}, got {mode!r}") from None


def _as_feature_tuple(features) -> tuple[int, ...]:
    if isinstance(features, torch.Tensor):
        if features.is_floating_point() or features.is_complex() or features.dtype == torch.bool:
            raise ValueError(f"features: expected integer feature ids, got a tensor of dtype {features.dtype}")
        if features.dim() > 1:
            raise ValueError(f"features: expected a 1-D list of feature ids, got shape {tuple(features.shape)}")
        return tuple(int(i) for i in features.reshape(-1).tolist())
    if isinstance(features, int):
        return (int(features),)
    out = []
    for i in features:
        if isinstance(i, bool) or not isinstance(i, (int,)) and not (
            isinstance(i, torch.Tensor) and i.numel() == 1 and not i.is_floating_point()
        ):
            try:
                import numpy as np

                if isinstance(i, np.integer):
                    out.append(int(i))
                    continue
            except ImportError:  # pragma: no cover
                pass
            raise ValueError(f"features: expected integer feature ids, got {i!r} ({type(i).__name__})")
        out.append(int(i))
    return tuple(out)


class Intervention:
    """An edit of SAE feature activations.

    Parameters
    ----------
    features : int or sequence of int or 1-D integer tensor
        Feature ids ``S`` (distinct, in ``[0, d_sae)``).
    mode : {"ablate", "scale", "clamp", "add"}
    value : float or sequence of float or 1-D tensor, optional
        ``v``: one number for every feature, or one per feature. Required for ``scale``,
        ``clamp`` and ``add``; must be omitted for ``ablate``.
    d_sae : int, optional
        When given, ids are checked against ``[0, d_sae)`` now; otherwise when the
        intervention meets an SAE (:meth:`check`).

    Raises
    ------
    ValueError
        Unknown mode, duplicate or negative ids, ids ``>= d_sae``, a missing value, a value of the
        wrong length, or a NaN or infinite value. The message names the problem.
    """

    __slots__ = ("features", "mode", "values", "_cache")

    def __init__(self, features, mode: str = "ablate", value=None, *, d_sae: int | None = None):
        mode_id(mode)  # validates
        feats = _as_feature_tuple(features)
        seen: set[int] = set()
        dup = sorted({i for i in feats if i in seen or seen.add(i)})
        if dup:
            raise ValueError(f"features: duplicate feature ids {dup[:10]}")
        neg = [i for i in feats if i < 0]
        if neg:
            raise ValueError(f"features: feature ids must be >= 0, got {neg[:10]}")
        if mode == "ablate":
            if value is not None:
                raise ValueError("value: 'ablate' sets features to 0 and takes no value; use mode='clamp' for a fixed value")
            vals: tuple[float, ...] = (0.0,) * len(feats)
        else:
            if value is None:
                raise ValueError(f"value: mode {mode!r} needs a value (a float, or one per feature)")
            if isinstance(value, torch.Tensor):
                if value.dim() > 1:
                    raise ValueError(f"value: expected a float or a 1-D tensor, got shape {tuple(value.shape)}")
                value = value.detach().to("cpu", torch.float64).reshape(-1).tolist()
                if len(value) == 1 and len(feats) != 1:
                    value = value[0]
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                vals = (float(value),) * len(feats)
            else:
                try:
                    vals = tuple(float(v) for v in value)
                except TypeError:
                    raise ValueError(f"value: expected a float or a sequence of floats, got {type(value).__name__}") from None
                if len(vals) != len(feats):
                    raise ValueError(
                        f"value: expected one value per feature ({len(feats)}), got {len(vals)} values"
                    )
            bad = [i for i, v in zip(feats, vals) if not math.isfinite(v)]
            if bad:
                kinds = sorted({"NaN" if math.isnan(v) else "inf" for v in vals if not math.isfinite(v)})
                raise ValueError(f"value: {' and '.join(kinds)} value for features {bad[:10]} (values must be finite)")
        self.features = feats
        self.mode = mode
        self.values = vals
        self._cache: dict = {}
        if d_sae is not None:
            self.check(d_sae)

    # -- validation -----------------------------------------------------------------------------
    def check(self, d_sae: int) -> "Intervention":
        """Raise ``ValueError`` if a feature id is outside ``[0, d_sae)``; return ``self``."""
        bad = [i for i in self.features if i >= d_sae]
        if bad:
            raise ValueError(f"features: ids {bad[:10]} are outside [0, {d_sae}) for this SAE (d_sae={d_sae})")
        return self

    # -- tensors for the kernels ----------------------------------------------------------------
    def tensors(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(features int64 [|S|], values float32 [|S|])`` on ``device``, cached per device."""
        hit = self._cache.get(device) if type(device) is torch.device else None  # per call: no copy of device
        if hit is None:
            device = torch.device(device)
            hit = self._cache.get(device)
        if hit is None:
            hit = (
                torch.tensor(self.features, dtype=torch.int64, device=device),
                torch.tensor(self.values, dtype=torch.float32, device=device),
            )
            self._cache[device] = hit
        return hit

    @property
    def mode_id(self) -> int:
        return _MODE_IDS[self.mode]

    def __len__(self) -> int:
        return len(self.features)

    def is_noop(self) -> bool:
        """True when the edit provably changes nothing (no features, ``scale`` by 1, ``add`` 0)."""
        if not self.features:
            return True
        if self.mode == "scale":
            return all(v == 1.0 for v in self.values)
        if self.mode == "add":
            return all(v == 0.0 for v in self.values)
        return False

    # -- conveniences ---------------------------------------------------------------------------
    @classmethod
    def ablate(cls, features) -> "Intervention":
        return cls(features, "ablate")

    @classmethod
    def clamp(cls, features, value) -> "Intervention":
        return cls(features, "clamp", value)

    def to_dict(self) -> dict:
        d = {"features": list(self.features), "mode": self.mode}
        if self.mode != "ablate":
            d["value"] = list(self.values)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Intervention":
        """From ``{"features": [...], "mode": ..., "value": ...}`` (``values`` for ``value`` also
        accepted; ``mode`` defaults to ``ablate``). Missing or unknown keys are errors."""
        if not isinstance(d, dict):
            raise TypeError(f"intervention: expected a dict, got {type(d).__name__}")
        if "features" not in d:
            raise ValueError(f"intervention: the dict has no 'features' key (keys: {sorted(d)}); expected {{features, mode, value}}")
        unknown = sorted(set(d) - {"features", "mode", "value", "values"})
        if unknown:
            raise ValueError(f"intervention: unknown keys {unknown}; expected features, mode and value")
        if "value" in d and "values" in d:
            raise ValueError("intervention: give 'value' or 'values', not both")
        return cls(d["features"], d.get("mode", "ablate"), d.get("value", d.get("values")))

    def __eq__(self, other) -> bool:
        return (
            isinstance(other, Intervention)
            and self.features == other.features
            and self.mode == other.mode
            and self.values == other.values
        )

    def __hash__(self) -> int:
        return hash((self.features, self.mode, self.values))

    def __repr__(self) -> str:
        f = list(self.features) if len(self.features) <= 8 else f"{list(self.features[:8])[:-1]}... ({len(self.features)} ids)"
        v = "" if self.mode == "ablate" else f", value={list(self.values) if len(set(self.values)) > 1 else (self.values[0] if self.values else None)}"
        return f"Intervention({f}, {self.mode!r}{v})"


def as_intervention(obj, d_sae: int | None = None) -> Intervention:
    """Accept an :class:`Intervention` or a dict ``{features, mode, value}``."""
    if isinstance(obj, Intervention):
        iv = obj
    elif isinstance(obj, dict):
        iv = Intervention.from_dict(obj)
    else:
        raise TypeError(f"intervention: expected saesteer.Intervention or dict, got {type(obj).__name__}")
    if d_sae is not None:
        iv.check(d_sae)
    return iv


def union_features(interventions: Sequence[Intervention] | Iterable[Intervention]) -> tuple[int, ...]:
    """Sorted union of the feature ids of several interventions."""
    s: set[int] = set()
    for iv in interventions:
        s.update(iv.features)
    return tuple(sorted(s))
