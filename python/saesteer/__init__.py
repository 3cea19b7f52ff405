"""saesteer: find and steer the sparse-autoencoder features that make chat models refuse.

Fused SAE kernels (CPU C++, Triton, CUDA) for error-preserving feature steering inside the
residual stream, a drop-in hook for HuggingFace models, and the refusal-feature methods of
Arditi et al., Yeo et al., Prakash et al. and O'Brien et al.
"""

from ._version import __version__
from ._native import build_info
from .intervention import MODES, Intervention
from .sae import ARCHITECTURES, SAE, load_sae
from . import reference, ops

__all__ = [
    "__version__",
    "build_info",
    "SAE",
    "load_sae",
    "ARCHITECTURES",
    "Intervention",
    "MODES",
    "reference",
    "ops",
]


def __getattr__(name):
    # Late imports keep `import saesteer` light; these pull in transformers.
    if name in ("steer", "attach", "directional_ablation", "add_direction", "affine_ablation", "SteeringHandle"):
        from . import hooks

        return getattr(hooks, name)
    if name == "organism":
        import importlib

        return importlib.import_module(".organism", __name__)
    raise AttributeError(f"module 'saesteer' has no attribute {name!r}")
