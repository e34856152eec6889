"""OpenAI's completions API: checking a request's parameters, and the JSON shapes of replies.

Requests follow https://platform.openai.com/docs/api-reference/completions: prompt (a
string, a list of strings, token ids, or a list of token-id lists), max_tokens,
temperature, top_p, n, stop, seed, logprobs, echo, stream, stream_options, logit_bias,
user. tinygen adds top_k, min_p, typical_p, repetition_penalty and no_repeat_ngram_size
(GenerationConfig's meanings). Any other name is a 400 that names it, as is a value
out of range; parameters OpenAI has and tinygen does not do (suffix, a penalty other
than 0, best_of other than n) are refused rather than ignored.

Options a request leaves out take the model's defaults, as `TextGenerator.generate`
does, so the same request with the same seed gives the same text through either.
Each choice carries its `seed` (an extra field) so any text can be made again alone.
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from ..config import check_utf8
from ..decoding import Completion, TokenProb
from ..errors import TinygenError, respell
from .settings import ServerSettings

# OpenAI's finish reasons: the text ended by itself or at a stop string, or ran out of room.
FINISH_REASONS = {"eos": "stop", "stop": "stop", "length": "length", "window": "length"}
LOGPROB_FLOOR = -9999.0  # JSON has no -inf: the logprob of a token with probability 0

OPENAI_PARAMS = {"model", "prompt", "max_tokens", "temperature", "top_p", "n", "stream",
                 "stream_options", "logprobs", "echo", "stop", "seed", "user", "logit_bias",
                 "presence_penalty", "frequency_penalty", "best_of", "suffix"}
# min_tokens as vLLM names it (GenerationConfig's min_new_tokens).
TINYGEN_PARAMS = {"top_k", "min_p", "typical_p", "repetition_penalty", "no_repeat_ngram_size",
                  "min_tokens"}
# The websocket takes the same sampling parameters, one text at a time, and its own extras.
SOCKET_PARAMS = (OPENAI_PARAMS | TINYGEN_PARAMS | {"api_key", "raw_probs", "type"}) - \
    {"n", "stream", "stream_options", "echo", "best_of", "suffix", "user"}
# The library names options as GenerationConfig does: in its messages to clients, as this API
# does (errors.respell). A request cannot make the window slide; the model's settings do.
PARAM_NAMES = {"max_new_tokens": "max_tokens", "min_new_tokens": "min_tokens",
               "with slide_window=False": "on this model, whose window does not slide"}


class ApiError(Exception):
    """A request the API refuses: the HTTP status and OpenAI's error body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error"):
        # A lone surrogate (JSON's "\udce9" in a name or value the message repeats) has no
        # UTF-8: shown escaped, or the reply itself could not be written.
        message = message.encode("utf-8", "backslashreplace").decode("utf-8")
        param = param.encode("utf-8", "backslashreplace").decode("utf-8") if param else param
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


@dataclass(frozen=True)
class CompletionRequest:
    prompt: Any  # str, token ids, or a list of either: what TextGenerator.generate takes
    n: int = 1
    seed: int | None = None
    stream: bool = False
    include_usage: bool = False
    logprobs: int | None = None  # alternatives per token; None: no logprobs
    echo: bool = False
    options: dict = field(default_factory=dict)  # GenerationConfig options the request set


def invalid_json(what: str, exc: Exception) -> ApiError:
    """The 400 for a body or message (`what`) that json refused. Python's advice for a number
    of over 4300 digits (call sys.set_int_max_str_digits()) is the server's, not the client's."""
    reason = str(exc)
    if reason.startswith("Exceeds the limit") and "sys.set_int_max_str_digits" in reason:
        reason = f"a number in it has over {sys.get_int_max_str_digits()} digits"
    return ApiError(400, f"{what} is not valid JSON ({reason})", code="invalid_json")


def failure_error(exc) -> ApiError:
    """A request the engine could not finish (serving.engine.GenerationFailed), with its status:
    400 where its own options left no token to sample, 503 shutting down, 500 a bug."""
    if exc.status == 400:
        return library_error(exc)
    return ApiError(exc.status, str(exc), type="server_error")


def library_error(exc: Exception, **fields) -> ApiError:
    """A 400 for a request the library refused (TinygenError), in this API's names: `param` is
    the parameter its message begins with (min_tokens must be ...), unless `fields` give one."""
    message = respell(str(exc), PARAM_NAMES)
    first = re.match(r"[a-z_]+(?=[ :])", message)
    if "param" not in fields and first and first[0] in OPENAI_PARAMS | TINYGEN_PARAMS:
        fields["param"] = first[0]
    return ApiError(400, message, **fields)


def parse_completion(body: dict, settings: ServerSettings, model_id: str, vocab_size: int,
                     socket: bool = False, default_max_tokens: int | None = None) -> CompletionRequest:
    """Check a /v1/completions body (socket: a websocket message) -> CompletionRequest, or ApiError.

    default_max_tokens: the model's default length, which a request without max_tokens gets
    up to settings.max_tokens_limit."""
    allowed = SOCKET_PARAMS if socket else OPENAI_PARAMS | TINYGEN_PARAMS
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ApiError(400, f"unknown parameter '{unknown[0]}'", param=unknown[0], code="unknown_parameter")
    p = _Reader(body)
    model = body.get("model")
    if model is None and not socket:
        raise ApiError(400, "you must provide a model parameter", param="model")
    if model is not None and not isinstance(model, str):
        raise ApiError(400, f"model must be a string, got {_json(model)}", param="model")
    if model is not None and model != model_id:
        raise ApiError(404, f"the model '{model}' does not exist; this server has '{model_id}'",
                       param="model", code="model_not_found")
    for name in ("suffix",):
        if body.get(name) is not None:
            raise ApiError(400, f"{name} is not supported", param=name, code="unsupported_parameter")
    for name in ("presence_penalty", "frequency_penalty"):
        if p.number(name, -2.0, 2.0, None) not in (None, 0, 0.0):
            raise ApiError(400, f"{name} is not supported (use repetition_penalty)", param=name,
                           code="unsupported_parameter")
    n = p.int("n", 1, settings.max_n, 1)
    best_of = p.int("best_of", 1, settings.max_n, None)
    if best_of not in (None, n):
        raise ApiError(400, "best_of is not supported (other than best_of = n)", param="best_of",
                       code="unsupported_parameter")
    if "user" in body and not isinstance(body["user"], (str, type(None))):
        raise ApiError(400, "user must be a string", param="user")
    options: dict[str, Any] = {
        "max_new_tokens": _max_tokens(p, settings.max_tokens_limit, default_max_tokens),
        "min_new_tokens": p.int("min_tokens", 0, settings.max_tokens_limit, None),
        "temperature": p.number("temperature", 0.0, 2.0, None),
        "top_p": p.number("top_p", 0.0, 1.0, None, open_low=True),
        "top_k": p.int("top_k", 0, vocab_size, None),
        "min_p": p.number("min_p", 0.0, 1.0, None),
        "typical_p": p.number("typical_p", 0.0, 1.0, None, open_low=True),
        "repetition_penalty": p.number("repetition_penalty", 0.0, 10.0, None, open_low=True),
        "no_repeat_ngram_size": p.int("no_repeat_ngram_size", 0, 64, None),
        "stop": _stop(body.get("stop"), settings.max_stop),
        "logit_bias": _logit_bias(body.get("logit_bias"), vocab_size),
    }
    # Without max_tokens, the model's default (or the limit) is the request's: min_tokens is
    # checked against that here, not refused later by the library in its own names.
    longest, which = options["max_new_tokens"], ""
    if body.get("max_tokens") is None:
        if longest is None and default_max_tokens is not None:
            longest, which = default_max_tokens, ", the default"
        else:  # a default over the limit is cut to it (_max_tokens)
            longest, which = settings.max_tokens_limit, ", the limit"
    if (options["min_new_tokens"] or 0) > longest:
        raise ApiError(400, f"min_tokens must be at most max_tokens ({longest}{which}), "
                            f"got {options['min_new_tokens']}", param="min_tokens")
    if socket:
        top_n = p.int("logprobs", 0, 20, 5)  # alternatives shown per token
        options.update(return_probs=True, top_n=top_n, raw_probs=p.bool("raw_probs", False))
        logprobs = None
    else:
        logprobs = p.int("logprobs", 0, settings.max_logprobs, None)
        if logprobs is not None:
            # OpenAI's logprobs are the model's own distribution, whatever the sampling settings.
            options.update(return_probs=True, top_n=logprobs, raw_probs=True)
    stream = p.bool("stream", False)
    stream_options = body.get("stream_options")
    if stream_options is not None:
        if not stream:
            raise ApiError(400, "stream_options needs stream: true", param="stream_options")
        if not isinstance(stream_options, dict) or set(stream_options) - {"include_usage"} or \
                not isinstance(stream_options.get("include_usage"), (bool, type(None))):
            raise ApiError(400, "stream_options takes only include_usage: true or false",
                           param="stream_options")
    echo = p.bool("echo", False)
    if echo and logprobs is not None:
        raise ApiError(400, "echo with logprobs is not supported", param="echo", code="unsupported_parameter")
    # null is the default here too, as for every other parameter: the empty prompt.
    prompt = _prompt("" if body.get("prompt") is None else body["prompt"], single=socket)
    # Text i gets seed + i and reports it: the last of them must be a seed this API takes back.
    rows = n * (len(prompt) if isinstance(prompt, list) and isinstance(prompt[0], (str, list)) else 1)
    if rows > settings.max_batch:  # refused before a prompt is tokenized
        raise ApiError(400, f"{rows} sequences asked for (prompts x n); this server decodes at "
                            f"most {settings.max_batch} at once",
                       param="prompt" if n == 1 else "n")
    seed = p.int("seed", 0, 2**63 - rows, None)
    return CompletionRequest(
        prompt=prompt, n=n, seed=seed, stream=stream,
        include_usage=bool((stream_options or {}).get("include_usage")), logprobs=logprobs, echo=echo,
        options={k: v for k, v in options.items() if v is not None})


class _Reader:
    """Typed reads of a JSON body, each refusal naming the parameter."""

    def __init__(self, body: dict):
        self.body = body

    def _get(self, name: str):
        return self.body.get(name)

    def int(self, name: str, low: int, high: int, default):
        sent = value = self._get(name)
        if value is None:
            return default
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            # `sent`: 1e300 as sent, not as its 301 digits
            raise ApiError(400, f"{name} must be an integer from {low} to {high}, got {_json(sent)}",
                           param=name)
        return value

    def number(self, name: str, low: float, high: float, default, open_low: bool = False):
        value = self._get(name)
        if value is None:
            return default
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
            and (low < value if open_low else low <= value) and value <= high
        if not ok:
            bounds = f"({low}, {high}]" if open_low else f"[{low}, {high}]"
            raise ApiError(400, f"{name} must be a number in {bounds}, got {_json(value)}", param=name)
        return float(value)

    def bool(self, name: str, default: bool) -> bool:
        value = self._get(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise ApiError(400, f"{name} must be true or false, got {_json(value)}", param=name)
        return value


def _json(value) -> str:
    """A value in a message as the client sent it (JSON's true, null, "text"), cut short."""
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def _prompt(value, single: bool = False):
    """single: a websocket streams one text, so it takes one prompt (a list would interleave)."""
    def is_ids(v):
        return isinstance(v, list) and v and all(isinstance(i, int) and not isinstance(i, bool) for i in v)

    if isinstance(value, str) or is_ids(value):
        return value
    if single:
        raise ApiError(400, "a websocket message takes one prompt: a string or a list of token ids",
                       param="prompt")
    if isinstance(value, list) and value and all(isinstance(v, str) or is_ids(v) for v in value):
        return value
    raise ApiError(400, "prompt must be a string, a list of strings, a list of token ids, "
                        "or a list of token-id lists (not empty)", param="prompt")


def _max_tokens(p: "_Reader", limit: int, default: int | None) -> int | None:
    asked = p.int("max_tokens", 1, limit, None)
    if asked is None and default is not None and default > limit:
        return limit  # the model's default is a request's too: it may not pass the limit either
    return asked


# Characters in one stop string: every step looks for the start of each stop string at the
# text's end, over as many characters as the stop string has, for every request in the batch.
MAX_STOP_CHARS = 1000


def _stop(value, limit: int):
    if value is None:
        return None
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > limit:
        raise ApiError(400, f"stop must be a non-empty string or a list of up to {limit} of them",
                       param="stop")
    if any(len(s) > MAX_STOP_CHARS for s in stops):
        raise ApiError(400, f"a stop string may have at most {MAX_STOP_CHARS} characters, got "
                            f"{max(len(s) for s in stops)}", param="stop")
    for stop in stops:  # JSON's \udce9 escape makes text that no tokenizer takes
        try:
            check_utf8(stop, f"stop {stop!r}")
        except TinygenError as exc:
            raise ApiError(400, str(exc), param="stop") from None
    return tuple(stops) or None


def _logit_bias(value, vocab_size: int):
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ApiError(400, "logit_bias must map token ids to numbers", param="logit_bias")
    bias = {}
    for key, number in value.items():
        # isdigit() alone takes "²" (int() refuses it) and "٣" (int() reads 3).
        if not (str(key).isascii() and str(key).isdigit()) or int(key) >= vocab_size:
            raise ApiError(400, f"logit_bias: '{key}' is not a token id (0..{vocab_size - 1})",
                           param="logit_bias")
        if not isinstance(number, (int, float)) or isinstance(number, bool) or not -100 <= number <= 100:
            raise ApiError(400, f"logit_bias: the bias of token {key} must be a number in [-100, 100]",
                           param="logit_bias")
        bias[int(key)] = float(number)
    return bias or None


# -- replies ----------------------------------------------------------------------------

def new_id() -> str:
    return f"cmpl-{uuid.uuid4().hex[:24]}"


def completion_body(request_id: str, model_id: str, choices: list[dict], usage: dict | None,
                    created: int | None = None) -> dict:
    body = {"id": request_id, "object": "text_completion", "created": created or int(time.time()),
            "model": model_id, "system_fingerprint": "tinygen", "choices": choices}
    if usage is not None:
        body["usage"] = usage
    return body


def choice(index: int, text: str, finish_reason: str | None, seed: int | None,
           logprobs: dict | None = None) -> dict:
    return {"index": index, "text": text, "logprobs": logprobs,
            "finish_reason": FINISH_REASONS.get(finish_reason, finish_reason), "seed": seed}


def logprobs_block(token_probs: tuple[TokenProb, ...], offset: int) -> dict:
    """OpenAI's legacy logprobs for some tokens; `offset` is the first token's place in the text."""
    tokens, logprobs, top, offsets = [], [], [], []
    for tp in token_probs:
        tokens.append(tp.text)
        logprobs.append(_log(tp.prob))
        # OpenAI's top_logprobs also hold the token drawn (logprobs + 1 of them, at most).
        top.append({text: _log(prob) for text, prob in tp.top} | {tp.text: logprobs[-1]})
        offsets.append(offset)
        offset += len(tp.text)
    return {"tokens": tokens, "token_logprobs": logprobs, "top_logprobs": top, "text_offset": offsets}


def full_choice(index: int, completion: Completion, prefix: str, with_logprobs: bool) -> dict:
    logprobs = logprobs_block(completion.token_probs, len(prefix)) if with_logprobs else None
    return choice(index, prefix + completion, completion.finish_reason, completion.seed, logprobs)


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _log(prob: float) -> float:
    return math.log(prob) if prob > 0 else LOGPROB_FLOOR
