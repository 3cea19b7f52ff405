"""A steering spec: a small JSON/YAML file (sae, layer, features, mode, values, positions).

``saesteer discover`` writes one for the set it finds; ``saesteer eval`` and ``saesteer generate``
read it, so a found set can be evaluated and served directly::

    {"sae": "path/to/sae_dir", "layer": 3, "features": [12, 40], "mode": "clamp",
     "values": 8.0, "positions": "all"}

``sae`` is a directory in sae-lens format, ``RELEASE:SAE_ID`` from sae-lens's registry, or
``organism:NAME`` for an SAE shipped with the built-in model (``organism`` alone: its default; the
command line resolves these, :func:`resolve_sae` the first two).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..intervention import Intervention

__all__ = ["SteeringSpec", "resolve_sae"]


@dataclass
class SteeringSpec:
    features: list[int]
    mode: str = "ablate"
    values: Any = None
    sae: str | None = None
    layer: int | None = None
    hook: str | None = None
    positions: str = "all"
    notes: dict = field(default_factory=dict)

    def intervention(self, d_sae: int | None = None) -> Intervention:
        return Intervention(self.features, self.mode, None if self.mode == "ablate" else self.values, d_sae=d_sae)

    def context(self, model, sae, backend: str = "auto"):
        """A context manager that applies this spec to ``model`` with the loaded ``sae``."""
        from ..hf import steer

        kw = {}
        if self.layer is not None and sae.hook_layer != self.layer:
            kw["layer"] = self.layer
        if self.hook is not None:
            kw["hook"] = self.hook
        return steer(model, sae, self.intervention(sae.d_sae), positions=self.positions, backend=backend, **kw)

    # -- files ----------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        if not d["notes"]:
            d.pop("notes")
        return d

    def save(self, path: str | Path) -> Path:
        p = Path(path)
        if p.suffix.lower() in (".yaml", ".yml"):
            import yaml

            p.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
        else:
            p.write_text(json.dumps(self.to_dict(), indent=2))
        return p

    @classmethod
    def load(cls, path: str | Path) -> "SteeringSpec":
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"steering spec: {str(p)!r} is not a file")
        text = p.read_text()
        if p.suffix.lower() in (".yaml", ".yml"):
            import yaml

            d = yaml.safe_load(text)
        else:
            d = json.loads(text)
        if not isinstance(d, dict) or "features" not in d:
            raise ValueError(f"steering spec {p}: expected an object with 'features' (and mode, values, sae, layer, positions)")
        unknown = set(d) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise ValueError(f"steering spec {p}: unknown keys {sorted(unknown)}")
        spec = cls(**d)
        spec.intervention()  # validate now, with a clear message
        return spec


def resolve_sae(ref: str, device="cpu"):
    """Load the SAE ``ref`` names: an sae-lens directory or ``RELEASE:SAE_ID`` from sae-lens's
    registry. (The command line also accepts ``organism[:NAME]``; it resolves those itself.)"""
    from ..sae import load_sae

    if not isinstance(ref, str) or not ref:
        raise ValueError(f"sae: expected an sae-lens directory or RELEASE:SAE_ID, got {ref!r}")
    p = Path(ref)
    if p.is_dir():
        return load_sae(p, device=device)
    if ":" in ref and not p.exists():
        release, sae_id = ref.split(":", 1)
        return load_sae(release=release, sae_id=sae_id, device=device)
    raise FileNotFoundError(f"sae: {ref!r} is neither an sae-lens directory nor RELEASE:SAE_ID")
