"""The library's SAE: sae-lens v6 semantics, laid out for the fused kernels.

Conventions are sae-lens's: ``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_in]``, ``b_enc [d_sae]``,
``b_dec [d_in]``, ``threshold [d_sae]`` (jumprelu), ``k`` (topk)::

    x'  = norm(x) - b_dec * apply_b_dec_to_input
    pre = x' @ W_enc + b_enc
    standard : f = relu(pre)
    jumprelu : f = relu(pre) * (pre > threshold)                 (strict >, as sae-lens)
    topk     : keep the k largest pre per row, relu them, zero elsewhere
               (pre times ||W_dec[i]|| first, when rescale_acts_by_decoder_norm)
    gated    : f = (x' @ W_enc + b_gate > 0) * relu(x' @ (W_enc * exp(r_mag)) + b_mag)
    decode   : x_hat = denorm(f @ W_dec + b_dec)   (f / ||W_dec[i]|| first, when rescaled)

For the kernels every architecture is described by one packed float32 tensor
``feature_params [5, d_sae]`` (see :data:`PARAM_ROWS`) and a transposed contiguous encoder
``W_enc_T [d_sae, d_in]``, so that gathering the encoder columns of a feature set is a row read.
"""

from __future__ import annotations

import json
import operator
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import ops, reference
from .packed import ARCHITECTURES, NORMS, PARAM_ROWS, PackedSAE, SAEFields

__all__ = ["SAE", "load_sae", "read_sae_dir", "hook_layer_of", "ARCHITECTURES", "NORMS", "PARAM_ROWS"]


def hook_layer_of(hook_name: str | None) -> int | None:
    """The layer index in an sae-lens hook name (``blocks.L.hook_resid_post`` -> L), or None."""
    if not hook_name:
        return None
    m = re.search(r"(?:blocks|layers)\.(\d+)\.", hook_name)
    return int(m.group(1)) if m else None


_VERSION = operator.attrgetter("_version")  # a tensor's in-place edit counter
# The plain attributes the kernel view is built from (setting one rebuilds it; others, such as
# ``training`` or ``hook_name``, do not).
_VIEW_FIELDS = frozenset({"architecture", "normalize_activations", "apply_b_dec_to_input", "k", "rescale_acts_by_decoder_norm"})


class _TrackedDict(dict):
    """An ``nn.Module``'s ``_buffers`` dict that counts its changes (``generation``), so that
    :meth:`SAE.packed` sees a replaced buffer without comparing every buffer's identity per call."""

    generation = 0

    def _changed(self) -> None:
        self.generation += 1

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        self._changed()

    def __delitem__(self, key):
        super().__delitem__(key)
        self._changed()

    def pop(self, *args):
        self._changed()
        return super().pop(*args)

    def popitem(self):
        self._changed()
        return super().popitem()

    def clear(self):
        self._changed()
        super().clear()

    def update(self, *args, **kwargs):
        self._changed()
        super().update(*args, **kwargs)

    def setdefault(self, key, default=None):
        self._changed()
        return super().setdefault(key, default)

    def __reduce__(self):  # copies and pickles are plain dicts; SAE.__setattr__ wraps them again
        return (dict, (dict(self),))


class SAE(SAEFields, nn.Module):
    """A sparse autoencoder with exactly sae-lens v6's encode/decode.

    Build one with :meth:`from_sae_lens`, :func:`load_sae`, or directly from tensors.
    Weights are buffers (no gradients are needed for steering); the jumprelu ``threshold`` stays
    float32 whatever the SAE dtype, since bf16 has ~0.4% resolution at the threshold.

    Attributes
    ----------
    d_in, d_sae : int
    architecture : str
        One of :data:`ARCHITECTURES`.
    hook_name : str or None
        TransformerLens-style hook, e.g. ``"blocks.12.hook_resid_post"``.
    dtype, device
        Of the weights.
    """

    def __init__(
        self,
        *,
        architecture: str,
        W_enc: torch.Tensor,
        W_dec: torch.Tensor,
        b_dec: torch.Tensor | None = None,
        b_enc: torch.Tensor | None = None,
        threshold: torch.Tensor | None = None,
        k: int | None = None,
        rescale_acts_by_decoder_norm: bool = False,
        b_gate: torch.Tensor | None = None,
        b_mag: torch.Tensor | None = None,
        r_mag: torch.Tensor | None = None,
        apply_b_dec_to_input: bool = True,
        normalize_activations: str = "none",
        hook_name: str | None = None,
        model_name: str | None = None,
        metadata: dict | None = None,
    ):
        super().__init__()
        self.__dict__["_buffers"] = _TrackedDict(self._buffers)  # nn.Module.__init__ sets a plain dict
        self.__dict__["_packed"] = {}  # device (None: the SAE's own) -> (key, PackedSAE); see packed()
        if architecture not in ARCHITECTURES:
            raise NotImplementedError(
                f"architecture: {architecture!r} is not supported; supported architectures are "
                f"{', '.join(ARCHITECTURES)}"
            )
        if W_enc.dim() != 2 or W_dec.dim() != 2:
            raise ValueError(
                f"W_enc/W_dec: expected 2-D [d_in, d_sae] and [d_sae, d_in], got {tuple(W_enc.shape)} and {tuple(W_dec.shape)}"
            )
        d_in, d_sae = W_enc.shape
        if tuple(W_dec.shape) != (d_sae, d_in):
            raise ValueError(f"W_dec: expected shape {(d_sae, d_in)} to match W_enc {tuple(W_enc.shape)}, got {tuple(W_dec.shape)}")
        if not W_enc.is_floating_point():
            raise ValueError(f"W_enc: expected a floating-point tensor, got {W_enc.dtype}")
        dtype, device = W_dec.dtype, W_dec.device

        def vec(name, t, n, default=0.0, dt=dtype):
            if t is None:
                return torch.full((n,), default, dtype=dt, device=device)
            t = t.detach()
            if tuple(t.shape) != (n,):
                raise ValueError(f"{name}: expected shape ({n},), got {tuple(t.shape)}")
            return t.to(device=device, dtype=dt)

        self.architecture = architecture
        self.d_in, self.d_sae = int(d_in), int(d_sae)
        self.register_buffer("W_enc", W_enc.detach().to(device=device, dtype=dtype))
        self.register_buffer("W_dec", W_dec.detach())
        self.register_buffer("b_dec", vec("b_dec", b_dec, d_in))
        if architecture == "gated":
            if b_gate is None or b_mag is None or r_mag is None:
                raise ValueError("gated SAE: b_gate, b_mag and r_mag are all required")
            self.register_buffer("b_gate", vec("b_gate", b_gate, d_sae))
            self.register_buffer("b_mag", vec("b_mag", b_mag, d_sae))
            self.register_buffer("r_mag", vec("r_mag", r_mag, d_sae))
            self.b_enc = None
        else:
            self.register_buffer("b_enc", vec("b_enc", b_enc, d_sae))
        if architecture == "jumprelu":
            if threshold is None:
                raise ValueError("jumprelu SAE: threshold is required")
            self.register_buffer("threshold", vec("threshold", threshold, d_sae, dt=torch.float32))
        else:
            self.threshold = None
        if architecture == "topk":
            if k is None or int(k) < 1 or int(k) > d_sae:
                raise ValueError(f"k: a topk SAE needs 1 <= k <= d_sae ({d_sae}), got {k}")
            self.k = int(k)
        else:
            self.k = None
        self.rescale_acts_by_decoder_norm = bool(rescale_acts_by_decoder_norm) and architecture == "topk"
        self.apply_b_dec_to_input = bool(apply_b_dec_to_input)
        self.normalize_activations = normalize_activations if normalize_activations in NORMS else "none"
        self.hook_name = hook_name
        self.model_name = model_name
        self.metadata = dict(metadata or {})

    # ------------------------------------------------------------------------------------------
    # properties
    # ------------------------------------------------------------------------------------------
    @property
    def hook_layer(self) -> int | None:
        """The layer index parsed from :attr:`hook_name` (``blocks.L.…``), or None."""
        return hook_layer_of(self.hook_name)

    def packed(self, device: torch.device | str | None = None) -> PackedSAE:
        """The kernel view of this SAE (:class:`saesteer.packed.PackedSAE`), on ``device`` (default:
        the SAE's own; another device gets moved copies and leaves this SAE where it is).

        Built once and cached; rebuilt when a buffer is replaced or edited in place (its version
        counter moves) or one of the attributes it is built from is set. Inside a ``torch.compile``-d region the cached view is
        returned as it is, since Dynamo cannot compare version counters.

        This runs on every op call (``ops.steer(x, sae, ...)``), so the check is kept to about a
        microsecond: replacing a buffer (``.to()``, ``setattr``, ``load_state_dict(assign=True)``)
        or setting one of those attributes bumps a generation counter, and the buffers' version counters
        catch in-place edits.
        """
        d = self.__dict__
        if device is not None:
            device = torch.device(device)
        hit = d["_packed"].get(device)
        if hit is not None:
            if torch.compiler.is_compiling():
                return hit[1]
            bufs = d["_buffers"]
            if hit[0] == (d["_generation"], bufs.generation, *map(_VERSION, bufs.values())):
                return hit[1]
        dev = self._buffers["W_dec"].device if device is None else device
        if device is not None and dev == self._buffers["W_dec"].device:
            view = self.packed()  # the default device's view, under this spelling of its name too
        else:
            with torch.no_grad():
                view = self._build_packed(dev)
        if torch.compiler.is_compiling():  # traced into the graph; the key's version counters are not traceable
            return view
        key = (d["_generation"], self._buffers.generation, *map(_VERSION, self._buffers.values()))
        d["_packed"][device] = (key, view)
        return view

    def __setattr__(self, name: str, value) -> None:
        super().__setattr__(name, value)
        if name in _VIEW_FIELDS:  # buffers replaced through setattr are seen by _TrackedDict
            d = self.__dict__
            d["_generation"] = d.get("_generation", 0) + 1
        elif name == "_buffers" and not isinstance(value, _TrackedDict):  # e.g. nn.parallel's replicas
            self.__dict__["_buffers"] = _TrackedDict(value)

    def __setstate__(self, state) -> None:  # copy.deepcopy and pickle
        super().__setstate__(state)
        self.__dict__["_buffers"] = _TrackedDict(self.__dict__["_buffers"])
        self.__dict__["_packed"] = {}

    def _build_packed(self, device: torch.device) -> PackedSAE:
        def on(t):
            return None if t is None else t.to(device=device)

        W_enc, W_dec, b_dec = on(self.W_enc), on(self.W_dec).contiguous(), on(self.b_dec)
        n = self.d_sae
        p = torch.zeros(5, n, dtype=torch.float32, device=device)
        p[2] = 1.0
        p[4] = 1.0
        if self.architecture == "gated":
            p[0] = on(self.b_gate).float()
            # sae-lens computes exp(r_mag) in the SAE dtype before scaling W_enc.
            p[2] = on(self.r_mag).exp().float()
            p[3] = on(self.b_mag).float()
        else:
            p[0] = on(self.b_enc).float()
        if self.architecture == "jumprelu":
            p[1] = on(self.threshold).float()
        norms = W_dec.norm(dim=-1)
        if self.architecture == "topk" and self.rescale_acts_by_decoder_norm:
            p[2] = norms.float()
            p[4] = (1 / norms).float()
        return PackedSAE(
            W_enc=W_enc, W_enc_T=W_enc.t().contiguous(), W_dec=W_dec, b_dec=b_dec, params=p,
            decoder_norms=norms.float(), architecture=self.architecture,
            normalize_activations=self.normalize_activations, apply_b_dec_to_input=self.apply_b_dec_to_input,
            k=self.k,
        )

    @property
    def W_enc_T(self) -> torch.Tensor:
        """``W_enc`` transposed and contiguous, ``[d_sae, d_in]``: a feature's encoder is a row."""
        return self.packed().W_enc_T

    @property
    def decoder_norms(self) -> torch.Tensor:
        """``||W_dec[i]||`` in float32, ``[d_sae]`` (sae-lens computes it in the SAE dtype)."""
        return self.packed().decoder_norms

    @property
    def feature_params(self) -> torch.Tensor:
        """Packed per-feature parameters, float32 ``[5, d_sae]``, rows :data:`PARAM_ROWS`."""
        return self.packed().params

    # ------------------------------------------------------------------------------------------
    # conversion
    # ------------------------------------------------------------------------------------------
    def to(self, *args, **kwargs) -> "SAE":  # type: ignore[override]
        """Like ``nn.Module.to``; the jumprelu threshold stays float32 whatever the dtype."""
        device, dtype, non_blocking, _ = torch._C._nn._parse_to(*args, **kwargs)
        if dtype is not None and not dtype.is_floating_point:
            raise ValueError(f"dtype: an SAE needs a floating-point dtype, got {dtype}")
        for name, buf in list(self._buffers.items()):
            if buf is None:
                continue
            dt = torch.float32 if name == "threshold" else dtype
            self._buffers[name] = buf.to(device=device, dtype=dt, non_blocking=non_blocking)
        return self

    def cuda(self, device=None) -> "SAE":  # type: ignore[override]
        return self.to(torch.device("cuda", device) if isinstance(device, int) else (device or "cuda"))

    def cpu(self) -> "SAE":  # type: ignore[override]
        return self.to("cpu")

    def half(self) -> "SAE":  # type: ignore[override]
        return self.to(dtype=torch.float16)

    def bfloat16(self) -> "SAE":  # type: ignore[override]
        return self.to(dtype=torch.bfloat16)

    def float(self) -> "SAE":  # type: ignore[override]
        return self.to(dtype=torch.float32)

    @classmethod
    def from_sae_lens(cls, sae) -> "SAE":
        """Wrap an ``sae_lens.SAE`` (v6). Its weights are shared, not copied, where dtypes allow."""
        cfg = sae.cfg
        arch = cfg.architecture()
        if arch not in ARCHITECTURES:
            raise NotImplementedError(
                f"architecture: sae-lens architecture {arch!r} is not supported; supported architectures "
                f"are {', '.join(ARCHITECTURES)}"
            )
        meta = getattr(cfg, "metadata", None)
        md = meta.to_dict() if meta is not None and hasattr(meta, "to_dict") else {}
        kw: dict[str, Any] = dict(
            architecture=arch,
            W_enc=sae.W_enc.data,
            W_dec=sae.W_dec.data,
            b_dec=sae.b_dec.data,
            apply_b_dec_to_input=getattr(cfg, "apply_b_dec_to_input", True),
            normalize_activations=getattr(cfg, "normalize_activations", "none"),
            hook_name=md.get("hook_name"),
            model_name=md.get("model_name"),
            metadata={k: v for k, v in md.items() if isinstance(v, (str, int, float, bool, type(None)))},
        )
        if arch == "gated":
            kw.update(b_gate=sae.b_gate.data, b_mag=sae.b_mag.data, r_mag=sae.r_mag.data)
        else:
            kw["b_enc"] = sae.b_enc.data
        if arch == "jumprelu":
            kw["threshold"] = sae.threshold.data
        if arch == "topk":
            kw["k"] = cfg.k
            kw["rescale_acts_by_decoder_norm"] = getattr(cfg, "rescale_acts_by_decoder_norm", False)
        return cls(**kw)

    # ------------------------------------------------------------------------------------------
    # the math (pure PyTorch; the fused ops live in saesteer.ops)
    # ------------------------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations ``f [..., d_sae]`` of ``x [..., d_in]`` (sae-lens ``encode``)."""
        return reference.encode(x, self)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``[..., d_in]`` of dense activations ``f [..., d_sae]`` (no run-time denorm)."""
        return reference.decode(f, self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction of ``x`` (with the run-time normalization undone)."""
        return reference.reconstruct(x, self)

    def encode_topk(self, x: torch.Tensor, k: int, backend: str = "auto"):
        """``(values [..., k], indices int64 [..., k])``: the k largest activations per row."""
        return ops.encode_topk(x, self, k, backend=backend)

    def decode_sparse(self, values: torch.Tensor, indices: torch.Tensor, backend: str = "auto") -> torch.Tensor:
        """Reconstruction from sparse activations, ``sum_j values[j] W_dec[indices[j]] + b_dec``."""
        return ops.decode_sparse(values, indices, self, backend=backend)

    def extra_repr(self) -> str:
        s = f"architecture={self.architecture!r}, d_in={self.d_in}, d_sae={self.d_sae}, dtype={self.dtype}, device={self.device}"
        if self.k is not None:
            s += f", k={self.k}"
        if self.hook_name:
            s += f", hook_name={self.hook_name!r}"
        return s


def read_sae_dir(path: str | Path, device=None):
    """A :class:`saesteer.SAE` from an SAE directory in sae-lens's inference format (``cfg.json`` +
    ``sae_weights.safetensors``), read with safetensors alone: no sae-lens needed.

    The tensors are the file's, cast to ``cfg.json``'s dtype as sae-lens's loader casts them, so the
    result equals ``saesteer.SAE.from_sae_lens(sae_lens.SAE.load_from_disk(path))`` bit for bit.
    Only what needs no run-time statistics is read: ``normalize_activations`` must be one of
    :data:`NORMS` (sae-lens's training saves fold their normalization into the
    weights and write ``"none"``)."""
    from safetensors.torch import load_file

    p = Path(path)
    if not (p / "cfg.json").is_file() or not (p / "sae_weights.safetensors").is_file():
        raise FileNotFoundError(f"path: {str(p)!r} is not an SAE directory (expected cfg.json and sae_weights.safetensors)")
    cfg = json.loads((p / "cfg.json").read_text())
    arch = cfg.get("architecture", "standard")
    if arch not in ARCHITECTURES:
        raise NotImplementedError(f"architecture: {arch!r} (in {p / 'cfg.json'}) is not supported; supported: {', '.join(ARCHITECTURES)}")
    norm = cfg.get("normalize_activations", "none")
    if norm not in NORMS:
        raise NotImplementedError(f"normalize_activations: {norm!r} (in {p / 'cfg.json'}) is not supported; supported: {', '.join(NORMS)}")
    dtype = getattr(torch, cfg.get("dtype", "float32"))
    w = {k: v.to(dtype) for k, v in load_file(str(p / "sae_weights.safetensors")).items()}
    meta = cfg.get("metadata") or {}
    kw: dict[str, Any] = dict(
        architecture=arch, W_enc=w["W_enc"], W_dec=w["W_dec"], b_dec=w["b_dec"],
        apply_b_dec_to_input=cfg.get("apply_b_dec_to_input", True), normalize_activations=norm,
        hook_name=meta.get("hook_name"), model_name=meta.get("model_name"),
        metadata={k: v for k, v in meta.items() if isinstance(v, (str, int, float, bool, type(None)))},
    )
    if arch == "gated":
        kw.update(b_gate=w["b_gate"], b_mag=w["b_mag"], r_mag=w["r_mag"])
    else:
        kw["b_enc"] = w["b_enc"]
    if arch == "jumprelu":
        kw["threshold"] = w["threshold"]
    if arch == "topk":
        kw.update(k=cfg["k"], rescale_acts_by_decoder_norm=cfg.get("rescale_acts_by_decoder_norm", False))
    sae = SAE(**kw)
    return sae if device is None or str(device) == "cpu" else sae.to(device)


def _sae_lens():
    try:
        import sae_lens
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "loading SAEs needs sae-lens: pip install 'saesteer[sae-lens]' (or pip install sae-lens)"
        ) from e
    return sae_lens


def load_sae(
    path: str | os.PathLike | None = None,
    *,
    release: str | None = None,
    sae_id: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str | None = None,
) -> SAE:
    """Load an SAE through sae-lens's own loaders (so its normalization folding applies).

    ``load_sae(dir)`` reads a directory in sae-lens format (``cfg.json`` + safetensors weights;
    nothing is unpickled). ``load_sae(release=..., sae_id=...)`` uses sae-lens's pretrained
    registry (e.g. ``release="gemma-scope-2b-pt-res-canonical", sae_id="layer_12/width_16k/canonical"``),
    which downloads on first use.
    """
    if (path is None) == (release is None):
        raise ValueError("load_sae: pass either a directory path or release=... and sae_id=...")
    sl = _sae_lens()
    if path is not None:
        p = Path(path)
        if not p.is_dir():
            raise FileNotFoundError(f"path: {str(p)!r} is not a directory (expected an sae-lens SAE directory)")
        if not (p / "cfg.json").is_file():
            raise FileNotFoundError(f"path: {str(p)!r} has no cfg.json; expected sae-lens's format (cfg.json + sae_weights.safetensors)")
        arch = json.loads((p / "cfg.json").read_text()).get("architecture", "standard")
        if arch not in ARCHITECTURES:
            raise NotImplementedError(
                f"architecture: {arch!r} (in {p / 'cfg.json'}) is not supported; supported architectures are {', '.join(ARCHITECTURES)}"
            )
        raw = sl.SAE.load_from_disk(str(p), device="cpu")
    else:
        if sae_id is None:
            raise ValueError("sae_id: required with release=...")
        raw = sl.SAE.from_pretrained(release, sae_id, device="cpu")
    sae = SAE.from_sae_lens(raw)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    return sae.to(device=device, dtype=dtype) if (dtype is not None or str(device) != "cpu") else sae
