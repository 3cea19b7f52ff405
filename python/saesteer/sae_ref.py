"""SAE references, as a user writes them (``--sae``, a spec file's ``sae``), resolved in one place:

* an sae-lens directory (``cfg.json`` + ``sae_weights.safetensors``);
* ``RELEASE:SAE_ID`` from sae-lens's pretrained registry (needs sae-lens; downloads on first use);
The command line, the steering-spec loader and the vLLM plugin all call :func:`resolve_sae_ref`.
The built-in organism's references (``organism``, ``organism:NAME``) are mapped to their
directories first by the layers that know the organism
(:func:`saesteer.organism.refs.organism_sae_dir`); the science layer never sees them.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["is_organism_ref", "resolve_sae_ref"]


def is_organism_ref(ref) -> bool:
    """True for the references that name the built-in organism's SAEs: ``organism``, ``organism:NAME``."""
    return isinstance(ref, str) and (ref == "organism" or ref.startswith("organism:"))


def _check_sae_dir(p: Path, where: str) -> None:
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
    raise FileNotFoundError(f"{where}: {str(p)!r} holds {shown}; expected sae-lens's format, cfg.json and "
                            f"sae_weights.safetensors{hint}")


def resolve_sae_ref(ref, device="cpu", where: str = "sae"):
    """Load the :class:`saesteer.SAE` that ``ref`` names (see the module doc). A directory is read
    through sae-lens where it is installed, else with safetensors alone
    (:func:`saesteer.sae.read_sae_dir`, equal bit for bit). Errors name ``where`` and what was
    expected: ValueError for a malformed reference or an unknown organism SAE, FileNotFoundError for
    a directory that is not an SAE or a reference that is neither (``organism[:NAME]`` included:
    map it with :func:`saesteer.organism.refs.organism_sae_dir` first), and the sae-lens registry's own
    ImportError / ValueError / OSError (wrapped to name ``ref``) for ``RELEASE:SAE_ID``."""
    from .sae import load_sae, read_sae_dir

    if not isinstance(ref, str) or not ref:
        raise ValueError(f"{where}: expected an sae-lens directory or RELEASE:SAE_ID, got {ref!r}")
    p = Path(ref).expanduser()
    if p.is_dir():
        _check_sae_dir(p, where)
        try:
            import sae_lens  # noqa: F401
        except ImportError:
            return read_sae_dir(p, device)
        return load_sae(p, device=device)
    release, sep, sae_id = ref.partition(":")
    if not sep or not release or not sae_id or p.exists() or is_organism_ref(ref):
        raise FileNotFoundError(f"{where}: {ref!r} is neither an sae-lens directory nor RELEASE:SAE_ID")
    try:
        return load_sae(release=release, sae_id=sae_id, device=device)
    except ImportError as e:
        raise ImportError(f"{where}: {ref!r} is an sae-lens release; {e}") from None
    except (ValueError, OSError) as e:  # an unknown release or id, or a download that failed
        raise ValueError(f"{where}: sae-lens could not load {ref!r}: {e}") from None
