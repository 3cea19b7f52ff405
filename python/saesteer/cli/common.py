"""What the subcommands share: the model / SAE / steering flags, loading a model and its SAE from
them, and the built-in organism's defaults.

Without ``--model`` / ``--sae`` the commands run on the built-in refusal organism: this module is
where ``organism`` and ``organism:NAME`` are resolved and where the organism's search prompts and
capability task come from (through :mod:`saesteer.organism`); :mod:`saesteer.refusal` never sees
the organism. Inputs are validated (files, fields, SAE width against the model's hidden size, layer
range) before any model loads; :func:`saesteer.cli.main` turns the ``ValueError`` /
``FileNotFoundError`` raised here into one line.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

__all__ = [
    "add_model_args",
    "add_steering_args",
    "number_list",
    "steering_spec",
    "check_run_args",
    "check_output",
    "default_device",
    "check_model_ref",
    "quiet_loading",
    "is_organism_ref",
    "resolve_sae",
    "expand_sae_refs",
    "load_model",
    "load_model_saes",
    "check_feature_ids",
    "organism_search_prompts",
    "organism_capability_task",
]


# ------------------------------------------------------------------------------------------------
# shared arguments and loading (generate, eval, discover)
# ------------------------------------------------------------------------------------------------
def add_model_args(p: argparse.ArgumentParser, several_saes: bool = False) -> None:
    """The model flags; ``several_saes``: ``--sae`` may be repeated and comma-separated, with
    ``{a..b}`` ranges (:func:`expand_sae_refs`)."""
    g = p.add_argument_group("model")
    g.add_argument("--model", help="HF model id or directory (default: the built-in organism)")
    if several_saes:
        g.add_argument("--sae", action="append",
                       help="SAE: sae-lens directory, RELEASE:SAE_ID, or organism[:NAME] (default: the organism's); repeat "
                            "it or separate with commas for several SAEs at their own layers; {A..B} expands to each "
                            "integer, e.g. RELEASE:layer_{6..20}/width_16k/canonical")
    else:
        g.add_argument("--sae", help="SAE: sae-lens directory, RELEASE:SAE_ID, or organism[:NAME] (default: the spec's, else the organism's)")
    g.add_argument("--layer", type=int, help="decoder layer the SAE reads (default: from the SAE's hook_name)")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    g.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"), help="model dtype")
    g.add_argument("--trust-remote-code", action="store_true", help="allow the model repo's own code (off by default)")
    g.add_argument("--backend", default="auto", help="saesteer op backend: auto, cuda, triton, cpu, torch")


def add_steering_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("steering (a SPEC file, or the flags)")
    g.add_argument("--steer", metavar="SPEC", help="steering spec, JSON or YAML (sae, layer, features, mode, values, positions)")
    g.add_argument("--features", help="comma-separated feature ids, e.g. 12,40")
    g.add_argument("--mode", choices=("ablate", "scale", "clamp", "add"), help="default: ablate")
    g.add_argument("--value", type=float, help="value for clamp/scale/add")
    g.add_argument("--positions", choices=("all", "prompt", "generated"), help="tokens to edit (default: all)")
    g.add_argument("--no-skip-bos", dest="skip_bos", action="store_false", default=None,
                   help="edit each sequence's BOS token too (default: the spec's skip_bos, true unless it says otherwise)")


def number_list(text: str, name: str, kind=float) -> list:
    """``"1,2,3"`` -> ``[1, 2, 3]`` of ``kind`` (int or float), with a one-line error."""
    what = "integers" if kind is int else "numbers"
    try:
        out = [kind(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"{name}: expected comma-separated {what}, got {text!r}") from None
    if not out:
        raise ValueError(f"{name}: expected at least one of the comma-separated {what}")
    bad = [t.strip() for t, v in zip([t for t in text.split(",") if t.strip()], out) if not math.isfinite(v)]
    if bad:
        raise ValueError(f"{name}: expected finite {what}, got {', '.join(bad)} in {text!r}")
    return out


def steering_spec(args, required: bool = True, values_given: bool = False):
    """The :class:`SteeringSpec` from ``--steer`` and/or the flags (flags override the file).

    ``values_given``: another flag (``eval --sweep``) supplies the values, so a clamp/scale/add
    spec without a value is accepted. The spec's model (when it records one) becomes
    ``args.model`` unless ``--model`` names it too; a different ``--model`` is an error.
    """
    from ..refusal.spec import SteeringSpec

    spec = SteeringSpec.load(args.steer) if args.steer else None
    if spec is None:
        if args.features is None:
            if required:
                raise ValueError("steering: pass --steer SPEC or --features IDS (with --mode, --value)")
            return None
        spec = SteeringSpec(features=[])
    if spec.edits and (args.features is not None or args.layer is not None or args.sae):
        flag = "--features" if args.features is not None else "--layer" if args.layer is not None else "--sae"
        raise ValueError(f"{flag}: the steering spec {args.steer} edits several SAEs (its 'edits'); "
                         "edit the spec instead of overriding one SAE's features, layer or SAE")
    if args.features is not None:
        spec.features = number_list(args.features, "--features", int)
    if args.mode is not None:
        spec.mode = args.mode
        if args.mode == "ablate" and args.value is None:
            spec.values = None  # ablating the spec's features: its clamp/scale value does not apply
    if args.value is not None:
        spec.values = args.value
    if args.positions is not None:
        spec.positions = args.positions
    if getattr(args, "skip_bos", None) is False:
        spec.skip_bos = False
    if args.layer is not None:
        spec.layer = args.layer
    if spec.mode != "ablate" and spec.values is None:
        if not values_given:
            raise ValueError(f"--value: mode {spec.mode!r} needs a value")
    else:
        try:
            spec.intervention()  # the library's own check of mode and values, now, with its message
        except ValueError as e:
            msg = str(e)
            if msg.startswith("value: "):
                where = "--value" if args.value is not None else f"steering spec {args.steer}"
                msg = f"{where}: {msg.removeprefix('value: ')}"
            raise ValueError(msg) from None
    _model_from_spec(args, spec)
    return spec


def _model_from_spec(args, spec) -> None:
    """Take the spec's model when ``--model`` is not given; refuse a ``--model`` that differs."""
    from ..refusal.spec import same_model

    if spec.model is None:
        return
    given = args.model if args.model is not None else "organism"
    if args.model is None and spec.model != "organism":
        args.model = spec.model
    elif not same_model(given, spec.model):
        shown = "the built-in organism (no --model)" if args.model is None else repr(args.model)
        raise ValueError(f"--model: {shown} is not the model the steering spec {args.steer} was made for, "
                         f"{spec.model!r}; drop --model to use the spec's, or edit the spec's 'model'")


#: The integer flags that count something and must be >= 1 when given.
COUNT_ARGS = ("batch_size", "limit", "max_new_tokens", "n_candidates")


def check_run_args(args) -> None:
    """Check the counts (``--batch-size``, ``--limit``, ``--max-new-tokens``: >= 1) and ``--device`` /
    ``--backend`` against this machine's torch and saesteer build, each with one line naming the
    flag, before anything loads."""
    import torch

    for key in COUNT_ARGS:
        n = getattr(args, key, None)
        if n is not None and n < 1:
            raise ValueError(f"--{key.replace('_', '-')}: expected a positive integer (>= 1), got {n}")

    name = getattr(args, "device", None)
    if name is not None:
        try:
            dev = torch.device(name)
        except (RuntimeError, ValueError):
            raise ValueError(f"--device: expected cpu, cuda or cuda:N, got {name!r}") from None
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                why = "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA device is visible"
                raise ValueError(f"--device: {name!r} but CUDA is not available ({why}, torch {torch.__version__}); use --device cpu")
            if dev.index is not None and dev.index >= torch.cuda.device_count():
                raise ValueError(f"--device: {name!r} but only {torch.cuda.device_count()} CUDA device(s) are visible")
    backend = getattr(args, "backend", "auto")
    if backend not in (None, "auto"):
        from ..ops.registry import resolve_backend

        try:
            resolve_backend("steer", torch.device(default_device(name)), backend)
        except (RuntimeError, ValueError) as e:
            raise ValueError(f"--backend: {str(e).removeprefix('backend: ')}") from None


def check_output(path, flag: str, kind: str = "dir") -> Path:
    """Check that an output ``path`` can be written before any work starts.

    ``kind="dir"``: an output directory, created (with its parents) when missing; it must not be an
    existing file. ``kind="file"``: an output file; its directory must exist and it must not be a
    directory. Either way the place it goes must be writable. Returns the path.
    """
    p = Path(path).expanduser()
    if kind == "dir":
        if p.exists() and not p.is_dir():
            raise ValueError(f"{flag}: {str(p)!r} exists and is not a directory")
        where = p
        while not where.exists():
            where = where.parent
        if not where.is_dir():
            raise ValueError(f"{flag}: cannot create {str(p)!r}: {str(where)!r} is a file, not a directory")
    else:
        if p.is_dir():
            raise ValueError(f"{flag}: {str(p)!r} is a directory; expected a file name")
        where = p.parent if str(p.parent) else Path(".")
        if not where.is_dir():
            raise ValueError(f"{flag}: the directory {str(where)!r} does not exist (create it first)")
        if p.exists() and not os.access(p, os.W_OK):
            raise ValueError(f"{flag}: {str(p)!r} exists and is not writable")
    if not os.access(where, os.W_OK | os.X_OK):
        raise ValueError(f"{flag}: cannot write in {str(where)!r} (permission denied)")
    return p


def default_device(name: str | None) -> str:
    import torch

    return name or ("cuda" if torch.cuda.is_available() else "cpu")


def _hidden_and_layers(config) -> tuple[int | None, int | None]:
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    hidden = next((getattr(config, k) for k in ("hidden_size", "n_embd", "d_model") if isinstance(getattr(config, k, None), int)), None)
    n = next((getattr(config, k) for k in ("num_hidden_layers", "n_layer", "num_layers") if isinstance(getattr(config, k, None), int)), None)
    return hidden, n


def is_organism_ref(ref: str | None) -> bool:
    """True for the SAE references that name the built-in organism's SAEs: ``organism``, ``organism:NAME``."""
    return ref is not None and (ref == "organism" or ref.startswith("organism:"))


def check_organism_sae_ref(ref: str | None) -> None:
    """Raise if ``ref`` is ``organism:NAME`` and the organism has no SAE ``NAME``: read from the
    organism's manifest, so a bad ``--sae`` fails before the organism's model loads."""
    if ref is None or not ref.startswith("organism:"):
        return
    from ..organism.refs import organism_sae_dir

    organism_sae_dir(ref, "--sae")


def _organism_sae(org, ref: str, device):
    """The organism SAE ``ref`` names (``organism``: its default) as a :class:`saesteer.SAE` on ``device``."""
    name = org.default_sae if ref == "organism" else ref.split(":", 1)[1]
    if name not in org.saes:
        raise ValueError(f"--sae: the organism has no SAE {name!r} (it has: {', '.join(sorted(org.saes))})")
    return org.saes[name].to(device=device)


def resolve_sae(ref: str | None, device="cpu", organism=None):
    """Load the SAE a spec or a ``--sae`` flag names: ``None`` / ``organism`` / ``organism:NAME`` (the
    built-in organism's; ``organism``: an already loaded organism to take it from), else what
    :func:`saesteer.refusal.spec.resolve_sae` accepts (an sae-lens directory, ``RELEASE:SAE_ID``)."""
    if ref is None or is_organism_ref(ref):
        if organism is None:
            from .. import organism as organism_pkg

            check_organism_sae_ref(ref)
            organism = organism_pkg.load()
        return _organism_sae(organism, ref or "organism", device)
    from ..refusal.spec import resolve_sae as resolve_sae_ref

    return resolve_sae_ref(ref, device=device)


def _split_outside_braces(text: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += (ch == "{") - (ch == "}")
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return parts + [cur]


def _expand_braces(ref: str) -> list[str]:
    """Every string a ref's first ``{...}`` group names, expanded recursively: ``{A..B}`` (integers,
    optional ``..STEP``; a bound written with a leading zero, like ``01``, pads to its width) or
    ``{x,y}`` (items stripped of spaces)."""
    import re

    m = re.search(r"\{([^{}]*)\}", ref)
    if m is None:
        if "{" in ref or "}" in ref:
            raise ValueError(f"--sae: unbalanced braces in {ref!r}")
        return [ref]
    head, body, tail = ref[: m.start()], m.group(1), ref[m.end():]
    rng = re.fullmatch(r"(-?\d+)\.\.(-?\d+)(?:\.\.(-?\d+))?", body)
    if rng:
        a, b = int(rng.group(1)), int(rng.group(2))
        step = abs(int(rng.group(3))) if rng.group(3) else 1
        if step == 0:
            raise ValueError(f"--sae: step 0 in {{{body}}} of {ref!r}")
        # bash's rule: pad only when a bound of more than one digit starts with 0 ({00..12}, not {0..12})
        padded = any(len(g.lstrip("-")) > 1 and g.lstrip("-").startswith("0") for g in rng.group(1, 2))
        width = max(len(rng.group(1)), len(rng.group(2))) if padded else 0
        items = [str(i).zfill(width) for i in (range(a, b + 1, step) if a <= b else range(a, b - 1, -step))]
    elif "," in body:
        items = [item.strip() for item in body.split(",")]
    else:
        raise ValueError(f"--sae: {{{body}}} in {ref!r} is neither a range {{A..B}} nor a list {{x,y}}")
    return [e for item in items for e in _expand_braces(head + item + tail)]


def expand_sae_refs(values) -> list[str]:
    """The SAE references of one or several ``--sae`` values: each split at commas outside braces,
    then brace-expanded (``{6..20}``, ``{6..20..2}``, ``{a,b}``), before anything loads. Raises
    ValueError naming ``--sae`` for an empty reference or one given twice."""
    if values is None:
        return []
    out: list[str] = []
    for v in [values] if isinstance(values, str) else values:
        for part in _split_outside_braces(v):
            part = part.strip()
            if not part:
                raise ValueError(f"--sae: an empty SAE reference in {v!r}")
            out += _expand_braces(part)
    dup = sorted({r for r in out if out.count(r) > 1})
    if dup:
        raise ValueError(f"--sae: {', '.join(map(repr, dup))} given more than once; name each SAE once")
    return out


def organism_search_prompts(n_harmful: int, n_harmless: int, seed: int) -> tuple[list[str], list[str]]:
    """Fresh harmful and harmless prompts from the organism's training distribution (the generator
    of the recipe the shipped weights were trained on), as Arditi et al.'s train split: discover
    runs its direction, selection and search on them and holds the shipped prompt sets out."""
    from .. import organism

    return organism.search_prompts(n_harmful, n_harmless, seed)


def organism_capability_task(n: int = 64, seed: int = 1234):
    """The organism's held-out capability questions as a :class:`saesteer.refusal.evaluate.CapabilityTask`."""
    from .. import organism

    return organism.capability_task(n, seed=seed)


def quiet_loading() -> None:
    """Silence transformers' and the hub's own progress bars (``Loading weights``, downloads) for ``--quiet``."""
    import transformers
    from huggingface_hub.utils import disable_progress_bars

    transformers.utils.logging.disable_progress_bar()
    disable_progress_bars()


def check_model_ref(ref: str) -> None:
    """Fail fast on a ``--model`` that cannot load: a path that does not exist or has no
    ``config.json``, or a hub id that is not cached while the hub is offline. (A hub id that is
    neither local nor cached is left to the hub, which answers quickly when it is reachable.)"""
    p = Path(ref).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise FileNotFoundError(f"--model: {ref!r} is a directory without config.json (expected a saved HF model)")
        return
    if p.exists():
        raise FileNotFoundError(f"--model: {ref!r} is a file; expected a HF model directory or hub id")
    parts = ref.split("/")
    if ref.startswith((".", "/", "~")) or len(parts) > 2 or "\\" in ref or not all(parts):
        raise FileNotFoundError(f"--model: {ref!r} does not exist (as a local path; a hub id is NAME or OWNER/NAME)")
    from huggingface_hub import constants, try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(ref, "config.json")
    except ValueError:  # the hub's validation of the id
        raise ValueError(f"--model: {ref!r} is neither a local directory nor a valid hub id (NAME or OWNER/NAME)") from None
    if isinstance(cached, str):
        return
    if constants.HF_HUB_OFFLINE:
        raise FileNotFoundError(f"--model: {ref!r} is not a local directory and not in the HF cache "
                                f"({constants.HF_HUB_CACHE}), and the hub is offline (HF_HUB_OFFLINE)")


def _saes_and_config(args, refs: list[str | None], device):
    """``(organism or None, model config, [SAE], name)``: the SAEs ``refs`` name and the model's
    config, before the model's weights load (an organism loads whole: it is small)."""
    if args.model is None:
        from .. import organism

        for ref in refs:
            check_organism_sae_ref(ref)
        org = organism.load(device=device)
        saes = [resolve_sae(ref or "organism", device=device, organism=org) for ref in refs]
        return org, org.model.config, saes, "organism"
    from transformers import AutoConfig

    check_model_ref(args.model)
    try:
        config = AutoConfig.from_pretrained(args.model, trust_remote_code=args.trust_remote_code)
    except OSError as e:
        raise FileNotFoundError(f"--model: cannot load {args.model!r} ({str(e).splitlines()[0]})") from None
    if any(ref is None for ref in refs):
        raise ValueError("--sae: required with --model (or give the spec an 'sae')")
    return None, config, [resolve_sae(ref, device=device) for ref in refs], args.model


def _model_weights(args, org, device):
    """``(model, tokenizer)``: the organism's, or the HF model's weights loaded now."""
    import torch

    if org is None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        dtype = "auto" if args.dtype == "auto" else getattr(torch, args.dtype)
        tok = AutoTokenizer.from_pretrained(args.model, trust_remote_code=args.trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype, trust_remote_code=args.trust_remote_code)
        return model.to(device).eval(), tok
    model = org.model if args.dtype == "auto" else org.model.to(getattr(torch, args.dtype))
    return model, org.tokenizer


def load_model_saes(args, refs: list[str]):
    """``(model, tokenizer, [SAE], [layer], name)`` for several SAE references (``--sae`` given more
    than once): each SAE is checked against the model's config (width, its hook's layer), naming
    ``--sae`` and the reference, before the model's weights load."""
    if getattr(args, "quiet", False):
        quiet_loading()
    if getattr(args, "layer", None) is not None:
        raise ValueError("--layer: overrides one SAE's layer; with several --sae each SAE reads its own hook point")
    device = default_device(args.device)
    org, config, saes, name = _saes_and_config(args, list(refs), device)
    hidden, n_layers = _hidden_and_layers(config)
    layers = []
    for ref, sae in zip(refs, saes):
        if hidden is not None and sae.d_in != hidden:
            raise ValueError(f"--sae: {ref!r} has d_in={sae.d_in} but the model's hidden size is {hidden}; "
                             "this SAE was trained on another model")
        if sae.hook_layer is None:
            raise ValueError(f"--sae: {ref!r} has no hook_name with a layer; with several SAEs each needs its own")
        if n_layers is not None:
            from ..hf.layers import check_layer

            check_layer(sae.hook_layer, n_layers, f"--sae: {ref!r} reads layer")
        layers.append(sae.hook_layer)
    model, tok = _model_weights(args, org, device)
    return model, tok, saes, layers, name


def check_feature_ids(features, d_sae: int, where: str) -> None:
    """Raise naming ``where`` (the flag or the spec, as the user gave it) for feature ids outside
    ``[0, d_sae)``."""
    bad = [f for f in features if not 0 <= int(f) < d_sae]
    if bad:
        raise ValueError(f"{where}: feature ids {bad[:10]} are outside [0, {d_sae}) for this SAE (d_sae={d_sae})")


def _layer_source(args, spec, sae, sae_flag: str) -> tuple[int | None, str]:
    """The layer the SAE is read at and where it comes from, as an error names it: ``--layer``, the
    spec's ``layer``, or the SAE's ``hook_name``."""
    if args.layer is not None:
        return args.layer, "--layer:"
    if spec is not None and spec.layer is not None:
        return spec.layer, f"--steer: the spec {args.steer}'s layer" if args.steer else "--layer:"
    return sae.hook_layer, f"{sae_flag}: its hook_name {sae.hook_name!r} reads layer"


def load_model(args, spec=None):
    """``(model, tokenizer, sae, layer, name)`` for the CLI flags; checks the SAE against the model's
    config (width, layer range) before loading the model's weights. A spec with edits at several
    SAEs (and no ``--sae``) gives ``sae`` as a dict ``{edit's sae: SAE}`` and ``layer`` None."""
    if spec is not None and spec.edits and not args.sae:
        model, tok, saes, _, name = load_model_saes(args, spec.sae_refs)
        by_ref = dict(zip(spec.sae_refs, saes))
        for e in spec.edits:
            check_feature_ids(e["features"], by_ref[e["sae"]].d_sae, f"--steer: the spec {args.steer}'s edit of {e['sae']!r}")
        return model, tok, by_ref, None, name
    if getattr(args, "quiet", False):
        quiet_loading()
    device = default_device(args.device)
    sae_ref = args.sae or (spec.sae if spec is not None else None)
    org, config, (sae,), name = _saes_and_config(args, [sae_ref], device)
    hidden, n_layers = _hidden_and_layers(config)
    sae_flag = (f"--sae {args.sae!r}" if args.sae else f"the SAE {sae_ref!r} of the steering spec {args.steer}" if sae_ref
                else "the organism's SAE")
    if hidden is not None and sae.d_in != hidden:
        raise ValueError(f"{sae_flag}: d_in={sae.d_in} but the model's hidden size is {hidden}; this SAE was trained on another model")
    if spec is not None:
        where = "--features" if args.features is not None else f"--steer: the spec {args.steer}'s features"
        check_feature_ids(spec.features, sae.d_sae, where)
    layer, where = _layer_source(args, spec, sae, sae_flag)
    if layer is None:
        raise ValueError(f"--layer: {sae_flag} has no hook_name with a layer; pass --layer L")
    if n_layers is not None:
        from ..hf.layers import check_layer

        check_layer(layer, n_layers, where.rstrip(":"))
    model, tok = _model_weights(args, org, device)
    if spec is not None:
        spec.layer = layer if sae.hook_layer != layer else spec.layer
        spec.sae = sae_ref or spec.sae
    return model, tok, sae, layer, name
