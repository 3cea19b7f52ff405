"""A steering spec: a small JSON/YAML file (sae, layer, features, mode, values, positions).

``saesteer discover`` writes one for the set it finds; ``saesteer eval`` and ``saesteer generate``
read it, so a found set can be evaluated and served directly::

    {"sae": "path/to/sae_dir", "layer": 3, "features": [12, 40], "mode": "clamp",
     "values": 8.0, "positions": "all", "skip_bos": true}

Edits at several hook points (what ``discover`` writes for several SAEs) go in ``edits``, one
``{sae, layer, features}`` per SAE, sharing the spec's mode, values, positions and skip_bos; the
top-level ``features`` is then empty::

    {"features": [], "edits": [{"sae": "organism:jumprelu", "layer": 2, "features": [12, 40]},
                               {"sae": "organism:jumprelu_l3", "layer": 3, "features": [7]}],
     "mode": "ablate", "positions": "all", "skip_bos": true}

``skip_bos`` (default true) leaves each sequence's BOS token unedited (see
:func:`saesteer.steering.spec.bos_token_mask`).

``when`` (optional) makes the edit conditional (:mod:`saesteer.steering.condition`): ``{"sae",
"features", "threshold", "reduce", "scope"}`` or a linear probe ``{"sae", "features", "weights",
"bias", ...}``; its ``sae`` is an SAE reference like the spec's (left out: the spec's own SAE; with
``edits``, one of theirs), and the condition gates every edit of the spec.

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
    edits: list | None = None  # [{sae, layer, features}] at several hook points; None: one SAE
    when: dict | None = None  # a condition gating the edit (saesteer.steering.condition)

    def intervention(self, d_sae: int | None = None) -> Intervention:
        return Intervention(self.features, self.mode, self.values, d_sae=d_sae)

    @property
    def sae_refs(self) -> list[str | None]:
        """The SAEs the spec names: each edit's, or the one ``sae``."""
        return [e["sae"] for e in self.edits] if self.edits else [self.sae]

    def check_edits(self) -> None:
        """Raise ValueError naming what is wrong with ``edits`` (each a dict with a string ``sae``,
        an integer ``layer`` and a non-empty list of feature ids, no SAE twice), and check each
        edit's features with this spec's mode and values."""
        if self.edits is None:
            return
        if not isinstance(self.edits, list) or not self.edits:
            raise ValueError("edits: expected a non-empty list of {sae, layer, features}")
        seen = set()
        for n, e in enumerate(self.edits):
            if not isinstance(e, dict) or set(e) - {"sae", "layer", "features"} or not isinstance(e.get("sae"), str) \
                    or not isinstance(e.get("features"), list) or not e["features"]:
                raise ValueError(f"edits[{n}]: expected {{sae: name, layer: int, features: [ids]}}, got {e!r}")
            if e.get("layer") is not None and (not isinstance(e["layer"], int) or isinstance(e["layer"], bool)):
                raise ValueError(f"edits[{n}]: layer must be an integer, got {e['layer']!r}")
            if e["sae"] in seen:
                raise ValueError(f"edits[{n}]: the SAE {e['sae']!r} has two edits; give each SAE one")
            seen.add(e["sae"])
            if self.mode == "ablate" or self.values is not None:
                try:  # the spec's values are shared: one value, or one per feature of every edit
                    Intervention(e["features"], self.mode, self.values)
                except ValueError as err:
                    raise ValueError(f"edits[{n}] ({e['sae']}, {len(e['features'])} features): {err}") from None
        if self.features:
            raise ValueError("features: a spec with edits keeps its features in the edits; leave features empty")

    def context(self, model, sae, backend: str = "auto"):
        """A context manager that applies this spec to ``model`` with the loaded ``sae``: one SAE,
        or with ``edits`` a dict ``{edit's sae: loaded SAE}`` (every edit at its layer, one hook
        set)."""
        from ..hf import steer

        when = self._when(sae)
        if self.edits:
            missing = [e["sae"] for e in self.edits if not isinstance(sae, dict) or e["sae"] not in sae]
            if missing:
                raise ValueError(f"sae: the spec's edits need the SAEs {missing}; pass a dict of them")
            pairs = [(sae[e["sae"]], _with_when(Intervention(e["features"], self.mode, self.values, d_sae=sae[e["sae"]].d_sae),
                                                when), e.get("layer")) for e in self.edits]
            return steer(model, pairs, positions=self.positions, skip_bos=self.skip_bos, backend=backend)
        kw = {}
        if self.layer is not None and sae.hook_layer != self.layer:
            kw["layer"] = self.layer
        if self.hook is not None:
            kw["hook"] = self.hook
        return steer(model, sae, self.intervention(sae.d_sae), positions=self.positions,
                     skip_bos=self.skip_bos, backend=backend, when=when, **kw)

    def _when(self, sae):
        """This spec's ``when`` for the HF hooks: its ``sae`` reference replaced by the loaded SAE
        (``sae``: the one loaded SAE, or the dict ``{reference: SAE}`` of a spec with edits)."""
        if self.when is None:
            return None
        w = dict(self.when)
        ref = w.pop("sae", None)
        if isinstance(sae, dict):
            if ref is None or ref not in sae:
                raise ValueError(f"when.sae: a spec with edits names the SAE its condition reads, one of {sorted(sae)}; "
                                 f"got {ref!r}")
            w["sae"] = sae[ref]
        elif ref is not None and ref != self.sae and not same_model(ref, self.sae or ""):
            raise ValueError(f"when.sae: the condition reads {ref!r}, but the spec's SAE is {self.sae!r}; a one-SAE spec's "
                             "condition reads that SAE (leave when.sae out)")
        return w

    # -- files ----------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        if not d["notes"]:
            d.pop("notes")
        if d["model"] is None:
            d.pop("model")
        if d["edits"] is None:
            d.pop("edits")
        if d["when"] is None:
            d.pop("when")
        return d

    def save(self, path: str | Path) -> Path:
        """Write the spec as JSON (or YAML for ``.yaml``/``.yml``), local paths made absolute."""
        p = Path(path)
        d = self.to_dict()
        for key in ("sae", "model"):
            if d.get(key) is not None:
                d[key] = absolute_ref(d[key])
        for e in d.get("edits") or []:
            e["sae"] = absolute_ref(e["sae"])
        if isinstance((d.get("when") or {}).get("sae"), str):
            d["when"]["sae"] = absolute_ref(d["when"]["sae"])
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
        expected = "an object with 'features' or 'edits' (and mode, values, sae, model, layer, positions)"
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
        if not isinstance(d, dict) or ("features" not in d and "edits" not in d):
            raise ValueError(f"steering spec {p}: expected {expected}")
        d.setdefault("features", [])
        unknown = set(d) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise ValueError(f"steering spec {p}: unknown keys {sorted(unknown)}")
        for key in ("sae", "model"):
            if isinstance(d.get(key), str):
                d[key] = _relative_to(d[key], p.parent)
        for e in d.get("edits") or []:
            if isinstance(e, dict) and isinstance(e.get("sae"), str):
                e["sae"] = _relative_to(e["sae"], p.parent)
        if isinstance(d.get("when"), dict) and isinstance(d["when"].get("sae"), str):
            d["when"] = {**d["when"], "sae": _relative_to(d["when"]["sae"], p.parent)}
        if d.get("when") is not None:
            from ..steering.condition import parse_when

            try:
                parse_when(d["when"])
            except ValueError as e:
                raise ValueError(f"steering spec {p}: {e}") from None
        if not isinstance(d.get("skip_bos", True), bool):
            raise ValueError(f"steering spec {p}: skip_bos must be true or false, got {d['skip_bos']!r}")
        spec = cls(**d)
        if spec.edits is not None:
            try:
                spec.check_edits()
            except ValueError as e:
                raise ValueError(f"steering spec {p}: {e}") from None
        elif spec.mode == "ablate" or spec.values is not None:
            # Validate now, naming the file. A clamp/scale/add spec without values is complete once
            # the caller supplies them (``saesteer eval --sweep``, ``--value``).
            try:
                spec.intervention()
            except ValueError as e:
                raise ValueError(f"steering spec {p}: {e}") from None
        return spec


def resolve_sae(ref: str, device="cpu"):
    """Load the SAE ``ref`` names: an sae-lens directory or ``RELEASE:SAE_ID`` from sae-lens's
    registry. (The command line also accepts ``organism[:NAME]``; it resolves those itself.)"""
    from ..sae_ref import resolve_sae_ref

    return resolve_sae_ref(ref, device=device)


def _with_when(iv: Intervention, when: dict | None):
    """``iv`` as the HF hooks' intervention dict carrying ``when`` (``iv`` itself without one)."""
    if when is None:
        return iv
    d = {"features": list(iv.features), "mode": iv.mode, "when": when}
    if iv.mode != "ablate":
        d["value"] = list(iv.values)
    return d
