"""The built-in organism's SAE references, ``organism`` and ``organism:NAME``, mapped to their
directories (then read like any sae-lens directory: :func:`saesteer.sae_ref.resolve_sae_ref`)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["organism_sae_dir"]


def organism_sae_dir(ref: str, where: str = "--sae") -> Path:
    """The directory of the organism SAE ``ref`` names (``organism``: its default SAE), read from the
    organism's manifest alone; a ValueError naming ``where`` when the organism has no such SAE."""
    from . import DEFAULT_SAE, read_manifest

    _, manifest, dirs = read_manifest()
    name = ref.split(":", 1)[1] if ":" in ref else manifest.get("default_sae", DEFAULT_SAE)
    if name not in dirs:
        raise ValueError(f"{where}: the organism has no SAE {name!r} (it has: {', '.join(sorted(dirs))})")
    return Path(dirs[name])
