"""Serving fixtures: one generator on the tiny GPT-2, and servers on loopback in a thread."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager

import pytest

from tinygen import TextGenerator


@pytest.fixture(scope="session")
def gpt2_gen(optimum_gpt2_dir) -> TextGenerator:
    """The server and the reference texts use this one generator (onnxruntime sessions are thread-safe)."""
    return TextGenerator(optimum_gpt2_dir, device="cpu")


@pytest.fixture(scope="session")
def llama_gen(optimum_llama_dir) -> TextGenerator:
    return TextGenerator(optimum_llama_dir, device="cpu")


@contextmanager
def running_server(generator: TextGenerator, settings=None):
    """Serve `generator` with uvicorn on a free loopback port; yields (base URL, Server app)."""
    import uvicorn

    from tinygen.serving.app import create_app

    app = create_app(generator, settings)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(
        app, log_level="warning", ws_max_size=app.state.server.settings.websocket_frame_limit,
        timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


def http(method: str, url: str, body=None, headers: dict | None = None, timeout: float = 30):
    """(status, headers, parsed JSON or raw bytes) for one request; errors are answers, not exceptions."""
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            status, reply_headers, raw = reply.status, reply.headers, reply.read()
    except urllib.error.HTTPError as exc:
        status, reply_headers, raw = exc.code, exc.headers, exc.read()
    try:
        return status, reply_headers, json.loads(raw)
    except ValueError:
        return status, reply_headers, raw


def wait_until(condition, timeout: float = 5.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


# Helpers as fixtures: test files in different folders must not import a module by a shared name.
@pytest.fixture(scope="session")
def serve_on_loopback():
    return running_server


@pytest.fixture(scope="session")
def call():
    return http


@pytest.fixture(scope="session")
def eventually():
    return wait_until
