"""The official `openai` client, unchanged, against `tinygen serve` on loopback."""

import json
import math
import socket
import threading

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from tinygen.serving import ServerSettings  # noqa: E402


@pytest.fixture(scope="module")
def served(gpt2_gen, serve_on_loopback):
    with serve_on_loopback(gpt2_gen, ServerSettings(max_batch=16)) as (url, app):
        yield url, app


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=f"{served[0]}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def model_id(client):
    return client.models.list().data[0].id


def test_models_lists_the_one_model(client, optimum_gpt2_dir):
    [model] = client.models.list().data
    assert model.id == optimum_gpt2_dir.name and model.owned_by == "tinygen"
    assert client.models.retrieve(model.id).id == model.id


def test_a_completion_with_a_seed_is_the_text_generate_makes(client, model_id, gpt2_gen):
    reply = client.completions.create(model=model_id, prompt="Once upon a time", max_tokens=24, seed=11,
                                      temperature=0.9, top_p=0.95)
    [want] = gpt2_gen.generate("Once upon a time", seed=11, max_new_tokens=24, temperature=0.9, top_p=0.95)
    [choice] = reply.choices
    assert choice.text == str(want) and choice.seed == 11
    assert choice.finish_reason == {"eos": "stop", "length": "length"}[want.finish_reason]
    assert reply.usage.completion_tokens == len(want.token_ids)
    assert reply.usage.prompt_tokens == len(gpt2_gen.tokenizer.encode("Once upon a time"))
    assert reply.object == "text_completion" and reply.model == model_id


def test_prompt_lists_and_n_number_choices_as_generate_seeds_them(client, model_id, gpt2_gen):
    prompts = ["Once upon a time", "To be"]
    reply = client.completions.create(model=model_id, prompt=prompts, n=3, max_tokens=12, seed=40)
    want = gpt2_gen.generate(prompts, n=3, seed=40, max_new_tokens=12)
    got = sorted(reply.choices, key=lambda c: c.index)
    assert [c.text for c in got] == [str(w) for w in want]
    assert [c.seed for c in got] == list(range(40, 46))


def test_token_id_prompts(client, model_id, gpt2_gen):
    ids = gpt2_gen.tokenizer.encode("The quick brown fox")
    reply = client.completions.create(model=model_id, prompt=ids, max_tokens=10, seed=3)
    assert reply.choices[0].text == str(gpt2_gen.generate(ids, seed=3, max_new_tokens=10)[0])


def test_streaming_gives_the_same_text_and_usage_last(client, model_id, gpt2_gen):
    stream = client.completions.create(model=model_id, prompt=["Once upon a time", "To be"], n=2,
                                       max_tokens=30, seed=7, stream=True,
                                       stream_options={"include_usage": True})
    texts, finish, usage = {}, {}, None
    for chunk in stream:
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + c.text
            if c.finish_reason:
                finish[c.index] = c.finish_reason
        if chunk.usage:
            usage = chunk.usage
    want = gpt2_gen.generate(["Once upon a time", "To be"], n=2, seed=7, max_new_tokens=30)
    assert [texts[i] for i in range(4)] == [str(w) for w in want]
    assert sorted(finish) == [0, 1, 2, 3]
    assert usage.completion_tokens == sum(len(w.token_ids) for w in want)


def test_with_include_usage_every_chunk_has_the_field_null_but_the_last(served, call, model_id):
    body = {"model": model_id, "prompt": "Once upon a time", "max_tokens": 6, "seed": 3, "stream": True}
    for include, want_field in ((True, True), (False, False)):
        status, _, raw = call("POST", f"{served[0]}/v1/completions",
                              {**body, "stream_options": {"include_usage": include}})
        chunks = [json.loads(line[6:]) for line in raw.decode().splitlines()
                  if line.startswith("data: ") and line != "data: [DONE]"]
        assert status == 200 and len(chunks) > 2
        assert all(("usage" in c) == want_field for c in chunks)
        if include:
            assert all(c["usage"] is None for c in chunks[:-1])
            assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 6


def test_greedy_needs_no_seed(client, model_id, gpt2_gen):
    reply = client.completions.create(model=model_id, prompt="To be", max_tokens=10, temperature=0)
    assert reply.choices[0].seed is None
    assert reply.choices[0].text == str(gpt2_gen.generate("To be", do_sample=False, max_new_tokens=10)[0])


def test_logprobs_are_the_models_own(client, model_id, gpt2_gen):
    reply = client.completions.create(model=model_id, prompt="Once upon a time", max_tokens=8, seed=5,
                                      temperature=0.7, logprobs=3)
    [want] = gpt2_gen.generate("Once upon a time", seed=5, max_new_tokens=8, temperature=0.7,
                               return_probs=True, raw_probs=True, top_n=3)
    lp = reply.choices[0].logprobs
    assert lp.tokens == [tp.text for tp in want.token_probs]
    assert lp.token_logprobs == pytest.approx([math.log(tp.prob) for tp in want.token_probs], abs=1e-4)
    assert all(len(top) <= 4 for top in lp.top_logprobs)  # the 3 likeliest and the one drawn
    assert lp.text_offset[0] == 0


def test_top_logprobs_hold_the_token_drawn_as_openais_do(client, model_id):
    # OpenAI: "the API will always return the logprob of the sampled token, so there may be
    # up to logprobs+1 elements": a token drawn from outside the likeliest ones is among them.
    reply = client.completions.create(model=model_id, prompt="Once upon a time", max_tokens=30, seed=3,
                                      temperature=2.0, logprobs=1)
    lp = reply.choices[0].logprobs
    assert any(len(top) == 2 for top in lp.top_logprobs)  # drawn from outside the likeliest
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert token in top and len(top) <= 2
        if "\ufffd" not in token:  # part of a character: other tokens may show the same text
            assert top[token] == pytest.approx(logprob)


def test_echo_and_stop(client, model_id, gpt2_gen):
    [want] = gpt2_gen.generate("Once upon a time", seed=9, max_new_tokens=40, stop=["e"])
    reply = client.completions.create(model=model_id, prompt="Once upon a time", max_tokens=40, seed=9,
                                      stop="e", echo=True)
    assert reply.choices[0].text == "Once upon a time" + str(want)


def test_concurrent_clients_share_decode_steps_and_keep_their_texts(client, model_id, gpt2_gen, served):
    engine = served[1].state.server.engine
    before = engine.stats.steps
    results = {}

    def ask(seed):
        reply = client.completions.create(model=model_id, prompt="It read every book", max_tokens=40,
                                          seed=seed, stream=seed % 2 == 0)
        if seed % 2 == 0:
            results[seed] = "".join(c.choices[0].text for c in reply if c.choices)
        else:
            results[seed] = reply.choices[0].text

    threads = [threading.Thread(target=ask, args=(s,)) for s in range(200, 208)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    want = gpt2_gen.generate("It read every book", n=8, seed=200, max_new_tokens=40)
    assert [results[s] for s in range(200, 208)] == [str(w) for w in want]
    assert engine.stats.most_requests_in_a_step > 1
    assert engine.stats.steps - before < sum(len(w.token_ids) for w in want)  # steps were shared


def test_health_reports_the_engine(served, call, model_id):
    status, _, before = call("GET", f"{served[0]}/health")
    assert status == 200 and before["status"] == "ok" and before["active"] == 0
    call("POST", f"{served[0]}/v1/completions", {"model": model_id, "prompt": "Once", "max_tokens": 3,
                                                 "temperature": 0})
    after = call("GET", f"{served[0]}/health")[2]
    assert after["active"] == 0 and after["stats"]["steps"] >= before["stats"]["steps"] + 3


def test_a_client_that_disconnects_frees_its_rows_at_once(served, model_id, eventually):
    url = served[0]
    port = int(url.rsplit(":", 1)[1])
    body = (b'{"model": "%s", "prompt": "Once upon a time", "max_tokens": 4000, "stream": true, '
            b'"seed": 1}' % model_id.encode())
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(body) + body)
    received = b""
    while b"data: " not in received:
        chunk = sock.recv(4096)
        assert chunk, f"the server closed the stream before its first token: {received[:200]!r}"
        received += chunk
    engine = served[1].state.server.engine
    assert eventually(lambda: engine.active == 1, 5)
    cancelled = engine.stats.cancelled
    sock.close()
    # Dropped at the engine's next step, not run to its 4000 tokens.
    assert eventually(lambda: engine.stats.cancelled == cancelled + 1 and not engine._sequences, 5)


def test_a_blocking_request_whose_client_leaves_is_cancelled(served, model_id, eventually):
    url = served[0]
    port = int(url.rsplit(":", 1)[1])
    body = b'{"model": "%s", "prompt": "Once", "max_tokens": 4000, "seed": 2}' % model_id.encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(body) + body)
    engine = served[1].state.server.engine
    assert eventually(lambda: engine.active == 1, 5)
    cancelled = engine.stats.cancelled
    sock.close()
    # Dropped at the engine's next step, not run to its 4000 tokens.
    assert eventually(lambda: engine.stats.cancelled == cancelled + 1 and not engine._sequences, 5)


def test_an_api_key_is_required_when_set(gpt2_gen, serve_on_loopback):
    with serve_on_loopback(gpt2_gen, ServerSettings(api_key="s3cret")) as (url, _):
        anonymous = openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as info:
            anonymous.models.list()
        assert info.value.body["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            anonymous.completions.create(model="x", prompt="Hi", max_tokens=2)
        keyed = openai.OpenAI(base_url=f"{url}/v1", api_key="s3cret", max_retries=0)
        model = keyed.models.list().data[0].id
        assert keyed.completions.create(model=model, prompt="Hi", max_tokens=2, seed=1).choices[0].seed == 1


@pytest.mark.parametrize("options", [{"temperature": 1e-300}, {"repetition_penalty": 1e-300}])
def test_extreme_sampling_values_give_generates_text(client, model_id, gpt2_gen, options):
    """float32 turned these into division by zero: the server answered 500, or token 0."""
    reply = client.completions.create(model=model_id, prompt="Once upon a time", max_tokens=12, seed=5,
                                      extra_body=options)
    [want] = gpt2_gen.generate("Once upon a time", seed=5, max_new_tokens=12, **options)
    assert reply.choices[0].text == str(want) and len(want.token_ids) > 1


def test_a_request_its_own_options_leave_without_a_token_is_a_400():
    from tinygen.sampling import NOTHING_LEFT
    from tinygen.serving import GenerationFailed
    from tinygen.serving.openai_api import failure_error

    assert failure_error(GenerationFailed(NOTHING_LEFT, 400)).body()["error"]["type"] == \
        "invalid_request_error"
    assert failure_error(GenerationFailed("the server is shutting down", 503)).status == 503
    assert failure_error(GenerationFailed("generation failed: a bug")).status == 500


def test_streamed_text_offsets_are_the_ones_a_full_reply_gives(client, model_id, gpt2_gen):
    # A stop string that starts inside a token and then does not match: the stream shows that
    # token's text only in part at first (the rest might be the stop string's start), so the
    # offsets must count the tokens' texts, not the text shown so far.
    [text] = gpt2_gen.generate("Once upon a time", do_sample=False, max_new_tokens=20,
                               return_probs=True, top_n=1)
    tokens = [tp.text for tp in text.token_probs]
    j = next(i for i, t in enumerate(tokens[:-1]) if len(t) > 1 and t.isascii())
    stop = tokens[j][1:] + "\x07never"
    ask = dict(model=model_id, prompt="Once upon a time", max_tokens=20, temperature=0, stop=stop, logprobs=1)
    full = client.completions.create(**ask).choices[0].logprobs.text_offset
    streamed = []
    for chunk in client.completions.create(**ask, stream=True):
        for c in chunk.choices:
            streamed += c.logprobs.text_offset if c.logprobs else []
    assert streamed == full


@pytest.mark.parametrize("stream", [False, True])
def test_logprobs_of_a_text_cut_at_a_stop_are_its_own_tokens(client, model_id, gpt2_gen, stream):
    """The tokens of the stop string a text was cut at are not the text's: its logprobs end
    with the token the cut falls in, and every token begins inside the text."""
    [text] = gpt2_gen.generate("Once upon a time", do_sample=False, max_new_tokens=20,
                               return_probs=True, top_n=1)
    tokens = [tp.text for tp in text.token_probs]
    j = next(i for i in range(1, len(tokens) - 1) if "".join(tokens[:i + 2]).isascii())
    k = 1 if len(tokens[j]) > 1 else 0
    stop = tokens[j][k:] + tokens[j + 1]  # starts in token j (inside it where it can) and runs on
    assert "".join(tokens[:j + 2]).find(stop) == len("".join(tokens[:j])) + k  # nowhere sooner
    ask = dict(model=model_id, prompt="Once upon a time", max_tokens=20, temperature=0, stop=stop, logprobs=1)
    if stream:
        shown, got, offsets = "", [], []
        for chunk in client.completions.create(**ask, stream=True):
            for c in chunk.choices:
                shown += c.text
                got += c.logprobs.tokens if c.logprobs else []
                offsets += c.logprobs.text_offset if c.logprobs else []
    else:
        [choice] = client.completions.create(**ask).choices
        shown, got, offsets = choice.text, choice.logprobs.tokens, choice.logprobs.text_offset
    assert shown == "".join(tokens[:j]) + tokens[j][:k]
    assert got == tokens[:j + k]  # token j only where the cut falls inside it
    assert offsets == [len("".join(tokens[:i])) for i in range(j + k)] and offsets[-1] < len(shown)


def test_min_tokens_holds_the_end_back_as_generate_does(client, model_id, gpt2_gen):
    """min_tokens (vLLM's name) is generate's min_new_tokens: with EOS all but certain, a
    text of exactly that many tokens, the same as generate's for the seed."""
    [eos] = gpt2_gen.manifest.eos_token_ids[:1]
    options = dict(prompt="Once", max_tokens=20, seed=3, logit_bias={str(eos): 50})
    assert client.completions.create(model=model_id, **options).choices[0].text == ""
    reply = client.completions.create(model=model_id, extra_body={"min_tokens": 6}, **options)
    [made] = gpt2_gen.generate("Once", max_new_tokens=20, seed=3, min_new_tokens=6,
                               logit_bias={eos: 50.0})
    assert len(made.token_ids) == 6 and made.finish_reason == "eos"
    assert reply.choices[0].text == made and reply.choices[0].finish_reason == "stop"
    assert reply.usage.completion_tokens == 6
    with pytest.raises(openai.BadRequestError, match="min_tokens must be at most max_tokens"):
        client.completions.create(model=model_id, extra_body={"min_tokens": 30}, **options)


def test_a_stream_has_one_id_and_one_created_time(client, model_id, monkeypatch):
    """As OpenAI's: every chunk of a stream carries the same id and `created`, however long
    the stream takes (a clock that ticks a second a call stands in for a long one)."""
    import itertools

    from tinygen.serving import app, openai_api

    ticks = itertools.count(1_700_000_000)
    clock = type("Clock", (), {"time": staticmethod(lambda: next(ticks))})
    monkeypatch.setattr(openai_api, "time", clock)
    monkeypatch.setattr(app, "time", clock)
    chunks = list(client.completions.create(model=model_id, prompt="Once", max_tokens=8, seed=1,
                                            stream=True))
    assert len(chunks) > 2
    assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1
