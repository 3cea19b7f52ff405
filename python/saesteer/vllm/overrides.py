"""The ``hf_overrides`` that make vLLM build a model as its ``SAESteered`` class (:mod:`.model`)."""

from __future__ import annotations

import json
from pathlib import Path

from ..steering.spec import SpecError
from .model import PREFIX, check_registered

__all__ = ["steered_overrides"]


def steered_overrides(model: str, layers, hf_overrides=None, trust_remote_code: bool = False) -> dict:
    """vLLM ``hf_overrides`` that build ``model`` as its ``SAESteered`` class with graph hooks on
    ``layers`` (merged into the caller's own overrides, a dict). Raises when saesteer's vLLM plugin
    is not loaded (:func:`saesteer.vllm.model.check_registered`)."""
    if hf_overrides is not None and not isinstance(hf_overrides, dict):
        raise SpecError("hf_overrides: saesteer needs a dict here (it adds architectures and saesteer_layers)")
    out = dict(hf_overrides or {})
    archs = out.get("architectures")
    if not archs:
        cfg_path = Path(model) / "config.json"
        if cfg_path.is_file():
            archs = json.loads(cfg_path.read_text()).get("architectures")
        else:
            from transformers import AutoConfig

            archs = AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code).architectures
    if not archs:
        raise SpecError(f"model: {model!r} names no architecture in its config")
    out["architectures"] = [a if a.startswith(PREFIX) else PREFIX + a for a in archs]
    check_registered(out["architectures"])
    out["saesteer_layers"] = sorted(set(out.get("saesteer_layers") or []) | set(int(i) for i in layers))
    return out
