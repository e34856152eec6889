"""Web pages from other origins: the API (CORS) and the websocket take them only where
--cors-origin allows; scripts (no Origin header) and the server's own pages always."""

import json
import socket

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
ws_client = pytest.importorskip("websockets.sync.client")
from websockets.exceptions import InvalidStatus  # noqa: E402

from tinygen import TinygenError  # noqa: E402
from tinygen.serving import ServerSettings  # noqa: E402

APP = "https://app.example.com"


def first_token(url, origin=None, host=None):
    """The first message's type; `host`: the name the client uses, as if it led to the server."""
    uri, sock = url.replace("http://", "ws://") + "/v1/stream", None
    if host:
        port = int(url.rsplit(":", 1)[1])
        uri, sock = f"ws://{host}:{port}/v1/stream", socket.create_connection(("127.0.0.1", port))
    with ws_client.connect(uri, origin=origin, sock=sock) as ws:
        ws.send(json.dumps({"prompt": "Once", "max_tokens": 2, "seed": 1}))
        return json.loads(ws.recv(timeout=30))["type"]


def preflight(call, url, origin):
    return call("OPTIONS", f"{url}/v1/completions", headers={
        "Origin": origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})


def test_by_default_only_the_servers_own_pages_and_scripts(gpt2_gen, serve_on_loopback, call):
    with serve_on_loopback(gpt2_gen) as (url, _):
        assert first_token(url) == "start"  # no Origin: a script
        assert first_token(url, origin=url) == "start"  # the playground, served here
        with pytest.raises(InvalidStatus) as refused:
            first_token(url, origin="https://elsewhere.example")
        assert refused.value.response.status_code == 403
        status, headers, _ = preflight(call, url, APP)
        assert status == 403 and "access-control-allow-origin" not in headers


def test_a_page_of_another_origin_cannot_make_the_server_generate(gpt2_gen, serve_on_loopback, call):
    """A browser sends a text/plain POST from any page without asking first: CORS alone
    would hide the reply, not stop the work."""
    with serve_on_loopback(gpt2_gen, ServerSettings(cors_origins=(APP,))) as (url, app):
        engine = app.state.server.engine
        body = json.dumps({"model": app.state.server.model_id, "prompt": "Once", "max_tokens": 2}).encode()
        steps = engine.stats.steps
        for path in ("/v1/completions", "/v1/models", "/health"):
            status, _, reply = call("POST" if "compl" in path else "GET", url + path, body if "compl" in path
                                    else None, headers={"Origin": "https://evil.example", "Content-Type": "text/plain"})
            assert status == 403 and reply["error"]["code"] == "origin_not_allowed"
            assert "https://evil.example" in reply["error"]["message"]
        assert engine.stats.steps == steps
        assert call("POST", f"{url}/v1/completions", body, headers={"Origin": url})[0] == 200  # its own page


def test_cors_origins_let_their_pages_in(gpt2_gen, serve_on_loopback, call):
    with serve_on_loopback(gpt2_gen, ServerSettings(cors_origins=(APP,))) as (url, app):
        status, headers, _ = preflight(call, url, APP)
        assert status == 200 and headers["access-control-allow-origin"] == APP
        assert "authorization" in headers["access-control-allow-headers"].lower()
        # what the OpenAI JS SDK sends from a page
        status, headers, _ = call("OPTIONS", f"{url}/v1/completions", headers={
            "Origin": APP, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,authorization,x-stainless-os"})
        assert status == 200 and "x-stainless-os" in headers["access-control-allow-headers"].lower()
        status, headers, reply = call("POST", f"{url}/v1/completions",
                                      {"model": app.state.server.model_id, "prompt": "Once",
                                       "max_tokens": 2}, headers={"Origin": APP})
        assert status == 200 and headers["access-control-allow-origin"] == APP
        assert first_token(url, origin=APP) == "start"
        with pytest.raises(InvalidStatus):
            first_token(url, origin="https://elsewhere.example")
        # refused in OpenAI's shape, as without --cors-origin (not CORSMiddleware's plain 400)
        status, _, body = preflight(call, url, "https://elsewhere.example")
        assert status == 403 and body["error"]["code"] == "origin_not_allowed"
    with serve_on_loopback(gpt2_gen, ServerSettings(cors_origins=("*",))) as (url, _):
        assert first_token(url, origin="https://elsewhere.example") == "start"


def test_a_name_rebound_to_loopback_cannot_use_a_keyless_server(gpt2_gen, serve_on_loopback, call):
    """DNS rebinding: a page at http://rebound.example:PORT whose site then points that name
    at 127.0.0.1 is the server's own origin to the browser; its Host header gives it away."""
    with serve_on_loopback(gpt2_gen) as (url, app):
        port = url.rsplit(":", 1)[1]
        rebound = f"rebound.example:{port}"
        engine = app.state.server.engine
        body = json.dumps({"model": app.state.server.model_id, "prompt": "Once", "max_tokens": 2}).encode()
        steps = engine.stats.steps
        for path, origin in (("/v1/completions", f"http://{rebound}"), ("/v1/models", None), ("/", None)):
            headers = {"Host": rebound, "Content-Type": "text/plain"} | ({"Origin": origin} if origin else {})
            status, _, reply = call("POST" if "compl" in path else "GET", url + path,
                                    body if "compl" in path else None, headers=headers)
            assert status == 403 and reply["error"]["code"] == "host_not_allowed"
            assert f"not {rebound}" in reply["error"]["message"]
        with pytest.raises(InvalidStatus) as refused:
            first_token(url, origin=f"http://{rebound}", host="rebound.example")
        assert refused.value.response.status_code == 403
        assert engine.stats.steps == steps
        for name in ("localhost", "127.0.0.1", "[::1]", "app.localhost", "LOCALHOST."):
            assert call("GET", f"{url}/health", headers={"Host": f"{name}:{port}"})[0] == 200
        assert first_token(url, host="localhost") == "start"
    with serve_on_loopback(gpt2_gen, ServerSettings(api_key="sesame")) as (url, app):
        # a page cannot know the key: a keyed server answers to any name (a proxy's, say)
        port = url.rsplit(":", 1)[1]
        status, _, reply = call("GET", f"{url}/v1/models", headers={
            "Host": f"tinygen.example.com:{port}", "Authorization": "Bearer sesame"})
        assert status == 200 and reply["data"][0]["id"] == app.state.server.model_id


@pytest.mark.parametrize("host,local,allowed", [
    ("localhost:8000", "127.0.0.1", True), ("[::1]:8000", "::1", True), ("127.0.0.5", "127.0.0.1", True),
    ("evil.example:8000", "127.0.0.1", False), ("evil.example", "::1", False),
    ("127.0.0.1.evil.example", "127.0.0.1", False), ("[::1].evil:80", "127.0.0.1", False),
    ("evil.example:8000", "192.168.1.5", True),  # reached on the network: no rebinding to fear
    (None, "127.0.0.1", True), ("evil.example", None, True)])
def test_which_host_names_a_keyless_loopback_server_answers_to(host, local, allowed):
    assert ServerSettings().host_allowed(host, local) is allowed


@pytest.mark.parametrize("origin", ["app.example.com", "https://app.example.com/", "ftp://x", ""])
def test_a_cors_origin_is_a_scheme_and_host(origin):
    with pytest.raises(TinygenError, match="a CORS origin is"):
        ServerSettings(cors_origins=(origin,)).validated()


@pytest.mark.parametrize("origin", ["https://*.example.com", "https://a.com,https://b.com"])
def test_a_cors_origin_is_one_site_not_a_list_or_a_pattern(origin):
    with pytest.raises(TinygenError, match=r"give each origin on its own \(repeat --cors-origin\)"):
        ServerSettings(cors_origins=(origin,)).validated()
