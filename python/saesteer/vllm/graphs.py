"""The CUDA-graph policy of a steered engine. The edit runs host code every step (it reads the
batch's requests), so no CUDA graph may contain it: engines run without CUDA graphs, or with
PIECEWISE ones split at the edit's op (:data:`saesteer.vllm.model.OP`)."""

from __future__ import annotations

from ..steering.spec import SpecError
from .model import OP as _OP

__all__ = ["cuda_graph_settings", "check_graph_mode"]


#: vLLM's cudagraph modes that capture the whole forward, the edit's host side with it.
_FULL_GRAPH_MODES = ("FULL", "FULL_DECODE_ONLY", "FULL_AND_PIECEWISE")


def _graph_mode_name(mode) -> str | None:
    """A ``cudagraph_mode`` as its name (vLLM takes the enum or its name)."""
    if mode is None:
        return None
    return getattr(mode, "name", None) or str(mode).upper()


def _default_splitting_ops(inductor_partition: bool) -> list[str]:
    """The splitting ops vLLM itself picks for piecewise CUDA graphs (its attention ops, and outside
    Inductor graph partition its kv-cache updates), to which saesteer's op is added."""
    from vllm.config import CompilationConfig

    ops = list(CompilationConfig._attention_ops)
    if not inductor_partition:
        ops += ["vllm::unified_kv_cache_update", "vllm::unified_mla_kv_cache_update"]
    return ops


def cuda_graph_settings(kwargs: dict) -> None:
    """Set vLLM's CUDA graph options in engine ``kwargs`` (a dict, or an argparse namespace's
    ``vars``) for a steered engine. The edit runs host code every step (it reads the batch's
    requests), so no CUDA graph may contain it:

    * no ``cudagraph_mode`` chosen: NONE (torch.compile stays on);
    * ``PIECEWISE``: the edit's op ``saesteer_vllm::edit_layer`` is added to ``splitting_ops`` (to
      the caller's list, or to vLLM's default one), so it runs eagerly between captured pieces, as
      vLLM's attention does. It writes the edited stream into a buffer that the piece before it
      allocated, so the piece after it reads the same address at every replay;
    * ``FULL``, ``FULL_DECODE_ONLY``, ``FULL_AND_PIECEWISE`` capture whole forwards: refused with a
      SpecError, and ``kwargs`` is left as it was.
    """
    cc = kwargs.get("compilation_config")
    is_dict = cc is None or isinstance(cc, dict)
    get = (lambda k: (cc or {}).get(k)) if is_dict else (lambda k: getattr(cc, k, None))
    mode = _graph_mode_name(get("cudagraph_mode"))
    if mode in _FULL_GRAPH_MODES:
        raise SpecError(f"compilation_config.cudagraph_mode: {mode} captures whole forwards in CUDA graphs, and saesteer's "
                        "edit runs host code every step; use PIECEWISE (the edit runs between captured pieces) or NONE")
    if mode not in (None, "NONE", "PIECEWISE"):
        raise SpecError(f"compilation_config.cudagraph_mode: expected NONE or PIECEWISE for a steered engine, got {mode!r}")
    if mode == "PIECEWISE" and _breakable_graphs():
        raise SpecError(_BREAKABLE)
    updates: dict = {}
    if mode is None:
        updates["cudagraph_mode"] = "NONE"
    elif mode == "PIECEWISE":
        ops = get("splitting_ops")
        ops = list(ops) if ops is not None else _default_splitting_ops(bool(get("use_inductor_graph_partition")))
        if _OP not in ops:
            updates["splitting_ops"] = ops + [_OP]
    if is_dict:
        kwargs["compilation_config"] = {**(cc or {}), **updates}
    else:  # vLLM's CompilationConfig (from --compilation-config): set in place
        if "cudagraph_mode" in updates:
            from vllm.config import CUDAGraphMode

            updates["cudagraph_mode"] = CUDAGraphMode.NONE
        for k, v in updates.items():
            setattr(cc, k, v)


_BREAKABLE = ("VLLM_USE_BREAKABLE_CUDAGRAPH: vLLM's breakable CUDA graphs break capture only at its own ops, so "
              "they would capture saesteer's edit; unset it (piecewise graphs split at the edit's op) or use cudagraph_mode NONE")


def _breakable_graphs() -> bool:
    """vLLM's breakable CUDA graphs are on (they ignore splitting ops)."""
    try:
        import vllm.envs as envs
    except ImportError:
        return False
    return bool(getattr(envs, "VLLM_USE_BREAKABLE_CUDAGRAPH", False))


def check_graph_mode(compilation_config) -> None:
    """Refuse an engine whose CUDA graphs would contain the edit (see :func:`cuda_graph_settings`)."""
    cg = _graph_mode_name(getattr(compilation_config, "cudagraph_mode", None))
    if cg in (None, "NONE"):
        return
    if _breakable_graphs():
        raise SpecError(_BREAKABLE)
    if cg == "PIECEWISE" and _OP in (getattr(compilation_config, "splitting_ops", None) or []):
        return
    # A captured CUDA graph replays kernels without running the edit's host side (the batch layout,
    # the per-request rows), so it would replay one step's edit for every later one.
    raise SpecError(f"cudagraph_mode: saesteer's edit cannot run inside CUDA graphs (the engine has {cg}"
                    f"{'' if cg != 'PIECEWISE' else ' without ' + _OP + ' in splitting_ops'}); build the "
                    "engine with SteeredLLM / saesteer serve, which set this up, or with cudagraph_mode NONE")
