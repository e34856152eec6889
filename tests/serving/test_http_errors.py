"""Bad input over HTTP: always a 4xx with OpenAI's error body, and the server goes on serving."""

import json
import threading

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from tinygen.serving import ServerSettings  # noqa: E402

LIMIT = 4096


@pytest.fixture(scope="module")
def served(gpt2_gen, serve_on_loopback):
    settings = ServerSettings(max_body_bytes=LIMIT, max_tokens_limit=500, max_n=4, max_batch=8)
    with serve_on_loopback(gpt2_gen, settings) as (url, app):
        yield url, app.state.server.model_id


def assert_error(reply, status, message=None, param=None, code=None):
    got_status, _, body = reply
    assert got_status == status, body
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    if message:
        assert message in body["error"]["message"]
    if param:
        assert body["error"]["param"] == param
    if code:
        assert body["error"]["code"] == code
    return body["error"]


def test_malformed_json(served, call):
    url, _ = served
    deep = b"[" * 2000 + b"]" * 2000  # within the body limit, past Python's recursion limit
    assert_error(call("POST", f"{url}/v1/completions", deep), 400, "not valid JSON", code="invalid_json")
    assert_error(call("POST", f"{url}/v1/completions", b'{"prompt": "Hi",'), 400, "not valid JSON",
                 code="invalid_json")
    assert_error(call("POST", f"{url}/v1/completions", b'\xff\xfe'), 400, "not valid JSON")
    assert_error(call("POST", f"{url}/v1/completions", b'["Hi"]'), 400, "must be a JSON object")


def test_unknown_parameters_are_named(served, call):
    url, model = served
    error = assert_error(call("POST", f"{url}/v1/completions", {"model": model, "prompt": "Hi", "temprature": 1}),
                         400, "unknown parameter 'temprature'", param="temprature")
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize("field,value,param", [
    ("temperature", -1, "temperature"), ("temperature", "hot", "temperature"), ("top_p", 0, "top_p"),
    ("n", 0, "n"), ("n", 5, "n"), ("max_tokens", 0, "max_tokens"), ("max_tokens", 501, "max_tokens"),
    ("logprobs", 6, "logprobs"), ("stop", ["a", "b", "c", "d", "e"], "stop"), ("stop", [""], "stop"),
    ("seed", -1, "seed"), ("seed", 1.5, "seed"), ("prompt", {"text": "Hi"}, "prompt"), ("prompt", [], "prompt"),
    ("stream", "yes", "stream"), ("logit_bias", {"x": 1}, "logit_bias"), ("logit_bias", {"3": 500}, "logit_bias"),
    ("logit_bias", {"\u00b2": 5}, "logit_bias"), ("logit_bias", {"\u0663": 5}, "logit_bias"),
    ("presence_penalty", 0.5, "presence_penalty"), ("best_of", 2, "best_of"), ("suffix", "end", "suffix"),
    ("top_k", -1, "top_k"), ("repetition_penalty", 0, "repetition_penalty"),
    ("stop", ["x" * 1001], "stop"), ("min_tokens", 501, "min_tokens"), ("min_tokens", -1, "min_tokens"),
    # Lone surrogates: what JSON's \udce9 escape makes of bytes that were not UTF-8.
    ("prompt", "caf\udce9", "prompt"), ("prompt", ["Hi", "caf\udce9"], "prompt"), ("stop", ["\udce9"], "stop"),
])
def test_bad_values_name_their_parameter(served, call, field, value, param):
    url, model = served
    assert_error(call("POST", f"{url}/v1/completions", {"model": model, "prompt": "Hi", field: value}), 400,
                 param=param)


def test_stream_options_take_a_boolean_include_usage(served, call):
    url, model = served
    body = {"model": model, "prompt": "Hi", "max_tokens": 2, "stream": True}
    for options in ({"include_usage": "yes"}, {"include_usage": 1}, {"usage": True}, ["include_usage"]):
        assert_error(call("POST", f"{url}/v1/completions", {**body, "stream_options": options}), 400,
                     param="stream_options")


def test_a_huge_float_is_named_as_sent(served, call):
    url, model = served
    body = {"model": model, "prompt": "Hi", "seed": 1e300}
    error = assert_error(call("POST", f"{url}/v1/completions", body), 400, param="seed")
    assert error["message"].endswith("got 1e+300")


def test_missing_and_unknown_models(served, call):
    url, model = served
    assert_error(call("POST", f"{url}/v1/completions", {"prompt": "Hi"}), 400, param="model")
    assert_error(call("POST", f"{url}/v1/completions", {"model": "gpt-4", "prompt": "Hi"}), 404,
                 "does not exist", code="model_not_found")
    assert_error(call("GET", f"{url}/v1/models/gpt-4"), 404, code="model_not_found")
    for wrong in ([model], {"id": model}, 3):  # not an unknown model: not a name at all
        assert_error(call("POST", f"{url}/v1/completions", {"model": wrong, "prompt": "Hi"}), 400,
                     f"model must be a string, got {json.dumps(wrong)}", param="model")


def test_a_null_prompt_is_the_default_one(served, call):
    """As null is for every other parameter; it was a 400 (prompt must be a string ...)."""
    url, model = served
    body = {"model": model, "max_tokens": 3, "seed": 5}
    status, _, left_out = call("POST", f"{url}/v1/completions", body)
    null_status, _, null = call("POST", f"{url}/v1/completions", {**body, "prompt": None})
    assert status == null_status == 200, null
    assert null["choices"][0]["text"] == left_out["choices"][0]["text"]


def test_values_are_shown_as_sent(served, call):
    """In JSON's spelling, not Python's: true not True, "yes" not 'yes'; long ones cut short."""
    url, model = served
    for field, value, shown in [("stream", "yes", '"yes"'), ("echo", 1, "1"), ("logprobs", True, "true"),
                                ("temperature", "h\u00f6t", '"h\u00f6t"'),
                                ("seed", [1] * 40, "[" + "1, " * 18 + "1,...")]:
        error = assert_error(call("POST", f"{url}/v1/completions",
                                  {"model": model, "prompt": "Hi", field: value}), 400, param=field)
        assert error["message"].endswith(f"got {shown}"), error


@pytest.mark.parametrize("field,value,status", [
    ("model", "caf\udce9", 404), ("caf\udce9", 1, 400), ("temperature", "caf\udce9", 400),
    ("logit_bias", {"caf\udce9": 1}, 400)])
def test_a_lone_surrogate_repeated_in_an_error_is_escaped(served, call, field, value, status):
    """JSON's \\udce9 escape makes text with no UTF-8: an error that quotes it was a 500."""
    url, model = served
    error = assert_error(call("POST", f"{url}/v1/completions", {"model": model, "prompt": "Hi", field: value}),
                         status)
    assert "caf\\udce9" in error["message"]


def test_oversized_bodies_are_refused_before_reading_them(served, call):
    url, model = served
    big = {"model": model, "prompt": "x" * LIMIT}
    assert_error(call("POST", f"{url}/v1/completions", big), 413, "over the limit of 4096 bytes",
                 code="request_too_large")


def test_a_prompt_longer_than_the_window_is_a_400(served, call, gpt2_gen):
    url, model = served
    ids = [5] * gpt2_gen.manifest.context_window
    assert_error(call("POST", f"{url}/v1/completions", {"model": model, "prompt": ids}), 400,
                 "the model's window is 128 tokens", param="prompt", code="context_length_exceeded")
    assert_error(call("POST", f"{url}/v1/completions", {"model": model, "prompt": [99999]}), 400,
                 "outside the vocabulary", param="prompt")


def test_too_many_sequences_in_one_request(served, call):
    """Named by the parameter that makes too many (before any prompt is tokenized)."""
    url, model = served
    assert_error(call("POST", f"{url}/v1/completions", {"model": model, "prompt": ["a", "b", "c"], "n": 4}),
                 400, "12 sequences asked for (prompts x n); this server decodes at most 8 at once",
                 param="n")
    assert_error(call("POST", f"{url}/v1/completions", {"model": model, "prompt": ["a"] * 9}),
                 400, "9 sequences asked for", param="prompt")


def test_unknown_routes_and_methods_are_json_too(served, call):
    url, _ = served
    assert_error(call("GET", f"{url}/v1/chat/completions"), 404)
    assert_error(call("POST", f"{url}/v1/chat/completions", {"model": "m", "messages": []}), 404,
                 "no chat completions (its model completes text): use POST /v1/completions")
    assert_error(call("GET", f"{url}/v1/completions"), 405)


def test_too_many_concurrent_requests_get_429(gpt2_gen, serve_on_loopback, call, eventually):
    with serve_on_loopback(gpt2_gen, ServerSettings(max_batch=1, max_waiting=1)) as (url, app):
        model = app.state.server.model_id
        engine = app.state.server.engine
        long = {"model": model, "prompt": "Once", "max_tokens": 4000, "seed": 1}
        holders = [threading.Thread(target=call, args=("POST", f"{url}/v1/completions", long),
                                    kwargs={"timeout": 60}) for _ in range(2)]
        holders[0].start()  # it decodes
        assert eventually(lambda: engine.active == 1, 10)
        holders[1].start()  # it waits
        assert eventually(lambda: engine.waiting == 1, 10)
        status, headers, body = call("POST", f"{url}/v1/completions", long)
        assert status == 429 and headers["Retry-After"] == "1"
        assert body["error"]["code"] == "server_busy" and "try again" in body["error"]["message"]
        # Free the slots (the same as the clients going away) so the threads end.
        for handle in {s.owner for s in engine._sequences} | {h for h, _ in engine._waiting}:
            handle._loop.call_soon_threadsafe(handle.cancel)
        for t in holders:
            t.join(30)


def test_the_server_still_serves_after_all_that(served, call):
    url, model = served
    status, _, body = call("POST", f"{url}/v1/completions", {"model": model, "prompt": "Hi", "max_tokens": 3,
                                                             "seed": 1})
    assert status == 200 and body["choices"][0]["seed"] == 1
    assert json.dumps(body)  # plain JSON throughout



def test_every_seed_a_reply_reports_is_one_it_takes_back(served, call):
    url, model = served
    last = 2**63 - 1
    status, _, body = call("POST", f"{url}/v1/completions",
                           {"model": model, "prompt": ["a", "b"], "n": 2, "seed": last - 3, "max_tokens": 2})
    assert status == 200 and max(c["seed"] for c in body["choices"]) == last
    assert_error(call("POST", f"{url}/v1/completions",
                      {"model": model, "prompt": ["a", "b"], "n": 2, "seed": last - 2, "max_tokens": 2}),
                 400, f"seed must be an integer from 0 to {last - 3}", param="seed")


def test_the_models_default_length_keeps_to_the_limit(gpt2_gen, serve_on_loopback, call):
    limit = gpt2_gen.defaults.max_new_tokens - 1
    with serve_on_loopback(gpt2_gen, ServerSettings(max_tokens_limit=limit)) as (url, app):
        body = {"model": app.state.server.model_id, "prompt": "Once", "seed": 1}
        status, _, reply = call("POST", f"{url}/v1/completions", {**body, "stop": None})
    want = gpt2_gen.generate("Once", seed=1, max_new_tokens=limit, stop_at_eos=True)[0]
    assert status == 200 and reply["choices"][0]["text"] == str(want)
    assert reply["usage"]["completion_tokens"] == len(want.token_ids) <= limit


def test_min_tokens_past_the_default_max_tokens_is_named_as_sent(served, call, gpt2_gen):
    """Without max_tokens, min_tokens past the model's default length was refused by the
    library in its own names (min_new_tokens ... max_new_tokens (64)) with param null."""
    url, model = served
    default = gpt2_gen.defaults.max_new_tokens
    body = {"model": model, "prompt": "Hi", "min_tokens": default + 1}
    error = assert_error(call("POST", f"{url}/v1/completions", body), 400, param="min_tokens")
    assert error["message"] == f"min_tokens must be at most max_tokens ({default}, the default), got {default + 1}"
    error = assert_error(call("POST", f"{url}/v1/completions", {**body, "max_tokens": 5}), 400,
                         param="min_tokens")
    assert error["message"] == f"min_tokens must be at most max_tokens (5), got {default + 1}"
    status, _, reply = call("POST", f"{url}/v1/completions", {**body, "min_tokens": default, "seed": 1})
    assert status == 200, reply


@pytest.fixture(scope="module")
def unsliding(optimum_gpt2_dir, serve_on_loopback):
    """A model whose texts stop at its window (generation defaults slide_window=False)."""
    from tinygen import TextGenerator

    gen = TextGenerator(optimum_gpt2_dir, device="cpu")
    gen.defaults = gen.defaults.merged(slide_window=False)
    with serve_on_loopback(gen) as (url, app):
        yield url, app.state.server.model_id, gen


def test_min_tokens_the_window_cannot_hold_is_refused_by_name(unsliding, call):
    """Where the window does not slide, a text ends there: a min_tokens past that room was
    silently cut short (finish_reason "length" at the window)."""
    url, model, gen = unsliding
    window = gen.manifest.context_window
    room = window - len(gen.tokenizer.encode("Hi"))
    body = {"model": model, "prompt": "Hi", "max_tokens": room + 10, "min_tokens": room + 1, "seed": 1}
    error = assert_error(call("POST", f"{url}/v1/completions", body), 400, param="min_tokens")
    assert error["message"] == (
        f"min_tokens must be at most {room} on this model, whose window does not slide: the room the "
        f"window ({window} tokens) leaves after the prompt ({window - room} tokens), got {room + 1}; "
        f"lower min_tokens, or let the window slide")
    status, _, reply = call("POST", f"{url}/v1/completions", {**body, "min_tokens": room})
    assert status == 200 and reply["usage"]["completion_tokens"] == room
