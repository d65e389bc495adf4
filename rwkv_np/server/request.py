"""One request inside the engine: its prompt, how it picks tokens, and the text it sends back.

The engine (engine.py) moves a Request through two phases:
  prefill   the prompt ids are fed from `pos` (past any cached prefix) to the end, in chunks;
  decode    the request is a row of the batch: each step `choose` picks its next token from the
            row's logits and `accept` turns the token into text and says whether it is finished.

Token choice is rwkv_np.sampling's, per row: presence/frequency penalties (ChatRWKV's, with
decay), then argmax when temperature is 0, else temperature and top-p and a draw from the
request's own generator (so a seeded request gets the same text whatever else is in the batch).

Text is decoded from token bytes with StreamDecoder (never half a UTF-8 character). Text that
could be the start of a stop string is held back until that is decided, and the text is cut just
before the first stop string found, as generation.TextStream does. The model's eos token ends a
request too (finish_reason "stop") and is not sent as text.

Everything goes back through `emit(event)`, called from the engine thread:
    ("text", piece)                      new text
    ("done", finish_reason, usage)       the end: "stop" or "length", and the token counts
    ("error", message)                   the engine failed on this request
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..generation import choose_tokens
from ..sampling import Penalties
from ..tokenizer import StreamDecoder, Tokenizer

PENALTY_DECAY = 0.996  # ChatRWKV's alpha_decay: the counts behind frequency_penalty fade per token


@dataclass(frozen=True)
class Sampling:
    max_tokens: int = 16
    temperature: float = 1.0        # 0: greedy (argmax)
    top_p: float = 1.0              # 1: off
    stop: tuple = ()                # strings; the text ends just before the first one found
    seed: int | None = None         # None: fresh entropy
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0


def release(pending: str, stops, final: bool) -> tuple[str, str, bool]:
    """Text not yet sent -> (text safe to send, text held back, a stop string was found).

    Cut before the earliest stop string; otherwise hold back the longest end of the text that
    begins a stop string (unless `final`: nothing more will come)."""
    hits = [i for i in (pending.find(s) for s in stops) if i >= 0]
    if hits:
        return pending[:min(hits)], "", True
    if final:
        return pending, "", False
    hold = max((n for s in stops for n in range(min(len(s) - 1, len(pending)), 0, -1)
                if pending.endswith(s[:n])), default=0)
    return pending[:len(pending) - hold], pending[len(pending) - hold:], False


class Request:
    def __init__(self, ids, sampling: Sampling, emit, tokenizer: Tokenizer, vocab_size: int,
                 eos_ids=(), checkpoints=(), strip_leading_spaces: bool = False):
        """ids: the prompt's token ids; checkpoints: prompt lengths (message ends) whose state is
        worth caching; strip_leading_spaces: drop the spaces a chat answer starts with."""
        self.ids = np.asarray(ids, dtype=np.int64)             # (T,)
        self.sampling, self.emit = sampling, emit
        self.checkpoints = frozenset(int(c) for c in checkpoints)
        self.eos_ids = frozenset(int(e) for e in eos_ids)
        self.cancelled = False       # set by the app (client gone): the engine drops the request
        self.finish_reason: str | None = None
        # prefill
        self.pos = 0                 # prompt tokens in `state` so far
        self.cached_tokens = 0       # of them, taken from the prefix cache
        self.state = None            # the model's state arrays, batch of one
        self.logits = None           # (V,) after the last prompt token, once prefilled
        # decode
        self.generated = 0
        self.rng = np.random.default_rng(sampling.seed)
        self.penalties = Penalties(presence_penalty=sampling.presence_penalty,
                                   frequency_penalty=sampling.frequency_penalty, penalty_decay=PENALTY_DECAY)
        self.penalties.start([self.ids], vocab_size)
        self._decoder = StreamDecoder(tokenizer)
        self._pending = ""
        self._strip = strip_leading_spaces

    def choose(self, logits: np.ndarray) -> int:  # logits (V,) -> the next token
        s = self.sampling
        scores = self.penalties.apply(np.asarray(logits, dtype=np.float64)[None])  # (1, V)
        token = choose_tokens(scores, s.temperature > 0, s.temperature or 1.0, None,
                              s.top_p if s.top_p < 1 else None, [self.rng])
        self.penalties.update(token)
        return int(token[0])

    def accept(self, token: int) -> bool:
        """Take the token chosen for this request; True when the request is finished."""
        self.generated += 1
        if token in self.eos_ids:
            return self.finish("stop")
        piece, self._pending, stopped = release(self._pending + self._decoder.push([token]),
                                                self.sampling.stop, final=False)
        self._send(piece)
        if stopped:
            return self.finish("stop", flush=False)
        if self.generated >= self.sampling.max_tokens:
            return self.finish("length")
        return False

    def _send(self, piece: str) -> None:
        if self._strip and piece:
            piece = piece.lstrip(" ")
            self._strip = not piece
        if piece:
            self.emit(("text", piece))

    def finish(self, reason: str, flush: bool = True) -> bool:
        if flush:  # text held back (the start of a stop string, or part of a character) goes out
            self._send(release(self._pending + self._decoder.flush(), self.sampling.stop, final=True)[0])
        self.finish_reason = reason
        self.emit(("done", reason, self.usage()))
        return True

    def fail(self, message: str) -> None:
        self.finish_reason = "error"
        self.emit(("error", message))

    def usage(self) -> dict:
        """OpenAI's usage object; prompt_tokens_details.cached_tokens: prompt tokens not prefilled."""
        prompt = len(self.ids)
        return {"prompt_tokens": prompt, "completion_tokens": self.generated,
                "total_tokens": prompt + self.generated,
                "prompt_tokens_details": {"cached_tokens": self.cached_tokens}}
