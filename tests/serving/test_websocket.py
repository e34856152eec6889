"""The websocket: one message per token with its probability; cancel; bad messages; the API key."""

import json

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
ws_client = pytest.importorskip("websockets.sync.client")
from websockets.exceptions import ConnectionClosed  # noqa: E402

from tinygen.serving import ServerSettings  # noqa: E402


@pytest.fixture(scope="module")
def served(gpt2_gen, serve_on_loopback):
    with serve_on_loopback(gpt2_gen) as (url, app):
        yield url.replace("http://", "ws://") + "/v1/stream", app


def receive(ws):
    return json.loads(ws.recv(timeout=30))


def generation(ws, request):
    ws.send(json.dumps(request))
    messages = [receive(ws)]
    while messages[-1]["type"] not in ("done", "error"):
        messages.append(receive(ws))
    return messages


def test_tokens_stream_one_by_one_with_their_probabilities(served, gpt2_gen):
    options = dict(seed=21, max_new_tokens=30, top_k=40, temperature=0.9)
    with ws_client.connect(served[0]) as ws:
        messages = generation(ws, {"prompt": "Once upon a time", "max_tokens": 30, "seed": 21, "top_k": 40,
                                   "temperature": 0.9, "logprobs": 3})
    [want] = gpt2_gen.generate("Once upon a time", return_probs=True, top_n=3, **options)
    start, *tokens, done = messages
    prompt_tokens = len(gpt2_gen.tokenizer.encode("Once upon a time"))
    assert start == {"type": "start", "seed": 21, "prompt_tokens": prompt_tokens}
    assert all(m["type"] == "token" for m in tokens)
    assert "".join(m["text"] for m in tokens) == str(want) == done["text"]
    streamed = [t for m in tokens for t in m["tokens"]]
    assert [t["id"] for t in streamed] == [tp.token_id for tp in want.token_probs]
    assert [t["prob"] for t in streamed] == pytest.approx([tp.prob for tp in want.token_probs], rel=1e-4)
    assert all(0 < t["prob"] <= 1 and len(t["top"]) == 3 for t in streamed)
    # A message a step, except that the tokens of a character split across tokens come together.
    assert all(m["tokens"] for m in tokens) and len(tokens) > len(streamed) // 2
    assert done["finish_reason"] == want.finish_reason and done["completion_tokens"] == len(want.token_ids)


def test_cancel_stops_the_generation_and_the_connection_goes_on(served, gpt2_gen):
    with ws_client.connect(served[0]) as ws:
        ws.send(json.dumps({"prompt": "Once", "max_tokens": 4000, "seed": 1}))
        assert receive(ws)["type"] == "start"
        sent = [receive(ws)]
        assert sent[0]["type"] == "token"
        ws.send(json.dumps({"type": "cancel"}))
        while (message := receive(ws))["type"] == "token":
            sent.append(message)
        tokens = [t["id"] for m in sent for t in m["tokens"]]
        assert message == {"type": "done", "finish_reason": "cancelled", "seed": 1,
                           "text": "".join(m["text"] for m in sent), "completion_tokens": len(tokens)}
        assert message["text"] and tokens == list(gpt2_gen.generate(
            "Once", seed=1, max_new_tokens=len(tokens))[0].token_ids)  # what was sent, whole
        done = generation(ws, {"prompt": "To be", "max_tokens": 5, "seed": 2})[-1]
    assert done["text"] == str(gpt2_gen.generate("To be", seed=2, max_new_tokens=5)[0])


def test_bad_messages_get_an_error_and_the_connection_stays(served):
    with ws_client.connect(served[0]) as ws:
        for bad, expected in [("not json", "not valid JSON"), ("[1, 2]", "must be a JSON object"),
                              ("[" * 1500 + "]" * 1500, "not valid JSON"),
                              ('{"prompt": "Hi", "n": 2}', "unknown parameter 'n'"),
                              ('{"prompt": "Hi", "temperature": -1}', "temperature must be"),
                              ('{"type": "dance"}', "unknown message type"),
                              ('{"prompt": ["Hi", "Bye"]}', "takes one prompt"),
                              ('{"prompt": [[1, 2], [3]]}', "takes one prompt"),
                              ('{"prompt": "caf\\udce9"}', "not UTF-8 text")]:
            ws.send(bad)
            message = receive(ws)
            assert message["type"] == "error" and expected in message["error"]["message"]
        assert generation(ws, {"prompt": "Hi", "max_tokens": 2, "seed": 1})[-1]["type"] == "done"


def test_an_unknown_message_type_is_shown_as_the_client_sent_it(served):
    """It was Python's repr ('dance', {'a': 1}): shown as JSON, one line, cut short."""
    with ws_client.connect(served[0]) as ws:
        for sent, shown in [("dance", '"dance"'), ({"a": [1, True]}, '{"a": [1, true]}'),
                            ("a\nb", '"a\\nb"'), ("x" * 100, '"' + "x" * 56 + "..."),
                            (None, "null")]:
            ws.send(json.dumps({"type": sent}))
            message = receive(ws)["error"]["message"]
            assert message == f'unknown message type {shown}; send "generate" (or no type) or ' \
                              f'"cancel"', message


# The second: a request, or a message nested too deep to read, which, checked for a cancel,
# was a RecursionError that dropped the connection (1006).
@pytest.mark.parametrize("second", [json.dumps({"prompt": "Again"}), "[" * 100_000 + "]" * 100_000],
                         ids=["request", "deeply nested"])
def test_a_second_request_while_one_runs_is_refused(served, second):
    with ws_client.connect(served[0]) as ws:
        ws.send(json.dumps({"prompt": "Once", "max_tokens": 4000, "seed": 1}))
        assert receive(ws)["type"] == "start"
        ws.send(second)
        while (message := receive(ws))["type"] == "token":
            pass
        assert message["type"] == "error" and message["error"]["code"] == "busy"
        ws.send(json.dumps({"type": "cancel"}))
        while (message := receive(ws))["type"] == "token":
            pass
        assert message["finish_reason"] == "cancelled"


def test_a_message_over_the_size_limit_is_refused_and_the_connection_stays(gpt2_gen,
                                                                           serve_on_loopback):
    with serve_on_loopback(gpt2_gen, ServerSettings(max_body_bytes=2000)) as (url, _):
        with ws_client.connect(url.replace("http://", "ws://") + "/v1/stream") as ws:
            for prompt in ("x" * 2500, "\u00e9" * 1500):  # 1,500 characters, 3,000 bytes
                ws.send(json.dumps({"prompt": prompt, "max_tokens": 3}, ensure_ascii=False))
                message = receive(ws)
                assert message["type"] == "error" and message["error"]["code"] == "request_too_large"
                assert message["error"]["message"] == "the message is over the limit of 2000 bytes"
            assert generation(ws, {"prompt": "Hi", "max_tokens": 2})[-1]["type"] == "done"


def test_closing_the_socket_cancels_the_generation(served, eventually):
    engine = served[1].state.server.engine
    with ws_client.connect(served[0]) as ws:
        ws.send(json.dumps({"prompt": "Once", "max_tokens": 4000, "seed": 1}))
        receive(ws)
        receive(ws)
        assert engine.active == 1
        cancelled = engine.stats.cancelled
    # Dropped at the engine's next step, not run to its 4000 tokens.
    assert eventually(lambda: engine.stats.cancelled == cancelled + 1 and not engine._sequences, 5)


def test_the_api_key_by_message_or_header(gpt2_gen, serve_on_loopback):
    with serve_on_loopback(gpt2_gen, ServerSettings(api_key="k3y")) as (url, _):
        url = url.replace("http://", "ws://") + "/v1/stream"
        with ws_client.connect(url) as ws:
            ws.send(json.dumps({"prompt": "Hi", "api_key": "wrong"}))
            error = receive(ws)["error"]
            assert error["code"] == "invalid_api_key"
            assert "the message's api_key field" in error["message"]  # what a browser can send
            with pytest.raises(ConnectionClosed):  # closed by the server: policy violation
                ws.recv(timeout=5)
            assert ws.close_code == 1008
        with ws_client.connect(url) as ws:
            assert generation(ws, {"prompt": "Hi", "max_tokens": 2, "api_key": "k3y"})[-1]["type"] == "done"
        with ws_client.connect(url, additional_headers={"Authorization": "Bearer k3y"}) as ws:
            assert generation(ws, {"prompt": "Hi", "max_tokens": 2})[-1]["type"] == "done"
        # a page's stale header does not outweigh the key it sends in the message
        with ws_client.connect(url, additional_headers={"Authorization": "Bearer old"}) as ws:
            assert generation(ws, {"prompt": "Hi", "max_tokens": 2, "api_key": "k3y"})[-1]["type"] == "done"


def test_an_api_key_with_a_lone_surrogate_is_a_wrong_key(gpt2_gen, serve_on_loopback):
    """JSON's "\\udce9" has no UTF-8: comparing it to the key raised, and the socket dropped
    with no reply."""
    with serve_on_loopback(gpt2_gen, ServerSettings(api_key="k3y")) as (url, _):
        with ws_client.connect(url.replace("http://", "ws://") + "/v1/stream") as ws:
            ws.send('{"prompt": "Hi", "api_key": "\\udce9"}')
            assert receive(ws)["error"]["code"] == "invalid_api_key"
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=5)
            assert ws.close_code == 1008


def test_min_tokens_errors_name_the_parameters_as_sent(served, gpt2_gen):
    """Without max_tokens, min_tokens past the default length came back in the library's
    names (min_new_tokens ... max_new_tokens) with param null."""
    default = gpt2_gen.defaults.max_new_tokens
    with ws_client.connect(served[0]) as ws:
        [message] = generation(ws, {"prompt": "Hi", "min_tokens": default + 1})
    assert message["type"] == "error" and message["error"]["param"] == "min_tokens"
    assert message["error"]["message"] == \
        f"min_tokens must be at most max_tokens ({default}, the default), got {default + 1}"


def test_min_tokens_the_window_cannot_hold_is_refused_by_name(optimum_gpt2_dir, serve_on_loopback):
    from tinygen import TextGenerator

    gen = TextGenerator(optimum_gpt2_dir, device="cpu")
    gen.defaults = gen.defaults.merged(slide_window=False)  # texts stop at the window
    room = gen.manifest.context_window - len(gen.tokenizer.encode("Hi"))
    with serve_on_loopback(gen) as (url, _):
        with ws_client.connect(url.replace("http://", "ws://") + "/v1/stream") as ws:
            [message] = generation(ws, {"prompt": "Hi", "max_tokens": room + 5, "min_tokens": room + 1})
            done = generation(ws, {"prompt": "Hi", "max_tokens": room + 5, "min_tokens": room, "seed": 1})[-1]
    assert message["type"] == "error" and message["error"]["param"] == "min_tokens"
    assert message["error"]["message"].startswith(f"min_tokens must be at most {room} on this model, "
                                                  f"whose window does not slide")
    assert done["type"] == "done" and done["completion_tokens"] == room
