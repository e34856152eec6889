"""Serving: an OpenAI-compatible HTTP server with continuous batching (`tinygen serve`).

    engine.py       the Engine: owns the model, decodes every request in one running batch
    sequence.py     one sequence's state (tokens, seed, stop strings, streamed text)
    batch_ops.py    KV-cache row operations that let sequences join and leave a batch
    settings.py     ServerSettings: limits and the API key
    openai_api.py   OpenAI's completions API: parameter checks and reply shapes
    app.py          the ASGI app (Starlette): routes, auth, size limits, errors
    websocket.py    the token-by-token websocket
    server.py       `tinygen serve`: the app under uvicorn
    static/         the playground page

The engine needs only the runtime; the app needs the `server` extra
(pip install 'tinygen[server]': starlette, uvicorn, websockets).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy_names import lazy_names

if TYPE_CHECKING:
    from .settings import ServerSettings

# The names load on first use: the CLI reads ServerSettings' defaults to build its parser,
# and the engine's imports (asyncio alone ~45 ms) would otherwise delay every `tinygen "..."`.
_MODULES = {"Engine": "engine", "EngineBusy": "engine", "GenerationFailed": "engine",
            "RequestHandle": "engine", "SequenceDone": "engine", "SequencePiece": "engine",
            "ServerSettings": "settings"}
__all__ = [*_MODULES, "create_app"]
__getattr__, __dir__ = lazy_names(__name__, _MODULES, globals())


def create_app(generator, settings: ServerSettings | None = None):
    """The ASGI app serving `generator` (see app.create_app); needs the `server` extra."""
    from .app import create_app as create

    return create(generator, settings)
