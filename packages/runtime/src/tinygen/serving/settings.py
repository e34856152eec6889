"""ServerSettings: the server's limits and access, documented once, validated once."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import TinygenError


@dataclass(frozen=True)
class ServerSettings:
    # The id clients pass as `model` and /v1/models lists (None: see model_id).
    model_name: str | None = None
    # When set, every API call needs "Authorization: Bearer <api_key>" (the websocket also
    # takes it as the `api_key` field of a message, since browsers cannot set headers).
    api_key: str | None = None
    # Sequences decoded together in one batch; one request's prompts x n must fit.
    max_batch: int = 16
    # Requests queued while the batch is full (0: none); one more gets 429.
    max_waiting: int = 64
    # Largest request body, and largest websocket message, in bytes (else 413).
    max_body_bytes: int = 1 << 20
    # Largest `max_tokens` one request may ask for.
    max_tokens_limit: int = 4096
    # Largest `n`.
    max_n: int = 16
    # Most probability alternatives per token (`logprobs`), OpenAI's limit.
    max_logprobs: int = 5
    # Most stop strings, OpenAI's limit.
    max_stop: int = 4
    # Origins (https://app.example.com) whose web pages may call the API and open the
    # websocket; "*" for any. By default only the server's own pages (the playground) may.
    cors_origins: tuple[str, ...] = ()

    @property
    def websocket_frame_limit(self) -> int:
        """uvicorn's ws_max_size: twice max_body_bytes, so that a message over the limit gets
        its 413 reply on an open connection; one over this is closed (1009, message too big)."""
        return 2 * self.max_body_bytes

    def model_id(self, folder: Path) -> str:
        """The id clients pass as `model`: model_name, else the model folder's name; the
        embedded model's folder is called 'model', so it goes by its package's name."""
        if self.model_name:
            return self.model_name
        folder = folder.resolve()  # `--model .` has no name of its own
        try:
            from tinygen_tinymodel import model_dir
        except ImportError:
            return folder.name
        return "tinygen-tinymodel" if folder == model_dir().resolve() else folder.name

    def origin_allowed(self, origin: str | None, host: str | None) -> bool:
        """Whether a browser page from `origin` may use the API (a request with no Origin
        comes from no web page: a script, curl, the OpenAI client)."""
        if origin is None or "*" in self.cors_origins or origin in self.cors_origins:
            return True
        return host is not None and origin.split("://", 1)[-1] == host  # the server's own page

    def host_allowed(self, host: str | None, local: str | None) -> bool:
        """Whether a request naming `host` (its Host header) may use the server it reached at
        the address `local`. A server with no API key, reached on a loopback address, answers
        only to loopback names: a web page whose own name its site makes resolve to 127.0.0.1
        (DNS rebinding) would otherwise be the server's own origin, and use it."""
        if self.api_key is not None or not host or not local or not is_loopback(local):
            return True
        return is_loopback(_hostname(host))

    def validated(self) -> "ServerSettings":
        for name in ("max_batch", "max_body_bytes", "max_tokens_limit", "max_n"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise TinygenError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("max_waiting", "max_logprobs", "max_stop"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise TinygenError(f"{name} must be an integer >= 0, got {value!r}")
        # `--model-name "$NAME"` with NAME unset would quietly serve the folder's name instead.
        model = self.model_name
        if model is not None and (not isinstance(model, str) or not model.strip()):
            raise TinygenError(f"model_name must be a non-empty name (leave it unset for the model "
                               f"folder's name), got {model!r}")
        for origin in self.cors_origins:
            if origin != "*" and ("," in origin or "*" in origin):  # not a list, not a pattern
                raise TinygenError(f"a CORS origin is one site or '*' for any: give each origin on "
                                   f"its own (repeat --cors-origin), got {origin!r}")
            if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", origin):
                raise TinygenError(f"a CORS origin is '*' or scheme://host[:port] with no path "
                                   f"(https://app.example.com), got {origin!r}")
        if self.api_key is not None and not self.api_key.strip():
            raise TinygenError("api_key must not be empty (leave it unset for no authentication)")
        if self.api_key is not None and not (self.api_key.isascii() and self.api_key.isprintable()):
            # HTTP clients send headers as ASCII: no client could ever authenticate with it.
            raise TinygenError("api_key must be printable ASCII (clients send it in an HTTP header)")
        return self


def is_loopback(host: str) -> bool:
    """Whether `host`, a name or an address, is this machine's loopback (RFC 6761: localhost
    and every name under .localhost are)."""
    host = host.lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _hostname(host: str) -> str:
    """A Host header's name, without its port: "[::1]:8000" -> "::1"."""
    if host.startswith("["):  # an IPv6 address; anything else after it is no name at all
        name, _, rest = host[1:].partition("]")
        return name if not rest or rest[0] == ":" and rest[1:].isdigit() else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host
