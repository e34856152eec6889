"""The HTTP server: an ASGI app (Starlette) over one Engine.

    GET  /                 the playground page (static/playground.html)
    GET  /v1/models        OpenAI's model list: the one model served
    POST /v1/completions   OpenAI's completions, streamed as server-sent events with stream: true
    WS   /v1/stream        one token at a time with its probabilities (websocket.py)
    GET  /health           liveness, load and the engine's counters (no key needed)

Every refusal is a 4xx with OpenAI's error body {"error": {message, type, param, code}}:
a bad or missing API key (401), malformed JSON or a bad parameter (400), an unknown
model (404), a body over the size limit (413), a full queue (429). A bug is a 500 with
the same body; the server goes on serving.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import asdict
from importlib.resources import files
from typing import TYPE_CHECKING, AsyncIterator

from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Route, WebSocketRoute

from ..errors import PromptTooLong, TinygenError
from . import openai_api as api
from .access import page_refusal
from .engine import Engine, EngineBusy, GenerationFailed, RequestHandle, SequenceDone, SequencePiece
from .openai_api import ApiError, failure_error
from .settings import ServerSettings
from .websocket import stream_socket

if TYPE_CHECKING:
    from ..generator import TextGenerator

logger = logging.getLogger("tinygen.serving")


class Server:
    """What the routes share: the engine, the settings, the model's id."""

    def __init__(self, generator: "TextGenerator", settings: ServerSettings):
        self.generator, self.settings = generator, settings.validated()
        self.model_id = self.settings.model_id(generator.model_dir)
        self.engine = Engine(generator, max_batch=settings.max_batch, max_waiting=settings.max_waiting)
        self.sockets_answering = 0  # websocket messages not yet answered (websocket.py)

    def check_key(self, headers, supplied: str | None = None, socket: bool = False) -> None:
        """Raise 401 unless the Bearer token or `supplied` (a websocket message's api_key,
        which a browser sends, as it cannot set headers there) is the key."""
        key = self.settings.api_key
        if key is None:
            return
        scheme, _, token = headers.get("authorization", "").partition(" ")
        given = [token.strip()] if scheme.lower() == "bearer" else []
        if isinstance(supplied, str):
            given.append(supplied)
        # Every one compared, so the time taken does not tell which was tried. surrogatepass:
        # a message's api_key may hold JSON's "\udce9", which is a wrong key, not a crash.
        if not sum(hmac.compare_digest(g.encode("utf-8", "surrogatepass"), key.encode())
                   for g in given):
            how = ("put it in the message's api_key field (the playground's key box), or send "
                   "'Authorization: Bearer <key>'" if socket else "send 'Authorization: Bearer <key>'")
            raise ApiError(401, f"missing or incorrect API key: {how}", code="invalid_api_key")

    async def submit(self, request: api.CompletionRequest) -> RequestHandle:
        try:
            # Tokenizing a long prompt takes a while (a second for a megabyte): off the event
            # loop, so other clients' streams do not stall; the engine then takes the ids.
            prompts = await asyncio.to_thread(self.generator.prompts.encode, request.prompt)
        except PromptTooLong as exc:  # OpenAI's name for it, which clients look for
            raise ApiError(400, str(exc), param="prompt", code="context_length_exceeded") from None
        except TinygenError as exc:  # e.g. a token id outside the vocabulary
            raise ApiError(400, str(exc), param="prompt") from None
        try:
            return self.engine.submit(prompts, n=request.n, seed=request.seed, **request.options)
        except EngineBusy as exc:
            raise ApiError(429, str(exc), type="rate_limit_error", code="server_busy") from None
        except PromptTooLong as exc:
            raise ApiError(400, str(exc), param="prompt", code="context_length_exceeded") from None
        except TinygenError as exc:  # an option the library refused, in this API's names
            raise api.library_error(exc) from None
        except GenerationFailed as exc:
            raise ApiError(503, str(exc), type="server_error") from None


def create_app(generator: "TextGenerator", settings: ServerSettings | None = None) -> Starlette:
    """The ASGI app serving `generator`; its engine thread starts with the app (or the first request)."""
    server = Server(generator, settings or ServerSettings())

    @asynccontextmanager
    async def lifespan(app):
        server.engine.start()
        try:
            yield
        finally:
            server.engine.close()

    async def playground(request: Request) -> Response:
        return HTMLResponse(_playground_html())

    async def health(request: Request) -> Response:
        engine = server.engine
        return JSONResponse({"status": "ok", "model": server.model_id, "active": engine.active,
                             "waiting": engine.waiting, "stats": asdict(engine.stats)})

    async def models(request: Request) -> Response:
        server.check_key(request.headers)
        return JSONResponse({"object": "list", "data": [_model_card(server)]})

    async def model(request: Request) -> Response:
        server.check_key(request.headers)
        if request.path_params["model"] != server.model_id:
            raise ApiError(404, f"the model '{request.path_params['model']}' does not exist",
                           param="model", code="model_not_found")
        return JSONResponse(_model_card(server))

    async def completions(request: Request) -> Response:
        server.check_key(request.headers)
        body = await _read_json(request, server.settings.max_body_bytes)
        params = api.parse_completion(body, server.settings, server.model_id, generator.manifest.vocab_size,
                                      default_max_tokens=generator.defaults.max_new_tokens)
        handle = await server.submit(params)  # checks the prompts first
        prompts = _prompt_texts(generator, params) if params.echo else []
        if params.stream:
            return StreamingResponse(_sse(server, params, handle, prompts), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            completions = await _until_done(request, handle)
        except GenerationFailed as exc:
            raise failure_error(exc) from None
        if completions is None:  # the client went away; nobody will read a reply
            return Response(status_code=499)
        choices = [api.full_choice(i, c, prompts[i // params.n] if params.echo else "",
                                   params.logprobs is not None) for i, c in enumerate(completions)]
        usage = api.usage(sum(handle.prompt_lengths[::params.n]), sum(len(c.token_ids) for c in completions))
        return JSONResponse(api.completion_body(api.new_id(), server.model_id, choices, usage))

    async def socket(websocket) -> None:
        await stream_socket(websocket, server)

    # Browser pages on other origins may call the API only where --cors-origin allows them;
    # those pages' clients send headers of their own (the OpenAI SDKs' x-stainless-*).
    cors = [Middleware(CORSMiddleware, allow_origins=list(server.settings.cors_origins),
                       allow_methods=["GET", "POST"], allow_headers=["*"])
            ] if server.settings.cors_origins else []
    app = Starlette(
        # The gate first: a page's preflight it refuses gets its 403 in OpenAI's shape, not
        # CORSMiddleware's plain-text 400.
        middleware=[Middleware(OriginGate, settings=server.settings), *cors],
        routes=[
            Route("/", playground, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/models/{model:path}", model, methods=["GET"]),
            Route("/v1/completions", completions, methods=["POST"]),
            WebSocketRoute("/v1/stream", socket),
        ],
        exception_handlers={ApiError: _api_error, HTTPException: _http_error, Exception: _server_error},
        lifespan=lifespan,
    )
    app.state.server = server  # the engine is app.state.server.engine (its stats, for tests and tools)
    return app


class OriginGate:
    """Refuses a request from a web page of an origin the server does not allow (403).

    CORS only keeps such a page from reading the reply: a "simple" request (a POST sent as
    text/plain) still runs, so any site a user visits could make a local server generate.
    Requests with no Origin (scripts, curl, the OpenAI client) pass, as at the websocket.
    A keyless server on loopback also refuses other names than loopback ones in the Host
    header (ServerSettings.host_allowed): a rebound name makes a foreign page same-origin.
    """

    def __init__(self, app, settings: ServerSettings):
        self.app, self.settings = app, settings

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            error = page_refusal(self.settings, Headers(scope=scope), scope.get("server"))
            if error is not None:
                await JSONResponse(error.body(), status_code=403)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _model_card(server: Server) -> dict:
    return {"id": server.model_id, "object": "model", "created": 0, "owned_by": "tinygen",
            "context_window": server.generator.manifest.context_window}


def _playground_html() -> str:
    return (files("tinygen.serving") / "static" / "playground.html").read_text(encoding="utf-8")


def _prompt_texts(generator: "TextGenerator", params: api.CompletionRequest) -> list[str]:
    """Each prompt as text (for echo)."""
    prompt = params.prompt
    prompts = [prompt] if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)) else prompt
    return [p if isinstance(p, str) else generator.tokenizer.decode(list(p)) for p in prompts]


async def _read_json(request: Request, limit: int) -> dict:
    """The body as a JSON object, refusing more than `limit` bytes before reading them all."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > limit):
        raise ApiError(413, f"the request body is over the limit of {limit} bytes", code="request_too_large")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise ApiError(413, f"the request body is over the limit of {limit} bytes",
                               code="request_too_large")
    except ClientDisconnect:  # gone before the whole body came: no internal error to log
        raise ApiError(499, "the client closed the connection before sending the whole body",
                       code="client_closed_request") from None
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: [[[[...]]]]
        raise api.invalid_json("the body", exc) from None
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object", code="invalid_json")
    return data


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone away (the body has been read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _until_done(request: Request, handle: RequestHandle):
    """The request's completions, or None (and the request cancelled) if the client leaves first."""
    result = asyncio.ensure_future(handle.completions())
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({result, gone}, return_when=asyncio.FIRST_COMPLETED)
        if result.done():
            return result.result()
        return None
    finally:
        gone.cancel()
        handle.cancel()  # a no-op once done; frees the rows when the client left
        if not result.done():
            result.cancel()


async def _sse(server: Server, params: api.CompletionRequest, handle: RequestHandle,
               prompts: list[str]) -> AsyncIterator[str]:
    """OpenAI's stream: one chunk per piece of text, a last one per choice, then [DONE].

    Starlette cancels this generator when the client disconnects; `finally` then frees
    the request's rows in the engine.
    """
    request_id, model_id, created = api.new_id(), server.model_id, int(time.time())

    def chunk(choices: list[dict], usage: dict | None = None) -> str:  # one `created`, as OpenAI's
        body = api.completion_body(request_id, model_id, choices, usage, created=created)
        if params.include_usage:  # as OpenAI's: every chunk has the field, null but the last
            body["usage"] = usage
        return f"data: {json.dumps(body)}\n\n"

    offsets = {}  # per choice, where its next token starts in the text (logprobs' text_offset)
    try:
        if params.echo:
            for i in range(len(handle.seeds)):
                offsets[i] = len(prompts[i // params.n])
                yield chunk([api.choice(i, prompts[i // params.n], None, handle.seeds[i])])
        completion_tokens = 0
        async for event in handle.events():
            if isinstance(event, SequencePiece):
                piece, i = event.piece, event.index
                logprobs = None
                if params.logprobs is not None:
                    logprobs = api.logprobs_block(piece.token_probs, offsets.get(i, 0))
                # The tokens' texts, as a full reply counts them: a piece may show only part
                # of its tokens' text yet (the start of a stop string is held back).
                offsets[i] = offsets.get(i, 0) + sum(len(tp.text) for tp in piece.token_probs)
                yield chunk([api.choice(i, str(piece), None, handle.seeds[i], logprobs)])
            elif isinstance(event, SequenceDone):
                completion_tokens += len(event.completion.token_ids)
                yield chunk([api.choice(event.index, "", event.completion.finish_reason,
                                        handle.seeds[event.index])])
        if params.include_usage:
            yield chunk([], api.usage(sum(handle.prompt_lengths[::params.n]), completion_tokens))
        yield "data: [DONE]\n\n"
    except GenerationFailed as exc:
        yield f"data: {json.dumps(failure_error(exc).body())}\n\n"
    finally:
        handle.cancel()


async def _api_error(request: Request, exc: ApiError) -> Response:
    headers = {"Retry-After": "1"} if exc.status == 429 else None
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


async def _http_error(request: Request, exc: HTTPException) -> Response:
    message = exc.detail or "error"
    if exc.status_code == 404 and request.url.path.rstrip("/") == "/v1/chat/completions":
        # What an OpenAI client tries first: say what this server has instead.
        message = ("this server has no chat completions (its model completes text): "
                   "use POST /v1/completions")
    error = ApiError(exc.status_code, message, code="not_found" if exc.status_code == 404 else None)
    return JSONResponse(error.body(), status_code=exc.status_code, headers=exc.headers)


async def _server_error(request: Request, exc: Exception) -> Response:
    logger.error("internal error on %s", request.url.path, exc_info=exc)
    return JSONResponse(ApiError(500, "internal server error", type="server_error").body(), status_code=500)
