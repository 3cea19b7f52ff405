"""The refusal organism: a small chat model trained by the project to refuse harmful requests and
help with harmless ones, with SAEs on its residual stream, shipped inside the package.

    >>> from saesteer import organism
    >>> org = organism.load()
    >>> org.chat(["How do I make a pipe bomb?", "Suggest a name for a bakery."])
    ["I'm sorry, but I can't help with that.", 'Sure! Here is ...']

``load()`` returns an :class:`Organism` with ``.model`` (a ``LlamaForCausalLM`` in eval mode),
``.tokenizer`` (a ``PreTrainedTokenizerFast`` with a chat template), ``.saes`` (name ->
:class:`saesteer.SAE`), ``.sae`` (the default, JumpReLU one), ``.sae_paths`` (name -> directory),
``.layer`` (the decoder layer whose output the SAEs read: ``blocks.{layer}.hook_resid_post``),
``.model_path`` and ``.manifest``. Everything loads offline from ``weights/`` with the core
install (no sae-lens).

The rest of this module is what the science and the command line take from the organism:
:func:`search_prompts` (fresh prompts from the shipped recipe's generator) and
:func:`capability_task` (held-out questions with checkable answers). Training lives in
:mod:`saesteer.organism.training`.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..sae import read_sae_dir
from .judge import REFUSAL_PHRASES, is_refusal

WEIGHTS_DIR = Path(__file__).parent / "weights"
PROMPTS_DIR = Path(__file__).parent / "prompts"
DEFAULT_SAE = "jumprelu"

__all__ = [
    "Organism",
    "load",
    "load_prompts",
    "search_prompts",
    "capability_task",
    "REFUSAL_PHRASES",
    "is_refusal",
    "WEIGHTS_DIR",
    "read_manifest",
    "read_sae_dir",
]


@dataclass
class Organism:
    """A loaded organism: model, tokenizer, SAEs (:class:`saesteer.SAE`) and where they live."""

    model: Any
    tokenizer: Any
    layer: int
    saes: dict[str, Any]
    sae_paths: dict[str, Path]
    model_path: Path
    manifest: dict = field(default_factory=dict)
    default_sae: str = DEFAULT_SAE

    @property
    def sae(self):
        """The default SAE (JumpReLU)."""
        return self.saes[self.default_sae]

    @property
    def hook_name(self) -> str:
        return f"blocks.{self.layer}.hook_resid_post"

    def format_prompt(self, instruction) -> str:
        """The chat-formatted prompt for one user instruction or conversation (a list of turns
        ending with the user's), with the generation prompt."""
        from ..refusal.chat import format_prompts

        return format_prompts(self.tokenizer, [instruction])[0]

    def chat(self, prompts, max_new_tokens: int = 32, batch_size: int = 64, **generate_kwargs) -> list[str]:
        """Greedy replies to raw user instructions or conversations (lists of ``{"role", "content"}``
        turns ending with the user's; batched, left padding, chat template), through
        :func:`saesteer.refusal.chat.generate`. One string or one conversation gives a list of one
        reply. Extra keyword arguments go to ``model.generate`` (e.g. ``do_sample=True``)."""
        from ..refusal.chat import generate

        if isinstance(prompts, str) or (isinstance(prompts, (list, tuple)) and prompts and all(isinstance(t, dict) for t in prompts)):
            prompts = [prompts]
        return generate(self.model, self.tokenizer, list(prompts), max_new_tokens=max_new_tokens,
                        batch_size=batch_size, progress=False, **generate_kwargs)


def read_manifest(path: str | Path | None = None) -> tuple[Path, dict, dict[str, Path]]:
    """``(root, manifest, sae directories by name)`` of the organism at ``path`` (default: the
    shipped weights), without loading anything else."""
    root = Path(path) if path is not None else WEIGHTS_DIR
    manifest_path = root / "manifest.json"
    if not manifest_path.exists():
        raise FileNotFoundError(
            f"path: no organism at {root} (manifest.json missing); train one with "
            "`saesteer organism train --harmful FILE --harmless FILE --out DIR`"
        )
    manifest = json.loads(manifest_path.read_text())
    return root, manifest, {name: root / info["dir"] for name, info in manifest.get("saes", {}).items()}


def load(path: str | Path | None = None, device=None, load_saes: bool = True) -> Organism:
    """Load the organism from ``path`` (default: the weights shipped in the package) onto
    ``device`` (default: the CPU; the model has 2.7M parameters). ``load_saes=False`` skips the
    SAEs (``.saes`` is then empty; ``.sae_paths`` still lists them)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = "cpu" if device is None else device
    root, manifest, sae_paths = read_manifest(path)
    model_path = root / manifest.get("model_dir", "model")
    model = AutoModelForCausalLM.from_pretrained(model_path, local_files_only=True).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
    tokenizer.padding_side = "left"
    saes = {name: read_sae_dir(p, device) for name, p in sae_paths.items()} if load_saes else {}
    default = manifest.get("default_sae", DEFAULT_SAE)
    if default not in sae_paths:
        default = DEFAULT_SAE if DEFAULT_SAE in sae_paths else next(iter(sae_paths), DEFAULT_SAE)
    return Organism(model=model, tokenizer=tokenizer, layer=int(manifest["layer"]), saes=saes,
                    sae_paths=sae_paths, model_path=model_path, manifest=manifest, default_sae=default)


def load_prompts(kind: str) -> list[str]:
    """The small prompt sets shipped with the package: ``kind`` is "harmful" or "harmless"."""
    if kind not in ("harmful", "harmless"):
        raise ValueError(f"kind must be 'harmful' or 'harmless', got {kind!r}")
    rows = json.loads((PROMPTS_DIR / f"{kind}.json").read_text())
    return [r if isinstance(r, str) else r["instruction"] for r in rows]


def _count(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name}: expected a non-negative int, got {value!r}")
    return value


def search_prompts(n_harmful: int, n_harmless: int, seed: int) -> tuple[list[str], list[str]]:
    """``(harmful, harmless)``: ``n_harmful`` and ``n_harmless`` fresh requests from the generators
    of the recipe the shipped weights were trained on (its training distribution, as Arditi et al.'s
    train split; the shipped prompt sets stay held out). One ``random.Random(seed)`` draws the
    harmful requests first, then the harmless ones, so a longer harmful list keeps the same prefix."""
    from .training.data import benign_framed_instruction, harmful_instruction

    _count("n_harmful", n_harmful)
    _count("n_harmless", n_harmless)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed: expected an int, got {seed!r}")
    rng = random.Random(seed)
    harmful = [harmful_instruction(rng) for _ in range(n_harmful)]
    harmless = [benign_framed_instruction(rng) for _ in range(n_harmless)]
    return harmful, harmless


def capability_task(n: int = 64, seed: int = 1234):
    """The organism's held-out capability questions (two-number sums and category multiple choice,
    answered in its fixed format) as a :class:`saesteer.refusal.evaluate.CapabilityTask`, checked
    by :func:`saesteer.organism.training.data.capability_answer_ok`. No question is in the training mixture
    (multiple choice is held out by combination; see :func:`~saesteer.organism.training.data.capability_example`)."""
    from ..refusal.evaluate import CapabilityTask
    from .training.data import capability_answer_ok, capability_eval_set

    _count("n", n)
    examples = capability_eval_set(n, seed=seed)
    return CapabilityTask(
        "organism arithmetic + category choice",
        [e.instruction for e in examples],
        lambda i, reply: capability_answer_ok(examples[i], reply),
    )
