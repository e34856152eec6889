"""`tinygen serve`: the ASGI app under uvicorn."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import sys
import time
from typing import TYPE_CHECKING, TextIO

from ..errors import TinygenError
from .settings import ServerSettings, is_loopback

if TYPE_CHECKING:
    from ..generator import TextGenerator

logger = logging.getLogger("tinygen.serving")


def require_server_extra() -> None:
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise TinygenError("tinygen serve needs the server extra: pip install 'tinygen[server]'") from None


def listen(host: str, port: int) -> socket.socket:
    """Bind `host:port` now, before the model loads: a port in use is a one-line error at once."""
    if not 0 <= port <= 65535:
        raise TinygenError(f"--port must be from 0 to 65535, got {port}")
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise TinygenError(f"cannot listen on {host}: {exc.strerror}; check --host") from None
    sock = socket.socket(info[0], socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(info[4])
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        what = "another program listens there; pick another --port" if exc.errno == errno.EADDRINUSE \
            else exc.strerror
        raise TinygenError(f"cannot listen on {host}:{port}: {what}") from None
    sock.set_inheritable(True)
    return sock


def serve(generator: "TextGenerator", settings: ServerSettings, host: str = "127.0.0.1", port: int = 8000,
          err: TextIO = sys.stderr, log_level: str = "info", sock: socket.socket | None = None) -> None:
    """Serve until interrupted: Ctrl-C or SIGTERM ends the requests in flight with an error
    they can report (the server is shutting down), then stops."""
    require_server_extra()
    import uvicorn

    from .app import create_app

    sock = sock or listen(host, port)
    app = create_app(generator, settings)
    if not is_loopback(host) and settings.api_key is None:
        err.write(f"tinygen: warning: serving on {host} without an API key: anyone who can reach this "
                  f"port can use it (set --api-key or TINYGEN_API_KEY)\n")
    shown = f"[{host}]" if ":" in host else host
    port = sock.getsockname()[1]
    err.write(f"tinygen: serving {generator.model_dir} as '{app.state.server.model_id}' "
              f"on http://{shown}:{port} (playground at /, OpenAI API at /v1)\n")
    config = uvicorn.Config(app, log_level=log_level, ws_max_size=settings.websocket_frame_limit,
                            timeout_graceful_shutdown=5)
    try:
        uvicorn_server(app, config).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn raises the Ctrl-C again once it has stopped, as uvicorn.run hides
        pass


def uvicorn_server(app, config):
    """uvicorn's Server for `app` (create_app's), which ends the requests in flight with a reply
    that says why before it stops."""
    import uvicorn

    class Server(uvicorn.Server):
        exiting = False  # waiting for the websockets' last replies

        def handle_exit(self, sig, frame) -> None:
            # uvicorn would wait for open requests, then cancel them, and only then run the
            # app's shutdown: fail them first, so each client gets a reply that says why.
            served = app.state.server
            loop = asyncio.get_running_loop()
            # On the loop, not here: the signal may have come while this thread held the
            # engine's lock (submit, a cancel), and the engine's thread could not stop.
            loop.call_soon(served.engine.close)
            if self.exiting or self.should_exit or not served.sockets_answering:
                super().handle_exit(sig, frame)
                return
            # HTTP replies in flight may finish once uvicorn shuts down, but websockets are closed
            # (1012) the moment it starts: let them send their error first. This runs in a signal
            # handler, so the waiting is scheduled on the loop.
            self.exiting = True
            loop.call_soon_threadsafe(loop.create_task, self._exit_once_answered(sig, frame))

        async def _exit_once_answered(self, sig, frame) -> None:
            deadline = time.monotonic() + 2  # a client that reads nothing holds its reply back
            while app.state.server.sockets_answering and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            if not self.should_exit:  # else a second signal already started the shutdown
                super().handle_exit(sig, frame)

        async def shutdown(self, sockets=None) -> None:
            # uvicorn waits up to timeout_graceful_shutdown for the replies in flight, then cancels
            # them, a traceback each in the log. Only a client that reads nothing of its stream
            # holds its reply back that long: halfway there, close its connection as if it had left.
            timeout = self.config.timeout_graceful_shutdown
            stuck = None
            if timeout is not None:
                stuck = asyncio.get_running_loop().call_later(timeout / 2, self._close_connections)
            try:
                await super().shutdown(sockets)
            finally:
                if stuck is not None:
                    stuck.cancel()

        def _close_connections(self) -> None:
            connections = list(self.server_state.connections)
            if connections:
                logger.warning("tinygen: closing %d connection(s) whose client reads no more of its "
                               "reply", len(connections))
            for connection in connections:
                transport = getattr(connection, "transport", None)
                if transport is not None:
                    transport.abort()

    return Server(config)
