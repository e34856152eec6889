"""Clients that misbehave: a 4xx or an error message in OpenAI's shape, never a traceback in the
server's log (a number too long to read, a body cut off by a client that left). A deeply nested
message sent mid-generation: test_websocket.py."""

import asyncio
import json

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
ws_client = pytest.importorskip("websockets.sync.client")

from tinygen.serving.app import create_app  # noqa: E402

HUGE_INT = "1" + "0" * 5000  # past Python's 4300 digits for reading an integer


@pytest.fixture(scope="module")
def served(gpt2_gen, serve_on_loopback):
    with serve_on_loopback(gpt2_gen) as (url, app):
        yield url, app.state.server.model_id


def receive(ws):
    return json.loads(ws.recv(timeout=30))


def test_a_number_too_long_to_read_is_not_the_clients_python_to_fix(served, call):
    """Python's message told the client to call sys.set_int_max_str_digits()."""
    url, model = served
    status, _, body = call("POST", f"{url}/v1/completions",
                           f'{{"model": "{model}", "prompt": "Hi", "seed": {HUGE_INT}}}'.encode())
    assert status == 400 and body["error"]["code"] == "invalid_json"
    too_long = "is not valid JSON (a number in it has over 4300 digits)"
    assert body["error"]["message"] == f"the body {too_long}"
    with ws_client.connect(url.replace("http://", "ws://") + "/v1/stream") as ws:
        ws.send(f'{{"prompt": "Hi", "seed": {HUGE_INT}}}')
        message = receive(ws)
    assert message["error"]["message"] == f"the message {too_long}"


def test_a_client_that_leaves_mid_body_is_no_internal_error(gpt2_gen):
    """starlette's ClientDisconnect went up as a bug: 'internal error' and two tracebacks logged."""
    app = create_app(gpt2_gen)
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/v1/completions", "raw_path": b"/v1/completions",
             "query_string": b"", "root_path": "", "client": ("127.0.0.1", 50000),
             "server": ("127.0.0.1", 8000),
             "headers": [(b"host", b"localhost"), (b"content-type", b"application/json"),
                         (b"content-length", b"500")]}
    incoming = [{"type": "http.request", "body": b'{"model": "', "more_body": True},
                {"type": "http.disconnect"}]
    sent = []

    async def receive():
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 499
