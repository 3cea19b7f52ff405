"""Engine-neutral steering: SAE feature edits on ``[N, d]`` hidden states with a per-token
assignment of interventions. The HF hooks (:mod:`saesteer.hf`) and the vLLM plugin
(:mod:`saesteer.vllm`) are adapters on this core; neither reaches below it."""

from .core import BoundPlan, EditPlan, SAESteerer, as_sae

__all__ = ["SAESteerer", "EditPlan", "BoundPlan", "as_sae"]
