"""discover's options: :class:`DiscoverConfig` (reading a config file is the command line's:
:func:`saesteer.cli.discover.read_config_file`)."""

from __future__ import annotations

from dataclasses import dataclass

from ..features import ATTRIBUTIONS
from ..search import parse_edit

__all__ = ["DiscoverConfig", "SELECTIONS", "parse_select", "PREFILTER_SIGNS"]

#: What spec.json holds: the greedy minimal set (Prakash et al.), or Yeo et al.'s top k by attribution.
SELECTIONS = "minimal or topk:K (e.g. topk:20)"
#: How the per-SAE pre-filter ranks decoder rows against the difference in means: by |cosine|
#: (both ends), or by cosine (Yeo et al.: the rows that point along the refusal direction).
PREFILTER_SIGNS = ("abs", "positive")


def parse_select(text) -> int | None:
    """``None`` for ``"minimal"``, ``K`` for ``"topk:K"``; a ValueError naming ``select`` otherwise."""
    if text == "minimal":
        return None
    mode, sep, k = str(text).partition(":")
    if mode == "topk" and sep and k.isdigit() and int(k) >= 1:
        return int(k)
    raise ValueError(f"select: expected {SELECTIONS}, got {text!r}")


@dataclass
class DiscoverConfig:
    # Prompts per class for the difference in means and for direction selection (Arditi et al.'s
    # 128 / 32), before the filter keeps the refused harmful and the answered harmless ones.
    n_direction: int = 128
    n_val: int = 32
    n_search: int = 16  # harmful prompts the greedy search sees
    n_heldout: int = 32  # harmful prompts for the generation-judged ASR (never searched)
    n_candidates: int = 48  # candidate pool the search starts from
    # The pool doubles while ablating it all flips fewer than min_full_flip of the search prompts,
    # up to max_candidates: the search keeps only a fraction (keep) of what its pool flips, so a
    # pool that flips few prompts gives a set that jailbreaks few.
    min_full_flip: float = 0.75
    max_candidates: int = 384
    # Candidates by attribution (through the SAE with its error term kept) or by cosine to the
    # direction (Prakash et al.'s stage 1). Attribution is the default: its (zero-ablation) minimal
    # sets jailbroke 88-94% of held-out prompts over four organism trainings, cosine's 50-94%.
    method: str = "attribution"
    # "ig": Yeo et al.'s integrated gradients from the clean codes to the direction-ablated ones
    # (ig_steps steps); "zero": first-order effect of zero-ablating each feature (-f . d score/d f).
    attribution: str = "ig"
    ig_steps: int = 10
    # Each SAE's candidates are first its `prefilter` features of largest cosine between decoder row
    # and the difference in means at its own hook point (Yeo et al.'s per-layer pre-filter: 10 by
    # positive cosine); attribution then ranks them all together. None: 256 by |cosine| with several
    # SAEs, no pre-filter with one; 0: none.
    prefilter: int | None = None
    prefilter_sign: str = "abs"
    # What spec.json holds: "minimal" (the greedy minimal set, Prakash et al.) or "topk:K" (Yeo et
    # al.'s top K features by attribution, regardless of the direction the ablation moves them).
    select: str = "minimal"
    # What the search, the interactions and the ASR do to a feature set: "ablate", "scale:-3"
    # (Yeo et al.'s negative scaling on Gemma) or "clamp:V"; spec.json records it.
    edit: str = "ablate"
    skip_bos: bool = True  # leave the BOS token unedited by every SAE edit (spec.json records it)
    filter_prompts: bool = True  # Arditi's filter of the direction's and its selection's prompts
    per_prompt: int = 4  # per-prompt minimal sets for this many search prompts
    keep: float = 0.9  # the pooled set must keep this fraction of the full pool's flip rate
    threshold: float = 0.0  # a prompt is flipped when its refusal score (log-odds) is below this
    fm_samples: int = 192  # random ablation masks the factorization machine is fitted on
    fm_extra: int = 16  # active features beside the minimal set that the FM sees
    max_new_tokens: int = 24  # generation length for the judged rates
    max_layer_frac: float = 0.8  # directions from the last 20% of layers are not selected (Arditi)
    ablation: str = "auto"  # direction ablation: "directional" (Arditi), "affine" (Marshall), "auto"
    # Every direction candidate's bypass / induce / KL in results.json's direction_table; by default
    # only the scores the selection needs (the same direction is selected, the others are null).
    score_all_directions: bool = False
    # Go on when the unsteered model refuses fewer than MIN_REFUSAL_RATE of the held-out harmful
    # prompts (refusal/validity.py); by default discover stops there: nothing to jailbreak.
    force: bool = False
    # Propose a trigger for conditional steering (spec.json's `when`, the trigger stage): the
    # features separating refused harmful from answered harmless prompts, threshold chosen on val.
    trigger: bool = True
    batch_size: int = 32
    seed: int = 0
    layer: int | None = None  # override the SAE's hook layer
    backend: str = "auto"

    def prefilter_size(self, n_saes: int) -> int:
        """The pre-filter's size per SAE (0: none) for a run on ``n_saes`` SAEs."""
        if self.prefilter is None:
            return 256 if n_saes > 1 else 0
        return self.prefilter

    @property
    def top_k(self) -> int | None:
        """``K`` of ``select = "topk:K"``; None for the minimal set."""
        return parse_select(self.select)

    @property
    def candidate_method(self) -> str:
        """How candidates are ranked, as the report names it: ``"cosine"`` or ``"attribution (ig)"``."""
        return self.method if self.method == "cosine" else f"attribution ({self.attribution})"

    def validate(self) -> None:
        """Raise ValueError naming the first option out of its range or of the wrong type."""
        if self.prefilter is not None and (isinstance(self.prefilter, bool) or not isinstance(self.prefilter, int)
                                           or self.prefilter < 0):
            raise ValueError(f"prefilter: expected an integer >= 0, got {self.prefilter!r}")
        if self.prefilter_sign not in PREFILTER_SIGNS:
            raise ValueError(f"prefilter_sign: expected one of {', '.join(PREFILTER_SIGNS)}, got {self.prefilter_sign!r}")
        parse_select(self.select)
        if self.method not in ("cosine", "attribution"):
            raise ValueError(f"method: expected 'cosine' or 'attribution', got {self.method!r}")
        if self.attribution not in ATTRIBUTIONS:
            raise ValueError(f"attribution: expected one of {', '.join(ATTRIBUTIONS)}, got {self.attribution!r}")
        for name in ("skip_bos", "force", "filter_prompts", "trigger", "score_all_directions"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}: expected true or false, got {getattr(self, name)!r}")
        parse_edit(self.edit)
        if not 0.0 <= self.min_full_flip <= 1.0:
            raise ValueError(f"min_full_flip: expected a fraction in [0, 1], got {self.min_full_flip!r}")
        if self.n_candidates < 1 or self.max_candidates < 1:
            raise ValueError(f"n_candidates, max_candidates: expected >= 1, got {self.n_candidates} and {self.max_candidates}")
        for name, low in (("n_direction", 1), ("n_val", 0), ("n_search", 0), ("n_heldout", 0), ("per_prompt", 0),
                          ("fm_samples", 0), ("fm_extra", 0), ("max_new_tokens", 1), ("batch_size", 1), ("ig_steps", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{name}: expected an integer >= {low}, got {v!r}")
        if not 0.0 < self.keep <= 1.0:
            raise ValueError(f"keep: expected a fraction in (0, 1], got {self.keep!r}")
        if not 0.0 < self.max_layer_frac <= 1.0:
            raise ValueError(f"max_layer_frac: expected a fraction in (0, 1], got {self.max_layer_frac!r}")
