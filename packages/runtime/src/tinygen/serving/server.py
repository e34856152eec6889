"""`tinygen serve`: the ASGI app under uvicorn."""

from __future__ import annotations

import ipaddress
import sys
from typing import TYPE_CHECKING, TextIO

from ..errors import TinygenError
from .settings import ServerSettings

if TYPE_CHECKING:
    from ..generator import TextGenerator


def require_server_extra() -> None:
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise TinygenError("tinygen serve needs the server extra: pip install 'tinygen[server]'") from None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(generator: "TextGenerator", settings: ServerSettings, host: str = "127.0.0.1", port: int = 8000,
          err: TextIO = sys.stderr, log_level: str = "info") -> None:
    """Serve until interrupted (Ctrl-C stops it gracefully)."""
    require_server_extra()
    import uvicorn

    from .app import create_app

    app = create_app(generator, settings)
    if not is_loopback(host) and settings.api_key is None:
        err.write(f"tinygen: warning: serving on {host} without an API key: anyone who can reach this "
                  f"port can use it (set --api-key or TINYGEN_API_KEY)\n")
    shown = f"[{host}]" if ":" in host else host
    err.write(f"tinygen: serving {generator.model_dir} as '{settings.model_name or generator.model_dir.name}' "
              f"on http://{shown}:{port} (playground at /, OpenAI API at /v1)\n")
    uvicorn.run(app, host=host, port=port, log_level=log_level, ws_max_size=settings.max_body_bytes,
                timeout_graceful_shutdown=5)
