"""The websocket endpoint (/v1/stream): tokens one at a time, each with its probability.

One connection runs one generation at a time, as JSON text messages:

    client: {"prompt": "Once upon a time", "max_tokens": 64, "temperature": 0.8, "seed": 7,
             "logprobs": 5, "api_key": "..."}
            the completions API's sampling parameters (prompt, max_tokens, temperature,
            top_p, top_k, min_p, typical_p, repetition_penalty, no_repeat_ngram_size, stop,
            seed, logit_bias); `logprobs` is how many alternatives to send per token
            (default 5); `raw_probs` true gives the model's own probabilities instead of
            those the sampler drew from; `api_key` when the server has one and the client
            cannot send an Authorization header (a browser).
    server: {"type": "start", "seed": 7, "prompt_tokens": 4}
            {"type": "token", "text": " there", "tokens": [{"id": 262, "text": " there",
             "prob": 0.41, "top": [[" there", 0.41], [" the", 0.2], ...]}]}   (one per step)
            {"type": "done", "finish_reason": "length", "text": "...", "seed": 7,
             "completion_tokens": 64}
            finish_reason is tinygen's own (Completion.finish_reason): eos, stop, length or
            window, which the OpenAI routes fold into stop and length.
    A page from another origin than the server's is refused (HTTP 403, before the socket
    opens) unless the server allows it (ServerSettings.cors_origins, `--cors-origin`); so
    is a Host that is no loopback name at a keyless loopback server (access.page_refusal).
    client: {"type": "cancel"} stops the generation (then "done" with finish_reason "cancelled",
            the text sent until then and its tokens).
    server: {"type": "error", "error": {"message", "type", "param", "code"}} for a bad
            message; the connection stays open, except for a bad API key (closed, 1008). A
            message over twice the size limit is not read: uvicorn closes the connection (1009).

A token's "text" may be empty while a character's bytes are incomplete; the "text" of
the message is what can be shown. Closing the socket cancels the generation at once.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING

from starlette.websockets import WebSocket, WebSocketDisconnect

from . import openai_api as api
from .access import page_refusal
from .engine import GenerationFailed, RequestHandle, SequenceDone, SequencePiece
from .openai_api import ApiError, failure_error

if TYPE_CHECKING:
    from .app import Server

POLICY_VIOLATION = 1008


async def stream_socket(websocket: WebSocket, server: "Server") -> None:
    # Browsers let any page open a websocket anywhere (CORS does not cover them): a page on
    # another site would use this server as its visitor's, key or not, unless allowed.
    refusal = page_refusal(server.settings, websocket.headers, websocket.scope.get("server"))
    if refusal is not None:
        reason = "origin not allowed (--cors-origin)" if refusal.code == "origin_not_allowed" \
            else "host not allowed: use localhost, or --api-key"
        await websocket.close(code=POLICY_VIOLATION, reason=reason)
        return
    await websocket.accept()
    inbox = _Inbox()
    reader = asyncio.ensure_future(_read_all(websocket, inbox.queue))
    try:
        while (message := await inbox.get()) is not None:
            # Counted until answered: at shutdown uvicorn closes sockets at once (1012), so
            # server.py waits for their last reply (the error that says why) to go out first.
            server.sockets_answering += 1
            try:
                if not await _answer(websocket, server, message, inbox):
                    return
            finally:
                server.sockets_answering -= 1
    except (WebSocketDisconnect, OSError):
        return
    finally:
        reader.cancel()


async def _answer(websocket: WebSocket, server: "Server", message: dict, inbox: "_Inbox") -> bool:
    """Handle one message from the client; False when the connection is over."""
    try:
        data = _message_json(message, server.settings.max_body_bytes)
        if data.get("type") == "cancel":
            return True  # nothing is running
        try:
            server.check_key(websocket.headers, data.get("api_key"), socket=True)
        except ApiError as exc:
            await websocket.send_json({"type": "error", **exc.body()})
            await websocket.close(POLICY_VIOLATION)
            return False
        if data.get("type", "generate") != "generate":
            # As the client wrote it (JSON), cut short: Python's repr showed 'x' and {'a': 1}.
            raise ApiError(400, f"unknown message type {api._json(data.get('type'))}; send "
                                f"\"generate\" (or no type) or \"cancel\"", param="type")
        params = api.parse_completion(data, server.settings, server.model_id,
                                      server.generator.manifest.vocab_size, socket=True,
                                      default_max_tokens=server.generator.defaults.max_new_tokens)
        handle = await server.submit(params)
    except ApiError as exc:
        await websocket.send_json({"type": "error", **exc.body()})
        return True
    return await _generate(websocket, handle, inbox)


class _Inbox:
    """Every message the client sends, in order; None once it has gone."""

    def __init__(self):
        self.queue: asyncio.Queue = asyncio.Queue()
        self.pending: list = []  # taken from the queue but not yet handled

    async def get(self):
        return self.pending.pop(0) if self.pending else await self.queue.get()


async def _read_all(websocket: WebSocket, inbox: asyncio.Queue) -> None:
    try:
        while (message := await websocket.receive())["type"] != "websocket.disconnect":
            inbox.put_nowait(message)
    except (WebSocketDisconnect, OSError, RuntimeError):
        pass
    finally:
        inbox.put_nowait(None)


def _message_json(message: dict, limit: int) -> dict:
    raw = message.get("text")
    size = len(raw.encode()) if raw is not None else len(message.get("bytes") or b"")
    if size > limit:
        raise ApiError(413, f"the message is over the limit of {limit} bytes", code="request_too_large")
    if raw is None:
        raw = (message.get("bytes") or b"").decode("utf-8", "replace")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # RecursionError: [[[[...]]]]
        raise api.invalid_json("the message", exc) from None
    if not isinstance(data, dict):
        raise ApiError(400, "the message must be a JSON object", code="invalid_json")
    return data


async def _generate(websocket: WebSocket, handle: RequestHandle, inbox: _Inbox) -> bool:
    """Send one generation's messages; False when the client went away (the request is cancelled)."""
    seed = handle.seeds[0]
    await websocket.send_json({"type": "start", "seed": seed, "prompt_tokens": handle.prompt_lengths[0]})
    incoming = asyncio.ensure_future(inbox.get())
    event = asyncio.ensure_future(handle.next_event())
    message = None  # the last message handled here
    sent, tokens = [], 0  # the text sent so far and its tokens: a cancelled generation's
    try:
        while True:
            await asyncio.wait({incoming, event}, return_when=asyncio.FIRST_COMPLETED)
            if incoming.done():
                message = incoming.result()
                if message is None:
                    return False
                if _is_cancel(message):
                    handle.cancel()
                    await websocket.send_json({"type": "done", "finish_reason": "cancelled",
                                               "text": "".join(sent), "seed": seed,
                                               "completion_tokens": tokens})
                    return True
                await websocket.send_json({"type": "error", **ApiError(
                    409, "one generation at a time: wait for 'done' or send {\"type\": \"cancel\"}",
                    code="busy").body()})
                incoming = asyncio.ensure_future(inbox.get())
                continue
            try:
                result = event.result()
            except GenerationFailed as exc:
                await websocket.send_json({"type": "error", **failure_error(exc).body()})
                return True
            if result is None:  # cancelled
                return True
            if isinstance(result, SequencePiece):
                sent.append(str(result.piece))
                tokens += len(result.piece.token_probs)
                await websocket.send_json({"type": "token", "text": sent[-1],
                                           "tokens": [_token(tp) for tp in result.piece.token_probs]})
            elif isinstance(result, SequenceDone):
                completion = result.completion
                await websocket.send_json({"type": "done", "finish_reason": completion.finish_reason,
                                           "text": str(completion), "seed": completion.seed,
                                           "completion_tokens": len(completion.token_ids)})
                return True
            event = asyncio.ensure_future(handle.next_event())
    finally:
        handle.cancel()
        event.cancel()
        if incoming.done() and not incoming.cancelled():
            if incoming.result() is not message:  # arrived as the generation ended: handle it next
                inbox.pending.append(incoming.result())
        else:
            incoming.cancel()


def _is_cancel(message: dict) -> bool:
    try:
        return json.loads(message.get("text") or message.get("bytes") or b"{}").get("type") == "cancel"
    except (ValueError, AttributeError, RecursionError):  # RecursionError: [[[[...]]]]
        return False


def _token(tp) -> dict:
    return {"id": tp.token_id, "text": tp.text, "prob": tp.prob, "top": [list(t) for t in tp.top]}
