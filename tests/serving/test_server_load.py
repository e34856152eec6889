"""The server under misbehaving clients: ones that give up while queued, and a shutdown while
websockets stream or clients read slowly or not at all."""

import asyncio
import gc
import json
import logging
import signal
import socket
import threading
import time
import weakref
from contextlib import contextmanager, suppress

import pytest

from tinygen.serving import ServerSettings
from tinygen.serving.engine import Engine, GenerationFailed, SequencePiece


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 60))


@pytest.mark.parametrize("continuous", [True, False])
def test_requests_that_leave_the_queue_free_their_place_at_once(gpt2_gen, continuous):
    """Clients that time out while queued (and retry) piled up in the queue, each with its
    sequences, until the batch ended (static batches) or the request ahead of them joined."""
    engine = Engine(gpt2_gen, max_batch=2, max_waiting=4, continuous=continuous)

    async def main():
        first = engine.submit("Once", n=2, seed=1, max_new_tokens=4000, stop_at_eos=False)
        await first.next_event()
        ahead = engine.submit("To be", seed=1, max_new_tokens=5)  # waits for the batch
        gone = []
        for i in range(50):
            handle = engine.submit("The quick brown fox", n=2, seed=i)
            handle.cancel()  # its client left
            gone.append(weakref.ref(handle))
        del handle
        gc.collect()
        left_behind = sum(ref() is not None for ref in gone)
        waiting = engine.waiting
        first.cancel()
        return left_behind, waiting, await ahead.completions()

    try:
        left_behind, waiting, [text] = run(main())
    finally:
        engine.close()
    assert left_behind == 0 and waiting == 1
    assert text.token_ids == gpt2_gen.generate("To be", seed=1, max_new_tokens=5)[0].token_ids


def test_at_shutdown_the_error_overtakes_the_text_a_slow_reader_has_not_taken(gpt2_gen):
    """The error came after every piece still queued: a client reading slowly got it only
    after its backlog, if at all before uvicorn gave up waiting."""
    engine = Engine(gpt2_gen)

    async def main():
        handle = engine.submit("Once", seed=1, max_new_tokens=4000, stop_at_eos=False)
        assert isinstance(await handle.next_event(), SequencePiece)
        await asyncio.sleep(0.3)  # the reader falls behind: pieces pile up
        await asyncio.get_running_loop().run_in_executor(None, engine.close)
        await asyncio.sleep(0)
        pieces = 0
        with pytest.raises(GenerationFailed, match="shutting down"):
            while await handle.next_event() is not None:
                pieces += 1
        return pieces, engine.stats.tokens

    pieces, tokens = run(main())
    assert pieces == 0 and tokens > 10


@contextmanager
def tinygen_serve(generator, settings, send_buffer: int | None = None):
    """`tinygen serve`'s uvicorn server (server.uvicorn_server) in a thread; yields (port, exit,
    thread) where exit() does what Ctrl-C does. uvicorn looks at should_exit every 0.1 s; here,
    once exit() is called, at every turn of the event loop: a shutdown starts as soon as it can.
    send_buffer: the SO_SNDBUF of the connections, so that a client that reads nothing stalls."""
    uvicorn = pytest.importorskip("uvicorn")
    pytest.importorskip("starlette")
    from tinygen.serving.app import create_app
    from tinygen.serving.server import uvicorn_server

    app = create_app(generator, settings)
    # log_config None: uvicorn's records reach the root logger, so caplog sees them.
    server = uvicorn_server(app, uvicorn.Config(app, log_config=None, timeout_graceful_shutdown=2))
    loops, eager = [], []

    async def main_loop():
        eager.append(asyncio.Event())
        loops.append(asyncio.get_running_loop())
        while not await server.on_tick(0):
            with suppress(asyncio.TimeoutError):
                await asyncio.wait_for(eager[0].wait(), 0.05)

    server.main_loop = main_loop

    def exit_now():  # on the loop, as a signal handler runs
        eager[0].set()
        server.handle_exit(signal.SIGINT, None)

    sock = socket.socket()
    if send_buffer:  # the connections it accepts inherit it (Linux)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not (server.started and loops):
        assert time.monotonic() < deadline and thread.is_alive(), "the test server did not start"
        time.sleep(0.02)
    try:
        yield port, lambda: loops[0].call_soon_threadsafe(exit_now), thread
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()
    assert not thread.is_alive()


def test_websockets_in_flight_get_the_shutdown_error_before_the_socket_closes(gpt2_gen):
    """uvicorn closes websockets (1012) as soon as it starts shutting down: a socket mid-stream,
    or queued, lost the error that says why unless it went out before that."""
    ws_client = pytest.importorskip("websockets.sync.client")
    from websockets.exceptions import ConnectionClosed

    def until_closed(ws):
        messages = []
        try:
            while True:
                messages.append(json.loads(ws.recv(timeout=30)))
        except ConnectionClosed:
            return messages

    with tinygen_serve(gpt2_gen, ServerSettings(max_batch=1)) as (port, exit_now, _):
        url = f"ws://127.0.0.1:{port}/v1/stream"
        with ws_client.connect(url) as streaming, ws_client.connect(url) as queued:
            request = {"prompt": "Once", "max_tokens": 4000, "seed": 1, "logit_bias": {"0": -100}}
            streaming.send(json.dumps(request))
            assert json.loads(streaming.recv(timeout=30))["type"] == "start"
            assert json.loads(streaming.recv(timeout=30))["type"] == "token"
            queued.send(json.dumps(request))  # the batch is full: it waits
            assert json.loads(queued.recv(timeout=30))["type"] == "start"
            exit_now()
            replies = [until_closed(streaming), until_closed(queued)]
    error = {"type": "error", "error": {"message": "the server is shutting down", "type": "server_error",
                                        "param": None, "code": None}}
    assert [messages[-1:] for messages in replies] == [[error], [error]]


def test_a_client_that_reads_nothing_does_not_hold_the_shutdown_up(gpt2_gen, caplog):
    """Its stream stalls on a full socket: uvicorn waited out timeout_graceful_shutdown, then
    cancelled the reply with a traceback in the log ("Exception in ASGI application")."""
    body = json.dumps({"model": gpt2_gen.model_dir.name, "prompt": "Once", "max_tokens": 4000, "seed": 1,
                       "stream": True, "logprobs": 5, "n": 4, "logit_bias": {"0": -100}}).encode()
    with tinygen_serve(gpt2_gen, ServerSettings(), send_buffer=4096) as (port, exit_now, thread), \
            socket.socket() as client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.connect(("127.0.0.1", port))
        client.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                       b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        time.sleep(1)  # and never reads: the socket's buffers fill at once
        started = time.monotonic()
        exit_now()
        thread.join(10)
        stopped = time.monotonic() - started
    assert not thread.is_alive() and stopped < 2  # timeout_graceful_shutdown: 2 s
    errors = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert errors == []
    assert any("closing 1 connection(s) whose client reads no more" in record.getMessage()
               for record in caplog.records)
