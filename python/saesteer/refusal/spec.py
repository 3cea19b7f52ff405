"""A steering spec: a small JSON/YAML file (sae, layer, features, mode, values, positions).

``saesteer discover`` writes one for the set it finds; ``saesteer eval`` and ``saesteer generate``
read it, so a found set can be evaluated and served directly::

    {"sae": "path/to/sae_dir", "layer": 3, "features": [12, 40], "mode": "clamp",
     "values": 8.0, "positions": "all", "skip_bos": true}

``skip_bos`` (default true) leaves each sequence's BOS token unedited (see
:func:`saesteer.steering.spec.bos_token_mask`).

``sae`` is a directory in sae-lens format, ``RELEASE:SAE_ID`` from sae-lens's registry, or
``organism:NAME`` for an SAE shipped with the built-in model (``organism`` alone: its default; the
command line resolves these, :func:`resolve_sae` the first two). ``model`` is the HF model id or
directory the features were found on (``organism``: the built-in model).

A spec file is portable: :meth:`SteeringSpec.save` writes local paths (``sae``, ``model``)
absolute, and :meth:`SteeringSpec.load` resolves a relative path against the spec file's own
directory when it exists there (a path that exists only relative to the working directory, as
older specs stored it, is kept as written).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..intervention import Intervention

__all__ = ["SteeringSpec", "resolve_sae", "absolute_ref", "same_model"]


def absolute_ref(ref: str) -> str:
    """``ref`` as an absolute path when it names an existing local file or directory; a hub id,
    ``RELEASE:SAE_ID`` or ``organism[:NAME]`` unchanged."""
    if ref == "organism" or ref.startswith("organism:"):
        return ref
    p = Path(ref).expanduser()
    return str(p.resolve()) if p.exists() else ref


def _relative_to(ref: str, base: Path) -> str:
    """A relative path ``ref`` in a spec file at ``base``: the path under ``base`` when that exists
    (portable specs), else ``ref`` as written (a hub id, or a path relative to the working dir)."""
    p = Path(ref).expanduser()
    if p.is_absolute():
        return ref
    under = base / p
    return str(under.resolve()) if under.exists() else ref


def same_model(a: str, b: str) -> bool:
    """Whether two model references name the same model: equal ids, or the same local directory."""
    if a == b:
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


@dataclass
class SteeringSpec:
    features: list[int]
    mode: str = "ablate"
    values: Any = None
    sae: str | None = None
    layer: int | None = None
    hook: str | None = None
    positions: str = "all"
    skip_bos: bool = True
    model: str | None = None
    notes: dict = field(default_factory=dict)

    def intervention(self, d_sae: int | None = None) -> Intervention:
        return Intervention(self.features, self.mode, self.values, d_sae=d_sae)

    def context(self, model, sae, backend: str = "auto"):
        """A context manager that applies this spec to ``model`` with the loaded ``sae``."""
        from ..hf import steer

        kw = {}
        if self.layer is not None and sae.hook_layer != self.layer:
            kw["layer"] = self.layer
        if self.hook is not None:
            kw["hook"] = self.hook
        return steer(model, sae, self.intervention(sae.d_sae), positions=self.positions,
                     skip_bos=self.skip_bos, backend=backend, **kw)

    # -- files ----------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        if not d["notes"]:
            d.pop("notes")
        if d["model"] is None:
            d.pop("model")
        return d

    def save(self, path: str | Path) -> Path:
        """Write the spec as JSON (or YAML for ``.yaml``/``.yml``), local paths made absolute."""
        p = Path(path)
        d = self.to_dict()
        for key in ("sae", "model"):
            if d.get(key) is not None:
                d[key] = absolute_ref(d[key])
        if p.suffix.lower() in (".yaml", ".yml"):
            import yaml

            p.write_text(yaml.safe_dump(d, sort_keys=False))
        else:
            p.write_text(json.dumps(d, indent=2))
        return p

    @classmethod
    def load(cls, path: str | Path) -> "SteeringSpec":
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"steering spec: {str(p)!r} is not a file")
        expected = "an object with 'features' (and mode, values, sae, model, layer, positions)"
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"steering spec {p}: not a text file; expected JSON or YAML, {expected}") from None
        if p.suffix.lower() in (".yaml", ".yml"):
            import yaml

            try:
                d = yaml.safe_load(text)
            except yaml.YAMLError as e:
                raise ValueError(f"steering spec {p}: not valid YAML ({' '.join(str(e).split())}); expected {expected}") from None
        else:
            try:
                d = json.loads(text)
            except json.JSONDecodeError as e:
                raise ValueError(f"steering spec {p}: not valid JSON (line {e.lineno} column {e.colno}: {e.msg}); "
                                 f"expected {expected}") from None
        if not isinstance(d, dict) or "features" not in d:
            raise ValueError(f"steering spec {p}: expected {expected}")
        unknown = set(d) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise ValueError(f"steering spec {p}: unknown keys {sorted(unknown)}")
        for key in ("sae", "model"):
            if isinstance(d.get(key), str):
                d[key] = _relative_to(d[key], p.parent)
        if not isinstance(d.get("skip_bos", True), bool):
            raise ValueError(f"steering spec {p}: skip_bos must be true or false, got {d['skip_bos']!r}")
        spec = cls(**d)
        if spec.mode == "ablate" or spec.values is not None:
            # Validate now, naming the file. A clamp/scale/add spec without values is complete once
            # the caller supplies them (``saesteer eval --sweep``, ``--value``).
            try:
                spec.intervention()
            except ValueError as e:
                raise ValueError(f"steering spec {p}: {e}") from None
        return spec


def _check_sae_dir(p: Path) -> None:
    """Name what an SAE directory holds when it lacks sae-lens's safetensors weights (a pickled
    checkpoint is never unpickled: loading one could run arbitrary code)."""
    if (p / "cfg.json").is_file() and (p / "sae_weights.safetensors").is_file():
        return
    found = sorted(f.name for f in p.iterdir())
    shown = ", ".join(found[:8]) + (f", ... ({len(found)} files)" if len(found) > 8 else "") if found else "nothing"
    pickles = [f for f in found if f.endswith((".pt", ".pth", ".pkl", ".bin", ".ckpt"))]
    hint = (f"; {', '.join(pickles[:3])} {'is a pickled checkpoint' if len(pickles) == 1 else 'are pickled checkpoints'}, "
            "which saesteer does not unpickle: load it in sae-lens and save_model() it to get the safetensors file"
            if pickles else "")
    raise FileNotFoundError(f"sae: {str(p)!r} holds {shown}; expected sae-lens's format, cfg.json and "
                            f"sae_weights.safetensors{hint}")


def resolve_sae(ref: str, device="cpu"):
    """Load the SAE ``ref`` names: an sae-lens directory or ``RELEASE:SAE_ID`` from sae-lens's
    registry. (The command line also accepts ``organism[:NAME]``; it resolves those itself.)"""
    from ..sae import load_sae

    if not isinstance(ref, str) or not ref:
        raise ValueError(f"sae: expected an sae-lens directory or RELEASE:SAE_ID, got {ref!r}")
    p = Path(ref)
    if p.is_dir():
        _check_sae_dir(p)
        return load_sae(p, device=device)
    if ":" in ref and not p.exists():
        release, sae_id = ref.split(":", 1)
        return load_sae(release=release, sae_id=sae_id, device=device)
    raise FileNotFoundError(f"sae: {ref!r} is neither an sae-lens directory nor RELEASE:SAE_ID")
