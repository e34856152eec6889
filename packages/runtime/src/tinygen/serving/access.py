"""Which web pages may use the server: the browser-facing checks of every HTTP request and
websocket, beside the API key's (Server.check_key)."""

from __future__ import annotations

from .openai_api import ApiError
from .settings import ServerSettings


def page_refusal(settings: ServerSettings, headers, local: tuple | None) -> ApiError | None:
    """Why this server will not answer a request with these headers, reached at the address
    `local` (ASGI's scope["server"]); None when it will."""
    host = headers.get("host")
    if not settings.host_allowed(host, local[0] if local else None):
        return ApiError(403, f"this server, with no API key, answers to localhost, 127.0.0.1 and [::1] "
                             f"only, not {host} (a guard against DNS rebinding): use one of those, or "
                             f"serve with --api-key (a proxy in front may send Host: localhost)",
                        code="host_not_allowed")
    if not settings.origin_allowed(headers.get("origin"), host):
        return ApiError(403, f"web pages from {headers['origin']} may not use this server "
                             f"(`tinygen serve --cors-origin ORIGIN` lets an origin in)",
                        code="origin_not_allowed")
    return None
