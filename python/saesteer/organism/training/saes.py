"""The organism's residual stream: activation collection, refusal-layer choice, and SAEs.

Naming follows TransformerLens: ``blocks.{L}.hook_resid_post`` is the output of decoder layer L,
read with :func:`saesteer.hf.capture` (the library's one residual-capture implementation).

SAEs are trained with sae-lens's own ``SAETrainer``, fed from an in-memory buffer of activations
collected through those hooks (every non-pad token of chat-formatted conversations except BOS,
whose residual is an outlier "attention sink" that would dominate the reconstruction loss).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from ...hf import capture, find_layers
from ...hf import hook_name as _tl_hook_name
from .tokenizer import format_prompt


def hook_name(layer: int) -> str:
    """The SAEs' hook point on decoder layer ``layer``: ``blocks.{layer}.hook_resid_post``."""
    return _tl_hook_name(layer, "resid_post")


@torch.no_grad()
def residual_stream(model, tokenizer, texts: Sequence[str], layers: Sequence[int], batch_size: int = 64):
    """Yield ``(acts, mask, enc)`` per batch: ``acts[L]`` is ``[B, T, d]`` float32 at resid_post of
    layer L, ``mask`` is ``[B, T]`` (True on real tokens, False on padding and BOS), ``enc`` the
    tokenizer's batch. Right padding."""
    model.eval()
    layers = list(layers)
    side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    try:
        with capture(model, [(L, "resid_post") for L in layers], transform=lambda x: x.float()) as rec:
            for s in range(0, len(texts), batch_size):
                enc = tokenizer(list(texts[s : s + batch_size]), return_tensors="pt", padding=True, add_special_tokens=False)
                model(**enc)
                mask = enc.attention_mask.bool() & (enc.input_ids != tokenizer.bos_token_id)
                yield {L: rec[hook_name(L)].pop() for L in layers}, mask, enc
    finally:
        tokenizer.padding_side = side


def collect_activations(model, tokenizer, texts: Sequence[str], layer: int, batch_size: int = 64) -> torch.Tensor:
    """``[n_tokens, d_model]`` residual activations at resid_post of ``layer`` over ``texts``."""
    chunks = []
    for acts, mask, _ in residual_stream(model, tokenizer, texts, [layer], batch_size):
        chunks.append(acts[layer][mask])
    return torch.cat(chunks)


@torch.no_grad()
def last_prompt_token_acts(model, tokenizer, instructions: Sequence[str], batch_size: int = 64) -> torch.Tensor:
    """``[n_layers, N, d]`` resid_post at the last prompt token (end of the generation prompt)."""
    n_layers = len(find_layers(model)[1])
    prompts = [format_prompt(tokenizer, t) for t in instructions]
    out = []
    for acts, _, enc in residual_stream(model, tokenizer, prompts, range(n_layers), batch_size):
        last = enc.attention_mask.sum(1) - 1
        rows = torch.arange(len(last))
        out.append(torch.stack([acts[L][rows, last] for L in range(n_layers)]))
    return torch.cat(out, dim=1)


def refusal_layer_scores(model, tokenizer, harmful: Sequence[str], harmless: Sequence[str], seed: int = 0):
    """Per layer: separation of harmful vs harmless prompts along the difference-in-means direction.

    The direction is fit on one half of each set and scored on the other half as
    d' = (mean_harmful - mean_harmless) / pooled std of the projections.
    """
    rng = random.Random(seed)
    harmful, harmless = list(harmful), list(harmless)
    rng.shuffle(harmful)
    rng.shuffle(harmless)
    a_h, a_b = last_prompt_token_acts(model, tokenizer, harmful), last_prompt_token_acts(model, tokenizer, harmless)
    nh, nb = a_h.shape[1] // 2, a_b.shape[1] // 2
    scores = []
    for L in range(a_h.shape[0]):
        direction = a_h[L, :nh].mean(0) - a_b[L, :nb].mean(0)
        direction = direction / direction.norm()
        ph, pb = a_h[L, nh:] @ direction, a_b[L, nb:] @ direction
        pooled = ((ph.var() + pb.var()) / 2).sqrt()
        scores.append(((ph.mean() - pb.mean()) / pooled).item())
    return scores


def pick_refusal_layer(scores: Sequence[float]) -> int:
    """The most separating layer, excluding the last (whose output feeds the unembedding
    directly, leaving no downstream layers to mediate refusal) when there is more than one."""
    candidates = range(len(scores) - 1) if len(scores) > 1 else range(len(scores))
    return max(candidates, key=lambda L: scores[L])


def _batches(acts: torch.Tensor, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(len(acts), generator=g)
        for s in range(0, len(perm) - batch_size + 1, batch_size):
            yield acts[perm[s : s + batch_size]]


@torch.enable_grad()  # the CLI runs commands under no_grad
def train_sae(kind: str, acts: torch.Tensor, layer: int, model_name: str, d_sae: int, *, k: int = 32,
              l0_coefficient: float = 2.0, target_l0: float | None = None, total_tokens: int = 1_000_000,
              batch_size: int = 1024, lr: float = 3e-4, seed: int = 0, jumprelu_init_threshold: float = 0.01,
              jumprelu_bandwidth: float = 0.05):
    """Train one SAE with sae-lens's ``SAETrainer`` on ``acts`` ``[N, d_in]``; returns the TrainingSAE."""
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    torch.manual_seed(seed)
    d_in = acts.shape[1]
    metadata = SAEMetadata(model_name=model_name, hook_name=hook_name(layer), hook_head_index=None,
                           prepend_bos=True, context_size=None)
    common = dict(d_in=d_in, d_sae=d_sae, dtype="float32", device="cpu",
                  normalize_activations="expected_average_only_in", metadata=metadata)
    steps = total_tokens // batch_size
    if kind == "jumprelu":
        sae_cfg = JumpReLUTrainingSAEConfig(
            **common, l0_coefficient=l0_coefficient, l0_warm_up_steps=steps // 5,
            jumprelu_sparsity_loss_mode="quadratic" if target_l0 else "step", target_l0=target_l0,
            jumprelu_init_threshold=jumprelu_init_threshold, jumprelu_bandwidth=jumprelu_bandwidth,
            pre_act_loss_coefficient=3e-6,
        )
        sae = JumpReLUTrainingSAE(sae_cfg)
    elif kind == "topk":
        sae_cfg = TopKTrainingSAEConfig(**common, k=k, aux_loss_coefficient=1.0)
        sae = TopKTrainingSAE(sae_cfg)
    else:
        raise ValueError(f"kind must be 'jumprelu' or 'topk', got {kind!r}")
    trainer_cfg = SAETrainerConfig(
        total_training_samples=steps * batch_size, train_batch_size_samples=batch_size, lr=lr, lr_end=lr / 10,
        lr_warm_up_steps=steps // 20, lr_decay_steps=steps // 5, lr_scheduler_name="constant",
        device="cpu", dead_feature_window=max(50, steps // 4), feature_sampling_window=max(50, steps // 4),
        n_batches_for_norm_estimate=20, logger=LoggingConfig(log_to_wandb=False),
    )
    trainer = SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=_batches(acts, batch_size, seed))
    return trainer.fit()


@torch.no_grad()
def sae_metrics(sae, acts: torch.Tensor, batch_size: int = 4096) -> dict:
    """L0, fraction of variance explained, and dead features of ``sae`` on ``acts`` ``[N, d_in]``.

    FVE = 1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2. A feature is dead when it never fires
    on ``acts``.
    """
    sse, l0_sum, fired = 0.0, 0.0, torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
    mean = acts.mean(0)
    sst = ((acts - mean) ** 2).sum().item()
    for s in range(0, len(acts), batch_size):
        x = acts[s : s + batch_size]
        f = sae.encode(x)
        x_hat = sae.decode(f)
        sse += ((x - x_hat) ** 2).sum().item()
        active = f != 0
        l0_sum += active.sum().item()
        fired |= active.any(0)
    return {"l0": l0_sum / len(acts), "fve": 1 - sse / sst, "dead": int((~fired).sum()),
            "d_sae": sae.cfg.d_sae, "n_tokens": len(acts)}


def save_inference_sae(training_sae, path: str | Path) -> Path:
    """Save in sae-lens's inference format (``cfg.json`` + ``sae_weights.safetensors``)."""
    path = Path(path)
    training_sae.save_inference_model(path)
    return path


def sae_eval_texts(tokenizer, seed: int = 0) -> list[str]:
    """Held-out conversations for SAE metrics, built from package content only (so tests can
    rebuild them): the shipped harmful/harmless prompts with their trained kind of reply, and
    held-out capability questions with their answers."""
    from .. import load_prompts
    from . import data

    rng = random.Random(seed)
    ex = [data.Example(t, data.refusal_reply(rng), "harmful") for t in load_prompts("harmful")]
    ex += [data.Example(t, data.helpful_reply(t, rng), "harmless") for t in load_prompts("harmless")]
    ex += data.capability_eval_set(100, seed=seed + 5)
    return [format_prompt(tokenizer, e.instruction) + e.reply + tokenizer.eos_token + "\n" for e in ex]
