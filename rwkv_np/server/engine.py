"""The engine: one thread owns the model and runs every request through it.

Continuous batching. Requests wait in a FIFO until prefilled, then decode as rows of one batch.
Each turn of the loop
  1. takes in new requests (it blocks only when there is nothing to do);
  2. drops cancelled requests (client gone): a row leaves the batch at once;
  3. prefills one chunk (at most `prefill_chunk` tokens) of the oldest waiting request; when its
     prompt is done it joins the batch as a new row (the rows' states are concatenated);
  4. runs one decode step for all rows: each row picks its token from its logits (request.py),
     finished rows leave, and the rest go through the model as one (B, 1) call.
So a newcomer's prompt holds the running rows back by at most one chunk per token, and a
finished request frees its row before the next step. At most `max_batch` rows decode at once
(more wait for a row before their prefill starts); up to linear.SMALL_N = 16 a row costs one
weight read shared by all rows.

Prefill and the cache (cache.py). A prompt is cut at absolute positions -- multiples of
`prefill_chunk` and the request's checkpoints (chat message ends) -- so two prompts that share a
prefix compute it with the same model calls. Before its first chunk a request takes the longest
cached prefix of its prompt; after a chunk that ends at a checkpoint, at a multiple of
`cache_every` or at the prompt's end, the state and logits there are cached.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque

import numpy as np

from ..generation import decode_one
from .cache import PrefixCache
from .request import Request

log = logging.getLogger("rwkv_np.server")


class Engine:
    def __init__(self, model, cache: PrefixCache, prefill_chunk: int = 64, cache_every: int = 256,
                 max_batch: int = 16, threads: int | None = None):
        self.model, self.cache = model, cache
        self.prefill_chunk, self.cache_every, self.max_batch = prefill_chunk, cache_every, max_batch
        self.threads = threads
        eos = model.config.eos_token_id
        self.eos_ids = () if eos is None else tuple(eos) if isinstance(eos, (list, tuple)) else (eos,)
        self._inbox: queue.Queue = queue.Queue()
        self._waiting: deque[Request] = deque()    # not yet prefilled, oldest first
        self._rows: list[Request] = []             # decoding: row b of the batch is _rows[b]
        self._state: list | None = None            # the model's state arrays, (B, ...) each
        self._logits: np.ndarray | None = None     # (B, V): each row's next-token logits
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.counts = {"requests": 0, "finished": 0, "cancelled": 0, "failed": 0, "steps": 0,
                       "generated_tokens": 0, "prefilled_tokens": 0, "cached_tokens": 0,
                       "decode_seconds": 0.0, "prefill_seconds": 0.0}  # in model calls

    # -- outside the engine thread ---------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="rwkv-np-engine", daemon=True)
        self._thread.start()

    def submit(self, request: Request) -> None:
        if self._stopping.is_set():
            request.fail("the server is shutting down")
            return
        self._inbox.put(request)

    def stop(self, timeout: float = 10.0) -> None:
        """End the loop; requests still inside get an error event."""
        self._stopping.set()
        self._inbox.put(None)
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stats(self) -> dict:
        return {"rows": len(self._rows), "waiting": len(self._waiting) + self._inbox.qsize(),
                **self.counts, "cache": self.cache.stats()}

    # -- the engine thread -----------------------------------------------------------------------
    def _run(self) -> None:
        from ..threads import set_threads
        set_threads(self.threads)  # Numba's thread count is per thread: set it in this one
        while not self._stopping.is_set():
            self._admit()
            self._drop_cancelled()
            if self._waiting and len(self._rows) < self.max_batch:
                self._prefill(self._waiting[0])
            if self._rows:
                self._step()
        self._admit()
        for r in [*self._waiting, *self._rows]:
            r.fail("the server is shutting down")
            self.counts["failed"] += 1
        self._waiting.clear()
        self._leave(np.zeros(len(self._rows), dtype=bool))

    def _admit(self) -> None:
        idle = not self._waiting and not self._rows
        try:
            item = self._inbox.get(timeout=0.5) if idle else self._inbox.get_nowait()
            while True:
                if item is not None:
                    self._waiting.append(item)
                    self.counts["requests"] += 1
                item = self._inbox.get_nowait()
        except queue.Empty:
            pass

    def _drop_cancelled(self) -> None:
        gone = sum(r.cancelled for r in self._waiting) + sum(r.cancelled for r in self._rows)
        if gone:
            self.counts["cancelled"] += gone
            self._waiting = deque(r for r in self._waiting if not r.cancelled)
            self._leave(np.array([not r.cancelled for r in self._rows], dtype=bool))

    def _next_cut(self, r: Request) -> int:
        """Where the chunk starting at r.pos ends: the next multiple of prefill_chunk, checkpoint
        or the prompt's end, whichever comes first."""
        end = min(len(r.ids), (r.pos // self.prefill_chunk + 1) * self.prefill_chunk)
        return min((c for c in r.checkpoints if r.pos < c < end), default=end)

    def _prefill(self, r: Request) -> None:
        try:
            if r.pos == 0:
                r.pos, r.state, r.logits = self.cache.lookup(r.ids)
                r.cached_tokens = r.pos
                self.counts["cached_tokens"] += r.pos
            if r.pos < len(r.ids):
                end, t = self._next_cut(r), time.perf_counter()
                out = self.model(r.ids[None, r.pos:end], state=r.state, use_cache=True, logits_to_keep=1)
                self.counts["prefill_seconds"] += time.perf_counter() - t
                r.state, r.logits = out.state, np.array(out.logits[0, -1])
                self.counts["prefilled_tokens"] += end - r.pos
                r.pos = end
                if end in r.checkpoints or end % self.cache_every == 0 or end == len(r.ids):
                    self.cache.insert(r.ids[:end], r.state, r.logits)
        except Exception as e:  # a bad request must not take the server down
            log.exception("prefill failed")
            self._waiting.popleft()
            r.fail(f"prefill failed: {e}")
            self.counts["failed"] += 1
            return
        if r.pos == len(r.ids):
            self._waiting.popleft()
            self._join(r)

    def _join(self, r: Request) -> None:
        self._rows.append(r)
        logits = np.array(r.logits, dtype=np.float32)[None]       # (1, V)
        if self._state is None:
            self._state, self._logits = [np.array(s) for s in r.state], logits
        else:
            self._state = [np.concatenate([a, s]) for a, s in zip(self._state, r.state)]
            self._logits = np.concatenate([self._logits, logits])
        r.state = r.logits = None  # the batch holds them now

    def _leave(self, keep: np.ndarray) -> None:  # keep (B,) bool: the rows that stay
        if keep.all():
            return
        self._rows = [r for r, k in zip(self._rows, keep) if k]
        if self._rows:
            self._state = [s[keep] for s in self._state]
            self._logits = self._logits[keep]
        else:
            self._state = self._logits = None

    def _step(self) -> None:
        try:
            tokens = np.array([r.choose(lg) for r, lg in zip(self._rows, self._logits)], dtype=np.int64)
            done = np.array([r.accept(int(t)) for r, t in zip(self._rows, tokens)], dtype=bool)
            self.counts["steps"] += 1
            self.counts["generated_tokens"] += len(tokens)
            self.counts["finished"] += int(done.sum())
            self._leave(~done)
            if self._rows:
                t = time.perf_counter()
                self._logits, self._state = decode_one(self.model, tokens[~done], self._state)
                self.counts["decode_seconds"] += time.perf_counter() - t
        except Exception as e:
            log.exception("decode step failed")
            for r in self._rows:
                r.fail(f"decode failed: {e}")
            self.counts["failed"] += len(self._rows)
            self._leave(np.zeros(len(self._rows), dtype=bool))
