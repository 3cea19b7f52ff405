"""saesteer: find and steer the sparse-autoencoder features that make chat models refuse.

Fused SAE kernels (CPU C++, Triton, CUDA) for error-preserving feature steering inside the
residual stream, a drop-in hook for HuggingFace models, and the refusal-feature methods of
Arditi et al., Yeo et al., Prakash et al. and O'Brien et al.
"""

from ._version import __version__
from ._native import build_info
from .intervention import MODES, Intervention
from .sae import ARCHITECTURES, SAE, load_sae, read_sae_dir
from . import reference, ops, steering, hf
from .hf import SteeringHandle, add_direction, affine_ablation, attach, capture, directional_ablation, inspect, steer
from .steering import SAESteerer

__all__ = [
    "__version__",
    "build_info",
    "SAE",
    "load_sae",
    "read_sae_dir",
    "ARCHITECTURES",
    "Intervention",
    "MODES",
    "reference",
    "ops",
    "steering",
    "SAESteerer",
    "hf",
    "steer",
    "attach",
    "SteeringHandle",
    "capture",
    "inspect",
    "directional_ablation",
    "add_direction",
    "affine_ablation",
    "organism",
]

# Loaded on first use: these pull in transformers (and the organism's weights).
_LAZY = ("organism", "refusal", "hooks")


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'saesteer' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__) | set(_LAZY))
