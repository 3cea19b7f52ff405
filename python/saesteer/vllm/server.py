"""``saesteer serve``: vLLM's OpenAI-compatible server with per-request SAE edits.

    saesteer serve --model organism                               # the built-in organism + its SAEs
    saesteer serve --model google/gemma-2-2b-it \\
        --sae l20=gemma-scope-2b-pt-res-canonical:layer_20/width_16k/canonical --port 8000
    saesteer serve --model DIR --sae mine=path/to/sae --steer spec.json --tensor-parallel-size 2

Every vLLM ``serve`` flag works (they are vLLM's own parser's). The server is vLLM's: this module
adds :class:`saesteer.vllm.WorkerExtension` to every worker, loads the ``--sae`` SAEs there once the
engine is up, and puts one ASGI middleware in front of ``/v1/chat/completions`` and
``/v1/completions`` that validates each request's spec (400 naming the field), applies the server
default and salts the prefix cache (:class:`saesteer.vllm.requests.ServerSteering`). Two routes:
``GET /v1/saesteer`` (the SAEs and the default) and ``PUT /v1/saesteer/default`` (switch the
default at run time; the body is a spec, a list of specs, or ``null``).
"""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from ..steering.spec import from_spec_file
from .graphs import cuda_graph_settings
from .overrides import steered_overrides
from .reports import choice_key
from .requests import ServerSteering, SpecError, SSEReports, add_reports, error_body, parse_sae_args, report_tag
from .scheduling import check_scheduler_cls, guard_prompt_budget, step_budget
from .sources import sae_site, site_layer, source_dir
from .worker import EXTENSION

__all__ = ["main", "build_parser", "SteeringMiddleware", "add_routes"]

STEERED_PATHS = ("/v1/chat/completions", "/v1/completions")


class SteeringMiddleware:
    """Pure ASGI middleware: rewrites the JSON body of completion requests through
    :meth:`ServerSteering.prepare`, or answers 400 when the spec is bad (nothing reaches vLLM).

    A steered request gets an ``X-Request-Id`` (the client's, else a fresh one), which vLLM puts in
    its engine request ids. When it ends, ``failures`` (the workers' :meth:`WorkerExtension.
    saesteer_failures`) says whether its edit produced non-finite hidden states; if so the client
    gets a 400 naming ``saesteer`` instead of the reply (streamed: an error event before
    ``[DONE]``). A request whose spec has a ``when`` or an ``inspect`` gets the workers' report
    (``fetch``: :meth:`WorkerExtension.saesteer_reports`) in each choice, as ``choices[i].saesteer``;
    streamed, each chunk also carries what was read since the previous one (``progress``:
    :meth:`WorkerExtension.saesteer_progress`)."""

    def __init__(self, app, steering: ServerSteering, failures=None, fetch=None, progress=None):
        self.app = app
        self.steering = steering
        self.failures = failures  # async () -> {engine request id: message}
        self.fetch = fetch  # async (items) -> the workers' reports (WorkerExtension.saesteer_reports)
        self.progress = progress  # async (items) -> what they read since (WorkerExtension.saesteer_progress)
        self._failed: dict[str, str] = {}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") != "POST" or scope.get("path") not in STEERED_PATHS:
            return await self.app(scope, receive, send)
        chunks = []
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            chunks.append(msg.get("body", b""))
            if not msg.get("more_body", False):
                break
        raw = b"".join(chunks)
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            body = None  # not JSON: vLLM answers it with its own error
        steered = False
        tag = None
        if isinstance(body, dict):
            try:
                body = self.steering.prepare(body)
            except SpecError as e:
                return await _respond(send, 400, error_body(e))
            steered = "saesteer" in (body.get("vllm_xargs") or {})
            raw = json.dumps(body).encode()
            tag = report_tag(body) if self.fetch is not None else None
            n = body.get("n") if isinstance(body.get("n"), int) and body.get("n") > 0 else 1
        headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(raw)).encode()))
        if steered and self.failures is not None:
            rid = next((v.decode() for k, v in headers if k.lower() == b"x-request-id"), None)
            if not rid:
                rid = uuid.uuid4().hex
                headers.append((b"x-request-id", rid.encode()))
            send = self._reporting(send, rid)
        scope = dict(scope, headers=headers)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": raw, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send if tag is None else self._with_reports(send, tag, n))

    def _with_reports(self, send, tag: str, n: int = 1):
        """``send`` with the request's reports added to its response: each choice of a JSON response,
        or each chunk of a stream (see :mod:`saesteer.vllm.requests`). Choice ``i`` is completion
        ``i % n`` of prompt ``i // n``."""
        fetch, progress = self.fetch, self.progress
        state = {"mode": None, "start": None, "body": b""}

        def item(index: int) -> tuple[str, int, int]:
            return (tag, *divmod(index, n))

        async def one(index: int):
            return (await fetch([item(index)])).get(choice_key(*item(index)))

        async def since(index: int):
            return (await progress([item(index)])).get(choice_key(*item(index)))

        sse = SSEReports(one, since if progress is not None else None)

        async def wrapped(msg):
            if msg["type"] == "http.response.start":
                ctype = dict(msg.get("headers", [])).get(b"content-type", b"")
                if msg.get("status") != 200:
                    state["mode"] = "pass"
                elif b"text/event-stream" in ctype:
                    state["mode"] = "sse"
                else:
                    state["mode"], state["start"] = "json", msg  # sent with the new length at the end
                    return
                return await send(msg)
            if msg["type"] != "http.response.body" or state["mode"] == "pass":
                return await send(msg)
            more = msg.get("more_body", False)
            if state["mode"] == "sse":
                return await send(dict(msg, body=await sse.feed(msg.get("body", b""), not more)))
            state["body"] += msg.get("body", b"")
            if more:
                return
            body = state["body"]
            try:
                payload = json.loads(body)
                reports = (await fetch([tag])).get(tag, [])
                body = json.dumps(add_reports(payload, reports)).encode()
            except ValueError:
                pass
            start = state["start"]
            headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
            headers.append((b"content-length", str(len(body)).encode()))
            await send(dict(start, headers=headers))
            await send({"type": "http.response.body", "body": body, "more_body": False})

        return wrapped

    async def _failure(self, rid: str) -> str | None:
        """The failure message of the engine requests of client request ``rid``, if its edit failed."""
        self._failed.update(await self.failures())
        mine = [k for k in self._failed if rid in k]
        msgs = [self._failed.pop(k) for k in mine]
        if len(self._failed) > 4096:  # requests whose clients left before they ended
            self._failed.clear()
        return msgs[0] if msgs else None

    def _reporting(self, send, rid: str):
        """``send`` that replaces the reply of a request whose edit failed by an error."""
        held: list[dict] = []
        streaming = False

        async def reporting_send(msg):
            nonlocal streaming
            if msg["type"] == "http.response.start":
                ctype = dict((k.lower(), v) for k, v in msg.get("headers", [])).get(b"content-type", b"")
                streaming = ctype.startswith(b"text/event-stream")
                if streaming or msg.get("status") != 200:
                    streaming = True  # passed through as it comes
                    return await send(msg)
                held.append(msg)
                return
            if msg["type"] != "http.response.body":
                return await send(msg)
            if streaming:
                body = msg.get("body", b"")
                if b"data: [DONE]" in body and (err := await self._failure(rid)):
                    body = body.replace(b"data: [DONE]", b"data: " + error_body(SpecError(err)) + b"\n\ndata: [DONE]")
                    msg = dict(msg, body=body)
                return await send(msg)
            held.append(msg)
            if msg.get("more_body", False):
                return
            err = await self._failure(rid)
            if err:
                return await _respond(send, 400, error_body(SpecError(err)))
            for m in held:
                await send(m)

        return reporting_send


async def _respond(send, status: int, body: bytes):
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def add_routes(app, steering: ServerSteering, failures=None, fetch=None, progress=None) -> None:
    """``GET /v1/saesteer`` and ``PUT /v1/saesteer/default`` on a FastAPI app, plus the middleware
    (``failures``, ``fetch`` and ``progress``: see :class:`SteeringMiddleware`)."""
    async def describe():
        return JSONResponse(steering.describe())

    async def set_default(request: Request):
        try:
            steering.set_default_json(await request.body())
        except SpecError as e:
            return Response(error_body(e), 400, media_type="application/json")
        return JSONResponse(steering.describe())

    app.add_api_route("/v1/saesteer", describe, methods=["GET"])
    app.add_api_route("/v1/saesteer/default", set_default, methods=["PUT", "POST"])
    # vLLM's app has built its middleware stack by now (add_middleware is refused after that), so
    # the steering middleware wraps the built stack: it is the outermost layer.
    stack = app.middleware_stack or app.build_middleware_stack()
    app.middleware_stack = SteeringMiddleware(stack, steering, failures, fetch, progress)


def _read_default(text: str | None):
    """``--steer``: JSON text, or a file with a spec (discover's ``spec.json``: see :func:`from_spec_file`)."""
    if text is None:
        return None
    p = Path(text)
    if not text.lstrip().startswith(("{", "[")) and p.is_file():
        try:
            return json.loads(p.read_text())
        except ValueError as e:
            raise SpecError(f"--steer: {p} is not JSON ({e})") from None
    try:
        return json.loads(text)
    except ValueError:
        raise SpecError(f"--steer: {text!r} is neither a spec file nor JSON") from None


def build_parser():
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(
        prog="saesteer serve",
        description="vLLM's OpenAI-compatible server with per-request SAE feature edits. "
        "A request carries its edit as extra_body={'vllm_xargs': {'saesteer': json.dumps(spec)}}.",
    )
    parser = make_arg_parser(parser)
    parser.add_argument("--sae", action="append", default=[], metavar="NAME=DIR|RELEASE:ID",
                        help="register an SAE (repeatable): an sae-lens directory, an sae-lens "
                        "release:id, or organism:NAME. Default on the organism: its SAEs.")
    parser.add_argument("--steer", default=None, metavar="SPEC",
                        help="the default edit (JSON or a spec.json file) for requests that name none; "
                        "switch it at run time with PUT /v1/saesteer/default")
    parser.set_defaults(model="organism")
    return parser


def resolve(args) -> tuple[dict[str, str], object]:
    """Fill in the model, the worker extension and the SAEs; returns (saes, default spec). Raises
    SpecError before anything loads."""
    if getattr(args, "model_tag", None):
        args.model = args.model_tag
    saes = parse_sae_args(args.sae)
    if args.model == "organism":
        from ..organism import read_manifest

        root, manifest, dirs = read_manifest()
        args.model = str(root / manifest.get("model_dir", "model"))
        if not args.served_model_name:
            args.served_model_name = ["organism"]
        if not saes:
            saes = {name: f"organism:{name}" for name in dirs}
    if not saes:
        raise SpecError("--sae: register at least one SAE (NAME=DIR, NAME=RELEASE:ID or NAME=organism:NAME)")
    if args.worker_extension_cls not in ("", None, EXTENSION):
        raise SpecError(f"--worker-extension-cls: saesteer serve needs {EXTENSION}, got {args.worker_extension_cls!r}")
    args.worker_extension_cls = EXTENSION
    args.scheduler_cls = check_scheduler_cls(getattr(args, "scheduler_cls", None), "--scheduler-cls")
    if getattr(args, "api_server_count", None) not in (None, 1):
        raise SpecError("--api-server-count: saesteer serve runs one API server process (the default steering lives there)")
    args.api_server_count = 1
    if getattr(args, "headless", False):
        raise SpecError("--headless: run the headless nodes with vLLM's own `vllm serve --headless "
                        f"--worker-extension-cls {EXTENSION}`; saesteer serve is the API node")
    return saes, from_spec_file(_read_default(args.steer), saes, resolve=source_dir)


def check_saes(args, saes: dict[str, str], default) -> dict[str, int]:
    """Read every SAE's cfg.json (the workers read the weights), check the default spec against them
    and set ``args.hf_overrides`` so that the model is built with the graph hooks on their layers.
    Returns name -> the layer each SAE reads. Raises SpecError before the engine starts."""
    sites = {name: sae_site(src) for name, src in saes.items()}
    layers = {name: site_layer(name, hook) for name, (_, hook) in sites.items()}
    try:  # the server edits at each SAE's own layer: a spec file made for another layer is refused
        ServerSteering({name: d_sae for name, (d_sae, _) in sites.items()}, default, layers)
    except SpecError as e:
        raise SpecError(f"--steer: {e}") from None
    args.hf_overrides = steered_overrides(args.model, list(layers.values()), getattr(args, "hf_overrides", None),
                                          getattr(args, "trust_remote_code", False))
    cuda_graph_settings(vars(args))
    # Headless nodes of a multi-node run need the same overrides to build the same model.
    print(f"saesteer serve: --hf-overrides '{json.dumps(args.hf_overrides)}'", file=sys.stderr)
    return layers


async def serve(args, saes: dict[str, str], default, layers: dict[str, int]) -> None:
    """vLLM's single-API-server flow with saesteer's SAEs installed on the workers and its routes on the app."""
    from vllm.entrypoints.launchers.api_server import entry
    from vllm.entrypoints.launchers.launcher import setup_server

    listen_address, sock = setup_server(args, reuse_port=False)
    async with entry.build_async_engine_client(args) as engine:
        shapes = (await engine.collective_rpc("saesteer_install", args=(saes,)))[0]
        guard_prompt_budget(engine.input_processor, step_budget(engine.vllm_config))
        limits = (await engine.collective_rpc("saesteer_value_limits"))[0]
        try:
            steering = ServerSteering(shapes, default, layers, limits)
        except SpecError as e:
            raise SystemExit(f"saesteer serve: error: --steer: {e}") from None
        build_app = entry.build_app

        async def failures():
            return (await engine.collective_rpc("saesteer_failures"))[0]

        async def fetch(items):
            # The workers' reports go back through vLLM's own utility call (one engine-core RPC,
            # answered between two steps), after the request's last token: the report is complete.
            return (await engine.collective_rpc("saesteer_reports", args=(items,)))[0]

        async def progress(items):
            return (await engine.collective_rpc("saesteer_progress", args=(items,)))[0]

        def build_steered_app(*a, **k):
            app = build_app(*a, **k)
            add_routes(app, steering, failures, fetch, progress)
            return app

        entry.build_app = build_steered_app  # build_and_serve looks it up in its own module
        try:
            shutdown = await entry.build_and_serve(engine, listen_address, sock, args)
        finally:
            entry.build_app = build_app
    try:
        await shutdown
    finally:
        sock.close()


_DTYPE_BYTES = {"float32": 4, "float": 4, "float16": 2, "half": 2, "bfloat16": 2}
_MEMORY_FLAGS = ("--gpu-memory-utilization", "--kv-cache-memory-bytes", "--kv-cache-memory")


def _given(argv: list[str], flags) -> bool:
    """One of ``flags`` is on the command line (``--flag V``, ``--flag=V``, underscores too)."""
    norm = [a.split("=", 1)[0].replace("_", "-") for a in argv if a.startswith("--")]
    return any(f in norm for f in flags)


def kv_cache_bytes(model: str, max_model_len: int | None, max_num_seqs: int | None, dtype: str | None,
                   available: int, trust_remote_code: bool = False) -> tuple[int, str]:
    """The KV cache for a CPU engine: room for ``max_num_seqs`` (default 256, vLLM's) sequences of
    ``max_model_len`` tokens (default: the model's context), at most half of the ``available`` RAM,
    and at least one full sequence. Returns (bytes, how it was chosen)."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code)
    cfg = getattr(cfg, "text_config", None) or cfg
    heads = getattr(cfg, "num_attention_heads")
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    if dtype in (None, "auto"):
        dtype = str(getattr(cfg, "dtype", None) or getattr(cfg, "torch_dtype", None) or "float32")
    itemsize = _DTYPE_BYTES.get(str(dtype).replace("torch.", ""), 4)  # unknown: the widest vLLM runs on a CPU
    per_token = 2 * cfg.num_hidden_layers * kv_heads * head_dim * itemsize
    length = max_model_len or getattr(cfg, "max_position_embeddings", None) or 2048
    seqs = max_num_seqs or 256
    want = per_token * length * seqs
    size = int(max(min(want, available // 2), per_token * length))
    how = (f"{size / 2**30:.2f} GiB = {size // per_token} tokens of {per_token} B (room for {seqs} sequences of "
           f"{length} tokens, at most half of the {available / 2**30:.1f} GiB available)")
    return size, how


def size_cpu_kv_cache(args, argv: list[str]) -> None:
    """On a CPU, where vLLM reserves ``--gpu-memory-utilization`` (0.92) of all RAM and refuses to
    start when less is free, set ``--kv-cache-memory-bytes`` to what the model needs
    (:func:`kv_cache_bytes`) and print it, unless the user chose one of the two."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu() or _given(argv, _MEMORY_FLAGS):
        return
    import psutil

    size, how = kv_cache_bytes(args.model, getattr(args, "max_model_len", None), getattr(args, "max_num_seqs", None),
                               getattr(args, "dtype", None), psutil.virtual_memory().available,
                               getattr(args, "trust_remote_code", False))
    args.kv_cache_memory_bytes = size
    print(f"saesteer serve: KV cache {how}; choose another with --kv-cache-memory-bytes or "
          "--gpu-memory-utilization", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    import uvloop
    from vllm.entrypoints.launchers.cli_args import validate_parsed_serve_args
    from vllm.entrypoints.serve.utils.api_utils import cli_env_setup
    from vllm.logger import configure_logging_from_args

    cli_env_setup()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    try:
        saes, default = resolve(args)
        layers = check_saes(args, saes, default)
        size_cpu_kv_cache(args, argv)
    except (SpecError, FileNotFoundError, ImportError, RuntimeError) as e:
        print(f"saesteer serve: error: {e}", file=sys.stderr)
        return 2
    configure_logging_from_args(args)
    validate_parsed_serve_args(args)
    uvloop.run(serve(args, saes, default, layers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
