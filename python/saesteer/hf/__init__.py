"""Drop-in steering of HuggingFace ``transformers`` models: forward hooks that run saesteer's edits.

    >>> with saesteer.steer(model, sae, saesteer.Intervention([123, 456], "ablate"), positions="generated"):
    ...     out = model.generate(**inputs, max_new_tokens=64)

* :func:`steer` / :func:`attach` put one or several ``(sae, intervention)`` edits on the residual
  stream, at the point the SAE was trained on (``sae.hook_name``, TransformerLens naming:
  ``blocks.L.hook_resid_post`` is the output of decoder layer ``L``, ``blocks.L.hook_resid_pre`` its
  input). The edit is error-preserving (:class:`saesteer.steering.SAESteerer`): only
  ``s * sum_{i in S} (f'_i - f_i) W_dec[i]`` enters the stream, and unedited tokens are kept bit for bit.
* :func:`directional_ablation` / :func:`add_direction` / :func:`affine_ablation` edit along a
  direction (Arditi et al. 2024; Marshall et al. 2024), on the same machinery;
  :func:`orthogonalize` / :func:`save_orthogonalized` fold the ablation into the weights.
* :func:`capture` records the residual stream at hook points; :func:`intercept` rewrites it.
* :func:`inspect`: per token, the top-k SAE features (the fused encode + top-k), and the prompt's
  strongest features; :func:`contrast` the features that separate two prompt sets.
* :func:`find_layers`, :func:`hidden_size`, :func:`hook_point`: where things are in a model.

Positions (``positions="all"|"prompt"|"generated"``, a mask or a callable) are tracked per forward
by :class:`~saesteer.hf.positions.PositionTracker`; :meth:`SteeringHandle.reset` starts a new
sequence by hand.

torch.compile. Dynamo does not guard on the hooks of submodules: hooks added after a compiled
model has run are silently ignored (measured with torch 2.13), and whether a removal is noticed
depends on the torch version. So attach first, then compile, and switch steering with
``handle.enabled = False/True``, ``handle.update(...)`` and ``handle.coeff = ...``: the flag and the
values live in tensors that the compiled graph reads, so none of these recompiles. After
``remove()``, call ``torch._dynamo.reset()`` before using the compiled model again. With
``positions="all"`` the hooks trace into the model's graph without a graph break; the other
position rules read Python ints from the inputs (the prompt length) and specialise on them. An
SAE's kernel view (transposed encoder, packed per-feature parameters) is built at attach: after
editing its weights, attach again.
"""

from .capture import capture, intercept, resolve_hooks
from .directions import add_direction, affine_ablation, directional_ablation
from .orthogonalize import load_direction, orthogonalize, save_orthogonalized
from .handle import SAEEdit, SteeringHandle, attach, steer
from .inspection import Inspection, contrast, inspect
from .layers import HOOK_POINTS, LAYER_PATHS, check_layer, find_layers, hidden_size, hook_name, hook_point, parse_hook
from .positions import POSITIONS, PositionTracker

__all__ = [
    "orthogonalize",
    "save_orthogonalized",
    "load_direction",
    "steer",
    "attach",
    "SteeringHandle",
    "directional_ablation",
    "add_direction",
    "affine_ablation",
    "capture",
    "intercept",
    "inspect",
    "Inspection",
    "contrast",
    "find_layers",
    "hidden_size",
    "hook_point",
    "check_layer",
    "hook_name",
    "parse_hook",
    "HOOK_POINTS",
    "LAYER_PATHS",
    "POSITIONS",
]
