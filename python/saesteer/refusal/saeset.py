"""Several SAEs as one feature space: :class:`SAESet`.

A feature of an :class:`SAESet` is a pair ``(sae name, feature index)``. The search functions
(:mod:`.search`, :mod:`.interactions`) work on integer ids, so a set numbers its pairs with one
flat id, ``offset[k] + feature`` for the ``k``-th SAE; :meth:`SAESet.pair` and
:meth:`SAESet.flat` convert. An edit of a set of flat ids applies each SAE's part at that SAE's
own hook point, all of them in one :func:`saesteer.hf.steer` call (a list of
``(sae, intervention, layer)`` pairs), so the edits at several layers act on one forward together.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from ..hf import steer
from ..sae import SAE

__all__ = ["SAESet"]


@dataclass
class SAESet:
    """SAEs ``saes`` named ``names`` (unique), each read at decoder layer ``layers[k]`` (its
    hook's layer). Ordered as given; :meth:`by_depth` lists them from the earliest hook point."""

    names: list[str]
    saes: list[SAE]
    layers: list[int]
    offsets: list[int] = field(init=False)

    def __post_init__(self):
        if not (len(self.names) == len(self.saes) == len(self.layers)) or not self.names:
            raise ValueError("saes: expected one name and one layer per SAE, and at least one SAE")
        dup = sorted({n for n in self.names if self.names.count(n) > 1})
        if dup:
            raise ValueError(f"saes: {', '.join(map(repr, dup))} given more than once; each SAE is named once")
        self.offsets = []
        total = 0
        for s in self.saes:
            self.offsets.append(total)
            total += s.d_sae

    @classmethod
    def of(cls, sae: SAE, layer: int | None = None, name: str = "sae") -> "SAESet":
        """One SAE as a set of one (its flat ids are its own feature ids), read at ``layer`` (default:
        its hook's layer)."""
        if isinstance(sae, cls):
            return sae
        layer = sae.hook_layer if layer is None else layer
        if layer is None:
            raise ValueError("layer: the SAE has no hook_name with a layer; pass --layer")
        return cls([name], [sae], [layer])

    def __len__(self) -> int:
        return len(self.saes)

    @property
    def d_sae(self) -> int:
        """The number of flat ids: every SAE's features."""
        return self.offsets[-1] + self.saes[-1].d_sae

    def member(self, g: int) -> int:
        """The index of the SAE flat id ``g`` belongs to."""
        g = int(g)
        if not 0 <= g < self.d_sae:
            raise ValueError(f"feature: flat id {g} is out of range (0..{self.d_sae - 1})")
        k = 0
        while k + 1 < len(self.offsets) and self.offsets[k + 1] <= g:
            k += 1
        return k

    def pair(self, g: int) -> tuple[str, int]:
        """``(sae name, feature)`` of the flat id ``g``."""
        k = self.member(g)
        return self.names[k], int(g) - self.offsets[k]

    def flat(self, name: str, feature: int) -> int:
        """The flat id of ``feature`` of the SAE ``name``."""
        if name not in self.names:
            raise ValueError(f"sae: no SAE named {name!r} (have: {', '.join(self.names)})")
        k = self.names.index(name)
        if not 0 <= int(feature) < self.saes[k].d_sae:
            raise ValueError(f"feature: {feature} is out of range for {name!r} (d_sae={self.saes[k].d_sae})")
        return self.offsets[k] + int(feature)

    def split(self, features: Sequence[int]) -> list[list[int]]:
        """Per SAE, the local feature ids among the flat ids ``features`` (order kept)."""
        out: list[list[int]] = [[] for _ in self.saes]
        for g in features:
            k = self.member(g)
            out[k].append(int(g) - self.offsets[k])
        return out

    def pairs(self, features: Sequence[int]) -> list[list]:
        """``[[name, feature], ...]`` for the flat ids ``features`` (JSON's form of a pair)."""
        return [list(self.pair(g)) for g in features]

    def depth(self, k: int) -> int:
        """Where SAE ``k`` reads the residual stream: ``L`` for resid_pre of layer ``L``, ``L + 1``
        for its resid_post (the next layer's input)."""
        return self.layers[k] + (not (self.saes[k].hook_name or "").endswith("hook_resid_pre"))

    def by_depth(self) -> list[int]:
        """SAE indices from the earliest hook point to the latest, ties in the given order."""
        return sorted(range(len(self.saes)), key=self.depth)

    def steer(self, model, feature_sets, edit, *, backend: str = "auto", skip_bos: bool = True, positions="all"):
        """The hooks that apply ``edit`` (an object with ``intervention(features)``, e.g.
        :class:`saesteer.refusal.search.Edit`) to flat ids at each SAE's hook point, in one
        :func:`saesteer.hf.steer` call, or None when nothing is edited.

        ``feature_sets``: one set of flat ids for every token of every row, or (a list of lists)
        one set per batch row."""
        per_row = bool(feature_sets) and isinstance(feature_sets[0], (list, tuple))
        rows = [self.split(s) for s in feature_sets] if per_row else [self.split(feature_sets)]
        pairs = []
        for k, s in enumerate(self.saes):
            ivs = [edit.intervention(r[k]) for r in rows]
            if all(iv is None for iv in ivs):
                continue
            pairs.append((s, ivs if per_row else ivs[0], self.layers[k]))
        if not pairs:
            return None
        return steer(model, pairs, backend=backend, skip_bos=skip_bos, positions=positions)
