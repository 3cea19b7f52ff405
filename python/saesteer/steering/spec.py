"""A request's steering spec, engine-neutral: what a serving engine receives per request.

The fields are those of ``saesteer discover``'s ``spec.json``::

    {"sae": "jumprelu", "features": [12, 40], "mode": "clamp", "value": 8.0, "positions": "all",
     "skip_bos": true}

``sae`` names an SAE the server registered, ``value`` is a float or one per feature (``values``
is accepted too), ``positions`` is ``all`` | ``prompt`` | ``generated``, ``skip_bos`` (default
true) leaves the sequence's BOS token unedited (see :func:`bos_token_mask` for the rule). A request may carry one
spec or a list of them (edits on several SAEs, applied in order). :func:`parse_specs` validates
everything before a request reaches the engine, with errors that name the field.

Two optional fields ask an engine for more than the edit:

* ``when`` (:mod:`saesteer.steering.condition`): the edit applies only where the trigger fires; a
  spec with a ``when`` and no ``features`` is a monitor (nothing edited, the decision reported).
* ``inspect``: ``{"sae": NAME, "k": 16, "positions": "prompt" | "generated" | "all"}``, the
  per-token top-k features at that SAE's hook point, reported with the response.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

from ..intervention import Intervention
from .condition import Condition, parse_when, resolve_sae
from .condition import json_kind as _json_kind

__all__ = ["SteerSpec", "InspectSpec", "parse_specs", "from_spec_file", "spec_key", "spec_salt", "POSITIONS",
           "SpecError", "bos_token_mask"]

POSITIONS = ("all", "prompt", "generated")
_FIELDS = {"sae", "features", "mode", "value", "values", "positions", "skip_bos", "layer", "hook_name", "model",
           "when", "inspect"}
_INSPECT_FIELDS = {"sae", "k", "positions"}


def bos_token_mask(token_ids, positions, bos_token_id: int | None):
    """True where a token is its sequence's BOS, the rule every engine applies for ``skip_bos``.
    ``token_ids`` and ``positions`` are torch tensors or numpy arrays (the result is of the same kind).

    A token is BOS when its position in its own sequence is 0 -- ``positions`` counts from the
    sequence's first non-padding token (an engine's absolute token position; in a left-padded HF
    batch, the number of real tokens before it) -- and its id equals ``bos_token_id`` (the model
    config's). A model without a ``bos_token_id`` has no BOS, and a first token that is not the BOS
    id (a tokenizer that adds none) is a real token and is edited. Without ``token_ids`` (a forward
    on ``inputs_embeds``) the token at position 0 is taken as BOS.
    """
    first = positions == 0
    if bos_token_id is None:
        return first & False  # all False, the same kind and shape as positions
    if token_ids is None:
        return first
    return first & (token_ids == int(bos_token_id))


class SpecError(ValueError):
    """A malformed steering spec; the message names the field."""


@dataclass(frozen=True)
class InspectSpec:
    """A request's ``inspect``: the top ``k`` features of SAE ``sae`` on each token at ``positions``."""

    sae: str
    k: int = 16
    positions: str = "all"

    def to_dict(self) -> dict:
        return {"sae": self.sae, "k": self.k, "positions": self.positions}


@dataclass(frozen=True)
class SteerSpec:
    sae: str
    intervention: Intervention
    positions: str = "all"
    skip_bos: bool = True
    when: Condition | None = None  # the edit applies only where it fires (no features: a monitor)
    inspect: InspectSpec | None = None

    @property
    def edits(self) -> bool:
        """True when the spec changes hidden states (it has features)."""
        return bool(self.intervention.features)

    @property
    def reports(self) -> bool:
        """True when an engine reports something back for the spec (a ``when`` or an ``inspect``)."""
        return self.when is not None or self.inspect is not None

    @property
    def decides_on_prompt(self) -> bool:
        """True when the spec edits prompt tokens by a decision read on the whole prompt (a
        prompt-scope ``when``): an engine must read all of the prompt before editing any of it."""
        return self.when is not None and self.when.scope == "prompt" and self.edits and self.positions != "generated"

    def to_dict(self) -> dict:
        d = {"sae": self.sae, "features": list(self.intervention.features), "mode": self.intervention.mode,
             "positions": self.positions, "skip_bos": self.skip_bos}
        if self.intervention.mode != "ablate":
            d["value"] = list(self.intervention.values)
        if self.when is not None:
            d["when"] = self.when.to_dict()
        if self.inspect is not None:
            d["inspect"] = self.inspect.to_dict()
        return d


#: The largest float32: a spec's values become float32 tensors, whatever the SAE's dtype.
FLOAT32_MAX = 3.4028234663852886e38


def _check_value(value, where: str, sae: str, n_features: int, limit: float) -> None:
    """``value``: absent, a JSON number or a list of them whose magnitudes, one per feature, sum to
    at most ``limit`` (the SAE's: beyond it the edit, ``sum_i (v_i - f_i) * W_dec[i]``, could
    overflow the SAE's or the engine's dtype)."""
    if value is None:
        return
    items = value if isinstance(value, list) else [value]
    for v in items:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise SpecError(f"{where}: expected a number or a list of numbers (JSON numbers), got {_json_kind(v)}")
    if not all(math.isfinite(v) for v in items):
        return  # NaN and inf: the Intervention names them
    total = sum(abs(float(v)) for v in items) * (n_features if not isinstance(value, list) else 1)
    if total > limit:
        raise SpecError(f"{where}: {value!r} is too large for SAE {sae!r}: the edit must stay finite in its dtype, "
                        f"so the values' magnitudes (one per feature) may sum to at most {limit:.4g}")


def _one(d, saes: dict[str, int], where: str, layers: dict[str, int] | None,
         limits: dict[str, float] | None = None) -> SteerSpec:
    if not isinstance(d, dict):
        raise SpecError(f"{where}: expected an object with sae, features, mode, value, positions; got {type(d).__name__}")
    unknown = sorted(set(d) - _FIELDS)
    if unknown:
        raise SpecError(f"{where}.{unknown[0]}: unknown field (expected sae, features, mode, value, positions, skip_bos)")
    name = d.get("sae")
    if name is None and "features" not in d:  # a monitor or an inspection alone: the SAE it reads
        for part in ("when", "inspect"):
            if isinstance(d.get(part), dict) and isinstance(d[part].get("sae"), str):
                name = resolve_sae(d[part]["sae"], saes, f"{where}.{part}.sae", SpecError)
                break
    name = resolve_sae(name, saes, f"{where}.sae", SpecError)
    layer = d.get("layer")
    if layer is not None:
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise SpecError(f"{where}.layer: expected an integer layer index, got {layer!r}")
        if layers is not None and name in layers and layer != layers[name]:
            raise SpecError(f"{where}.layer: the spec edits layer {layer} with SAE {name!r}, which reads layer "
                            f"{layers[name]}; the server edits at each SAE's own layer")
    when = inspect = None
    if "when" in d:
        try:
            when = parse_when(d["when"], saes, f"{where}.when", default_sae=name)
        except ValueError as e:
            raise SpecError(str(e)) from None
        _check_order(when.sae, name, layers, f"{where}.when.sae", d.get("features"))
    if "inspect" in d:
        inspect = _inspect(d["inspect"], saes, f"{where}.inspect", name)
    if "features" not in d:
        if when is None and inspect is None:
            raise SpecError(f"{where}.features: required (a list of feature ids)")
        d = dict(d, features=[])  # a monitor / an inspection: nothing edited
    positions = d.get("positions", "all")
    if positions not in POSITIONS:
        raise SpecError(f"{where}.positions: expected one of {', '.join(POSITIONS)}, got {positions!r}")
    skip_bos = d.get("skip_bos", True)
    if not isinstance(skip_bos, bool):
        raise SpecError(f"{where}.skip_bos: expected true or false, got {skip_bos!r}")
    features = d["features"]
    if isinstance(features, bool) or not isinstance(features, (int, list)):
        raise SpecError(f"{where}.features: expected a list of feature ids, got {_json_kind(features)}")
    if "value" in d and "values" in d:
        raise SpecError(f"{where}.value: give 'value' or 'values', not both")
    field = "values" if "values" in d else "value"
    value = d.get(field)
    n_features = 1 if isinstance(features, int) else len(features)
    # clamp and add move the stream by about the values times W_dec: the engine's bound applies; a
    # scale multiplies activations, so only float32 bounds it here and the engine checks the result
    limit = FLOAT32_MAX if d.get("mode") == "scale" else (limits or {}).get(name, FLOAT32_MAX)
    _check_value(value, f"{where}.{field}", name, n_features, limit)
    try:
        iv = Intervention(features, d.get("mode", "ablate"), value, d_sae=saes[name])
    except (ValueError, TypeError) as e:
        msg = str(e)
        field = msg.split(":", 1)[0] if ":" in msg else "features"
        raise SpecError(f"{where}.{field}: {msg.split(':', 1)[-1].strip()}") from None
    return SteerSpec(name, iv, positions, skip_bos, when, inspect)


def _check_order(trigger_sae: str, edit_sae: str, layers: dict[str, int] | None, where: str, features) -> None:
    """A trigger is read before the edit it gates: its SAE's layer may not come after the edit's."""
    if not features or layers is None or trigger_sae not in layers or edit_sae not in layers:
        return
    if layers[trigger_sae] > layers[edit_sae]:
        raise SpecError(f"{where}: the trigger's SAE {trigger_sae!r} reads layer {layers[trigger_sae]}, after the edit's "
                        f"layer {layers[edit_sae]} (SAE {edit_sae!r}); a condition must be read no later than the edit")


def _inspect(d, saes: dict[str, int], where: str, default_sae: str) -> InspectSpec:
    """Validate an ``inspect`` object: ``{"sae", "k", "positions"}`` (errors name ``{where}.FIELD``)."""
    if not isinstance(d, dict):
        raise SpecError(f"{where}: expected an object with sae, k and positions, got {_json_kind(d)}")
    unknown = sorted(set(d) - _INSPECT_FIELDS)
    if unknown:
        raise SpecError(f"{where}.{unknown[0]}: unknown field (expected sae, k, positions)")
    name = d.get("sae", default_sae)
    if not isinstance(name, str) or name not in saes:
        raise SpecError(f"{where}.sae: unknown SAE {name!r} (registered: {', '.join(sorted(saes)) or 'none'})")
    k = d.get("k", 16)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= min(saes[name] or k, 1024):
        raise SpecError(f"{where}.k: expected an integer in [1, {min(saes[name] or 1024, 1024)}], got {_json_kind(k)}")
    positions = d.get("positions", "all")
    if positions not in POSITIONS:
        raise SpecError(f"{where}.positions: expected one of {', '.join(POSITIONS)}, got {_json_kind(positions)}")
    return InspectSpec(name, k, positions)


def parse_specs(spec, saes: dict[str, int], layers: dict[str, int] | None = None,
                limits: dict[str, float] | None = None) -> tuple[SteerSpec, ...]:
    """Validate a request's spec (a dict, a list of dicts, or their JSON text) against the
    registered SAEs (``name -> d_sae``). A spec's optional ``layer`` must be an integer and, where
    ``layers`` (name -> the SAE's layer) is given, that SAE's own layer: an engine edits at the
    layer the SAE reads. Values are JSON numbers, finite, whose magnitudes (one per feature) sum to at
    most ``limits[sae]`` (an engine's bound that keeps a clamp or add edit finite in its dtypes;
    default, and for ``scale``: the largest float32, since values become float32 tensors). Several specs
    on one SAE are kept, in order: engines apply them one after the other, each to the previous
    one's output. Returns the parsed specs (empty for None / [])."""
    if spec is None:
        return ()
    if isinstance(spec, (str, bytes)):
        try:
            spec = json.loads(spec)
        except json.JSONDecodeError as e:
            raise SpecError(f"saesteer: malformed JSON ({e.msg} at character {e.pos})") from None
    items = spec if isinstance(spec, list) else [spec]
    return tuple(_one(d, saes, f"saesteer[{i}]" if isinstance(spec, list) else "saesteer", layers, limits)
                 for i, d in enumerate(items))


def _same_source(a: str, b: str, resolve) -> bool:
    """Two SAE references name the same SAE: equal text, or the same directory (after ``resolve``)."""
    if a == b:
        return True
    pa, pb = Path(resolve(a)).expanduser(), Path(resolve(b)).expanduser()
    return pa.is_dir() and pb.is_dir() and pa.resolve() == pb.resolve()


def from_spec_file(spec, sources: dict[str, str], where: str = "--steer", resolve=None):
    """A steering spec file (``saesteer discover``'s ``spec.json``, which names SAEs by their
    reference and may hold ``edits`` at several SAEs) as request specs for a server whose SAEs are
    ``sources`` (name -> reference, as registered with ``--sae NAME=REF``). Each SAE the file names
    becomes the registered name with the same reference (the same directory counts); a name the
    server registered is kept. ``edits`` become one spec per edit, sharing the file's mode, value,
    positions and ``skip_bos``, each keeping its ``layer`` for the server to check against the
    SAE's own. ``resolve`` maps a reference to its directory where it can (an engine's aliases, such
    as ``organism:NAME``) before directories are compared. A spec whose ``sae`` is a registered name
    (or a list of such specs) comes back unchanged. Raises SpecError naming ``where`` when a file's
    SAE is not registered."""
    if not isinstance(spec, dict):
        return spec
    file_keys = {"edits", "hook", "notes", "model"} & set(spec)
    if not file_keys and not (isinstance(spec.get("sae"), str) and spec["sae"] not in sources):
        return spec
    resolve = resolve or (lambda ref: ref)
    if spec.get("hook") is not None:
        raise SpecError(f"{where}.hook: the server edits each SAE's own hook point; the file names {spec['hook']!r}")

    def name_of(ref):
        if ref is None or ref in sources:
            return ref
        for name, src in sources.items():
            if _same_source(str(ref), str(src), resolve):
                return name
        raise SpecError(f"{where}.sae: the file's SAE {ref!r} is not registered with the server "
                        f"(registered: {', '.join(f'{n}={s}' for n, s in sorted(sources.items())) or 'none'}); "
                        "add --sae NAME=" + str(ref))

    common = {k: spec[k] for k in ("mode", "values", "value", "positions", "skip_bos") if spec.get(k) is not None}
    if spec.get("edits"):
        if not isinstance(spec["edits"], list) or not all(isinstance(e, dict) and "sae" in e for e in spec["edits"]):
            raise SpecError(f"{where}.edits: expected a list of {{sae, layer, features}}")
        return [{**common, "sae": name_of(e["sae"]), "features": e.get("features"),
                 **({"layer": e["layer"]} if e.get("layer") is not None else {})} for e in spec["edits"]]
    out = {**common, "features": spec.get("features")}
    if spec.get("sae") is not None:
        out["sae"] = name_of(spec["sae"])
    if spec.get("layer") is not None:
        out["layer"] = spec["layer"]
    return out


def spec_key(specs: tuple[SteerSpec, ...]) -> str:
    """Canonical JSON of parsed specs: equal keys mean the same edit."""
    return json.dumps([s.to_dict() for s in specs], sort_keys=True, separators=(",", ":"))


def spec_salt(specs: tuple[SteerSpec, ...]) -> str | None:
    """A prefix-cache salt for the specs (None for an unsteered request): KV blocks computed under
    one spec are never reused under another."""
    if not specs:
        return None
    return "saesteer-" + hashlib.sha256(spec_key(specs).encode()).hexdigest()[:32]

