"""Web pages from other origins: the API (CORS) and the websocket take them only where
--cors-origin allows; scripts (no Origin header) and the server's own pages always."""

import json

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
ws_client = pytest.importorskip("websockets.sync.client")
from websockets.exceptions import InvalidStatus  # noqa: E402

from tinygen import TinygenError  # noqa: E402
from tinygen.serving import ServerSettings  # noqa: E402

APP = "https://app.example.com"


def first_token(url, origin=None):
    with ws_client.connect(url.replace("http://", "ws://") + "/v1/stream", origin=origin) as ws:
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
        assert preflight(call, url, "https://elsewhere.example")[0] == 400
    with serve_on_loopback(gpt2_gen, ServerSettings(cors_origins=("*",))) as (url, _):
        assert first_token(url, origin="https://elsewhere.example") == "start"


@pytest.mark.parametrize("origin", ["app.example.com", "https://app.example.com/", "ftp://x", ""])
def test_a_cors_origin_is_a_scheme_and_host(origin):
    with pytest.raises(TinygenError, match="a CORS origin is"):
        ServerSettings(cors_origins=(origin,)).validated()


@pytest.mark.parametrize("origin", ["https://*.example.com", "https://a.com,https://b.com"])
def test_a_cors_origin_is_one_site_not_a_list_or_a_pattern(origin):
    with pytest.raises(TinygenError, match=r"give each origin on its own \(repeat --cors-origin\)"):
        ServerSettings(cors_origins=(origin,)).validated()
