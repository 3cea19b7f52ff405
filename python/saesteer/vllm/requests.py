"""What the steered server does to each HTTP request before vLLM sees it (no vLLM import here).

A request names its edit in one of two places::

    extra_body={"vllm_xargs": {"saesteer": json.dumps(spec)}}   # vLLM's own per-request extra args
    extra_body={"saesteer": spec}                               # the same, without the JSON string

:meth:`ServerSteering.prepare` validates the spec against the registered SAEs (a bad one raises
:class:`SpecError` naming the field, which the server answers with 400), falls back to the server's
default spec when the request names none, writes the canonical spec into ``vllm_xargs`` (where the
workers read it) and salts the prefix cache with the spec, so KV blocks computed under one spec are
never reused under another. ``"saesteer": null`` (or ``"none"``, ``[]``) asks for no edit even when
the server has a default.

A spec with a ``when`` or an ``inspect`` is reported back: :meth:`ServerSteering.prepare` tags the
request (``vllm_xargs["saesteer_tag"]``, with a prefix-cache salt of its own, since the report needs
every prompt token read), and the server adds the worker's report to each choice of the response
as ``choices[i].saesteer`` (:func:`add_reports`): one per prompt and completion (a completions
request with several prompts and ``n`` has ``choices[p * n + c]``). A stream (:class:`SSEReports`)
carries in each chunk what was read since the previous one (the decision once the prompt is read,
the inspection of the tokens read so far) and, in the chunk that ends a choice, its whole report.
A spec that edits the prompt by a decision read on it is marked for saesteer's scheduler
(:func:`saesteer.vllm.scheduling.mark`).
"""

from __future__ import annotations

import hashlib
import json
import threading
import uuid

from ..steering.spec import SpecError, SteerSpec, parse_specs, spec_key, spec_salt
from .reports import TAG
from .scheduling import WHOLE, mark

__all__ = ["ServerSteering", "SpecError", "error_body", "parse_sae_args", "report_tag", "add_reports", "SSEReports"]


_NONE = ("none", "")


def _explicit_none(spec) -> bool:
    return spec is None or spec == [] or (isinstance(spec, str) and spec.strip().lower() in _NONE)


class ServerSteering:
    """The server's registered SAEs (``name -> d_sae``, ``layers``: name -> the layer each reads,
    which a spec's ``layer`` field must match, and ``limits``: name -> the bound on a spec's values
    from the workers) and its default spec, which can be switched while the
    server runs (:meth:`set_default`); requests already admitted keep the spec they got."""

    def __init__(self, saes: dict[str, int], default=None, layers: dict[str, int] | None = None,
                 limits: dict[str, float] | None = None):
        if not saes:
            raise SpecError("--sae: register at least one SAE (NAME=DIR)")
        self.saes = dict(saes)
        self.layers = None if layers is None else dict(layers)
        self.limits = None if limits is None else dict(limits)
        self._lock = threading.Lock()
        self._default: tuple[SteerSpec, ...] = ()
        self.set_default(default)

    @property
    def default(self) -> tuple[SteerSpec, ...]:
        return self._default

    def set_default(self, spec) -> tuple[SteerSpec, ...]:
        """Make ``spec`` (a spec, a list of specs, their JSON text, or None for no edit) the edit of
        every later request that names none. A bad spec raises and leaves the default as it was."""
        parsed = () if _explicit_none(spec) else parse_specs(spec, self.saes, self.layers, self.limits)
        with self._lock:
            self._default = parsed
        return parsed

    def set_default_json(self, raw: bytes) -> tuple[SteerSpec, ...]:
        """:meth:`set_default` from a request body: JSON whose value is a spec (an object), a list of
        specs, or ``null`` / ``"none"`` / ``[]`` (an empty body too) for no edit."""
        try:
            spec = json.loads(raw) if raw.strip() else None
        except (ValueError, UnicodeDecodeError) as e:
            raise SpecError(f"saesteer: malformed JSON ({e})") from None
        if isinstance(spec, str) and not _explicit_none(spec):
            raise SpecError(f"saesteer: expected a spec (an object), a list of specs, or null; got the JSON string {spec!r}")
        if not isinstance(spec, (dict, list, str, type(None))):
            raise SpecError(f"saesteer: expected a spec (an object), a list of specs, or null; got {spec!r}")
        return self.set_default(spec)

    def describe(self) -> dict:
        """What ``GET /v1/saesteer`` answers: the SAEs a spec may name (their width, layer and the
        bound on the sum of a spec's value magnitudes) and the current default."""
        return {"saes": {n: {"d_sae": d, **({"layer": self.layers[n]} if self.layers and n in self.layers else {}),
                             **({"value_limit": self.limits[n]} if self.limits and n in self.limits else {})}
                         for n, d in sorted(self.saes.items())},
                "default": [s.to_dict() for s in self._default] or None}

    def prepare(self, body: dict) -> dict:
        """The request body vLLM should see (a new dict; ``body`` is not modified)."""
        if not isinstance(body, dict):
            return body
        body = dict(body)
        xargs = body.get("vllm_xargs")
        if xargs is not None and not isinstance(xargs, dict):
            return body  # vLLM rejects it with its own message
        xargs = dict(xargs or {})
        xargs.pop(TAG, None)  # only the server tags and marks requests
        xargs.pop(WHOLE, None)
        given = [where for where, present in (("saesteer", "saesteer" in body), ("vllm_xargs.saesteer", "saesteer" in xargs)) if present]
        if len(given) == 2:
            raise SpecError("saesteer: given both as extra_body 'saesteer' and as vllm_xargs 'saesteer'; pass one")
        if given:
            spec = body.pop("saesteer") if given[0] == "saesteer" else xargs.pop("saesteer")
            specs = () if _explicit_none(spec) else parse_specs(spec, self.saes, self.layers, self.limits)
        else:
            specs = self._default
        if specs:
            xargs["saesteer"] = spec_key(specs)
            mark(xargs, specs)
            body["cache_salt"] = _salt(body.get("cache_salt"), specs)
            if any(s.reports for s in specs):
                tag = xargs[TAG] = uuid.uuid4().hex
                body["cache_salt"] = f"{body['cache_salt']}-{tag}"
        if xargs:
            body["vllm_xargs"] = xargs
        else:
            body.pop("vllm_xargs", None)
        return body


def _salt(user_salt, specs: tuple[SteerSpec, ...]) -> str:
    """The spec's prefix-cache salt, folded together with a salt the client gave (both isolate)."""
    if not isinstance(user_salt, str) or not user_salt:
        return spec_salt(specs)
    return "saesteer-" + hashlib.sha256((user_salt + "\0" + spec_key(specs)).encode()).hexdigest()[:32]


def error_body(err: Exception, status: int = 400) -> bytes:
    """An OpenAI-style error body (the ``openai`` client shows its ``message``)."""
    msg = str(err)
    param = msg.split(":", 1)[0] if ":" in msg else "saesteer"
    return json.dumps({"error": {"message": msg, "type": "BadRequestError", "param": param, "code": status}}).encode()


def parse_sae_args(items: list[str]) -> dict[str, str]:
    """``--sae NAME=SOURCE`` values (repeatable) -> {name: source}; a malformed or repeated name is a SpecError."""
    saes: dict[str, str] = {}
    for item in items:
        name, sep, src = item.partition("=")
        if not sep or not name or not src:
            raise SpecError(f"--sae: expected NAME=DIR or NAME=RELEASE:ID, got {item!r}")
        if name in saes:
            raise SpecError(f"--sae: the name {name!r} is registered twice")
        saes[name] = src
    return saes


def report_tag(body) -> str | None:
    """The report tag :meth:`ServerSteering.prepare` gave a request body (None: nothing to report)."""
    xargs = body.get("vllm_xargs") if isinstance(body, dict) else None
    return xargs.get(TAG) if isinstance(xargs, dict) else None


def add_reports(payload: dict, reports: list) -> dict:
    """A (non-streamed) completion response with each choice's report as ``choices[i].saesteer``."""
    for choice in payload.get("choices") or []:
        i = choice.get("index", 0)
        if isinstance(i, int) and 0 <= i < len(reports):
            choice["saesteer"] = reports[i]
    return payload


class SSEReports:
    """A streamed response's events rewritten: each chunk of a choice carries, as
    ``choices[i].saesteer``, what the workers read for it since its previous chunk (``progress(index)``,
    None: nothing new), and the chunk that ends a choice (its ``finish_reason`` set) its whole
    report (``fetch(index)``). Both are async functions of the choice index."""

    def __init__(self, fetch, progress=None):
        self.fetch = fetch
        self.progress = progress
        self.buf = b""

    async def feed(self, data: bytes, last: bool) -> bytes:
        """The rewritten bytes of the complete events in ``data`` (and what came before it); ``last``
        flushes the rest."""
        self.buf += data
        *events, self.buf = self.buf.split(b"\n\n")
        out = b"".join([(await self._event(e)) + b"\n\n" for e in events])
        if last and self.buf:
            out += await self._event(self.buf)
            self.buf = b""
        return out

    async def _event(self, event: bytes) -> bytes:
        if not event.startswith(b"data: ") or event.strip() == b"data: [DONE]":
            return event
        try:
            payload = json.loads(event[6:])
        except ValueError:
            return event
        changed = False
        for choice in payload.get("choices") or [] if isinstance(payload, dict) else []:
            if not isinstance(choice, dict):
                continue
            index = choice.get("index", 0)
            if choice.get("finish_reason") is not None:
                report = await self.fetch(index)
            elif self.progress is not None:
                report = await self.progress(index)
            else:
                continue
            if report is not None:
                choice["saesteer"] = report
                changed = True
        return b"data: " + json.dumps(payload).encode() if changed else event
