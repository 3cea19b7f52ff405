"""The SAEs a steered engine registers: their references resolved (:mod:`saesteer.sae_ref`), and
where each one reads the residual stream."""

from __future__ import annotations

import json
from pathlib import Path

from ..organism.refs import organism_sae_dir
from ..sae import hook_layer_of
from ..sae_ref import is_organism_ref, resolve_sae_ref
from ..steering.spec import SpecError

__all__ = ["source_dir", "read_sae", "sae_site", "site_layer"]


def source_dir(source: str) -> str:
    """``organism:NAME`` -> the directory of the organism's SAE NAME (``organism`` alone: its default
    SAE); any other source unchanged."""
    if not is_organism_ref(source):
        return source
    try:
        return str(organism_sae_dir(source, "--sae"))
    except ValueError as e:
        raise SpecError(str(e)) from None


def read_sae(source: str, device=None):
    """A ``saesteer.SAE`` from a directory in sae-lens format, ``organism:NAME`` (an SAE shipped with
    the organism), or an sae-lens pretrained ``RELEASE:ID`` (e.g.
    ``gemma-scope-2b-pt-res-canonical:layer_20/width_16k/canonical``; needs sae-lens, downloads on
    first use). A bad reference is a SpecError naming ``--sae``."""
    try:
        return resolve_sae_ref(source_dir(source), device or "cpu", where="--sae")
    except (ValueError, FileNotFoundError, ImportError) as e:
        raise SpecError(str(e)) from None


def sae_site(source: str) -> tuple[int, str | None]:
    """``(d_sae, hook_name)`` of an SAE source, from its ``cfg.json`` alone where it has one (the
    weights are read once, by the workers); an sae-lens ``RELEASE:ID`` is loaded."""
    source = source_dir(source)
    if Path(source).is_dir():
        cfg_path = Path(source) / "cfg.json"
        if not cfg_path.is_file() or not (Path(source) / "sae_weights.safetensors").is_file():
            raise SpecError(f"--sae: {source!r} is not an SAE directory (expected cfg.json and sae_weights.safetensors)")
        try:
            cfg = json.loads(cfg_path.read_text())
            return int(cfg["d_sae"]), (cfg.get("metadata") or {}).get("hook_name")  # where read_sae_dir reads it
        except (ValueError, KeyError, TypeError) as e:
            raise SpecError(f"--sae: {cfg_path} has no usable d_sae ({e})") from None
    sae = read_sae(source)
    return sae.d_sae, sae.hook_name


def site_layer(name: str, hook_name: str | None) -> int:
    """The decoder layer an SAE named ``name`` reads (``blocks.L.hook_resid_post``), or a SpecError."""
    layer = hook_layer_of(hook_name)
    if layer is None or not (hook_name or "").endswith("hook_resid_post"):
        raise SpecError(f"--sae {name}: the SAE's hook_name {hook_name!r} is not blocks.L.hook_resid_post")
    return layer
