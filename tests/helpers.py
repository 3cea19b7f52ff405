"""Shared test helpers: the one tolerance table, and random SAEs built with sae-lens's own classes."""

from __future__ import annotations

from pathlib import Path

import torch

import saesteer

#: Tolerances by dtype for a kernel against the float32 reference (one table for every test).
TOLERANCES = {
    torch.float64: dict(atol=1e-9, rtol=1e-9),
    torch.float32: dict(atol=1e-4, rtol=1e-4),
    torch.bfloat16: dict(atol=3e-2, rtol=3e-2),
    torch.float16: dict(atol=3e-3, rtol=3e-3),
}


def tol(dtype: torch.dtype) -> dict:
    return TOLERANCES[dtype]


def assert_close_dtype(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype | None = None, **kw):
    """``torch.testing.assert_close`` with the table's tolerance for ``dtype`` (default: actual's)."""
    t = dict(tol(dtype or actual.dtype))
    t.update(kw)
    torch.testing.assert_close(actual.double(), expected.double(), **t)


ARCH_CONFIGS = {
    # name -> (sae-lens architecture, extra cfg kwargs)
    "standard": ("standard", {}),
    "jumprelu": ("jumprelu", {}),
    "gated": ("gated", {}),
    "topk": ("topk", {"k": 8}),
    "topk_rescale": ("topk", {"k": 8, "rescale_acts_by_decoder_norm": True}),
    "standard_layer_norm": ("standard", {"normalize_activations": "layer_norm"}),
    "jumprelu_const_norm": ("jumprelu", {"normalize_activations": "constant_norm_rescale"}),
}


def make_sae_lens_sae(arch: str, d_in: int = 37, d_sae: int = 101, seed: int = 0, dtype=torch.float32, hook_name=None, **cfg):
    """A random sae-lens SAE whose features fire on a good share of N(0, 1) inputs."""
    from sae_lens.saes import (
        GatedSAE,
        GatedSAEConfig,
        JumpReLUSAE,
        JumpReLUSAEConfig,
        StandardSAE,
        StandardSAEConfig,
        TopKSAE,
        TopKSAEConfig,
    )

    classes = {
        "standard": (StandardSAE, StandardSAEConfig),
        "jumprelu": (JumpReLUSAE, JumpReLUSAEConfig),
        "gated": (GatedSAE, GatedSAEConfig),
        "topk": (TopKSAE, TopKSAEConfig),
    }
    cls, cfg_cls = classes[arch]
    c = cfg_cls(d_in=d_in, d_sae=d_sae, dtype="float32", **cfg)
    if hook_name is not None:
        c.metadata.hook_name = hook_name
    sae = cls(c)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            scale = 1.0 / d_in**0.5 if name in ("W_enc", "W_dec") else 0.1
            p.copy_(torch.randn(p.shape, generator=g) * scale)
        if arch == "jumprelu":
            # Thresholds spread over the pre-activations' range so that about a third of features fire.
            sae.threshold.copy_(torch.rand(d_sae, generator=g) * 0.6)
        if arch == "gated":
            sae.r_mag.copy_(torch.randn(d_sae, generator=g) * 0.2)
    return sae.to(dtype=dtype)


def make_sae(name: str = "jumprelu", d_in: int = 37, d_sae: int = 101, seed: int = 0, dtype=torch.float32, **kw) -> saesteer.SAE:
    """A ``saesteer.SAE`` wrapping :func:`make_sae_lens_sae` (``name`` a key of ARCH_CONFIGS)."""
    arch, cfg = ARCH_CONFIGS[name]
    return saesteer.SAE.from_sae_lens(make_sae_lens_sae(arch, d_in, d_sae, seed, dtype=dtype, **cfg, **kw))


def refusal_features(org, prompt_ids, n_harmful: int, k: int = 4) -> list[int]:
    """The ``k`` SAE features of the organism whose mean activation at the last prompt token is
    highest on the first ``n_harmful`` prompts (token-id lists) relative to the rest."""
    import torch

    import saesteer

    with torch.no_grad(), saesteer.capture(org.model, org.sae, transform=lambda x: x[:, -1]) as rec:
        for ids in prompt_ids:
            org.model(torch.tensor([ids]))
    f = org.sae.encode(torch.cat(rec[org.sae.hook_name]))
    return (f[:n_harmful].mean(0) - f[n_harmful:].mean(0)).topk(k).indices.tolist()


def organism_prompt_ids(org, n_harmful: int, n_harmless: int) -> list[list[int]]:
    """Chat-formatted token ids of the organism's first ``n_harmful`` harmful and ``n_harmless``
    harmless package prompts, harmful first."""
    from saesteer import organism

    texts = organism.load_prompts("harmful")[:n_harmful] + organism.load_prompts("harmless")[:n_harmless]
    return [org.tokenizer(org.format_prompt(t), add_special_tokens=False).input_ids for t in texts]


def hf_greedy(org, ids, max_new: int, iv=None, positions: str = "all", skip_bos: bool = True) -> list[int]:
    """The organism's greedy continuation of ``ids`` (``max_new`` tokens), steered by ``iv`` through
    the HF hooks when given: the reference the vLLM engine must reproduce."""
    import contextlib

    import torch

    import saesteer

    x = torch.tensor([ids])
    edit = contextlib.nullcontext() if iv is None else saesteer.steer(org.model, org.sae, iv, positions=positions, skip_bos=skip_bos)
    with torch.no_grad(), edit:
        out = org.model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=max_new, do_sample=False)
    return out[0, len(ids):].tolist()


def organism_llm(**kwargs):
    """A SteeredLLM on the organism's model in fp32, eager unless ``enforce_eager=False``; ``kwargs``
    go to ``vllm.LLM``."""
    from saesteer import organism
    from saesteer.vllm import SteeredLLM

    kwargs.setdefault("gpu_memory_utilization", 0.3)  # on the CPU: the share of RAM vLLM reserves
    kwargs.setdefault("enforce_eager", True)
    return SteeredLLM(str(organism.WEIGHTS_DIR / "model"), dtype="float32", block_size=32, **kwargs)


HUB_REPO = "saesteer-test/organism-saes"  # a Hugging Face repo id that exists only in a test's local cache


def offline_hub_cache(root) -> tuple[Path, str]:
    """A Hugging Face hub cache under ``root`` holding the organism's jumprelu SAE, in sae-lens's
    format, as repo :data:`HUB_REPO` folder ``layer_2/jumprelu`` (what a download would leave there).
    Returns ``(cache dir, "REPO:FOLDER")``: with ``HF_HUB_CACHE`` set to it and ``HF_HUB_OFFLINE=1``,
    sae-lens's own ``from_pretrained`` loads it without a network."""
    import shutil

    from saesteer import organism

    cache = Path(root) / "hub"
    repo = cache / ("models--" + HUB_REPO.replace("/", "--"))
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    dst = repo / "snapshots" / commit / "layer_2" / "jumprelu"
    if not dst.exists():
        shutil.copytree(organism.read_manifest()[2]["jumprelu"], dst)
    return cache, f"{HUB_REPO}:layer_2/jumprelu"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: list[str], log: Path, env: dict | None = None, timeout: float = 240):
    """``saesteer serve ARGS`` in a subprocess (output to ``log``), waited for until ``/health``
    answers: a context manager yielding ``(process, base URL)``; the server is stopped on exit.
    ``args`` must include ``--port``."""
    import contextlib
    import os
    import subprocess
    import sys
    import time
    import urllib.error
    import urllib.request

    import pytest

    port = args[args.index("--port") + 1]
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1] / "python"), env.get("PYTHONPATH", "")])

    @contextlib.contextmanager
    def running():
        with open(log, "w") as out:
            proc = subprocess.Popen([sys.executable, "-m", "saesteer.cli", "serve", *args], stdout=out,
                                    stderr=subprocess.STDOUT, env=env)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + timeout
            while True:
                if proc.poll() is not None:
                    pytest.fail(f"saesteer serve exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
                try:
                    urllib.request.urlopen(base + "/health", timeout=2)
                    break
                except (urllib.error.URLError, ConnectionError, TimeoutError):
                    if time.time() > deadline:
                        pytest.fail(f"saesteer serve did not come up in {timeout:.0f} s:\n{log.read_text()[-4000:]}")
                    time.sleep(1)
            yield proc, base
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()

    return running()
