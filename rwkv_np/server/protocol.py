"""The OpenAI API's shapes: request bodies checked into engine terms, errors, response bodies.

Errors are OpenAI's JSON, {"error": {"message", "type", "param", "code"}}, with the status
    400  the body is not JSON or not an object; a value out of range (max_tokens <= 0,
         temperature < 0 ...); n != 1; a parameter rwkv-np serve does not implement
    404  a model other than the one served (code "model_not_found"); an unknown path
    413  a body or prompt over the server's limit
    422  a field of the wrong type, or a required field missing

Chat prompts follow the model: World models (vocab 65536) get the format they were tuned on,
"System: ...\\n\\nUser: ...\\n\\nAssistant:" with each message's blank lines folded to single
newlines, and stop at "\\n\\n"; other models a plain transcript as `rwkv-np chat` writes it
(system text as an opening paragraph, "User: ...\\n\\nBot:"), stopping at "\\n\\n" or "\\nUser:".
Each message is tokenized on its own, so a shared system prompt or an earlier turn is the same
token prefix in every request (the prefix cache's key); message ends are the checkpoints cached.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

from ..world_vocab import WORLD_VOCAB_SIZE
from .request import Sampling

ERROR_TYPES = {400: "invalid_request_error", 404: "invalid_request_error", 413: "invalid_request_error",
               422: "invalid_request_error", 500: "server_error", 503: "server_error"}
UNSUPPORTED = {  # parameter: the values that ask for nothing (anything else is refused)
    "echo": (None, False), "logprobs": (None, False), "top_logprobs": (None, 0), "suffix": (None, ""),
    "logit_bias": (None,), "best_of": (None, 1), "tools": (None,), "functions": (None,)}


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        return error_body(self.status, self.message, self.param, self.code)


def error_body(status: int, message: str, param=None, code=None) -> dict:
    return {"error": {"message": message, "type": ERROR_TYPES.get(status, "invalid_request_error"),
                      "param": param, "code": code}}


def parse_json(raw: bytes) -> dict:
    def refuse(constant):  # json reads NaN and Infinity; OpenAI's API does not
        raise ValueError(f"{constant} is not JSON")
    try:
        body = json.loads(raw, parse_constant=refuse)
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the request body is not valid JSON ({e})") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {type(body).__name__}")
    return body


# -- fields ----------------------------------------------------------------------------------------

def _number(body, name, default, lo=-math.inf, hi=math.inf, integer=False, lo_open=False):
    v = body.get(name)
    if v is None:
        return default
    kinds = (int,) if integer else (int, float)
    if isinstance(v, bool) or not isinstance(v, kinds):
        raise ApiError(422, f"{name}: expected {'an integer' if integer else 'a number'}, got {json.dumps(v)[:40]}",
                       name, "invalid_type")
    if not (lo < v if lo_open else lo <= v) or v > hi:
        bounds = f"{'>' if lo_open else '>='} {lo}" if hi == math.inf else f"in {'(' if lo_open else '['}{lo}, {hi}]"
        raise ApiError(400, f"{name}: must be {bounds}, got {v}", name, "invalid_value")
    return v


def _typed(body, name, kinds, what, default=None):
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, bool) and bool not in kinds or not isinstance(v, kinds):
        raise ApiError(422, f"{name}: expected {what}, got {json.dumps(v)[:40]}", name, "invalid_type")
    return v


def _stops(body, extra=()) -> tuple:
    stop = body.get("stop")
    stops = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise ApiError(422, "stop: expected a string or a list of strings", "stop", "invalid_type")
    if len(stops) > 16 or any(not s for s in stops):
        raise ApiError(400, "stop: at most 16 strings, none empty", "stop", "invalid_value")
    return tuple(dict.fromkeys([*stops, *extra]))


@dataclass
class Parsed:
    """A checked request, in engine terms."""
    ids: list                  # prompt token ids
    checkpoints: list          # prompt lengths worth caching (message ends)
    sampling: Sampling
    stream: bool
    include_usage: bool        # stream_options.include_usage: a last chunk with the usage
    chat: bool


def parse_request(body: dict, chat: bool, tokenizer, model_id: str, vocab_size: int,
                  default_max_tokens: int, max_prompt_tokens: int) -> Parsed:
    model = _typed(body, "model", (str,), "a string", model_id)
    if model != model_id:
        raise ApiError(404, f"model {model!r} does not exist; this server serves {model_id!r}", "model",
                       "model_not_found")
    for name, harmless in UNSUPPORTED.items():
        if name in body and body[name] not in harmless:
            raise ApiError(400, f"{name}: not supported by rwkv-np serve", name, "unsupported_parameter")
    if _number(body, "n", 1, 1, integer=True) != 1:
        raise ApiError(400, "n: only n = 1 is supported", "n", "unsupported_value")
    stream = _typed(body, "stream", (bool,), "true or false", False)
    options = _typed(body, "stream_options", (dict,), "an object", {})
    include_usage = _typed(options, "include_usage", (bool,), "true or false", False)
    if chat:
        ids, checkpoints, stops = chat_prompt(body.get("messages"), tokenizer, vocab_size)
        max_tokens = _number(body, "max_completion_tokens", None, 1, integer=True)
    else:
        ids, checkpoints, stops = completion_prompt(body.get("prompt"), tokenizer, vocab_size), [], ()
        max_tokens = None
    if max_tokens is None:
        max_tokens = _number(body, "max_tokens", default_max_tokens, 1, integer=True)
    if len(ids) > max_prompt_tokens:
        raise ApiError(413, f"the prompt has {len(ids)} tokens, more than this server's limit of "
                            f"{max_prompt_tokens}", "messages" if chat else "prompt", "context_length_exceeded")
    seed = _number(body, "seed", None, integer=True)
    sampling = Sampling(
        max_tokens=max_tokens, temperature=_number(body, "temperature", 1.0, 0, 2),
        top_p=_number(body, "top_p", 1.0, 0, 1), stop=_stops(body, stops),
        seed=None if seed is None else seed % 2**64,  # numpy takes seeds >= 0
        presence_penalty=_number(body, "presence_penalty", 0.0, -2, 2),
        frequency_penalty=_number(body, "frequency_penalty", 0.0, -2, 2))
    if sampling.top_p == 0:  # a nucleus of mass 0 keeps only the most probable token
        sampling = Sampling(**{**sampling.__dict__, "temperature": 0.0})
    return Parsed(ids, checkpoints, sampling, stream, include_usage, chat)


def completion_prompt(prompt, tokenizer, vocab_size: int) -> list:
    """A string, a list of one string, or token ids (a list of ints, or a list of one such list)."""
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        ids = tokenizer.encode(prompt)
    elif isinstance(prompt, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        if any(not 0 <= t < vocab_size for t in prompt):
            raise ApiError(400, f"prompt: token ids must be in [0, {vocab_size})", "prompt", "invalid_value")
        ids = prompt
    elif prompt is None:
        raise ApiError(422, "prompt: required", "prompt", "missing_required_parameter")
    elif isinstance(prompt, list) and all(isinstance(p, (str, list)) for p in prompt):
        raise ApiError(400, "prompt: one prompt per request (a batch of prompts is not supported)", "prompt",
                       "unsupported_value")
    else:
        raise ApiError(422, "prompt: expected a string or a list of token ids", "prompt", "invalid_type")
    if not ids:
        raise ApiError(400, "prompt: empty", "prompt", "invalid_value")
    return ids


ROLES = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant"}


def _content(message, i: int) -> str:
    content = message.get("content")
    if isinstance(content, list):  # content parts: text only
        if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                   for p in content):
            raise ApiError(400, f"messages[{i}].content: only text parts are supported", f"messages[{i}].content",
                           "unsupported_value")
        content = "".join(p["text"] for p in content)
    if content is None and message.get("role") == "assistant":
        content = ""
    if not isinstance(content, str):
        raise ApiError(422, f"messages[{i}].content: expected a string", f"messages[{i}].content", "invalid_type")
    return content


def chat_segments(messages: list, world: bool) -> tuple[list, tuple]:
    """OpenAI messages -> (text segments, stop strings); the segments joined are the prompt."""
    bot = "Assistant" if world else "Bot"
    segments = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ApiError(422, f"messages[{i}]: expected an object", f"messages[{i}]", "invalid_type")
        role, text = m.get("role"), _content(m, i).strip().replace("\r\n", "\n")
        if role not in ROLES:
            raise ApiError(400, f"messages[{i}].role: expected one of {sorted(ROLES)}, got {json.dumps(role)[:40]}",
                           f"messages[{i}].role", "invalid_value")
        if world:  # a blank line ends a turn in the World format
            text = re.sub(r"\n{2,}", "\n", text)
        name = bot if role == "assistant" else ROLES[role]
        if role == "assistant":  # "Bot:" apart, as the prompt that asked for this answer ended
            segments += [f"{name}:", f" {text}\n\n"]
        elif ROLES[role] == "System" and not world:
            segments.append(f"{text}\n\n")
        else:
            segments.append(f"{name}: {text}\n\n")
    segments.append(f"{bot}:")
    return segments, (("\n\n",) if world else ("\n\n", "\nUser:"))


def chat_prompt(messages, tokenizer, vocab_size: int) -> tuple[list, list, tuple]:
    """-> (prompt ids, checkpoints: the token count at each message's end, stop strings)."""
    if messages is None:
        raise ApiError(422, "messages: required", "messages", "missing_required_parameter")
    if not isinstance(messages, list):
        raise ApiError(422, "messages: expected a list of messages", "messages", "invalid_type")
    if not messages:
        raise ApiError(400, "messages: empty", "messages", "invalid_value")
    segments, stops = chat_segments(messages, world=vocab_size == WORLD_VOCAB_SIZE)
    ids, checkpoints = [], []
    for text in segments:
        ids += tokenizer.encode(text)
        checkpoints.append(len(ids))
    return ids, checkpoints[:-1], stops


# -- responses ---------------------------------------------------------------------------------------

def response_body(chat: bool, rid: str, created: int, model: str, text: str, finish: str, usage: dict) -> dict:
    choice = {"index": 0, "logprobs": None, "finish_reason": finish}
    choice.update({"message": {"role": "assistant", "content": text}} if chat else {"text": text})
    return {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": created,
            "model": model, "system_fingerprint": None, "choices": [choice], "usage": usage}


def chunk_body(chat: bool, rid: str, created: int, model: str, text: str | None = None,
               finish: str | None = None, role: bool = False, usage: dict | None = None) -> dict:
    """A streamed chunk: a text piece, the finish reason, the role (chat's first chunk), or only
    the usage (choices empty: stream_options.include_usage)."""
    if chat:
        delta = {"role": "assistant", "content": ""} if role else {} if text is None else {"content": text}
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    else:
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
    return {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion", "created": created,
            "model": model, "system_fingerprint": None, "choices": [] if usage else [choice],
            **({"usage": usage} if usage else {})}
