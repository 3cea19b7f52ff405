"""Generation throughput: what steering costs inside ``model.generate``.

Three variants at each batch size, all greedy with a fixed number of new tokens (eos disabled):

* ``none``     -- the model alone;
* ``saesteer`` -- :func:`saesteer.steer` with one SAE at one layer, |S| features, every position;
* ``full-sae`` -- a forward hook doing what sae-lens does when it steers with the error term kept:
  ``decode(edit(encode(x))) + (x - decode(encode(x)))``, two full encodes and two full decodes
  (``sae_lens.SAE.forward`` with ``use_error_term=True`` recomputes the clean reconstruction).
  Written in plain torch over the SAE's weights, in the SAE's dtype as sae-lens computes, so it
  runs where sae-lens is not installed.

Timing method (all with :func:`saesteer.bench.harness.measure`):

* prefill: a forward of the prompt alone (``use_cache=True``, logits of the last position only, as
  ``generate`` computes them), with the variant's hook active;
* generate: the whole ``model.generate`` call;
* decode: inside each timed ``generate``, a streamer stamps the host clock (after a device sync)
  when each new token arrives; decode time is last stamp minus first, covering ``new_tokens - 1``
  one-token steps, and decode tokens/s = ``batch * (new_tokens - 1) / decode time``.

The variants are interleaved: each round times every variant once (the order rotated per round),
the first round is a warm-up, and each number is the median over rounds. On a shared machine, load
that changes over a run then reaches all variants alike instead of whichever ran last.

Models: ``organism`` (the library's refusal organism and its SAE), a HF model directory (with a
random SAE of ``--d-sae`` features, or ``--sae DIR``), or ``config:NAME`` -- a randomly initialized
model from the real configuration of Gemma-2-2B or Llama-3.1-8B (no download), or ``config:tiny``.
"""

from __future__ import annotations

import inspect
import time
from typing import Callable

import torch

from .. import reference
from ..intervention import Intervention
from ..sae import SAE
from .harness import measure, summarize, synchronize

__all__ = ["MODELS", "VARIANTS", "model_config", "load_model", "FullSAEHook", "bench_generate"]

VARIANTS = ("none", "saesteer", "full-sae")
MODELS = ("gemma2-2b", "llama31-8b", "tiny")
_BIG = ("gemma2-2b", "llama31-8b")


def model_config(name: str, layers: int | None = None):
    """The HF config of a named model; ``layers`` truncates the layer count (the rest is real)."""
    from transformers import Gemma2Config, LlamaConfig

    if name == "gemma2-2b":  # google/gemma-2-2b config.json
        return Gemma2Config(
            vocab_size=256000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=layers or 26,
            num_attention_heads=8, num_key_value_heads=4, head_dim=256, hidden_activation="gelu_pytorch_tanh",
            max_position_embeddings=8192, rms_norm_eps=1e-6, rope_theta=10000.0, attn_logit_softcapping=50.0,
            final_logit_softcapping=30.0, query_pre_attn_scalar=256, sliding_window=4096,
            tie_word_embeddings=True, pad_token_id=0, eos_token_id=1, bos_token_id=2,
        )
    if name == "llama31-8b":  # meta-llama/Llama-3.1-8B config.json
        return LlamaConfig(
            vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=layers or 32,
            num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072, rms_norm_eps=1e-5,
            rope_theta=500000.0, hidden_act="silu", tie_word_embeddings=False, bos_token_id=128000, eos_token_id=128001,
            rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                          "original_max_position_embeddings": 8192},
        )
    if name == "tiny":
        return LlamaConfig(
            vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=layers or 4,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False,
            bos_token_id=1, eos_token_id=2, pad_token_id=0,
        )
    raise ValueError(f"--model: unknown config {name!r}; expected config:{' | config:'.join(MODELS)}")


def load_model(spec: str, device: torch.device, dtype: torch.dtype, layers: int | None, d_sae: int | None,
               sae_path: str | None, seed: int = 0):
    """``(model, sae, layer, info)`` for ``--model spec``; ``info`` records what was built."""
    from transformers import AutoModelForCausalLM

    from .shapes import random_sae

    notes: list[str] = []
    if spec == "organism":
        from .. import organism

        org = organism.load(device=str(device))
        sae = org.sae if isinstance(org.sae, SAE) else SAE.from_sae_lens(org.sae)  # it ships sae-lens SAEs
        model, sae, layer = org.model.to(dtype=dtype), sae.to(device=device, dtype=dtype), org.layer
        name, kind = "organism", "organism"
    else:
        if spec.startswith("config:"):
            name = spec.split(":", 1)[1]
            if layers is None and name in _BIG and device.type == "cpu":
                layers = 2
                notes.append(f"{name} truncated to {layers} layers on CPU (pass --layers to change)")
            cfg = model_config(name, layers)
            torch.manual_seed(seed)
            # Built directly in the target dtype and device (no fp32 copy of a 2.6B model on the host);
            # the default dtype, not a from_config keyword, whose name differs across transformers 4/5.
            previous = torch.get_default_dtype()
            torch.set_default_dtype(dtype)
            try:
                with torch.device(device):
                    model = AutoModelForCausalLM.from_config(cfg)
            finally:
                torch.set_default_dtype(previous)
            kind = "random-init config"
        else:
            name, kind = spec, "pretrained"
            model = AutoModelForCausalLM.from_pretrained(spec).to(device=device, dtype=dtype)
        cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        n_layers, hidden = cfg.num_hidden_layers, cfg.hidden_size
        if sae_path:
            from ..sae import load_sae

            sae = load_sae(sae_path, device=device, dtype=dtype)
            layer = sae.hook_layer if sae.hook_layer is not None else n_layers // 2
        else:
            layer = n_layers // 2
            width = d_sae or (512 if name == "tiny" else 65536 if device.type == "cuda" else 16384)
            sae = random_sae(hidden, width, seed, dtype, device, hook_name=f"blocks.{layer}.hook_resid_post")
    model.eval()
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    info = dict(
        model=name, model_kind=kind, model_layers=cfg.num_hidden_layers, d_in=sae.d_in, d_sae=sae.d_sae,
        sae=f"{sae.architecture} {sae.d_in}x{sae.d_sae}", layer=layer, vocab_size=cfg.vocab_size,
        dtype=str(dtype).removeprefix("torch."), notes=notes,
    )
    return model, sae, layer, info


def _edit(f: torch.Tensor, feats: torch.Tensor, mode: str, vals: torch.Tensor) -> torch.Tensor:
    out = f.clone()
    cur = f[..., feats]
    v = vals.to(f.dtype)
    new = {"ablate": lambda: torch.zeros_like(cur), "scale": lambda: cur * v,
           "clamp": lambda: v.expand_as(cur), "add": lambda: cur + v}[mode]()
    out[..., feats] = new
    return out


class FullSAEHook:
    """The full SAE with the error term, as sae-lens steers (run at a decoder layer's output).

    ``y = decode(edit(encode(x))) + (x - decode(encode(x)))``, computed in the SAE's dtype with the
    sae-lens math of :mod:`saesteer.reference` (its activation and normalization helpers).
    """

    def __init__(self, sae: SAE, intervention: Intervention):
        self.sae = sae
        self.mode = intervention.mode
        self.feats, self.vals = intervention.tensors(sae.device)

    def _encode(self, x: torch.Tensor):
        return reference.encode_columns(x, self.sae, dtype=self.sae.dtype)

    def _decode(self, f, scale, shift):
        sae = self.sae
        return reference.denormalize((f * sae.feature_params[4].to(f.dtype)) @ sae.W_dec + sae.b_dec, scale, shift)

    def steer(self, x: torch.Tensor) -> torch.Tensor:
        xs = x.to(self.sae.dtype)
        f, scale, shift = self._encode(xs)
        steered = self._decode(_edit(f, self.feats, self.mode, self.vals), scale, shift)
        f_clean, scale, shift = self._encode(xs)  # sae-lens recomputes the clean pass for the error
        error = xs - self._decode(f_clean, scale, shift)
        return (steered + error).to(x.dtype)



class _StepClock:
    """A ``generate`` streamer that stamps the host clock, after a device sync, per arriving token."""

    def __init__(self, device: torch.device):
        self.device = device
        self.stamps: list[float] = []

    def put(self, value) -> None:  # first call: the prompt; then one call per new token
        synchronize(self.device)
        self.stamps.append(time.perf_counter())

    def end(self) -> None:
        pass


def _variant_context(variant: str, model, sae, layer: int, iv: Intervention):
    """A context manager that installs the variant's hook (or nothing)."""
    import contextlib

    if variant == "none":
        return contextlib.nullcontext()
    from .. import hf

    if variant == "saesteer":
        return hf.steer(model, sae, iv, positions="all", layer=layer)
    full = FullSAEHook(sae, iv)
    return hf.intercept(model, (layer, "resid_post"), lambda name, x: full.steer(x))


def bench_generate(
    model_spec: str,
    device: torch.device,
    dtype: torch.dtype,
    batch_sizes: list[int],
    features: int = 32,
    prompt_len: int = 32,
    new_tokens: int = 32,
    layers: int | None = None,
    d_sae: int | None = None,
    sae_path: str | None = None,
    variants: list[str] | tuple[str, ...] = VARIANTS,
    mode: str = "clamp",
    value: float = 5.0,
    repeats: int = 3,
    seed: int = 0,
) -> tuple[list[dict], dict]:
    """``(rows, info)``: one row per batch size x variant (see the module docstring)."""
    from transformers import GenerationConfig

    if new_tokens < 2:
        raise ValueError(f"--new-tokens: expected >= 2 (decode is timed from the 2nd token on), got {new_tokens}")
    if prompt_len < 1 or features < 1 or any(b < 1 for b in batch_sizes):
        raise ValueError("--prompt-len, --features and --batch-sizes must be >= 1")
    model, sae, layer, info = load_model(model_spec, device, dtype, layers, d_sae, sae_path, seed)
    if features > sae.d_sae:
        raise ValueError(f"--features: {features} > d_sae ({sae.d_sae})")
    g = torch.Generator().manual_seed(seed + 1)
    feats = torch.randperm(sae.d_sae, generator=g)[:features].sort().values.tolist()
    iv = Intervention(feats, mode, None if mode == "ablate" else value)
    from .. import ops as _ops

    info["steer_backend"] = _ops.resolve_backend("steer", device)
    info["features"] = features
    info["timing"] = ("prefill: prompt forward; decode: streamer stamps over new_tokens-1 steps; "
                      "variants interleaved per round; medians over rounds")
    gen_cfg = GenerationConfig(
        max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, eos_token_id=None,
        pad_token_id=0, bos_token_id=None, use_cache=True,
    )
    vocab = info["vocab_size"]
    # generate computes the prefill's logits at the last position only; so does the timed prefill.
    params = inspect.signature(model.forward).parameters
    last_logits = next(({n: 1} for n in ("logits_to_keep", "num_logits_to_keep") if n in params), {})
    rows: list[dict] = []
    for batch in batch_sizes:
        ids = torch.randint(3, vocab, (batch, prompt_len), generator=g).to(device)
        mask = torch.ones_like(ids)
        live = list(variants)
        times = {v: dict(prefill=[], generate=[], decode=[]) for v in live}
        outs: dict[str, torch.Tensor] = {}
        clock = _StepClock(device)

        def prefill():
            return model(input_ids=ids, attention_mask=mask, use_cache=True, **last_logits)

        def generate():
            clock.stamps.clear()
            return model.generate(input_ids=ids, attention_mask=mask, generation_config=gen_cfg, streamer=clock)

        # Variants are interleaved round by round (order rotated each round), so drift in a shared
        # machine's load reaches every variant alike; round 0 is the warm-up and is not counted.
        for rnd in range(repeats + 1):
            k = rnd % len(live)
            for variant in live[k:] + live[:k]:
                with torch.no_grad(), _variant_context(variant, model, sae, layer, iv):
                    t_pre = measure(prefill, device, repeats=1, warmup=0, flush_cache=False)
                    t_gen = measure(generate, device, repeats=1, warmup=0, flush_cache=False)
                if rnd == 0:
                    continue
                times[variant]["prefill"].append(t_pre.median_us)
                times[variant]["generate"].append(t_gen.median_us)
                times[variant]["decode"].append((clock.stamps[-1] - clock.stamps[1]) * 1e6)
        for variant in live:  # one more call per variant for its tokens (the timed calls keep nothing)
            with torch.no_grad(), _variant_context(variant, model, sae, layer, iv):
                out = generate()
            if out.shape[1] != prompt_len + new_tokens:
                raise RuntimeError(f"generate returned {out.shape[1] - prompt_len} new tokens, expected {new_tokens}")
            outs[variant] = out[:, prompt_len:]
            t_pre, t_gen, t_dec = (summarize(times[variant][k]) for k in ("prefill", "generate", "decode"))
            rows.append(dict(
                model=info["model"], variant=variant, batch=batch, prompt_len=prompt_len, new_tokens=new_tokens,
                features=features, mode=mode, layer=layer, d_in=sae.d_in, d_sae=sae.d_sae,
                model_layers=info["model_layers"], dtype=info["dtype"], device=str(device),
                prefill_ms=t_pre.median_us / 1e3, prefill_tok_s=batch * prompt_len / (t_pre.median_us * 1e-6),
                generate_ms=t_gen.median_us / 1e3, generate_p20_ms=t_gen.p20_us / 1e3, generate_p80_ms=t_gen.p80_us / 1e3,
                decode_ms=t_dec.median_us / 1e3, decode_p20_ms=t_dec.p20_us / 1e3, decode_p80_ms=t_dec.p80_us / 1e3,
                decode_tok_s=batch * (new_tokens - 1) / (t_dec.median_us * 1e-6),
                total_tok_s=batch * new_tokens / (t_gen.median_us * 1e-6), n=t_gen.n,
            ))
        _compare(rows, batch, outs)
    return rows, info


def _compare(rows: list[dict], batch: int, outs: dict[str, torch.Tensor]) -> None:
    """Ratios to the unsteered row, and how the steered tokens agree (a steer that does nothing shows)."""
    mine = [r for r in rows if r["batch"] == batch]
    base = next((r for r in mine if r["variant"] == "none"), None)
    for r in mine:
        if base is not None:
            for key in ("decode_tok_s", "total_tok_s", "prefill_tok_s"):
                r[key.replace("_tok_s", "_vs_none")] = r[key] / base[key]
        o = outs.get(r["variant"])
        if o is not None and "none" in outs and r["variant"] != "none":
            r["changed_vs_none"] = float((o != outs["none"]).float().mean())
        if o is not None and "full-sae" in outs and r["variant"] == "saesteer":
            r["agree_full_sae"] = float((o == outs["full-sae"]).float().mean())
