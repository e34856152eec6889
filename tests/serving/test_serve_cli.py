"""`tinygen serve`: flags, localhost by default, the API key from the environment, a missing extra."""

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tinygen.cli import main
from tinygen.serving.server import is_loopback


def test_help_shows_localhost_and_port_defaults(capsys):
    with pytest.raises(SystemExit) as info:
        main(["serve", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "--host HOST" in out and "(default: 127.0.0.1)" in out and "(default: 8000)" in out
    assert "--api-key" in out and "TINYGEN_API_KEY" in out


def test_a_missing_server_extra_is_one_line(monkeypatch, optimum_gpt2_dir):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # import uvicorn -> ImportError
    err = io.StringIO()
    assert main(["serve", "--model", str(optimum_gpt2_dir)], out=io.StringIO(), err=err) == 2
    assert err.getvalue() == \
        "tinygen: error: tinygen serve needs the server extra: pip install 'tinygen[server]'\n"


def test_bad_limits_are_one_line(optimum_gpt2_dir):
    pytest.importorskip("uvicorn")
    err = io.StringIO()
    assert main(["serve", "--model", str(optimum_gpt2_dir), "--max-batch", "0"], out=io.StringIO(), err=err) == 2
    assert "--max-batch must be an integer >= 1" in err.getvalue()
    err = io.StringIO()
    assert main(["serve", "--model", str(optimum_gpt2_dir), "--api-key", "cl\u00e9"], out=io.StringIO(), err=err) == 2
    assert err.getvalue() == "tinygen: error: --api-key must be printable ASCII (clients send it in an HTTP header)\n"
    err = io.StringIO()  # `--api-key "$KEY"` with KEY unset: refused, not served without a key
    assert main(["serve", "--model", str(optimum_gpt2_dir), "--api-key", ""], out=io.StringIO(), err=err) == 2
    assert err.getvalue() == "tinygen: error: --api-key must not be empty (leave it unset for no authentication)\n"
    err = io.StringIO()
    assert main(["serve", "--model", str(optimum_gpt2_dir), "--cors-origin", "app.example.com"],
                out=io.StringIO(), err=err) == 2
    assert err.getvalue().startswith("tinygen: error: a CORS origin is '*' or scheme://host[:port]")


def test_an_empty_api_key_in_the_environment_is_refused_not_served_without_one(
        optimum_gpt2_dir, monkeypatch):
    pytest.importorskip("uvicorn")
    monkeypatch.setenv("TINYGEN_API_KEY", " ")  # `-e TINYGEN_API_KEY=$KEY` with KEY unset
    err = io.StringIO()
    # --max-batch 0 is refused after the key: a server that took no key would stop there, not serve
    assert main(["serve", "--model", str(optimum_gpt2_dir), "--max-batch", "0"], out=io.StringIO(),
                err=err) == 2
    assert err.getvalue() == ("tinygen: error: TINYGEN_API_KEY is set but empty; set it to the key, "
                              "or unset it to serve without authentication\n")


@pytest.mark.parametrize("host,loopback", [("127.0.0.1", True), ("localhost", True), ("::1", True),
                                           ("app.localhost", True), ("localhost.example", False),
                                           ("0.0.0.0", False), ("192.168.1.5", False), ("example.org", False)])
def test_loopback_detection(host, loopback):
    assert is_loopback(host) is loopback


def _get(port, path, key=None):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        auth = f"Authorization: Bearer {key}\r\n" if key else ""
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(model, port, log_path, *extra, env=None):
    log = open(log_path, "w+")  # noqa: SIM115 (the server's output, read after it stops)
    process = subprocess.Popen([sys.executable, "-m", "tinygen.cli", "serve", "--model", str(model),
                                "--port", str(port), *extra],
                               stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               env={**os.environ, **(env or {})})
    deadline = time.monotonic() + 60
    while True:
        try:
            _get(port, "/health")
            return process, log
        except OSError:
            assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)


def test_serve_binds_to_loopback_and_takes_the_key_from_the_environment(optimum_gpt2_dir, tmp_path):
    pytest.importorskip("uvicorn")
    port = _free_port()
    process, log = _start_server(optimum_gpt2_dir, port, tmp_path / "serve.log", "--model-name", "tiny",
                                 env={"TINYGEN_API_KEY": "from-env"})
    try:
        status, body = _get(port, "/health")
        assert status == 200 and body["model"] == "tiny"
        assert _get(port, "/v1/models")[0] == 401
        status, body = _get(port, "/v1/models", key="from-env")
        assert status == 200 and body["data"][0]["id"] == "tiny"
        listening = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True,
                                   check=False)
        if listening.returncode == 0:
            assert f"127.0.0.1:{port}" in listening.stdout
    finally:
        process.send_signal(signal.SIGINT)
        code = process.wait(20)
    log.seek(0)
    output = log.read()
    assert code == 0, output
    assert f"on http://127.0.0.1:{port}" in output and "warning" not in output


def test_server_deps_load_only_with_the_app_and_torch_never(optimum_gpt2_dir):
    pytest.importorskip("starlette")
    code = (
        "import asyncio, sys, tinygen.cli\n"
        "tinygen.cli.build_parser()\n"
        "print('cli:', sorted(m for m in ('starlette', 'uvicorn', 'ray') if m in sys.modules))\n"
        "from tinygen import TextGenerator\n"
        "from tinygen.serving import create_app\n"
        "engine = create_app(TextGenerator(sys.argv[1], device='cpu')).state.server.engine\n"
        "async def main():\n"
        "    return await engine.submit('Hi', seed=1, max_new_tokens=3).completions()\n"
        "print(len(asyncio.run(main())))\n"
        "print('heavy:', sorted(m for m in ('torch', 'transformers', 'optimum') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(optimum_gpt2_dir)], capture_output=True, text=True,
                         check=True).stdout
    assert out == "cli: []\n1\nheavy: []\n"


def test_a_taken_or_impossible_port_is_one_line_before_the_model_loads(tmp_path):
    pytest.importorskip("uvicorn")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for given, message in [(port, f"cannot listen on 127.0.0.1:{port}: another program listens "
                                      f"there; pick another --port"),
                               (99999, "--port must be from 0 to 65535, got 99999")]:
            err = io.StringIO()
            # a model folder that does not exist: the port is refused before it is looked at
            assert main(["serve", "--model", str(tmp_path / "none"), "--port", str(given)],
                        out=io.StringIO(), err=err) == 2
            assert err.getvalue() == f"tinygen: error: {message}\n"


def test_ctrl_c_ends_requests_in_flight_with_a_reply_that_says_why(optimum_gpt2_dir, tmp_path):
    """uvicorn alone cut a stream mid-way and answered a waiting request with a bare 500."""
    pytest.importorskip("uvicorn")
    import http.client
    import threading

    port = _free_port()
    process, log = _start_server(optimum_gpt2_dir, port, tmp_path / "serve.log", "--max-tokens-limit", "100000")
    from tinygen.manifest import load_manifest

    eos = load_manifest(optimum_gpt2_dir).eos_token_ids[0]  # banned: the texts run until stopped
    body = {"model": optimum_gpt2_dir.name, "prompt": "Once", "max_tokens": 100000, "seed": 1,
            "logit_bias": {str(eos): -100}}
    replies = {}

    def plain():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
        reply = conn.getresponse()
        replies["plain"] = (reply.status, json.loads(reply.read()))

    try:
        stream = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        stream.request("POST", "/v1/completions", json.dumps({**body, "stream": True}),
                       {"Content-Type": "application/json"})
        streamed = stream.getresponse()
        assert streamed.status == 200, streamed.read()
        assert streamed.readline().startswith(b"data: ")
        waiting = threading.Thread(target=plain)
        waiting.start()
        time.sleep(0.5)
        process.send_signal(signal.SIGINT)
        rest = streamed.read().decode()  # the server ends the stream; no IncompleteRead
        waiting.join(30)
        code = process.wait(20)  # one Ctrl-C stops it (a second would force it)
    finally:
        if process.poll() is None:
            process.kill()
    log.seek(0)
    output = log.read()
    last = [line for line in rest.splitlines() if line.startswith("data: ")][-1]
    assert json.loads(last[6:])["error"]["message"] == "the server is shutting down", rest[-500:]
    status, reply = replies["plain"]
    assert status == 503 and reply["error"]["message"] == "the server is shutting down"
    assert code == 0 and "Traceback" not in output and "CancelledError" not in output, output


@pytest.mark.parametrize("name", ["", "  "])
def test_an_empty_model_name_is_refused_not_served_as_the_folder_name(name):
    """`--model-name "$NAME"` with NAME unset served the folder's name; blanks served '  '.
    (`tinygen serve` validates its settings before it binds the port or loads the model.)"""
    from tinygen import TinygenError
    from tinygen.serving.settings import ServerSettings

    with pytest.raises(TinygenError) as info:
        ServerSettings(model_name=name).validated()
    assert str(info.value) == ("model_name must be a non-empty name (leave it unset for the model "
                               f"folder's name), got {name!r}")
    assert ServerSettings(model_name="mine").validated().model_name == "mine"


def test_the_model_id_is_the_folders_name_and_the_embedded_models_package_name(
        optimum_gpt2_dir, monkeypatch):
    """The embedded model's folder is called 'model', a name no client would guess; `--model .`
    has no name of its own (Path('.').name is '')."""
    from tinygen_tinymodel import model_dir

    from tinygen.serving import ServerSettings

    settings = ServerSettings()
    assert settings.model_id(model_dir()) == "tinygen-tinymodel"
    assert settings.model_id(optimum_gpt2_dir) == optimum_gpt2_dir.name
    monkeypatch.chdir(optimum_gpt2_dir)
    assert settings.model_id(Path(".")) == optimum_gpt2_dir.name
    assert ServerSettings(model_name="tiny").model_id(model_dir()) == "tiny"
